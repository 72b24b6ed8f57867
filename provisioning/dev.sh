#!/usr/bin/env bash
# Developer / CI entry point. Idempotent: every command first makes sure the
# machine has what it needs (Debian packages, a virtual environment with the
# project and its extras), then does its job.
#
#   provisioning/dev.sh setup   install system packages and .venv only
#   provisioning/dev.sh demo    set up, then run the bench demo (the main job)
#   provisioning/dev.sh test    set up, then lint, type-check and run every test
#   provisioning/dev.sh test-fast
#                               set up, then run the fast tier only: no real-time and no
#                               systemd tests (pytest -m "not realtime and not system")
#   provisioning/dev.sh bench   set up, then run the benchmarks in tests/bench
#   provisioning/dev.sh arm [arm64|armhf|all]
#                               install.sh, run --check, doctor, the bench demo and
#                               the unit tests in ARM roots under qemu (root only;
#                               provisioning/arm-check.sh; `test` runs it too, on
#                               $VOICE_APPLIANCE_ARM_ARCHES, unless VOICE_APPLIANCE_SKIP_ARM=1)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"
venv="$here/.venv"

# Build and test needs: ALSA headers (pyalsaaudio is built from PyPI: Debian's
# 0.8.4 is too old), libsystemd headers (systemd-python), real speech fixtures
# (espeak-ng, sox), ALSA plugins for `type file`/plug devices, debootstrap
# for the boot test, chromium (and a font) for the screen's browser tests.
APT_PACKAGES=(python3 python3-venv python3-dev gcc pkg-config libasound2-dev libasound2-plugins shellcheck procps librsvg2-bin
              alsa-utils libsystemd-dev espeak-ng sox debootstrap systemd pulseaudio pulseaudio-utils
              chromium fonts-dejavu-core mosquitto mosquitto-clients python3-paho-mqtt
              flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts)

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

need_apt() {
    local missing=()
    for p in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    ((${#missing[@]} == 0)) && return 0
    log "installing Debian packages: ${missing[*]}"
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

need_venv() {
    # $1: the extras to install (default bench,test; the benchmarks add the
    # official SDK as `baseline`). Debian's own Python 3.11, as on Raspberry
    # Pi OS Bookworm.
    local extras=${1:-bench,test,wake,aec}
    local py=/usr/bin/python3
    if [ ! -x "$venv/bin/python" ]; then
        log "creating $venv"
        "$py" -m venv "$venv"
    fi
    local stamp="$venv/.installed-${extras//,/-}" want
    want=$(sha256sum pyproject.toml | cut -d' ' -f1)
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        log "installing the project with [$extras] into $venv"
        "$venv/bin/python" -m pip install -q --upgrade pip
        "$venv/bin/python" -m pip install -q -e ".[$extras]"
        echo "$want" > "$stamp"
    fi
}

need_jsclient() {
    # The official JS client (@elevenlabs/client) as a second peer of the emulator,
    # pinned by tests/contract/jsclient/package-lock.json, installed into
    # .cache/jsclient (npm ci; redone when the lock changes). Node 18 or later.
    local src="$here/tests/contract/jsclient" dest="$here/.cache/jsclient" want
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        # Debian's own Node.js: 18.20.4 on bookworm passes the JS client tests (so does 20; the client declares 22).
        log "installing Debian's nodejs and npm for the JS client contract tests"
        local sudo=()
        [ "$(id -u)" -eq 0 ] || sudo=(sudo)
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nodejs npm
    fi
    want=$(cat "$src/package.json" "$src/package-lock.json" | sha256sum | cut -d' ' -f1)
    if [ "$(cat "$dest/.installed" 2>/dev/null)" != "$want" ]; then
        log "installing the official JS client into $dest"
        mkdir -p "$dest"
        cp "$src/package.json" "$src/package-lock.json" "$dest/"
        npm ci --prefix "$dest" --no-audit --no-fund --loglevel=error
        echo "$want" > "$dest/.installed"
    fi
}

setup() { need_apt; need_venv "$@"; need_jsclient; }

# The ARM check: Debian roots for arm64/armhf under qemu-user, cached in
# /var/cache/voice-appliance-arm (provisioning/arm-check.sh). Needs root.
arm_check() {
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" "$here/provisioning/arm-check.sh" "$@"
}

# Part of `test` (so CI proves ARM too); skip locally with VOICE_APPLIANCE_SKIP_ARM=1.
test_arm() {
    if [ "${VOICE_APPLIANCE_SKIP_ARM:-0}" = 1 ]; then
        log "ARM check skipped (VOICE_APPLIANCE_SKIP_ARM=1)"
        return 0
    fi
    # shellcheck disable=SC2086  # a list of architectures
    arm_check ${VOICE_APPLIANCE_ARM_ARCHES:-arm64}
}

cmd=${1:-}
shift || true
case "$cmd" in
    setup) setup ;;
    demo)
        setup
        exec "$venv/bin/voice-appliance" bench "$@"
        ;;
    test)
        setup
        log "ruff"
        "$venv/bin/ruff" check device tests
        log "mypy"
        "$venv/bin/mypy"
        log "pytest"
        "$venv/bin/python" -m pytest "$@"
        test_arm
        ;;
    test-fast)
        setup
        exec "$venv/bin/python" -m pytest -m "not realtime and not system" "$@"
        ;;
    bench)
        setup bench,test,wake,aec,baseline
        exec "$venv/bin/python" -m pytest -p no:cacheprovider tests/bench -s "$@"
        ;;
    arm) arm_check "$@" ;;
    *)
        echo "usage: provisioning/dev.sh setup|demo|test|test-fast|bench|arm [args…]" >&2
        exit 2
        ;;
esac
