"""A fixed-capacity byte FIFO for agent audio (pure).

Not locked: :class:`~device.core.playqueue.PlayQueue` owns it, and the
playback driver holds one lock around every call into the queue, because a
flush must clear the ring and mark the request atomically.
"""

from __future__ import annotations

import mmap


class RingBuffer:
    """FIFO of bytes with a fixed capacity; writes beyond it are refused, not wrapped over."""

    def __init__(self, capacity_bytes: int) -> None:
        if capacity_bytes <= 0:
            raise ValueError("capacity_bytes must be positive")
        # Anonymous memory, not bytearray(): that one is zero-filled at once, and the default ring
        # (180 s of audio) would be megabytes of resident memory on an idle kiosk. The kernel
        # hands these pages out as the ring first reaches them.
        self._buf = mmap.mmap(-1, capacity_bytes)
        self._head = 0  # index of the oldest byte
        self._size = 0

    @property
    def capacity(self) -> int:
        return len(self._buf)

    @property
    def free(self) -> int:
        return len(self._buf) - self._size

    def __len__(self) -> int:
        return self._size

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append as much of ``data`` as fits; return the number of bytes stored."""
        view = memoryview(data).cast("B")
        n = min(len(view), self.free)
        if n == 0:
            return 0
        cap = len(self._buf)
        tail = (self._head + self._size) % cap
        first = min(n, cap - tail)
        self._buf[tail : tail + first] = view[:first]
        if n > first:
            self._buf[: n - first] = view[first:n]
        self._size += n
        return n

    def read(self, max_bytes: int) -> bytes:
        """Remove and return up to ``max_bytes`` of the oldest bytes."""
        n = min(max(max_bytes, 0), self._size)
        if n == 0:
            return b""
        cap = len(self._buf)
        first = min(n, cap - self._head)
        out = bytes(self._buf[self._head : self._head + first])
        if n > first:
            out += bytes(self._buf[: n - first])
        self._head = (self._head + n) % cap
        self._size -= n
        if self._size == 0:
            self._head = 0  # keeps later writes contiguous
        return out

    def clear(self) -> int:
        """Discard everything; return how many bytes were discarded."""
        n = self._size
        self._head = 0
        self._size = 0
        return n
