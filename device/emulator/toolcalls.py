"""The client tool calls of one conversation (pure): each owes exactly one client_tool_result."""

from __future__ import annotations

from collections.abc import Iterator
from enum import Enum
from typing import Any

from device.emulator.recording import ToolCallRecord


class Answer(Enum):
    """What a client_tool_result is to the call it names."""

    FIRST = "first"  # the call's result
    DUPLICATE = "duplicate"  # the call had its result already
    LATE = "late"  # the call timed out; its result came after all
    UNKNOWN = "unknown"  # no such call


class ToolCalls:
    """Calls open until answered or ``timeout_s`` old; ``numbers`` is shared with the agent's own tool calls."""

    def __init__(self, conversation_id: str, timeout_s: float, numbers: Iterator[int]) -> None:
        self.timeout_s = timeout_s
        self._id_prefix = f"toolu_{conversation_id[-8:]}_"
        self._numbers = numbers
        self._open: dict[str, ToolCallRecord] = {}
        self._done: set[str] = set()
        self._timed_out: set[str] = set()

    def open(self, now: float, name: str, parameters: dict[str, Any]) -> ToolCallRecord:
        call = ToolCallRecord(name, f"{self._id_prefix}{next(self._numbers):03d}", parameters, now)
        self._open[call.call_id] = call
        return call

    def deadlines(self) -> list[float]:
        return [call.sent_t_s + self.timeout_s for call in self._open.values()]

    def answer(self, call_id: str) -> tuple[Answer, ToolCallRecord | None]:
        """A result for ``call_id`` came: what it is, and the call it answers first."""
        if call_id in self._done:
            return Answer.DUPLICATE, None
        call = self._open.pop(call_id, None)
        if call is None:
            if call_id not in self._timed_out:
                return Answer.UNKNOWN, None
            self._done.add(call_id)
            return Answer.LATE, None
        self._done.add(call_id)
        return Answer.FIRST, call

    def give_up(self, call: ToolCallRecord) -> None:
        """``call`` timed out: a result that still comes is late, not unknown."""
        self._open.pop(call.call_id, None)
        self._timed_out.add(call.call_id)

    def overdue(self, now: float, besides: ToolCallRecord | None) -> list[ToolCallRecord]:
        """The open calls (but ``besides``) past their timeout."""
        return [c for c in self._open.values() if c is not besides and now >= c.sent_t_s + self.timeout_s]
