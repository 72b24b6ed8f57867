"""Process resources over time: CPU (per thread), RSS, file descriptors, threads (Linux /proc).

The bench runs the daemon and, usually, the emulator in one process, so CPU
is also attributed per thread: a :class:`ResourceMonitor` samples every
thread's CPU time and remembers the Python thread name, and the owner then
sums the threads it counts as "the device". Threads that live shorter than
one sampling interval are missed; the process total is always exact.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from device.drivers.worker import Worker

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True)
class Sample:
    """One look at the process."""

    t_s: float  # time.monotonic()
    cpu_s: float  # user + system of the whole process
    rss_mb: float
    fds: int
    threads: int


def cpu_s() -> float:
    """User + system CPU seconds of this process so far."""
    t = os.times()
    return t.user + t.system


def peak_rss_mb() -> float:
    """Peak resident set size of this process (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_mb() -> float:
    try:
        fields = Path("/proc/self/statm").read_text().split()
        return int(fields[1]) * _PAGE / (1024 * 1024)
    except (OSError, IndexError, ValueError):
        return peak_rss_mb()


def open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # minus the one listdir holds
    except OSError:
        return -1


def os_threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def sample() -> Sample:
    return Sample(time.monotonic(), cpu_s(), rss_mb(), open_fds(), os_threads())


def thread_cpu_s(native_id: int) -> float | None:
    """CPU seconds of one thread of this process, None when it has gone."""
    try:
        stat = Path(f"/proc/self/task/{native_id}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: fields start after the last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime
    except (IndexError, ValueError):
        return None


class ResourceMonitor(Worker):
    """Samples the process every ``interval_s``; keeps the series and per-thread CPU."""

    def __init__(self, interval_s: float = 0.5, on_sample: Callable[[Sample], None] | None = None) -> None:
        super().__init__("bench-resources")
        self.interval_s = interval_s
        self._on_sample = on_sample
        self._lock = threading.Lock()
        self._samples: list[Sample] = []
        self._thread_cpu: dict[int, tuple[str, float]] = {}

    def run(self) -> None:
        while True:
            self.poll()
            if self.wait(self.interval_s):
                break
        self.poll()

    def poll(self) -> Sample:
        """Take one sample now (also called by the owner for a final reading)."""
        s = sample()
        seen = {}
        for t in threading.enumerate():
            nid = t.native_id
            if nid is None:
                continue
            used = thread_cpu_s(nid)
            if used is not None:
                seen[nid] = (t.name, used)
        with self._lock:
            self._samples.append(s)
            for nid, (name, used) in seen.items():
                old = self._thread_cpu.get(nid)
                if old is None or used >= old[1]:
                    self._thread_cpu[nid] = (name, used)
        if self._on_sample is not None:
            self._on_sample(s)
        return s

    @property
    def samples(self) -> list[Sample]:
        with self._lock:
            return list(self._samples)

    def cpu_by_thread(self) -> dict[str, float]:
        """CPU seconds per thread name (threads of the same name summed)."""
        out: dict[str, float] = {}
        with self._lock:
            for name, used in self._thread_cpu.values():
                out[name] = out.get(name, 0.0) + used
        return out

    def cpu_of(self, counts: Callable[[str], bool]) -> float:
        """CPU seconds of the threads whose name ``counts``."""
        return sum(v for name, v in self.cpu_by_thread().items() if counts(name))
