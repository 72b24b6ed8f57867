"""The controller's queue and its dispatch tables: every event type that can arrive has a handler."""

from __future__ import annotations

import typing

from device.app import controller
from device.app.agent import SESSION_EVENTS_UNUSED, SESSION_HANDLERS
from device.app.controller import QUEUE_HANDLERS, QUEUE_SIZE, Controller
from device.app.speaker import NOT_THROUGH_THE_CONTROLLER, PLAYBACK_HANDLERS
from device.core import events
from device.core.audioevents import PlaybackEventKind
from device.core.config import Config
from device.core.events import MuteEvent
from device.core.protocol import SessionEvent


def test_a_full_queue_drops_and_counts_instead_of_blocking_the_poster() -> None:
    def no_session(on_event: object) -> object:
        raise AssertionError("not used")

    c = Controller(Config(), no_session, None)  # type: ignore[arg-type]  # not started: nothing drains the queue
    assert all(c.post(MuteEvent("ctl", True, 0.0)) for _ in range(QUEUE_SIZE))
    assert c.post(MuteEvent("ctl", True, 0.0)) is False
    assert c.counters["dropped_events"] == 1


def test_every_session_event_type_is_handled_or_declared_unused() -> None:
    types = set(typing.get_args(SessionEvent))
    assert set(SESSION_HANDLERS) | SESSION_EVENTS_UNUSED == types  # a new event type must be decided on
    assert not set(SESSION_HANDLERS) & SESSION_EVENTS_UNUSED


def test_every_playback_event_kind_has_a_handler() -> None:
    kinds = set(typing.get_args(PlaybackEventKind))
    assert set(PLAYBACK_HANDLERS) | NOT_THROUGH_THE_CONTROLLER == kinds  # a new kind must be decided on
    assert not set(PLAYBACK_HANDLERS) & NOT_THROUGH_THE_CONTROLLER


def test_every_queue_event_type_has_a_handler() -> None:
    posted = {events.BlockEvent, events.SessionNote, events.PlaybackNote, events.ButtonEvent, events.MuteEvent,
              events.Command, events.DeviceFault}
    assert set(QUEUE_HANDLERS) == posted


def test_every_event_the_core_defines_is_one_the_queue_carries() -> None:
    defined = {v for v in vars(events).values() if isinstance(v, type) and v.__module__ == events.__name__}
    assert defined == set(controller.QUEUE_HANDLERS)
