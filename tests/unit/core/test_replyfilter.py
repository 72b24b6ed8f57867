"""The reply filter: the rest of a reply the device cut short is not played."""

from __future__ import annotations

import pytest

from device.core.machine import Kind
from device.core.replyfilter import NO_EVENT_ID, ReplyFilter


def cut_at(event_id: int, cause: Kind = Kind.PRESS) -> ReplyFilter:
    f = ReplyFilter()
    assert f.admit(event_id)
    f.flushed(cause)
    return f


def test_audio_plays_when_nothing_was_cut() -> None:
    f = ReplyFilter()
    assert [f.admit(i) for i in (1, 1, 2)] == [True, True, True]
    assert f.last_id == 2


@pytest.mark.parametrize("cause", [Kind.PRESS, Kind.WAKE_WORD, Kind.TIMEOUT])
def test_after_the_device_cut_reply_n_its_later_chunks_are_dropped(cause: Kind) -> None:
    f = cut_at(5, cause)
    assert f.admit(5) is False
    assert f.admit(4) is False  # older still


def test_a_flush_the_service_asked_for_drops_nothing_more() -> None:
    f = cut_at(5, Kind.INTERRUPTION)
    assert f.admit(5) is True


def test_a_newer_reply_plays_and_ends_the_dropping() -> None:
    f = cut_at(5)
    assert f.admit(6) is True
    assert f.admit(5) is True  # the service's own numbering rules again


def test_an_interruption_or_the_users_transcript_resumes_playing() -> None:
    f = cut_at(5)
    f.resume()
    assert f.admit(5) is True


def test_a_new_conversation_starts_the_numbering_afresh() -> None:
    f = cut_at(5)
    f.reset()
    assert f.last_id == NO_EVENT_ID
    assert f.admit(0) is True


def test_a_cut_before_any_audio_drops_nothing() -> None:
    f = ReplyFilter()
    f.flushed(Kind.PRESS)
    assert f.admit(0) is True
