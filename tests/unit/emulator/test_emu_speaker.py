"""The agent's voice: a reply begun, streamed as its chunks fall due, played out or cut short."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from device.core.audioformat import AudioFormat
from device.emulator.faults import FaultRunner
from device.emulator.outbox import Outbox, Send
from device.emulator.recording import TurnRecord
from device.emulator.scenario import AgentSettings, Timing
from device.emulator.speaker import Speaker


class Clock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def one_second(text: str, fmt: AudioFormat) -> bytes:
    return bytes(fmt.rate_hz * fmt.bytes_per_frame)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def speaker(out: Outbox, clock: Clock, **agent: Any) -> Speaker:
    settings = AgentSettings(**agent)
    faults = FaultRunner([], out, end_call_reason="Bye", call_numbers=itertools.count(1))
    timing = Timing(speed=4.0, chunk_min_ms=100, chunk_max_ms=100)
    return Speaker(out, out.record, faults, agent=settings, timing=timing, render=one_second, clock=clock, seed=0)


def sent(out: Outbox) -> list[str]:
    return [a.message["type"] for a in out.flush() if isinstance(a, Send)]


def test_a_reply_starts_with_its_first_chunk_and_its_text(out: Outbox, clock: Clock) -> None:
    speaker(out, clock).begin(clock(), "Hello there.", TurnRecord(0, "speech"), False)
    assert sent(out) == ["audio", "agent_response"]


def test_the_next_chunks_fall_due_faster_than_real_time(out: Outbox, clock: Clock) -> None:
    s = speaker(out, clock)
    s.begin(clock(), "Hello there.", TurnRecord(0, "speech"), False)
    out.flush()
    s.stream(100.0 + 0.1 / 4 * 3)  # three more 100 ms chunks at four times real time
    assert sent(out) == ["audio"] * 3


def test_a_reply_is_finished_once_it_has_been_played(out: Outbox, clock: Clock) -> None:
    s = speaker(out, clock)
    s.begin(clock(), "Hello there.", TurnRecord(0, "speech"), False)
    s.stream(101.0)
    r = s.reply
    assert (s.finished(100.99), s.finished(101.0), s.finished(101.0)) == (None, r, None)


def test_the_deadlines_are_the_next_chunk_and_the_end_of_playback(out: Outbox, clock: Clock) -> None:
    s = speaker(out, clock)
    s.begin(clock(), "Hello there.", TurnRecord(0, "speech"), False)
    assert s.deadlines() == [pytest.approx(100.025), pytest.approx(101.0)]


def test_an_interruption_names_the_reply_and_stops_it(out: Outbox, clock: Clock) -> None:
    s = speaker(out, clock)
    s.begin(clock(), "Hello there.", TurnRecord(0, "speech"), False)
    out.flush()
    s.interrupt(100.5)
    assert sent(out) == ["interruption"] and s.reply is None and not s.playing(100.5)


def test_an_interruption_corrects_the_text_to_what_was_heard_when_asked(out: Outbox, clock: Clock) -> None:
    s = speaker(out, clock, client_events=("audio", "agent_response", "agent_response_correction"))
    s.begin(clock(), "one two three four", TurnRecord(0, "speech"), False)
    s.interrupt(100.5)
    assert out.record.events_of("agent_response_correction")[0]["corrected_agent_response"] == "one two"


def test_the_reply_after_an_interruption_keeps_its_event_id(out: Outbox, clock: Clock) -> None:
    s = speaker(out, clock)
    s.begin(clock(), "Hello there.", TurnRecord(0, "speech"), False)
    s.interrupt(100.5)
    assert s.turn_event_id() == 1
    s.begin(clock(), "As I was saying.", TurnRecord(1, "speech"), False)
    assert s.reply is not None and s.reply.event_id == 1


def test_without_reuse_each_reply_gets_a_fresh_event_id(out: Outbox, clock: Clock) -> None:
    s = speaker(out, clock, reuse_event_id_after_interruption=False)
    s.begin(clock(), "Hello there.", TurnRecord(0, "speech"), False)
    s.interrupt(100.5)
    s.begin(clock(), "As I was saying.", TurnRecord(1, "speech"), False)
    assert s.reply is not None and s.reply.event_id == 2 and s.reply_ids == {1, 2}


def test_a_text_only_reply_is_its_text_at_once(out: Outbox, clock: Clock) -> None:
    s = speaker(out, clock)
    s.text_only = True
    s.begin(clock(), "Hello there.", TurnRecord(0, "speech"), False)
    assert sent(out) == ["agent_response"] and s.finished(clock()) is not None


def test_the_streamed_text_comes_in_parts_when_asked(out: Outbox, clock: Clock) -> None:
    s = speaker(out, clock, client_events=("agent_chat_response_part",))
    s.text_only = True
    s.begin(clock(), "Hello there.", TurnRecord(0, "speech"), False)
    assert sent(out) == ["agent_chat_response_part"] * 4  # start, two words, stop
