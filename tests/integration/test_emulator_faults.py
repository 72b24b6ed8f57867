"""Faults on demand and the service's timeouts, as a client on the socket sees them."""

from __future__ import annotations

import base64
import binascii
import contextlib
import time
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from device.emulator import ConversationRecord, Emulator, ProtocolClient, Scenario, default_scenario
from device.emulator.scenario import QUOTA_REASON, parse_fault_spec

pytestmark = pytest.mark.realtime

FAST = {"speed": 20.0, "response_delay_ms": 50, "ping_interval_s": 0, "turn_timeout_s": 0}


def scenario(*faults: str, **timing: Any) -> Scenario:
    return default_scenario().with_changes(
        timing={**FAST, **timing},
        strict={"audio_rate_factor": 0},
        faults=tuple(parse_fault_spec(f) for f in faults),
    )


def run_first_message(sc: Scenario, **client: Any) -> tuple[ProtocolClient, Emulator]:
    """Open a conversation and read until the first message is all sent or the socket closes."""
    emu = Emulator(sc, speech="tone").start()
    c = ProtocolClient(emu.signed_url(), **client)
    c.send_init()

    def done(recs: list[ConversationRecord]) -> bool:
        return bool(recs) and (
            recs[0].ended
            or (
                bool(recs[0].turns)
                and recs[0].turns[0].chunks_total > 0
                and recs[0].turns[0].chunks_sent == recs[0].turns[0].chunks_total
            )
        )

    emu.wait_until(done, 5, "the first message or the end")
    with contextlib.suppress(ConnectionClosed):
        while c.recv(0.2) is not None:  # drain what is on its way
            pass
    return c, emu


def finish(c: ProtocolClient, emu: Emulator) -> None:
    c.close()
    emu.stop()


def audio_before_close(c: ProtocolClient) -> int:
    return len(c.of_type("audio"))


@pytest.mark.parametrize("code", [1000, 1011])
def test_close_mid_reply(code: int) -> None:
    c, emu = run_first_message(scenario(f"close:reply=0,after_chunks=2,code={code}"))
    try:
        assert c.close_code == code
        assert audio_before_close(c) == 2
        rec = emu.wait_for_conversation_end(timeout_s=5)
        assert (rec.close_code, rec.closed_by) == (code, "server")
        assert rec.violations == []
    finally:
        finish(c, emu)


def test_abrupt_tcp_drop_mid_reply() -> None:
    emu = Emulator(scenario("drop:after_chunks=3"), speech="tone").start()
    try:
        with ProtocolClient(emu.signed_url()) as c:
            c.send_init()
            c.recv_until_closed(5)
            assert c.close_code == 1006  # no close frame: the connection just died
            assert audio_before_close(c) == 3
        assert emu.wait_for_conversation_end(timeout_s=5).closed_by == "drop"
    finally:
        emu.stop()


def test_malformed_unknown_and_broken_audio_events_mid_reply() -> None:
    c, emu = run_first_message(
        scenario(
            "malformed_json:after_chunks=1",
            "unknown_event:after_chunks=2,event_type=mcp_tool_call",
            "bad_base64:after_chunks=3",
            "odd_length_audio:after_chunks=4",
        )
    )
    try:
        types = [m["type"] for m in c.received]
        assert types.count("<not json>") == 1
        assert types.count("mcp_tool_call") == 1
        audio = [m["audio_event"]["audio_base_64"] for m in c.of_type("audio")]
        with pytest.raises(binascii.Error):
            base64.b64decode(audio[3], validate=True)
        assert len(base64.b64decode(audio[5])) % 2 == 1
        # The reply carries on after each of them.
        rec = emu.conversations[0]
        assert rec.turns[0].chunks_sent == rec.turns[0].chunks_total
        assert len(audio) == rec.turns[0].chunks_total + 2
    finally:
        finish(c, emu)


def test_oversized_frame_catches_clients_with_a_1_mib_limit() -> None:
    sc = scenario("oversized_frame:after_chunks=1,size_bytes=2000000")
    c, emu = run_first_message(sc)  # no limit: the frame arrives
    try:
        assert any(len(m["audio_event"].get("alignment", {}).get("chars", [])) > 100000 for m in c.of_type("audio"))
    finally:
        finish(c, emu)
    c, emu = run_first_message(sc, max_size=2**20)  # websockets' default limit
    try:
        assert c.sent_close_code == 1009  # message too big: the client gives up
        assert emu.wait_for_conversation_end(timeout_s=5).close_code == 1009
    finally:
        finish(c, emu)


def test_quota_exceeded() -> None:
    c, emu = run_first_message(scenario("quota"))
    try:
        c.recv_until_closed(5)
        assert (c.close_code, c.close_reason) == (1002, QUOTA_REASON)
        assert c.received == []
    finally:
        finish(c, emu)


def test_slow_metadata() -> None:
    emu = Emulator(scenario("slow_metadata:delay_s=0.4"), speech="tone").start()
    try:
        with ProtocolClient(emu.signed_url()) as c:
            c.send_init()
            sent = time.monotonic()
            c.recv_until("conversation_initiation_metadata", 5)
            assert time.monotonic() - sent >= 0.4
    finally:
        emu.stop()


def test_missing_metadata_then_the_inactivity_timeout() -> None:
    c, emu = run_first_message(scenario("missing_metadata", inactivity_timeout_s=0.5))
    try:
        c.recv_until_closed(5)
        assert [m["type"] for m in c.received] == ["error"]
        assert c.close_code == 1002
    finally:
        finish(c, emu)


def test_no_user_audio_ends_with_an_error_event_and_1002() -> None:
    emu = Emulator(scenario(inactivity_timeout_s=0.6), speech="tone").start()
    try:
        with ProtocolClient(emu.signed_url()) as c:
            c.send_init()
            c.recv_until("agent_response")
            deadline = time.monotonic() + 0.5
            while time.monotonic() < deadline:  # audio keeps it alive...
                c.send_audio(bytes(1600))
                c.recv(0.05)
            got = c.recv_until_closed(5)  # ...until it stops
        assert got[-1]["type"] == "error"
        assert got[-1]["error_event"]["error_type"] == "transport_receive_timeout"
        assert c.close_code == 1002
        assert "transport_receive_timeout" in c.close_reason
    finally:
        emu.stop()


def test_max_duration_closes_1000() -> None:
    c, emu = run_first_message(scenario(max_duration_s=0.5))
    try:
        c.recv_until_closed(5)
        assert (c.close_code, c.close_reason) == (1000, "Maximum conversation duration reached")
    finally:
        finish(c, emu)


def test_silence_makes_the_agent_reprompt() -> None:
    sc = scenario(turn_timeout_s=0.3).with_changes(agent={"first_message": "Hi."})
    emu = Emulator(sc, speech="tone").start()
    try:
        with ProtocolClient(emu.signed_url()) as c:
            c.send_init()
            texts = [c.recv_until("agent_response", 5)["agent_response_event"]["agent_response"] for _ in range(2)]
        assert texts == ["Hi.", "Are you still there?"]
    finally:
        emu.stop()


def test_a_client_that_never_initiates_is_closed_and_reported() -> None:
    emu = Emulator(scenario(init_timeout_s=0.3), speech="tone").start()
    try:
        with ProtocolClient(emu.signed_url()) as c:
            c.send_audio(bytes(3200))
            with pytest.raises(ConnectionClosed):
                c.recv_until("never", 5)
        assert c.close_code == 1008
        assert [v.rule for v in emu.wait_for_conversation_end(timeout_s=5).violations] == [
            "first_message_not_initiation",
            "initiation_missing",
        ]
    finally:
        emu.stop()


def test_an_override_the_agent_does_not_allow() -> None:
    emu = Emulator(scenario(), speech="tone").start()
    try:
        with ProtocolClient(emu.signed_url()) as c:
            c.send_init(conversation_config_override={"agent": {"prompt": {"prompt": "Be rude."}}})
            c.recv_until_closed(5)
        assert (c.close_code, c.close_reason) == (1008, "Override for field 'prompt' is not allowed by config.")
    finally:
        emu.stop()


def test_faults_can_target_one_conversation() -> None:
    emu = Emulator(scenario("quota:conversation=1"), speech="tone").start()
    try:
        codes = []
        for _ in range(3):
            with ProtocolClient(emu.signed_url()) as c:
                c.send_init()
                try:
                    c.recv_until("agent_response", 5)
                    codes.append(None)
                except ConnectionClosed:
                    codes.append(c.close_code)
        assert codes == [None, 1002, None]
    finally:
        emu.stop()
