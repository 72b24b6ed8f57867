"""No hidden global state: sessions in one process do not interfere."""

from __future__ import annotations

import array
import time

import pytest

from device.core.protocol import AgentAudio, AgentResponse, Connected, Outcome, SessionEnded
from device.emulator.scenario import Fault
from tests.integration.sessionrig import WAIT_S, fast_scenario, make_session, running, started, wait_reply_played

pytestmark = pytest.mark.realtime


def marked(value: int, n_blocks: int) -> list[bytes]:
    return [array.array("h", [value] * 4000).tobytes() for _ in range(n_blocks)]


def test_two_sessions_at_once_keep_their_audio_events_and_lifetimes_apart() -> None:
    with running() as emu:
        a, events_a = make_session(emu, name="kiosk-a")
        b, events_b = make_session(emu, name="kiosk-b")
        for blk in marked(111, 3):
            a.send_audio(blk, time.monotonic())
        for blk in marked(222, 5):
            b.send_audio(blk, time.monotonic())
        a.start()
        b.start()
        try:
            conn_a = events_a.wait_for(Connected)
            conn_b = events_b.wait_for(Connected)
            emu.wait_until(
                lambda s: len(s) == 2 and sorted(len(r.user_audio_pcm) for r in s) == [24000, 40000],
                WAIT_S,
                "both held backlogs",
            )
            a.stop()
            assert events_a.ended().outcome is Outcome.LOCAL
            # b is unaffected: it still talks
            wait_reply_played(emu, 0)
            b.send_user_message("What can you do?")
            events_b.wait_for(AgentResponse, lambda e: e.text == "I can help.")
            assert not events_b.of(SessionEnded)
        finally:
            a.stop()
            b.stop()
        records = {r.conversation_id: r for r in (emu.wait_for_conversation_end(i, WAIT_S) for i in (0, 1))}
    assert conn_a.conversation_id != conn_b.conversation_id
    assert records[conn_a.conversation_id].user_audio_pcm == b"".join(marked(111, 3))
    assert records[conn_b.conversation_id].user_audio_pcm == b"".join(marked(222, 5))
    assert events_a.threads == {"kiosk-a-rx"}
    assert "kiosk-b-rx" in events_b.threads and not events_b.threads & {"kiosk-a-rx", "kiosk-a-tx"}
    assert a.stats["audio_blocks_sent"] == 3 and b.stats["audio_blocks_sent"] == 5
    assert all(not r.violations for r in records.values())


def test_a_failing_session_does_not_disturb_another() -> None:
    drop = fast_scenario(
        agent={"first_message": "Hello there. This reply is cut off."},
        faults=(Fault(kind="drop", reply=0, after_chunks=1),),
    )
    with running(drop) as bad_emu, running() as good_emu:
        bad, events_bad = make_session(bad_emu)
        good, events_good = make_session(good_emu)
        with started(good), started(bad):
            events_good.wait_for(Connected)
            assert events_bad.ended().outcome is Outcome.NETWORK
            wait_reply_played(good_emu, 0)
            good.send_user_message("What can you do?")
            events_good.wait_for(AgentResponse, lambda e: e.text == "I can help.")
            assert not events_good.of(SessionEnded)
        assert events_good.ended().outcome is Outcome.LOCAL
    assert events_good.of(AgentAudio)
    assert events_good.threads == {"session-rx"}


def test_sessions_one_after_another_start_fresh() -> None:
    with running() as emu:
        outcomes = []
        for _ in range(3):
            session, events = make_session(emu)
            with started(session):
                events.wait_for(Connected)
                events.wait_for(AgentAudio)
            outcomes.append(events.ended().outcome)
            assert session.stats["agent_audio_dropped"] == 0 and session.stats["audio_blocks_dropped"] == 0
        ids = [emu.wait_for_conversation_end(i, WAIT_S).conversation_id for i in range(3)]
    assert outcomes == [Outcome.LOCAL] * 3 and len(set(ids)) == 3
