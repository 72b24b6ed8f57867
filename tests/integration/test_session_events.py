"""Server events beyond the basic conversation, and hostile shapes, through a real local WebSocket.

The hand-written server (``scripted``) plays the service's edge: it sends what
the AsyncAPI document allows (and what it does not), and records what the device answers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from test_session_support import WAIT_S, make_session, scripted, started
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import ServerConnection

from device.config import AgentConfig
from device.protocol import AgentResponse, Outcome, SessionEnded

DEEP = 100_000


def metadata(conversation_id: str = "conv_scripted") -> str:
    return json.dumps({
        "type": "conversation_initiation_metadata",
        "conversation_initiation_metadata_event": {
            "conversation_id": conversation_id,
            "agent_output_audio_format": "pcm_16000",
            "user_input_audio_format": "pcm_16000",
        },
    })


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


def drain(ws: ServerConnection) -> None:
    """Until the device closes (answering its close frame)."""
    try:
        while True:
            ws.recv(timeout=WAIT_S)
    except (ConnectionClosed, TimeoutError):
        pass


def public_agent(port: int) -> AgentConfig:
    return AgentConfig(agent_id="a", connection="public", base_url=f"http://127.0.0.1:{port}", connect_timeout_s=5.0)


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
