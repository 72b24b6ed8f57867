"""One conversation with the agent, without I/O: messages in, typed events and messages to send out.

The transport (:mod:`device.drivers.session`, the WebSocket) feeds an
:class:`AgentConversation` what happens — the socket opened (:meth:`~AgentConversation.opened`),
a whole message arrived, as received, with its receive time (:meth:`~AgentConversation.receive`),
a client tool call answered (:meth:`~AgentConversation.tool_finished`), time passed
(:meth:`~AgentConversation.tick`) — and performs the :data:`Output` list each returns, in order.
How the socket ended (:meth:`~AgentConversation.service_closed`,
:meth:`~AgentConversation.connection_lost`) becomes a :class:`~device.core.protocol.SessionEnded`.

What it decides: pings are answered first (before the event is published);
MCP tool calls awaiting approval are answered at once by the policy
(``tools.mcp_approve``), once per call; the agent's ``end_call`` tool ends the
conversation; client tool calls are handed out (:class:`RunTool`) and each
gets exactly one ``client_tool_result``; stale audio is dropped by the
interruption rule; malformed messages and unknown types are counted (a
bounded table) and what the service can make it log is rate-limited.

Not thread-safe: the transport serialises the calls. Times come in as arguments.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from device.core.audioformat import AudioFormat
from device.core.config import AgentConfig
from device.core.protocol import (
    AgentAudio,
    AgentResponsePart,
    AgentToolResponse,
    Connected,
    Interruption,
    InterruptionFilter,
    MalformedMessage,
    McpApproval,
    McpToolCall,
    Outcome,
    Ping,
    RichContent,
    ServerError,
    SessionEnded,
    SessionEvent,
    ToolCall,
    ToolCallFinished,
    ToolCallStarted,
    UnknownEvent,
    UnsupportedFormat,
    classify_end,
    decode_server_message,
    dynamic_variables_for,
    encode_initiation,
    encode_mcp_approval,
    encode_pong,
    encode_tool_result,
    initiation_message,
)
from device.core.ratelog import RateLimitedLog

# What the service can make a conversation log is rate-limited: at most one line per kind of line (a kind of
# malformed message, the service's error events, ...) in this interval, and SERVER_LOG_LINES in all.
SERVER_LOG_INTERVAL_S = 30.0
SERVER_LOG_LINES = 50
# Unknown message types counted by name (and logged once each); further ones are counted as "other".
MAX_UNKNOWN_TYPES = 32
# MCP tool call ids remembered as answered (a repeated delivery is not answered twice).
MAX_MCP_ANSWERED = 256
# Counters present in the stats from the start (the others appear when they first count).
ALWAYS_COUNTED = (
    "agent_audio_chunks",
    "messages_received",
    "unknown_events",
    "malformed_messages",
    "pings",
    "tool_calls",
)


# -- what the transport does ---------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    """Send ``text`` now, ahead of queued audio; ``tool`` names the tool whose result it carries."""

    text: str
    tool: str = ""


@dataclass(frozen=True)
class Emit:
    """Publish ``event`` (to the controller)."""

    event: SessionEvent


@dataclass(frozen=True)
class RunTool:
    """Publish :attr:`started` and run the client tool call; its result comes back through ``tool_finished``."""

    call: ToolCall

    @property
    def started(self) -> ToolCallStarted:
        return ToolCallStarted(self.call.name, self.call.call_id)


@dataclass(frozen=True)
class StartSending:
    """The conversation runs (its Connected was published): send the user's audio in ``input_format``."""

    input_format: AudioFormat


@dataclass(frozen=True)
class End:
    """The conversation is over: close the socket (``ended.close_code``, ``close_reason``) and stop reading."""

    ended: SessionEnded
    close_reason: str = ""


Output = Send | Emit | RunTool | StartSending | End


class AgentConversation:
    """The device's side of one conversation. See the module docstring."""

    def __init__(
        self,
        agent: AgentConfig,
        *,
        approves: Callable[[str], bool],
        hostname: str,
        version: str = "",
        name: str = "session",
        logger: logging.Logger | None = None,
    ) -> None:
        """``approves(tool_name)``: the MCP approval policy; ``logger``: where its lines go (the transport's)."""
        self.agent = agent
        self.name = name
        self._approves = approves
        self._hostname = hostname
        self._version = version
        self._log = logger or logging.getLogger(__name__)
        self._server_log = RateLimitedLog(self._log, SERVER_LOG_INTERVAL_S, max_lines=SERVER_LOG_LINES)
        self._filter = InterruptionFilter()
        self._counts: collections.Counter[str] = collections.Counter()
        self._unknown_types: set[str] = set()  # at most MAX_UNKNOWN_TYPES: counted by name, the rest as "other"
        self._mcp_answered: collections.OrderedDict[str, None] = collections.OrderedDict()  # the latest answered
        self._open_calls: collections.Counter[str] = collections.Counter()  # client tool calls owed a result
        self._metadata_deadline_s: float | None = None
        self.connected = False
        self.conversation_id: str | None = None
        self.output_format: AudioFormat | None = None
        self.input_format: AudioFormat | None = None
        self.ping_ms: int | None = None
        self.server_error: ServerError | None = None  # the service's last error event: why it closes
        self._handlers: dict[type, Callable[[Any, float], list[Output]]] = {
            Ping: self._on_ping,
            AgentAudio: self._on_audio,
            Interruption: self._on_interruption,
            ToolCall: self._on_tool_call,
            Connected: self._on_connected,
            UnknownEvent: self._on_unknown,
            AgentToolResponse: self._on_agent_tool_response,
            McpToolCall: self._on_mcp_tool_call,
            RichContent: self._on_rich_content,
            AgentResponsePart: self._on_text_part,
            ServerError: self._on_server_error,
        }

    # -- inputs ---------------------------------------------------------------------------------
    def opened(self, now_s: float) -> list[Output]:
        """The socket is open: send the initiation; the metadata is due within agent.connect_timeout_s."""
        self._metadata_deadline_s = now_s + self.agent.connect_timeout_s
        a = self.agent
        initiation = initiation_message(
            prompt=a.prompt,
            first_message=a.first_message,
            language=a.language,
            voice_id=a.voice_id,
            dynamic_variables=dynamic_variables_for(a.kiosk_id, a.location, a.dynamic_variables, self._hostname),
            custom_llm_extra_body=a.custom_llm_extra_body,
            user_id=a.user_id,
            version=self._version,
        )
        return [Send(encode_initiation(initiation))]

    def receive(self, message: str | bytes, now_s: float) -> list[Output]:
        """One whole message from the service (a text frame's payload), received at ``now_s``."""
        self._count("messages_received")
        try:
            event = decode_server_message(message, self.output_format, now_s)
        except UnsupportedFormat as e:
            return [End(SessionEnded(Outcome.PROTOCOL, str(e), 1003), "unsupported audio format")]
        except MalformedMessage as e:
            self._count("malformed_messages")
            self._count(f"malformed_{e.kind}")
            self._server_log.warning(
                f"malformed:{e.kind}",
                "%s: ignored a malformed message from the service: %s",
                self.name,
                e,
                now_s=now_s,
            )
            return []
        handler = self._handlers.get(type(event), self._publish)
        return handler(event, now_s)

    def tool_finished(self, name: str, call_id: str, result: str, is_error: bool) -> list[Output]:
        """A client tool call's result: sent to the service (once per call) and published."""
        if self._open_calls[call_id] <= 0:  # the service takes one result per call: a second would contradict it
            self._log.warning("%s: a second result of tool call %s (%s) was not sent", self.name, call_id, name)
            return []
        self._open_calls[call_id] -= 1
        if not self._open_calls[call_id]:
            del self._open_calls[call_id]
        return [
            Send(encode_tool_result(call_id, result, is_error), tool=name),
            Emit(ToolCallFinished(name, call_id, is_error)),
        ]

    def tick(self, now_s: float) -> list[Output]:
        """Time passed: the conversation ends when the service never started it."""
        deadline_s = self._metadata_deadline_s
        if self.connected or deadline_s is None or now_s <= deadline_s:
            return []
        self._metadata_deadline_s = None
        detail = (
            "the service accepted the connection but did not start the conversation within "
            f"{self.agent.connect_timeout_s:g} s"
        )
        return [End(SessionEnded(Outcome.SERVER_ERROR, detail, 1000))]

    def service_closed(self, code: int | None, reason: str) -> SessionEnded:
        """The service's close frame (``code`` None: it had no payload) → how the conversation ended."""
        outcome, detail = classify_end(code if code is not None else 1005, reason, self.server_error)
        if code is None and self.server_error is None:
            outcome, detail = Outcome.NORMAL, "the service ended the conversation (no close code)"
        return SessionEnded(outcome, detail, code)

    def connection_lost(self, kind: str) -> SessionEnded:
        """The connection was ``kind`` ("lost", "reset") without a close frame."""
        if self.server_error is not None:  # the service said why before the line dropped
            return SessionEnded(*classify_end(None, "", self.server_error))
        return SessionEnded(Outcome.NETWORK, f"the connection to the service was {kind} without a close frame")

    # -- what it knows --------------------------------------------------------------------------
    @property
    def open_tool_calls(self) -> int:
        """Client tool calls handed out and not answered yet."""
        return sum(self._open_calls.values())

    def stats(self) -> dict[str, int | float]:
        """Its counters (a copy), the audio the interruption rule dropped, the last ping estimate."""
        out: dict[str, int | float] = dict.fromkeys(ALWAYS_COUNTED, 0)
        out.update(self._counts)
        out["agent_audio_dropped"] = self._filter.dropped_chunks
        if self.ping_ms is not None:
            out["ping_ms"] = self.ping_ms
        return out

    def flush_log(self) -> None:
        """Report the log lines the rate limit still holds (the conversation ended)."""
        self._server_log.flush(self.name)

    # -- the service's events, by type ----------------------------------------------------------
    def _count(self, key: str) -> int:
        self._counts[key] += 1
        return self._counts[key]

    def _publish(self, event: SessionEvent, now_s: float) -> list[Output]:
        return [Emit(event)]

    def _on_ping(self, event: Ping, now_s: float) -> list[Output]:
        self._count("pings")
        if event.ping_ms is not None:
            self.ping_ms = event.ping_ms
        return [Send(encode_pong(event.event_id)), Emit(event)]  # the pong first, before anything else

    def _on_audio(self, event: AgentAudio, now_s: float) -> list[Output]:
        if not self._filter.admit(event.event_id):
            self._log.debug("%s: dropped stale audio of event %d", self.name, event.event_id)
            return []
        self._count("agent_audio_chunks")
        return [Emit(event)]

    def _on_interruption(self, event: Interruption, now_s: float) -> list[Output]:
        self._filter.interrupt(event.event_id)
        self._count("interruptions")
        return [Emit(event)]

    def _on_tool_call(self, call: ToolCall, now_s: float) -> list[Output]:
        self._count("tool_calls")
        self._open_calls[call.call_id] += 1
        return [RunTool(call)]

    def _on_connected(self, event: Connected, now_s: float) -> list[Output]:
        if self.connected:
            self._server_log.warning(
                "second_metadata", "%s: a second conversation_initiation_metadata was ignored", self.name, now_s=now_s
            )
            return []
        self.connected = True
        self.conversation_id = event.conversation_id
        self.output_format = event.output_format
        self.input_format = event.input_format
        self._log.info(
            "%s: conversation %s started (agent speaks %s, hears %s)",
            self.name,
            event.conversation_id,
            event.output_format.name,
            event.input_format.name,
        )
        return [Emit(event), StartSending(event.input_format)]

    def _on_unknown(self, event: UnknownEvent, now_s: float) -> list[Output]:
        """Count it (a bounded table, so a flood of new types costs no memory) and log each new type once."""
        self._count("unknown_events")
        if event.type in self._unknown_types or len(self._unknown_types) < MAX_UNKNOWN_TYPES:
            if self._count(f"unknown:{event.type}") == 1:
                self._unknown_types.add(event.type)
                self._server_log.info(
                    f"unknown:{event.type}",
                    "%s: ignoring unknown event type %r from the service",
                    self.name,
                    event.type,
                    now_s=now_s,
                )
            return []
        self._count("unknown:other")
        self._server_log.info(
            "unknown:other",
            "%s: ignoring unknown event types from the service; over %d types, they are counted as unknown:other",
            self.name,
            MAX_UNKNOWN_TYPES,
            now_s=now_s,
        )
        return []

    def _on_agent_tool_response(self, event: AgentToolResponse, now_s: float) -> list[Output]:
        self._count("agent_tool_responses")
        if not event.ends_call:
            return []
        # The agent hung up: end now, cleanly (close 1000), as the JS client does.
        detail = f"the agent ended the conversation ({event.tool_name} tool)"
        return [End(SessionEnded(Outcome.AGENT_ENDED, detail, 1000))]

    def _on_mcp_tool_call(self, call: McpToolCall, now_s: float) -> list[Output]:
        """Answer an MCP tool call awaiting approval at once: tools.mcp_approve lists the approved ones."""
        self._count("mcp_tool_calls")
        if call.state != "awaiting_approval":
            if call.state == "failure":
                self._server_log.info(
                    f"mcp_failure:{call.tool_name}",
                    "%s: MCP tool %r failed on the service: %s",
                    self.name,
                    call.tool_name,
                    call.error,
                    now_s=now_s,
                )
            return []
        if call.call_id in self._mcp_answered:  # answered already; a second answer would contradict it
            return []
        self._mcp_answered[call.call_id] = None
        if len(self._mcp_answered) > MAX_MCP_ANSWERED:
            self._mcp_answered.popitem(last=False)
        approved = self._approves(call.tool_name)
        self._count("mcp_approved" if approved else "mcp_denied")
        if approved:
            self._server_log.info(
                f"mcp_approved:{call.tool_name}",
                "%s: approved MCP tool %r (listed in tools.mcp_approve)",
                self.name,
                call.tool_name,
                now_s=now_s,
            )
        else:
            self._server_log.warning(
                f"mcp_denied:{call.tool_name}",
                "%s: denied MCP tool %r: only the tools listed in tools.mcp_approve are approved; "
                "add it there to let the agent run it",
                self.name,
                call.tool_name,
                now_s=now_s,
            )
        return [
            Send(encode_mcp_approval(call.call_id, approved)),
            Emit(McpApproval(call.tool_name, call.call_id, approved)),
        ]

    def _on_rich_content(self, event: RichContent, now_s: float) -> list[Output]:
        if self._count("rich_content") == 1:
            self._log.info(
                "%s: the agent sent rich content (%s) that this kiosk has no screen for; counted and ignored",
                self.name,
                event.component or "no component",
            )
        return [Emit(event)]

    def _on_text_part(self, event: AgentResponsePart, now_s: float) -> list[Output]:
        self._count("agent_text_parts")
        return [Emit(event)]

    def _on_server_error(self, event: ServerError, now_s: float) -> list[Output]:
        self._count("server_errors")
        self.server_error = event
        self._server_log.warning(
            "server_error",
            "%s: the service reported an error: %s %s %s",
            self.name,
            event.code,
            event.error_type,
            event.message,
            now_s=now_s,
        )
        return [Emit(event)]
