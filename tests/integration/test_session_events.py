"""Server events beyond the basic conversation, and hostile shapes, through a real local WebSocket.

The emulator sends the AsyncAPI document's optional events (scenario faults:
agent_tool_response, mcp_tool_call, rich_content; client_events for
agent_chat_response_part); a hand-written server (``scripted``) plays the
service's edge where the emulator cannot (hostile shapes).
"""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from collections.abc import Callable
from typing import Any

import pytest
from websockets.sync.server import ServerConnection

from device.core.config import ToolsConfig
from device.core.conversation import MAX_UNKNOWN_TYPES, SERVER_LOG_LINES
from device.core.protocol import (
    AgentResponse,
    AgentResponsePart,
    Connected,
    McpApproval,
    Outcome,
    RichContent,
    SessionEnded,
)
from device.drivers.logs import setup_logging
from device.drivers.tools import ToolRegistry
from device.emulator.scenario import DEFAULT_CLIENT_EVENTS, Fault
from tests.integration.sessionrig import (
    WAIT_S,
    Hooks,
    drain,
    fast_scenario,
    make_session,
    messages_to_agent,
    metadata,
    public_agent,
    running,
    scripted,
    speak,
    started,
    wait_reply_played,
)

pytestmark = pytest.mark.realtime

DEEP = 100_000


def ping(event_id: int) -> str:
    return json.dumps({"type": "ping", "ping_event": {"event_id": event_id, "ping_ms": None}})


def agent_response(text: str, event_id: int = 1) -> str:
    return json.dumps(
        {"type": "agent_response", "agent_response_event": {"agent_response": text, "event_id": event_id}}
    )


def recv_until(ws: ServerConnection, pred: Callable[[dict[str, Any]], bool], seen: list[dict[str, Any]]) -> None:
    """Read the device's messages (JSON) until one matches ``pred``; every wait is bounded."""
    while True:
        msg = json.loads(ws.recv(timeout=WAIT_S))
        seen.append(msg)
        if pred(msg):
            return


def converse(script: Callable[[ServerConnection], None]) -> tuple[Any, Any]:
    """Run one session against ``script``; end it once the script saw what it wanted."""
    server, port, thread, _ = scripted(script)
    try:
        session, events = make_session(None, agent=public_agent(port), key=None)
        with started(session):
            first = events.wait_for(object, lambda e: isinstance(e, (AgentResponse, SessionEnded)))  # type: ignore[type-abstract]
            assert isinstance(first, AgentResponse), f"the session ended early: {first}"
        ended = events.ended()
    finally:
        server.shutdown()
        thread.join(WAIT_S)
    return session, ended


def test_a_100000_deep_message_is_counted_and_ignored() -> None:
    seen: list[dict[str, Any]] = []

    def script(ws: ServerConnection) -> None:
        seen.append(json.loads(ws.recv(timeout=WAIT_S)))  # the initiation
        ws.send(metadata())
        ws.send("[" * DEEP + "]" * DEEP)
        ws.send('{"type": "ping", "ping_event": {"event_id": 7, "x": ' + "[" * DEEP + "]" * DEEP + "}}")
        ws.send(ping(8))
        recv_until(ws, lambda m: m.get("type") == "pong", seen)
        ws.send(agent_response("still here"))
        drain(ws)

    session, ended = converse(script)
    assert ended.outcome is Outcome.LOCAL, ended
    assert [m["event_id"] for m in seen if m.get("type") == "pong"] == [8]
    stats = session.stats
    assert stats["malformed_too_deep"] == 2 and stats["malformed_messages"] == 2


FLOOD = 5000
FORGED = "boom\n<0>forged emergency\r\x1b[2J\x1b]0;title\x07"


def test_a_flood_of_new_unknown_types_is_counted_in_a_bounded_table_and_logged_a_bounded_number_of_times(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def script(ws: ServerConnection) -> None:
        ws.recv(timeout=WAIT_S)  # the initiation
        ws.send(metadata())
        for i in range(FLOOD):
            ws.send(json.dumps({"type": f"new_type_{i}", "n": i}))
        ws.send(ping(9))
        recv_until(ws, lambda m: m.get("type") == "pong", [])  # still answered at once after the flood
        ws.send(agent_response("still here"))
        drain(ws)

    caplog.set_level(logging.INFO, logger="device.drivers.session")
    session, ended = converse(script)
    assert ended.outcome is Outcome.LOCAL, ended
    stats = session.stats
    assert stats["unknown_events"] == FLOOD and stats["pings"] == 1
    named = [k for k in stats if k.startswith("unknown:")]
    assert len(named) == MAX_UNKNOWN_TYPES + 1 and stats["unknown:other"] == FLOOD - MAX_UNKNOWN_TYPES
    lines = [r.getMessage() for r in caplog.records if r.name == "device.drivers.session"]
    assert len([m for m in lines if "unknown event type '" in m]) == MAX_UNKNOWN_TYPES
    assert len(lines) < MAX_UNKNOWN_TYPES + 10, lines[-10:]
    held = FLOOD - MAX_UNKNOWN_TYPES - 1  # the first type over the table is reported at once
    assert f"session: {held} log lines were held back by the rate limit (unknown:other ×{held})" in lines


def test_whatever_the_service_floods_the_log_gets_a_bounded_number_of_lines(caplog: pytest.LogCaptureFixture) -> None:
    n = 500
    answers: list[dict[str, Any]] = []

    def script(ws: ServerConnection) -> None:
        ws.recv(timeout=WAIT_S)
        ws.send(metadata())
        for i in range(n):
            ws.send(metadata(f"conv_{i}"))  # a second one, ignored
            ws.send("{not json")
            ws.send(json.dumps({"type": "error", "error_event": {"code": 1011, "message": f"e{i}", "error_type": "x"}}))
            ws.send(json.dumps({"type": "client_tool_call", "client_tool_call": {
                "tool_name": f"nope_{i}", "tool_call_id": f"t{i}", "parameters": {},
            }}))
            ws.send(json.dumps({"type": "mcp_tool_call", "mcp_tool_call": {
                "tool_call_id": f"m{i}", "tool_name": f"mcp_{i}", "state": "awaiting_approval",
            }}))
        ws.send(ping(9))
        recv_until(ws, lambda m: m.get("type") == "pong", answers)
        ws.send(agent_response("still here"))
        drain(ws)

    caplog.set_level(logging.INFO, logger="device")
    session, ended = converse(script)
    assert ended.outcome is Outcome.LOCAL, ended
    # every call was still answered, at once
    assert len([m for m in answers if m.get("type") == "client_tool_result" and m["is_error"]]) == n
    assert len([m for m in answers if m.get("type") == "mcp_tool_approval_result"]) == n
    stats = session.stats
    assert stats["malformed_bad_json"] == stats["server_errors"] == stats["mcp_denied"] == n
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("device.")]
    assert len(lines) <= SERVER_LOG_LINES + 10, lines[-10:]  # of 2,500 the service caused
    assert any("log lines were held back by the rate limit" in m for m in lines)


@pytest.mark.parametrize("journald", [False, True], ids=["stderr", "syslog-prefix"])
def test_text_from_the_service_cannot_forge_a_log_line(journald: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if journald:  # under journald without systemd-python: <N> prefixes on stderr
        monkeypatch.setitem(sys.modules, "systemd.journal", None)
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    setup_logging("info", journald=journald)  # the daemon's handler (the root logger is restored after the test)

    def script(ws: ServerConnection) -> None:
        ws.recv(timeout=WAIT_S)
        ws.send(metadata("conv_1" + FORGED))
        ws.send(json.dumps({"type": f"type{FORGED}", "n": 1}))
        ws.send(json.dumps({"type": "mcp_tool_call", "mcp_tool_call": {
            "tool_call_id": "m1", "tool_name": f"t{FORGED}", "state": "failure", "error_message": FORGED,
        }}))
        ws.send(json.dumps({"type": "error", "error_event": {"code": 1011, "message": FORGED, "error_type": FORGED}}))
        ws.send(agent_response("still here"))
        drain(ws)

    converse(script)
    out = stream.getvalue()
    assert "\x1b" not in out and "\r" not in out and "\x07" not in out
    start = re.compile(r"<[0-7]>[\w.]+: " if journald else r"\d{4}-\d\d-\d\d [\d:,]{12} [A-Z]+ +[\w.]+: ")
    assert all(start.match(line) for line in out.splitlines()), out  # every line is a record's own
    shown = "boom\\n<0>forged emergency\\r\\x1b[2J\\x1b]0;title\\x07"  # escaped, not dropped
    for what in ("conversation conv_1", "unknown event type 'type", "MCP tool 't", "reported an error: 1011"):
        [line] = [line for line in out.splitlines() if what in line]
        assert shown in line or repr(shown)[1:-1] in line, line


# -- through the emulator ---------------------------------------------------------------------

LONG_FIRST = {"first_message": "Hello. I am the emulated agent, and I am here to help you with anything at all."}


def test_the_agents_end_call_tool_ends_the_conversation_at_once() -> None:
    # The emulator would close by itself only after a minute: the device must not wait for that.
    fault = Fault(kind="agent_tool_response", tool_name="end_call", tool_type="system", reply=0, after_chunks=1,
                  delay_s=60.0)
    with running(fast_scenario(agent=LONG_FIRST, faults=(fault,))) as emu:
        session, events = make_session(emu)
        with started(session):
            events.wait_for(Connected)
            ended = events.ended()
        record = emu.wait_for_conversation_end(timeout_s=WAIT_S)
    assert ended.outcome is Outcome.AGENT_ENDED and ended.close_code == 1000, ended
    assert "end_call" in ended.detail
    assert record.closed_by == "client" and record.close_code == 1000  # the device hung up, cleanly
    assert not record.violations, record.violations


def test_another_agent_tool_response_changes_nothing() -> None:
    fault = Fault(kind="agent_tool_response", tool_name="transfer_to_number", tool_type="system", reply=0,
                  after_chunks=0)
    with running(fast_scenario(faults=(fault,))) as emu:
        session, events = make_session(emu)
        with started(session):
            events.wait_for(AgentResponse)
            wait_reply_played(emu, 0)
            speak(session, "What can you do?")
            events.wait_for(AgentResponse, lambda e: e.text == "I can help.")  # the conversation went on
        ended = events.ended()
    assert ended.outcome is Outcome.LOCAL
    assert session.stats["agent_tool_responses"] == 1


@pytest.mark.parametrize(("approve", "approved"), [((), False), (("lookup_exhibit",), True), (("other",), False)])
def test_an_mcp_tool_awaiting_approval_is_answered_at_once_by_the_policy(
    approve: tuple[str, ...], approved: bool
) -> None:
    # The emulator would wait 300 s for the answer, as the service does.
    fault = Fault(kind="mcp_tool_call", tool_name="lookup_exhibit", state="awaiting_approval", reply=0,
                  after_chunks=0, approval_timeout_s=300)
    tools = ToolRegistry(ToolsConfig(mcp_approve=approve), Hooks())
    with running(fast_scenario(faults=(fault,))) as emu:
        session, events = make_session(emu, tools=tools)
        with started(session):
            decision = events.wait_for(McpApproval)
            snaps = emu.wait_until(
                lambda s: bool(s and s[-1].events_of("mcp_tool_call", "from_agent")[1:]),
                WAIT_S,
                "the MCP call's outcome after the approval",
            )
        record = emu.wait_for_conversation_end(timeout_s=WAIT_S)
    assert decision.approved is approved and decision.tool_name == "lookup_exhibit"
    [answer] = messages_to_agent(record, "mcp_tool_approval_result")
    states = [e["state"] for e in snaps[-1].events_of("mcp_tool_call", "from_agent")]
    assert states == ["awaiting_approval", "success" if approved else "failure"]
    assert answer["is_approved"] is approved
    assert session.stats["mcp_approved" if approved else "mcp_denied"] == 1
    assert not record.violations, record.violations


def test_mcp_states_without_approval_need_no_answer() -> None:
    faults = tuple(
        Fault(kind="mcp_tool_call", tool_name="lookup", state=state, reply=0, after_chunks=0)
        for state in ("loading", "success", "failure")
    )
    with running(fast_scenario(faults=faults)) as emu:
        session, events = make_session(emu)
        with started(session):
            events.wait_for(AgentResponse)
            wait_reply_played(emu, 0)
        record = emu.wait_for_conversation_end(timeout_s=WAIT_S)
    assert session.stats["mcp_tool_calls"] == 3
    assert not messages_to_agent(record, "mcp_tool_approval_result") and not events.of(McpApproval)
    assert not record.violations, record.violations


def test_streamed_text_parts_and_rich_content_are_counted() -> None:
    scenario = fast_scenario(
        agent={**LONG_FIRST, "client_events": (*DEFAULT_CLIENT_EVENTS, "agent_chat_response_part")},
        faults=(Fault(kind="rich_content", component="item_card", reply=0, after_chunks=0),),
    )
    with running(scenario) as emu:
        session, events = make_session(emu)
        with started(session):
            events.wait_for(AgentResponse)
            wait_reply_played(emu, 0)
            card = events.wait_for(RichContent)
            snaps = emu.wait_until(lambda s: bool(s), WAIT_S, "a conversation")
        record = emu.wait_for_conversation_end(timeout_s=WAIT_S)
    # The emulator streams each reply as start, one delta per word, stop.
    sent_parts = len(LONG_FIRST["first_message"].split(" ")) + 2
    parts = events.of(AgentResponsePart)
    assert session.stats["agent_text_parts"] == len(parts) == sent_parts
    assert "".join(p.text for p in parts) == LONG_FIRST["first_message"]
    assert session.stats["rich_content"] == 1 and card.component == "item_card"
    assert snaps and not record.violations, record.violations
