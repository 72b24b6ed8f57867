"""One fake of the audio backend (:mod:`device.drivers.audiobackend`): devices that remember what they were asked.

For what ALSA ``type file`` devices cannot show: a microphone unplugged
mid-read, an overrun, an underrun, a speaker busy or gone, a mixer without a
mute switch. Like gpiozero's ``MockPin`` keeps ``states``, each fake device
keeps a ``history`` of :class:`Op` — every open, read, write (with its
frames), delay query, drop and close — and the :class:`FakeBackend` keeps
every open request with its format in ``opens``.

Faults are scripted: a capture script says what each read returns (audio,
an overrun, an exception, audio not before some time after the open); a
playback script says what the n-th write does instead of taking the frames;
:meth:`FakeCapture.fail_next` / :meth:`FakePlayback.fail_next` make the next
call of an operation raise.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from device.drivers.waker import PollFd

D = TypeVar("D")


@dataclass(frozen=True)
class Op:
    """One call a fake device answered (``error``: what it raised instead)."""

    what: str  # open | read | write | delay | drop | close
    t_s: float
    frames: int = 0  # read: frames returned (-1: an overrun); write: frames taken (0: no room, -1: underrun); delay
    error: BaseException | None = None


@dataclass(frozen=True)
class Open:
    """One open request the backend had, with the format asked for."""

    kind: str  # capture | playback
    device: str
    rate_hz: int
    channels: int
    period_frames: int
    periods: int


@dataclass(frozen=True)
class Delayed:
    """In a capture script: ``data``, but no sooner than ``after_s`` past the open (b'' until then)."""

    after_s: float
    data: bytes


CaptureStep = bytes | None | BaseException | Delayed  # None: an overrun (already recovered)
WriteStep = int | BaseException | Callable[[], int | None]  # a callable returning None lets the write go ahead


class _FakeDevice:
    def __init__(self, device: str, clock: Callable[[], float]) -> None:
        self.device = device
        self.history: list[Op] = []
        self._clock = clock
        self._faults: dict[str, list[BaseException]] = {}
        self.opened_at_s = clock()

    def fail_next(self, what: str, error: BaseException) -> None:
        """The next call of ``what`` (read, write, delay, drop) raises ``error``."""
        self._faults.setdefault(what, []).append(error)

    def ops(self, what: str) -> list[Op]:
        return [op for op in self.history if op.what == what]

    @property
    def closed(self) -> bool:
        return bool(self.ops("close"))

    def opened(self) -> None:
        """Called by :class:`FakeBackend` at each open of this device."""
        self.opened_at_s = self._clock()
        self._record("open")

    def pollfds(self) -> Sequence[PollFd]:
        return ()

    def close(self) -> None:
        self._record("close")

    def _record(self, what: str, frames: int = 0, error: BaseException | None = None) -> None:
        self.history.append(Op(what, self._clock(), frames, error))

    def _raise_fault(self, what: str) -> None:
        faults = self._faults.get(what)
        if faults:
            error = faults.pop(0)
            self._record(what, error=error)
            raise error


class FakeCapture(_FakeDevice):
    """A microphone whose reads follow ``script``, then find nothing (b'')."""

    def __init__(
        self,
        script: Iterable[CaptureStep] = (),
        *,
        channels: int = 1,
        device: str = "fake-mic",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(device, clock)
        self.channels = channels
        self.script: list[CaptureStep] = list(script)

    def read(self) -> bytes | None:
        self._raise_fault("read")
        step = self.script[0] if self.script else b""
        if isinstance(step, Delayed):
            if self._clock() - self.opened_at_s < step.after_s:
                self._record("read")
                return b""
            step = step.data
        if self.script:
            self.script.pop(0)
        if isinstance(step, BaseException):
            self._record("read", error=step)
            raise step
        self._record("read", -1 if step is None else len(step) // (2 * self.channels))
        return step

    def readable(self, ready: Sequence[PollFd]) -> bool:
        return False


class FakePlayback(_FakeDevice):
    """A speaker that takes every frame at once, except where ``script`` says what its n-th write (1-based) does."""

    clocked = True

    def __init__(
        self,
        rate_hz: int = 16000,
        script: dict[int, WriteStep] | None = None,
        *,
        device: str = "fake-speaker",
        period_frames: int | None = None,
        buffer_frames: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(device, clock)
        self.rate_hz = rate_hz
        self.period_frames = round(rate_hz * 0.0625) if period_frames is None else period_frames
        self.buffer_frames = 4 * self.period_frames if buffer_frames is None else buffer_frames
        self.script = dict(script or {})
        self.delay = 0  # what delay_frames() answers
        self.writes = 0  # write calls so far, scripted ones included
        self.data = bytearray()  # every frame taken

    @property
    def drops(self) -> int:
        return len(self.ops("drop"))

    def write(self, data: bytes) -> int:
        self.writes += 1
        self._raise_fault("write")
        step = self.script.get(self.writes)
        if isinstance(step, BaseException):
            self._record("write", error=step)
            raise step
        result = step() if callable(step) else step
        if result is None:
            self.data += data
            result = len(data) // 2
        self._record("write", result)
        return result

    def delay_frames(self) -> int:
        self._raise_fault("delay")
        self._record("delay", self.delay)
        return self.delay

    def writable(self, ready: Sequence[PollFd]) -> bool:
        return False

    def seconds_until_room(self, frames: int) -> float:
        return 0.0

    def drop(self) -> None:
        self._raise_fault("drop")
        self._record("drop")


@dataclass
class FakeMixer:
    """A mixer control: the volumes and mutes it was set to (a mute only when it has a switch)."""

    has_switch: bool = True
    volume: list[int] = field(default_factory=list)
    mute: list[bool] = field(default_factory=list)
    closed: bool = False

    def set_volume(self, percent: int) -> None:
        self.volume.append(percent)

    def set_mute(self, muted: bool) -> bool:
        if self.has_switch:
            self.mute.append(muted)
        return self.has_switch

    def close(self) -> None:
        self.closed = True


class _Supply(Generic[D]):
    """What successive opens get: the next item (an exception is raised); the last one answers every further open."""

    def __init__(self, items: Iterable[D | BaseException], kind: str) -> None:
        self.items = list(items)
        self.kind = kind

    def next(self) -> D:
        assert self.items, f"the test gave the fake backend no {self.kind}"
        item = self.items.pop(0) if len(self.items) > 1 else self.items[0]
        if isinstance(item, BaseException):
            raise item
        return item


class FakeBackend:
    """The backend of the workers under test: hands out the fake devices given, in order."""

    def __init__(
        self,
        *,
        captures: Iterable[FakeCapture | BaseException] = (),
        playbacks: Iterable[FakePlayback | BaseException] = (),
        mixer: FakeMixer | BaseException | None = None,
    ) -> None:
        self._captures = _Supply(captures, "microphone")
        self._playbacks = _Supply(playbacks, "speaker")
        self._mixer = _Supply([] if mixer is None else [mixer], "mixer")
        self.opens: list[Open] = []
        self.opened: list[FakeCapture | FakePlayback] = []  # the devices opened, in order

    def open_capture(
        self, device: str, rate_hz: int, channels: int, period_frames: int, periods: int
    ) -> FakeCapture:
        self.opens.append(Open("capture", device, rate_hz, channels, period_frames, periods))
        dev = self._captures.next()
        dev.opened()
        self.opened.append(dev)
        return dev

    def open_playback(self, device: str, rate_hz: int, period_frames: int, periods: int) -> FakePlayback:
        self.opens.append(Open("playback", device, rate_hz, 1, period_frames, periods))
        dev = self._playbacks.next()
        dev.opened()
        self.opened.append(dev)
        return dev

    def open_mixer(self, card: str, control: str) -> FakeMixer:
        return self._mixer.next()
