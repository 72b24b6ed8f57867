"""The conversation state machine, driven with a hand-moved clock and real webrtcvad."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from device.core.audioformat import SUPPORTED, parse_format
from device.core.errors import ConfigError
from device.emulator.conversation import Action, Close, Conversation, Drop, Send, SendRaw
from device.emulator.recording import ConversationRecord
from device.emulator.scenario import (
    DEFAULT_CLIENT_EVENTS,
    ERROR_TYPE_CODES,
    QUOTA_REASON,
    Scenario,
    ToolCall,
    Turn,
    default_scenario,
    parse_fault_spec,
)
from device.emulator.speech import Synthesizer

INIT = "conversation_initiation_client_data"
BLOCK = 8000  # 250 ms of 16 kHz PCM: what the device sends


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, start_s: float = 1000.0) -> None:
        self.now_s = start_s

    def __call__(self) -> float:
        return self.now_s

    def advance(self, delta_s: float) -> float:
        self.now_s += delta_s
        return self.now_s


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


QUIET = {"ping_interval_s": 0, "turn_timeout_s": 0, "inactivity_timeout_s": 0, "max_duration_s": 0}


class Harness:
    """A conversation plus everything it said, on a fake clock."""

    def __init__(self, clock: FakeClock, synth: Synthesizer, scenario: Scenario) -> None:
        self.clock = clock
        self.synth = synth
        self.scenario = scenario
        self.record = ConversationRecord(
            "conv_0123456789abcdef",
            scenario.agent.agent_id,
            0,
            clock(),
            scenario.agent.input_format,
            scenario.agent.output_format,
        )
        self.conv = Conversation(scenario, self.record, render=synth.render, clock=clock, seed=0)
        self.actions: list[tuple[float, Action]] = []
        self._take(self.conv.open())

    def _take(self, actions: list[Action]) -> list[Action]:
        self.actions += [(self.clock(), a) for a in actions]
        return actions

    # -- the client's side ---------------------------------------------------
    def send(self, msg: dict[str, Any] | str | bytes) -> list[Action]:
        data = msg if isinstance(msg, (str, bytes)) else json.dumps(msg)
        return self._take(self.conv.receive(data))

    def init(self, **fields: Any) -> list[Action]:
        return self.send({"type": INIT, **fields})

    def audio(self, pcm: bytes) -> list[Action]:
        return self.send({"user_audio_chunk": base64.b64encode(pcm).decode()})

    def speak(self, pcm: bytes, block: int = BLOCK) -> None:
        """Send ``pcm`` in blocks at real time (on the fake clock), ticking in between."""
        for i in range(0, len(pcm), block):
            piece = pcm[i : i + block]
            self.audio(piece)
            self.run(len(piece) / 2 / self.scenario.agent.input.rate_hz)

    def silence(self, seconds: float) -> None:
        self.speak(bytes(2 * int(seconds * self.scenario.agent.input.rate_hz)))

    def run(self, seconds: float, step_s: float = 0.01) -> None:
        """Let time pass, waking the conversation at its deadlines (and every step)."""
        end = self.clock() + seconds
        while self.clock() < end and not self.conv.closed:
            deadline = self.conv.next_deadline_s()
            nxt = min(end, self.clock() + step_s, deadline if deadline is not None else end)
            self.clock.now_s = max(nxt, self.clock())
            self._take(self.conv.tick())
            if nxt == end:
                break

    # -- what the agent did --------------------------------------------------
    def messages(self, type_: str | None = None) -> list[dict[str, Any]]:
        return [
            a.message for _, a in self.actions if isinstance(a, Send) and (type_ is None or a.message["type"] == type_)
        ]

    def timed(self, type_: str) -> list[tuple[float, dict[str, Any]]]:
        return [(t, a.message) for t, a in self.actions if isinstance(a, Send) and a.message["type"] == type_]

    def types(self) -> list[str]:
        return [a.message["type"] if isinstance(a, Send) else type(a).__name__ for _, a in self.actions]

    def audio_of(self, event_id: int) -> bytes:
        return b"".join(
            base64.b64decode(m["audio_event"]["audio_base_64"])
            for m in self.messages("audio")
            if m["audio_event"]["event_id"] == event_id
        )

    def closes(self) -> list[Close]:
        return [a for _, a in self.actions if isinstance(a, Close)]

    def rules(self) -> list[str]:
        return [v.rule for v in self.record.violations]


def harness(clock: FakeClock, synth: Synthesizer, scenario: Scenario | None = None, **changes: Any) -> Harness:
    sc = scenario or default_scenario()
    changes["timing"] = {**QUIET, **changes.get("timing", {})}
    return Harness(clock, synth, sc.with_changes(**changes))


# -- start of a conversation ---------------------------------------------------------


@pytest.mark.parametrize("fmt", SUPPORTED)
def test_metadata_then_the_first_message_in_the_agents_format(
    clock: FakeClock, tone_synth: Synthesizer, fmt: str
) -> None:
    h = harness(clock, tone_synth, agent={"output_format": fmt, "input_format": fmt})
    h.init()
    meta = h.messages()[0]
    assert meta == {
        "type": "conversation_initiation_metadata",
        "conversation_initiation_metadata_event": {
            "conversation_id": "conv_0123456789abcdef",
            "agent_output_audio_format": fmt,
            "user_input_audio_format": fmt,
        },
    }
    assert h.types()[1:3] == ["audio", "agent_response"]  # the text comes with the first audio
    h.run(20)
    expected = tone_synth.render(h.scenario.agent.first_message, parse_format(fmt))
    assert h.audio_of(1) == expected
    assert h.messages("agent_response")[0]["agent_response_event"]["agent_response"] == h.scenario.agent.first_message


def test_chunks_vary_in_size_and_arrive_faster_than_real_time(clock: FakeClock, tone_synth: Synthesizer) -> None:
    h = harness(clock, tone_synth, timing={"speed": 4.0})
    start = clock()
    h.init()
    h.run(20)
    fmt = h.scenario.agent.output
    chunks = h.timed("audio")
    sizes = [len(base64.b64decode(m["audio_event"]["audio_base_64"])) for _, m in chunks]
    assert len(set(sizes)) > 3 and all(s % 2 == 0 for s in sizes)
    assert all(m["audio_event"]["event_id"] == 1 for _, m in chunks)
    offset = 0
    for (t, _), size in zip(chunks, sizes, strict=True):
        # Never ahead of its place at 4× real time, never much behind it.
        assert t - start >= fmt.duration_s(offset) / 4 - 1e-9
        assert t - start <= fmt.duration_s(offset) / 4 + 0.011
        offset += size
    total_s = fmt.duration_s(offset)
    assert chunks[-1][0] - start < total_s / 3
    turn = h.record.turns[0]
    assert turn.trigger == "first_message" and turn.chunks_sent == turn.chunks_total == len(chunks)
    assert turn.reply_play_end_t_s == pytest.approx(start + total_s)


def test_allowed_override_changes_the_first_message(clock: FakeClock, tone_synth: Synthesizer) -> None:
    h = harness(clock, tone_synth)
    h.init(
        conversation_config_override={"agent": {"first_message": "Welcome, visitor.", "language": "de"}},
        dynamic_variables={"kiosk_id": "k1", "floor": 2, "open": True},
        user_id="u1",
        source_info={"source": "voice-appliance", "version": "1.0"},
    )
    assert h.messages("agent_response")[0]["agent_response_event"]["agent_response"] == "Welcome, visitor."
    assert h.record.initiation is not None and h.record.initiation["user_id"] == "u1"
    assert h.rules() == []


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"agent": {"prompt": {"prompt": "Be terse."}}}, "prompt"),
        ({"tts": {"voice_id": "abc"}}, "voice_id"),
        ({"agent": {"temperature": 2}}, "agent.temperature"),
    ],
)
def test_overrides_the_agent_does_not_allow_close_the_socket(
    clock: FakeClock, tone_synth: Synthesizer, override: dict[str, Any], field: str
) -> None:
    h = harness(clock, tone_synth)
    h.init(conversation_config_override=override)
    reason = f"Override for field '{field}' is not allowed by config."
    assert h.closes() == [Close(1008, reason)]
    error = {"code": 1008, "message": reason, "error_type": "override_error", "reason": "override_error"}
    assert h.messages() == [{"type": "error", "error_event": error}]  # and no metadata


def test_without_a_first_message_the_agent_waits(
    clock: FakeClock, tone_synth: Synthesizer, user_speech_16k: bytes
) -> None:
    h = harness(clock, tone_synth, agent={"first_message": ""})
    h.init()
    h.silence(1)
    assert h.messages("audio") == []
    h.speak(user_speech_16k)
    h.silence(1.5)
    assert h.messages("user_transcript")
    assert h.messages("audio")


# -- turns -------------------------------------------------------------------------------


def test_a_user_turn_gets_transcript_and_reply(
    clock: FakeClock, tone_synth: Synthesizer, user_speech_16k: bytes
) -> None:
    events = (*DEFAULT_CLIENT_EVENTS, "vad_score")
    h = harness(
        clock,
        tone_synth,
        agent={"client_events": events},
        timing={"response_delay_ms": 400, "end_of_turn_silence_ms": 700},
    )
    h.init()
    h.run(10)  # the greeting plays out
    h.silence(0.5)
    h.speak(user_speech_16k)
    h.silence(2.0)
    turn0 = h.scenario.turns[0]
    assert h.messages("user_transcript") == [
        {"type": "user_transcript", "user_transcription_event": {"user_transcript": turn0.transcript, "event_id": 2}}
    ]
    tentative = h.messages("tentative_user_transcript")
    assert len(tentative) == 1
    assert turn0.transcript.startswith(tentative[0]["tentative_user_transcription_event"]["user_transcript"])
    scores = [m["vad_score_event"]["vad_score"] for m in h.messages("vad_score")]
    assert max(scores) > 0.5 and min(scores) == 0.0
    h.run(10)
    assert h.audio_of(2) == tone_synth.render(turn0.reply, h.scenario.agent.output)
    turn = h.record.turns[1]
    assert turn.trigger == "speech" and turn.user_transcript == turn0.transcript
    assert turn.speech_start_t_s is not None and turn.speech_end_t_s is not None
    assert turn.turn_end_t_s is not None and turn.reply_first_audio_sent_t_s is not None
    assert turn.speech_start_t_s < turn.speech_end_t_s < turn.turn_end_t_s
    assert turn.turn_end_t_s - turn.speech_end_t_s == pytest.approx(0.7, abs=0.26)
    assert turn.reply_first_audio_sent_t_s - turn.turn_end_t_s == pytest.approx(0.4, abs=0.011)
    assert turn.speech_s == pytest.approx(len(user_speech_16k) / 32000, abs=0.8)


def test_a_turn_without_transcript_gets_a_description(
    clock: FakeClock, tone_synth: Synthesizer, user_speech_16k: bytes
) -> None:
    h = harness(clock, tone_synth, agent={"first_message": ""}, turns=(Turn(reply="Okay."),))
    h.init()
    h.speak(user_speech_16k)
    h.silence(1.5)
    text = h.messages("user_transcript")[0]["user_transcription_event"]["user_transcript"]
    assert text.startswith("[") and "s of speech]" in text


def test_zeros_from_a_closed_gate_are_never_a_turn(clock: FakeClock, tone_synth: Synthesizer) -> None:
    h = harness(clock, tone_synth)
    h.init()
    h.silence(15)
    assert h.messages("interruption") == [] and h.messages("user_transcript") == []
    assert [t.trigger for t in h.record.turns] == ["first_message"]


def test_turns_run_in_order_and_the_last_one_hangs_up(
    clock: FakeClock, tone_synth: Synthesizer, user_speech_16k: bytes
) -> None:
    turns = (Turn(transcript="one", reply="First."), Turn(transcript="two", reply="Bye.", end_call=True))
    h = harness(clock, tone_synth, turns=turns)
    h.init()
    h.run(10)
    for _ in turns:
        h.speak(user_speech_16k)
        h.silence(1.0)
    h.run(10)
    assert [m["user_transcription_event"]["user_transcript"] for m in h.messages("user_transcript")] == ["one", "two"]
    assert h.closes() == [Close(1000, "Agent ended the conversation")]
    # It hangs up only once the goodbye would have finished playing.
    bye = h.record.turns[-1]
    close_t = next(t for t, a in h.actions if isinstance(a, Close))
    assert bye.reply_play_end_t_s is not None and close_t >= bye.reply_play_end_t_s


@pytest.mark.parametrize(
    ("after_last", "expected"),
    [
        ("cycle", ["one", "two", "one"]),
        ("repeat_last", ["one", "two", "two"]),
    ],
)
def test_when_turns_run_out(
    clock: FakeClock, tone_synth: Synthesizer, user_speech_16k: bytes, after_last: str, expected: list[str]
) -> None:
    turns = (Turn(transcript="one", reply="A."), Turn(transcript="two", reply="B."))
    h = harness(clock, tone_synth, turns=turns, agent={"after_last_turn": after_last, "first_message": ""})
    h.init()
    for _ in range(3):
        h.speak(user_speech_16k)
        h.silence(1.0)
        h.run(10)
    assert [m["user_transcription_event"]["user_transcript"] for m in h.messages("user_transcript")] == expected


def test_after_the_last_turn_the_agent_may_hang_up(
    clock: FakeClock, tone_synth: Synthesizer, user_speech_16k: bytes
) -> None:
    h = harness(
        clock, tone_synth, turns=(Turn(reply="A."),), agent={"after_last_turn": "end_call", "first_message": ""}
    )
    h.init()
    for _ in range(2):
        h.speak(user_speech_16k)
        h.silence(1.0)
        h.run(15)
    assert h.closes() and h.closes()[0].code == 1000


def test_typed_user_message_gets_a_reply(clock: FakeClock, tone_synth: Synthesizer) -> None:
    h = harness(clock, tone_synth, timing={"response_delay_ms": 100})
    h.init()
    h.send({"type": "user_message", "text": "What is on today?"})
    # The greeting was still playing: a typed turn interrupts it.
    assert h.messages("interruption") == [{"type": "interruption", "interruption_event": {"event_id": 1}}]
    h.run(1)
    assert h.record.turns[1].trigger == "user_message"
    assert h.record.turns[1].user_transcript == "What is on today?"
    assert h.record.turns[1].reply_text == h.scenario.turns[0].reply


# -- interruption --------------------------------------------------------------------------

LONG = (
    "This is a long answer about the history of the building, the people who worked in it, "
    "the collections it has held and the many changes it has seen over a hundred years."
)


@pytest.mark.parametrize("reuse", [True, False])
def test_speech_during_playback_interrupts(
    clock: FakeClock, tone_synth: Synthesizer, user_speech_16k: bytes, reuse: bool
) -> None:
    h = harness(
        clock,
        tone_synth,
        agent={
            "first_message": LONG,
            "reuse_event_id_after_interruption": reuse,
            "client_events": (*DEFAULT_CLIENT_EVENTS, "agent_response_correction"),
        },
        timing={"speed": 1.0},
    )
    h.init()
    h.silence(1.0)
    assert h.messages("interruption") == []
    h.speak(user_speech_16k[: BLOCK * 3])
    assert h.messages("interruption") == [{"type": "interruption", "interruption_event": {"event_id": 1}}]
    cut = len(h.actions)
    h.speak(user_speech_16k[BLOCK * 3 :])
    h.silence(1.5)
    h.run(10)
    after = [a.message for _, a in h.actions[cut:] if isinstance(a, Send) and a.message["type"] == "audio"]
    new_id = 1 if reuse else 2
    # Nothing more of the old reply; the new one comes with the reused (or next) id.
    assert after and all(m["audio_event"]["event_id"] == new_id for m in after)
    full = tone_synth.render(LONG, h.scenario.agent.output)
    sent_before = b"".join(
        base64.b64decode(m["audio_event"]["audio_base_64"])
        for _, a in h.actions[:cut]
        if isinstance(a, Send)
        for m in [a.message]
        if m["type"] == "audio"
    )
    assert 0 < len(sent_before) < len(full) / 2
    correction = h.messages("agent_response_correction")[0]["agent_response_correction_event"]
    assert correction["original_agent_response"] == LONG
    assert LONG.startswith(correction["corrected_agent_response"])
    assert len(correction["corrected_agent_response"]) < len(LONG) / 2
    assert h.record.turns[0].interrupted and not h.record.turns[1].interrupted
    assert h.record.turns[1].event_id == new_id


def test_speech_after_the_reply_finished_playing_does_not_interrupt(
    clock: FakeClock, tone_synth: Synthesizer, user_speech_16k: bytes
) -> None:
    h = harness(clock, tone_synth, timing={"speed": 50.0})
    h.init()
    h.run(0.5)  # everything sent (50× real time) but still playing on the client
    assert h.record.turns[0].chunks_sent == h.record.turns[0].chunks_total
    h.speak(user_speech_16k[: BLOCK * 2])
    assert len(h.messages("interruption")) == 1  # still audible: interrupted although all was sent
    h2 = harness(FakeClock(), tone_synth)
    h2.init()
    h2.run(10)  # finished playing
    h2.speak(user_speech_16k)
    assert h2.messages("interruption") == []


def test_user_speaking_on_cancels_a_reply_that_has_not_started(
    clock: FakeClock, tone_synth: Synthesizer, user_speech_16k: bytes
) -> None:
    h = harness(clock, tone_synth, agent={"first_message": ""}, timing={"response_delay_ms": 2000})
    h.init()
    h.speak(user_speech_16k)
    h.silence(1.0)  # turn ended; the reply is 2 s away
    h.speak(user_speech_16k)
    h.silence(3.0)
    h.run(5)
    transcripts = [m["user_transcription_event"]["user_transcript"] for m in h.messages("user_transcript")]
    first = h.scenario.turns[0].transcript
    assert transcripts == [first, first]  # the same turn again: it was not answered
    assert h.record.turns[0].cancelled and not h.record.turns[1].cancelled
    assert h.record.turns[1].reply_text == h.scenario.turns[0].reply


# -- pings -------------------------------------------------------------------------------------


def test_pings_carry_the_measured_round_trip(clock: FakeClock, tone_synth: Synthesizer) -> None:
    h = harness(clock, tone_synth, agent={"first_message": ""}, timing={"ping_interval_s": 1.0})
    h.init()
    h.run(1.0)
    ping = h.messages("ping")[0]["ping_event"]
    assert ping["ping_ms"] is None
    clock.advance(0.042)
    h.send({"type": "pong", "event_id": ping["event_id"]})
    h.run(1.0)
    second = h.messages("ping")[1]["ping_event"]
    assert second["ping_ms"] == 42 and second["event_id"] > ping["event_id"]
    assert h.record.ping_rtts_ms == [pytest.approx(42, abs=0.01)]
    assert h.rules() == []


def test_pong_rules(clock: FakeClock, tone_synth: Synthesizer) -> None:
    h = harness(clock, tone_synth, agent={"first_message": ""}, timing={"ping_interval_s": 1.0, "pong_timeout_s": 0.5})
    h.init()
    h.run(1.0)
    eid = h.messages("ping")[0]["ping_event"]["event_id"]
    h.send({"type": "pong", "event_id": eid + 100})
    h.send({"type": "pong", "event_id": str(eid)})
    h.run(0.6)
    h.send({"type": "pong", "event_id": eid})  # late but matching: accepted
    h.send({"type": "pong", "event_id": eid})  # twice: no longer outstanding
    assert h.rules() == ["pong_unknown_event_id", "pong_bad_event_id", "pong_missing", "pong_unknown_event_id"]
    assert "not an outstanding ping" in h.record.violations[0].detail


# -- tools ------------------------------------------------------------------------------------------

TOOL_TURN = Turn(
    transcript="status?",
    reply="The kiosk says {result}.",
    tool=ToolCall(name="device_status", parameters={"verbose": True}),
)


def tool_harness(clock: FakeClock, synth: Synthesizer, speech: bytes, **timing: Any) -> Harness:
    h = harness(
        clock, synth, agent={"first_message": ""}, turns=(TOOL_TURN,), timing={"response_delay_ms": 100, **timing}
    )
    h.init()
    h.speak(speech)
    h.silence(1.0)
    return h


def test_tool_result_goes_into_the_reply(clock: FakeClock, tone_synth: Synthesizer, user_speech_16k: bytes) -> None:
    h = tool_harness(clock, tone_synth, user_speech_16k)
    call = h.messages("client_tool_call")[0]["client_tool_call"]
    assert call["tool_name"] == "device_status" and call["parameters"] == {"verbose": True}
    assert h.messages("audio") == []  # the reply waits for the result
    h.send(
        {"type": "client_tool_result", "tool_call_id": call["tool_call_id"], "result": "all good", "is_error": False}
    )
    assert h.messages("agent_response")[0]["agent_response_event"]["agent_response"] == "The kiosk says all good."
    rec = h.record.turns[0].tool_calls[0]
    assert (rec.name, rec.result, rec.is_error, rec.timed_out) == ("device_status", "all good", False, False)
    assert h.rules() == []


def test_tool_error_is_spoken(clock: FakeClock, tone_synth: Synthesizer, user_speech_16k: bytes) -> None:
    h = tool_harness(clock, tone_synth, user_speech_16k)
    call_id = h.messages("client_tool_call")[0]["client_tool_call"]["tool_call_id"]
    h.send({"type": "client_tool_result", "tool_call_id": call_id, "result": "no such tool", "is_error": True})
    text = h.messages("agent_response")[0]["agent_response_event"]["agent_response"]
    assert text == "Sorry, device_status failed: no such tool"


def test_missing_tool_result_is_a_violation_and_spoken_as_a_failure(
    clock: FakeClock, tone_synth: Synthesizer, user_speech_16k: bytes
) -> None:
    h = tool_harness(clock, tone_synth, user_speech_16k, tool_timeout_s=2.0)
    call_id = h.messages("client_tool_call")[0]["client_tool_call"]["tool_call_id"]
    h.run(h.record.turns[0].tool_calls[0].sent_t_s + 1.9 - clock())
    assert h.messages("agent_response") == []
    h.run(0.2)
    assert h.messages("agent_response")[0]["agent_response_event"]["agent_response"] == (
        "Sorry, the device_status tool did not answer."
    )
    assert h.rules() == ["tool_result_missing"]
    h.send({"type": "client_tool_result", "tool_call_id": call_id, "result": "late", "is_error": False})
    assert h.rules() == ["tool_result_missing"]  # a late result is still the one result
    h.send({"type": "client_tool_result", "tool_call_id": call_id, "result": "again", "is_error": False})
    assert h.rules() == ["tool_result_missing", "tool_result_duplicate"]


def test_a_call_left_unanswered_when_the_user_speaks_on_is_still_reported(
    clock: FakeClock, tone_synth: Synthesizer, user_speech_16k: bytes
) -> None:
    h = tool_harness(clock, tone_synth, user_speech_16k, tool_timeout_s=8.0)
    call_id = h.messages("client_tool_call")[0]["client_tool_call"]["tool_call_id"]
    h.speak(user_speech_16k)  # the user goes on before the client answered: that reply is abandoned
    h.silence(1.0)
    assert h.record.turns[0].cancelled and h.rules() == []
    assert clock() < h.record.turns[0].tool_calls[0].sent_t_s + 8.0
    h.run(h.record.turns[0].tool_calls[0].sent_t_s + 8.1 - clock())
    assert h.rules() == ["tool_result_missing"]
    assert call_id in h.record.violations[0].detail
    assert h.record.turns[0].tool_calls[0].timed_out
    h.send({"type": "client_tool_result", "tool_call_id": call_id, "result": "late", "is_error": False})
    assert h.rules() == ["tool_result_missing"]  # a late result is still the one result


def test_tool_result_rules(clock: FakeClock, tone_synth: Synthesizer, user_speech_16k: bytes) -> None:
    h = tool_harness(clock, tone_synth, user_speech_16k)
    call_id = h.messages("client_tool_call")[0]["client_tool_call"]["tool_call_id"]
    h.send({"type": "client_tool_result", "tool_call_id": "nope", "result": "x", "is_error": False})
    h.send({"type": "client_tool_result", "result": "x"})
    h.send({"type": "client_tool_result", "tool_call_id": call_id, "result": {"volume": 3}, "is_error": "no"})
    h.send({"type": "client_tool_result", "tool_call_id": call_id, "result": "x", "is_error": False})
    assert h.rules() == [
        "tool_result_unknown_id",
        "tool_result_bad_field",
        "tool_result_bad_field",
        "tool_result_bad_field",
        "tool_result_duplicate",
    ]
    assert "must be a string, got dict" in h.record.violations[2].detail


# -- the service's timeouts ------------------------------------------------------------------------


def test_no_initiation_in_time(clock: FakeClock, tone_synth: Synthesizer) -> None:
    h = harness(clock, tone_synth, timing={"init_timeout_s": 2.0})
    h.run(1.9)
    assert h.closes() == []
    h.run(0.2)
    assert h.closes() == [Close(1008, "No conversation initiation received")]
    assert h.rules() == ["initiation_missing"]


def test_no_user_audio_closes_1002_with_an_error_event(clock: FakeClock, tone_synth: Synthesizer) -> None:
    h = harness(clock, tone_synth, timing={"inactivity_timeout_s": 3.0})
    h.init()
    h.silence(2.0)  # zeros keep the conversation alive
    h.run(2.6)  # 2.85 s since the last block
    assert h.closes() == []
    h.run(0.2)
    error = h.messages("error")[0]["error_event"]
    assert error["code"] == 1002 and error["error_type"] == "transport_receive_timeout"
    assert h.closes()[0].code == 1002 and "transport_receive_timeout" in h.closes()[0].reason
    assert h.types()[-2:] == ["error", "Close"]


def test_max_duration_closes_1000(clock: FakeClock, tone_synth: Synthesizer) -> None:
    h = harness(clock, tone_synth, timing={"max_duration_s": 4.0})
    h.init()
    h.silence(3.9)
    assert h.closes() == []
    h.silence(0.25)
    assert h.closes() == [Close(1000, "Maximum conversation duration reached")]
    # The document: an `error` event with error_type max_duration_exceeded (code 1000) comes first.
    assert h.types()[-2:] == ["error", "Close"]
    error = h.messages("error")[-1]["error_event"]
    assert (error["code"], error["error_type"]) == (1000, "max_duration_exceeded")


def test_silence_after_a_reply_makes_the_agent_reprompt(clock: FakeClock, tone_synth: Synthesizer) -> None:
    h = harness(clock, tone_synth, agent={"first_message": "Hi."}, timing={"turn_timeout_s": 2.0})
    h.init()
    h.silence(1.0)  # "Hi." has played
    end = h.record.turns[0].reply_play_end_t_s
    assert end is not None
    h.silence(end + 1.9 - clock())
    assert len(h.record.turns) == 1
    h.send({"type": "user_activity"})  # the user is busy: the timer starts again
    h.silence(1.9)
    assert len(h.record.turns) == 1
    h.silence(0.3)
    assert [t.trigger for t in h.record.turns] == ["first_message", "reprompt"]
    assert h.record.turns[1].reply_text == "Are you still there?"


# -- injected faults ---------------------------------------------------------------------------------


def faulted(clock: FakeClock, synth: Synthesizer, spec: str) -> Harness:
    h = harness(clock, synth, faults=(parse_fault_spec(spec),))
    h.init()
    h.run(20)
    return h


def audio_count_before(h: Harness, kind: type) -> int:
    n = 0
    for _, a in h.actions:
        if isinstance(a, kind):
            return n
        if isinstance(a, Send) and a.message["type"] == "audio":
            n += 1
    raise AssertionError(f"no {kind.__name__}")


@pytest.mark.parametrize("code", [1000, 1011])
def test_fault_close_mid_reply(clock: FakeClock, tone_synth: Synthesizer, code: int) -> None:
    h = faulted(clock, tone_synth, f"close:reply=0,after_chunks=2,code={code}")
    assert audio_count_before(h, Close) == 2
    assert h.closes()[0].code == code
    assert h.record.turns[0].chunks_sent == 2 < h.record.turns[0].chunks_total


def test_fault_drop_mid_reply(clock: FakeClock, tone_synth: Synthesizer) -> None:
    h = faulted(clock, tone_synth, "drop:after_chunks=3")
    assert audio_count_before(h, Drop) == 3 and h.conv.closed


def test_fault_malformed_json(clock: FakeClock, tone_synth: Synthesizer) -> None:
    h = faulted(clock, tone_synth, "malformed_json:after_chunks=1")
    raw = [a.text for _, a in h.actions if isinstance(a, SendRaw)]
    assert len(raw) == 1 and audio_count_before(h, SendRaw) == 1
    with pytest.raises(ValueError):
        json.loads(raw[0])
    assert h.record.turns[0].chunks_sent == h.record.turns[0].chunks_total  # the reply goes on


def test_fault_unknown_event(clock: FakeClock, tone_synth: Synthesizer) -> None:
    h = faulted(clock, tone_synth, "unknown_event:after_chunks=1,event_type=mcp_tool_call")
    assert len(h.messages("mcp_tool_call")) == 1


def test_fault_bad_base64_and_odd_length(clock: FakeClock, tone_synth: Synthesizer) -> None:
    h = harness(
        clock,
        tone_synth,
        faults=(parse_fault_spec("bad_base64:after_chunks=1"), parse_fault_spec("odd_length_audio:after_chunks=2")),
    )
    h.init()
    h.run(20)
    payloads = [m["audio_event"]["audio_base_64"] for m in h.messages("audio")]
    with pytest.raises(ValueError):
        base64.b64decode(payloads[1], validate=True)
    assert len(base64.b64decode(payloads[3])) % 2 == 1


def test_fault_oversized_frame(clock: FakeClock, tone_synth: Synthesizer) -> None:
    h = faulted(clock, tone_synth, "oversized_frame:after_chunks=1,size_bytes=1500000")
    frames = [json.dumps(m) for m in h.messages("audio")]
    big = [f for f in frames if len(f) >= 1_500_000]
    assert len(big) == 1 and frames.index(big[0]) == 1
    assert h.audio_of(1) == tone_synth.render(h.scenario.agent.first_message, h.scenario.agent.output)


def test_fault_quota(clock: FakeClock, tone_synth: Synthesizer) -> None:
    h = faulted(clock, tone_synth, "quota")
    assert h.closes() == [Close(1002, QUOTA_REASON)] and h.messages() == []


def test_fault_slow_and_missing_metadata(clock: FakeClock, tone_synth: Synthesizer) -> None:
    h = harness(clock, tone_synth, faults=(parse_fault_spec("slow_metadata:delay_s=2"),))
    h.init()
    h.run(1.9)
    assert h.messages() == []
    h.run(0.2)
    assert h.types()[0] == "conversation_initiation_metadata"
    h2 = harness(FakeClock(), tone_synth, faults=(parse_fault_spec("missing_metadata"),))
    h2.init()
    h2.run(30)
    assert h2.messages() == [] and not h2.conv.closed


def test_faults_only_hit_their_conversation_and_reply(
    clock: FakeClock, tone_synth: Synthesizer, user_speech_16k: bytes
) -> None:
    h = harness(
        clock,
        tone_synth,
        faults=(parse_fault_spec("close:conversation=1"), parse_fault_spec("close:reply=1,code=4000")),
    )
    h.init()
    h.run(10)
    assert h.closes() == []  # conversation 1's fault is not ours; reply 1 has not come yet
    h.speak(user_speech_16k)
    h.silence(1.5)
    assert h.closes()[0].code == 4000


# -- strictness ------------------------------------------------------------------------------------------


def test_a_well_behaved_client_breaks_no_rule(
    clock: FakeClock, tone_synth: Synthesizer, user_speech_16k: bytes
) -> None:
    h = harness(clock, tone_synth, timing={"ping_interval_s": 1.0})
    h.init(conversation_config_override={}, dynamic_variables={"kiosk_id": "k"})
    answered: set[int] = set()
    results_sent: set[str] = set()

    def answer_what_is_owed() -> None:
        for m in h.messages("ping"):
            eid = m["ping_event"]["event_id"]
            if eid not in answered:
                answered.add(eid)
                h.send({"type": "pong", "event_id": eid})
        for m in h.messages("client_tool_call"):
            call_id = m["client_tool_call"]["tool_call_id"]
            if call_id not in results_sent:
                results_sent.add(call_id)
                h.send({"type": "client_tool_result", "tool_call_id": call_id, "result": "ok", "is_error": False})

    # Answer every half second, as a client does, whatever the sentence's length: without
    # espeak-ng it is a 4.4 s tone, and a pong owed since its start would come too late.
    turn = user_speech_16k + bytes(2 * 16000 * 3 // 2)  # the sentence, then 1.5 s of silence
    for _ in range(3):
        for i in range(0, len(turn), 16000):
            h.speak(turn[i : i + 16000])
            answer_what_is_owed()
    h.run(10)  # past every tool timeout (or the goodbye hangs up): nothing is still owed
    assert results_sent, "the default scenario calls a tool"
    h.send({"type": "contextual_update", "text": "The visitor is a child."})
    h.send({"type": "feedback", "event_id": 1, "score": "like"})
    assert h.rules() == []


@pytest.mark.parametrize(
    ("message", "rule"),
    [
        (b"\x00\x01", "binary_frame"),
        ("{not json", "invalid_json"),
        ("[1, 2]", "not_an_object"),
        ({"type": "shout"}, "unknown_type"),
        ({"text": "hi"}, "unknown_message"),
        ({"user_audio_chunk": "***"}, "audio_bad_base64"),
        ({"user_audio_chunk": base64.b64encode(b"\x00\x00\x00").decode()}, "audio_odd_length"),
        ({"user_audio_chunk": ""}, "audio_empty"),
        ({"user_audio_chunk": 12}, "audio_not_string"),
        ({"user_audio_chunk": "AAAAAA==", "seq": 1}, "unknown_field"),
        ({"type": INIT}, "initiation_repeated"),
        ({"type": "feedback", "event_id": 99, "score": "like"}, "bad_field"),
        ({"type": "feedback", "event_id": 1, "score": "meh"}, "bad_field"),
        ({"type": "contextual_update"}, "bad_field"),
        ({"type": "user_message", "text": 5}, "bad_field"),
        ({"type": "feedback", "event_id": 1}, "bad_field"),
    ],
)
def test_each_rule_is_reported_with_what_was_wrong(
    clock: FakeClock, tone_synth: Synthesizer, message: Any, rule: str
) -> None:
    h = harness(clock, tone_synth)
    h.init()
    h.send(message)
    assert h.rules() == [rule]
    v = h.record.violations[0]
    assert v.conversation_id == "conv_0123456789abcdef" and v.detail
    assert any(e["type"] == "violation" and e["rule"] == rule for e in h.record.events)


@pytest.mark.parametrize(
    ("fields", "rule"),
    [
        ({"dynamic_variables": {"where": ["a", "b"]}}, "bad_field"),
        ({"dynamic_variables": "x"}, "bad_field"),
        ({"user_id": 7}, "bad_field"),
        ({"conversation_config_override": "none"}, "bad_field"),
        ({"overrides": {}}, "unknown_field"),
    ],
)
def test_initiation_rules(clock: FakeClock, tone_synth: Synthesizer, fields: dict[str, Any], rule: str) -> None:
    h = harness(clock, tone_synth)
    h.init(**fields)
    assert h.rules() == [rule]


def test_first_message_must_be_the_initiation(clock: FakeClock, tone_synth: Synthesizer) -> None:
    h = harness(clock, tone_synth)
    h.audio(bytes(BLOCK))
    h.audio(bytes(BLOCK))
    h.init()
    assert h.rules() == ["first_message_not_initiation"]
    assert "user_audio_chunk" in h.record.violations[0].detail
    assert len(h.record.user_audio_pcm) == 2 * BLOCK  # still recorded
    assert h.messages()[0]["type"] == "conversation_initiation_metadata"


def test_audio_much_faster_than_real_time_is_a_violation(clock: FakeClock, tone_synth: Synthesizer) -> None:
    h = harness(clock, tone_synth, strict={"audio_rate_factor": 1.5, "audio_burst_s": 2.0})
    h.init()
    for _ in range(8):  # 2 s held while connecting: allowed
        h.audio(bytes(BLOCK))
    assert h.rules() == []
    h.run(0.25)
    h.silence(3.0)  # real time from now on
    assert h.rules() == []
    for _ in range(12):  # 3 s at once: too much
        h.audio(bytes(BLOCK))
    assert h.rules() == ["audio_rate"]
    assert "real time" in h.record.violations[0].detail


def test_ulaw_input_is_decoded_and_any_length_is_whole(clock: FakeClock, tone_synth: Synthesizer) -> None:
    h = harness(clock, tone_synth, agent={"input_format": "ulaw_8000"})
    h.init()
    h.audio(b"\xff" * 333)
    assert h.rules() == []
    assert h.record.user_audio_pcm == bytes(666)


def test_after_the_socket_is_gone_messages_are_still_checked_but_nothing_is_said(
    clock: FakeClock, tone_synth: Synthesizer
) -> None:
    h = harness(clock, tone_synth)
    h.init()
    before = len(h.actions), len(h.record.events_of("audio"))
    h.conv.mute()
    h.send({"type": "user_message", "text": "hello?"})  # would start a reply
    h.send({"type": "pong", "event_id": 77})
    h.run(5)
    assert (len(h.actions), len(h.record.events_of("audio"))) == before
    assert h.rules() == ["pong_unknown_event_id"]


# -- the contract (AsyncAPI document): event ids, client_events, alignment, contract events ------------


def test_every_turn_event_carries_the_required_event_id(
    clock: FakeClock, tone_synth: Synthesizer, user_speech_16k: bytes
) -> None:
    events = (*DEFAULT_CLIENT_EVENTS, "agent_response_correction")
    h = harness(clock, tone_synth, agent={"client_events": events, "first_message": LONG}, timing={"speed": 1.0})
    h.init()
    h.silence(1.0)
    h.speak(user_speech_16k)  # interrupts the long greeting, then a turn with a tool call
    h.silence(2.0)
    h.run(10)
    wrappers = {
        "user_transcript": "user_transcription_event",
        "tentative_user_transcript": "tentative_user_transcription_event",
        "agent_response": "agent_response_event",
        "agent_response_correction": "agent_response_correction_event",
    }
    for type_, wrapper in wrappers.items():
        sent = h.messages(type_)
        assert sent, type_
        assert all(isinstance(m[wrapper]["event_id"], int) for m in sent), type_
    replies = {m["audio_event"]["event_id"] for m in h.messages("audio")}
    assert {m["agent_response_event"]["event_id"] for m in h.messages("agent_response")} <= replies


def test_tool_calls_carry_an_event_id(clock: FakeClock, tone_synth: Synthesizer) -> None:
    tool = Turn(transcript="status?", reply="It says {result}.", tool=ToolCall(name="device_status"))
    h = harness(clock, tone_synth, agent={"first_message": ""}, turns=(tool,))
    h.init()
    h.send({"type": "user_message", "text": "status?"})
    h.run(1)
    (call,) = h.messages("client_tool_call")
    assert isinstance(call["client_tool_call"]["event_id"], int)


def test_by_default_only_the_event_types_a_real_agent_enables_are_sent(
    clock: FakeClock, tone_synth: Synthesizer, user_speech_16k: bytes
) -> None:
    h = harness(clock, tone_synth, agent={"first_message": LONG}, timing={"speed": 1.0})
    h.init()
    h.silence(1.0)
    h.speak(user_speech_16k)
    h.silence(2.0)
    h.run(20)
    sent = {t for t in h.types() if t[0].islower()}
    assert "interruption" in sent and "user_transcript" in sent  # the turn really happened
    assert sent <= set(DEFAULT_CLIENT_EVENTS) | {"client_tool_call"}, sent - set(DEFAULT_CLIENT_EVENTS)


def test_opted_in_events_are_sent(clock: FakeClock, tone_synth: Synthesizer, user_speech_16k: bytes) -> None:
    events = (*DEFAULT_CLIENT_EVENTS, "vad_score", "agent_response_correction", "agent_chat_response_part")
    h = harness(clock, tone_synth, agent={"client_events": events, "first_message": LONG}, timing={"speed": 1.0})
    h.init()
    h.silence(1.0)
    h.speak(user_speech_16k)
    h.silence(2.0)
    assert h.messages("vad_score") and h.messages("agent_response_correction")
    parts = [m["text_response_part"] for m in h.messages("agent_chat_response_part")]
    first = parts[: [p["type"] for p in parts].index("stop") + 1]  # the greeting's parts
    assert first[0]["type"] == "start" and all(p["event_id"] == 1 for p in first)
    assert "".join(p["text"] for p in first) == LONG


def test_alignment_spells_the_reply_across_its_chunks(clock: FakeClock, tone_synth: Synthesizer) -> None:
    h = harness(clock, tone_synth, agent={"alignment": True, "first_message": LONG})
    h.init()
    h.run(30)
    chars: list[str] = []
    for m in h.messages("audio"):
        a = m["audio_event"]["alignment"]
        assert len(a["chars"]) == len(a["char_start_times_ms"]) == len(a["char_durations_ms"])
        assert all(isinstance(t, int) and t >= 0 for t in a["char_start_times_ms"])
        chars += a["chars"]
    assert "".join(chars) == LONG


def test_unknown_client_events_are_refused_with_the_list() -> None:
    with pytest.raises(ConfigError, match=r"agent\.client_events.*did you mean 'vad_score'"):
        default_scenario().with_changes(agent={"client_events": ("vad_scores",)})


@pytest.mark.parametrize("error_type", list(ERROR_TYPE_CODES))
def test_error_event_fault_sends_each_error_type_with_the_documents_code(
    clock: FakeClock, tone_synth: Synthesizer, error_type: str
) -> None:
    fault = parse_fault_spec(f"error_event:reply=0,after_chunks=1,error_type={error_type}")
    h = harness(clock, tone_synth, faults=(fault,))
    h.init()
    h.run(5)
    (error,) = h.messages("error")
    code = ERROR_TYPE_CODES[error_type]
    assert error["error_event"]["error_type"] == error_type and error["error_event"]["code"] == code
    assert h.closes()[0].code == code and h.types()[-2:] == ["error", "Close"]


def test_error_event_fault_can_keep_the_connection(clock: FakeClock, tone_synth: Synthesizer) -> None:
    fault = parse_fault_spec("error_event:reply=0,after_chunks=1,error_type=llm_error,code=1011,then_close=false")
    h = harness(clock, tone_synth, faults=(fault,))
    h.init()
    h.run(5)
    assert h.messages("error")[0]["error_event"]["code"] == 1011 and h.closes() == []


def test_error_event_codes_outside_the_document_are_refused() -> None:
    with pytest.raises(ConfigError, match="1000, 1002, 1008, 1011"):
        parse_fault_spec("error_event:error_type=llm_error,code=4000")
    with pytest.raises(ConfigError, match="error_type"):
        parse_fault_spec("error_event:error_type=quota_exceeded")


def test_agent_tool_response_end_call_closes_after_the_delay(clock: FakeClock, tone_synth: Synthesizer) -> None:
    fault = parse_fault_spec("agent_tool_response:reply=0,after_chunks=1,delay_s=2")
    h = harness(clock, tone_synth, agent={"first_message": LONG}, faults=(fault,))
    h.init()
    h.run(0.5)
    (msg,) = h.messages("agent_tool_response")
    event = msg["agent_tool_response"]
    assert (event["tool_name"], event["tool_type"], event["is_error"], event["is_called"]) == (
        "end_call",
        "system",
        False,
        True,
    )
    sent_at = h.timed("agent_tool_response")[0][0]
    h.run(10)
    (close_t, close), *_ = [(t, a) for t, a in h.actions if isinstance(a, Close)]
    assert close.code == 1000 and close_t - sent_at == pytest.approx(2.0, abs=0.02)


@pytest.mark.parametrize(("answer", "state"), [(True, "success"), (False, "failure"), (None, "failure")])
def test_mcp_tool_call_awaiting_approval_waits_for_the_answer(
    clock: FakeClock, tone_synth: Synthesizer, answer: bool | None, state: str
) -> None:
    fault = parse_fault_spec("mcp_tool_call:reply=0,after_chunks=0,tool_name=lookup,approval_timeout_s=30")
    h = harness(clock, tone_synth, faults=(fault,))
    h.init()
    (first,) = h.messages("mcp_tool_call")
    call = first["mcp_tool_call"]
    assert (call["state"], call["tool_name"], call["approval_timeout_secs"]) == ("awaiting_approval", "lookup", 30)
    if answer is not None:
        h.send({"type": "mcp_tool_approval_result", "tool_call_id": call["tool_call_id"], "is_approved": answer})
    h.run(29 if answer is not None else 31)
    updates = [m["mcp_tool_call"] for m in h.messages("mcp_tool_call")[1:]]
    assert [u["state"] for u in updates] == [state]
    assert updates[0]["tool_call_id"] == call["tool_call_id"] and h.rules() == []


def test_rich_content_fault(clock: FakeClock, tone_synth: Synthesizer) -> None:
    h = harness(clock, tone_synth, faults=(parse_fault_spec("rich_content:reply=0,after_chunks=1"),))
    h.init()
    h.run(2)
    (msg,) = h.messages("rich_content")
    assert msg["rich_content"]["component"] == "item_card" and isinstance(msg["rich_content"]["event_id"], int)


def test_text_only_override_replies_in_text(clock: FakeClock, tone_synth: Synthesizer) -> None:
    h = harness(clock, tone_synth, agent={"allowed_overrides": ("text_only",), "first_message": "Hi."})
    h.init(conversation_config_override={"conversation": {"text_only": True}})
    h.run(1)
    h.send({"type": "user_message", "text": "What can you do?"})
    h.run(2)
    assert h.messages("audio") == []
    texts = [m["agent_response_event"]["agent_response"] for m in h.messages("agent_response")]
    assert texts == ["Hi.", h.scenario.turns[0].reply]


@pytest.mark.parametrize(
    "message",
    [
        {"type": "feedback", "event_id": 1, "score": None},  # null clears the feedback
        {"type": "mcp_tool_approval_result", "tool_call_id": "x", "is_approved": True},
        {"type": "multimodal_message", "text": {"type": "user_message", "text": "hi"}, "file": None},
        {"type": "user_message", "text": None},
        {"type": "contextual_update", "text": "", "context_id": "room"},
    ],
)
def test_what_the_document_allows_is_not_a_violation(
    clock: FakeClock, tone_synth: Synthesizer, message: dict[str, Any]
) -> None:
    h = harness(clock, tone_synth)
    h.init(tool_mock_config={"mocking_strategy": "none"})
    h.run(5)
    h.send(message)
    rules = h.rules()
    if message["type"] == "mcp_tool_approval_result":  # known type; only the unknown id is flagged
        assert rules == ["mcp_approval_unknown_id"]
    else:
        assert rules == []


def test_first_message_delay_holds_the_greeting_back(clock: FakeClock, tone_synth: Synthesizer) -> None:
    h = harness(clock, tone_synth, timing={"first_message_delay_ms": 400})
    h.init()
    assert h.types() == ["conversation_initiation_metadata"]
    h.run(0.39)
    assert h.messages("audio") == []
    h.run(0.02)
    assert h.types()[1:3] == ["audio", "agent_response"]
