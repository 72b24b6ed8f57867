"""The control socket's line protocol (pure): framing, requests, answers.

One request per line (UTF-8, at most :data:`MAX_LINE_BYTES` bytes), one
answer per line: ``ok``, ``ok TEXT`` or ``error TEXT``. A request is a
command name (any case), then its text for the commands that take one.
Nothing here touches a socket or a thread; :mod:`device.drivers.control`
serves it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

MAX_LINE_BYTES = 4096

COMMANDS: Mapping[str, str] = {
    "start": "start a conversation",
    "stop": "end the conversation",
    "press": "press the button (on-screen push-to-talk)",
    "release": "release the button",
    "mute": "force the microphone off",
    "unmute": "let the microphone on again",
    "context": "context TEXT: background information for the agent",
    "message": "message TEXT: text the agent treats as the user's words",
    "status": "the daemon's status as JSON",
    "help": "this list",
}
NEEDS_TEXT = ("context", "message")

OK = "ok"
BUSY_ANSWER = "error the daemon is busy; try again"
REPLY_TIMEOUT_ANSWER = "error the daemon did not answer in time; see `journalctl -u voice-appliance`"
LINE_TOO_LONG_ANSWER = f"error line longer than {MAX_LINE_BYTES} bytes; send shorter lines"
HELP_ANSWER = "ok " + "; ".join(f"{k}: {v}" for k, v in COMMANDS.items())


@dataclass(frozen=True)
class Request:
    """A valid request: a command of :data:`COMMANDS` and its text ("" for those that take none)."""

    name: str
    text: str = ""


def parse(line: str) -> Request | str:
    """The request on ``line``, or the error answer saying what to send instead."""
    name, _, text = line.strip().partition(" ")
    name = name.lower()
    text = text.strip()
    if not name:
        return "error empty command; send one of: " + ", ".join(COMMANDS)
    if name not in COMMANDS:
        return f"error unknown command {name!r}; send one of: " + ", ".join(COMMANDS)
    if name in NEEDS_TEXT and not text:
        return f"error {name} needs text: {name} TEXT"
    if name not in NEEDS_TEXT and text:
        return f"error {name} takes no arguments"
    return Request(name, text)


def status_answer(status: Mapping[str, Any]) -> str:
    """The answer to ``status``: ``ok`` and the status as one line of compact JSON."""
    return "ok " + json.dumps(status, separators=(",", ":"))


def reply_answer(ok: bool, text: str) -> str:
    """The answer carrying the controller's reply to a command."""
    return f"ok {text}" if ok else f"error {text}"


def encode(answer: str) -> bytes:
    """One answer as the bytes sent: UTF-8 and its newline."""
    return answer.encode("utf-8") + b"\n"


def parse_answer(line: str) -> tuple[bool, str] | None:
    """(ok, text) of an answer line; None when it is not an answer of this protocol."""
    word, _, text = line.partition(" ")
    if word not in ("ok", "error"):
        return None
    return word == "ok", text


class LineTooLong(ValueError):
    """The next request line is over :data:`MAX_LINE_BYTES`; answer :data:`LINE_TOO_LONG_ANSWER`."""


@dataclass
class LineBuffer:
    """A connection's bytes not yet taken as request lines."""

    data: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> None:
        self.data += data

    def pop(self) -> str | None:
        """The next complete line, decoded (bad UTF-8 replaced); None until one is complete.

        LineTooLong when it is over the limit: its end may arrive in a later read than the limit.
        """
        end = self.data.find(b"\n")
        if end < 0:
            return None
        line = bytes(self.data[:end])
        del self.data[: end + 1]
        if len(line) > MAX_LINE_BYTES:
            raise LineTooLong
        return line.decode("utf-8", "replace")

    @property
    def overlong(self) -> bool:
        """The unfinished line is already over the limit (complete lines wait their turn)."""
        return len(self.data) > MAX_LINE_BYTES and b"\n" not in self.data

    def clear(self) -> None:
        self.data.clear()
