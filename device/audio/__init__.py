"""The audio engine: ALSA capture in 4000-frame blocks, ring-buffered playback, instant flush.

``Capture`` and ``Playback`` are workers (one thread each) that own their PCM;
only :mod:`device.audio.alsa` imports pyalsaaudio. See docs/hardware.md
(Audio) for devices and options, docs/bench.md for measured latencies.
"""

from typing import TYPE_CHECKING, Any

from device.audio.events import Block, CaptureEvent, FlushReport, PlaybackEvent

if TYPE_CHECKING:
    from device.audio.capture import Capture
    from device.audio.playback import Playback

__all__ = ["Block", "Capture", "CaptureEvent", "FlushReport", "Playback", "PlaybackEvent"]


def __getattr__(name: str) -> Any:
    # The workers load on first use: protocol and the controller import this package's pure
    # modules (convert, ringbuffer), and must not pull in the threads and ALSA with them.
    if name == "Capture":
        from device.audio.capture import Capture

        return Capture
    if name == "Playback":
        from device.audio.playback import Playback

        return Playback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
