"""A Debian root with a real systemd as PID 1, without a VM (how: the list below).

- :func:`cached_root` builds a minimal Debian bookworm with debootstrap once
  and keeps it under ``/var/cache/voice-appliance-test/<hash of the package
  list>/root`` (a changed package list builds a new one).
- :class:`Overlay` puts a writable overlayfs over the cached root, so every
  run starts from the same clean system and the cache is never written.
- :class:`Machine` boots ``/lib/systemd/systemd`` in new PID, mount, UTS and
  cgroup namespaces, chrooted into the overlay, inside a cgroup of its own
  (so its units never touch the host's cgroups), runs commands in it through
  ``nsenter``, and tears it all down by killing its PID 1.

Everything here needs root.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from tests.system.unitfile import REPO

CACHE_DIR = Path(os.environ.get("VOICE_APPLIANCE_TEST_CACHE", "/var/cache/voice-appliance-test"))
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# What a booted minimal system needs besides what install.sh needs.
BASE_PACKAGES = ("systemd", "systemd-sysv", "dbus")
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_PREFIX = "voice-appliance-test."

T = TypeVar("T")


class Unavailable(Exception):
    """This machine cannot run the boot test; the message says why (the test skips)."""


def install_packages() -> list[str]:
    res = subprocess.run(
        [str(REPO / "provisioning" / "install.sh"), "--print-apt-packages"],
        capture_output=True, text=True, check=True, timeout=30,
    )
    return res.stdout.split()


def root_key(packages: Sequence[str]) -> str:
    text = "\n".join([SUITE, MIRROR, "minbase", *sorted(set(packages))])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached_root(packages: Sequence[str], log: Callable[[str], None] = print) -> Path:
    """The cached debootstrap root for ``packages``; built (about 1–3 min) when missing."""
    key = root_key(packages)
    root = CACHE_DIR / key / "root"
    if (CACHE_DIR / key / "complete").exists():
        return root
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run may be building the same root
        if (CACHE_DIR / key / "complete").exists():
            return root
        building = CACHE_DIR / key / "root.building"
        shutil.rmtree(building, ignore_errors=True)
        building.parent.mkdir(parents=True, exist_ok=True)
        log(f"building the Debian {SUITE} root for the boot test in {root} (once; 1–3 min)")
        res = subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(sorted(set(packages)))}",
             SUITE, str(building), MIRROR],
            capture_output=True, text=True, timeout=1200,
        )
        if res.returncode != 0:
            tail = "\n".join((res.stdout + res.stderr).splitlines()[-15:])
            shutil.rmtree(building, ignore_errors=True)
            if any(s in tail for s in ("Failed getting release file", "Couldn't download",
                                       "Temporary failure resolving", "Could not resolve")):
                raise Unavailable(f"debootstrap cannot reach {MIRROR}:\n{tail}")
            raise RuntimeError(f"debootstrap failed:\n{tail}")
        # Logs and caches the boot test never needs; keeps the cache small.
        shutil.rmtree(building / "var" / "cache" / "apt" / "archives", ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
        building.rename(root)
        (CACHE_DIR / key / "complete").write_text(" ".join(sorted(set(packages))) + "\n")
        for other in CACHE_DIR.iterdir():  # roots for older package lists
            if other.is_dir() and other.name != key and (other / "complete").exists():
                shutil.rmtree(other, ignore_errors=True)
    return root


def wait_for(predicate: Callable[[], T], timeout_s: float, what: str, interval_s: float = 0.2) -> T:
    """Poll ``predicate`` until it returns something truthy; AssertionError naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)


class Overlay:
    """A writable overlayfs view of ``lower`` at ``work/merged``; unmounted by :meth:`close`."""

    def __init__(self, lower: Path, work: Path) -> None:
        self.lower = lower
        for d in ("upper", "work", "merged"):
            (work / d).mkdir(parents=True, exist_ok=True)
        self.path = work / "merged"
        self._binds: list[Path] = []
        subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir={lower},upperdir={work / 'upper'},workdir={work / 'work'}", str(self.path)],
            check=True, capture_output=True, timeout=30,
        )

    def bind(self, source: Path, target_in_root: str) -> None:
        """Bind-mount a host directory into the root (e.g. a pip cache shared between runs)."""
        target = self.path / target_in_root.lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "--bind", str(source), str(target)], check=True, capture_output=True, timeout=30)
        self._binds.append(target)

    def close(self) -> None:
        for target in reversed(self._binds):
            subprocess.run(["umount", "-l", str(target)], capture_output=True, timeout=30)
        self._binds.clear()
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True, timeout=30)


def _cgroup_hierarchies() -> list[Path]:
    # cpuset needs cpus/mems set before a process may join a child group; systemd does not need it.
    return [
        h for h in sorted(CGROUP_ROOT.iterdir())
        if (h / "cgroup.procs").exists() and h.name != "cpuset"
    ] or ([CGROUP_ROOT] if (CGROUP_ROOT / "cgroup.procs").exists() else [])


def _remove_cgroup_tree(path: Path) -> bool:
    if not path.exists():
        return True
    for d in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            d.rmdir()
    with contextlib.suppress(OSError):
        path.rmdir()
    return not path.exists()


def remove_stale_cgroups() -> None:
    """Remove groups left by an earlier run that died; a group of a live run is left alone."""
    for h in _cgroup_hierarchies():
        for group in h.glob(CGROUP_PREFIX + "*"):
            owner = group.name[len(CGROUP_PREFIX):].split(".")[0]
            if owner.isdigit() and not Path(f"/proc/{owner}").exists():
                _remove_cgroup_tree(group)


# Runs as root on the host: join our own cgroups, then unshare and boot. If the
# test process dies without tearing down, unshare dies with it (--pdeathsig) and
# takes PID 1, so the whole namespace (--kill-child), along.
_BOOT_SCRIPT = r"""
set -e
root=$1; group=$2; shift 2
for h in "$@"; do mkdir -p "$h/$group"; echo $$ > "$h/$group/cgroup.procs"; done
exec env -i container=voice-appliance-test PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    setpriv --pdeathsig KILL \
    unshare --cgroup --pid --fork --kill-child=KILL --mount --uts --propagation private \
    sh -c 'mount --make-rshared "$0" && mount -t proc proc "$0/proc" &&
           exec chroot "$0" /lib/systemd/systemd --system --log-target=journal' "$root"
"""


class Machine:
    """systemd as PID 1 in namespaces, chrooted into ``root``."""

    def __init__(self, root: Path, log_path: Path) -> None:
        self.root = root
        self.group = f"{CGROUP_PREFIX}{os.getpid()}.{time.monotonic_ns()}"
        self._hierarchies = _cgroup_hierarchies()
        # binfmt_misc is one table for the whole kernel: systemd-binfmt in here would flush the
        # host's registrations (the ARM check's qemu interpreters) at boot and at stop.
        masks = root / "etc" / "systemd" / "system"
        masks.mkdir(parents=True, exist_ok=True)
        for unit in ("systemd-binfmt.service", "proc-sys-fs-binfmt_misc.automount", "proc-sys-fs-binfmt_misc.mount"):
            if not (masks / unit).is_symlink():
                (masks / unit).symlink_to("/dev/null")
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in shutdown()
        self._proc = subprocess.Popen(
            ["sh", "-c", _BOOT_SCRIPT, "boot", str(root), self.group, *map(str, self._hierarchies)],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
        )
        self.pid1 = 0  # systemd's pid as the host sees it
        try:
            self.pid1 = wait_for(self._find_pid1, 30, "systemd to start as PID 1")
        except BaseException:
            self.shutdown()
            raise

    def _find_pid1(self) -> int:
        if self._proc.poll() is not None:
            raise AssertionError(f"the namespace exited at once ({self._proc.returncode}); see {self._log.name}")
        for child in Path(f"/proc/{self._proc.pid}/task/{self._proc.pid}/children").read_text().split():
            try:
                if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                    return int(child)
            except OSError:
                continue
        return 0

    def run(
        self, *argv: str, check: bool = True, timeout_s: float = 60, input: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the machine (its PID and mount namespaces, chrooted)."""
        cmd = ["nsenter", "-t", str(self.pid1), "-p", "-m", "-u", "--", "chroot", str(self.root)]
        if env:
            cmd += ["env", *(f"{k}={v}" for k, v in env.items())]
        res = subprocess.run(
            [*cmd, *argv], capture_output=True, text=True, timeout=timeout_s, input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if check and res.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {res.returncode}:\n{res.stdout}{res.stderr}")
        return res

    def boot_finished(self, timeout_s: float = 60) -> str:
        """Wait until the boot's initial jobs are done; returns running/degraded."""
        def state() -> str:
            res = self.run("systemctl", "is-system-running", check=False, timeout_s=10)
            text = res.stdout.strip()
            return text if text in ("running", "degraded") else ""

        return wait_for(state, timeout_s, "the boot to finish (systemctl is-system-running)", 0.3)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        res = self.run("systemctl", "show", unit, "-p", ",".join(props), timeout_s=20)
        out = {}
        for line in res.stdout.splitlines():
            key, _, value = line.partition("=")
            out[key] = value
        return out

    def journal(self, unit: str) -> str:
        return self.run("journalctl", "-u", unit, "-b", "--no-pager", "-o", "cat", check=False, timeout_s=20).stdout

    def shutdown(self) -> None:
        """Kill PID 1 (the kernel then kills everything in its namespace) and remove its cgroups."""
        if self.pid1:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid1, signal.SIGKILL)
        try:
            # unshare reaps PID 1 and exits; killing it first would leave PID 1 a zombie of the host's init
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=30)
        with contextlib.suppress(AssertionError):
            wait_for(lambda: all(_remove_cgroup_tree(h / self.group) for h in self._hierarchies), 20,
                     "the machine's cgroups to empty")
        self._log.close()


@contextlib.contextmanager
def booted(root: Path, log_path: Path) -> Iterator[Machine]:
    machine = Machine(root, log_path)
    try:
        yield machine
    finally:
        machine.shutdown()
