"""The controller's speaker: what goes to playback, and what playback's events mean for the rest.

Owned by the controller thread. Playback's events are handled by kind
(:data:`PLAYBACK_HANDLERS`, one handler for every
:data:`~device.core.audioevents.PlaybackEventKind`): the echo guard of the
microphone path follows what plays, the machine hears when a reply starts and
ends, a speaker that fails or comes back is a device fault.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from device.app.reporter import Reporter
from device.app.telemetry import TelemetryBus
from device.core.audioevents import PlaybackEvent, PlaybackEventKind
from device.core.events import DeviceFault
from device.core.machine import Input, Kind
from device.core.micpath import MicPath

log = logging.getLogger(__name__)


class PlaybackLike(Protocol):
    """What the controller needs of :class:`device.drivers.playback.Playback`."""

    def set_format(self, fmt: Any) -> None: ...
    def write(self, audio: bytes, received_at_s: float | None = None) -> int | None: ...
    def flush(self) -> Any: ...
    def play_earcon(self, name: str) -> bool: ...


class Speaker:
    """Plays the agent's audio and the cues (``playback`` None: nothing is played, e.g. in tests)."""

    def __init__(
        self,
        playback: PlaybackLike | None,
        earcons: bool,
        mic: MicPath,
        report: Reporter,
        feed: Callable[[Input, float], None],
        fault: Callable[[DeviceFault], None],
    ) -> None:
        self._playback = playback
        self._earcons = earcons
        self._mic = mic
        self._report = report
        self._feed = feed
        self._fault = fault

    def write(self, audio: bytes, received_at_s: float | None) -> int | None:
        """Queue agent audio; its stream position (what ``reply_chunk`` events name), None without playback."""
        if self._playback is not None:
            return self._playback.write(audio, received_at_s)
        return None

    def set_format(self, fmt: Any) -> None:
        if self._playback is not None:
            self._playback.set_format(fmt)

    def flush(self, now: float) -> None:
        """Drop the agent's queued audio (and queued cues) now."""
        if self._playback is not None:
            try:
                self._playback.flush()
            except Exception:
                log.exception("flushing playback failed")
        self._mic.flushed(now)

    def earcon(self, name: str) -> None:
        if self._playback is None or not self._earcons:
            return
        try:
            self._playback.play_earcon(name)
        except Exception:
            log.exception("playing the %s earcon failed", name)

    def on_event(self, event: PlaybackEvent, now: float) -> None:
        """Hand ``event`` to its handler in :data:`PLAYBACK_HANDLERS`; ``now`` is when it is handled."""
        PLAYBACK_HANDLERS.get(event.kind, Speaker._on_other)(self, event, now)

    def _on_reply_started(self, event: PlaybackEvent, now: float) -> None:
        self._mic.reply_audible(event.t_s, True)
        self._report.telemetry.publish(
            "reply_started", event.t_s, reply_id=event.reply_id, latency_ms=event.latency_ms, rate_hz=event.rate_hz
        )
        self._feed(Input(Kind.REPLY_STARTED), now)

    def _on_reply_finished(self, event: PlaybackEvent, now: float) -> None:
        self._mic.reply_audible(event.t_s, False)
        self._report.telemetry.publish("reply_finished", event.t_s, reply_id=event.reply_id, frames=event.frames)
        self._feed(Input(Kind.REPLY_FINISHED), now)

    def _on_flushed(self, event: PlaybackEvent, now: float) -> None:
        self._report.telemetry.publish(
            "flushed",
            event.t_s,
            old_audio_ms_after=event.ms,
            frames_after=event.frames,
            latency_ms=event.latency_ms,
            dropped_frames=event.dropped_frames,
        )

    def _on_underrun(self, event: PlaybackEvent, now: float) -> None:
        self._report.count("playback_underruns")
        self._report.telemetry.publish("xrun", event.t_s, kind="underrun", detail=event.detail)

    def _on_failed(self, event: PlaybackEvent, now: float) -> None:
        self._fault(DeviceFault("speaker", event.detail or "the speaker failed"))

    def _on_opened(self, event: PlaybackEvent, now: float) -> None:
        self._fault(DeviceFault("speaker", ok=True))
        self._on_other(event, now)

    def _on_earcon(self, event: PlaybackEvent, now: float) -> None:
        started = event.kind == "earcon_started"
        self._mic.earcon_audible(event.t_s, event.detail, started)
        self._report.telemetry.publish(
            "earcon", event.t_s, name=event.detail, phase="started" if started else "finished"
        )

    def _on_other(self, event: PlaybackEvent, now: float) -> None:
        self._report.telemetry.publish("playback", event.t_s, kind=event.kind, detail=event.detail)


# Playback's events by kind, table-driven like the Machine's TABLE (the test checks every kind is here).
PLAYBACK_HANDLERS: Mapping[PlaybackEventKind, Callable[[Speaker, PlaybackEvent, float], None]] = {
    "reply_started": Speaker._on_reply_started,
    "reply_finished": Speaker._on_reply_finished,
    "flushed": Speaker._on_flushed,
    "underrun": Speaker._on_underrun,
    "device_error": Speaker._on_failed,
    "opened": Speaker._on_opened,
    "earcon_started": Speaker._on_earcon,
    "earcon_finished": Speaker._on_earcon,
    "overflow": Speaker._on_other,
    "mixer_unavailable": Speaker._on_other,
}
# Not here: reply_chunk, many a second, published by the parts on playback's thread (publish_reply_chunk),
# never through the controller.
NOT_THROUGH_THE_CONTROLLER: frozenset[PlaybackEventKind] = frozenset({"reply_chunk"})


def publish_reply_chunk(telemetry: TelemetryBus, event: PlaybackEvent) -> None:
    """A ``reply_chunk`` (many a second: on playback's thread, not through the controller's queue)."""
    if telemetry.active:
        telemetry.publish(
            "reply_chunk", event.t_s, position=event.position, frames=event.frames, rate_hz=event.rate_hz,
            delay_ms=event.latency_ms,
        )
