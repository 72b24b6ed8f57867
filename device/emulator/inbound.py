"""The client's messages, read and checked against the protocol (pure).

Each function takes one parsed message and returns what it carries (when it
is usable) and the rules it breaks, as :class:`Problem` values in the order
the conversation records them as violations. What a message *means* for
the conversation (a turn, a tool's result, an approval) is the
conversation's business. :class:`AudioRate` watches the pace of the audio.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, NamedTuple

INIT_TYPE = "conversation_initiation_client_data"
INITIATION_FIELDS = frozenset(
    {
        "type",
        "conversation_config_override",
        "custom_llm_extra_body",
        "dynamic_variables",
        "user_id",
        "source_info",
        "tool_mock_config",
    }
)
# Override paths the emulator understands, by the name used in allowed_overrides.
OVERRIDE_PATHS = {
    ("agent", "prompt", "prompt"): "prompt",
    ("agent", "first_message"): "first_message",
    ("agent", "language"): "language",
    ("tts", "voice_id"): "voice_id",
    ("conversation", "text_only"): "text_only",
    ("conversation", "client_events"): "client_events",
}


class Problem(NamedTuple):
    """A rule a client message breaks, and how."""

    rule: str
    detail: str


@dataclass(frozen=True)
class ToolResult:
    """A client_tool_result's fields, made usable (a result that is not text is its JSON)."""

    call_id: str
    result: str
    is_error: bool


def initiation_problems(msg: dict[str, Any], *, unknown_fields: bool) -> list[Problem]:
    """The initiation's fields of the wrong type (and, with ``unknown_fields``, those it should not have)."""
    problems: list[Problem] = []
    if unknown_fields:
        unknown = sorted(set(msg) - INITIATION_FIELDS)
        if unknown:
            problems.append(Problem("unknown_field", f"{INIT_TYPE} has unknown field(s) {unknown}"))
    for key in ("conversation_config_override", "custom_llm_extra_body", "source_info"):
        if key in msg and not isinstance(msg[key], dict):
            problems.append(Problem("bad_field", f"{INIT_TYPE}.{key} must be an object, not {tname(msg[key])}"))
    if "dynamic_variables" in msg:
        dv = msg["dynamic_variables"]
        if not isinstance(dv, dict):
            problems.append(Problem("bad_field", f"{INIT_TYPE}.dynamic_variables must be an object"))
        else:
            problems += [
                Problem(
                    "bad_field",
                    f"dynamic variable {k!r} is {tname(v)}; values must be strings, numbers or booleans",
                )
                for k, v in dv.items()
                if not isinstance(v, (str, int, float, bool))
            ]
    if "user_id" in msg and not isinstance(msg["user_id"], str):
        problems.append(Problem("bad_field", f"{INIT_TYPE}.user_id must be a string"))
    return problems


def overrides(msg: dict[str, Any]) -> dict[str, Any]:
    """The initiation's overrides by their allowed_overrides name (unknown paths dotted), in order."""
    tree = msg.get("conversation_config_override") or {}
    found: dict[str, Any] = {}
    if isinstance(tree, dict):
        for path, value in _leaves(tree):
            found[OVERRIDE_PATHS.get(path, ".".join(path))] = value
    return found


def pong_event_id(msg: dict[str, Any]) -> tuple[int | None, list[Problem]]:
    """The ping a pong answers (None: it names none)."""
    eid = msg.get("event_id")
    if not isinstance(eid, int) or isinstance(eid, bool):
        return None, [Problem("pong_bad_event_id", f"pong event_id must be the ping's integer, got {eid!r}")]
    return eid, []


def tool_result(msg: dict[str, Any]) -> tuple[ToolResult | None, list[Problem]]:
    """A client_tool_result's fields (None: it names no call)."""
    call_id = msg.get("tool_call_id")
    result = msg.get("result")
    is_error = msg.get("is_error", False)
    if not isinstance(call_id, str):
        detail = f"client_tool_result needs a string tool_call_id, got {call_id!r}"
        return None, [Problem("tool_result_bad_field", detail)]
    problems: list[Problem] = []
    if not isinstance(result, str):
        detail = f"client_tool_result.result must be a string, got {tname(result)}"
        problems.append(Problem("tool_result_bad_field", detail))
        result = json.dumps(result)
    if not isinstance(is_error, bool):
        detail = f"client_tool_result.is_error must be true or false, got {is_error!r}"
        problems.append(Problem("tool_result_bad_field", detail))
        is_error = bool(is_error)
    return ToolResult(call_id, result, is_error), problems


def contextual_update_problems(msg: dict[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    if not isinstance(msg.get("text"), str):
        problems.append(Problem("bad_field", "contextual_update needs a string text"))
    if "context_id" in msg and not isinstance(msg["context_id"], str):
        problems.append(Problem("bad_field", "contextual_update.context_id must be a string"))
    return problems


def user_message_text(msg: dict[str, Any]) -> tuple[str | None, list[Problem]]:
    """The text a user_message types (None: none, or not text)."""
    text = msg.get("text")
    if text is not None and not isinstance(text, str):
        return None, [Problem("bad_field", f"user_message.text must be a string or null, not {tname(text)}")]
    problems: list[Problem] = []
    if "rich_content_id" in msg and not isinstance(msg["rich_content_id"], str):
        problems.append(Problem("bad_field", "user_message.rich_content_id must be a string"))
    return text, problems


def multimodal_message_text(msg: dict[str, Any]) -> tuple[str | None, list[Problem]]:
    """The text of a multimodal_message's user_message part (None: none, or not text)."""
    part = msg.get("text")
    if part is not None and not (isinstance(part, dict) and part.get("type") == "user_message"):
        return None, [Problem("bad_field", "multimodal_message.text must be a user_message object or null")]
    problems: list[Problem] = []
    file = msg.get("file")
    if file is not None and not (
        isinstance(file, dict) and file.get("type") == "file_input" and isinstance(file.get("file_id"), str)
    ):
        problems.append(Problem("bad_field", 'multimodal_message.file must be {"type": "file_input", "file_id": …}'))
    text = part.get("text") if isinstance(part, dict) else None
    return (text if isinstance(text, str) else None), problems


def feedback_problems(msg: dict[str, Any], reply_ids: set[int]) -> list[Problem]:
    """``reply_ids``: the event_ids of the agent's replies so far (feedback names one)."""
    problems: list[Problem] = []
    eid = msg.get("event_id")
    if "score" not in msg or msg["score"] not in ("like", "dislike", None):  # null clears the feedback
        detail = f'feedback score must be "like", "dislike" or null, got {msg.get("score")!r}'
        problems.append(Problem("bad_field", detail))
    if not isinstance(eid, int) or isinstance(eid, bool) or eid not in reply_ids:
        problems.append(Problem("bad_field", f"feedback event_id {eid!r} is not the event_id of an agent reply"))
    return problems


def mcp_approval(msg: dict[str, Any]) -> tuple[tuple[str, bool] | None, list[Problem]]:
    """An mcp_tool_approval_result's (tool_call_id, is_approved) (None: not both usable)."""
    call_id, approved = msg.get("tool_call_id"), msg.get("is_approved")
    if not isinstance(call_id, str) or not isinstance(approved, bool):
        detail = "mcp_tool_approval_result needs a string tool_call_id and a boolean is_approved"
        return None, [Problem("bad_field", detail)]
    return (call_id, approved), []


class AudioRate:
    """The client's audio against real time: more than ``factor``× it plus ``burst_s`` breaks a rule (0: no limit)."""

    def __init__(self, format_name: str, factor: float, burst_s: float) -> None:
        self._format_name = format_name
        self._factor = factor
        self._burst_s = burst_s
        self._first_s: float | None = None
        self._audio_s = 0.0
        self._flagged = False

    def feed(self, now: float, duration_s: float) -> list[Problem]:
        """``duration_s`` of audio arrived at ``now``; a problem the first time the pace is too fast."""
        if self._first_s is None:
            self._first_s = now
        self._audio_s += duration_s
        if not self._factor or self._flagged:
            return []
        elapsed_s = now - self._first_s
        if self._audio_s <= elapsed_s * self._factor + self._burst_s:
            return []
        self._flagged = True
        detail = (
            f"{self._audio_s:.2f} s of audio arrived in {elapsed_s:.2f} s; at "
            f"{self._format_name} a client sends about real time (allowed: "
            f"{self._factor}× plus a {self._burst_s} s burst)"
        )
        return [Problem("audio_rate", detail)]


def tname(value: Any) -> str:
    """A JSON value's type as a client author would name it."""
    return "null" if value is None else type(value).__name__


def _leaves(tree: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    out: list[tuple[tuple[str, ...], Any]] = []
    for k, v in tree.items():
        path = (*prefix, str(k))
        if isinstance(v, dict) and path not in OVERRIDE_PATHS:
            out += _leaves(v, path)
        else:
            out.append((path, v))
    return out
