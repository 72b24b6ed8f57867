"""The controller: its queue, the press's audio across connection attempts, and its dispatch tables."""

from __future__ import annotations

import pytest

from device.app.controller import HeldAudio
from device.core.gate import Chunk


def test_a_full_queue_drops_and_counts_instead_of_blocking_the_poster() -> None:
    from device.app.controller import QUEUE_SIZE, Controller
    from device.core.config import Config
    from device.core.events import MuteEvent

    def no_session(on_event: object) -> object:
        raise AssertionError("not used")

    c = Controller(Config(), no_session, None)  # type: ignore[arg-type]  # not started: nothing drains the queue
    assert all(c.post(MuteEvent("ctl", True, 0.0)) for _ in range(QUEUE_SIZE))
    assert c.post(MuteEvent("ctl", True, 0.0)) is False
    assert c.counters["dropped_events"] == 1


# -- the press's audio across connection attempts ------------------------------------------------


def chunk(seq: int, open_: bool = True, seconds: float = 0.25) -> Chunk:
    return Chunk(bytes([1, 0]) * int(16000 * seconds), captured_at_s=seq * seconds, seq=seq, open=open_)


def test_held_audio_keeps_every_chunk_in_order_and_counts_only_microphone_audio_when_cleared() -> None:
    held = HeldAudio(max_s=10.0)
    chunks = [chunk(0, open_=False), chunk(1), chunk(2), chunk(3, open_=False)]
    assert [held.add(c) for c in chunks] == [0.0] * 4
    assert held.chunks == tuple(chunks)
    assert held.clear() == pytest.approx(0.5)  # two open chunks; zeros from a closed gate are not speech
    assert len(held) == 0 and held.clear() == 0.0


def test_held_audio_is_bounded_like_the_send_backlog_dropping_the_oldest() -> None:
    held = HeldAudio(max_s=1.0)  # four 250 ms chunks
    dropped = [held.add(chunk(i)) for i in range(6)]
    assert dropped == [0.0, 0.0, 0.0, 0.0, pytest.approx(0.25), pytest.approx(0.25)]
    assert [c.seq for c in held.chunks] == [2, 3, 4, 5]


# -- the controller's dispatch tables ------------------------------------------------------------


def test_every_session_event_type_is_handled_or_declared_unused() -> None:
    import typing

    from device.app.controller import SESSION_EVENTS_UNUSED, SESSION_HANDLERS
    from device.core.protocol import SessionEvent

    types = set(typing.get_args(SessionEvent))
    assert set(SESSION_HANDLERS) | SESSION_EVENTS_UNUSED == types  # a new event type must be decided on
    assert not set(SESSION_HANDLERS) & SESSION_EVENTS_UNUSED


def test_every_queue_event_type_has_a_handler() -> None:
    from device.app import controller
    from device.core import events

    posted = {events.BlockEvent, events.SessionNote, events.PlaybackNote, events.ButtonEvent, events.MuteEvent,
              events.Command, events.DeviceFault}
    assert set(controller.QUEUE_HANDLERS) == posted
