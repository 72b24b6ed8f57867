"""Whole conversations with the emulator over a real socket, driven by a plain WebSocket client."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import threading
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import webrtcvad
from websockets.sync.client import connect

from device.emulator import ConversationRecord, Emulator, ProtocolClient, Scenario, ToolCall, Turn, default_scenario
from device.emulator import pcm as pcmlib
from device.emulator.scenario import load_scenario
from device.emulator.speech import Synthesizer

pytestmark = pytest.mark.realtime

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "scenarios"
BLOCK = 8000
# Fast, quiet settings: audio is pushed faster than real time here, so the rate rule is off
# except where a test is about it.
FAST = {
    "speed": 20.0,
    "response_delay_ms": 50,
    "end_of_turn_silence_ms": 400,
    "ping_interval_s": 0,
    "turn_timeout_s": 0,
}
TURNS = (
    Turn(transcript="What can you do?", reply="I can help."),
    Turn(transcript="How is the kiosk?", reply="Status: {result}.", tool=ToolCall(name="device_status")),
    Turn(transcript="Bye.", reply="Goodbye!", end_call=True),
)


def scenario(**changes: Any) -> Scenario:
    timing = {**FAST, **changes.pop("timing", {})}
    strict = {"audio_rate_factor": 0, **changes.pop("strict", {})}
    base = {"agent": {"first_message": "Hi there."}, "turns": TURNS}
    base.update(changes)
    return default_scenario().with_changes(timing=timing, strict=strict, **base)


@pytest.fixture(scope="module")
def speech() -> bytes:
    return Synthesizer("auto").pcm("Could you tell me what is on show in the museum today?", 16000)


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[Emulator]:
    e = Emulator(scenario(), speech="tone", record_dir=tmp_path / "rec").start()
    try:
        yield e
    finally:
        e.stop()


def signed_url(emu: Emulator) -> str:
    r = requests.get(
        f"{emu.base_url}/v1/convai/conversation/get-signed-url",
        params={"agent_id": emu.agent_id},
        headers={"xi-api-key": "emulator-key"},
        timeout=5,
    )
    r.raise_for_status()
    return str(r.json()["signed_url"])


def silence(seconds: float, rate_hz: int = 16000) -> bytes:
    return bytes(2 * int(seconds * rate_hz))


def all_sent(c: ProtocolClient, emu: Emulator, turn: int) -> float:
    """Wait until reply ``turn`` has been sent and read; returns when it would finish playing."""

    def sent(recs: list[ConversationRecord]) -> bool:
        t = recs[-1].turns[turn] if recs and len(recs[-1].turns) > turn else None
        return t is not None and t.chunks_total > 0 and t.chunks_sent == t.chunks_total

    end = emu.wait_until(sent, 10, f"reply {turn} fully sent")[-1].turns[turn].reply_play_end_t_s
    assert end is not None
    while c.recv(0.1) is not None:  # drain what is on its way
        pass
    return end


def play_out(c: ProtocolClient, emu: Emulator, turn: int) -> None:
    """Keep reading until reply ``turn`` would have finished playing on a real device."""
    end = all_sent(c, emu, turn)
    while time.monotonic() < end + 0.05:
        c.recv(max(0.0, end + 0.05 - time.monotonic()))


def test_a_whole_conversation_with_a_tool_call(emu: Emulator, speech: bytes) -> None:
    sent_audio = b""
    with ProtocolClient(signed_url(emu)) as c:
        c.send_init(dynamic_variables={"kiosk_id": "kiosk-7"}, source_info={"source": "test", "version": "1"})
        meta = c.recv_until("conversation_initiation_metadata")["conversation_initiation_metadata_event"]
        assert c.recv_until("agent_response")["agent_response_event"]["agent_response"] == "Hi there."
        play_out(c, emu, 0)
        for n, turn in enumerate(TURNS, start=1):
            audio = speech + silence(0.6)
            c.stream_audio(audio)
            sent_audio += audio
            assert c.recv_until("user_transcript")["user_transcription_event"]["user_transcript"] == turn.transcript
            if turn.tool is not None:
                call = c.recv_until("client_tool_call")["client_tool_call"]
                assert call["tool_name"] == "device_status"
                c.send(
                    {
                        "type": "client_tool_result",
                        "tool_call_id": call["tool_call_id"],
                        "result": "all fine",
                        "is_error": False,
                    }
                )
            response = c.recv_until("agent_response")["agent_response_event"]["agent_response"]
            assert response == turn.reply.replace("{result}", "all fine")
            if not turn.end_call:
                play_out(c, emu, n)
        c.recv_until_closed(10)
        assert (c.close_code, c.close_reason) == (1000, "Agent ended the conversation")
        ids = [m["audio_event"]["event_id"] for m in c.of_type("audio")]
        assert ids == sorted(ids)
        assert len(set(ids)) == 4  # one increasing id per reply

    rec = emu.wait_for_conversation_end(timeout_s=5)
    assert rec.conversation_id == meta["conversation_id"]
    assert rec.violations == []
    assert rec.closed_by == "server"
    assert rec.close_code == 1000
    assert [t.trigger for t in rec.turns] == ["first_message", "speech", "speech", "speech"]
    assert rec.turns[2].tool_calls[0].result == "all fine"
    assert rec.initiation is not None
    assert rec.initiation["dynamic_variables"] == {"kiosk_id": "kiosk-7"}
    assert rec.user_audio_pcm == sent_audio
    # The recording: an event log with audio summarised, and exactly the audio that arrived.
    assert rec.events_path is not None
    assert rec.wav_path is not None
    log = json.loads(rec.events_path.read_text())
    assert log["conversation_id"] == rec.conversation_id
    assert log["close_code"] == 1000
    chunk = next(e for e in log["events"] if e["type"] == "user_audio_chunk")
    assert set(chunk) == {"t_s", "direction", "type", "bytes", "duration_ms", "peak"}
    assert all("audio_base_64" not in json.dumps(e) for e in log["events"])
    with wave.open(str(rec.wav_path)) as w:
        assert w.readframes(w.getnframes()) == sent_audio


class CountingSynth(Synthesizer):
    """The tone voice, noting each text it had to synthesise (a cache miss)."""

    def __init__(self) -> None:
        super().__init__("tone")
        self.made: list[str] = []

    def _make(self, text: str, rate_hz: int) -> bytes:
        self.made.append(text)
        return super()._make(text, rate_hz)


def test_render_replies_synthesises_the_scripted_replies_at_start(speech: bytes) -> None:
    """The bench's emulator: a reply starts when the scenario says, not after espeak-ng and the resampler."""
    synth = CountingSynth()
    sc = scenario()
    with Emulator(sc, synthesizer=synth, render_replies=True) as emu:
        opening = [t for t in ("Hi there.", sc.agent.reprompt) if t.strip()]
        assert synth.made == [*opening, "I can help.", "Goodbye!"]  # "Status: {result}." waits for the tool
        synth.made.clear()
        with ProtocolClient(signed_url(emu)) as c:
            c.send_init()
            c.recv_until("agent_response")
            for turn in TURNS:
                c.stream_audio(speech + silence(0.6))
                if turn.tool is not None:
                    call = c.recv_until("client_tool_call")["client_tool_call"]
                    c.send({"type": "client_tool_result", "tool_call_id": call["tool_call_id"], "result": "ok",
                            "is_error": False})
                c.recv_until("agent_response")
                if not turn.end_call:
                    c.recv_until("audio")
            c.recv_until_closed(10)
        assert synth.made == ["Status: ok."]  # the only reply synthesised during the conversation
    with Emulator(scenario(), synthesizer=(plain := CountingSynth())):
        assert plain.made == opening  # without render_replies, as before: the opening lines only


def test_interruption_over_the_socket(tmp_path: Path, speech: bytes) -> None:
    long = (
        "This answer is long on purpose, so that there is plenty of time to talk over it "
        "while it is still playing on the kiosk's speaker."
    )
    sc = scenario(agent={"first_message": long}, timing={"speed": 1.0})
    with Emulator(sc, speech="tone") as emu, ProtocolClient(emu.signed_url()) as c:
        c.send_init()
        c.recv_until("audio")
        c.stream_audio(speech[: 3 * BLOCK])
        interruption = c.recv_until("interruption")
        assert interruption == {"type": "interruption", "interruption_event": {"event_id": 1}}
        cut = len(c.received)
        c.stream_audio(speech[3 * BLOCK :] + silence(0.6))
        c.recv_until("agent_response")
        play_out(c, emu, 1)
        later = [m for m in c.received[cut:] if m["type"] == "audio"]
        # The next reply reuses the interrupted id: a client dropping "<=" would go silent here.
        assert later
        assert {m["audio_event"]["event_id"] for m in later} == {1}
        new_reply = Synthesizer("tone").render(TURNS[0].reply, sc.agent.output)
        assert b"".join(base64.b64decode(m["audio_event"]["audio_base_64"]) for m in later) == new_reply
    rec = emu.conversations[0]
    assert rec.turns[0].interrupted
    assert rec.turns[0].interrupted_t_s is not None
    assert rec.turns[0].chunks_sent < rec.turns[0].chunks_total


def test_pings_and_measured_round_trips(speech: bytes) -> None:
    with Emulator(scenario(timing={"ping_interval_s": 0.1}), speech="tone") as emu:
        with ProtocolClient(emu.signed_url()) as c:
            c.send_init()
            for _ in range(3):
                c.recv_until("ping")
            pings = [m["ping_event"] for m in c.of_type("ping")]
            assert pings[0]["ping_ms"] is None
            assert isinstance(pings[2]["ping_ms"], int)
            assert pings[2]["ping_ms"] >= 0
            assert len({p["event_id"] for p in pings}) == 3
        rec = emu.wait_for_conversation_end(timeout_s=5)
        assert len(rec.ping_rtts_ms) >= 2
        assert rec.violations == []


def test_a_client_that_ignores_pings_is_reported() -> None:
    with Emulator(scenario(timing={"ping_interval_s": 0.1, "pong_timeout_s": 0.2}), speech="tone") as emu:
        with ProtocolClient(emu.signed_url(), auto_pong=False) as c:
            c.send_init()
            c.recv_until("ping")
            emu.wait_until(lambda rs: any(v.rule == "pong_missing" for v in rs[0].violations), 5, "pong_missing")
        assert "no pong for ping" in emu.violations[0].detail


def test_audio_faster_than_real_time_is_reported(emu: Emulator) -> None:
    with Emulator(scenario(strict={"audio_rate_factor": 1.5, "audio_burst_s": 2.0}), speech="tone") as emu2:
        with ProtocolClient(emu2.signed_url()) as c:
            c.send_init()
            c.stream_audio(silence(10))
        rec = emu2.wait_for_conversation_end(timeout_s=5)
        assert [v.rule for v in rec.violations] == ["audio_rate"]


def test_a_closed_gate_sends_only_zeros_and_the_record_proves_it(emu: Emulator) -> None:
    with ProtocolClient(emu.signed_url()) as c:
        c.send_init()
        c.stream_audio(silence(2))
    rec = emu.wait_for_conversation_end(timeout_s=5)
    assert rec.user_audio_pcm == silence(2)
    assert pcmlib.peak(rec.user_audio_pcm) == 0
    chunks = rec.events_of("user_audio_chunk", "to_agent")
    assert len(chunks) == 8
    assert {e["peak"] for e in chunks} == {0}
    assert [t.trigger for t in rec.turns] == ["first_message"]


def test_several_conversations_in_a_row(emu: Emulator) -> None:
    for n in range(3):
        with ProtocolClient(emu.signed_url()) as c:
            c.send_init()
            c.recv_until("agent_response")
        assert emu.wait_for_conversation_end(n, timeout_s=5).index == n
    records = emu.conversations
    assert [r.index for r in records] == [0, 1, 2]
    assert len({r.conversation_id for r in records}) == 3
    assert all(r.closed_by == "client" and r.close_code == 1000 for r in records)


def test_several_conversations_at_once(emu: Emulator) -> None:
    clients = [ProtocolClient(emu.signed_url()) for _ in range(4)]
    try:
        for c in clients:
            c.send_init()
        ids = {
            c.recv_until("conversation_initiation_metadata")["conversation_initiation_metadata_event"][
                "conversation_id"
            ]
            for c in clients
        }
        for c in clients:
            c.recv_until("agent_response")
        names = [t.name for t in threading.enumerate()]
        assert sum(1 for n in names if n.startswith("emulator-conn-")) == 4
    finally:
        for c in clients:
            c.close()
    for i in range(4):
        emu.wait_for_conversation_end(i, timeout_s=5)
    assert {r.conversation_id for r in emu.conversations} == ids


def test_stop_closes_conversations_joins_threads_and_frees_the_port() -> None:
    emu = Emulator(scenario(), speech="tone").start()
    port = emu.port
    clients = [ProtocolClient(emu.signed_url()) for _ in range(2)]
    try:
        for c in clients:
            c.send_init()
            c.recv_until("agent_response")
        emu.stop()
        for c in clients:
            c.recv_until_closed(5)
            assert c.close_code == 1011  # the document lists no 1001
    finally:
        for c in clients:
            c.close()
    emu.stop()  # idempotent
    assert not [t for t in threading.enumerate() if t.name.startswith("emulator-")]
    assert all(r.ended and r.close_code == 1011 for r in emu.conversations)
    with Emulator(scenario(), port=port, speech="tone") as again:  # the port is free to listen on again
        assert again.port == port


def test_stop_does_not_hang_on_a_client_that_stopped_reading() -> None:
    # A frozen kiosk: connected, then never reads again. The emulator's sender blocks in
    # sendall() once the socket buffers are full (the reply is ~7 MB of base64, far more
    # than they hold); stop() must still close it, join its thread and free the port.
    sc = scenario(
        agent={"first_message": " ".join(["word"] * 500), "public": True}, timing={"speed": 1000.0}
    )
    emu = Emulator(sc, speech="tone").start()
    sock = socket.create_connection(("127.0.0.1", emu.port), timeout=5)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # no receive-window autotuning
    ws = connect(emu.public_url(), sock=sock, compression=None, max_queue=1, ping_interval=None, legacy=True)
    stopper = threading.Thread(target=emu.stop, name="test-emulator-stopper")
    stuck = False
    try:
        ws.send(json.dumps({"type": "conversation_initiation_client_data"}))

        emu.wait_until(lambda rs: bool(rs and rs[0].turns and rs[0].turns[0].chunks_sent), 20, "the reply")
        threading.Event().wait(1.0)  # every chunk is due after 0.3 s: long enough for the sender to stall
        turn = emu.conversations[0].turns[0]
        assert turn.chunks_sent < turn.chunks_total, "precondition: the sender is blocked on the socket"
        stopper.start()
        stopper.join(10)
        stuck = stopper.is_alive()
    finally:
        ws.close_socket()  # frees a stuck emulator either way
        if stopper.ident is not None:
            stopper.join(10)
        emu.stop()
    assert not stuck, "Emulator.stop() hung on a client that does not read"
    rec = emu.conversations[0]
    assert rec.ended
    assert rec.closed_by == "server"
    with Emulator(scenario(), port=emu.port, speech="tone") as again:  # the port is free again
        assert again.port == emu.port


def test_waiting_for_a_conversation_that_never_comes_times_out(emu: Emulator) -> None:
    with pytest.raises(TimeoutError, match="end of conversation"):
        emu.wait_for_conversation_end(timeout_s=0.2)


def test_a_telephony_agent_speaks_and_hears_ulaw(speech: bytes) -> None:
    sc = load_scenario(EXAMPLES / "telephony_ulaw.toml").with_changes(timing=FAST, strict={"audio_rate_factor": 0})
    with Emulator(sc, speech="tone") as emu, ProtocolClient(emu.public_url()) as c:
        c.send_init()
        meta = c.recv_until("conversation_initiation_metadata")["conversation_initiation_metadata_event"]
        assert meta["agent_output_audio_format"] == meta["user_input_audio_format"] == "ulaw_8000"
        c.recv_until("agent_response")
        all_sent(c, emu, 0)
        heard = pcmlib.ulaw_decode(c.audio_bytes(1))
        assert len(heard) == 2 * round(8000 * emu.conversations[0].turns[0].reply_audio_s)
        assert pcmlib.peak(heard) > 3000
        c.stream_audio(pcmlib.ulaw_encode(pcmlib.resample(speech + silence(0.6), 16000, 8000)), chunk_bytes=2000)
        transcript = c.recv_until("user_transcript")["user_transcription_event"]["user_transcript"]
        assert transcript == sc.turns[0].transcript


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_the_agent_speaks_with_espeak() -> None:
    with Emulator(scenario(), speech="auto") as emu, ProtocolClient(emu.signed_url()) as c:
        assert emu.synthesizer.backend == "espeak"
        c.send_init()
        c.recv_until("agent_response")
        play_out(c, emu, 0)
        audio = c.audio_bytes(1)
    vad = webrtcvad.Vad(2)
    frames = [audio[i : i + 960] for i in range(0, len(audio) - 960, 960)]
    assert sum(vad.is_speech(f, 16000) for f in frames) / len(frames) > 0.4


@pytest.mark.contract_exempt  # sends an unknown type on purpose
def test_a_long_running_emulator_keeps_the_latest_records_and_every_violation() -> None:
    with Emulator(scenario(), speech="tone", keep_conversations=2) as emu:
        for n in range(4):
            with ProtocolClient(emu.signed_url()) as c:
                c.send_init()
                if n == 0:
                    c.send({"type": "shout"})
                c.recv_until("agent_response")
            assert emu.wait_for_conversation_end(n, timeout_s=5).index == n
        assert [r.index for r in emu.conversations] == [2, 3]
        assert (emu.conversations_started, emu.conversations_ended) == (4, 4)
        assert [v.rule for v in emu.violations] == ["unknown_type"]
