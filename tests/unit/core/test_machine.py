"""The appliance's state machine, table-driven over every (state, input) pair."""

from __future__ import annotations

import math
import random

import pytest

from device.core.config import SessionConfig
from device.core.machine import (
    CONVERSATION,
    Action,
    ButtonTracker,
    Input,
    Kind,
    Machine,
    MachineSettings,
    State,
)

A = Action
S = State
K = Kind

STOP_DONE = [A.STOP_SESSION, A.EARCON_DONE]
FAIL = [A.STOP_SESSION, A.EARCON_ERROR, A.REPORT_ERROR]
RETRY = [A.STOP_SESSION, A.REPORT_ERROR]  # retried at once: no earcon over the user's words

# Every transition that is not "stay, do nothing", written out independently of
# the implementation's table. Pairs missing here must leave the state unchanged
# and do nothing.
SPEC: dict[tuple[State, Kind], tuple[State, list[Action]]] = {
    (S.IDLE, K.PRESS): (S.CONNECTING, [A.START_SESSION]),
    (S.IDLE, K.WAKE_WORD): (S.CONNECTING, [A.START_SESSION, A.EARCON_LISTENING]),
    (S.IDLE, K.START): (S.CONNECTING, [A.START_SESSION]),
    (S.IDLE, K.MUTE): (S.MUTED, []),
    (S.MUTED, K.UNMUTE): (S.IDLE, []),
    (S.MUTED, K.PRESS): (S.MUTED, [A.EARCON_ERROR, A.REPORT_MUTED]),
    (S.MUTED, K.START): (S.MUTED, [A.EARCON_ERROR, A.REPORT_MUTED]),
    (S.CONNECTING, K.CONNECTED): (S.LISTENING, [A.EARCON_LISTENING]),
    (S.CONNECTING, K.FAILED): (S.ERROR, FAIL),
    (S.CONNECTING, K.TIMEOUT): (S.ERROR, FAIL),
    (S.CONNECTING, K.ENDED): (S.IDLE, STOP_DONE),
    (S.CONNECTING, K.LONG_PRESS): (S.IDLE, STOP_DONE),
    (S.CONNECTING, K.STOP): (S.IDLE, STOP_DONE),
    (S.CONNECTING, K.MAX_DURATION): (S.IDLE, STOP_DONE),
    (S.CONNECTING, K.SHUTDOWN): (S.IDLE, [A.STOP_SESSION]),
    (S.LISTENING, K.TURN_END): (S.THINKING, []),
    (S.LISTENING, K.REPLY_STARTED): (S.SPEAKING, []),
    (S.LISTENING, K.INTERRUPTION): (S.LISTENING, [A.FLUSH]),
    (S.LISTENING, K.TIMEOUT): (S.IDLE, STOP_DONE),
    (S.LISTENING, K.ENDED): (S.IDLE, STOP_DONE),
    (S.LISTENING, K.FAILED): (S.ERROR, FAIL),
    (S.LISTENING, K.LONG_PRESS): (S.IDLE, STOP_DONE),
    (S.LISTENING, K.STOP): (S.IDLE, STOP_DONE),
    (S.LISTENING, K.MAX_DURATION): (S.IDLE, STOP_DONE),
    (S.LISTENING, K.SHUTDOWN): (S.IDLE, [A.STOP_SESSION]),
    (S.THINKING, K.REPLY_STARTED): (S.SPEAKING, []),
    (S.THINKING, K.TURN_START): (S.LISTENING, []),
    (S.THINKING, K.PRESS): (S.LISTENING, []),
    (S.THINKING, K.TIMEOUT): (S.LISTENING, []),
    (S.THINKING, K.INTERRUPTION): (S.THINKING, [A.FLUSH]),
    (S.THINKING, K.ENDED): (S.IDLE, STOP_DONE),
    (S.THINKING, K.FAILED): (S.ERROR, FAIL),
    (S.THINKING, K.LONG_PRESS): (S.IDLE, STOP_DONE),
    (S.THINKING, K.STOP): (S.IDLE, STOP_DONE),
    (S.THINKING, K.MAX_DURATION): (S.IDLE, STOP_DONE),
    (S.THINKING, K.SHUTDOWN): (S.IDLE, [A.STOP_SESSION]),
    (S.SPEAKING, K.REPLY_FINISHED): (S.LISTENING, []),
    (S.SPEAKING, K.INTERRUPTION): (S.LISTENING, [A.FLUSH]),
    (S.SPEAKING, K.PRESS): (S.LISTENING, [A.FLUSH]),
    (S.SPEAKING, K.TIMEOUT): (S.LISTENING, [A.FLUSH]),
    (S.SPEAKING, K.ENDED): (S.ENDING, [A.STOP_SESSION]),
    (S.SPEAKING, K.FAILED): (S.ERROR, [A.FLUSH, *FAIL]),
    (S.SPEAKING, K.LONG_PRESS): (S.IDLE, [A.FLUSH, *STOP_DONE]),
    (S.SPEAKING, K.STOP): (S.IDLE, [A.FLUSH, *STOP_DONE]),
    (S.SPEAKING, K.MAX_DURATION): (S.IDLE, [A.FLUSH, *STOP_DONE]),
    (S.SPEAKING, K.SHUTDOWN): (S.IDLE, [A.FLUSH, A.STOP_SESSION]),
    (S.ENDING, K.REPLY_FINISHED): (S.IDLE, [A.EARCON_DONE]),
    (S.ENDING, K.PRESS): (S.CONNECTING, [A.FLUSH, A.START_SESSION]),
    (S.ENDING, K.START): (S.CONNECTING, [A.FLUSH, A.START_SESSION]),
    (S.ENDING, K.LONG_PRESS): (S.IDLE, [A.FLUSH]),
    (S.ENDING, K.STOP): (S.IDLE, [A.FLUSH]),
    (S.ENDING, K.TIMEOUT): (S.IDLE, [A.FLUSH]),
    (S.ENDING, K.SHUTDOWN): (S.IDLE, [A.FLUSH]),
    (S.ERROR, K.PRESS): (S.CONNECTING, [A.START_SESSION]),
    (S.ERROR, K.START): (S.CONNECTING, [A.START_SESSION]),
    (S.ERROR, K.TIMEOUT): (S.IDLE, []),  # no retry pending
    (S.ERROR, K.LONG_PRESS): (S.IDLE, []),
    (S.ERROR, K.STOP): (S.IDLE, []),
    (S.ERROR, K.MUTE): (S.MUTED, []),
    (S.ERROR, K.SHUTDOWN): (S.IDLE, []),
}

ALL_PAIRS = [(s, k) for s in State for k in Kind]


def machine(state: State = S.IDLE, now_s: float = 0.0, **settings: object) -> Machine:
    session = settings.pop("session", SessionConfig())
    m = Machine(MachineSettings(session=session, **settings), now_s, rng=random.Random(1))  # type: ignore[arg-type]
    m.state = state
    m._set_deadline(state, now_s)
    return m


@pytest.mark.parametrize(("state", "kind"), ALL_PAIRS, ids=[f"{s}-{k}" for s, k in ALL_PAIRS])
def test_every_transition(state: State, kind: Kind) -> None:
    m = machine(state, now_s=100.0)
    event = Input(kind, retryable=False, message="boom; do this")
    actions = m.handle(event, 101.0)
    expected_state, expected_actions = SPEC.get((state, kind), (state, []))
    assert (m.state, actions) == (expected_state, expected_actions)
    if expected_state is not state:
        assert m.since_s == 101.0


def test_spec_names_only_real_states_and_kinds() -> None:
    assert set(SPEC) <= set(ALL_PAIRS)


def test_every_state_but_the_resting_ones_has_a_deadline_that_leaves_it() -> None:
    for state in State:
        m = machine(state, now_s=0.0)
        if state in (S.IDLE, S.MUTED):
            assert m.next_deadline_s() is None  # resting states: nothing can be stuck there
            continue
        deadline = m.next_deadline_s()
        assert deadline is not None
        assert m.poll(deadline - 0.001) == [] and m.state is state
        m.poll(deadline)
        assert m.state is not state, f"{state} did not time out"


def test_state_timeouts_come_from_the_config() -> None:
    cfg = SessionConfig(idle_timeout_s=11, connecting_timeout_s=12, thinking_timeout_s=13,
                        speaking_timeout_s=14, error_hold_s=15)
    for state, timeout_s in [(S.LISTENING, 11), (S.CONNECTING, 12), (S.THINKING, 13), (S.SPEAKING, 14),
                             (S.ENDING, 14), (S.ERROR, 15)]:
        assert machine(state, now_s=1.0, session=cfg).deadline_s == 1.0 + timeout_s


def test_conversation_lifecycle_counts_and_returns_to_idle() -> None:
    m = machine()
    assert m.handle(Input(K.PRESS), 0.0) == [A.START_SESSION]
    m.handle(Input(K.CONNECTED), 0.5)
    m.handle(Input(K.TURN_END), 2.0)
    m.handle(Input(K.REPLY_STARTED), 3.0)
    m.handle(Input(K.REPLY_FINISHED), 6.0)
    assert m.state is S.LISTENING and m.conversations == 1
    assert m.poll(6.0 + SessionConfig().idle_timeout_s) == STOP_DONE
    assert m.state is S.IDLE and m.next_deadline_s() is None


def test_activity_keeps_the_idle_timeout_from_firing() -> None:
    m = machine(S.LISTENING, now_s=0.0, session=SessionConfig(idle_timeout_s=10))
    for t in range(5, 50, 5):
        m.handle(Input(K.ACTIVITY), float(t))
        assert m.poll(t + 9.0) == [] and m.state is S.LISTENING
    m.poll(45.0 + 10.0)
    assert m.state is S.IDLE


def test_max_duration_ends_a_busy_conversation() -> None:
    m = machine(session=SessionConfig(max_duration_s=60, idle_timeout_s=10))
    m.handle(Input(K.PRESS), 0.0)
    m.handle(Input(K.CONNECTED), 1.0)
    for t in range(2, 60):
        m.handle(Input(K.ACTIVITY), float(t))
        m.poll(float(t))
    assert m.state is S.LISTENING
    assert m.poll(60.0) == STOP_DONE and m.state is S.IDLE


def test_connection_failures_retry_automatically_with_backoff_then_give_up() -> None:
    cfg = SessionConfig(retry_attempts=2, retry_initial_s=1.0, retry_max_s=60.0, error_hold_s=5.0)
    m = machine(session=cfg)
    m.handle(Input(K.PRESS), 0.0)
    now = 0.0
    delays = []
    for attempt in range(2):
        now += 1.0
        assert m.handle(Input(K.FAILED, retryable=True, message="network down; check it"), now) == RETRY
        assert m.state is S.ERROR and m.retry_pending and m.last_error == "network down; check it"
        assert m.between_attempts and m.display == "error"  # the LEDs show the retry
        delay = m.deadline_s - now  # type: ignore[operator]
        delays.append(delay)
        assert 0.8 * 2**attempt <= delay <= 1.2 * 2**attempt  # capped exponential with ±20 % jitter
        assert m.poll(m.deadline_s) == [A.START_SESSION]  # type: ignore[arg-type]
        now = m.since_s
        assert m.state is S.CONNECTING
    now += 1.0
    assert m.handle(Input(K.FAILED, retryable=True), now) == FAIL  # the last one: now the earcon
    assert not m.retry_pending and not m.between_attempts
    assert m.deadline_s == now + 5.0  # retries used up: show the error, then idle
    m.poll(now + 5.0)
    assert m.state is S.IDLE and m.errors == 3


def test_server_retry_after_is_honoured() -> None:
    m = machine(S.CONNECTING, now_s=0.0)
    m.handle(Input(K.FAILED, retryable=True, retry_after_s=42.0), 1.0)
    assert m.retry_pending and m.deadline_s == 43.0


@pytest.mark.parametrize("retry_after_s", [3600.0, 1e12, math.inf, math.nan, -5.0])
def test_the_retry_waits_at_most_retry_max_s_whatever_the_server_asks(retry_after_s: float) -> None:
    m = machine(S.CONNECTING, now_s=0.0, session=SessionConfig(retry_initial_s=0.5, retry_max_s=2.0))
    m.handle(Input(K.FAILED, retryable=True, retry_after_s=retry_after_s), 1.0)
    assert m.retry_pending and m.deadline_s is not None and 1.0 < m.deadline_s <= 3.0
    assert m.poll(m.deadline_s) == [A.START_SESSION]  # type: ignore[arg-type]


def test_connect_timeout_is_retried() -> None:
    m = machine(S.CONNECTING, now_s=0.0, session=SessionConfig(connecting_timeout_s=5))
    assert m.poll(5.0) == RETRY
    assert m.state is S.ERROR and m.retry_pending and "no connection" in m.last_error


def test_non_retryable_failure_waits_for_a_press() -> None:
    m = machine(S.CONNECTING, now_s=0.0)
    assert m.handle(Input(K.FAILED, retryable=False, message="key rejected"), 1.0) == FAIL
    assert not m.retry_pending and not m.between_attempts
    m.poll(m.deadline_s)  # type: ignore[arg-type]
    assert m.state is S.IDLE
    assert m.handle(Input(K.PRESS), 20.0) == [A.START_SESSION]


def test_failure_mid_conversation_is_shown_not_retried_and_a_press_recovers() -> None:
    m = machine(S.LISTENING, now_s=0.0)
    assert m.handle(Input(K.FAILED, retryable=True, message="network lost"), 1.0) == FAIL
    assert m.state is S.ERROR and not m.retry_pending
    assert m.handle(Input(K.PRESS), 2.0) == [A.START_SESSION]
    assert m.state is S.CONNECTING and m.attempts == 0


def test_press_during_retry_wait_starts_at_once_and_resets_the_count() -> None:
    m = machine(S.CONNECTING, now_s=0.0)
    m.handle(Input(K.FAILED, retryable=True), 1.0)
    m.poll(m.deadline_s)  # type: ignore[arg-type]
    m.handle(Input(K.FAILED, retryable=True), 10.0)
    assert m.attempts == 2
    m.handle(Input(K.PRESS), 10.5)
    assert m.state is S.CONNECTING and m.attempts == 0 and not m.retry_pending


def test_no_automatic_retry_when_retry_attempts_is_zero() -> None:
    m = machine(S.CONNECTING, now_s=0.0, session=SessionConfig(retry_attempts=0))
    assert m.handle(Input(K.FAILED, retryable=True), 1.0) == FAIL
    assert m.state is S.ERROR and not m.between_attempts


def test_barge_in_none_ignores_a_press_while_speaking() -> None:
    m = machine(S.SPEAKING, barge_in="none")
    assert m.handle(Input(K.PRESS), 1.0) == [] and m.state is S.SPEAKING


def test_wake_word_barges_in_only_with_barge_in_wake_word() -> None:
    m = machine(S.SPEAKING, barge_in="wake_word")
    assert m.handle(Input(K.WAKE_WORD), 1.0) == [A.FLUSH] and m.state is S.LISTENING
    for other in ("button", "none", "voice"):
        m = machine(S.SPEAKING, barge_in=other)
        assert m.handle(Input(K.WAKE_WORD), 1.0) == [] and m.state is S.SPEAKING


def test_a_wake_shows_woken_until_connected() -> None:
    m = machine()
    m.handle(Input(K.WAKE_WORD), 1.0)
    assert m.state is S.CONNECTING and m.display == "woken"
    m.handle(Input(K.CONNECTED), 1.5)
    assert m.display == "listening"
    m.handle(Input(K.STOP), 2.0)
    m.handle(Input(K.PRESS), 3.0)
    assert m.state is S.CONNECTING and m.display == "connecting"  # a press is not a wake


def test_start_on_speech() -> None:
    m = machine(start_on_speech=True)
    assert m.handle(Input(K.TURN_START), 1.0) == [A.START_SESSION] and m.state is S.CONNECTING


def test_mute_during_a_conversation_shows_muted_when_it_ends() -> None:
    m = machine(S.LISTENING)
    m.handle(Input(K.MUTE), 1.0)
    assert m.state is S.LISTENING and m.muted and m.display == "muted"  # the LEDs say the mic is off
    m.handle(Input(K.FAILED), 1.5)
    assert m.display == "error"  # a failure still shows
    m.handle(Input(K.PRESS), 1.8)
    m.handle(Input(K.STOP), 2.0)
    assert m.state is S.MUTED and m.display == "muted"
    m.handle(Input(K.UNMUTE), 3.0)
    assert m.state is S.IDLE


def test_mute_cancels_a_pending_retry() -> None:
    m = machine(S.CONNECTING)
    m.handle(Input(K.FAILED, retryable=True), 1.0)
    m.handle(Input(K.MUTE), 1.5)
    assert m.state is S.MUTED and m.next_deadline_s() is None


def test_ending_looks_like_speaking() -> None:
    m = machine(S.SPEAKING)
    m.handle(Input(K.ENDED), 1.0)
    assert m.state is S.ENDING and m.display == "speaking"
    assert m.conversation_deadline_s is None


def test_conversation_states() -> None:
    assert {S.CONNECTING, S.LISTENING, S.THINKING, S.SPEAKING} == CONVERSATION


# -- the logical button --------------------------------------------------------------------


def test_button_sources_combine_into_one_button() -> None:
    b = ButtonTracker(long_press_s=2.0)
    assert b.press("gpio", 0.0) is True
    assert b.press("ctl", 0.5) is False  # already down
    assert b.release("gpio", 1.0) is False  # the on-screen button still holds it
    assert b.release("ctl", 1.5) is True and not b.down
    assert b.release("ctl", 1.6) is False  # a stray release is ignored


def test_long_press_is_reported_once_per_press() -> None:
    b = ButtonTracker(long_press_s=2.0)
    b.press("gpio", 10.0)
    assert b.long_press_due_s() == 12.0
    assert b.poll(11.9) is False
    assert b.poll(12.0) is True
    assert b.poll(13.0) is False and b.long_press_due_s() is None
    b.release("gpio", 14.0)
    b.press("gpio", 15.0)
    assert b.poll(17.0) is True


def test_long_press_disabled_in_push_to_talk() -> None:
    b = ButtonTracker(long_press_s=2.0, long_press_enabled=False)
    b.press("gpio", 0.0)
    assert b.long_press_due_s() is None and b.poll(100.0) is False
