"""Base class for the firmware's threads (see docs/ARCHITECTURE.md, "Threads").

Every worker is a named, non-daemon thread with a stop Event. ``run()`` is
written by the subclass and must only block in bounded or wakeable calls;
waits go through :meth:`Worker.wait` so ``stop()`` interrupts them at once.
Whatever ends ``run()`` — a return or an exception — is reported exactly once
through the ``on_exit`` callback as a :class:`WorkerExited` event.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from device.core.errors import WorkerStuckError

log = logging.getLogger(__name__)

DEFAULT_JOIN_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class WorkerExited:
    """A worker's thread has ended; ``error`` is None for a clean return."""

    name: str
    error: BaseException | None
    stopped: bool  # True when it ended because stop() was asked for


class Worker:
    """A named, non-daemon thread that stops on an Event and joins."""

    def __init__(
        self,
        name: str,
        on_exit: Callable[[WorkerExited], None] | None = None,
    ) -> None:
        self.name = name
        self._on_exit = on_exit
        self._stop_event = threading.Event()
        self._thread = threading.Thread(target=self._main, name=name, daemon=False)
        self._heartbeat = time.monotonic()
        self._started = False
        # Not ``_lock``: subclasses name their own locks that, and would replace this one.
        self._worker_lock = threading.Lock()

    # -- for subclasses -------------------------------------------------
    def run(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def unblock(self) -> None:
        """Unblock ``run()`` after the stop Event was set (override when it blocks elsewhere)."""

    @property
    def stopping(self) -> bool:
        return self._stop_event.is_set()

    def wait(self, delay_s: float) -> bool:
        """Sleep up to ``delay_s``; True when stop was requested meanwhile."""
        return self._stop_event.wait(delay_s)

    def beat(self) -> None:
        """Record that the worker is alive (read by the systemd watchdog)."""
        self._heartbeat = time.monotonic()

    # -- for owners -----------------------------------------------------
    @property
    def heartbeat_age_s(self) -> float:
        return time.monotonic() - self._heartbeat

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        with self._worker_lock:
            if self._started:
                raise RuntimeError(f"worker {self.name} already started")
            self._started = True
        self.beat()
        self._thread.start()

    def stop(self, timeout_s: float = DEFAULT_JOIN_TIMEOUT_S) -> None:
        """Ask the thread to stop, wake it, and join; raise if it will not die."""
        self._stop_event.set()
        try:
            self.unblock()
        except Exception:  # waking is best effort; the join below is the check
            log.debug("waking %s failed", self.name, exc_info=True)
        if not self._started or threading.current_thread() is self._thread:
            return
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise WorkerStuckError(
                f"thread {self.name!r} did not stop within {timeout_s:.1f} s; "
                "this is a bug: please report it with the log"
            )

    def close(self) -> None:
        """Idempotent stop."""
        self.stop()

    def __enter__(self) -> Worker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ------------------------------------------------------
    def _main(self) -> None:
        error: BaseException | None = None
        try:
            self.run()
        except BaseException as e:  # reported once, never re-raised across threads
            error = e
            log.error("worker %s failed: %s", self.name, e, exc_info=True)
        finally:
            event = WorkerExited(self.name, error, self._stop_event.is_set())
            if self._on_exit is not None:
                try:
                    self._on_exit(event)
                except Exception:
                    log.exception("exit report of %s failed", self.name)
