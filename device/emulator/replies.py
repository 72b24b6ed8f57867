"""The agent's replies (pure): which turn comes next, what waits to be said, a reply's audio as it streams.

The :class:`TurnScript` walks the scenario's turns; a :class:`Pending` reply
waits for its thinking time or for a tool result; a :class:`Reply` streams
its audio in variable-size chunks, faster than real time, while its playback
clock says how much of it the client has played.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from device.core.audioformat import AudioFormat
from device.emulator import wire
from device.emulator.outbox import FROM_AGENT, Outbox, Send
from device.emulator.recording import ToolCallRecord, TurnRecord
from device.emulator.scenario import AfterLast, Turn

AFTER_LAST_GOODBYE = "That is all I can help with today. Goodbye!"


class TurnScript:
    """The scenario's turns in order, then what ``after_last`` says: cycle, repeat the last, or end the call."""

    def __init__(self, turns: Sequence[Turn], after_last: AfterLast) -> None:
        self._turns = turns
        self._after_last = after_last
        self.cursor = 0  # the next turn's index (rewound when a turn is taken back)

    def peek(self) -> Turn:
        """The turn :meth:`take` will give."""
        if self.cursor < len(self._turns):
            return self._turns[self.cursor]
        if self._after_last == "cycle":
            return self._turns[0]
        if self._after_last == "repeat_last":
            return self._turns[-1]
        return Turn(reply=AFTER_LAST_GOODBYE, end_call=True)

    def take(self) -> Turn:
        turn = self.peek()
        if self.cursor < len(self._turns):
            self.cursor += 1
        elif self._after_last == "cycle":
            self.cursor = 1
        return turn


@dataclass
class Pending:
    """A reply waiting for its thinking time or for a tool result."""

    turn: Turn
    record: TurnRecord
    start_at_s: float
    cursor_before: int
    tool_call: ToolCallRecord | None = None
    tool_deadline_s: float | None = None


@dataclass
class Reply:
    """A reply being streamed and (on the client's side) played."""

    text: str
    event_id: int
    index: int  # replies started in this conversation before this one
    audio: bytes
    fmt: AudioFormat
    bounds: list[tuple[int, int]]  # byte ranges of the chunks
    play_start_s: float
    play_end_s: float
    record: TurnRecord
    end_call: bool
    next_chunk: int = 0
    response_sent: bool = False
    interrupted: bool = False
    oversized_chunks: dict[int, int] = field(default_factory=dict)  # chunk index → frame size

    def chunk_due_s(self, i: int, speed: float) -> float:
        start_byte = self.bounds[i][0]
        return self.play_start_s + self.fmt.duration_s(start_byte) / speed

    @property
    def streaming(self) -> bool:
        return self.next_chunk < len(self.bounds) and not self.interrupted


def plan_chunks(
    nbytes: int, fmt: AudioFormat, rng: random.Random, min_ms: float, max_ms: float
) -> list[tuple[int, int]]:
    """Byte ranges of ``nbytes`` of audio in whole frames, each ``min_ms``…``max_ms`` long (the last shorter)."""
    bytes_per_ms = fmt.rate_hz * fmt.bytes_per_frame / 1000
    bounds: list[tuple[int, int]] = []
    pos = 0
    while pos < nbytes:
        ms = rng.uniform(min_ms, max_ms)
        size = max(fmt.bytes_per_frame, int(ms * bytes_per_ms) // fmt.bytes_per_frame * fmt.bytes_per_frame)
        bounds.append((pos, min(nbytes, pos + size)))
        pos += size
    return bounds


def send_chunk(out: Outbox, now: float, r: Reply, i: int, *, alignment: bool) -> None:
    """Chunk ``i`` of ``r``, with its characters' timings when ``alignment`` (or padding a fault asked for)."""
    start, end = r.bounds[i]
    chunk = r.audio[start:end]
    oversized = r.oversized_chunks.pop(i, 0)
    timings = None
    if oversized:
        timings = padding_alignment(oversized)
    elif alignment:
        timings = chunk_alignment(r.text, r.fmt.duration_s(len(r.audio)), r.fmt, start, len(chunk))
    send_audio(out, now, r, chunk, timings, oversized)


def send_audio(
    out: Outbox, now: float, r: Reply, chunk: bytes, alignment: dict[str, Any] | None, oversized: int = 0
) -> None:
    """One audio event of ``r``, recorded by its size (not its bytes)."""
    summary: dict[str, Any] = {
        "event_id": r.event_id,
        "bytes": len(chunk),
        "duration_ms": round(r.fmt.duration_s(len(chunk)) * 1000, 1),
    }
    if oversized:
        summary["oversized_to_bytes"] = oversized
    out.put(Send(wire.audio(wire.encode_audio(chunk), r.event_id, alignment)))
    out.event(now, FROM_AGENT, "audio", **summary)


def words_prefix(text: str, fraction: float) -> str:
    """The first ``fraction`` of the words of ``text`` (what was heard of a reply cut short)."""
    words = text.split()
    keep = max(0, min(len(words), math.floor(len(words) * fraction)))
    return " ".join(words[:keep])


def chunk_alignment(text: str, total_s: float, fmt: AudioFormat, start_byte: int, nbytes: int) -> dict[str, Any]:
    """The characters spoken in one chunk, with times relative to the chunk, as the service sends them.

    The emulator does not know real character timings: the text is spread evenly over the reply's audio.
    """
    if not text or total_s <= 0:
        return {"chars": [], "char_start_times_ms": [], "char_durations_ms": []}
    per_char_ms = total_s * 1000 / len(text)
    t0_ms = fmt.duration_s(start_byte) * 1000
    t1_ms = fmt.duration_s(start_byte + nbytes) * 1000
    first = math.ceil(t0_ms / per_char_ms - 1e-9)
    chars, starts, durations = [], [], []
    i = first
    while i < len(text) and i * per_char_ms < t1_ms:
        chars.append(text[i])
        starts.append(round(i * per_char_ms - t0_ms))
        durations.append(max(1, round(per_char_ms)))
        i += 1
    return {"chars": chars, "char_start_times_ms": starts, "char_durations_ms": durations}


def padding_alignment(size_bytes: int) -> dict[str, list[Any]]:
    """Alignment data (a legitimate field) big enough to make the frame ``size_bytes``."""
    n = max(1, size_bytes // 12)
    return {
        "chars": ["a"] * n,
        "char_start_times_ms": list(range(n)),
        "char_durations_ms": [1] * n,
    }
