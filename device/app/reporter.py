"""What the operator sees of the controller: its counters, the status snapshot, the state on the LEDs.

Owned by the controller thread, except the counters: workers count on their
own threads too (a full queue, a capture overrun), so those take a lock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from device.app.telemetry import TelemetryBus
from device.core.machine import CONVERSATION, DISPLAY, Machine, State
from device.drivers.status import Status

log = logging.getLogger(__name__)


class Reporter:
    """Counters, the status snapshot, and the state published (telemetry) and shown (LEDs)."""

    def __init__(
        self, telemetry: TelemetryBus, show: Callable[[str], None] | None, clock: Callable[[], float], gate_mode: str
    ) -> None:
        self.telemetry = telemetry
        self._show = show
        self._clock = clock
        self._gate_mode = gate_mode
        self._started_at_s = clock()
        self.shown = ""  # what the LEDs show now
        self.counters: dict[str, float] = {
            "barge_ins": 0,
            "interruptions": 0,
            "blocks_sent": 0,
            "blocks_open": 0,
            "dropped_events": 0,
            "playback_underruns": 0,
            "capture_overruns": 0,
            "audio_errors": 0,
            "audio_dropped_s": 0.0,
            "ping_ms": 0,
            "agent_text_parts": 0,  # session events the kiosk cannot show (device.app.agent counts them)
            "rich_content": 0,
            "mcp_approved": 0,
            "mcp_denied": 0,
            "wake_detections": 0,
            "false_wakes": 0,  # a wake word that led to no user speech
            "false_barge_ins": 0,  # a voice barge-in the service then heard no words after
        }
        self._counters_lock = threading.Lock()
        self.status = Status(gate_mode=gate_mode)  # the latest snapshot (built on the controller thread)

    def count(self, name: str, n: float = 1) -> float:
        """Add ``n`` to counter ``name``; returns the new value (any thread)."""
        with self._counters_lock:
            self.counters[name] += n
            return self.counters[name]

    def set(self, name: str, value: float) -> None:
        with self._counters_lock:
            self.counters[name] = value

    def dropped(self, seconds: float) -> None:
        """Seconds of the user's speech that never reached the agent."""
        with self._counters_lock:
            self.counters["audio_dropped_s"] = round(self.counters["audio_dropped_s"] + seconds, 3)

    def refresh(self, m: Machine, conversation_id: str) -> None:
        """Take a new status snapshot."""
        with self._counters_lock:
            counters = dict(self.counters)
        counters["conversations"] = m.conversations
        counters["errors"] = m.errors + counters["audio_errors"]
        counters["xruns"] = counters["playback_underruns"] + counters["capture_overruns"]
        counters["uptime_s"] = round(self._clock() - self._started_at_s, 1)
        self.status = Status(
            state=m.display,
            muted=m.muted,
            conversation_id=conversation_id if m.state in CONVERSATION else "",
            last_error=m.last_error,
            state_for_s=self._clock() - m.since_s,
            gate_mode=self._gate_mode,
            counters=counters,
        )

    def publish_state(self, m: Machine, cause: str, before: State | None, conversation_id: str) -> None:
        """Tell the telemetry the state (and why), and show it on the LEDs when it looks different."""
        display = m.display
        self.telemetry.publish(
            "state",
            state=display,
            machine_state=m.state.value,
            previous=DISPLAY[before] if before is not None else "",
            cause=cause,
            conversation_id=conversation_id,
        )
        if display != self.shown:
            self.shown = display
            if self._show is not None:
                try:
                    self._show(display)
                except Exception:
                    log.exception("showing %s on the LEDs failed", display)
            self.telemetry.publish("led", state=display)
