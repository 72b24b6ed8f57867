"""What a conversation says: the actions for the socket, in order, and the events of its record.

:class:`Outbox` is shared by the parts of a conversation (its turn-taking,
its replies, its faults): each puts what it sends, and the server performs
the actions :meth:`Outbox.flush` hands it. Every JSON message also goes to
the registered message taps (the contract tests validate them there).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from device.emulator import wire
from device.emulator.recording import ConversationRecord
from device.emulator.scenario import ERROR_TYPE_CODES

TO_AGENT = "to_agent"
FROM_AGENT = "from_agent"


@dataclass(frozen=True)
class Send:
    """Send one JSON message as a text frame (``conforms``: False for faults that break the contract)."""

    message: dict[str, Any]
    conforms: bool = True


@dataclass(frozen=True)
class SendRaw:
    """Send a text frame exactly as given (faults that are not valid JSON)."""

    text: str


@dataclass(frozen=True)
class Close:
    code: int
    reason: str


@dataclass(frozen=True)
class Drop:
    """Cut the TCP connection without a close frame."""


Action = Send | SendRaw | Close | Drop

# Observers of every JSON message, both directions: ``tap(direction, message, conforms)``.
# The contract tests register one to validate each message against the AsyncAPI document.
MessageTap = Callable[[str, dict[str, Any], bool], None]
_taps: list[MessageTap] = []
_taps_lock = threading.Lock()


def add_message_tap(tap: MessageTap) -> None:
    """Call ``tap`` for every JSON message any conversation receives or sends (from its thread)."""
    with _taps_lock:
        _taps.append(tap)


def remove_message_tap(tap: MessageTap) -> None:
    with _taps_lock:
        if tap in _taps:
            _taps.remove(tap)


def tap(direction: str, message: dict[str, Any], conforms: bool = True) -> None:
    """Show ``message`` to every registered tap."""
    with _taps_lock:
        taps = list(_taps)
    for t in taps:
        t(direction, message, conforms)


class Outbox:
    """The actions one conversation has yet to perform, and its record's event log.

    ``ended``: nothing more goes out (the agent closed or dropped the connection, or
    the client closed it). ``muted``: the socket is gone; the agent's side records
    nothing more and flushes nothing, the client's side is still recorded.
    """

    def __init__(self, record: ConversationRecord) -> None:
        self.record = record
        self.ended = False
        self.muted = False
        self._actions: list[Action] = []

    def send(self, now: float, msg: dict[str, Any]) -> None:
        """Send ``msg`` and record it (its event body, cut short when long)."""
        self._actions.append(Send(msg))
        body = {k: v for k, v in msg.items() if k != "type"}
        inner = next(iter(body.values()), {}) if len(body) == 1 else body
        self.event(now, FROM_AGENT, str(msg["type"]), **clip(inner if isinstance(inner, dict) else body))

    def put(self, action: Action) -> None:
        """Queue ``action`` without recording it (the caller records what it needs)."""
        self._actions.append(action)

    def close(self, now: float, code: int, reason: str) -> None:
        self._actions.append(Close(code, reason))
        self.ended = True
        self.event(now, FROM_AGENT, "close", code=code, reason=reason)

    def drop(self) -> None:
        self._actions.append(Drop())
        self.ended = True

    def error(self, now: float, error_type: str, message: str, *, code: int | None = None, close: bool = True) -> None:
        """The document's ``error`` event, then (``close``) the close with the same code."""
        code = ERROR_TYPE_CODES[error_type] if code is None else code
        message = message or f"Emulated {error_type} error"
        self.send(now, wire.error(code, message, error_type))
        if close:
            self.close(now, code, message)

    def event(self, now: float, direction: str, type_: str, **summary: Any) -> None:
        if self.muted and direction == FROM_AGENT:
            return
        self.record.add_event(now, direction, type_, **summary)

    def flush(self) -> list[Action]:
        """The actions queued since the last flush (none once muted); their messages go to the taps."""
        out, self._actions = self._actions, []
        if self.muted:
            return []
        for action in out:
            if isinstance(action, Send):
                tap(FROM_AGENT, action.message, action.conforms)
        return out


def clip(summary: dict[str, Any], limit: int = 2000) -> dict[str, Any]:
    """Keep event-log entries small: long values are cut."""
    text = json.dumps(summary, default=str)
    if len(text) <= limit:
        return summary
    return {"truncated_json": text[:limit]}
