"""Every emulator fault and service timeout becomes the right outcome (or is survived)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import struct
import threading

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import ServerConnection

from device.core.config import AgentConfig, SessionConfig, ToolsConfig
from device.core.protocol import AgentAudio, AgentResponse, Connected, Outcome, ServerError, SessionEnded, SessionEvent
from device.drivers.session import Session
from device.drivers.tools import ToolRegistry
from device.emulator.scenario import Fault
from tests.integration.sessionrig import (
    WAIT_S,
    Events,
    Hooks,
    agent_for,
    fast_scenario,
    make_session,
    running,
    scripted,
    speak,
    started,
    wait_reply_played,
)
from tests.support import FixedUrl

pytestmark = pytest.mark.realtime


def run_until_end(scenario_changes: dict[str, object], **agent_kw: object) -> tuple[SessionEnded, object, object]:
    with running(fast_scenario(**scenario_changes)) as emu:
        session, events = make_session(emu, agent=agent_for(emu, **agent_kw))
        with started(session):
            ended = events.ended()
        record = emu.wait_for_conversation_end(timeout_s=WAIT_S) if emu.conversations else None
    return ended, session, record


LONG_FIRST = {"first_message": "Hello. I am the emulated agent, and I am here to help you with anything."}


@pytest.mark.parametrize(
    ("code", "reason", "outcome"),
    [
        (1000, "", Outcome.NORMAL),
        (1011, "Internal error", Outcome.SERVER_ERROR),
        (1001, "Going away", Outcome.SERVER_ERROR),
        (1008, "Policy violation", Outcome.MISCONFIGURED),
    ],
)
def test_close_mid_reply(code: int, reason: str, outcome: Outcome) -> None:
    ended, session, _ = run_until_end(
        {"agent": LONG_FIRST, "faults": (Fault(kind="close", reply=0, after_chunks=2, code=code, reason=reason),)}
    )
    assert ended.outcome is outcome and ended.close_code == code
    assert session.stats["agent_audio_chunks"] == 2  # type: ignore[attr-defined]


def test_tcp_drop_mid_reply_is_a_network_loss() -> None:
    ended, _, _ = run_until_end({"agent": LONG_FIRST, "faults": (Fault(kind="drop", reply=0, after_chunks=1),)})
    assert ended.outcome is Outcome.NETWORK and ended.close_code is None
    assert ended.outcome.retryable and "without a close frame" in ended.detail


@pytest.mark.parametrize(
    ("kind", "counter"),
    [
        ("malformed_json", "malformed_bad_json"),
        ("bad_base64", "malformed_bad_base64"),
        ("odd_length_audio", "malformed_odd_length_audio"),
        ("unknown_event", "unknown_events"),
    ],
)
def test_malformed_and_unknown_messages_are_counted_and_survived(kind: str, counter: str) -> None:
    scenario = fast_scenario(faults=(Fault(kind=kind, reply=0, after_chunks=0),))  # type: ignore[arg-type]
    with running(scenario) as emu:
        session, events = make_session(emu)
        with started(session):
            events.wait_for(AgentResponse)
            wait_reply_played(emu, 0)
            speak(session, "What can you do?")
            events.wait_for(AgentResponse, lambda e: e.text == "I can help.")  # the conversation went on
        ended = events.ended()
        record = emu.wait_for_conversation_end(timeout_s=WAIT_S)
    assert ended.outcome is Outcome.LOCAL
    stats = session.stats
    assert stats[counter] == 1
    if kind != "unknown_event":
        assert stats["malformed_messages"] == 1
    assert not record.violations, record.violations
    assert not [e for e in events.items if type(e).__name__ == "UnknownEvent"]


def test_a_two_mib_frame_is_accepted() -> None:
    scenario = fast_scenario(
        faults=(Fault(kind="oversized_frame", reply=0, after_chunks=0, size_bytes=2 * 1024 * 1024),)
    )
    with running(scenario) as emu:
        session, events = make_session(emu)
        with started(session):
            events.wait_for(AgentResponse)
            wait_reply_played(emu, 0)
            speak(session, "What can you do?")
            events.wait_for(AgentResponse, lambda e: e.text == "I can help.")
            # the reply's audio is still streaming after its text: stop only once all of it has arrived
            snaps = emu.wait_until(
                lambda s: len(s[-1].turns) > 1 and 0 < s[-1].turns[1].chunks_total == s[-1].turns[1].chunks_sent,
                WAIT_S,
                "the whole reply to be sent",
            )
            n_sent = len([e for e in snaps[-1].events if e["direction"] == "from_agent" and e["type"] == "audio"])
            events.wait_count(AgentAudio, n_sent)
        record = emu.wait_for_conversation_end(timeout_s=WAIT_S)
    assert session.stats["malformed_messages"] == 0
    sent = [e for e in record.events if e["direction"] == "from_agent" and e["type"] == "audio"]
    assert len(events.of(AgentAudio)) == len(sent)


def test_a_frame_over_sixteen_mib_ends_the_session_as_a_protocol_error() -> None:
    ended, _, _ = run_until_end(
        {
            "agent": LONG_FIRST,
            "faults": (Fault(kind="oversized_frame", reply=0, after_chunks=1, size_bytes=20 * 1024 * 1024),),
        }
    )
    assert ended.outcome is Outcome.PROTOCOL and ended.close_code == 1009
    # refused from the frame header (the size is known before the payload is read)
    assert re.search(r"sent a \d+\.\d MiB message, over the 16 MiB limit", ended.detail), ended.detail


def test_quota_close() -> None:
    ended, _, _ = run_until_end({"faults": (Fault(kind="quota"),)})
    assert ended.outcome is Outcome.QUOTA and ended.close_code == 1002
    assert not ended.outcome.retryable and "credits" in ended.message


def test_slow_metadata_within_the_timeout_still_connects() -> None:
    with running(fast_scenario(faults=(Fault(kind="slow_metadata", delay_s=1.0),))) as emu:
        session, events = make_session(emu)
        with started(session):
            events.wait_for(Connected)
    assert session.stats["connect_ms"] >= 1000


def test_missing_metadata_times_out() -> None:
    ended, _, record = run_until_end({"faults": (Fault(kind="missing_metadata"),)}, connect_timeout_s=0.5)
    assert ended.outcome is Outcome.SERVER_ERROR and ended.outcome.retryable
    assert "did not start the conversation within 0.5 s" in ended.detail
    assert record is not None and record.close_code == 1000  # the device said goodbye properly


def test_missing_metadata_times_out_even_while_pings_keep_coming() -> None:
    # A steady stream of messages must not hide the deadline (it was only checked when the socket was idle).
    done = threading.Event()

    def script(ws: ServerConnection) -> None:
        ws.recv(timeout=WAIT_S)  # the initiation
        event_id = 0
        try:
            while not done.wait(0.05):
                event_id += 1
                ws.send(json.dumps({"type": "ping", "ping_event": {"event_id": event_id, "ping_ms": 5}}))
        except ConnectionClosed:
            pass

    server, port, thread, closes = scripted(script)
    try:
        agent = AgentConfig(
            agent_id="a", connection="public", base_url=f"http://127.0.0.1:{port}", connect_timeout_s=0.5
        )
        session, events = make_session(None, agent=agent, key=None)
        with started(session):
            ended = events.ended()
    finally:
        done.set()
        server.shutdown()
        thread.join(WAIT_S)
    assert ended.outcome is Outcome.SERVER_ERROR and ended.outcome.retryable
    assert "did not start the conversation within 0.5 s" in ended.detail
    assert session.stats["pings"] > 0 and closes == [1000]


def test_the_scripted_server_records_the_devices_close_even_when_its_script_ended_first() -> None:
    # The race behind the flaky test above, made certain: the script is over before the device closes.
    script_over = threading.Event()

    def script(ws: ServerConnection) -> None:
        ws.recv(timeout=WAIT_S)  # the initiation
        script_over.set()

    server, port, thread, closes = scripted(script)
    try:
        agent = AgentConfig(agent_id="a", connection="public", base_url=f"http://127.0.0.1:{port}")
        session, events = make_session(None, agent=agent, key=None)
        with started(session):
            assert script_over.wait(WAIT_S)
        ended = events.ended()
    finally:
        server.shutdown()
        thread.join(WAIT_S)
    assert ended.outcome is Outcome.LOCAL
    assert closes == [1000]  # the device's goodbye, not None read before it arrived


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(403, Outcome.AUTH), (401, Outcome.AUTH), (404, Outcome.NOT_FOUND), (429, Outcome.RATE_LIMITED),
     (503, Outcome.SERVER_ERROR)],
)
def test_refused_upgrade(status: int, outcome: Outcome) -> None:
    ended, _, record = run_until_end({"faults": (Fault(kind="refuse_upgrade", status=status),)})
    assert ended.outcome is outcome and f"HTTP {status}" in ended.detail
    assert record is None


@pytest.mark.parametrize(
    ("status", "outcome", "retry_after_s"),
    [(429, Outcome.RATE_LIMITED, 2.0), (401, Outcome.AUTH, None), (404, Outcome.NOT_FOUND, None)],
)
def test_signed_url_errors(status: int, outcome: Outcome, retry_after_s: float | None) -> None:
    ended, _, _ = run_until_end({"faults": (Fault(kind="signed_url_error", status=status, retry_after_s=2.0),)})
    assert ended.outcome is outcome and ended.retry_after_s == retry_after_s
    assert f"HTTP {status}" in ended.detail


def test_a_passing_service_error_is_retried_and_the_conversation_starts() -> None:
    fault = Fault(kind="signed_url_error", status=503, retry_after_s=0.2, count=1)
    with running(fast_scenario(faults=(fault,))) as emu:
        session, events = make_session(emu)
        with started(session):
            events.wait_for(Connected)
        statuses = [r["status"] for r in emu.http_requests]
    assert statuses == [503, 200]


def test_inactivity_close_reports_the_error_and_a_network_outcome() -> None:
    ended, _, _ = run_until_end({"timing": {"inactivity_timeout_s": 1.0}})
    assert ended.outcome is Outcome.NETWORK and ended.close_code == 1002
    assert "stopped receiving audio" in ended.detail


def test_inactivity_error_event_reaches_the_controller() -> None:
    with running(fast_scenario(timing={"inactivity_timeout_s": 1.0})) as emu:
        session, events = make_session(emu)
        with started(session):
            error = events.wait_for(ServerError)
            events.ended()
    assert error.code == 1002 and error.error_type == "transport_receive_timeout"


def test_max_duration() -> None:
    ended, _, _ = run_until_end({"timing": {"max_duration_s": 1.0}})
    assert ended.outcome is Outcome.MAX_DURATION and ended.close_code == 1000
    assert "maximum duration" in ended.message


def test_emulator_shutting_down_is_a_server_error() -> None:
    with running() as emu:
        session, events = make_session(emu)
        session.start()
        try:
            events.wait_for(Connected)
            emu.stop()
            ended = events.ended()
        finally:
            session.stop()
    assert ended.outcome is Outcome.SERVER_ERROR and ended.close_code == 1011  # 1011: the document has no 1001


def test_the_agent_ending_the_call() -> None:
    from device.emulator.scenario import Turn

    scenario = fast_scenario(turns=(Turn(transcript="Bye.", reply="Bye.", end_call=True),))
    with running(scenario) as emu:
        session, events = make_session(emu)
        with started(session):
            events.wait_for(AgentResponse)
            wait_reply_played(emu, 0)
            speak(session, "Bye.")
            ended = events.ended()
    assert ended.outcome is Outcome.AGENT_ENDED and not ended.outcome.retryable


# -- credentials and agents refused by the service ---------------------------------------


def test_wrong_api_key() -> None:
    with running() as emu:
        session, events = make_session(emu, key="sk_wrong_key_123456")
        with started(session):
            ended = events.ended()
    assert ended.outcome is Outcome.AUTH and "rejected the API key (HTTP 401)" in ended.detail
    assert "sk_wrong_key_123456" not in ended.message


def test_unknown_agent() -> None:
    with running() as emu:
        session, events = make_session(emu, agent=agent_for(emu, agent_id="agent_nope"))
        with started(session):
            ended = events.ended()
    assert ended.outcome is Outcome.NOT_FOUND and "agent_nope" in ended.detail
    assert "agent.region" in ended.message


@pytest.mark.parametrize("refusal", ["close", "http"])
def test_expired_signed_url(refusal: str) -> None:
    with running(fast_scenario(agent={"auth_refusal": refusal})) as emu:
        session, events = make_session(emu, signed_urls=FixedUrl(emu.signed_url(ttl_s=-1)))  # type: ignore[arg-type]
        with started(session):
            ended = events.ended()
    assert ended.outcome is Outcome.AUTH
    if refusal == "close":
        assert ended.close_code == 1008 and "expired" in ended.detail


def test_public_connection_to_a_private_agent_is_refused() -> None:
    with running() as emu:
        session, events = make_session(emu, agent=agent_for(emu, connection="public"), key=None)
        with started(session):
            ended = events.ended()
    assert ended.outcome is Outcome.AUTH and ended.close_code == 1008


def test_public_agent_needs_no_key_and_no_rest_call() -> None:
    with running(fast_scenario(agent={"public": True})) as emu:
        session, events = make_session(emu, agent=agent_for(emu, connection="public"), key=None)
        with started(session):
            events.wait_for(Connected)
        assert emu.http_requests == []


def _frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked server frame (payload under 126 bytes)."""
    assert len(payload) < 126
    return bytes([0x80 | opcode, len(payload)]) + payload


def test_a_websocket_ping_on_a_dying_connection_is_a_network_loss() -> None:
    # A raw server: websocket-level ping right after the metadata. The device's sending side is already
    # dead when the ping is read, so its pong fails: that is the network, not an internal error.
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve_one() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(WAIT_S)
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(4096)
            key = re.search(rb"(?i)sec-websocket-key: *(\S+)", request)
            assert key is not None
            accept = base64.b64encode(hashlib.sha1(key.group(1) + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
            conn.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            meta = json.dumps({
                "type": "conversation_initiation_metadata",
                "conversation_initiation_metadata_event": {
                    "conversation_id": "c", "agent_output_audio_format": "pcm_16000",
                    "user_input_audio_format": "pcm_16000"},
            }).encode()
            conn.sendall(bytes([0x81, 126]) + struct.pack("!H", len(meta)) + meta + _frame(0x9, b"are you there"))
            while conn.recv(4096):  # until the device is gone
                pass

    server = threading.Thread(target=serve_one, name="raw-ws-server")
    server.start()
    events = Events()
    holder: list[Session] = []

    def on_event(event: SessionEvent) -> None:
        events(event)
        if isinstance(event, Connected):  # on the receiving thread, before it reads the ping
            sock = holder[0]._ws.sock  # type: ignore[union-attr]
            sock.shutdown(socket.SHUT_WR)

    agent = AgentConfig(agent_id="a", connection="public", base_url=f"http://127.0.0.1:{port}")
    session = Session(agent, SessionConfig(), ToolRegistry(ToolsConfig(), Hooks()), None, on_event)
    holder.append(session)
    try:
        with started(session):
            ended = events.ended()
    finally:
        listener.close()
        server.join(WAIT_S)
    assert ended.outcome is Outcome.NETWORK and ended.outcome.retryable, ended
    assert "without a close frame" in ended.detail and "internal error" not in ended.detail
