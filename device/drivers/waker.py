"""Wakeable waits for the audio workers: poll() on ALSA's descriptors plus an eventfd.

A worker blocks only here, so ``stop()``, a flush or new audio wakes it at once
instead of after a period or a timeout.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
from collections.abc import Sequence

PollFd = tuple[int, int]  # (fd, event mask), as ALSA's snd_pcm_poll_descriptors gives them


class Waker:
    """An eventfd another thread can signal, and a poll() that includes it."""

    def __init__(self) -> None:
        self._fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._closed = False
        # wake() runs on other threads; the lock keeps it off a closed (maybe reused) fd number
        self._lock = threading.Lock()

    def wake(self) -> None:
        with self._lock:
            if not self._closed:
                os.eventfd_write(self._fd, 1)

    def wait(self, timeout_s: float, fds: Sequence[PollFd] = ()) -> list[PollFd]:
        """Block until woken, one of ``fds`` is ready, or ``timeout_s``; return ready ``fds``.

        A wake-up is consumed here; the caller re-checks its own flags after any return.
        """
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        for fd, events in fds:
            poller.register(fd, events)
        ready = poller.poll(max(0.0, timeout_s) * 1000.0)
        out: list[PollFd] = []
        for fd, revents in ready:
            if fd == self._fd:
                self._drain()
            else:
                out.append((fd, revents))
        return out

    def _drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self._fd)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self._fd)
