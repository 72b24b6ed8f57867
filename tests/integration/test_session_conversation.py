"""The session against the emulator: a whole spoken conversation and what leaves the device."""

from __future__ import annotations

import array
import json
import threading
import time
import types

import pytest
from websockets.sync.server import ServerConnection

from device.core.audioformat import SUPPORTED, parse_format
from device.core.config import AgentConfig, SessionConfig, ToolsConfig
from device.core.protocol import (
    AgentAudio,
    AgentResponse,
    Connected,
    Outcome,
    Ping,
    SessionEnded,
    ToolCallFinished,
    ToolCallStarted,
    UserTranscript,
)
from device.drivers.tools import ToolRegistry
from device.emulator.scenario import ToolCall as ScenarioToolCall
from device.emulator.scenario import Turn
from tests.integration.sessionrig import (
    WAIT_S,
    Hooks,
    agent_for,
    blocks,
    fast_scenario,
    make_session,
    messages_to_agent,
    running,
    scripted,
    speak,
    started,
    wait_reply_played,
)

pytestmark = pytest.mark.realtime


def marked(n_blocks: int, start: int = 0) -> list[bytes]:
    """Capture blocks whose samples carry their block number (to check order and loss)."""
    return [array.array("h", [start + i + 1] * 4000).tobytes() for i in range(n_blocks)]


def test_a_full_spoken_exchange_with_a_tool_and_the_agent_hanging_up() -> None:
    scenario = fast_scenario(
        turns=(
            Turn(transcript="What can you do?", reply="I can help."),
            Turn(
                transcript="How is the kiosk?",
                reply="Status {result}.",
                tool=ScenarioToolCall(name="device_status"),
            ),
            Turn(transcript="Thanks, bye.", reply="Bye.", end_call=True),
        )
    )
    hooks = Hooks()
    with running(scenario) as emu:
        session, events = make_session(emu, tools=ToolRegistry(ToolsConfig(), hooks))
        sent = bytearray()
        n_blocks = 0
        with started(session):
            connected = events.wait_for(Connected)
            assert connected.output_format == connected.input_format == parse_format("pcm_16000")
            events.wait_for(AgentResponse, lambda e: e.text == "Hello.")
            for i, text in enumerate(("What can you do?", "How is the kiosk?", "Thanks, bye.")):
                wait_reply_played(emu, i)
                before = len(events.items)
                pcm = speak(session, text)
                sent += pcm
                n_blocks += len(list(blocks(pcm)))
                events.wait_for(UserTranscript, lambda e, t=text: e.text == t and not e.tentative)  # type: ignore[misc]
                assert len(events.items) > before
            ended = events.ended()
            sent_blocks = session.stats["audio_blocks_sent"]
        record = emu.wait_for_conversation_end(timeout_s=WAIT_S)

    assert ended.outcome is Outcome.AGENT_ENDED and ended.close_code == 1000
    assert "agent ended" in ended.message
    assert not record.violations, record.violations
    # Exactly what the device captured reached the agent, in order.
    assert sent_blocks == n_blocks
    assert record.user_audio_pcm == bytes(sent)
    # The agent's speech arrived complete: the device got every chunk the emulator sent.
    audio_events = events.of(AgentAudio)
    sent_chunks = [e for e in record.events if e["direction"] == "from_agent" and e["type"] == "audio"]
    assert len(audio_events) == len(sent_chunks) > 3
    assert all(e.fmt == parse_format("pcm_16000") for e in audio_events)
    # The tool ran on the device and its result was spoken.
    assert [type(e) for e in events.items if isinstance(e, (ToolCallStarted, ToolCallFinished))] == [
        ToolCallStarted,
        ToolCallFinished,
    ]
    assert not events.of(ToolCallFinished)[0].is_error
    replies = [e.text for e in events.of(AgentResponse)]
    assert replies[0] == "Hello." and replies[-1] == "Bye."
    assert any("listening" in r for r in replies), replies
    # Every ping was answered (the emulator measured a round trip for each).
    pings = events.of(Ping)
    assert pings and len(record.ping_rtts_ms) == len(pings)
    # SessionEnded is the last event, exactly once.
    assert isinstance(events.items[-1], SessionEnded) and len(events.of(SessionEnded)) == 1


def test_the_initiation_carries_overrides_variables_and_identity() -> None:
    scenario = fast_scenario(agent={"allowed_overrides": ("prompt", "first_message", "language", "voice_id")})
    with running(scenario) as emu:
        agent = agent_for(
            emu,
            prompt="You are the museum guide.",
            first_message="Welcome to the museum.",
            language="de",
            voice_id="voice_abc",
            user_id="visitor-42",
            location="Hall 2",
            dynamic_variables=types.MappingProxyType({"floor": 2, "open": True, "kiosk_id": "hall-2-left"}),
            custom_llm_extra_body=types.MappingProxyType({"temperature": 0.3}),
        )
        session, events = make_session(emu, agent=agent, hostname="kiosk-host")
        with started(session):
            events.wait_for(AgentResponse)
        record = emu.wait_for_conversation_end(timeout_s=WAIT_S)
    init = record.initiation
    assert init is not None
    assert init["conversation_config_override"] == {
        "agent": {"prompt": {"prompt": "You are the museum guide."}, "first_message": "Welcome to the museum.",
                  "language": "de"},
        "tts": {"voice_id": "voice_abc"},
    }
    assert init["dynamic_variables"] == {"kiosk_id": "hall-2-left", "location": "Hall 2", "floor": 2, "open": True}
    assert init["user_id"] == "visitor-42"
    assert init["custom_llm_extra_body"] == {"temperature": 0.3}
    assert init["source_info"]["source"] == "voice-appliance"
    assert events.of(AgentResponse)[0].text == "Welcome to the museum."
    assert not record.violations


def test_kiosk_id_defaults_to_the_hostname() -> None:
    with running() as emu:
        session, events = make_session(emu, hostname="kiosk-host-7")
        with started(session):
            events.wait_for(Connected)
        record = emu.wait_for_conversation_end(timeout_s=WAIT_S)
    assert record.initiation is not None
    assert record.initiation["dynamic_variables"] == {"kiosk_id": "kiosk-host-7"}


def test_an_override_the_agent_does_not_allow_is_a_misconfiguration() -> None:
    with running() as emu:  # allows first_message and language only
        session, events = make_session(emu, agent=agent_for(emu, prompt="Be a pirate."))
        with started(session):
            ended = events.ended()
    assert ended.outcome is Outcome.MISCONFIGURED and ended.close_code == 1008
    assert "prompt" in ended.detail and "Security settings" in ended.message
    assert not ended.outcome.retryable


def test_audio_captured_before_the_socket_opens_is_sent_first_and_in_order() -> None:
    with running() as emu:
        session, events = make_session(emu)
        early = marked(6)
        for b in early:
            session.send_audio(b, time.monotonic())
        with started(session):
            events.wait_for(Connected)
            later = marked(4, start=6)
            for b in later:
                session.send_audio(b, time.monotonic())
            assert emu.wait_until(lambda s: bool(s) and len(s[-1].user_audio_pcm) >= 80000, WAIT_S, "10 blocks")
        record = emu.wait_for_conversation_end(timeout_s=WAIT_S)
    assert record.user_audio_pcm == b"".join(early + later)
    assert session.stats["audio_blocks_dropped"] == 0
    assert session.stats["first_audio_sent_ms"] >= session.stats["connect_ms"]


def test_past_the_backlog_bound_the_oldest_audio_is_dropped_and_counted() -> None:
    with running() as emu:
        session, events = make_session(emu, session_cfg=SessionConfig(send_backlog_s=1.0))
        held = marked(12)  # 3 s held; the bound is 1 s = 4 blocks
        for b in held:
            session.send_audio(b, time.monotonic())
        assert session.stats["send_backlog_ms"] == 1000.0
        with started(session):
            events.wait_for(Connected)
            emu.wait_until(lambda s: bool(s) and len(s[-1].user_audio_pcm) >= 32000, WAIT_S, "4 blocks")
        record = emu.wait_for_conversation_end(timeout_s=WAIT_S)
    assert record.user_audio_pcm == b"".join(held[-4:])
    stats = session.stats
    assert stats["audio_blocks_dropped"] == 8 and stats["audio_dropped_ms"] == 2000.0
    assert stats["send_backlog_max_ms"] == 1000.0


def test_send_audio_never_blocks_even_when_nothing_drains() -> None:
    # No emulator at all: the session is never started, the outbox only fills.
    session, _ = make_session(None, agent=AgentConfig(agent_id="a", connection="public", base_url="http://127.0.0.1:9"))
    done = threading.Event()

    def flood() -> None:
        for _ in range(2000):  # 500 s of audio
            session.send_audio(bytes(8000), time.monotonic())
        done.set()

    t = threading.Thread(target=flood, name="flood")
    t.start()
    assert done.wait(WAIT_S)
    t.join(WAIT_S)
    assert session.stats["audio_blocks_dropped"] == 2000 - 40
    session.stop()


def test_control_messages_reach_the_agent() -> None:
    with running() as emu:
        session, events = make_session(emu)
        with started(session):
            first = events.wait_for(AgentAudio)
            wait_reply_played(emu, 0)
            session.send_contextual_update("The visitor is holding a map.")
            session.send_user_activity()
            session.send_feedback(first.event_id, like=True)
            session.send_user_message("What can you do?")
            events.wait_for(AgentResponse, lambda e: e.text == "I can help.")
        record = emu.wait_for_conversation_end(timeout_s=WAIT_S)
    assert not record.violations, record.violations
    assert messages_to_agent(record, "contextual_update")[0]["text"] == "The visitor is holding a map."
    assert len(messages_to_agent(record, "user_activity")) == 1
    assert messages_to_agent(record, "feedback")[0]["score"] == "like"
    assert messages_to_agent(record, "user_message")[0]["text"] == "What can you do?"


def test_sending_is_thread_safe() -> None:
    with running() as emu:
        session, events = make_session(emu)
        with started(session):
            events.wait_for(Connected)
            wait_reply_played(emu, 0)

            def writer(n: int) -> None:
                for i in range(20):
                    session.send_contextual_update(f"writer {n} update {i}")
                    session.send_audio(bytes(8000), time.monotonic())

            threads = [threading.Thread(target=writer, args=(n,), name=f"writer-{n}") for n in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(WAIT_S)
            emu.wait_until(
                lambda s: len(messages_to_agent(s[-1], "contextual_update")) >= 80, WAIT_S, "80 updates"
            )
        record = emu.wait_for_conversation_end(timeout_s=WAIT_S)
    assert not record.violations, record.violations
    texts = [m["text"] for m in messages_to_agent(record, "contextual_update")]
    for n in range(4):  # each writer's messages in its own order
        mine = [t for t in texts if t.startswith(f"writer {n} ")]
        assert mine == [f"writer {n} update {i}" for i in range(20)]


@pytest.mark.parametrize("output_format", SUPPORTED)
def test_every_announced_output_format_is_parsed_and_exposed(output_format: str) -> None:
    with running(fast_scenario(agent={"output_format": output_format})) as emu:
        session, events = make_session(emu)
        with started(session):
            connected = events.wait_for(Connected)
            audio = events.wait_for(AgentAudio)
    fmt = parse_format(output_format)
    assert connected.output_format == fmt and session.output_format == fmt
    assert audio.fmt == fmt and len(audio.audio) % fmt.bytes_per_frame == 0


@pytest.mark.parametrize("input_format", ["ulaw_8000", "pcm_8000", "pcm_22050", "pcm_48000"])
def test_user_audio_is_converted_to_the_announced_input_format(input_format: str) -> None:
    with running(fast_scenario(agent={"input_format": input_format})) as emu:
        session, events = make_session(emu)
        with started(session):
            events.wait_for(Connected)
            wait_reply_played(emu, 0)
            pcm = speak(session, "What can you do?")
            events.wait_for(UserTranscript, lambda e: e.text == "What can you do?")
            # The emulator decodes what it got at the announced rate: the duration is what was captured.
            fmt = parse_format(input_format)
            # (one stream: the resampler carries the fraction of a sample from block to block)
            expected_bytes = 2 * -(-sum(len(b) // 2 for b in blocks(pcm)) * fmt.rate_hz // 16000)
            emu.wait_until(lambda s: len(s[-1].user_audio_pcm) >= expected_bytes, WAIT_S, "all the audio")
        record = emu.wait_for_conversation_end(timeout_s=WAIT_S)
    assert session.input_format == fmt
    assert not record.violations, record.violations
    assert len(record.user_audio_pcm) == expected_bytes


# -- a scripted server for what the emulator never announces ---------------------------------


def test_an_unsupported_audio_format_ends_the_session_with_a_clear_error() -> None:
    def script(ws: ServerConnection) -> None:
        ws.recv(timeout=WAIT_S)  # the initiation
        ws.send(
            json.dumps(
                {
                    "type": "conversation_initiation_metadata",
                    "conversation_initiation_metadata_event": {
                        "conversation_id": "c1",
                        "agent_output_audio_format": "mp3_44100_128",
                        "user_input_audio_format": "pcm_16000",
                    },
                }
            )
        )
        for _ in ws:
            pass

    server, port, thread, closes = scripted(script)
    try:
        agent = AgentConfig(agent_id="a", connection="public", base_url=f"http://127.0.0.1:{port}")
        session, events = make_session(None, agent=agent, key=None)
        with started(session):
            ended = events.ended()
    finally:
        server.shutdown()
        thread.join(WAIT_S)
    assert ended.outcome is Outcome.PROTOCOL and ended.close_code == 1003
    assert "mp3_44100_128" in ended.detail and "ElevenLabs dashboard" in ended.detail
    assert closes == [1003]
    assert not events.of(Connected)


def test_a_flood_of_malformed_messages_is_counted_logged_once_and_survived(caplog: pytest.LogCaptureFixture) -> None:
    def script(ws: ServerConnection) -> None:
        ws.recv(timeout=WAIT_S)
        ws.send(json.dumps({
            "type": "conversation_initiation_metadata",
            "conversation_initiation_metadata_event": {
                "conversation_id": "c", "agent_output_audio_format": "pcm_16000",
                "user_input_audio_format": "pcm_16000"},
        }))
        for i in range(50):
            ws.send("{not json" if i % 2 else json.dumps({"type": "audio", "audio_event": {"event_id": 1}}))
        ws.send(json.dumps({"type": "agent_response", "agent_response_event": {"agent_response": "still here"}}))
        for _ in ws:
            pass

    server, port, thread, _ = scripted(script)
    try:
        agent = AgentConfig(agent_id="a", connection="public", base_url=f"http://127.0.0.1:{port}")
        session, events = make_session(None, agent=agent, key=None)
        with caplog.at_level("WARNING", logger="device.drivers.session"), started(session):
            events.wait_for(AgentResponse, lambda e: e.text == "still here")
    finally:
        server.shutdown()
        thread.join(WAIT_S)
    stats = session.stats
    assert stats["malformed_messages"] == 50
    assert stats["malformed_bad_json"] == 25 and stats["malformed_missing_field"] == 25
    warnings = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert len(warnings) == 2, "one line per kind, the rest counted"
    assert events.ended().outcome is Outcome.LOCAL
