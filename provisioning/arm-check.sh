#!/usr/bin/env bash
# The kiosk on ARM without a Pi: Debian bookworm roots for arm64 and armhf run
# under qemu-user-static (binfmt_misc), provisioning/install.sh runs in them
# as on a Pi, then the installed appliance is checked there:
# `run --check`, `doctor` (expected failures only), the bench demo against
# the emulator, and the unit tests. Every step is timed.
#
#   provisioning/arm-check.sh [arm64|armhf|all]          check (default arm64)
#   provisioning/arm-check.sh --cache-only [ARCH…]       only build the cached roots
#   provisioning/arm-check.sh --wheelhouse OUT [--wheelhouse-extras LIST] [--wheelhouse-tools] ARCH
#                       build a kiosk's wheels for ARCH in its root (what
#                       provisioning/wheelhouse.sh --arch ARCH runs)
#
# Cached under /var/cache/voice-appliance-arm/ (VOICE_APPLIANCE_ARM_CACHE):
#   ARCH-root-KEY/   debootstrapped root with install.sh's Debian packages,
#                    KEY = hash of this recipe and install.sh's package list;
#                    never modified: each run works in an overlay on top
#   ARCH-last-run/   the last run's step outputs (install log, doctor, bench-out, …)
#   ARCH-pip/        pip's cache (the wheels built from source: pyalsaaudio,
#                    webrtcvad-wheels on armhf, …); pip keys them by version
#                    and re-resolves pyproject.toml on every run.
# Each run copies the CURRENT checkout (working tree, not a cached copy) into
# the overlay. Mounts and processes are cleaned up on exit, also on failure.
# Run as root (debootstrap, chroot, mounts).
# Most functions run through step() or a trap, which shellcheck cannot follow.
# shellcheck disable=SC2317
set -euo pipefail

src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${VOICE_APPLIANCE_ARM_CACHE:-/var/cache/voice-appliance-arm}
suite=bookworm
mirror=${VOICE_APPLIANCE_ARM_MIRROR:-http://deb.debian.org/debian}
# Bump when the root recipe below changes (invalidates the cached roots).
RECIPE=1
# What a Raspberry Pi OS Lite image has and minbase lacks, that install.sh
# relies on being there (systemctl for the units, useradd is in passwd).
BASE_INCLUDE=systemd,systemd-sysv,ca-certificates,passwd
HOST_PACKAGES=(qemu-user-static debootstrap)
# For the unit tests only, not the kiosk: real speech for the gate and VAD
# tests. arm64 only: in the armhf root under qemu-user espeak-ng finds no
# voice at all ("The specified espeak-ng voice does not exist"), an artefact
# of emulating 32-bit on a 64-bit host; without it those tests skip.
test_packages() { [ "$1" = arm64 ] && echo espeak-ng sox; true; }
# The kiosk extras install.sh gets (--extras): on arm64 noise suppression and
# automatic gain (webrtc-noise-gain has an aarch64 wheel), so their unit tests
# run there instead of skipping. Not `wake`: the engines run under qemu (once
# /sys is mounted, below) but far too slowly for CI: the unit tests took 577 s
# instead of 335, and openWakeWord's test hit its 120 s timeout.
kiosk_extras() { [ "$1" = arm64 ] && echo dsp; true; }

log() { printf '\033[1m==> [arm] %s\033[0m\n' "$*" >&2; }
die() { printf 'arm-check.sh: error: %s\n' "$*" >&2; exit 1; }

# --- timing -------------------------------------------------------------------
declare -a TIMES=()
now() { date +%s.%N; }
# step ARCH NAME CMD…: run CMD, record and print its wall time; fail on failure.
step() {
    local arch=$1 name=$2 t0 t1 rc=0
    shift 2
    log "$arch: $name"
    t0=$(now)
    "$@" || rc=$?
    t1=$(now)
    local secs
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    TIMES+=("$(printf '%-6s %-28s %8s s  %s' "$arch" "$name" "$secs" "$([ $rc -eq 0 ] && echo ok || echo "FAILED ($rc)")")")
    printf '[arm] %s: %s took %s s (exit %s)\n' "$arch" "$name" "$secs" "$rc" >&2
    return "$rc"
}
print_times() {
    ((${#TIMES[@]})) || return 0
    printf '\nARM check timings (emulated under qemu-user on this host: %s, %s cores)\n' \
        "$(uname -m)" "$(nproc)"
    printf '%s\n' "${TIMES[@]}"
}

# logged FILE CMD…: run CMD with its output in FILE; show the tail on failure.
logged() {
    local file=$1 rc=0
    shift
    "$@" >"$file" 2>&1 || rc=$?
    ((rc == 0)) || { tail -40 "$file" >&2; printf '[arm] full log: %s\n' "$file" >&2; }
    return "$rc"
}

# --- host: qemu-user + binfmt_misc ------------------------------------------
QEMUS=(qemu-aarch64 qemu-arm)

register_binfmt() {
    # qemu-user-static's own registrations (flag F: the interpreter is opened
    # now, so the roots need no copy of it), written straight to the kernel.
    local q
    for q in "${QEMUS[@]}"; do
        # (EEXIST when another run registered it at the same moment: fine.)
        [ -e "/proc/sys/fs/binfmt_misc/$q" ] \
            || cat "/usr/lib/binfmt.d/$q.conf" 2>/dev/null > /proc/sys/fs/binfmt_misc/register || true
    done
}

host_prerequisites() {
    local missing=() p q
    for p in "${HOST_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if ((${#missing[@]})); then
        log "installing host packages: ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
    if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
        log "mounting binfmt_misc"
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    fi
    register_binfmt
    for q in "${QEMUS[@]}"; do
        [ -e "/proc/sys/fs/binfmt_misc/$q" ] || die "cannot register $q with binfmt_misc"
    done
}

# binfmt_misc is global to the kernel: systemd-binfmt in any container booted
# on this machine (e.g. the boot test's) flushes every registration. Restore
# ours within a second while the check runs.
KEEPER_PID=""
start_binfmt_keeper() {
    ( while sleep 1; do register_binfmt 2>/dev/null || true; done ) &
    KEEPER_PID=$!
}


# The root's APT sources. No security suite: this machine's mirror serves
# its armhf index inconsistently ("File has unexpected size"), and the check
# is about the project, not about the freshest Debian.
sources() {
    printf 'deb %s %s main\ndeb %s %s-updates main\n' "$mirror" "$suite" "$mirror" "$suite"
}

root_key() {
    {
        echo "recipe $RECIPE suite $suite arch $1 include $BASE_INCLUDE test $(test_packages "$1")"
        sources
        "$src/provisioning/install.sh" --print-apt-packages
    } | sha256sum | cut -c1-16
}

# TLS through this machine's intercepting proxy: its CA must be trusted in
# the root too (a real Pi does not need this, so it lives here, not in
# install.sh). Same for the host's apt settings about its mirror.
harness_trust() {
    local r=$1
    cp /etc/hosts "$r/etc/hosts"
    cp -L /etc/resolv.conf "$r/etc/resolv.conf" 2>/dev/null || true
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        install -d "$r/usr/local/share/ca-certificates"
        cp /usr/local/share/ca-certificates/*.crt "$r/usr/local/share/ca-certificates/"
        chroot "$r" update-ca-certificates >/dev/null 2>&1
    fi
    [ ! -e /etc/apt/apt.conf.d/99artifact-registry ] || cp /etc/apt/apt.conf.d/99artifact-registry "$r/etc/apt/apt.conf.d/"
}

# --- mounts (tracked so the trap can undo them) ------------------------------
declare -a MOUNTS=()
mnt() { mount "$@"; MOUNTS+=("${*: -1}"); }
kill_root_procs() {
    # Every process whose root is under $1 (chroot + qemu-user): TERM, then KILL.
    local r=$1 sig pid link
    for sig in TERM KILL; do
        local found=0
        for pid in /proc/[0-9]*; do
            link=$(readlink "$pid/root" 2>/dev/null) || continue
            case "$link" in "$r"|"$r"/*) kill -s "$sig" "${pid#/proc/}" 2>/dev/null && found=1 ;; esac
        done
        ((found)) || return 0
        sleep 2
    done
}
unmount_all() {
    local i
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        umount "${MOUNTS[$i]}" 2>/dev/null || umount -l "${MOUNTS[$i]}" 2>/dev/null || true
    done
    MOUNTS=()
}
# unmount_under DIR: whatever is still mounted below DIR (e.g. debootstrap's
# own /proc after it failed), deepest first.
unmount_under() {
    local m
    while read -r m; do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done < <(awk -v d="$1" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/self/mounts | sort -r)
}
declare -a ROOTS_IN_USE=() TMPDIRS=()
cleanup() {
    local r
    for r in "${ROOTS_IN_USE[@]}"; do kill_root_procs "$r"; done
    unmount_all
    for r in "${TMPDIRS[@]}"; do unmount_under "$r"; rm -rf --one-file-system "$r"; done
    [ -z "$KEEPER_PID" ] || { kill "$KEEPER_PID" 2>/dev/null; wait "$KEEPER_PID" 2>/dev/null || true; }
    print_times
}
trap cleanup EXIT
trap 'exit 130' INT TERM

chroot_mounts() {
    local r=$1
    mnt -t proc proc "$r/proc"
    # TFLite's cpuinfo (openWakeWord, microWakeWord) reads /sys/devices/system/cpu;
    # without /sys it fails to parse it and the interpreter then dies of SIGSEGV.
    mnt -t sysfs -o ro,nosuid,nodev,noexec sysfs "$r/sys"
    mnt --bind /dev "$r/dev"
    mnt -t devpts devpts "$r/dev/pts" -o newinstance,ptmxmode=0666
    mnt -t tmpfs tmpfs "$r/dev/shm"
    mnt -t tmpfs tmpfs "$r/tmp"
    mnt -t tmpfs tmpfs "$r/run"
}

# --- the cached root -----------------------------------------------------------
build_root() {
    local arch=$1 dest=$2 tmp
    tmp="$dest.tmp.$$"
    TMPDIRS+=("$tmp")
    # Twice at most: on this shared machine another process may flush
    # binfmt_misc (see start_binfmt_keeper) while dpkg runs in the root.
    if ! step "$arch" "debootstrap (cache)" logged "$cache/$arch-debootstrap.log" debootstrap --arch="$arch" \
        --variant=minbase --include="$BASE_INCLUDE" "$suite" "$tmp" "$mirror"; then
        cp "$tmp/debootstrap/debootstrap.log" "$cache/$arch-debootstrap-inner.log" 2>/dev/null || true
        log "$arch: debootstrap failed (its own log: $cache/$arch-debootstrap-inner.log); trying once more"
        unmount_under "$tmp"; rm -rf --one-file-system "$tmp"
        step "$arch" "debootstrap (cache, 2nd try)" logged "$cache/$arch-debootstrap.log" debootstrap \
            --arch="$arch" --variant=minbase --include="$BASE_INCLUDE" "$suite" "$tmp" "$mirror"
    fi
    sources > "$tmp/etc/apt/sources.list"
    # Debian's policy-rc.d convention: no daemons start inside the build.
    printf '#!/bin/sh\nexit 101\n' > "$tmp/usr/sbin/policy-rc.d"; chmod 755 "$tmp/usr/sbin/policy-rc.d"
    harness_trust "$tmp"
    ROOTS_IN_USE+=("$tmp")
    chroot_mounts "$tmp"
    # install.sh's own Debian-package step, run inside the root as on a Pi.
    install -d "$tmp/var/tmp/va-src"
    cp -a "$src/provisioning" "$tmp/var/tmp/va-src/"
    step "$arch" "install.sh packages (cache)" logged "$cache/$arch-packages.log" \
        chroot "$tmp" /var/tmp/va-src/provisioning/install.sh --packages-only
    rm -rf "$tmp/var/tmp/va-src"
    local extra
    read -r -a extra <<< "$(test_packages "$arch")"
    if ((${#extra[@]})); then
        step "$arch" "test packages (cache)" logged "$cache/$arch-test-packages.log" \
            chroot "$tmp" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${extra[@]}"
    fi
    chroot "$tmp" apt-get clean
    kill_root_procs "$tmp"
    unmount_all
    unmount_under "$tmp"
    ROOTS_IN_USE=()
    rm -rf --one-file-system "$dest"
    mv "$tmp" "$dest"
    du -sh "$dest" >&2
}

# ensure_root ARCH: print the cached root's path, building it if needed.
ensure_root() {
    local arch=$1 key dest old
    key=$(root_key "$arch")
    dest="$cache/$arch-root-$key"
    install -d -m 0755 "$cache"
    exec 8>"$cache/.lock-$arch"
    flock 8
    if [ ! -x "$dest/usr/bin/python3" ]; then
        log "$arch: no cached root for key $key: building it"
        # Older roots, and what a killed build left (maybe still with mounts).
        for old in "$cache/$arch-root-"*; do
            if [ ! -e "$old" ] || [ "$old" = "$dest" ]; then continue; fi
            unmount_under "$old"; rm -rf --one-file-system "$old"
        done
        build_root "$arch" "$dest"
    else
        log "$arch: cached root $dest"
    fi
    ROOT_DIR=$dest
}

main() {
    [ "$(id -u)" -eq 0 ] || die "run as root (debootstrap, chroot and mounts need it)"
    local cache_only=0 arches=() wh_out="" wh_args=()
    while (($#)); do
        case "$1" in
            --cache-only) cache_only=1 ;;
            --wheelhouse) wh_out=${2:?--wheelhouse needs a directory}; shift ;;
            --wheelhouse-extras) wh_args+=(--extras "${2:?--wheelhouse-extras needs a list}"); shift ;;
            --wheelhouse-tools) wh_args+=(--with-tools) ;;
            arm64|armhf) arches+=("$1") ;;
            all) arches+=(arm64 armhf) ;;
            -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
            *) die "unknown argument $1 (arm64, armhf, all, --cache-only, --wheelhouse OUT)" ;;
        esac
        shift
    done
    ((${#arches[@]})) || arches=(arm64)
    step host "host qemu + binfmt_misc" host_prerequisites
    start_binfmt_keeper
    local arch
    for arch in "${arches[@]}"; do
        ensure_root "$arch"
        if [ -n "$wh_out" ]; then
            build_wheelhouse "$arch" "$ROOT_DIR" "$wh_out" "${wh_args[@]}"
        elif ((cache_only == 0)); then
            check_arch "$arch" "$ROOT_DIR"
        fi
    done
    # Exit here: bash reads a script as it runs, and this file may have been
    # edited meanwhile (a checkout switching branches).
    exit 0
}

# overlay_root ARCH BASE: a writable overlay over the cached root in $R, with
# the chroot mounts and pip's cache for ARCH.
overlay_root() {
    local arch=$1 base=$2 work
    work=$(mktemp -d /var/tmp/voice-appliance-arm.XXXXXX)
    TMPDIRS+=("$work")
    mkdir -p "$work/upper" "$work/work" "$work/root"
    R=$work/root
    mnt -t overlay overlay -o "lowerdir=$base,upperdir=$work/upper,workdir=$work/work" "$R"
    ROOTS_IN_USE+=("$R")
    chroot_mounts "$R"
    install -d "$cache/$arch-pip" "$R/root/.cache/pip"
    mnt --bind "$cache/$arch-pip" "$R/root/.cache/pip"
}

# The wheelhouse for ARCH: provisioning/wheelhouse.sh run natively in the
# root (Bookworm's python3 and build tools for ARCH, under qemu), into OUT.
build_wheelhouse() {
    local arch=$1 base=$2 out=$3
    shift 3
    install -d "$out"
    overlay_root "$arch" "$base"
    install -d "$R/var/tmp/va-src" "$R/var/tmp/wheelhouse-out"
    tar -C "$src" --exclude=.git --exclude=.venv --exclude='*.egg-info' --exclude=__pycache__ --exclude=./tests \
        --exclude=.mypy_cache --exclude=.ruff_cache --exclude=.pytest_cache --exclude=./.cache -cf - . \
        | tar -C "$R/var/tmp/va-src" -xf -
    mnt --bind "$out" "$R/var/tmp/wheelhouse-out"
    step "$arch" "wheelhouse" logged "$cache/$arch-wheelhouse.log" \
        in_root /var/tmp/va-src/provisioning/wheelhouse.sh "$@" /var/tmp/wheelhouse-out
    tail -1 "$cache/$arch-wheelhouse.log" >&2
    kill_root_procs "$R"
    unmount_all
    ROOTS_IN_USE=()
}

# --- the check, in an overlay over the cached root ------------------------
CLONE=/home/pi/voice-appliance     # where a Pi user would have cloned it
PREFIX=/opt/voice-appliance
# doctor's expected results in a root without hardware (CHECK=STATUS|STATUS; every
# other check OK): no sound card (FAIL), no GPIO chip (WARN: the kiosk runs on),
# --offline, no systemd running.
DOCTOR_EXPECT="audio=FAIL gpio=WARN network=SKIP service=SKIP"

# in_root CMD…: run CMD in the root as root would on a Pi (clean environment).
in_root() {
    chroot "$R" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 TERM=dumb "$@"
}

# The user's edit after install: the emulator as the agent, the key installed
# by install.sh (root-only) named in the file, since no systemd hands it over
# here (LoadCredential=).
write_config() {
    cat > "$R/etc/voice-appliance/config.toml" <<'TOML'
# written by provisioning/arm-check.sh
[agent]
agent_id = "agent_emulator"
base_url = "http://127.0.0.1:8765"
connection = "signed_url"
api_key_file = "/etc/voice-appliance/api_key"
TOML
}

run_check() {
    in_root "$PREFIX/bin/voice-appliance" run --check >"$logs/run-check.out" 2>&1 \
        || { cat "$logs/run-check.out" >&2; return 1; }
    head -2 "$logs/run-check.out" >&2
    if ! grep -q '^config: /etc/voice-appliance/config.toml OK' "$logs/run-check.out" \
        || ! grep -q '^api key: from ' "$logs/run-check.out"; then
        cat "$logs/run-check.out" >&2; return 1
    fi
    ! grep -q emulator-key "$logs/run-check.out" || { echo "the API key was printed" >&2; return 1; }
}

# doctor without hardware: no sound card, no GPIO chip, no running systemd.
# What may FAIL is exactly what needs hardware; the rest must be OK/WARN/SKIP.
run_doctor() {
    local rc=0
    in_root "$PREFIX/bin/voice-appliance" doctor --offline --json >"$logs/doctor.json" 2>"$logs/doctor.err" || rc=$?
    ((rc == 1)) || { echo "doctor exited $rc, expected 1 (FAIL lines for the missing hardware)" >&2
                     cat "$logs/doctor.json" "$logs/doctor.err" >&2; return 1; }
    python3 - "$logs/doctor.json" "$DOCTOR_EXPECT" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))
expect = dict(item.split("=") for item in sys.argv[2].split())
for r in rows:
    print(f"  {r['status']:5} {r['check']:12} {r['detail']}", file=sys.stderr)
got = {}
for r in rows:
    got.setdefault(r["check"], set()).add(r["status"])
bad = []
for check, statuses in got.items():
    allowed = set(expect.get(check, "OK").split("|"))
    if not statuses <= allowed:
        bad.append(f"{check}: got {'/'.join(sorted(statuses))}, expected {'|'.join(sorted(allowed))}")
for check, want in expect.items():
    if want == "FAIL" and "FAIL" not in got.get(check, set()):
        bad.append(f"{check}: expected a FAIL (no hardware here), got {'/'.join(sorted(got.get(check, {'nothing'})))}")
if bad:
    sys.exit("doctor: unexpected results:\n  " + "\n  ".join(bad))
PY
}

# The installed package must be this checkout's, byte for byte (the roots and
# pip's cache outlive runs; pip even caches wheels of the project itself).
installed_is_checkout() {
    local site
    site=$(in_root "$PREFIX/bin/python" -c 'import device, os; print(os.path.dirname(device.__file__))')
    case "$site" in "$PREFIX"/*) ;; *) echo "device is imported from $site, not from $PREFIX" >&2; return 1 ;; esac
    diff -r -q -x __pycache__ "$R$CLONE/device" "$R$site" >&2 \
        || { echo "the package in $PREFIX is not the current checkout" >&2; return 1; }
}

install_extras() {
    # The test extra's requirements into the installed venv (pytest,
    # hypothesis, ruff, mypy): they must install on ARM too. Not the project
    # again: install.sh installed it (websockets came with --with-tools).
    # With build isolation (unlike install.sh): on armhf mypy's dependency librt
    # has no wheel, and its sdist needs a newer setuptools than the venv's 66.
    # (--no-compile: byte-compiling all of mypy ahead of time is slow under emulation.)
    in_root "$PREFIX/bin/python" -c 'import tomllib
extras = tomllib.load(open("'"$CLONE"'/pyproject.toml", "rb"))["project"]["optional-dependencies"]
print("\n".join(extras["test"]))' > "$R/tmp/extras.txt"
    cat "$R/tmp/extras.txt"
    in_root "$PREFIX/bin/python" -m pip install --no-compile --progress-bar off -r /tmp/extras.txt
}

run_bench() {
    in_root /bin/sh -c "cd /tmp && $PREFIX/bin/voice-appliance bench --no-progress --out /tmp/bench-out" \
        >"$logs/bench.out" 2>&1 || { cat "$logs/bench.out" >&2; return 1; }
    cat "$logs/bench.out" >&2
    # The daemon's own watchdog thread logs this when a worker's heartbeat goes
    # stale: under systemd that is a restart.
    if grep -q "stopped responding" "$logs/bench.out"; then
        echo "bench under emulation: a worker thread missed its heartbeat (a watchdog kill on a Pi)" >&2
        return 1
    fi
    python3 - "$R/tmp/bench-out/report.json" <<'PY'
import json, sys
rep = json.load(open(sys.argv[1]))
bad = []
if not rep["outcome"]["ok"]:
    bad.append(f"outcome: {rep['outcome']}")
# The demo ends when the agent hangs up after the second question; a run cut off
# at --max-wait-s means the agent never heard that question (seen once under qemu).
if rep["outcome"]["ended_by"] != "agent_ended":
    bad.append(f"ended by {rep['outcome']['ended_by']}, not agent_ended: {rep['outcome']['detail']}")
for k, v in rep["xruns"].items():
    if isinstance(v, (int, float)) and v:
        bad.append(f"xruns.{k} = {v}")
for i in rep["interruptions"]:
    if i["old_audio_ms_after"] is None or i["old_audio_ms_after"] > 62.5:
        bad.append(f"interruption at {i['at_s']}: {i['old_audio_ms_after']} ms of old audio after it")
if not rep["interruptions"]:
    bad.append("no interruption was measured")
if "local" not in {i["source"] for i in rep["interruptions"]}:
    # The demo's press comes at a fixed time; the emulator runs emulated too, and a
    # reply that starts after the press leaves nothing to interrupt.
    print("[arm] note: the reply started after the scripted barge-in press; "
          "only the agent's interruption was measured", file=sys.stderr)
if bad:
    sys.exit("bench under emulation: " + "; ".join(bad))
PY
}

run_unit_tests() {
    # The fast tier: the realtime unit tests start CLI processes, tools and engines,
    # which qemu makes 10-20x slower (17.5 min of a 35 min CI run); the CLI, the
    # daemon's check, doctor and the bench already run here as steps of their own.
    in_root /bin/sh -c "cd $CLONE && $PREFIX/bin/python -m pytest -q -p no:cacheprovider \
        -m 'not realtime and not system' tests/unit" \
        >"$logs/unit.out" 2>&1 || { tail -60 "$logs/unit.out" >&2; return 1; }
    tail -3 "$logs/unit.out" >&2
}

check_arch() {
    local arch=$1 base=$2
    # Step outputs outlive the run (the overlay does not): kept until the next run.
    logs="$cache/$arch-last-run"
    rm -rf "$logs"; install -d "$logs"
    overlay_root "$arch" "$base"
    # The current checkout, working tree as it is (not a cached copy).
    install -d "$R$CLONE"
    tar -C "$src" --exclude=.git --exclude=.venv --exclude='*.egg-info' --exclude=__pycache__ \
        --exclude=.mypy_cache --exclude=.ruff_cache --exclude=.pytest_cache --exclude=bench-out -cf - . \
        | tar -C "$R$CLONE" -xf -
    printf 'emulator-key\n' > "$R/root/key.txt"
    printf '[arm] %s root: uname -m = %s\n' "$arch" "$(in_root uname -m)" >&2
    # --with-tools: the bench demo below runs the emulator and the bench.
    local extras
    extras=$(kiosk_extras "$arch")
    step "$arch" "install.sh" logged "$logs/install.log" \
        in_root /bin/sh -c "cd $CLONE && provisioning/install.sh --asound usb --api-key-file /root/key.txt \
            --with-tools${extras:+ --extras $extras}"
    write_config
    step "$arch" "run --check" run_check
    step "$arch" "doctor (no hardware)" run_doctor
    step "$arch" "pip install extras" logged "$logs/extras.log" install_extras
    step "$arch" "installed = checkout" installed_is_checkout
    step "$arch" "bench demo (emulator)" run_bench
    step "$arch" "unit tests" run_unit_tests
    cp -r "$R/tmp/bench-out" "$logs/" 2>/dev/null || true
    kill_root_procs "$R"
    unmount_all
    ROOTS_IN_USE=()
}

main "$@"
