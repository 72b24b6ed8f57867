"""Real-time pacing for clockless ALSA devices (the clocks are pure: callers pass the time).

ALSA ``type file`` devices over ``null`` (tests, the bench) have no clock: reads
and writes return at once. With ``audio.pace_realtime`` the workers behave as
if a sound card consumed and produced frames at the nominal rate, so the same
code and the same timings serve hardware and files.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from device.drivers.waker import PollFd

if TYPE_CHECKING:
    from device.drivers.audiobackend import PlaybackDevice


class PlaybackClock:
    """Play position of an imaginary card with a ``buffer_frames`` buffer.

    The card starts playing at the first write after it ran dry (like ALSA's
    default start threshold of one frame) and stops when it has played
    everything written (an underrun, which between replies is just idle).
    """

    def __init__(self, rate_hz: int, buffer_frames: int) -> None:
        if rate_hz <= 0 or buffer_frames <= 0:
            raise ValueError("rate_hz and buffer_frames must be positive")
        self.rate_hz = rate_hz
        self.buffer_frames = buffer_frames
        self._start_s = 0.0
        self._written = 0  # frames written since the clock (re)started

    def played_frames(self, now_s: float) -> int:
        return min(self._written, int((now_s - self._start_s) * self.rate_hz))

    def ran_dry(self, now_s: float) -> bool:
        """True when frames were written and all of them have been played (an underrun)."""
        return self._written > 0 and self.delay_frames(now_s) == 0

    def delay_frames(self, now_s: float) -> int:
        """Frames written but not yet played."""
        return self._written - self.played_frames(now_s)

    def room_frames(self, now_s: float) -> int:
        return self.buffer_frames - self.delay_frames(now_s)

    def wrote(self, frames: int, now_s: float) -> None:
        if frames <= 0:
            return
        if self.delay_frames(now_s) == 0:
            self._start_s = now_s  # ran dry: playing restarts with these frames
            self._written = 0
        self._written += frames

    def seconds_until_room(self, frames: int, now_s: float) -> float:
        """How long until ``frames`` fit (0 when they fit now)."""
        missing = frames - self.room_frames(now_s)
        if missing <= 0:
            return 0.0
        return missing / self.rate_hz

    def seconds_until_drained(self, now_s: float) -> float:
        return self.delay_frames(now_s) / self.rate_hz

    def drop(self) -> None:
        self._written = 0


class BlockPacer:
    """Deadlines of consecutive capture blocks at the nominal rate."""

    def __init__(self, block_s: float) -> None:
        if block_s <= 0:
            raise ValueError("block_s must be positive")
        self.block_s = block_s
        self._start_s = 0.0
        self._count = 0

    def start(self, now_s: float) -> None:
        self._start_s = now_s
        self._count = 0

    @property
    def next_deadline_s(self) -> float:
        """When the next block is complete on a card running at the nominal rate."""
        return self._start_s + (self._count + 1) * self.block_s

    def advance(self) -> None:
        self._count += 1


class PacedPlayback:
    """Wraps a clockless playback device so it accepts frames at the nominal rate only."""

    clocked = False

    def __init__(self, inner: PlaybackDevice, now: Callable[[], float] = time.monotonic) -> None:
        self._inner = inner
        self._now = now
        self._clock = PlaybackClock(inner.rate_hz, inner.buffer_frames)
        self.device = inner.device
        self.rate_hz = inner.rate_hz
        self.period_frames = inner.period_frames
        self.buffer_frames = inner.buffer_frames

    def write(self, data: bytes) -> int:
        now = self._now()
        if self._clock.ran_dry(now):
            # like ALSA after an xrun: report it, write nothing, be ready again
            self._clock.drop()
            return -1
        room = self._clock.room_frames(now)
        frames = len(data) // 2
        if room < min(frames, self.period_frames):
            # ALSA in non-blocking mode: EAGAIN until a period (or the whole request) fits
            return 0
        n = min(frames, room)
        written = self._inner.write(data[: 2 * n])
        if written > 0:
            self._clock.wrote(written, now)
        return written

    def delay_frames(self) -> int:
        return self._clock.delay_frames(self._now())

    def pollfds(self) -> Sequence[PollFd]:
        return ()

    def writable(self, ready: Sequence[PollFd]) -> bool:
        return False

    def seconds_until_room(self, frames: int) -> float:
        return self._clock.seconds_until_room(min(frames, self.buffer_frames), self._now())

    def drop(self) -> None:
        self._clock.drop()
        self._inner.drop()

    def close(self) -> None:
        self._inner.close()
