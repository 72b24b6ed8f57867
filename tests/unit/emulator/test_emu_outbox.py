"""The outbox: what a conversation sends, in order, and what its record logs of it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from device.emulator import wire
from device.emulator.outbox import (
    FROM_AGENT,
    TO_AGENT,
    Close,
    Drop,
    Outbox,
    Send,
    SendRaw,
    add_message_tap,
    clip,
    remove_message_tap,
)


@pytest.fixture
def tapped() -> Iterator[list[tuple[str, dict[str, Any], bool]]]:
    seen: list[tuple[str, dict[str, Any], bool]] = []

    def tap(direction: str, message: dict[str, Any], conforms: bool) -> None:
        seen.append((direction, message, conforms))

    add_message_tap(tap)
    yield seen
    remove_message_tap(tap)


def test_a_sent_message_is_flushed_in_order(out: Outbox) -> None:
    out.send(1.0, wire.interruption(3))
    out.put(SendRaw("{"))
    assert out.flush() == [Send(wire.interruption(3)), SendRaw("{")]


def test_a_flush_empties_the_outbox(out: Outbox) -> None:
    out.send(1.0, wire.interruption(3))
    out.flush()
    assert out.flush() == []


def test_a_sent_message_is_recorded_by_its_event_body(out: Outbox) -> None:
    out.send(1.0, wire.interruption(3))
    assert out.record.events == [{"t_s": 1.0, "direction": FROM_AGENT, "type": "interruption", "event_id": 3}]


def test_a_put_action_is_not_recorded(out: Outbox) -> None:
    out.put(Send(wire.audio("@@", 1), conforms=False))
    assert out.record.events == []


def test_a_close_ends_the_conversation_and_is_recorded(out: Outbox) -> None:
    out.close(2.0, 1000, "bye")
    assert out.ended and out.flush() == [Close(1000, "bye")]
    assert out.record.events_of("close") == [
        {"t_s": 2.0, "direction": FROM_AGENT, "type": "close", "code": 1000, "reason": "bye"}
    ]


def test_a_drop_ends_the_conversation_without_a_record(out: Outbox) -> None:
    out.drop()
    assert out.ended and out.flush() == [Drop()] and out.record.events == []


def test_an_error_event_closes_with_its_types_code(out: Outbox) -> None:
    out.error(1.0, "llm_timeout", "")
    assert out.flush() == [
        Send(wire.error(1002, "Emulated llm_timeout error", "llm_timeout")),
        Close(1002, "Emulated llm_timeout error"),
    ]


def test_an_error_event_may_leave_the_conversation_open(out: Outbox) -> None:
    out.error(1.0, "llm_error", "Try again", code=1002, close=False)
    assert not out.ended and out.flush() == [Send(wire.error(1002, "Try again", "llm_error"))]


def test_muted_nothing_is_flushed(out: Outbox) -> None:
    out.muted = True
    out.send(1.0, wire.interruption(3))
    assert out.flush() == []


def test_muted_only_the_clients_side_is_recorded(out: Outbox) -> None:
    out.muted = True
    out.event(1.0, FROM_AGENT, "audio")
    out.event(1.0, TO_AGENT, "pong")
    assert [e["type"] for e in out.record.events] == ["pong"]


def test_the_taps_see_each_flushed_message_and_whether_it_conforms(
    out: Outbox, tapped: list[tuple[str, dict[str, Any], bool]]
) -> None:
    out.send(1.0, wire.interruption(3))
    out.put(Send(wire.audio("@@", 3), conforms=False))
    out.put(SendRaw("{"))
    out.flush()
    assert tapped == [(FROM_AGENT, wire.interruption(3), True), (FROM_AGENT, wire.audio("@@", 3), False)]


def test_a_long_event_body_is_cut() -> None:
    assert clip({"text": "x" * 5000}, limit=100) == {"truncated_json": '{"text": "' + "x" * 90}


def test_a_short_event_body_is_kept() -> None:
    assert clip({"text": "hi"}) == {"text": "hi"}
