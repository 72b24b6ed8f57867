"""Client tool calls: each owes exactly one result, in time."""

from __future__ import annotations

import itertools

from device.emulator.toolcalls import Answer, ToolCalls


def calls(start: int = 1) -> ToolCalls:
    return ToolCalls("conv_0123456789abcdef", 10.0, itertools.count(start))


def test_a_call_is_named_by_the_conversation_and_its_number() -> None:
    assert calls(start=3).open(1.0, "device_status", {}).call_id == "toolu_89abcdef_003"


def test_the_first_result_answers_its_call() -> None:
    c = calls()
    call = c.open(1.0, "device_status", {})
    assert c.answer(call.call_id) == (Answer.FIRST, call)


def test_a_second_result_is_a_duplicate() -> None:
    c = calls()
    call_id = c.open(1.0, "device_status", {}).call_id
    c.answer(call_id)
    assert c.answer(call_id) == (Answer.DUPLICATE, None)


def test_a_result_for_no_call_is_unknown() -> None:
    assert calls().answer("toolu_nope") == (Answer.UNKNOWN, None)


def test_a_result_after_the_call_timed_out_is_late_once() -> None:
    c = calls()
    call = c.open(1.0, "device_status", {})
    c.give_up(call)
    assert (c.answer(call.call_id), c.answer(call.call_id)) == ((Answer.LATE, None), (Answer.DUPLICATE, None))


def test_an_open_call_is_a_deadline_until_answered() -> None:
    c = calls()
    call = c.open(1.0, "device_status", {})
    assert c.deadlines() == [11.0]
    c.answer(call.call_id)
    assert c.deadlines() == []


def test_overdue_calls_are_the_open_ones_past_their_timeout_but_the_one_awaited() -> None:
    c = calls()
    first, second = c.open(1.0, "a", {}), c.open(2.0, "b", {})
    assert (c.overdue(11.0, None), c.overdue(12.0, first)) == ([first], [second])
