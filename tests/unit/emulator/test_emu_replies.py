"""Replies: which turn comes next, a reply's chunks, their frames and what is heard of it."""

from __future__ import annotations

import base64
import itertools
import random

from device.core.audioformat import parse_format
from device.emulator.outbox import Outbox, Send
from device.emulator.recording import TurnRecord
from device.emulator.replies import (
    AFTER_LAST_GOODBYE,
    Reply,
    TurnScript,
    chunk_alignment,
    padding_alignment,
    plan_chunks,
    send_chunk,
    words_prefix,
)
from device.emulator.scenario import AfterLast, Turn

FMT = parse_format("pcm_16000")


def reply(nbytes: int = 6400) -> Reply:
    audio = bytes(range(256)) * (nbytes // 256) + bytes(nbytes % 256)
    bounds = [(i, min(nbytes, i + 3200)) for i in range(0, nbytes, 3200)]
    return Reply("Hello there.", 7, 0, audio, FMT, bounds, 10.0, 10.4, TurnRecord(0, "speech"), False)


def test_chunks_cover_the_audio_in_order_without_gaps() -> None:
    bounds = plan_chunks(32001 * 2, FMT, random.Random(0), 50, 250)
    assert bounds[0][0] == 0 and bounds[-1][1] == 64002
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))


def test_chunks_are_whole_frames_within_the_bounds_but_the_last() -> None:
    bounds = plan_chunks(16000 * 2 * 5, FMT, random.Random(0), 50, 250)
    sizes_ms = [(end - start) / 32 for start, end in bounds[:-1]]
    assert all((end - start) % 2 == 0 for start, end in bounds)
    assert all(50 - 1 <= ms <= 250 for ms in sizes_ms)


def test_the_same_seed_cuts_the_same_chunks() -> None:
    assert plan_chunks(99999, FMT, random.Random(3), 50, 250) == plan_chunks(99999, FMT, random.Random(3), 50, 250)


def test_a_chunk_is_sent_as_its_bytes(out: Outbox) -> None:
    r = reply()
    send_chunk(out, 1.0, r, 1, alignment=False)
    (action,) = out.flush()
    assert isinstance(action, Send)
    assert base64.b64decode(action.message["audio_event"]["audio_base_64"]) == r.audio[3200:6400]


def test_a_chunk_is_recorded_by_its_size(out: Outbox) -> None:
    send_chunk(out, 1.0, reply(), 0, alignment=False)
    assert out.record.events_of("audio")[0] == {
        "t_s": 1.0,
        "direction": "from_agent",
        "type": "audio",
        "event_id": 7,
        "bytes": 3200,
        "duration_ms": 100.0,
    }


def test_with_alignment_a_chunk_carries_its_characters(out: Outbox) -> None:
    send_chunk(out, 1.0, reply(), 0, alignment=True)
    (action,) = out.flush()
    assert isinstance(action, Send)
    assert "".join(action.message["audio_event"]["alignment"]["chars"]) == "Hello "


def test_a_chunk_a_fault_marked_is_padded_to_its_size(out: Outbox) -> None:
    r = reply()
    r.oversized_chunks[1] = 4096
    send_chunk(out, 1.0, r, 1, alignment=False)
    assert out.record.events_of("audio")[0]["oversized_to_bytes"] == 4096 and r.oversized_chunks == {}


def test_the_characters_of_every_chunk_make_the_text() -> None:
    text = "Hello there."
    parts = [chunk_alignment(text, 0.2, FMT, start, 3200)["chars"] for start in (0, 3200)]
    assert "".join(parts[0] + parts[1]) == text


def test_padding_grows_with_the_size_asked() -> None:
    assert len(padding_alignment(12000)["chars"]) == 1000


def test_a_reply_cut_at_half_was_heard_by_half_its_words() -> None:
    assert words_prefix("one two three four", 0.5) == "one two"


def test_a_reply_cut_at_once_was_not_heard() -> None:
    assert words_prefix("one two three four", 0.0) == ""


# -- the turn script -----------------------------------------------------------------------------

TURNS = (Turn(reply="one"), Turn(reply="two"))


def taken(after_last: AfterLast, n: int) -> list[str]:
    script = TurnScript(TURNS, after_last)
    return [script.take().reply for _ in range(n)]


def test_turns_are_taken_in_order_then_cycle() -> None:
    assert taken("cycle", 5) == ["one", "two", "one", "two", "one"]


def test_after_the_last_turn_it_may_repeat() -> None:
    assert taken("repeat_last", 4) == ["one", "two", "two", "two"]


def test_after_the_last_turn_it_may_say_goodbye_and_end() -> None:
    script = TurnScript(TURNS, "end_call")
    for _ in TURNS:
        script.take()
    assert script.take() == Turn(reply=AFTER_LAST_GOODBYE, end_call=True)


def test_peeking_does_not_take() -> None:
    script = TurnScript(TURNS, "cycle")
    assert (script.peek().reply, script.take().reply) == ("one", "one")


def test_a_turn_taken_back_comes_again() -> None:
    script = TurnScript(TURNS, "cycle")
    before = script.cursor
    script.take()
    script.cursor = before
    assert script.take().reply == "one"
