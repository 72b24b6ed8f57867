"""systemd notifications: READY, STATUS, WATCHDOG, STOPPING, RELOADING.

A plain AF_UNIX datagram to ``$NOTIFY_SOCKET`` (what ``sd_notify(3)`` does;
abstract sockets start with ``@``), so it works without libsystemd and is
testable with a real socket. Outside systemd every call is a no-op.

The watchdog (:class:`Watchdog`) sends ``WATCHDOG=1`` only while every
worker's heartbeat is fresh: a stuck thread stops the pings and systemd
restarts the service (``WatchdogSec=`` in the unit).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping

from device.drivers.worker import Worker, WorkerExited

log = logging.getLogger(__name__)

_MAX_STATUS_CHARS = 400


class Notifier:
    """Sends sd_notify messages; thread-safe; never raises."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if path.startswith("@"):
            self.address = "\0" + path[1:]
        elif path.startswith("/"):
            self.address = path
        self.watchdog_interval_s: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            # systemd's advice: ping at half the timeout
            self.watchdog_interval_s = int(usec) / 1e6 / 2
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._warned = False
        self.sent = 0

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *fields: str) -> bool:
        """Send ``KEY=value`` lines as one datagram; False when not under systemd or on failure."""
        if self.address is None:
            return False
        data = "\n".join(fields).encode("utf-8", "replace")
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(data, self.address)
                self.sent += 1
                return True
            except OSError as e:
                if not self._warned:
                    self._warned = True
                    log.warning("cannot notify systemd at $NOTIFY_SOCKET (%s); is the unit Type=notify?", e)
                return False

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={_clip(status)}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={_clip(text)}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str = "stopping") -> bool:
        return self.notify("STOPPING=1", f"STATUS={_clip(status)}")

    def reloading(self) -> bool:
        # Type=notify-reload wants MONOTONIC_USEC with RELOADING=1 (systemd 253+); older ones ignore it.
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_STATUS_CHARS else text[: _MAX_STATUS_CHARS - 1] + "…"


def stale_workers(workers: Iterable[Worker], stall_s: float) -> list[str]:
    """Names of workers that died or whose heartbeat is older than ``stall_s``."""
    return [w.name for w in workers if not w.alive or w.heartbeat_age_s > stall_s]


class Watchdog(Worker):
    """Pings systemd while every worker is healthy; also runs the periodic housekeeping.

    ``workers`` is called each round (the set changes on reload). ``tick`` runs
    every round on this thread (status file, STATUS= line); its failures are
    logged, never fatal.
    """

    def __init__(
        self,
        notifier: Notifier,
        workers: Callable[[], Iterable[Worker]],
        stall_s: float,
        interval_s: float = 1.0,
        tick: Callable[[], None] | None = None,
        enabled: bool = True,
        on_exit: Callable[[WorkerExited], None] | None = None,
    ) -> None:
        super().__init__("watchdog", on_exit=on_exit)
        self.notifier = notifier
        self._workers = workers
        self.stall_s = stall_s
        wd = notifier.watchdog_interval_s
        self.interval_s = min(interval_s, wd) if wd else interval_s
        self._tick = tick
        self.enabled = enabled and wd is not None
        self.pings = 0
        self.stuck: list[str] = []
        self.rounds = 0
        self._round_done = threading.Condition()

    def run(self) -> None:
        while not self.stopping:
            self.beat()
            self.check()
            if self._tick is not None:
                try:
                    self._tick()
                except Exception:
                    log.exception("status housekeeping failed")
            with self._round_done:
                self.rounds += 1
                self._round_done.notify_all()
            self.wait(self.interval_s)

    def check(self) -> bool:
        """Ping if healthy; True when the ping was due and sent."""
        stuck = stale_workers(self._workers(), self.stall_s)
        if stuck != self.stuck:
            if stuck:
                log.error(
                    "worker(s) %s stopped responding; watchdog pings stop so systemd restarts the service "
                    "(please report this with the log)",
                    ", ".join(stuck),
                )
            elif self.stuck:
                log.warning("all workers respond again; watchdog pings resume")
            self.stuck = stuck
        if stuck or not self.enabled:
            return False
        if self.notifier.watchdog():
            self.pings += 1
            return True
        return False

    def wait_rounds(self, n: int, timeout_s: float) -> bool:
        """Block until ``n`` more rounds ran (for tests and reload)."""
        with self._round_done:
            target = self.rounds + n
            return self._round_done.wait_for(lambda: self.rounds >= target, timeout_s)
