#!/usr/bin/env bash
# Install voice-appliance as a systemd service on Raspberry Pi OS Bookworm /
# Debian 12, from a clone of the repository. Idempotent: run it again to
# upgrade; it never overwrites /etc/voice-appliance/config.toml.
#
#   sudo provisioning/install.sh                       # install, enable
#   sudo provisioning/install.sh --api-key-file key.txt --asound usb --start
#   provisioning/install.sh --root /mnt/sdcard-root     # into another system tree
#
# What it does: Debian packages (build tools for pyalsaaudio, python3-systemd
# and the other libraries Debian ships in good enough versions), a virtual
# environment at $prefix that also sees those Debian packages, the system user
# voice-appliance (groups audio, gpio), /etc/voice-appliance/ (config from
# examples/config.toml if absent; the key root-only), the units, enabled.
set -euo pipefail

src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
root=/
prefix=/opt/voice-appliance
key_file=""
key_stdin=0
asound=""
do_apt=1
do_enable=1
do_start=0
packages_only=0

# Debian packages: compilers and headers to build pyalsaaudio (Debian's
# python3-alsaaudio 0.8.4 is too old), alsa-utils for `doctor`, and the
# libraries whose Debian versions the project accepts (seen through
# --system-site-packages, so the Pi compiles nothing but pyalsaaudio), and
# procps for the unit's ExecReload=/bin/kill.
APT_PACKAGES=(python3 python3-venv python3-dev python3-setuptools python3-wheel gcc libc6-dev procps
              libasound2-dev alsa-utils ca-certificates
              python3-systemd python3-requests python3-websocket python3-gpiozero)
# Raspberry Pi OS only (gpiozero's default pin factory there); skipped elsewhere.
APT_OPTIONAL=(python3-lgpio)

SERVICE_USER=voice-appliance
UNIT=voice-appliance.service
FIRSTBOOT_UNIT=voice-appliance-firstboot.service
UNIT_DIR=/usr/local/lib/systemd/system
ETC=/etc/voice-appliance

asound_names() {
    local f names=()
    for f in "$src"/provisioning/asound/*.conf; do [ -e "$f" ] && names+=("$(basename "$f" .conf)"); done
    echo "${names[*]}"
}

usage() {
    cat <<EOF
usage: provisioning/install.sh [options]

  --root DIR           install into the system tree mounted at DIR instead of /
                       (Debian packages must already be there; nothing is started)
  --prefix DIR         virtual environment location (default: $prefix)
  --api-key-file FILE  install the API key from FILE as $ETC/api_key (root-only)
  --api-key-stdin      read the API key from standard input instead
  --asound NAME        install provisioning/asound/NAME.conf as /etc/asound.conf
                       if there is none (NAME: $(asound_names))
  --no-apt             do not install Debian packages (fail if some are missing)
  --no-enable          do not enable the units
  --start              (re)start the service at the end
  --print-apt-packages print the Debian packages this needs, one a line, and exit
  --packages-only      install the Debian packages only, then exit (prepares an
                       image: the ARM check caches its roots this way)
  -h, --help           this help
EOF
}

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }

while (($#)); do
    case "$1" in
        --root) root=${2:?--root needs a directory}; shift ;;
        --root=*) root=${1#*=} ;;
        --prefix) prefix=${2:?--prefix needs a directory}; shift ;;
        --prefix=*) prefix=${1#*=} ;;
        --api-key-file) key_file=${2:?--api-key-file needs a file}; shift ;;
        --api-key-file=*) key_file=${1#*=} ;;
        --api-key-stdin) key_stdin=1 ;;
        --asound) asound=${2:?--asound needs a name}; shift ;;
        --asound=*) asound=${1#*=} ;;
        --no-apt) do_apt=0 ;;
        --no-enable) do_enable=0 ;;
        --start) do_start=1 ;;
        --packages-only) packages_only=1 ;;
        --print-apt-packages) printf '%s\n' "${APT_PACKAGES[@]}"; exit 0 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option $1" ;;
    esac
    shift
done

[ "$(id -u)" -eq 0 ] || die "run as root: sudo $0 $*"
root=$(cd "$root" 2>/dev/null && pwd) || die "--root: no such directory"
case "$prefix" in /*) ;; *) die "--prefix must be an absolute path" ;; esac
[ -z "$asound" ] || [ -f "$src/provisioning/asound/$asound.conf" ] \
    || die "--asound $asound: no provisioning/asound/$asound.conf"
[ -z "$key_file" ] || [ -r "$key_file" ] || die "--api-key-file $key_file: cannot read it"
if [ "$root" = / ]; then R=""; else R=$root; fi

# Run a command inside the target system (chroot for --root).
in_target() {
    if [ -z "$R" ]; then "$@"; else chroot "$R" "$@"; fi
}

is_installed() {
    dpkg-query --admindir="$R/var/lib/dpkg" -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

install_packages() {
    local missing=() p
    for p in "${APT_PACKAGES[@]}"; do is_installed "$p" || missing+=("$p"); done
    if [ -z "$R" ] && ((do_apt)); then
        for p in "${APT_OPTIONAL[@]}"; do
            is_installed "$p" || { apt-cache show "$p" >/dev/null 2>&1 && missing+=("$p"); } || true
        done
    fi
    ((${#missing[@]} == 0)) && return 0
    if [ -n "$R" ] || ((do_apt == 0)); then
        die "Debian packages missing${R:+ in $R}: ${missing[*]}; install them first${R:+ (e.g. debootstrap --include=\$(provisioning/install.sh --print-apt-packages | paste -sd,))}"
    fi
    log "installing Debian packages: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

has_group() { grep -q "^$1:" "$R/etc/group"; }
has_user() { grep -q "^$1:" "$R/etc/passwd"; }

create_user() {
    local rootopt=()
    [ -z "$R" ] || rootopt=(--root "$R")
    # gpio exists on Raspberry Pi OS (udev gives it /dev/gpiochip*); elsewhere
    # create it so the unit's SupplementaryGroups= resolves.
    has_group gpio || groupadd "${rootopt[@]}" --system gpio
    has_group audio || groupadd "${rootopt[@]}" --system audio
    has_group "$SERVICE_USER" || groupadd "${rootopt[@]}" --system "$SERVICE_USER"
    if ! has_user "$SERVICE_USER"; then
        log "creating system user $SERVICE_USER"
        useradd "${rootopt[@]}" --system --gid "$SERVICE_USER" --groups audio,gpio \
            --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin \
            --comment "voice appliance kiosk" "$SERVICE_USER"
    else
        usermod "${rootopt[@]}" --append --groups audio,gpio "$SERVICE_USER"
    fi
}

install_venv() {
    local stage
    if [ ! -x "$R$prefix/bin/python" ]; then
        log "creating the virtual environment $prefix"
        in_target python3 -m venv --system-site-packages "$prefix"
    fi
    # Build from a copy inside the target: the source tree stays untouched
    # (no root-owned build files in a user's clone) and --root works.
    stage=$(mktemp -d "$R/var/tmp/voice-appliance-src.XXXXXX")
    trap 'rm -rf "$stage"' RETURN
    tar -C "$src" --exclude=.git --exclude=.venv --exclude='*.egg-info' --exclude=__pycache__ \
        --exclude=.mypy_cache --exclude=.ruff_cache --exclude=.pytest_cache --exclude=tests -cf - . \
        | tar -C "$stage" -xf -
    log "installing voice-appliance into $prefix (builds pyalsaaudio; ~1 min on a Pi 4)"
    # No build isolation: Debian's setuptools and wheel build the project and
    # pyalsaaudio, so nothing but the missing libraries is downloaded.
    in_target env PIP_DISABLE_PIP_VERSION_CHECK=1 "$prefix/bin/python" -m pip install -q \
        --no-build-isolation --upgrade "${stage#"$R"}"
    ln -sfn "$prefix/bin/voice-appliance" "$R/usr/local/bin/voice-appliance"
    install -d "$R$prefix/share/voice-appliance"
    cp -r "$src/systemd/drop-ins" "$src/provisioning/asound" "$src/examples" "$src/README.md" \
        "$R$prefix/share/voice-appliance/"
}

install_config() {
    install -d -m 0750 "$R$ETC"
    in_target chown "root:$SERVICE_USER" "$ETC"
    if [ ! -e "$R$ETC/config.toml" ]; then
        log "installing $ETC/config.toml from examples/config.toml: set agent_id in it"
        install -m 0640 "$src/examples/config.toml" "$R$ETC/config.toml"
        in_target chown "root:$SERVICE_USER" "$ETC/config.toml"
    else
        log "keeping the existing $ETC/config.toml"
    fi
}

# The key: root-only; systemd reads it (LoadCredential=) and hands the
# service a private copy, so the service user never reads this file.
install_key() {
    local key="" tmp
    if [ -n "$key_file" ]; then
        key=$(sed -e 's/^\xEF\xBB\xBF//' -e 's/\r$//' "$key_file" | tr -d '[:space:]')
    elif ((key_stdin)); then
        key=$(sed -e 's/^\xEF\xBB\xBF//' -e 's/\r$//' | tr -d '[:space:]')
    fi
    if [ -n "$key_file" ] || ((key_stdin)); then
        [ -n "$key" ] || die "the API key given is empty"
        tmp=$(umask 077 && mktemp "$R$ETC/.api_key.XXXXXX")
        printf '%s\n' "$key" > "$tmp"
        chown 0:0 "$tmp" && chmod 0600 "$tmp" && mv -f "$tmp" "$R$ETC/api_key"
        log "installed the API key as $ETC/api_key (root-only)"
    fi
    if [ -e "$R$ETC/api_key" ]; then
        local mode owner
        mode=$(stat -c %a "$R$ETC/api_key"); owner=$(stat -c %u "$R$ETC/api_key")
        if [ "$mode" != 600 ] || [ "$owner" != 0 ]; then
            log "tightening $ETC/api_key (was mode $mode, owner uid $owner) to root-only 0600"
            chown 0:0 "$R$ETC/api_key"; chmod 0600 "$R$ETC/api_key"
        fi
    fi
}

install_units() {
    install -d "$R$UNIT_DIR" "$R/usr/local/sbin"
    sed "s#/opt/voice-appliance#$prefix#g" "$src/systemd/$UNIT" > "$R$UNIT_DIR/$UNIT.new"
    chmod 0644 "$R$UNIT_DIR/$UNIT.new" && mv -f "$R$UNIT_DIR/$UNIT.new" "$R$UNIT_DIR/$UNIT"
    sed "s#/opt/voice-appliance#$prefix#g" "$src/systemd/$FIRSTBOOT_UNIT" > "$R$UNIT_DIR/$FIRSTBOOT_UNIT"
    chmod 0644 "$R$UNIT_DIR/$FIRSTBOOT_UNIT"
    sed "s#^PREFIX=.*#PREFIX=\${FIRSTBOOT_PREFIX:-$prefix}#" "$src/provisioning/first-boot.sh" \
        > "$R/usr/local/sbin/voice-appliance-first-boot"
    chmod 0755 "$R/usr/local/sbin/voice-appliance-first-boot"
}

install_asound() {
    [ -n "$asound" ] || return 0
    if [ -e "$R/etc/asound.conf" ] && ! cmp -s "$src/provisioning/asound/$asound.conf" "$R/etc/asound.conf"; then
        log "keeping the existing /etc/asound.conf (compare with $prefix/share/voice-appliance/asound/$asound.conf)"
        return 0
    fi
    install -m 0644 "$src/provisioning/asound/$asound.conf" "$R/etc/asound.conf"
    log "installed /etc/asound.conf for $asound: check its card names with 'arecord -l' and 'aplay -l'"
}

enable_units() {
    ((do_enable)) || return 0
    if [ -n "$R" ]; then
        systemctl --root="$R" enable "$UNIT" "$FIRSTBOOT_UNIT" >/dev/null
        return 0
    fi
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
        systemctl enable "$UNIT" "$FIRSTBOOT_UNIT" >/dev/null
        if ((do_start)) || systemctl is-active --quiet "$UNIT"; then
            log "restarting $UNIT"
            systemctl restart "$UNIT" || true
        fi
    else
        systemctl enable "$UNIT" "$FIRSTBOOT_UNIT" >/dev/null
    fi
}

install_packages
((packages_only == 0)) || exit 0
create_user
install_venv
install_config
install_key
install_units
install_asound
enable_units

cat >&2 <<EOF

voice-appliance installed in $prefix${R:+ under $R}.
Next:
  1. sudoedit $ETC/config.toml            # set agent.agent_id (and audio devices)
  2. the API key, if the agent needs one (connection = "signed_url"):
       sudo install -m 600 /dev/null $ETC/api_key && sudoedit $ETC/api_key
  3. sudo systemctl restart voice-appliance && sudo voice-appliance doctor
Logs: journalctl -u voice-appliance -f
EOF
