#!/usr/bin/env bash
# Apply voice-appliance settings dropped on the boot partition, once.
#
# Write these with any computer that can read the SD card (the boot
# partition is FAT; Windows line endings and a UTF-8 BOM are fine):
#   voice-appliance.toml         the configuration (see examples/config.toml)
#   voice-appliance-api-key.txt  the ElevenLabs API key, alone on one line
#
# The key goes to /etc/voice-appliance/api_key (root-only, 0600) and is then
# deleted from the boot partition, which anyone can read. The configuration
# is validated first: a valid one replaces /etc/voice-appliance/config.toml
# (the old one is kept as config.toml.bak) and the file is renamed
# voice-appliance.toml.applied; an invalid one is renamed
# voice-appliance.toml.invalid next to voice-appliance-error.txt saying why,
# and the current configuration stays. Whatever stays on the boot partition
# (.applied, .invalid, the error text) is scrubbed of anything that looks like
# a secret (a value of a key/token/secret/password setting, an sk_… or long
# hex key); the original file is zeroed before it is deleted. Only a plain file
# is taken: a symbolic link, a hard link, a FIFO, device or directory of those
# names is left as it is and said so (on a boot directory that allows links,
# the link's target would otherwise be installed and zeroed).
#
# Installed by install.sh as /usr/local/sbin/voice-appliance-first-boot and
# run by voice-appliance-firstboot.service before the kiosk starts.
#
#   voice-appliance-first-boot [--boot DIR] [--etc DIR]
set -euo pipefail

# install.sh writes its --prefix here; tests point FIRSTBOOT_PREFIX elsewhere (not
# VOICE_APPLIANCE_…: every such variable must name a config key).
PREFIX=${FIRSTBOOT_PREFIX:-/opt/voice-appliance}
boot=""
etc=/etc/voice-appliance
SERVICE_GROUP=voice-appliance

while (($#)); do
    case "$1" in
        --boot) boot=${2:?--boot needs a directory}; shift ;;
        --etc) etc=${2:?--etc needs a directory}; shift ;;
        -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
        *) echo "first-boot: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
if [ -z "$boot" ]; then
    # Bookworm mounts the boot partition at /boot/firmware; older releases at /boot.
    if [ -d /boot/firmware ]; then boot=/boot/firmware; else boot=/boot; fi
fi

say() { printf 'voice-appliance-first-boot: %s\n' "$*"; }

key_src="$boot/voice-appliance-api-key.txt"
cfg_src="$boot/voice-appliance.toml"
install -d -m 0750 "$etc"

status=0

# Whether $1 is a plain file to take from the boot partition: 0 if so, 1 if there is nothing of
# that name, 2 (said why, the status is failed) for anything else, which is left as it is.
# Checked without following a link: [ -f ] alone would take a link's target, and its bytes
# would be installed and then zeroed.
take() {
    local why
    if [ -L "$1" ]; then why="is a symbolic link"
    elif [ ! -e "$1" ]; then return 1
    elif [ ! -f "$1" ]; then why="is not a regular file (a directory, FIFO or device)"
    elif (($(stat -c %h -- "$1") > 1)); then why="has other names (hard links) for the same data"
    else return 0
    fi
    say "$1 $why: left it as it is and took nothing from it (replace it with a plain file)"
    status=1
    return 2
}

# The bytes of $1, read without following a link (one put there since take() looked is refused).
read_boot_file() {
    dd if="$1" iflag=nofollow,nonblock status=none
}

# Remove a file holding a secret as well as a FAT file system allows; never through a link.
wipe() {
    local size
    size=$(stat -c %s -- "$1")
    dd if=/dev/zero of="$1" oflag=nofollow bs=1 count="$size" conv=notrunc,fsync status=none 2>/dev/null || true
    rm -f -- "$1"
    sync "$(dirname "$1")" 2>/dev/null || sync
}

# Write standard input to $1 on the boot partition as a new file renamed over it: a link
# already there is replaced, never written through.
put() {
    local new
    new=$(mktemp "$(dirname "$1")/.voice-appliance.XXXXXX")
    cat > "$new"
    if ! mv -fT -- "$new" "$1" 2>/dev/null; then
        rm -f -- "$new"
        say "could not write $1 (a directory of that name?): remove what is there"
        return 1
    fi
}

# Replace anything that looks like a secret: the value of a setting named like a key, token,
# secret or password (unless it is a path), an ElevenLabs key (sk_…), a bare 32+ digit hex key.
scrub() {
    sed -E \
        -e 's#^([[:space:]]*[A-Za-z0-9_.-]*(key|token|secret|password)[A-Za-z0-9_.-]*[[:space:]]*=[[:space:]]*)["'"'"']?[^/"'"'"'[:space:]].*$#\1"REMOVED-SECRET"#I' \
        -e 's#sk_[A-Za-z0-9_]{16,}#REMOVED-SECRET#g' \
        -e 's#\b[0-9a-fA-F]{32,}\b#REMOVED-SECRET#g'
}

# Leave the boot partition's $2 (its bytes copied in $1) as $3 without its secrets: $2 is
# zeroed and deleted, and so is the copy.
keep_scrubbed() {
    local clean
    clean=$(mktemp "$etc/.boot-copy.XXXXXX")
    scrub < "$1" > "$clean"
    if cmp -s "$1" "$clean"; then
        mv -fT -- "$2" "$3" || status=1  # a rename: a link at $3 is replaced, not followed
    else
        put "$3" < "$clean" || status=1  # a FAT partition takes no modes: the content is all that matters
        wipe "$2"
        say "removed what looked like an API key or other secret from $3 (it never stays on the boot" \
            "partition: put the key in voice-appliance-api-key.txt)"
    fi
    wipe "$clean"
    wipe "$1"
}

if take "$key_src"; then
    key=$(read_boot_file "$key_src" | sed -e '1s/^\xEF\xBB\xBF//' -e 's/\r$//' | tr -d '[:space:]')
    if [ -z "$key" ]; then
        say "$key_src is empty; nothing installed (write the API key alone on one line)"
        status=1
    else
        tmp=$(umask 077 && mktemp "$etc/.api_key.XXXXXX")
        printf '%s\n' "$key" > "$tmp"
        chown 0:0 "$tmp" && chmod 0600 "$tmp" && mv -f "$tmp" "$etc/api_key"
        say "installed the API key as $etc/api_key (root-only)"
    fi
    unset key
    wipe "$key_src"
    say "deleted $key_src from the boot partition"
fi

if take "$cfg_src"; then
    # Read once: the copy is what is validated, installed and kept scrubbed.
    raw=$(mktemp "$etc/.boot-copy.XXXXXX")
    read_boot_file "$cfg_src" > "$raw"
    tmp=$(mktemp "$etc/.config.toml.XXXXXX")
    sed -e '1s/^\xEF\xBB\xBF//' "$raw" > "$tmp"
    # Readable by the service, as the installed file will be (doctor checks that too).
    chmod 0640 "$tmp"
    chgrp "$SERVICE_GROUP" "$tmp" 2>/dev/null || true
    if out=$("$PREFIX/bin/voice-appliance" doctor --only config --config "$tmp" 2>&1); then
        if [ -e "$etc/config.toml" ]; then cp -p "$etc/config.toml" "$etc/config.toml.bak"; fi
        mv -f "$tmp" "$etc/config.toml"
        keep_scrubbed "$raw" "$cfg_src" "$cfg_src.applied"
        rm -f "$boot/voice-appliance-error.txt"
        say "applied $cfg_src as $etc/config.toml"
    else
        out=${out//"$tmp"/voice-appliance.toml}  # name the file the user wrote, not our copy
        out=$(printf '%s\n' "$out" | scrub)
        wipe "$tmp"
        keep_scrubbed "$raw" "$cfg_src" "$cfg_src.invalid"
        {
            echo "voice-appliance.toml was NOT applied: the configuration is invalid."
            echo "Fix it, save it again as voice-appliance.toml, and restart the Pi."
            echo
            printf '%s\n' "$out"
        } | sed 's/$/\r/' | put "$boot/voice-appliance-error.txt" || true
        say "$cfg_src is invalid, kept the current configuration; see $boot/voice-appliance-error.txt"
        printf '%s\n' "$out"
        status=1
    fi
fi
sync
exit "$status"
