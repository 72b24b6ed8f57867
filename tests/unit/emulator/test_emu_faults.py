"""The fault runner: its dispatch table against the fault kinds, and when and what each fault does."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import get_args

from device.core.audioformat import parse_format
from device.emulator.faults import FAULT_HANDLERS, FaultRunner
from device.emulator.outbox import Outbox, Send, SendRaw
from device.emulator.recording import TurnRecord
from device.emulator.replies import Reply
from device.emulator.scenario import FAULT_PARAMS, REPLY_FAULTS, FaultKind, parse_fault_spec

# Kinds that act on the initiation, the metadata or the HTTP side, never on a reply.
CONNECTION_FAULTS = {"quota", "slow_metadata", "missing_metadata", "refuse_upgrade", "signed_url_error"}


def test_every_reply_fault_kind_has_exactly_one_handler() -> None:
    assert sorted(FAULT_HANDLERS) == sorted(REPLY_FAULTS)


def test_no_handler_serves_two_kinds() -> None:
    assert len(set(FAULT_HANDLERS.values())) == len(FAULT_HANDLERS)


def test_every_other_fault_kind_acts_on_the_connection() -> None:
    assert set(get_args(FaultKind)) - set(REPLY_FAULTS) == CONNECTION_FAULTS


def test_the_fault_kinds_are_the_ones_a_scenario_accepts() -> None:
    assert set(get_args(FaultKind)) == set(FAULT_PARAMS)


# -- the runner --------------------------------------------------------------------------------

FMT = parse_format("pcm_16000")


def reply(index: int = 0, chunks: int = 4) -> Reply:
    bounds = [(i * 320, (i + 1) * 320) for i in range(chunks)]
    return Reply("Hello there.", 7, index, bytes(320 * chunks), FMT, bounds, 0.0, 1.0, TurnRecord(0, "speech"), False)


def runner(out: Outbox, *specs: str, call_numbers: Iterator[int] | None = None) -> FaultRunner:
    faults = [parse_fault_spec(s) for s in specs]
    return FaultRunner(faults, out, end_call_reason="Bye", call_numbers=call_numbers or itertools.count(1))


def fired(out: Outbox) -> list[str]:
    return [e["kind"] for e in out.record.events_of("fault")]


def sent_types(out: Outbox) -> list[str]:
    return [a.message["type"] for a in out.flush() if isinstance(a, Send)]


def test_a_fault_fires_once_its_chunks_are_out(out: Outbox) -> None:
    faults = runner(out, "rich_content:reply=0,after_chunks=2")
    faults.inject(1.0, reply(), 1)
    faults.inject(1.0, reply(), 2)
    assert fired(out) == ["rich_content"]


def test_a_fault_fires_only_once(out: Outbox) -> None:
    faults = runner(out, "rich_content:reply=0,after_chunks=2")
    r = reply()
    faults.inject(1.0, r, 2)
    faults.inject(1.0, r, 2, at_end=True)
    assert fired(out) == ["rich_content"]


def test_a_fault_waits_for_its_reply(out: Outbox) -> None:
    runner(out, "rich_content:reply=1,after_chunks=1").inject(1.0, reply(index=0), 1)
    assert fired(out) == []


def test_a_fault_past_the_end_of_a_short_reply_fires_at_its_end(out: Outbox) -> None:
    runner(out, "rich_content:reply=0,after_chunks=9").inject(1.0, reply(chunks=4), 4, at_end=True)
    assert fired(out) == ["rich_content"]


def test_faults_after_a_close_do_not_fire(out: Outbox) -> None:
    runner(out, "close:reply=0,after_chunks=1", "rich_content:reply=0,after_chunks=1").inject(1.0, reply(), 1)
    assert fired(out) == ["close"] and out.ended


def test_connection_faults_are_not_the_runners(out: Outbox) -> None:
    runner(out, "quota", "slow_metadata:delay_s=1").inject(1.0, reply(), 1, at_end=True)
    assert fired(out) == []


def test_an_oversized_frame_marks_the_coming_chunk(out: Outbox) -> None:
    r = reply()
    runner(out, "oversized_frame:reply=0,after_chunks=2,size_bytes=4096").inject(1.0, r, 2)
    assert r.oversized_chunks == {2: 4096}


def test_an_oversized_frame_after_the_last_chunk_is_a_padded_tail(out: Outbox) -> None:
    runner(out, "oversized_frame:reply=0,after_chunks=4,size_bytes=4096").inject(1.0, reply(chunks=4), 4, at_end=True)
    assert [e.get("oversized_to_bytes") for e in out.record.events_of("audio")] == [4096]


def test_an_agent_tool_call_takes_the_next_shared_call_number(out: Outbox) -> None:
    numbers = itertools.count(5)
    runner(out, "agent_tool_response:reply=0,after_chunks=1", call_numbers=numbers).inject(1.0, reply(), 1)
    assert out.record.events_of("agent_tool_response")[0]["tool_call_id"] == "toolu_agent_005" and next(numbers) == 6


def test_an_agent_end_call_closes_after_its_delay(out: Outbox) -> None:
    faults = runner(out, "agent_tool_response:reply=0,after_chunks=1,delay_s=2")
    faults.inject(1.0, reply(), 1)
    assert faults.deadlines() == [3.0]
    faults.advance(2.9)
    assert not out.ended
    faults.advance(3.0)
    assert out.ended and out.record.events_of("close")[0]["reason"] == "Bye"


def awaiting(out: Outbox) -> FaultRunner:
    faults = runner(out, "mcp_tool_call:reply=0,after_chunks=1,state=awaiting_approval,approval_timeout_s=60")
    faults.inject(1.0, reply(), 1)
    out.flush()
    return faults


def mcp_states(out: Outbox) -> list[str]:
    return [e["state"] for e in out.record.events_of("mcp_tool_call")]


def test_an_mcp_call_awaits_approval_until_its_timeout(out: Outbox) -> None:
    assert awaiting(out).deadlines() == [61.0]


def test_an_approved_mcp_call_succeeds(out: Outbox) -> None:
    assert awaiting(out).approve(2.0, "mcp_89abcdef_001", True)
    assert mcp_states(out) == ["awaiting_approval", "success"]


def test_a_denied_mcp_call_fails(out: Outbox) -> None:
    awaiting(out).approve(2.0, "mcp_89abcdef_001", False)
    assert out.record.events_of("mcp_tool_call")[-1]["error_message"] == "Rejected by the user"


def test_an_approval_for_no_waiting_call_is_refused(out: Outbox) -> None:
    assert not awaiting(out).approve(2.0, "mcp_other", True)


def test_an_mcp_call_not_approved_in_time_fails(out: Outbox) -> None:
    faults = awaiting(out)
    faults.advance(61.0)
    assert mcp_states(out) == ["awaiting_approval", "failure"] and faults.deadlines() == []
    assert out.record.events_of("mcp_approval_timed_out")


def test_a_malformed_frame_is_sent_raw(out: Outbox) -> None:
    runner(out, "malformed_json:reply=0,after_chunks=1").inject(1.0, reply(), 1)
    assert [a for a in out.flush() if isinstance(a, SendRaw)]


def test_an_error_event_without_close_keeps_the_conversation(out: Outbox) -> None:
    runner(out, "error_event:reply=0,after_chunks=1,error_type=llm_error,then_close=false").inject(1.0, reply(), 1)
    assert sent_types(out) == ["error"] and not out.ended
