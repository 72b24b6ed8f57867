#!/usr/bin/env bash
# Remove what provisioning/install.sh installed. Keeps /etc/voice-appliance
# (configuration and key) and the service user unless --purge is given.
#
#   sudo provisioning/uninstall.sh [--purge] [--root DIR] [--prefix DIR]
set -euo pipefail

root=/
prefix=/opt/voice-appliance
purge=0
UNIT_DIR=/usr/local/lib/systemd/system
UNITS=(voice-appliance.service voice-appliance-firstboot.service voice-appliance-screen.service)

while (($#)); do
    case "$1" in
        --root) root=${2:?--root needs a directory}; shift ;;
        --root=*) root=${1#*=} ;;
        --prefix) prefix=${2:?--prefix needs a directory}; shift ;;
        --prefix=*) prefix=${1#*=} ;;
        --purge) purge=1 ;;
        -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
        *) echo "uninstall.sh: error: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
[ "$(id -u)" -eq 0 ] || { echo "uninstall.sh: error: run as root: sudo $0" >&2; exit 1; }
root=$(cd "$root" && pwd)
if [ "$root" = / ]; then R=""; else R=$root; fi
case "$prefix" in /?*) ;; *) echo "uninstall.sh: error: --prefix must be an absolute path" >&2; exit 1 ;; esac
prefix=${prefix%/}

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

if [ -z "$R" ] && [ -d /run/systemd/system ]; then
    systemctl disable --now "${UNITS[@]}" 2>/dev/null || true
elif [ -n "$R" ]; then
    systemctl --root="$R" disable "${UNITS[@]}" 2>/dev/null || true
fi
# The fleet channel: take the kiosk out of Home Assistant (empty retained discovery configs) while the
# software that knows its topics is still here; live systems only, and only when [mqtt] is on.
if [ -z "$R" ] && [ -x "$prefix/bin/voice-appliance" ]; then
    timeout 30 "$prefix/bin/voice-appliance" fleet --remove-discovery --if-enabled \
        || log "could not remove this kiosk from Home Assistant's MQTT discovery; delete its device there"
fi
for u in "${UNITS[@]}"; do rm -f "$R$UNIT_DIR/$u"; done
rm -f "$R/usr/local/sbin/voice-appliance-first-boot"
# The screen (install.sh --screen): its launcher and autostart entry (the user voice-appliance-screen stays).
rm -f "$R/usr/local/bin/voice-appliance-screen" "$R/etc/xdg/autostart/voice-appliance-screen.desktop"
[ "$(readlink "$R/usr/local/bin/voice-appliance" 2>/dev/null)" = "$prefix/bin/voice-appliance" ] \
    && rm -f "$R/usr/local/bin/voice-appliance"
# Only a virtual environment: --prefix /usr (the autotools habit) has a bin/python too.
if [ -f "$R$prefix/pyvenv.cfg" ]; then
    log "removing $prefix"
    rm -rf -- "$R$prefix"
elif [ -e "$R$prefix" ]; then
    log "left $prefix as it is: it is not a virtual environment (no pyvenv.cfg)"
fi
# What an install.sh killed while building its first venv left (it builds in $prefix.new).
if [ -e "$R$prefix.new/pyvenv.cfg" ]; then
    log "removing $prefix.new (left by an interrupted install)"
    rm -rf -- "$R$prefix.new"
fi
[ -z "$R" ] && [ -d /run/systemd/system ] && systemctl daemon-reload

if ((purge)); then
    if [ -f "$R/etc/voice-appliance/api_key" ]; then
        shred -u "$R/etc/voice-appliance/api_key" 2>/dev/null || rm -f "$R/etc/voice-appliance/api_key"
    fi
    rm -rf "$R/etc/voice-appliance"
    rootopt=()
    [ -z "$R" ] || rootopt=(--root "$R")
    if grep -q '^voice-appliance:' "$R/etc/passwd"; then userdel "${rootopt[@]}" voice-appliance; fi
    if grep -q '^voice-appliance:' "$R/etc/group"; then groupdel "${rootopt[@]}" voice-appliance; fi
    log "purged /etc/voice-appliance and the voice-appliance user"
else
    log "kept /etc/voice-appliance and the voice-appliance user (use --purge to remove them)"
fi
