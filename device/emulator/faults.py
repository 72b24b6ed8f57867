"""The reply-level faults of one conversation: fired as their reply streams, one handler per kind.

:class:`FaultRunner` fires each fault once, when its reply has sent the
fault's number of chunks (or at the reply's end, if it is shorter), through
:data:`FAULT_HANDLERS`. It also owns what some faults leave open: MCP tool
calls awaiting the client's approval, and the close an agent-side end_call
announces. The connection-level kinds (quota, slow or missing metadata) act
on the initiation; the HTTP ones on the server.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime

from device.emulator import wire
from device.emulator.outbox import FROM_AGENT, Outbox, Send, SendRaw
from device.emulator.replies import Reply, padding_alignment, send_audio
from device.emulator.scenario import REPLY_FAULTS, Fault


class FaultRunner:
    """Fires the reply-level ``faults`` into ``out``; ``call_numbers`` is shared with the client tool calls."""

    def __init__(
        self, faults: Iterable[Fault], out: Outbox, *, end_call_reason: str, call_numbers: Iterator[int]
    ) -> None:
        self._faults = [f for f in faults if f.kind in REPLY_FAULTS]
        self._fired: set[int] = set()
        self._out = out
        self._end_call_reason = end_call_reason
        self._call_numbers = call_numbers
        self._mcp_numbers = itertools.count(1)
        self._mcp_waiting: dict[str, tuple[float, str]] = {}  # tool_call_id → (deadline, tool name)
        self._end_call_at_s: float | None = None

    def inject(self, now: float, r: Reply, chunk: int, at_end: bool = False) -> None:
        """Fire the faults due once ``chunk`` chunks of ``r`` are out (``at_end``: and no more will come)."""
        for n, f in enumerate(self._faults):
            if n in self._fired or f.reply != r.index:
                continue
            if not (f.after_chunks == chunk or (at_end and f.after_chunks >= chunk)):
                continue
            self._fired.add(n)
            self._out.event(now, FROM_AGENT, "fault", kind=f.kind, reply=r.index, after_chunks=chunk)
            FAULT_HANDLERS[f.kind](self, now, f, r, chunk)
            if self._out.ended:
                return

    def deadlines(self) -> list[float]:
        """When :meth:`advance` has something to do."""
        times = [deadline for deadline, _ in self._mcp_waiting.values()]
        if self._end_call_at_s is not None:
            times.append(self._end_call_at_s)
        return times

    def advance(self, now: float) -> None:
        """Close for an announced end_call; fail the MCP calls whose approval timed out."""
        if self._end_call_at_s is not None and now >= self._end_call_at_s:
            self._out.close(now, 1000, self._end_call_reason)
            return
        for call_id, (deadline, name) in list(self._mcp_waiting.items()):
            if now >= deadline:
                del self._mcp_waiting[call_id]
                self._out.event(now, FROM_AGENT, "mcp_approval_timed_out", tool_call_id=call_id)
                self._mcp_update(now, call_id, name, "failure", "Approval timed out")

    def approve(self, now: float, call_id: str, approved: bool) -> bool:
        """The client's answer to an MCP call; False when no call ``call_id`` awaits one."""
        waiting = self._mcp_waiting.pop(call_id, None)
        if waiting is None:
            return False
        self._mcp_update(now, call_id, waiting[1], "success" if approved else "failure", "Rejected by the user")
        return True

    # One handler per kind (FAULT_HANDLERS): ``chunk`` is how many chunks of ``r`` went out.
    def _close(self, now: float, f: Fault, r: Reply, chunk: int) -> None:
        reason = f.reason or ("Internal error" if f.close_code == 1011 else "")
        self._out.close(now, f.close_code, reason)

    def _drop(self, now: float, f: Fault, r: Reply, chunk: int) -> None:
        self._out.drop()

    def _malformed_json(self, now: float, f: Fault, r: Reply, chunk: int) -> None:
        self._out.put(SendRaw(wire.TRUNCATED_AUDIO_FRAME))

    def _unknown_event(self, now: float, f: Fault, r: Reply, chunk: int) -> None:
        if f.event_type == "context_usage":  # a real event of the document the device may not know
            self._out.send(now, wire.context_usage(r.event_id, "emulated-llm", 1234, 128000))
            return
        event = wire.unknown_event(f.event_type, {"emulated": True, "value": 42})
        self._out.put(Send(event, conforms=False))
        self._out.event(now, FROM_AGENT, f.event_type, emulated=True)

    def _error_event(self, now: float, f: Fault, r: Reply, chunk: int) -> None:
        self._out.error(now, f.error_type, f.message, code=f.close_code, close=f.then_close)

    def _agent_tool_response(self, now: float, f: Fault, r: Reply, chunk: int) -> None:
        call_id = f"toolu_agent_{next(self._call_numbers):03d}"
        self._out.send(now, wire.agent_tool_response(f.tool_name, call_id, f.tool_type, f.is_error, r.event_id))
        if f.tool_name == "end_call" and not f.is_error:
            self._end_call_at_s = now + f.delay_s

    def _mcp_tool_call(self, now: float, f: Fault, r: Reply, chunk: int) -> None:
        call_id = f"mcp_{self._out.record.conversation_id[-8:]}_{next(self._mcp_numbers):03d}"
        if f.state == "awaiting_approval":
            self._mcp_waiting[call_id] = (now + f.approval_timeout_s, f.tool_name)
        self._mcp_update(now, call_id, f.tool_name, f.state, "Emulated MCP failure", f.approval_timeout_s)

    def _rich_content(self, now: float, f: Fault, r: Reply, chunk: int) -> None:
        props = {"title": "Emulated card", "text": r.text}
        self._out.send(now, wire.rich_content(f"rc_{r.event_id}_{chunk}", f.component, props, r.event_id))

    def _bad_base64(self, now: float, f: Fault, r: Reply, chunk: int) -> None:
        self._out.put(Send(wire.audio("@@not*base64!!", r.event_id), conforms=False))

    def _odd_length_audio(self, now: float, f: Fault, r: Reply, chunk: int) -> None:
        self._out.put(Send(wire.audio(wire.encode_audio(b"\x00\x01\x00"), r.event_id)))

    def _oversized_frame(self, now: float, f: Fault, r: Reply, chunk: int) -> None:
        if chunk < len(r.bounds):
            r.oversized_chunks[chunk] = f.size_bytes
        else:  # after the last chunk: a short tail of silence carries the padding
            tail = bytes(r.fmt.bytes_per_frame * (r.fmt.rate_hz // 100))
            send_audio(self._out, now, r, tail, padding_alignment(f.size_bytes), f.size_bytes)

    def _mcp_update(
        self, now: float, call_id: str, name: str, state: str, error: str, approval_timeout_s: int = 300
    ) -> None:
        """One mcp_tool_call event in ``state``, shaped as the document's MCPToolCall* schemas."""
        message = wire.mcp_tool_call(
            service_id="mcp_emulated",
            tool_call_id=call_id,
            tool_name=name,
            tool_description=f"Emulated MCP tool {name}",
            parameters={"query": "emulated"},
            timestamp=datetime.now(UTC).isoformat(),
            state=state,
            approval_timeout_secs=approval_timeout_s if state == "awaiting_approval" else None,
            result=[{"type": "text", "text": f"{name}: done"}] if state == "success" else None,
            error_message=error if state == "failure" else None,
        )
        self._out.send(now, message)


FaultHandler = Callable[[FaultRunner, float, Fault, Reply, int], None]
# What each reply-level fault kind does.
FAULT_HANDLERS: Mapping[str, FaultHandler] = {
    "close": FaultRunner._close,
    "drop": FaultRunner._drop,
    "malformed_json": FaultRunner._malformed_json,
    "unknown_event": FaultRunner._unknown_event,
    "bad_base64": FaultRunner._bad_base64,
    "odd_length_audio": FaultRunner._odd_length_audio,
    "oversized_frame": FaultRunner._oversized_frame,
    "error_event": FaultRunner._error_event,
    "agent_tool_response": FaultRunner._agent_tool_response,
    "mcp_tool_call": FaultRunner._mcp_tool_call,
    "rich_content": FaultRunner._rich_content,
}
