"""One daemon per configuration: a second ``voice-appliance run`` refuses before it touches anything.

A second daemon with the same configuration (started by hand while the service
runs, or two started at once) would take over the first one's control socket,
then delete it, its status file and its Prometheus textfile. :func:`claim`
runs before the daemon builds any part, and refuses with
:class:`~device.core.errors.AlreadyRunningError` (exit 73):

- an ``flock`` on ``<control socket>.lock`` (``<status file>.lock`` when the
  socket is off), held for the daemon's life, decides between two starting at
  once; the kernel lets go of it however the holder dies, so a killed daemon
  never leaves a lock that blocks the next one;
- a connect to the control socket catches a daemon that holds no lock (an
  older version, or a lock file that could not be created). A socket file
  nobody listens on is a killed daemon's: the control server replaces it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from pathlib import Path

from device.core.config import SystemdConfig
from device.core.errors import AlreadyRunningError
from device.drivers.control import pid_note, serving_pid

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"


class InstanceLock:
    """The lock this daemon holds (or none: nothing to lock, or it could not be created)."""

    def __init__(self, path: Path | None = None, fd: int | None = None) -> None:
        self.path = path
        self._fd = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Let go of the lock (idempotent). The file stays: removing it would race the next holder."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def lock_path(systemd: SystemdConfig) -> Path | None:
    """Where the instance lock lives: next to the control socket, else the status file; None when both are off."""
    anchor = systemd.control_socket or systemd.status_file
    return Path(anchor + LOCK_SUFFIX) if anchor else None


def claim(systemd: SystemdConfig) -> InstanceLock:
    """Take this configuration's instance lock; AlreadyRunningError when another daemon has it or serves the socket."""
    path = lock_path(systemd)
    lock = _lock(path) if path is not None else InstanceLock()
    if systemd.control_socket:
        pid = serving_pid(systemd.control_socket)
        if pid is not None:
            lock.release()
            raise AlreadyRunningError(_message(pid, systemd.control_socket))
    return lock


def _lock(path: Path) -> InstanceLock:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Owner-only: whoever can open it can hold it, and so keep the daemon from starting.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        log.warning(
            "cannot create the instance lock %s (%s); a second daemon with this configuration is only "
            "caught by its control socket",
            path,
            e.strerror or e,
        )
        return InstanceLock()
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_pid(fd)
        os.close(fd)
        raise AlreadyRunningError(_message(holder, str(path))) from None
    except OSError as e:
        os.close(fd)
        log.warning("cannot lock %s (%s); going on without the instance lock", path, e.strerror or e)
        return InstanceLock()
    with contextlib.suppress(OSError):  # only for the message a second daemon prints
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return InstanceLock(path, fd)


def _read_pid(fd: int) -> int:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return 0
    return int(text) if text.isdigit() else 0  # empty while the holder is between its lock and its write


def _message(pid: int, taken: str) -> str:
    return (
        f"another voice-appliance daemon{pid_note(pid)} runs with this configuration ({taken} is taken); stop that one "
        "first (sudo systemctl stop voice-appliance, if it is the service), or give this one its own "
        "systemd.control_socket and systemd.status_file"
    )
