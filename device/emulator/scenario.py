"""Scenarios: what the emulated agent is, says, and breaks (pure).

A scenario is a small TOML file (see ``examples/scenarios/``)::

    [agent]            # who the agent is and how it sounds
    [timing]           # turn-taking, delivery speed and the service's timeouts
    [strict]           # how picky the emulator is about what clients send
    [[turns]]          # one entry per user turn, in order
    [turns.tool]       # optional client tool call the reply waits for
    [[faults]]         # faults to inject, by kind

Every key is optional; unknown keys and wrong types are refused with the
key's name and the fix. :func:`describe_format` prints the reference.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from device.core.audioformat import SUPPORTED, AudioFormat, parse_format
from device.core.config import build_section
from device.core.errors import ConfigError, ProtocolError
from device.drivers.configfile import read_toml

OVERRIDABLE = ("prompt", "first_message", "language", "voice_id", "text_only", "client_events")
AfterLast = Literal["cycle", "repeat_last", "end_call"]
AuthRefusal = Literal["close", "http"]
FaultKind = Literal[
    # reply-level: injected while a reply streams
    "close",
    "drop",
    "malformed_json",
    "unknown_event",
    "bad_base64",
    "odd_length_audio",
    "oversized_frame",
    # connection-level
    "quota",
    "slow_metadata",
    "missing_metadata",
    "refuse_upgrade",
    "signed_url_error",
    # valid protocol events the agent may send (contract: AsyncAPI document), injected mid-reply
    "error_event",
    "agent_tool_response",
    "mcp_tool_call",
    "rich_content",
]
REPLY_FAULTS = (
    "close",
    "drop",
    "malformed_json",
    "unknown_event",
    "bad_base64",
    "odd_length_audio",
    "oversized_frame",
    "error_event",
    "agent_tool_response",
    "mcp_tool_call",
    "rich_content",
)

# The document's ErrorType enum with the close code its description gives each type
# (websocket_disconnect and unknown have none there: 1011, an unexpected end).
ERROR_TYPE_CODES: dict[str, int] = {
    "unknown": 1011,
    "invalid_message": 1008,
    "telephony_agent_error": 1008,
    "mcp_tool_error": 1008,
    "mcp_https_error": 1008,
    "value_error": 1008,
    "missing_fields": 1008,
    "override_error": 1008,
    "missing_dynamic_variable_transfer": 1008,
    "missing_dynamic_variable": 1008,
    "websocket_disconnect": 1011,
    "safety_violation": 1002,
    "llm_timeout": 1002,
    "transport_receive_timeout": 1002,
    "asyncio_timeout": 1002,
    "http_exception": 1002,
    "max_duration_exceeded": 1000,
    "llm_error": 1002,
    "custom_llm_error": 1002,
    "cascade_brain_error": 1002,
    "asr_transcription_error": 1002,
    "vad_error": 1002,
    "turn_probability_error": 1002,
    "tts_cascade_error": 1002,
    "redis_timeout_error": 1002,
    "unknown_websocket_crash": 1011,
}
ERROR_CLOSE_CODES = (1000, 1002, 1008, 1011)  # the document's WebSocketCloseCode enum
MCP_STATES = ("loading", "awaiting_approval", "success", "failure")

# The document's ClientEvent enum: server → client event types an agent can enable.
CLIENT_EVENTS = (
    "audio",
    "agent_response",
    "agent_response_correction",
    "agent_chat_response_part",
    "agent_reasoning_response_part",
    "interruption",
    "user_transcript",
    "tentative_user_transcript",
    "conversation_initiation_metadata",
    "client_tool_call",
    "rich_content",
    "agent_tool_request",
    "agent_tool_response",
    "agent_tool_response_full_payload",
    "mcp_tool_call",
    "mcp_connection_status",
    "vad_score",
    "ping",
    "context_usage",
    "asr_initiation_metadata",
    "guardrail_triggered",
    "internal_turn_probability",
    "internal_tentative_agent_response",
    "agent_typing",
    "external_agent_connected",
    "external_agent_disconnected",
)
# What a real agent sends when its client_events list is unset (the document's default).
DEFAULT_CLIENT_EVENTS = (
    "audio",
    "interruption",
    "agent_response",
    "user_transcript",
    "tentative_user_transcript",
    "conversation_initiation_metadata",
    "ping",
)

# Which parameters each fault kind takes (besides ``kind``).
_REPLY_WHERE = ("conversation", "reply", "after_chunks")
FAULT_PARAMS: dict[str, tuple[str, ...]] = {
    "close": (*_REPLY_WHERE, "code", "reason"),
    "drop": _REPLY_WHERE,
    "malformed_json": _REPLY_WHERE,
    "unknown_event": (*_REPLY_WHERE, "event_type"),
    "bad_base64": _REPLY_WHERE,
    "odd_length_audio": _REPLY_WHERE,
    "oversized_frame": (*_REPLY_WHERE, "size_bytes"),
    "quota": ("conversation",),
    "slow_metadata": ("conversation", "delay_s"),
    "missing_metadata": ("conversation",),
    "refuse_upgrade": ("status", "count"),
    "signed_url_error": ("status", "retry_after_s", "count"),
    "error_event": (*_REPLY_WHERE, "error_type", "code", "message", "then_close"),
    "agent_tool_response": (*_REPLY_WHERE, "tool_name", "tool_type", "is_error", "delay_s"),
    "mcp_tool_call": (*_REPLY_WHERE, "tool_name", "state", "approval_timeout_s"),
    "rich_content": (*_REPLY_WHERE, "component"),
}
FAULT_HELP: dict[str, str] = {
    "close": "close the socket mid-reply with `code` (1000, 1011, …) and `reason`",
    "drop": "drop the TCP connection mid-reply without a close frame (RST)",
    "malformed_json": "send a text frame that is not valid JSON mid-reply",
    "unknown_event": "send an event of an unknown `event_type` mid-reply",
    "bad_base64": "send an audio event whose audio_base_64 is not base64",
    "odd_length_audio": "send an audio event with an odd number of bytes",
    "oversized_frame": "send an audio event padded (alignment data) to `size_bytes`",
    "quota": 'close 1002 "This request exceeds your quota limit." after the initiation',
    "slow_metadata": "send conversation_initiation_metadata `delay_s` late",
    "missing_metadata": "never send conversation_initiation_metadata",
    "refuse_upgrade": "answer the WebSocket upgrade with HTTP `status` (the first `count` times; 0: always)",
    "signed_url_error": "answer get-signed-url with HTTP `status` (+ Retry-After for 429), first `count` times",
    "error_event": "send an `error` event (`error_type`; `code` 0 = the document's code for that type) "
    "and, with `then_close`, close with that code and `message`",
    "agent_tool_response": "send agent_tool_response for `tool_name` (`tool_type`, `is_error`); for end_call "
    "close 1000 `delay_s` later unless the client closes first",
    "mcp_tool_call": "send mcp_tool_call in `state`; awaiting_approval waits up to `approval_timeout_s` for "
    "mcp_tool_approval_result, then sends success (approved) or failure (denied / timed out)",
    "rich_content": "send a rich_content event (`component`, props from the reply)",
}

QUOTA_REASON = "This request exceeds your quota limit."


def _m(help: str, **meta: Any) -> dict[str, Any]:
    """Field metadata: its documentation and optional bounds (read by build_section)."""
    return {"help": help, **meta}


@dataclass(frozen=True)
class AgentSettings:
    """The agent as configured in the (emulated) dashboard."""

    agent_id: str = field(default="agent_emulator", metadata=_m("agent id clients connect with"))
    public: bool = field(
        default=False, metadata=_m("true: connect with the agent id alone; false: a signed URL is required")
    )
    output_format: str = field(default="pcm_16000", metadata=_m("agent_output_audio_format: " + ", ".join(SUPPORTED)))
    input_format: str = field(default="pcm_16000", metadata=_m("user_input_audio_format: " + ", ".join(SUPPORTED)))
    first_message: str = field(
        default="Hello! I am the emulated agent. How can I help you today?",
        metadata=_m(
            "spoken when the conversation starts (empty: wait for the user)",
        ),
    )
    language: str = field(default="en", metadata=_m("the agent's language"))
    voice: str = field(default="en-us", metadata=_m("espeak-ng voice used to speak"))
    words_per_minute: int = field(default=175, metadata=_m("speaking rate", min=80, max=450))
    allowed_overrides: tuple[str, ...] = field(
        default=("first_message", "language"),
        metadata=_m(
            "conversation_config_override fields the agent accepts: " + ", ".join(OVERRIDABLE),
        ),
    )
    reprompt: str = field(
        default="Are you still there?", metadata=_m("said when the user stays silent for timing.turn_timeout_s")
    )
    after_last_turn: AfterLast = field(
        default="cycle", metadata=_m("when the turns run out: cycle (start over), repeat_last, end_call")
    )
    end_call_reason: str = field(
        default="Agent ended the conversation", metadata=_m("close reason when the agent hangs up")
    )
    reuse_event_id_after_interruption: bool = field(
        default=True, metadata=_m("the reply after an interruption reuses the interrupted event_id (the service does)")
    )
    client_events: tuple[str, ...] = field(
        default=DEFAULT_CLIENT_EVENTS,
        metadata=_m(
            "event types the agent sends (its client_events; default as a real agent's: "
            + ", ".join(DEFAULT_CLIENT_EVENTS)
            + "). Opt in to agent_response_correction, vad_score, agent_chat_response_part, …; "
            "audio, interruption, ping, the metadata, error and client_tool_call (when a turn calls a tool) "
            "are always sent",
        ),
    )
    alignment: bool = field(
        default=False,
        metadata=_m("audio events carry alignment (chars, char_start_times_ms, char_durations_ms), as the service's"),
    )
    tool_timeout_reply: str = field(
        default="Sorry, the {name} tool did not answer.", metadata=_m("reply when a tool result does not come ({name})")
    )
    tool_error_reply: str = field(
        default="Sorry, {name} failed: {result}",
        metadata=_m("reply when a tool result has is_error ({name}, {result})"),
    )
    auth_refusal: AuthRefusal = field(
        default="close",
        metadata=_m("how a bad signature / unknown agent is refused: close (1008 after upgrade) or http (403/404)"),
    )

    def __post_init__(self) -> None:
        for key in ("output_format", "input_format"):
            try:
                parse_format(getattr(self, key))
            except ProtocolError:
                raise ConfigError(
                    f"{getattr(self, key)!r} is not a protocol audio format; use one of {', '.join(SUPPORTED)}",
                    f"agent.{key}",
                ) from None
        for name in self.allowed_overrides:
            if name not in OVERRIDABLE:
                raise ConfigError(
                    f"{name!r} cannot be overridden; choose from {', '.join(OVERRIDABLE)}",
                    "agent.allowed_overrides",
                )
        for name in self.client_events:
            if name not in CLIENT_EVENTS:
                close = difflib.get_close_matches(name, CLIENT_EVENTS, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(
                    f"{name!r} is not a client event type{hint}; choose from {', '.join(CLIENT_EVENTS)}",
                    "agent.client_events",
                )
        if not self.agent_id or any(c.isspace() or c in "&?#/=" for c in self.agent_id):
            raise ConfigError("write a non-empty id without spaces or URL characters", "agent.agent_id")

    @property
    def output(self) -> AudioFormat:
        return parse_format(self.output_format)

    @property
    def input(self) -> AudioFormat:
        return parse_format(self.input_format)


@dataclass(frozen=True)
class Timing:
    """Turn-taking, delivery speed and the service's timeouts (0 disables a timeout)."""

    speed: float = field(
        default=4.0, metadata=_m("agent audio is sent this many times faster than real time", min=0.5, max=1000)
    )
    chunk_min_ms: int = field(default=60, metadata=_m("shortest audio chunk", min=10, max=5000))
    chunk_max_ms: int = field(default=500, metadata=_m("longest audio chunk", min=10, max=10000))
    response_delay_ms: int = field(
        default=300, metadata=_m("thinking time between the end of a user turn and the reply", min=0, max=60000)
    )
    first_message_delay_ms: int = field(
        default=0,
        metadata=_m("time between the metadata and the first message (the service's synthesis time)", min=0, max=60000),
    )
    end_of_turn_silence_ms: int = field(default=700, metadata=_m("silence that ends a user turn", min=30, max=10000))
    speech_start_ms: int = field(
        default=120, metadata=_m("voiced audio needed to decide the user started speaking", min=30, max=2000)
    )
    min_speech_ms: int = field(default=200, metadata=_m("shorter voiced bursts are not a turn", min=0, max=10000))
    vad_aggressiveness: int = field(default=2, metadata=_m("webrtcvad mode 0 (lenient) … 3 (strict)", min=0, max=3))
    vad_score_interval_ms: int = field(
        default=250, metadata=_m("at most one vad_score event this often", min=10, max=60000)
    )
    tentative_after_ms: int = field(
        default=800, metadata=_m("speech before a tentative_user_transcript is sent", min=0, max=60000)
    )
    ping_interval_s: float = field(default=5.0, metadata=_m("ping every this often (0: never)", min=0, max=3600))
    pong_timeout_s: float = field(
        default=5.0, metadata=_m("a ping unanswered this long is a violation", min=0.05, max=3600)
    )
    init_timeout_s: float = field(
        default=10.0, metadata=_m("wait this long for conversation_initiation_client_data", min=0.05, max=3600)
    )
    inactivity_timeout_s: float = field(
        default=60.0, metadata=_m("no user audio this long: error event + close 1002 (0: off)", min=0, max=86400)
    )
    max_duration_s: float = field(
        default=600.0, metadata=_m("conversation length limit, then close 1000 (0: off)", min=0, max=86400)
    )
    turn_timeout_s: float = field(
        default=7.0, metadata=_m("user silence after a reply before the agent re-prompts (0: off)", min=0, max=3600)
    )
    tool_timeout_s: float = field(
        default=5.0, metadata=_m("wait this long for a client_tool_result", min=0.01, max=3600)
    )
    signed_url_ttl_s: float = field(
        default=900.0, metadata=_m("a signed URL must be opened within this", min=0.01, max=86400)
    )

    def __post_init__(self) -> None:
        if self.chunk_min_ms > self.chunk_max_ms:
            raise ConfigError("must not exceed timing.chunk_max_ms", "timing.chunk_min_ms")


@dataclass(frozen=True)
class Strictness:
    """How picky the emulator is about what clients send."""

    audio_rate_factor: float = field(
        default=1.5,
        metadata=_m(
            "user audio arriving faster than this × real time (after the burst) is a violation (0: off)",
            min=0,
            max=1000,
        ),
    )
    audio_burst_s: float = field(
        default=5.0, metadata=_m("audio a client may send at once (held while connecting)", min=0, max=600)
    )
    unknown_initiation_fields: bool = field(
        default=True, metadata=_m("unknown top-level fields in the initiation are violations")
    )


@dataclass(frozen=True)
class ToolCall:
    """A client tool the agent calls before replying; the reply may use ``{result}``."""

    name: str = field(default="", metadata=_m("tool_name sent in client_tool_call"))
    parameters: Mapping[str, Any] = field(
        default_factory=lambda: types.MappingProxyType({}),
        metadata={"help": "parameters sent with the call (a table)"},
    )
    error_reply: str = field(
        default="", metadata=_m("reply when the result has is_error (default: agent.tool_error_reply)")
    )

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("a tool call needs a name", "turns.tool.name")
        if not isinstance(self.parameters, types.MappingProxyType):
            object.__setattr__(self, "parameters", types.MappingProxyType(dict(self.parameters)))


@dataclass(frozen=True)
class Turn:
    """One user turn and the agent's answer."""

    transcript: str = field(
        default="", metadata=_m("user_transcript sent for this turn (empty: a description of the speech)")
    )
    reply: str = field(
        default="", metadata=_m("the agent's answer; {result} is the tool result when there is a tool call")
    )
    tool: ToolCall | None = field(default=None, metadata=_m("client tool called before replying"))
    end_call: bool = field(default=False, metadata=_m("the agent hangs up (close 1000) after this reply has played"))

    def __post_init__(self) -> None:
        if not self.reply.strip():
            raise ConfigError("every turn needs a non-empty reply", "turns.reply")


@dataclass(frozen=True)
class Fault:
    """A fault to inject (see FAULT_HELP for the kinds)."""

    kind: FaultKind = field(default="close", metadata=_m("what goes wrong"))
    conversation: int = field(
        default=-1, metadata=_m("only in this conversation (0 = the first since start; -1 = all)", min=-1)
    )
    reply: int = field(default=0, metadata=_m("agent reply it hits (0 = the first message)", min=0))
    after_chunks: int = field(default=1, metadata=_m("audio chunks of that reply sent before the fault", min=0))
    code: int = field(
        default=0,
        metadata=_m(
            "close / error code (0: the kind's default: 1011 for close, the document's for error_event)",
            min=0,
            max=4999,
        ),
    )
    reason: str = field(default="", metadata=_m("close reason"))
    error_type: str = field(default="unknown", metadata=_m("error_event: the document's error_type"))
    message: str = field(default="", metadata=_m("error_event: the human-readable message (default: per type)"))
    then_close: bool = field(default=True, metadata=_m("error_event: close with the code after the event"))
    tool_name: str = field(default="end_call", metadata=_m("agent_tool_response / mcp_tool_call: the tool"))
    tool_type: str = field(default="system", metadata=_m("agent_tool_response: client, system, webhook or mcp"))
    is_error: bool = field(default=False, metadata=_m("agent_tool_response: the tool failed"))
    state: str = field(default="awaiting_approval", metadata=_m("mcp_tool_call: " + ", ".join(MCP_STATES)))
    approval_timeout_s: int = field(
        default=300,
        metadata=_m("mcp_tool_call: approval_timeout_secs (the emulator waits this long)", min=1, max=86400),
    )
    component: str = field(default="item_card", metadata=_m("rich_content: the component to display"))
    event_type: str = field(default="context_usage", metadata=_m("type of the unknown event"))
    size_bytes: int = field(
        default=2 * 1024 * 1024, metadata=_m("size of the oversized frame", min=1024, max=64 * 1024 * 1024)
    )
    delay_s: float = field(default=2.0, metadata=_m("metadata delay", min=0, max=3600))
    status: int = field(default=503, metadata=_m("HTTP status", min=400, max=599))
    retry_after_s: float = field(default=2.0, metadata=_m("Retry-After sent with 429/503", min=0, max=86400))
    count: int = field(
        default=0, metadata=_m("fail the first `count` requests, then succeed (0: every request)", min=0)
    )

    def __post_init__(self) -> None:
        if self.code and self.code < 1000:
            raise ConfigError("use a WebSocket close code (1000…4999), or 0 for the kind's default", "faults.code")
        if self.kind == "error_event":
            if self.error_type not in ERROR_TYPE_CODES:
                raise ConfigError(
                    f"{self.error_type!r} is not an error_type of the document; choose from "
                    + ", ".join(ERROR_TYPE_CODES),
                    "faults.error_type",
                )
            if self.code and self.code not in ERROR_CLOSE_CODES:
                raise ConfigError(
                    f"the document's error codes are {', '.join(map(str, ERROR_CLOSE_CODES))} (0: per type)",
                    "faults.code",
                )
        if self.state not in MCP_STATES:
            raise ConfigError(f"choose from {', '.join(MCP_STATES)}", "faults.state")

    @property
    def close_code(self) -> int:
        """The code this fault closes or reports with, defaults applied."""
        if self.code:
            return self.code
        return ERROR_TYPE_CODES[self.error_type] if self.kind == "error_event" else 1011

    def applies_to(self, conversation_index: int) -> bool:
        return self.conversation in (-1, conversation_index)


DEFAULT_TURNS = (
    Turn(
        transcript="What can you do?",
        reply="I can answer questions about this exhibition, and I can check how the kiosk is doing.",
    ),
    Turn(
        transcript="How is the kiosk doing?",
        reply="Let me check. The kiosk says: {result}.",
        tool=ToolCall(name="device_status"),
    ),
    Turn(transcript="Thank you, goodbye.", reply="You are welcome. Goodbye!", end_call=True),
)


@dataclass(frozen=True)
class Scenario:
    agent: AgentSettings = field(default_factory=AgentSettings, metadata=_m("the agent"))
    timing: Timing = field(default_factory=Timing, metadata=_m("turn-taking and timeouts"))
    strict: Strictness = field(default_factory=Strictness, metadata=_m("validation of what clients send"))
    turns: tuple[Turn, ...] = field(default=DEFAULT_TURNS, metadata=_m("user turns and answers, in order"))
    faults: tuple[Fault, ...] = field(default=(), metadata=_m("faults to inject"))
    name: str = field(default="default", metadata=_m("shown in logs and recordings"))

    def with_changes(self, **sections: Any) -> Scenario:
        """A copy with some keys of sections replaced, e.g. ``timing={"speed": 50}``, ``turns=(…)``."""
        changes: dict[str, Any] = {}
        for section, values in sections.items():
            current = getattr(self, section)
            if section in ("agent", "timing", "strict"):
                merged = {**dataclasses.asdict(current), **values}
                changes[section] = build_section(type(current), merged, section)
            else:  # turns, faults, name: replaced whole
                changes[section] = values
        return dataclasses.replace(self, **changes)


def default_scenario() -> Scenario:
    """The built-in demo: a greeting, an answer, a tool call, and a goodbye that hangs up."""
    return Scenario()


def _fault_from(mapping: Mapping[str, Any], key: str) -> Fault:
    if not isinstance(mapping, Mapping):
        raise ConfigError("write each fault as a table with a kind", key)
    kind = mapping.get("kind")
    if kind not in FAULT_PARAMS:
        close = difflib.get_close_matches(str(kind), list(FAULT_PARAMS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown fault kind {kind!r}{hint}; choose from {', '.join(FAULT_PARAMS)}", f"{key}.kind")
    allowed = FAULT_PARAMS[str(kind)]
    for name in mapping:
        if name != "kind" and name not in allowed:
            raise ConfigError(
                f"fault {kind!r} takes no {name!r}; its keys are: {', '.join(allowed) or 'none'}", f"{key}.{name}"
            )
    try:
        fault: Fault = build_section(Fault, mapping, key)
    except ConfigError as e:
        # Checks inside Fault do not know the index: add it.
        if e.key and e.key.startswith("faults."):
            raise ConfigError(str(e)[len(e.key) + 2 :], key + e.key[6:]) from None
        raise
    return fault


def scenario_from_mapping(data: Mapping[str, Any], name: str = "scenario") -> Scenario:
    """Build and validate a scenario from parsed TOML."""
    known = ("agent", "timing", "strict", "turns", "faults", "name")
    for section in data:
        if section not in known:
            close = difflib.get_close_matches(section, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"unknown section; {hint}sections are: {', '.join(known)}", section)
    kwargs: dict[str, Any] = {"name": str(data.get("name", name))}
    for section, cls in (("agent", AgentSettings), ("timing", Timing), ("strict", Strictness)):
        if section in data:
            if not isinstance(data[section], Mapping):
                raise ConfigError("write it as a [table]", section)
            kwargs[section] = build_section(cls, data[section], section)
    if "turns" in data:
        turns = data["turns"]
        if not isinstance(turns, list) or not turns:
            raise ConfigError("write at least one [[turns]] table", "turns")
        built = []
        for i, t in enumerate(turns):
            if not isinstance(t, Mapping):
                raise ConfigError("write each turn as a [[turns]] table", f"turns[{i}]")
            try:
                built.append(build_section(Turn, t, f"turns[{i}]"))
            except ConfigError as e:
                # Checks inside Turn/ToolCall do not know the index: add it.
                if e.key and e.key.startswith("turns."):
                    raise ConfigError(str(e)[len(e.key) + 2 :], f"turns[{i}]" + e.key[5:]) from None
                raise
        kwargs["turns"] = tuple(built)
    if "faults" in data:
        faults = data["faults"]
        if not isinstance(faults, list):
            raise ConfigError("write faults as [[faults]] tables", "faults")
        kwargs["faults"] = tuple(_fault_from(f, f"faults[{i}]") for i, f in enumerate(faults))
    return Scenario(**kwargs)


def load_scenario(path: Path | str) -> Scenario:
    """Read a scenario TOML file; errors name the file, the key and the fix."""
    p = Path(path)
    data = read_toml(p, "scenario file", "see examples/scenarios/ for examples")
    try:
        return scenario_from_mapping(data, name=p.stem)
    except ConfigError as e:
        raise ConfigError(f"scenario file {p}: {e}") from None


def parse_fault_spec(spec: str) -> Fault:
    """``"close:reply=1,code=1011"`` → Fault (the command line's --fault)."""
    kind, _, rest = spec.partition(":")
    mapping: dict[str, Any] = {"kind": kind.strip()}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        name, eq, value = part.partition("=")
        if not eq:
            raise ConfigError(f"write KEY=VALUE, not {part!r} (e.g. close:reply=1,code=1011)", "--fault")
        try:
            mapping[name.strip()] = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            mapping[name.strip()] = value.strip()
    return _fault_from(mapping, f"--fault {kind}")


def describe_format() -> str:
    """The scenario format as text: every section, key, default and meaning."""
    lines = [__doc__.strip().splitlines()[0], ""]
    for section, cls in (
        ("agent", AgentSettings),
        ("timing", Timing),
        ("strict", Strictness),
        ("[turns]", Turn),
        ("turns.tool", ToolCall),
    ):
        lines.append(f"[{section}]")
        for f in dataclasses.fields(cls):
            default = f.default
            if default is dataclasses.MISSING:
                shown = " = {}"
            elif default is None or dataclasses.is_dataclass(default):
                shown = ""
            else:
                shown = f" = {_toml(default)}"
            lines.append(f"  {f.name}{shown}    # {f.metadata.get('help', '')}")
        lines.append("")
    lines.append("[[faults]]  kind = …, plus the keys that kind takes:")
    for kind, params in FAULT_PARAMS.items():
        lines.append(f"  {kind:<17} ({', '.join(params)}): {FAULT_HELP[kind]}")
    lines.append("  keys and defaults:")
    for f in dataclasses.fields(Fault):
        if f.name != "kind":
            lines.append(f"    {f.name} = {_toml(f.default)}    # {f.metadata.get('help', '')}")
    return "\n".join(lines)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)
