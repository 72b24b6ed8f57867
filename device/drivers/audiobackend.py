"""The small interfaces between the audio workers and ALSA (pure).

:mod:`device.drivers.alsa` implements them with pyalsaaudio; tests may pass
another backend to reach states real ``type file`` devices cannot show (a
USB microphone unplugged mid-read).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from device.drivers.waker import PollFd


class CaptureDevice(Protocol):
    """An open capture PCM in non-blocking mode, S16_LE at the requested rate."""

    device: str
    channels: int

    def read(self) -> bytes | None:
        """Whatever frames are ready (b'' when none); None after an overrun (already recovered).

        Raises AudioError when the device is gone.
        """

    def pollfds(self) -> Sequence[PollFd]: ...

    def readable(self, ready: Sequence[PollFd]) -> bool:
        """Decode poll() results for this PCM: True when read() has something to say."""

    def close(self) -> None: ...


class PlaybackDevice(Protocol):
    """An open playback PCM in non-blocking mode, S16_LE mono at ``rate_hz``."""

    device: str
    rate_hz: int
    period_frames: int
    buffer_frames: int
    clocked: bool  # False for devices paced by the caller (pacing.PlaybackClock)

    def write(self, data: bytes) -> int:
        """Frames accepted (0: no room now); -1 after an underrun (nothing written, recovered)."""

    def delay_frames(self) -> int:
        """Frames written but not yet played (0 when drained)."""

    def pollfds(self) -> Sequence[PollFd]: ...

    def writable(self, ready: Sequence[PollFd]) -> bool:
        """Decode poll() results for this PCM: True when write() may take frames."""

    def seconds_until_room(self, frames: int) -> float:
        """For unclocked devices: when ``frames`` will fit. Clocked devices return 0."""

    def drop(self) -> None:
        """Discard what ALSA still holds, at once."""

    def close(self) -> None:
        """Drop and release the device."""


class MixerControl(Protocol):
    def set_volume(self, percent: int) -> None: ...

    def set_mute(self, muted: bool) -> bool:
        """Switch the control's mute; False when it has no switch."""

    def close(self) -> None: ...


class Backend(Protocol):
    def open_capture(
        self, device: str, rate_hz: int, channels: int, period_frames: int, periods: int
    ) -> CaptureDevice: ...

    def open_playback(
        self, device: str, rate_hz: int, period_frames: int, periods: int
    ) -> PlaybackDevice: ...

    def open_mixer(self, card: str, control: str) -> MixerControl: ...
