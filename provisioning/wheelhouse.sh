#!/usr/bin/env bash
# Build the wheels a kiosk needs, on a connected machine, for an offline
# install: `install.sh --wheelhouse DIR` then installs without any network
# and without compilers (every wheel is prebuilt; Debian's python3-* packages
# provide the rest, as in an online install).
#
#   provisioning/wheelhouse.sh [--arch amd64|arm64|armhf] [--extras LIST] [--with-tools] OUT
#   provisioning/wheelhouse.sh --print-latest     # the newest versions, to update constraints.txt
#
# Exactly the versions in provisioning/constraints.txt. The target's Python
# must be Debian Bookworm's python3 (3.11): the wheels built here (pyalsaaudio)
# are for that ABI. Native architecture: built with this machine's Debian
# python3. Another one: inside provisioning/arm-check.sh's cached Bookworm
# root for it, under qemu-user (arm-check.sh --wheelhouse; needs root, and
# ~5 min the first time to build the root). Give the same --extras and
# --with-tools as to install.sh. Carry OUT over (USB stick) and run:
#   sudo provisioning/install.sh --wheelhouse OUT [--extras LIST] [--with-tools]
set -euo pipefail

src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
constraints=$src/provisioning/constraints.txt
arch=""
extras=""
with_tools=0
print_latest=0
out=""
# Debian's python3 by its path: a python3 earlier on PATH (pyenv, a venv) has
# another ABI or lacks Debian's setuptools and wheel.
PY=/usr/bin/python3
# What building the wheels needs on a Debian machine (pyalsaaudio compiles).
BUILD_PACKAGES=(python3 python3-venv python3-dev python3-setuptools python3-wheel gcc libc6-dev libasound2-dev)

log() { printf '\033[1m==> [wheelhouse] %s\033[0m\n' "$*" >&2; }
die() { printf 'wheelhouse.sh: error: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }

while (($#)); do
    case "$1" in
        --arch) arch=${2:?--arch needs amd64, arm64 or armhf}; shift ;;
        --arch=*) arch=${1#*=} ;;
        --extras) extras=${2?--extras needs a list}; shift ;;
        --extras=*) extras=${1#*=} ;;
        --with-tools) with_tools=1 ;;
        --print-latest) print_latest=1 ;;
        -h|--help) usage; exit 0 ;;
        -*) usage >&2; die "unknown option $1" ;;
        *) [ -z "$out" ] || die "one output directory only (got $out and $1)"; out=$1 ;;
    esac
    shift
done

host_arch=$(dpkg --print-architecture)
arch=${arch:-$host_arch}
case "$arch" in amd64|arm64|armhf) ;; *) die "--arch $arch: one of amd64, arm64, armhf" ;; esac
((print_latest)) || [ -n "$out" ] || { usage >&2; die "name the output directory"; }
# The same names install.sh --extras accepts (bench comes with --with-tools).
IFS=, read -r -a wanted <<< "$extras"
for x in "${wanted[@]}"; do
    case "$x" in wake|dsp|aec|apa102|mqtt) ;; *) die "--extras: unknown extra '$x' (valid: wake,dsp,aec,apa102,mqtt)" ;; esac
done

# The requirements of pyproject.toml's dependencies and the chosen extras,
# without those Debian provides (constraints.txt's "debian-provided" line):
# the kiosk takes them from Debian, as an online install does.
requirements() {
    "$PY" - "$src/pyproject.toml" "$constraints" "$1" <<'PY'
import re, sys, tomllib
pyproject, constraints, extras = sys.argv[1], sys.argv[2], [e for e in sys.argv[3].split(",") if e]
project = tomllib.load(open(pyproject, "rb"))["project"]
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
debian = set(map(norm, re.search(r"^# debian-provided:(.*)$", open(constraints).read(), re.M).group(1).split()))
optional = project["optional-dependencies"]
unknown = [e for e in extras if e not in optional]
if unknown:
    sys.exit(f"wheelhouse.sh: error: unknown extra(s) {','.join(unknown)} (valid: wake,dsp,aec,apa102,mqtt)")
reqs, todo, seen = list(project["dependencies"]), list(extras), set()
while todo:
    extra = todo.pop()
    if extra in seen:
        continue
    seen.add(extra)
    for r in optional[extra]:
        m = re.match(r"\s*([A-Za-z0-9._-]+)\s*(\[([^]]*)\])?", r)
        if norm(m.group(1)) == norm(project["name"]):
            todo.extend(x.strip() for x in (m.group(3) or "").split(","))
        else:
            reqs.append(r)
for r in reqs:
    if norm(re.match(r"\s*([A-Za-z0-9._-]+)", r).group(1)) not in debian:
        print(r)
PY
}

# A throwaway venv with Debian's setuptools and wheel (as install.sh builds).
make_venv() {
    local missing=() p
    for p in "${BUILD_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if ((${#missing[@]})); then
        [ "$(id -u)" -eq 0 ] || die "Debian packages missing: ${missing[*]} (sudo apt-get install ${missing[*]}, or run this as root)"
        log "installing Debian packages: ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
    venv=$(mktemp -d /var/tmp/voice-appliance-wheelhouse.XXXXXX)
    trap 'rm -rf "$venv"' EXIT
    "$PY" -m venv --system-site-packages "$venv"
}

if ((print_latest)); then
    # One resolution without the pins: the newest release pip would choose for
    # every distribution a kiosk (all extras, the tools) may get.
    make_venv
    reqs_text=$(requirements wake,dsp,apa102,bench)
    mapfile -t reqs <<< "$reqs_text"
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$venv/bin/python" -m pip install -q --dry-run --ignore-installed \
        --report "$venv/report.json" "${reqs[@]}"
    "$PY" - "$venv/report.json" <<'PY'
import json, sys
for item in sorted(json.load(open(sys.argv[1]))["install"], key=lambda i: i["metadata"]["name"].lower()):
    print(f"{item['metadata']['name']}=={item['metadata']['version']}")
PY
    exit 0
fi

if [ "$arch" != "$host_arch" ]; then
    [ "$(id -u)" -eq 0 ] || die "--arch $arch on this $host_arch machine builds under qemu in a Bookworm root: run as root"
    install -d "$out"
    out=$(cd "$out" && pwd)
    args=(--wheelhouse "$out")
    [ -z "$extras" ] || args+=(--wheelhouse-extras "$extras")
    ((with_tools == 0)) || args+=(--wheelhouse-tools)
    exec "$src/provisioning/arm-check.sh" "${args[@]}" "$arch"
fi

[ "$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" = 3.11 ] \
    || die "this machine's python3 is not 3.11 (Debian Bookworm's): the wheels would not fit the kiosk"
req_extras=$extras
((with_tools == 0)) || req_extras="${req_extras:+$req_extras,}bench"
reqs_text=$(requirements "$req_extras")
mapfile -t reqs <<< "$reqs_text"
make_venv
install -d "$out"
log "building wheels for $arch (${reqs[*]}) into $out"
PIP_DISABLE_PIP_VERSION_CHECK=1 "$venv/bin/python" -m pip wheel -q --no-build-isolation \
    -c "$constraints" -w "$out" "${reqs[@]}"
# Only wheels, each exactly a pinned version (a wheel of an older run's pins
# would make the kiosk's pip choose between two).
"$PY" - "$out" "$constraints" <<'PY'
import pathlib, re, sys
out, constraints = pathlib.Path(sys.argv[1]), sys.argv[2]
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
pinned = set()
for line in open(constraints):
    line = line.split("#", 1)[0].strip()
    if line:
        name, _, rest = line.partition("==")
        pinned.add((norm(name), rest.split(";")[0].strip()))
bad = []
for f in sorted(out.iterdir()):
    if f.suffix != ".whl":
        bad.append(f"{f.name}: not a wheel")
        continue
    name, version = f.name.split("-")[:2]
    if norm(name) not in {n for n, _ in pinned}:
        bad.append(f"{f.name}: {name} is not pinned in constraints.txt (pin it)")
    elif (norm(name), version) not in pinned:
        f.unlink()  # an earlier run's pin
        print(f"[wheelhouse] removed {f.name}: not the pinned version", file=sys.stderr)
if bad:
    sys.exit("wheelhouse.sh: error: " + "; ".join(bad))
PY
log "$(find "$out" -name '*.whl' | wc -l) wheels, $(du -sh "$out" | cut -f1) in $out; on the kiosk: sudo provisioning/install.sh --wheelhouse DIR${extras:+ --extras $extras}$( ((with_tools)) && echo ' --with-tools')"
