"""Small frozen objects the audio workers hand to their owners (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

CaptureEventKind = Literal["opened", "device_error", "overrun"]
PlaybackEventKind = Literal[
    "opened",
    "device_error",
    "reply_started",
    "reply_finished",
    "flushed",
    "underrun",
    "overflow",
    "earcon_started",
    "earcon_finished",
    "mixer_unavailable",
    "reply_chunk",
]


@dataclass(frozen=True)
class Block:
    """One capture block: 4000 frames (250 ms) of S16_LE mono 16 kHz."""

    pcm: bytes
    seq: int
    captured_at_s: float  # time.monotonic() when the block's last frame was available


@dataclass(frozen=True)
class CaptureEvent:
    """Something the controller may want to show: the microphone opened, failed or overran."""

    kind: CaptureEventKind
    t_s: float
    device: str
    detail: str = ""
    retry_in_s: float | None = None  # device_error: next attempt in this many seconds
    attempt: int = 0  # device_error: consecutive failed attempts so far


@dataclass(frozen=True)
class PlaybackEvent:
    """What the speaker did, with the times a bench needs to measure latency.

    - ``reply_started``: ``t_s`` is when the reply's first sample was written to
      ALSA; ``latency_ms`` counts from the reply's first audio handed to
      :meth:`Playback.write` (its ``received_at_s`` when given).
    - ``reply_finished``: the ring ran dry and the device played everything;
      ``frames`` is the reply's length in frames.
    - ``flushed``: ``frames`` is how much old audio was written to ALSA after
      the flush was requested (at most one chunk); ``latency_ms`` is request →
      ``drop()`` done; ``dropped_frames`` is what the ring and ALSA discarded.
    - ``underrun``: the device ran dry inside a reply (``frames`` written so far).
    - ``overflow``: the ring was full, ``frames`` of agent audio were discarded.
    - ``earcon_started`` / ``earcon_finished``: a cue (``detail``) began / was
      heard to its end (or a reply followed it at once).
    - ``reply_chunk``: a chunk of a reply was handed to the device; ``t_s`` is
      when its first frame will be heard (the write time plus the device's
      delay, which is ``latency_ms``), ``position`` is that frame's stream
      position (:attr:`PlayQueue.stream_position`), ``frames`` its length.
    - ``opened``, ``device_error`` (``detail`` says what to do),
      ``mixer_unavailable`` (software volume is used instead).

    A reply ends with either ``reply_finished`` or ``flushed``.
    """

    kind: PlaybackEventKind
    t_s: float
    reply_id: int = 0
    rate_hz: int = 0
    frames: int = 0
    latency_ms: float | None = None
    dropped_frames: int = 0
    detail: str = ""
    position: int = 0

    @property
    def ms(self) -> float:
        """``frames`` as milliseconds at ``rate_hz``."""
        return 1000.0 * self.frames / self.rate_hz if self.rate_hz else 0.0


@dataclass(frozen=True)
class FlushReport:
    """What :meth:`Playback.flush` did at once; the ``flushed`` event follows from the worker."""

    requested_at_s: float
    reply_id: int  # the reply that was cut (0: none was playing)
    discarded_frames: int  # agent audio removed from the ring, never written
    was_playing: bool
    reply_frames_written: int = 0  # frames of the cut reply already written to ALSA at the request
