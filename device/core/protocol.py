"""The ElevenAgents conversation protocol, pure: messages in and out, outcomes.

No sockets, threads or clocks here (times are passed in), so every rule is
tested directly. The wire format is ElevenLabs' AsyncAPI document vendored in
``tests/contract/`` (see "Protocol conformance" in docs/bench.md).

- :func:`decode_server_message` turns one text frame into a typed event, an
  :class:`UnknownEvent`, or raises :class:`MalformedMessage`.
- ``encode_*`` build the client messages.
- :class:`InterruptionFilter` applies the interruption rule (drop ``id < N``).
- :class:`Outcome` and the ``classify_*`` functions turn the service's error
  event (``error_type``, see :data:`ERROR_TYPES`), close codes and HTTP
  statuses into something the controller can show and act on.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any

from device.core.audioformat import AudioFormat
from device.core.errors import ProtocolError
from device.core.text import escape_controls

# Largest server message accepted (the service sends frames over 1 MiB).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
SOURCE_NAME = "voice-appliance"
# Every string the service sends is cleaned before it leaves the parser (clean_text): its control
# characters escaped, so that it can forge no log line, sd_notify field or terminal sequence, and cut to
# a length that a log line, status.json and the control socket's answer can carry.
# Longest id, name, type or message kept (and close reason or server error in a detail string).
MAX_FIELD_CHARS = 200
# Longest transcript or agent text kept: minutes of speech; they are published, not logged.
MAX_TEXT_CHARS = 10_000


# -- outcomes -----------------------------------------------------------------


class Outcome(enum.Enum):
    """How a conversation ended (or failed to start), with what to tell the user."""

    NORMAL = ("the conversation ended", False)
    AGENT_ENDED = ("the agent ended the conversation", False)
    MAX_DURATION = (
        "the conversation reached the agent's maximum duration; press the button to start a new one",
        False,
    )
    QUOTA = (
        "the ElevenLabs account has no quota left; add credits or raise the usage limit "
        "in the ElevenLabs dashboard",
        False,
    )
    AUTH = (
        "the agent service rejected this device's credentials; check the API key (or the broker "
        "token) and that it may use this agent",
        False,
    )
    NOT_FOUND = (
        "the agent was not found; check agent.agent_id and agent.region (an EU-resident agent "
        "needs region = \"eu\")",
        False,
    )
    RATE_LIMITED = (
        "the agent service is rate limiting this account; wait, then press the button to try again "
        "(fewer kiosks talking at once, or a higher plan, avoid it)",
        True,
    )
    MISCONFIGURED = (
        "the agent refused the conversation settings; allow the overrides the config uses "
        "(prompt, first_message, language, voice_id) in the agent's Security settings, "
        "or remove them from [agent]",
        False,
    )
    MISSING_VARIABLE = (
        "the agent needs a dynamic variable this device did not send; add it under "
        "[agent.dynamic_variables] in the config (the device itself sends kiosk_id, and location when set), "
        "or give the variable a default value in the agent's settings",
        False,
    )
    AGENT_SETUP = (
        "the agent's own settings stop it from running this conversation; fix the agent in the "
        "ElevenLabs dashboard (see the reason above)",
        False,
    )
    SAFETY = (
        "the agent service ended the conversation for a content policy (safety) violation; it is not "
        "retried: a press starts a new conversation (review the agent's guardrails if this was unexpected)",
        False,
    )
    # Automatic retries happen only while a conversation is being opened (the controller then adds
    # "trying again in N s"); a conversation that broke off is never reopened on its own.
    SERVER_ERROR = (
        "the agent service failed; press the button to try again "
        "(see status.elevenlabs.io if it persists)",
        True,
    )
    NETWORK = (
        "the network connection to the agent service failed; check the network, DNS, proxy "
        "and clock, then press the button to try again",
        True,
    )
    PROTOCOL = (
        "the agent service sent something this device cannot use; see the log line before this "
        "one (change the agent's settings or update the firmware)",
        False,
    )
    REJECTED = (
        "the agent service refused a message from this device; update the firmware, and report it "
        "with this log line if it persists",
        False,
    )
    LOCAL = ("the conversation was ended on the device", False)

    def __init__(self, advice: str, retryable: bool) -> None:
        self.advice = advice
        self.retryable = retryable


def clean_text(text: str, limit: int = MAX_FIELD_CHARS) -> str:
    """Text from the service, safe to log, store and show: at most ``limit`` characters, controls escaped.

    Nothing is lost silently: an escape stays visible (``\\n``, ``\\x1b``), a cut text ends in "…".
    """
    cut = len(text) > limit
    text = escape_controls(text[:limit])  # cut first: the escaping is then bounded too
    if cut or len(text) > limit:
        return text[: limit - 1] + "…"
    return text


def _reason_text(reason: str) -> str:
    return clean_text(" ".join(reason.split()))


_AUTH_WORDS = ("auth", "api key", "api_key", "signature", "token", "expired", "credential", "permission")
_QUOTA_WORDS = ("quota", "credits")
_DURATION_WORDS = ("max duration", "maximum duration", "max_duration", "duration limit", "time limit")
_AGENT_WORDS = ("end_call", "end call", "agent ended", "ended by agent", "agent_ended", "silence")
_TIMEOUT_WORDS = ("timeout", "timed out", "receive_timeout")


def classify_close(code: int | None, reason: str) -> tuple[Outcome, str]:
    """A server close frame → (outcome, detail for the log). ``code`` None: no close frame."""
    low = reason.lower()
    text = _reason_text(reason)
    said = f": {text}" if text else ""
    if code is None:
        return Outcome.NETWORK, "the connection was lost without a close frame"
    if any(w in low for w in _QUOTA_WORDS):
        return Outcome.QUOTA, f"the service closed the conversation ({code}){said}"
    if code == 1000:
        if any(w in low for w in _DURATION_WORDS) or re.search(r"max(imum)?[\w ]{0,30}duration", low):
            return Outcome.MAX_DURATION, f"the conversation reached its maximum duration{said}"
        if any(w in low for w in _AGENT_WORDS):
            return Outcome.AGENT_ENDED, f"the agent ended the conversation{said}"
        return Outcome.NORMAL, f"the service ended the conversation{said}"
    if code == 1002 and any(w in low for w in _TIMEOUT_WORDS):
        return Outcome.NETWORK, (
            f"the service stopped receiving audio from the device (1002){said}"
        )
    if code == 1008:
        if "not found" in low or "does not exist" in low:
            return Outcome.NOT_FOUND, f"the service does not know this agent (1008){said}"
        if any(w in low for w in _AUTH_WORDS):
            return Outcome.AUTH, f"the service refused the credentials (1008){said}"
        return Outcome.MISCONFIGURED, f"the service refused the conversation settings (1008){said}"
    if code == 1009:
        return Outcome.PROTOCOL, f"a message was too large (1009){said}"
    if code in (1001, 1011, 1012, 1013, 1014) or code == 1002:
        return Outcome.SERVER_ERROR, f"the service closed the conversation with an error ({code}){said}"
    if code == 1006:
        return Outcome.NETWORK, "the connection was lost (1006)"
    return Outcome.SERVER_ERROR, f"the service closed the conversation ({code}){said}"


# The AsyncAPI document's ErrorType enum → (outcome, what happened). Every value is listed on purpose;
# "unknown" (and a missing or new error_type) leaves the decision to the close code and its reason.
ERROR_TYPES: Mapping[str, tuple[Outcome, str] | None] = {
    "unknown": None,
    "invalid_message": (Outcome.REJECTED, "the service could not read a message from this device"),
    "value_error": (Outcome.REJECTED, "the service rejected a value in a message from this device"),
    "missing_fields": (Outcome.REJECTED, "a message from this device lacked a field the service requires"),
    "override_error": (Outcome.MISCONFIGURED, "the agent does not allow the conversation overrides the device sent"),
    "missing_dynamic_variable": (
        Outcome.MISSING_VARIABLE, "the agent uses a dynamic variable the device did not send",
    ),
    "missing_dynamic_variable_transfer": (
        Outcome.MISSING_VARIABLE, "the agent the conversation was transferred to needs a dynamic variable",
    ),
    "telephony_agent_error": (Outcome.AGENT_SETUP, "the agent is speech-recognition only and cannot hold this call"),
    "mcp_tool_error": (Outcome.AGENT_SETUP, "one of the agent's MCP tools has an invalid schema"),
    "mcp_https_error": (Outcome.AGENT_SETUP, "one of the agent's MCP servers is not an https:// URL"),
    "websocket_disconnect": (Outcome.NETWORK, "the service saw the connection drop"),
    "safety_violation": (Outcome.SAFETY, "the service detected a content policy violation"),
    "llm_timeout": (Outcome.SERVER_ERROR, "the agent's language model took over 20 s to answer"),
    "transport_receive_timeout": (Outcome.NETWORK, "the service stopped receiving audio from the device"),
    "asyncio_timeout": (Outcome.SERVER_ERROR, "an internal task of the service timed out"),
    "http_exception": (Outcome.SERVER_ERROR, "the service failed on an HTTP call of its own"),
    "max_duration_exceeded": (Outcome.MAX_DURATION, "the conversation reached the agent's maximum duration"),
    "llm_error": (Outcome.SERVER_ERROR, "the agent's language model failed"),
    "custom_llm_error": (
        Outcome.SERVER_ERROR, "the agent's custom LLM failed to answer (check the custom LLM server)",
    ),
    "cascade_brain_error": (Outcome.SERVER_ERROR, "every language model configured for the agent failed"),
    "asr_transcription_error": (Outcome.SERVER_ERROR, "the service's speech recognition failed"),
    "vad_error": (Outcome.SERVER_ERROR, "the service's voice activity detection failed"),
    "turn_probability_error": (Outcome.SERVER_ERROR, "the service's turn detection failed"),
    "tts_cascade_error": (Outcome.SERVER_ERROR, "every voice model configured for the agent failed"),
    "redis_timeout_error": (Outcome.SERVER_ERROR, "the service's internal storage timed out"),
    "unknown_websocket_crash": (Outcome.SERVER_ERROR, "the service crashed"),
}


def classify_end(code: int | None, reason: str, error: ServerError | None = None) -> tuple[Outcome, str]:
    """How a conversation ended → (outcome, detail for the log).

    Machine-readable fields first: the ``error`` event's ``error_type`` (the
    service sends it just before closing), then the close code; English text
    (close reason, error message) only where those leave it open, e.g. quota
    and credential refusals, which have no error_type of their own.
    ``code`` None: the connection was lost without a close frame.
    """
    rule = ERROR_TYPES.get(error.error_type) if error is not None else None
    if error is not None and rule is not None:
        outcome, what = rule
        closed = f"close {code}" if code is not None else "no close frame"
        said = _reason_text(error.message)
        return outcome, f"{what} ({error.error_type}, {closed})" + (f": {said}" if said else "")
    if error is not None and not reason:
        reason = error.message  # e.g. "This request exceeds your quota limit." in an untyped error
        if code is None and error.code is not None:
            code = error.code  # the line dropped after the service said why
    return classify_close(code, reason)


def classify_http_status(status: int) -> Outcome:
    """HTTP status of a REST call or a refused WebSocket upgrade → outcome."""
    if status in (401, 403):
        return Outcome.AUTH
    if status == 404:
        return Outcome.NOT_FOUND
    if status == 429:
        return Outcome.RATE_LIMITED
    if status in (400, 422):
        return Outcome.MISCONFIGURED
    if status >= 500:
        return Outcome.SERVER_ERROR
    return Outcome.PROTOCOL


_DELAY_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def parse_retry_after(value: str | None, now_epoch_s: float | None = None) -> float | None:
    """``Retry-After`` (delay-seconds or an HTTP-date) → seconds from now; None when absent or unusable.

    Unusable, so the caller backs off as if there were none: a negative, non-finite or malformed
    number (``inf``, ``nan``, ``-5``, ``1e3``), an unreadable date, or a date without ``now_epoch_s``.
    A date in the past is 0. The value is not capped here: whoever waits caps it (device.core.retry).
    """
    if not value:
        return None
    value = value.strip()
    if _DELAY_SECONDS.fullmatch(value):
        seconds = float(value)
        return seconds if math.isfinite(seconds) else None  # a few hundred digits overflow to inf
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if now_epoch_s is None:
        return None
    if when.tzinfo is None:  # asctime and "-0000" dates carry no zone; HTTP dates are always UTC
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now_epoch_s)


# -- events (server → controller) ---------------------------------------------


@dataclass(frozen=True)
class Connected:
    """``conversation_initiation_metadata``: the conversation is running."""

    conversation_id: str
    output_format: AudioFormat
    input_format: AudioFormat


@dataclass(frozen=True)
class Alignment:
    """When each character of an audio chunk is spoken: milliseconds from the chunk's first sample."""

    chars: tuple[str, ...]
    starts_ms: tuple[float, ...]
    durations_ms: tuple[float, ...]


@dataclass(frozen=True)
class AgentAudio:
    """A chunk of the agent's speech, still in ``fmt`` (μ-law still encoded)."""

    audio: bytes = field(repr=False)
    event_id: int
    fmt: AudioFormat
    received_at_s: float
    alignment: Alignment | None = field(default=None, repr=False)  # absent, or malformed: no captions timing


@dataclass(frozen=True)
class Interruption:
    """The user interrupted: flush playback; audio with a lower id is dropped."""

    event_id: int


@dataclass(frozen=True)
class AgentResponse:
    text: str


@dataclass(frozen=True)
class AgentResponseCorrection:
    """The agent's last response was cut short; ``text`` is what was actually said."""

    text: str
    original: str = ""


@dataclass(frozen=True)
class AgentResponsePart:
    """``agent_chat_response_part``: streamed text; ``part`` is start, delta or stop."""

    text: str
    part: str


@dataclass(frozen=True)
class TentativeAgentResponse:
    """``internal_tentative_agent_response``: what the agent is about to say."""

    text: str


@dataclass(frozen=True)
class UserTranscript:
    text: str
    tentative: bool = False


@dataclass(frozen=True)
class VadScore:
    score: float


@dataclass(frozen=True)
class Ping:
    """A ping from the server (already answered); ``ping_ms`` is its latency estimate."""

    ping_ms: int | None
    event_id: int = 0


@dataclass(frozen=True)
class ToolCall:
    """``client_tool_call`` (handled by the session; the controller sees ToolCallStarted)."""

    name: str
    call_id: str
    parameters: Mapping[str, Any]


@dataclass(frozen=True)
class ToolCallStarted:
    name: str
    call_id: str


@dataclass(frozen=True)
class ToolCallFinished:
    name: str
    call_id: str
    is_error: bool


@dataclass(frozen=True)
class ServerError:
    """An ``error`` event; the service usually closes the socket right after it."""

    code: int | None
    message: str
    error_type: str


@dataclass(frozen=True)
class AgentToolResponse:
    """``agent_tool_response`` (or ``agent_tool_response_full_payload``): a tool the agent ran itself."""

    tool_name: str
    call_id: str
    tool_type: str
    is_error: bool

    @property
    def ends_call(self) -> bool:
        """The agent's ``end_call`` system tool: the conversation is over (the JS client ends it at once too)."""
        return self.tool_name == "end_call"


@dataclass(frozen=True)
class McpToolCall:
    """``mcp_tool_call``: an MCP tool of the agent changed ``state`` (loading, awaiting_approval, success, failure)."""

    call_id: str
    tool_name: str
    state: str
    service_id: str = ""
    approval_timeout_s: int | None = None
    error: str = ""


@dataclass(frozen=True)
class McpApproval:
    """The device answered an MCP tool call awaiting approval (``tools.mcp_approve``)."""

    tool_name: str
    call_id: str
    approved: bool


@dataclass(frozen=True)
class RichContent:
    """``rich_content``: a card or other component for a screen (this kiosk has none: counted)."""

    rich_content_id: str
    component: str


@dataclass(frozen=True)
class UnknownEvent:
    """A message type this firmware does not know (counted and ignored)."""

    type: str


@dataclass(frozen=True)
class SessionEnded:
    """The last event of every session."""

    outcome: Outcome
    detail: str
    close_code: int | None = None
    retry_after_s: float | None = None

    @property
    def message(self) -> str:
        """One line for the log and the status display: what happened and what to do."""
        advice = self.outcome.advice
        if not self.detail or self.detail in advice:
            return advice
        return self.detail if advice in self.detail else f"{self.detail}; {advice}"


ServerEvent = (
    Connected
    | AgentAudio
    | Interruption
    | AgentResponse
    | AgentResponseCorrection
    | AgentResponsePart
    | TentativeAgentResponse
    | UserTranscript
    | VadScore
    | Ping
    | ToolCall
    | ServerError
    | AgentToolResponse
    | McpToolCall
    | RichContent
    | UnknownEvent
)
SessionEvent = (
    Connected
    | AgentAudio
    | Interruption
    | AgentResponse
    | AgentResponseCorrection
    | AgentResponsePart
    | TentativeAgentResponse
    | UserTranscript
    | VadScore
    | Ping
    | ToolCallStarted
    | ToolCallFinished
    | ServerError
    | McpApproval
    | RichContent
    | SessionEnded
)


# -- decoding -----------------------------------------------------------------


class MalformedMessage(ProtocolError):
    """A server message that breaks the schema; ``kind`` names the defect for counters."""

    def __init__(self, kind: str, detail: str) -> None:
        self.kind = kind
        super().__init__(detail)


class UnsupportedFormat(ProtocolError):
    """The agent announced an audio format this device cannot use."""


def _wrapper(msg: Mapping[str, Any], *names: str) -> Mapping[str, Any]:
    for name in names:
        value = msg.get(name)
        if isinstance(value, Mapping):
            return value
    raise MalformedMessage("missing_field", f"{msg.get('type')!r} message without {names[0]!r}")


def _str(
    wrapper: Mapping[str, Any], name: str, kind_type: str, default: str | None = None, limit: int = MAX_FIELD_CHARS
) -> str:
    """A string field, cleaned (:func:`clean_text`)."""
    value = wrapper.get(name, default)
    if not isinstance(value, str):
        if value is None and default is not None:
            return default
        raise MalformedMessage("missing_field", f"{kind_type!r} message: {name!r} is not a string")
    return clean_text(value, limit)


def _text_field(wrapper: Mapping[str, Any], name: str, kind_type: str, default: str | None = None) -> str:
    """A transcript or agent text: cleaned like the other strings, but it may be long."""
    return _str(wrapper, name, kind_type, default, MAX_TEXT_CHARS)


def _int(wrapper: Mapping[str, Any], name: str, kind_type: str) -> int:
    value = wrapper.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        # Be liberal: integral floats and digit strings occur in older servers.
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit() and len(value) < 20:
            return int(value)
        raise MalformedMessage("missing_field", f"{kind_type!r} message: {name!r} is not an integer")
    return value


def _optional_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def decode_format(name: Any, which: str) -> AudioFormat:
    """An announced format name → AudioFormat; :class:`UnsupportedFormat` otherwise."""
    from device.core.audioformat import parse_format

    if not isinstance(name, str):
        got = repr(name) if name is None or isinstance(name, (bool, int, float)) else f"a JSON {type(name).__name__}"
        raise UnsupportedFormat(
            f"the agent announced no {which} audio format (got {got}); "
            "set the agent's audio formats in the ElevenLabs dashboard"
        )
    try:
        return parse_format(clean_text(name))  # the name is in the error: never a megabyte of it
    except ProtocolError as e:
        raise UnsupportedFormat(f"{which}: {e}") from None


def decode_audio(b64: Any, fmt: AudioFormat) -> bytes:
    """Base64 agent audio → bytes; whole samples only."""
    if not isinstance(b64, str):
        raise MalformedMessage("missing_field", "'audio' message: 'audio_base_64' is not a string")
    try:
        audio = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedMessage("bad_base64", "'audio' message: audio_base_64 is not valid base64") from None
    if len(audio) % fmt.bytes_per_frame:
        raise MalformedMessage(
            "odd_length_audio",
            f"'audio' message: {len(audio)} bytes is not a whole number of {fmt.name} samples",
        )
    return audio


MAX_ALIGNMENT_CHARS = 4_000  # a chunk of speech is a second or two: a few dozen characters


def decode_alignment(value: Any) -> Alignment | None:
    """An audio event's optional ``alignment``; None when absent or not usable (the audio still plays).

    Liberal: the three lists must be as long as each other, each char a string and each time a
    non-negative number; anything else drops the alignment (never the audio).
    """
    if not isinstance(value, Mapping):
        return None
    chars, starts, durations = (value.get(k) for k in ("chars", "char_start_times_ms", "char_durations_ms"))
    if not (isinstance(chars, list) and isinstance(starts, list) and isinstance(durations, list)):
        return None
    if not (len(chars) == len(starts) == len(durations)) or len(chars) > MAX_ALIGNMENT_CHARS:
        return None
    if not all(isinstance(c, str) and len(c) <= 8 for c in chars):
        return None
    times = [*starts, *durations]
    if not all(isinstance(t, (int, float)) and not isinstance(t, bool) and 0 <= t < 1e7 for t in times):
        return None
    return Alignment(
        tuple(" " if c.isspace() else clean_text(c, 8) for c in chars),  # a newline reads as a space
        tuple(float(t) for t in starts),
        tuple(float(t) for t in durations),
    )


def decode_server_message(
    raw: str | bytes, output_format: AudioFormat | None, received_at_s: float
) -> ServerEvent:
    """Decode one server message.

    ``output_format`` is the format announced in the metadata (None before it:
    audio then is malformed). Raises :class:`MalformedMessage` for broken
    messages and :class:`UnsupportedFormat` for metadata this device cannot use.
    """
    if len(raw) > MAX_MESSAGE_BYTES:
        raise MalformedMessage("too_large", f"message of {len(raw)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        msg = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise MalformedMessage("bad_json", "message is not valid JSON") from None
    except RecursionError:  # the parser recurses per level: a hostile peer nests 100,000 deep
        raise MalformedMessage("too_deep", "message is nested too deeply to parse") from None
    if not isinstance(msg, dict):
        raise MalformedMessage("bad_json", "message is not a JSON object")
    kind = msg.get("type")
    if not isinstance(kind, str):
        raise MalformedMessage("missing_type", "message without a string 'type'")

    if kind == "audio":
        w = _wrapper(msg, "audio_event")
        event_id = _int(w, "event_id", kind)
        if output_format is None:
            raise MalformedMessage("audio_before_metadata", "'audio' before conversation_initiation_metadata")
        audio = decode_audio(w.get("audio_base_64"), output_format)
        return AgentAudio(audio, event_id, output_format, received_at_s, decode_alignment(w.get("alignment")))
    if kind == "ping":
        w = _wrapper(msg, "ping_event")
        return Ping(_optional_int(w.get("ping_ms")), _int(w, "event_id", kind))
    if kind == "interruption":
        w = _wrapper(msg, "interruption_event")
        return Interruption(_int(w, "event_id", kind))
    if kind == "conversation_initiation_metadata":
        w = _wrapper(msg, "conversation_initiation_metadata_event")
        conversation_id = _str(w, "conversation_id", kind)
        out_fmt = decode_format(w.get("agent_output_audio_format"), "agent output")
        in_fmt = decode_format(w.get("user_input_audio_format"), "user input")
        return Connected(conversation_id, out_fmt, in_fmt)
    if kind == "agent_response":
        w = _wrapper(msg, "agent_response_event")
        return AgentResponse(_text_field(w, "agent_response", kind))
    if kind == "agent_response_correction":
        w = _wrapper(msg, "agent_response_correction_event", "correction_event")
        corrected = w.get("corrected_agent_response", w.get("corrected_response"))
        if not isinstance(corrected, str):
            raise MalformedMessage("missing_field", f"{kind!r} message without the corrected response")
        original = w.get("original_agent_response", w.get("original_response", ""))
        original = clean_text(original, MAX_TEXT_CHARS) if isinstance(original, str) else ""
        return AgentResponseCorrection(clean_text(corrected, MAX_TEXT_CHARS), original)
    if kind == "agent_chat_response_part":
        w = _wrapper(msg, "text_response_part")
        return AgentResponsePart(_text_field(w, "text", kind, default=""), _str(w, "type", kind, default="delta"))
    if kind == "user_transcript":
        w = _wrapper(msg, "user_transcription_event")
        return UserTranscript(_text_field(w, "user_transcript", kind), False)
    if kind == "tentative_user_transcript":
        w = _wrapper(msg, "tentative_user_transcription_event")
        return UserTranscript(_text_field(w, "user_transcript", kind), True)
    if kind == "vad_score":
        w = _wrapper(msg, "vad_score_event")
        score = w.get("vad_score")
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            raise MalformedMessage("missing_field", "'vad_score' message: 'vad_score' is not a number")
        return VadScore(float(score))
    if kind == "client_tool_call":
        w = _wrapper(msg, "client_tool_call")
        params = w.get("parameters") or {}
        if not isinstance(params, Mapping):
            raise MalformedMessage("missing_field", "'client_tool_call' message: 'parameters' is not an object")
        return ToolCall(_str(w, "tool_name", kind), _str(w, "tool_call_id", kind), dict(params))
    if kind == "internal_tentative_agent_response":
        w = _wrapper(msg, "tentative_agent_response_internal_event")
        return TentativeAgentResponse(_text_field(w, "tentative_agent_response", kind))
    if kind in ("agent_tool_response", "agent_tool_response_full_payload"):
        w = _wrapper(msg, kind)
        is_error = w.get("is_error")
        return AgentToolResponse(
            _str(w, "tool_name", kind),
            _str(w, "tool_call_id", kind, default=""),
            _str(w, "tool_type", kind, default=""),
            is_error if isinstance(is_error, bool) else False,
        )
    if kind == "mcp_tool_call":
        w = _wrapper(msg, "mcp_tool_call")
        timeout = w.get("approval_timeout_secs")
        return McpToolCall(
            _str(w, "tool_call_id", kind),
            _str(w, "tool_name", kind),
            _str(w, "state", kind),
            _str(w, "service_id", kind, default=""),
            _optional_int(timeout),
            _str(w, "error_message", kind, default=""),
        )
    if kind == "rich_content":
        w = _wrapper(msg, "rich_content")
        return RichContent(
            _str(w, "rich_content_id", kind, default=""), _str(w, "component", kind, default="")
        )
    if kind == "error":
        ew = msg.get("error_event")
        w = ew if isinstance(ew, Mapping) else msg
        # Text fields only: rendering a hostile nested value could itself overflow the stack.
        message = next((v for v in (w.get("message"), w.get("reason")) if isinstance(v, str) and v), "")
        etype_keys = ("error_type", "type") if w is ew else ("error_type",)  # an old server's name for it
        etype = next((v for k in etype_keys if isinstance(v := w.get(k), str) and v), "")
        return ServerError(_optional_int(w.get("code")), clean_text(message), clean_text(etype))
    return UnknownEvent(clean_text(kind))


# -- encoding -----------------------------------------------------------------


def _dumps(msg: Mapping[str, Any]) -> str:
    return json.dumps(msg, separators=(",", ":"), ensure_ascii=False)


def _plain(value: Any) -> Any:
    """Frozen config values (MappingProxyType, tuples) → JSON-able data."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def encode_audio_chunk(pcm: bytes) -> str:
    return _dumps({"user_audio_chunk": base64.b64encode(pcm).decode("ascii")})


def initiation_message(
    *,
    prompt: str = "",
    first_message: str = "",
    language: str = "",
    voice_id: str = "",
    dynamic_variables: Mapping[str, Any] | None = None,
    custom_llm_extra_body: Mapping[str, Any] | None = None,
    user_id: str = "",
    version: str = "",
) -> dict[str, Any]:
    """The ``conversation_initiation_client_data`` message as a dict (empty overrides allowed)."""
    agent: dict[str, Any] = {}
    if prompt:
        agent["prompt"] = {"prompt": prompt}
    if first_message:
        agent["first_message"] = first_message
    if language:
        agent["language"] = language
    override: dict[str, Any] = {}
    if agent:
        override["agent"] = agent
    if voice_id:
        override["tts"] = {"voice_id": voice_id}
    msg: dict[str, Any] = {
        "type": "conversation_initiation_client_data",
        "conversation_config_override": override,
    }
    if custom_llm_extra_body:
        msg["custom_llm_extra_body"] = _plain(custom_llm_extra_body)
    if dynamic_variables:
        for name, value in dynamic_variables.items():
            if not isinstance(value, (str, int, float, bool)):
                raise ValueError(f"dynamic variable {name!r} must be a string, number or boolean")
        msg["dynamic_variables"] = dict(dynamic_variables)
    if user_id:
        msg["user_id"] = user_id
    # source_info (the document's SourceInfo): who is calling, so the service can tell kiosks apart.
    msg["source_info"] = {"source": SOURCE_NAME, **({"version": version} if version else {})}
    return msg


def dynamic_variables_for(
    kiosk_id: str, location: str, configured: Mapping[str, Any], hostname: str
) -> dict[str, Any]:
    """Built-ins (kiosk_id, default the hostname; location when set), then configured ones (they win)."""
    out: dict[str, Any] = {"kiosk_id": kiosk_id or hostname}
    if location:
        out["location"] = location
    out.update(configured)
    return out


def encode_initiation(msg: Mapping[str, Any]) -> str:
    return _dumps(msg)


def encode_pong(event_id: int) -> str:
    return _dumps({"type": "pong", "event_id": event_id})


def encode_tool_result(call_id: str, result: str, is_error: bool) -> str:
    return _dumps({"type": "client_tool_result", "tool_call_id": call_id, "result": result, "is_error": is_error})


def encode_mcp_approval(call_id: str, approved: bool) -> str:
    """``mcp_tool_approval_result``: the answer to an MCP tool call awaiting approval."""
    return _dumps({"type": "mcp_tool_approval_result", "tool_call_id": call_id, "is_approved": approved})


def _text(text: str, what: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{what} needs non-empty text")
    return text


def encode_contextual_update(text: str) -> str:
    return _dumps({"type": "contextual_update", "text": _text(text, "contextual_update")})


def encode_user_message(text: str) -> str:
    return _dumps({"type": "user_message", "text": _text(text, "user_message")})


def encode_user_activity() -> str:
    return _dumps({"type": "user_activity"})


def encode_feedback(event_id: int, like: bool) -> str:
    if isinstance(event_id, bool) or not isinstance(event_id, int) or event_id < 0:
        raise ValueError("feedback needs the event_id (a non-negative integer) of an agent response")
    return _dumps({"type": "feedback", "event_id": event_id, "score": "like" if like else "dislike"})


# -- interruption rule ----------------------------------------------------------


class InterruptionFilter:
    """After ``interruption`` N, audio with ``event_id < N`` is stale; ``>= N`` is the new reply.

    (The official Python SDK drops ``<= N`` and so loses replies that reuse the id.)
    """

    def __init__(self) -> None:
        self.floor_id: int | None = None
        self.dropped_chunks = 0

    def interrupt(self, event_id: int) -> None:
        if self.floor_id is None or event_id > self.floor_id:
            self.floor_id = event_id

    def admit(self, event_id: int) -> bool:
        if self.floor_id is not None and event_id < self.floor_id:
            self.dropped_chunks += 1
            return False
        return True

