"""Synthetic telemetry of a demo-like conversation, for the bench's unit tests."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Ev:
    t_s: float
    kind: str
    data: Mapping[str, Any] = field(default_factory=dict)


T0 = 1000.0


def conversation() -> list[Ev]:
    """Press, question, tool call, reply, barge-in press + agent interruption, second reply, end."""
    ev: list[Ev] = [
        Ev(T0 + 0.0, "state", {"state": "idle"}),
        Ev(T0, "led", {"state": "idle", "outputs": {"status": "off"}}),
    ]

    def at(t: float, what: str, **data: Any) -> None:
        ev.append(Ev(T0 + t, what, data))

    at(0.5, "button", action="press")
    at(0.5, "state", state="connecting")
    at(0.5, "led", state="connecting", outputs={"status": "blink 0.5 #f2c744"})
    at(0.8, "state", state="listening")
    at(0.8, "led", state="listening", outputs={"status": "on #00ff00"})
    speech = {(1, 5), (9, 11)}
    for seq in range(0, 80):
        t = 0.25 * (seq + 1)
        talking = any(a <= t <= b for a, b in speech)
        is_open = (0.5 <= t <= 5.25) or (9.0 <= t <= 11.25)
        at(t, "gate", open=is_open, level_dbfs=-18.0 if talking else -70.0, seq=seq)
        if t >= 0.8:
            at(t + 0.004, "block_sent", seq=seq, captured_at_s=T0 + t)
    at(0.84, "block_sent", seq=0, captured_at_s=T0 + 0.25)
    at(5.25, "button", action="release")
    at(5.8, "state", state="thinking")
    at(5.85, "tool_call", name="set_volume", phase="started")
    at(5.9, "tool_call", name="set_volume", is_error=False, phase="finished")
    at(2.0, "transcript", role="user", text="Please turn the", tentative=True)
    at(5.7, "transcript", role="user", text="Please turn the volume down, and tell me when the museum opens.",
       tentative=False)
    for i in range(12):
        at(6.4 + 0.05 * i, "agent_audio", event_id=3, nbytes=8000)
    at(6.55, "reply_started")
    at(6.55, "state", state="speaking")
    at(6.55, "led", state="speaking", outputs={"status": "pulse 1 #9b59b6"})
    at(6.6, "transcript", role="agent", text="I turned the volume down. The museum opens at nine.")
    at(9.0, "button", action="press")
    at(9.0, "interruption", local=True)
    at(9.002, "flushed", old_audio_ms_after=12.5, latency_ms=0.4, dropped_frames=3000)
    at(9.0, "state", state="listening")
    at(9.7, "interruption", event_id=3)
    at(9.7, "transcript", role="agent", text="I turned the volume down.", correction=True)
    at(9.71, "flushed", old_audio_ms_after=0.0, latency_ms=0.1, dropped_frames=0)
    at(11.25, "button", action="release")
    at(12.0, "transcript", role="user", text="Sorry, is there a cafe?")
    for i in range(6):
        at(12.3 + 0.05 * i, "agent_audio", event_id=5, nbytes=8000)
    at(12.42, "reply_started")
    at(12.42, "state", state="speaking")
    at(12.5, "transcript", role="agent", text="Yes, there is a cafe on the ground floor.")
    for i in range(8):
        at(2.0 + 2 * i, "ping", ping_ms=20 + i)
    at(14.1, "xrun", kind="underrun")
    at(15.0, "state", state="listening")
    at(17.0, "button", action="press")
    at(19.0, "button", action="long_press")
    at(19.1, "session_end", outcome="local", detail="long press")
    at(19.12, "flushed", old_audio_ms_after=0.0, latency_ms=0.1, dropped_frames=0)
    at(19.1, "state", state="idle")
    at(19.1, "led", state="idle", outputs={"status": "off"})
    at(19.3, "button", action="release")
    return sorted(ev, key=lambda e: e.t_s)


def speaker_levels() -> list[tuple[float, float]]:
    out = []
    for i in range(int(20 / 0.0625)):
        t = i * 0.0625
        loud = 6.55 <= t < 9.0 or 12.42 <= t < 15.0
        out.append((T0 + t, -20.0 if loud else -120.0))
    return out
