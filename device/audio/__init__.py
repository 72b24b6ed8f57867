"""The audio engine: ALSA capture in 4000-frame blocks, ring-buffered playback, instant flush.

``Capture`` and ``Playback`` are workers (one thread each) that own their PCM;
only :mod:`device.audio.alsa` imports pyalsaaudio. See the README's audio
section for devices, options and measured latencies.
"""

from device.audio.capture import Capture
from device.audio.events import Block, CaptureEvent, FlushReport, PlaybackEvent
from device.audio.playback import Playback

__all__ = ["Block", "Capture", "CaptureEvent", "FlushReport", "Playback", "PlaybackEvent"]
