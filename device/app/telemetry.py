"""Telemetry: time-stamped observations the daemon publishes for benches and tests.

The controller (and the daemon) publish small records; subscribers such as
the bench's report writer receive them synchronously on the publishing
thread, so a callback must be quick and must not block. A failing callback
is logged (rate-limited) and never disturbs the publisher.

Kinds and their data (:data:`TelemetryKind` lists them; a unit test checks it
against every ``publish`` call and every kind the bench reads):

==============  ==============================================================
state           state, machine_state, previous, cause, conversation_id
led             state (the bench adds outputs {name: pattern})
captured        seq (a block left the microphone; t_s is its capture time)
gate            open, level_dbfs, seq, speech
block_sent      seq, captured_at_s, open, nbytes
wake            model, score (the wake word was heard; t_s is where it ended)
agent_audio     event_id, nbytes, received_at_s, position, frames, rate_hz, alignment (or None)
reply_chunk     position, frames, rate_hz, delay_ms (t_s: when the chunk's first frame is heard)
reply_started   reply_id, latency_ms, rate_hz
reply_finished  reply_id, frames
earcon          name (listening, done, error), phase (started, finished)
interruption    event_id, local (True: a press, the wake word or the user's voice cut the agent off), by
false_barge_in  total (a voice barge-in after which the service heard no words)
flushed         old_audio_ms_after, frames_after, latency_ms, dropped_frames
playback        kind (opened and the speaker's other reports), detail
button          action (press, release, long_press), source
mute            muted, source
ping            ping_ms
xrun            kind (underrun, overrun), detail
session_end     outcome, detail, close_code
transcript      role (user, agent), text, tentative (user) or correction (agent)
tool_call       name, call_id, is_error, phase (started, finished)
mcp_approval    name, approved
error           message, source
==============  ==============================================================
"""

from __future__ import annotations

import logging
import threading
import time
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

log = logging.getLogger(__name__)

TelemetryKind = Literal[
    "state",
    "led",
    "captured",
    "gate",
    "block_sent",
    "wake",
    "agent_audio",
    "reply_chunk",
    "reply_started",
    "reply_finished",
    "earcon",
    "interruption",
    "false_barge_in",
    "flushed",
    "playback",
    "button",
    "mute",
    "ping",
    "xrun",
    "session_end",
    "transcript",
    "tool_call",
    "mcp_approval",
    "error",
]
KINDS: frozenset[str] = frozenset(get_args(TelemetryKind))


@dataclass(frozen=True)
class Telemetry:
    """One observation: ``t_s`` is ``time.monotonic()`` of this process."""

    t_s: float
    kind: TelemetryKind
    data: Mapping[str, Any] = field(default_factory=lambda: types.MappingProxyType({}))


Subscriber = Callable[[Telemetry], None]


class TelemetryBus:
    """Fan-out of telemetry records to subscribers (thread-safe, copy-on-write)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: tuple[Subscriber, ...] = ()
        self._failures = 0

    @property
    def active(self) -> bool:
        """Anyone listening (lets publishers skip work nobody reads)."""
        return bool(self._subscribers)

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Add a subscriber; returns a function that removes it."""
        with self._lock:
            self._subscribers = (*self._subscribers, callback)

        def unsubscribe() -> None:
            with self._lock:
                self._subscribers = tuple(s for s in self._subscribers if s is not callback)

        return unsubscribe

    def publish(self, kind: TelemetryKind, /, t_s: float | None = None, **data: Any) -> None:
        """Send one record (``t_s`` defaults to now); data keys may include ``kind``."""
        subscribers = self._subscribers
        if not subscribers:
            return
        record = Telemetry(time.monotonic() if t_s is None else t_s, kind, types.MappingProxyType(data))
        for callback in subscribers:
            try:
                callback(record)
            except Exception:
                self._failures += 1
                if self._failures <= 3 or self._failures % 1000 == 0:
                    log.warning("telemetry subscriber failed (%d so far)", self._failures, exc_info=True)
