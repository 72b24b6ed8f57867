#!/usr/bin/env bash
# Install voice-appliance as a systemd service on Raspberry Pi OS Bookworm /
# Debian 12, from a clone of the repository. Idempotent: run it again to
# upgrade; it never overwrites /etc/voice-appliance/config.toml.
#
#   sudo provisioning/install.sh                       # install, enable
#   sudo provisioning/install.sh --api-key-file key.txt --asound usb --start
#   provisioning/install.sh --root /mnt/sdcard-root     # into another system tree
#   sudo provisioning/install.sh --wheelhouse /media/usb/wheels   # offline (provisioning/wheelhouse.sh)
#   sudo provisioning/install.sh --screen              # also the kiosk's screen (docs/screen.md)
#
# What it does: Debian packages (build tools for pyalsaaudio, python3-systemd
# and the other libraries Debian ships in good enough versions), a virtual
# environment at $prefix that also sees those Debian packages, the system user
# voice-appliance (groups audio, gpio), /etc/voice-appliance/ (config from
# examples/config.toml if absent; the key root-only), the units, enabled.
# pip installs only the versions pinned in provisioning/constraints.txt.
#
# Order: inputs are checked first, then the risky part (pip) runs before
# anything else is created; a failure removes what this run made and says
# which step failed (run the same command again to resume).
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
with_tools=0
extras=""
wheelhouse=""
remove_key_file=0
screen=""
print_apt=0

# Debian packages: compilers and headers to build pyalsaaudio (Debian's
# python3-alsaaudio 0.8.4 is too old), alsa-utils for `doctor`, and the
# libraries whose Debian versions the project accepts (seen through
# --system-site-packages, so the Pi compiles nothing but pyalsaaudio), and
# procps for the unit's ExecReload=/bin/kill.
APT_PACKAGES=(python3 python3-venv python3-dev python3-setuptools python3-wheel gcc libc6-dev procps
              libasound2-dev alsa-utils ca-certificates
              python3-systemd python3-requests python3-websocket python3-gpiozero)
# Only there to compile (pyalsaaudio, and webrtcvad-wheels on 32-bit ARM): a
# --wheelhouse with wheels only (no source archive) needs none of them.
BUILD_PACKAGES=(python3-dev gcc libc6-dev libasound2-dev)
# The extras of pyproject.toml a kiosk may choose (--extras); `bench` (the
# tools' websockets) comes with --with-tools only.
KIOSK_EXTRAS=(wake dsp aec apa102 mqtt)
# Raspberry Pi OS only (gpiozero's default pin factory there); skipped elsewhere.
APT_OPTIONAL=(python3-lgpio)
# --screen: the browser (Raspberry Pi OS's older images call it chromium-browser), and on an
# image without a desktop, cage: a Wayland compositor that shows one program full screen.
SCREEN_PACKAGES=(chromium)
SCREEN_LITE_PACKAGES=(cage)
SCREEN_USER=voice-appliance-screen
SCREEN_UNIT=voice-appliance-screen.service
SCREEN_AUTOSTART=/etc/xdg/autostart/voice-appliance-screen.desktop
SCREEN_LAUNCHER=/usr/local/bin/voice-appliance-screen

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
  --prefix DIR         virtual environment location (default: $prefix; letters,
                       digits, . _ - + and / only)
  --api-key-file FILE  install the API key from FILE as $ETC/api_key (root-only)
  --api-key-stdin      read the API key from standard input instead
  --asound NAME        install provisioning/asound/NAME.conf as /etc/asound.conf
                       if there is none (NAME: $(asound_names))
  --extras LIST        also install these extras, comma-separated: ${KIOSK_EXTRAS[*]}
                       (wake: wake word and noise suppression; dsp: noise
                       suppression only; apa102: the ReSpeaker HATs' LEDs)
  --with-tools         also install the emulator and the bench (left out of a
                       kiosk by default) and their websockets dependency
  --wheelhouse DIR     install offline from the wheels in DIR (built with
                       provisioning/wheelhouse.sh on a connected machine)
  --remove-key-file    remove the --api-key-file FILE after a successful install
                       (overwritten first); without it you are asked (on a terminal)
  --no-apt             do not install Debian packages (fail if some are missing)
  --no-enable          do not enable the units
  --start              (re)start the service at the end
  --screen[=KIND]      also the kiosk's screen: Chromium in kiosk mode on the page of
                       [screen] (set screen.enabled = true). KIND: desktop (an
                       autostart entry), lite (cage on tty1, a systemd unit) or auto
                       (the default: desktop when a desktop session is installed)
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
        --remove-key-file) remove_key_file=1 ;;
        --extras) extras=${2?--extras needs a list}; shift ;;
        --extras=*) extras=${1#*=} ;;
        --with-tools) with_tools=1 ;;
        --wheelhouse) wheelhouse=${2:?--wheelhouse needs a directory}; shift ;;
        --wheelhouse=*) wheelhouse=${1#*=} ;;
        --asound) asound=${2:?--asound needs a name}; shift ;;
        --asound=*) asound=${1#*=} ;;
        --no-apt) do_apt=0 ;;
        --no-enable) do_enable=0 ;;
        --start) do_start=1 ;;
        --screen) screen=auto ;;
        --screen=*) screen=${1#*=} ;;
        --packages-only) packages_only=1 ;;
        --print-apt-packages) print_apt=1 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option $1" ;;
    esac
    shift
done

case "$screen" in
    ""|auto|desktop|lite) ;;
    *) die "--screen=$screen: choose desktop, lite or auto" ;;
esac
# A desktop session (labwc, wayfire or LXDE's X11 one) starts the autostart entries; without one, cage.
has_desktop() { [ -e "$1/usr/bin/labwc" ] || [ -e "$1/usr/bin/wayfire" ] || [ -e "$1/usr/bin/lxsession" ]; }
if ((print_apt)); then
    printf '%s\n' "${APT_PACKAGES[@]}"
    if [ -n "$screen" ]; then
        printf '%s\n' "${SCREEN_PACKAGES[@]}"
        [ "$screen" = desktop ] || { [ "$screen" = auto ] && has_desktop "${root%/}"; } \
            || printf '%s\n' "${SCREEN_LITE_PACKAGES[@]}"
    fi
    exit 0
fi

# The prefix is written into the units (in ExecStart= a space splits the command and % is a
# specifier) and into sed's replacements (where & and # are special): refused unless it is an
# absolute path of plain characters, before anything else (root or not).
plain_prefix() {
    case "$1" in /*) ;; *) return 1 ;; esac
    case "$1/" in *[!A-Za-z0-9._/+-]* | *//* | */./* | */../*) return 1 ;; esac
}
plain_prefix "${prefix%/}" \
    || die "--prefix $prefix: not a plain absolute path; use letters, digits, '.', '_', '-', '+' and '/' only, no '.' or '..' as a directory name (it goes into the systemd units and sed)"
prefix=${prefix%/}
[ "$(id -u)" -eq 0 ] || die "run as root: sudo $0 $*"
root=$(cd "$root" 2>/dev/null && pwd) || die "--root: no such directory"
[ -z "$asound" ] || [ -f "$src/provisioning/asound/$asound.conf" ] \
    || die "--asound $asound: no provisioning/asound/$asound.conf"
[ -z "$key_file" ] || [ -r "$key_file" ] || die "--api-key-file $key_file: cannot read it"
[ -z "$key_file" ] || ((key_stdin == 0)) || die "--api-key-file and --api-key-stdin: give one of them"
((remove_key_file == 0)) || [ -n "$key_file" ] || die "--remove-key-file: only with --api-key-file FILE"
if [ "$root" = / ]; then R=""; else R=$root; fi
if [ "$screen" = auto ]; then
    if has_desktop "$R"; then screen=desktop; else screen=lite; fi
fi
# Only a virtual environment is upgraded in place: a directory holding anything else (--prefix
# /usr out of the autotools habit) is not ours to pip into, nor for uninstall.sh to remove.
is_venv() { [ -f "$1/pyvenv.cfg" ] && [ -x "$1/bin/python" ]; }
if [ -e "$R$prefix" ] && ! is_venv "$R$prefix" && { [ ! -d "$R$prefix" ] || [ -n "$(ls -A "$R$prefix")" ]; }; then
    die "--prefix $prefix already holds something other than a virtual environment (no pyvenv.cfg): give a new or empty directory"
fi

# --extras: names of pyproject's kiosk extras; anything else is refused.
pip_extras=()
if [ -n "$extras" ]; then
    IFS=, read -r -a wanted <<< "$extras"
    for x in "${wanted[@]}"; do
        x=${x//[[:space:]]/}
        [ -n "$x" ] || continue
        if [[ " ${KIOSK_EXTRAS[*]} " != *" $x "* ]]; then
            die "--extras: unknown extra '$x' (valid: $(IFS=,; echo "${KIOSK_EXTRAS[*]}"))"
        fi
        [[ " ${pip_extras[*]} " == *" $x "* ]] || pip_extras+=("$x")
    done
fi
((with_tools == 0)) || pip_extras+=(bench)

# --wheelhouse: a directory of wheels; with no source archive in it and a
# pyalsaaudio wheel, nothing is compiled, so the build tools are not needed.
wheels_only=0
if [ -n "$wheelhouse" ]; then
    wheelhouse=$(cd "$wheelhouse" 2>/dev/null && pwd) || die "--wheelhouse $wheelhouse: no such directory"
    compgen -G "$wheelhouse/*.whl" >/dev/null \
        || die "--wheelhouse $wheelhouse: no wheels in it (build it with provisioning/wheelhouse.sh)"
    if compgen -G "$wheelhouse/pyalsaaudio-*.whl" >/dev/null \
        && ! compgen -G "$wheelhouse/*.tar.gz" >/dev/null && ! compgen -G "$wheelhouse/*.zip" >/dev/null; then
        wheels_only=1
    fi
fi

# The key, read and checked before anything changes. Only a BOM, line ends
# and surrounding blanks are stripped: whitespace INSIDE is refused, never
# joined (a key pasted across two lines, or two keys, would otherwise become
# one wrong key that fails only at the first conversation). Never printed.
key=""
key_given=0
read_key() {
    local text
    text=$(sed -e '1s/^\xEF\xBB\xBF//' -e 's/\r$//')
    text=${text#"${text%%[![:space:]]*}"}
    text=${text%"${text##*[![:space:]]}"}
    printf '%s' "$text"
}
if [ -n "$key_file" ]; then
    key=$(read_key < "$key_file"); key_given=1
    from="the API key in $key_file"
elif ((key_stdin)); then
    key=$(read_key); key_given=1
    from="the API key on standard input"
fi
if ((key_given)); then
    [ -n "$key" ] || die "$from is empty"
    [[ "$key" != *[[:space:]]* ]] \
        || die "$from has whitespace inside it (a space, tab or line break): an API key is one word; fix the file and run again (the key is not shown)"
fi

# Run a command inside the target system (chroot for --root).
in_target() {
    if [ -z "$R" ]; then "$@"; else chroot "$R" "$@"; fi
}

# --- failure handling: what this run created, removed again on failure ------
current_step="checking the inputs"
venv_done=0
declare -a CREATED=()
on_exit() {
    local rc=$? p
    ((rc != 0)) || return 0
    for p in "${CREATED[@]}"; do rm -rf --one-file-system -- "$p"; done
    if ((venv_done)); then
        printf 'install.sh: install failed at %s (the steps before it are complete); fix the cause and run the same command again (install.sh is idempotent)\n' \
            "$current_step" >&2
    else
        printf 'install.sh: install failed at %s; nothing else was changed; fix the cause and run the same command again (install.sh is idempotent)\n' \
            "$current_step" >&2
    fi
}
trap on_exit EXIT
trap 'exit 130' INT TERM HUP

is_installed() {
    dpkg-query --admindir="$R/var/lib/dpkg" -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

needed_packages() {
    local p
    for p in "${APT_PACKAGES[@]}"; do
        if ((wheels_only)) && [[ " ${BUILD_PACKAGES[*]} " == *" $p "* ]]; then continue; fi
        echo "$p"
    done
    [ -z "$screen" ] || printf '%s\n' "${SCREEN_PACKAGES[@]}"
    [ "$screen" != lite ] || printf '%s\n' "${SCREEN_LITE_PACKAGES[@]}"
}

install_packages() {
    local missing=() p
    current_step="the Debian packages"
    for p in $(needed_packages); do
        is_installed "$p" || { [ "$p" = chromium ] && is_installed chromium-browser; } || missing+=("$p")
    done
    if [ -z "$R" ] && ((do_apt)) && [ -z "$wheelhouse" ]; then
        for p in "${APT_OPTIONAL[@]}"; do
            is_installed "$p" || { apt-cache show "$p" >/dev/null 2>&1 && missing+=("$p"); } || true
        done
    fi
    ((${#missing[@]} == 0)) && return 0
    if [ -n "$R" ] || ((do_apt == 0)); then
        die "Debian packages missing${R:+ in $R}: ${missing[*]}; install them first${R:+ (e.g. debootstrap --include=\$(provisioning/install.sh --print-apt-packages | paste -sd,))}"
    fi
    log "installing Debian packages: ${missing[*]}"
    if [ -n "$wheelhouse" ]; then
        # Offline: from what apt already has (a local mirror, its cache), no update.
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" || die \
            "Debian packages missing and not installable offline: ${missing[*]}. Bring them: on a connected machine with the same Raspberry Pi OS image and architecture run 'apt-get install --download-only ${missing[*]}' (or 'apt-get download' for each, with its dependencies), copy /var/cache/apt/archives/*.deb over and 'sudo apt install ./*.deb'; or start from an image that has them"
        return 0
    fi
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

has_group() { grep -q "^$1:" "$R/etc/group"; }
has_user() { grep -q "^$1:" "$R/etc/passwd"; }

create_user() {
    local rootopt=()
    current_step="creating the user $SERVICE_USER"
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

# The venv and the project in it. A first install builds it in $prefix.new
# and moves it into place only once pip succeeded, so a failed or killed run
# never leaves a half venv that the next run would take for an install; an
# upgrade installs into the existing venv (pip rolls back a failed upgrade).
install_venv() {
    local stage target spec pip_args=()
    stage=$(mktemp -d "$R/var/tmp/voice-appliance-src.XXXXXX")
    CREATED+=("$stage")
    # Build from a copy inside the target: the source tree stays untouched
    # (no root-owned build files in a user's clone) and --root works. The
    # tools (emulator, bench) stay out of a kiosk unless --with-tools.
    local exclude=(--exclude=.git --exclude=.venv --exclude='*.egg-info' --exclude=__pycache__
                   --exclude=.mypy_cache --exclude=.ruff_cache --exclude=.pytest_cache --exclude=./tests
                   --exclude=./build --exclude=./.cache)
    ((with_tools)) || exclude+=(--exclude=./device/emulator --exclude=./device/bench)
    install -d "$stage/src"
    tar -C "$src" "${exclude[@]}" -cf - . | tar -C "$stage/src" -xf -
    pip_args=(-c "${stage#"$R"}/src/provisioning/constraints.txt")
    if [ -n "$wheelhouse" ]; then
        cp -r "$wheelhouse" "$stage/wheels"
        pip_args+=(--no-index --find-links "${stage#"$R"}/wheels")
    fi
    target=$prefix
    if ! is_venv "$R$prefix"; then
        target=$prefix.new
        rm -rf --one-file-system -- "$R$target"  # what a killed run left
        CREATED+=("$R$target")
        current_step="creating the virtual environment $prefix"
        log "creating the virtual environment $prefix"
        in_target python3 -m venv --system-site-packages --prompt "${prefix##*/}" "$target"
    fi
    spec=${stage#"$R"}/src
    if ((${#pip_extras[@]})); then spec="${spec}[$(IFS=,; echo "${pip_extras[*]}")]"; fi
    current_step="pip install (the Python packages${wheelhouse:+, offline from $wheelhouse})"
    local note=" (builds pyalsaaudio; ~1 min on a Pi 4)"
    ((wheels_only == 0)) || note=" (wheels only: nothing to compile)"
    log "installing voice-appliance${pip_extras[*]:+ with ${pip_extras[*]}} into $prefix${wheelhouse:+ from the wheelhouse}$note"
    # No build isolation: Debian's setuptools and wheel build the project and
    # pyalsaaudio, so nothing but the missing libraries is downloaded.
    in_target env PIP_DISABLE_PIP_VERSION_CHECK=1 "$target/bin/python" -m pip install -q \
        --no-build-isolation --upgrade "${pip_args[@]}" "$spec"
    if [ "$target" != "$prefix" ]; then
        current_step="moving the virtual environment into $prefix"
        # The venv's scripts (shebangs, activate) name it by its path: point them at the final one.
        grep -rlIZ -F -e "$target" "$R$target/bin" | xargs -0 -r sed -i "s#$target#$prefix#g"
        mv -T "$R$target" "$R$prefix"
        CREATED=("$stage")
    fi
    venv_done=1
    current_step="linking $prefix/bin/voice-appliance"
    ln -sfn "$prefix/bin/voice-appliance" "$R/usr/local/bin/voice-appliance"
    install -d "$R$prefix/share/voice-appliance"
    cp -r "$src/systemd/drop-ins" "$src/provisioning/asound" "$src/examples" "$src/README.md" "$src/docs" \
        "$R$prefix/share/voice-appliance/"
    rm -rf --one-file-system -- "$stage"
    CREATED=()
}

install_config() {
    current_step="installing $ETC/config.toml"
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
    local tmp
    current_step="installing the API key"
    if ((key_given)); then
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
    current_step="installing the systemd units"
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
    current_step="installing /etc/asound.conf"
    if [ -e "$R/etc/asound.conf" ] && ! cmp -s "$src/provisioning/asound/$asound.conf" "$R/etc/asound.conf"; then
        log "keeping the existing /etc/asound.conf (compare with $prefix/share/voice-appliance/asound/$asound.conf)"
        return 0
    fi
    install -m 0644 "$src/provisioning/asound/$asound.conf" "$R/etc/asound.conf"
    log "installed /etc/asound.conf for $asound: check its card names with 'arecord -l' and 'aplay -l'"
}

# --screen: the launcher, then an autostart entry (desktop) or the cage unit and its user (lite).
install_screen() {
    [ -n "$screen" ] || return 0
    current_step="installing the screen ($screen)"
    install -d "$R/usr/local/bin"
    install -m 0755 "$src/provisioning/screen-kiosk.sh" "$R$SCREEN_LAUNCHER"
    if [ "$screen" = desktop ]; then
        install -d "$R/etc/xdg/autostart"
        install -m 0644 "$src/provisioning/screen/voice-appliance-screen.desktop" "$R$SCREEN_AUTOSTART"
        log "installed $SCREEN_AUTOSTART: the screen starts with the desktop session (let it log in by itself: raspi-config, System Options, Boot / Auto Login)"
        return 0
    fi
    local rootopt=() g
    [ -z "$R" ] || rootopt=(--root "$R")
    for g in video render input; do has_group "$g" || groupadd "${rootopt[@]}" --system "$g"; done
    if ! has_user "$SCREEN_USER"; then
        log "creating system user $SCREEN_USER (the screen's browser)"
        useradd "${rootopt[@]}" --system --user-group --groups video,render,input \
            --home-dir "/var/lib/$SCREEN_USER" --no-create-home --shell /usr/sbin/nologin \
            --comment "voice appliance screen" "$SCREEN_USER"
    else
        usermod "${rootopt[@]}" --append --groups video,render,input "$SCREEN_USER"
    fi
    install -d "$R$UNIT_DIR"
    sed "s#/opt/voice-appliance#$prefix#g" "$src/systemd/$SCREEN_UNIT" > "$R$UNIT_DIR/$SCREEN_UNIT"
    chmod 0644 "$R$UNIT_DIR/$SCREEN_UNIT"
    log "installed $SCREEN_UNIT: Chromium in cage on tty1 (it replaces the login prompt there)"
}

enable_units() {
    ((do_enable)) || return 0
    current_step="enabling the units"
    local units=("$UNIT" "$FIRSTBOOT_UNIT")
    [ "$screen" != lite ] || units+=("$SCREEN_UNIT")
    if [ -n "$R" ]; then
        systemctl --root="$R" enable "${units[@]}" >/dev/null
        return 0
    fi
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
        systemctl enable "${units[@]}" >/dev/null
        if ((do_start)) || systemctl is-active --quiet "$UNIT"; then
            log "restarting $UNIT"
            systemctl restart "$UNIT" || true
        fi
        if [ "$screen" = lite ] && ((do_start)); then
            systemctl restart "$SCREEN_UNIT" || true
        fi
    else
        systemctl enable "${units[@]}" >/dev/null
    fi
}

# The plaintext key file the user gave: now installed, it need not stay in a
# home folder (backups, other users, a lost SD card). Only after a complete
# install: on failure the user still needs it to run again.
remove_plain_key_file() {
    local abs answer=""
    [ -n "$key_file" ] || return 0
    abs=$(realpath -- "$key_file")
    if ((remove_key_file == 0)) && [ -t 0 ] && [ -t 2 ]; then
        read -r -p "the plaintext key is still in $abs: remove it now? [y/N] " answer || answer=""
        case "$answer" in [yY]|[yY][eE][sS]) remove_key_file=1 ;; esac
    fi
    if ((remove_key_file)); then
        shred -u -- "$abs" 2>/dev/null || rm -f -- "$abs"
        [ ! -e "$abs" ] || die "could not remove $abs: remove it yourself (shred -u '$abs')"
        log "overwrote and removed $abs (the key is installed as $ETC/api_key)"
    else
        log "the plaintext key is still in $abs: remove it with: shred -u '$abs'"
    fi
}

install_packages
((packages_only == 0)) || exit 0
install_venv
create_user
install_config
install_key
install_units
install_asound
install_screen
enable_units
remove_plain_key_file
current_step="the end"

cat >&2 <<EOF

voice-appliance installed in $prefix${R:+ under $R}$( ((with_tools)) && echo " (with the emulator and the bench)").
Next:
  1. sudoedit $ETC/config.toml            # set agent.agent_id (and audio devices)
  2. the API key, if the agent needs one (connection = "signed_url"):
       sudo install -m 600 /dev/null $ETC/api_key && sudoedit $ETC/api_key
  3. sudo systemctl restart voice-appliance && sudo voice-appliance doctor
$( [ -z "$screen" ] || echo "  4. the screen ($screen): set enabled = true in [screen] of $ETC/config.toml (docs/screen.md)")
Logs: journalctl -u voice-appliance -f
EOF
