"""What happened in each conversation: events, turns, violations, user audio.

A :class:`ConversationRecord` is filled by its conversation's thread and read
by tests and the CLI through :meth:`ConversationRecord.snapshot`, which copies
it under its lock. :func:`save` writes the JSON event log (audio summarised,
never raw) and the received user audio as a WAV file.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device.emulator import pcm as pcmlib


@dataclass(frozen=True)
class Violation:
    """A client broke a protocol rule."""

    conversation_id: str
    rule: str
    detail: str
    t_s: float = 0.0

    def __str__(self) -> str:
        return f"{self.conversation_id}: {self.rule}: {self.detail}"


@dataclass
class ToolCallRecord:
    name: str
    call_id: str
    parameters: dict[str, Any]
    sent_t_s: float
    result: str | None = None
    is_error: bool | None = None
    result_t_s: float | None = None
    timed_out: bool = False


@dataclass
class TurnRecord:
    """One agent reply and, when a user turn caused it, that turn."""

    index: int
    trigger: str  # first_message | speech | user_message | reprompt
    user_transcript: str | None = None
    speech_start_t_s: float | None = None
    speech_end_t_s: float | None = None  # last voiced audio received
    turn_end_t_s: float | None = None  # end of turn decided (silence complete)
    speech_s: float | None = None
    reply_text: str = ""
    event_id: int | None = None
    reply_audio_s: float = 0.0
    chunks_total: int = 0
    chunks_sent: int = 0
    reply_first_audio_sent_t_s: float | None = None
    reply_last_audio_sent_t_s: float | None = None
    reply_play_end_t_s: float | None = None  # when the reply would have finished playing
    interrupted: bool = False
    interrupted_t_s: float | None = None
    cancelled: bool = False  # the user spoke again before the reply began
    tool_calls: list[ToolCallRecord] = field(default_factory=list)


@dataclass
class ConversationRecord:
    conversation_id: str
    agent_id: str
    index: int  # 0 for the first conversation since the emulator started
    started_t_s: float
    input_format: str
    output_format: str
    events: list[dict[str, Any]] = field(default_factory=list)
    turns: list[TurnRecord] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    initiation: dict[str, Any] | None = None
    ping_rtts_ms: list[float] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""
    closed_by: str = ""  # server | client | drop (server dropped TCP) | network
    ended_t_s: float | None = None
    events_path: Path | None = None
    wav_path: Path | None = None
    complete: bool = False  # closed, recorded and saved: nothing more will change
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)
    _audio: bytearray = field(default_factory=bytearray, repr=False, compare=False)

    @property
    def ended(self) -> bool:
        """The socket has closed and the record is final (saved, when recording)."""
        return self.complete

    @property
    def user_audio_pcm(self) -> bytes:
        """Every user_audio_chunk received, concatenated: S16LE mono at the input rate."""
        with self._lock:
            return bytes(self._audio)

    @property
    def input_rate_hz(self) -> int:
        return int(self.input_format.rsplit("_", 1)[1])

    def events_of(self, type_: str, direction: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == type_ and direction in (None, e["direction"])]

    # -- written by the conversation's thread ---------------------------------
    def add_event(self, t_s: float, direction: str, type_: str, **summary: Any) -> None:
        with self._lock:
            self.events.append({"t_s": t_s, "direction": direction, "type": type_, **summary})

    def add_audio(self, pcm: bytes) -> None:
        with self._lock:
            self._audio += pcm

    def add_violation(self, v: Violation) -> None:
        with self._lock:
            self.violations.append(v)

    def locked(self) -> threading.RLock:
        return self._lock

    # -- read from anywhere --------------------------------------------------
    def snapshot(self) -> ConversationRecord:
        """A consistent copy, safe to read while the conversation goes on."""
        with self._lock:
            copy = dataclasses.replace(
                self,
                events=[dict(e) for e in self.events],
                turns=[
                    dataclasses.replace(t, tool_calls=[dataclasses.replace(c) for c in t.tool_calls])
                    for t in self.turns
                ],
                violations=list(self.violations),
                ping_rtts_ms=list(self.ping_rtts_ms),
                initiation=json.loads(json.dumps(self.initiation)) if self.initiation is not None else None,
                _lock=threading.RLock(),
                _audio=bytearray(self._audio),
            )
        return copy

    def to_json(self) -> dict[str, Any]:
        """Everything but the audio itself, for the event log."""
        with self._lock:
            return {
                "conversation_id": self.conversation_id,
                "agent_id": self.agent_id,
                "index": self.index,
                "started_t_s": self.started_t_s,
                "ended_t_s": self.ended_t_s,
                "input_format": self.input_format,
                "output_format": self.output_format,
                "close_code": self.close_code,
                "close_reason": self.close_reason,
                "closed_by": self.closed_by,
                "initiation": self.initiation,
                "user_audio_s": len(self._audio) / 2 / self.input_rate_hz,
                "ping_rtts_ms": self.ping_rtts_ms,
                "violations": [dataclasses.asdict(v) for v in self.violations],
                "turns": [dataclasses.asdict(t) for t in self.turns],
                "events": self.events,
            }


def save(record: ConversationRecord, record_dir: Path) -> tuple[Path, Path]:
    """Write ``<id>.events.json`` and ``<id>.user.wav`` into ``record_dir``."""
    record_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{record.index:03d}_{record.conversation_id}"
    events_path = record_dir / f"{stem}.events.json"
    wav_path = record_dir / f"{stem}.user.wav"
    with record.locked():
        audio = record.user_audio_pcm
        data = record.to_json()
    events_path.write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")
    wav_path.write_bytes(pcmlib.wav_bytes(audio, record.input_rate_hz))
    with record.locked():
        record.events_path, record.wav_path = events_path, wav_path
    return events_path, wav_path
