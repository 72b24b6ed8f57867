"""The small frozen events the other workers post to the controller's queue (pure).

The capture, playback and session workers, the GPIO callbacks and the control
socket each build one of these on their own thread; only the controller thread
reads them (:data:`device.app.controller.QUEUE_HANDLERS`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from device.core.audioevents import PlaybackEvent
from device.core.protocol import SessionEvent


@dataclass(frozen=True)
class ButtonEvent:
    """The button (``source`` "gpio") or the on-screen button ("ctl") went down or up."""

    source: str
    pressed: bool
    t_s: float


@dataclass(frozen=True)
class MuteEvent:
    """The mute switch ("switch") or a control command ("ctl") muted or unmuted."""

    source: str
    muted: bool
    t_s: float


Reply = Callable[[bool, str], None]


@dataclass(frozen=True)
class Command:
    """A control command: start, stop, context TEXT, message TEXT; ``reply(ok, text)`` answers it."""

    name: str
    text: str = ""
    reply: Reply | None = None


@dataclass(frozen=True)
class BlockEvent:
    """One captured block (see :class:`device.core.audioevents.Block`)."""

    pcm: bytes = field(repr=False)
    seq: int
    captured_at_s: float


@dataclass(frozen=True)
class PlaybackNote:
    """A :class:`device.core.audioevents.PlaybackEvent` for the controller."""

    event: PlaybackEvent


@dataclass(frozen=True)
class SessionNote:
    """An event of conversation number ``gen``; events of an older one are ignored."""

    gen: int
    event: SessionEvent


@dataclass(frozen=True)
class DeviceFault:
    """A device failed (``ok`` False: microphone or speaker missing) or works again (``ok`` True)."""

    source: str  # "microphone", "speaker"
    message: str = ""
    ok: bool = False
