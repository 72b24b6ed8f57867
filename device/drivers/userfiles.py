"""Files the configuration names (the config itself, the API key, the CA bundle, wake models, earcons).

Such a path may name anything: a FIFO, whose ``open()`` waits for a writer (holding
the main loop, and SIGTERM with it, for as long as nobody writes), a device, a
directory, or a file of hundreds of megabytes read whole into memory. Only a
regular file (a symlink to one is fine) of at most a cap is used:
:func:`read_file` opens it without blocking and reads at most ``cap + 1`` bytes,
:func:`check_file` only looks (``stat``), for a library that opens the file itself.

Both raise :class:`UnsuitableFile`, an ``OSError`` whose ``strerror`` says what
is wrong in words ("it is a FIFO (named pipe), not a regular file"), so a caller's
``except OSError`` turns it into its own one-line error; ``FileNotFoundError``
and ``PermissionError`` pass through as they are.
"""

from __future__ import annotations

import errno
import os
import stat

KIB = 1024
MIB = 1024 * KIB
_CHUNK_BYTES = 64 * KIB

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


class UnsuitableFile(OSError):
    """Not a regular file, or larger than the cap; ``strerror`` says which."""

    def __str__(self) -> str:
        return str(self.strerror)


def size_text(n_bytes: int) -> str:
    """``4 KiB``, ``1.5 MiB``, ``300 MiB``: sizes for messages."""
    for unit, name in ((MIB, "MiB"), (KIB, "KiB")):
        if n_bytes >= unit:
            value = n_bytes / unit
            text = f"{value:.0f}" if value >= 10 else f"{value:.1f}".removesuffix(".0")
            return f"{text} {name}"
    return f"{n_bytes} bytes"


def _judge(path: str | os.PathLike[str], st: os.stat_result, cap_bytes: int) -> None:
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "a special file")
        raise UnsuitableFile(errno.EINVAL, f"it is {kind}, not a regular file", os.fspath(path))
    if st.st_size > cap_bytes:
        raise _too_large(path, st.st_size, cap_bytes)


def _too_large(path: str | os.PathLike[str], size_bytes: int | None, cap_bytes: int) -> UnsuitableFile:
    limit = f"the {size_text(cap_bytes)} limit"
    holds = f"it holds {size_text(size_bytes)}, over {limit}" if size_bytes else f"it holds more than {limit}"
    return UnsuitableFile(errno.EFBIG, holds, os.fspath(path))


def check_file(path: str | os.PathLike[str], cap_bytes: int) -> os.stat_result:
    """Refuse anything but a regular file of at most ``cap_bytes``, without opening it."""
    st = os.stat(path)
    _judge(path, st, cap_bytes)
    return st


def read_file(path: str | os.PathLike[str], cap_bytes: int) -> bytes:
    """The content of a regular file of at most ``cap_bytes``; never blocks on a FIFO or a device.

    Looked at before it is opened (opening some devices acts on them) and again after
    (it may have been swapped in between); read up to ``cap_bytes + 1`` bytes, so a
    file that grows, or reports no size (``/proc``), is still refused over the cap.
    """
    check_file(path, cap_bytes)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        _judge(path, os.fstat(fd), cap_bytes)
        chunks: list[bytes] = []
        got = 0
        while got <= cap_bytes:
            chunk = os.read(fd, min(_CHUNK_BYTES, cap_bytes + 1 - got))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
    finally:
        os.close(fd)
    if got > cap_bytes:
        raise _too_large(path, None, cap_bytes)
    return b"".join(chunks)
