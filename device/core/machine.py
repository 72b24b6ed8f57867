"""The appliance's state machine (pure: no threads, no I/O, the time passed in).

:class:`Machine` is a transition table (:data:`TABLE`) from (state, input
kind) to a target state and actions, plus a deadline for every state so the
kiosk can never stay stuck; tested table-driven over every pair. The
controller (:mod:`device.app.controller`) feeds it and carries out its actions.
:class:`ButtonTracker` turns presses from every source into one logical button.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from device.core.config import Config, SessionConfig
from device.core.retry import retry_delay_s


class State(enum.StrEnum):
    IDLE = "idle"  # no socket: conversations are billed by the minute
    CONNECTING = "connecting"  # session starting; audio since the press is held
    LISTENING = "listening"  # connected, the user's turn
    THINKING = "thinking"  # the user finished, waiting for the agent
    SPEAKING = "speaking"  # the agent's reply is audible
    ENDING = "ending"  # the agent closed the conversation, its last words still play
    ERROR = "error"  # a failure is shown; a press (or the retry timer) reconnects
    MUTED = "muted"  # idle with the microphone forced off


CONVERSATION = frozenset({State.CONNECTING, State.LISTENING, State.THINKING, State.SPEAKING})

# What the LEDs and the status show (ENDING looks like SPEAKING).
DISPLAY: Mapping[State, str] = {s: ("speaking" if s is State.ENDING else s.value) for s in State}


class Kind(enum.StrEnum):
    PRESS = "press"  # button or on-screen button pressed
    LONG_PRESS = "long_press"  # held for button.long_press_s (not in push_to_talk)
    START = "start"  # ctl start
    STOP = "stop"  # ctl stop, the end_conversation tool
    MUTE = "mute"
    UNMUTE = "unmute"
    TURN_START = "turn_start"  # the user began speaking (gate)
    TURN_END = "turn_end"  # the user finished (release, toggle off, hang-over, final transcript)
    ACTIVITY = "activity"  # the user is speaking (keeps the idle timer from firing)
    CONNECTED = "connected"
    REPLY_STARTED = "reply_started"  # first sample of agent audio written
    REPLY_FINISHED = "reply_finished"  # playback drained
    INTERRUPTION = "interruption"  # the server says the agent was interrupted
    ENDED = "ended"  # the session closed normally
    FAILED = "failed"  # the session failed
    TIMEOUT = "timeout"  # the state's deadline passed
    MAX_DURATION = "max_duration"  # the conversation's deadline passed
    SHUTDOWN = "shutdown"
    WAKE_WORD = "wake"  # the wake word was heard (gate.mode = "wake_word")
    VOICE = "voice"  # the user talked over the agent (echo cancelled; gate.barge_in = "voice")


class Action(enum.StrEnum):
    START_SESSION = "start_session"
    STOP_SESSION = "stop_session"
    FLUSH = "flush"  # drop the agent's queued audio now
    EARCON_LISTENING = "earcon_listening"
    EARCON_DONE = "earcon_done"
    EARCON_ERROR = "earcon_error"
    REPORT_ERROR = "report_error"  # log the failure's one line (what to do)
    REPORT_MUTED = "report_muted"


@dataclass(frozen=True)
class Input:
    """One input to the machine."""

    kind: Kind
    retryable: bool = False  # FAILED: worth an automatic retry
    retry_after_s: float | None = None  # FAILED: the server asked for this delay (waited up to retry_max_s)
    message: str = ""  # FAILED: one line, what happened and what to do


@dataclass(frozen=True)
class Rule:
    """A transition: the target (None: stay) and the actions, in order."""

    target: State | None = None
    actions: tuple[Action, ...] = ()
    refresh: bool = False  # restart the state's deadline (activity)


STAY = Rule()
_STOP_ACTIONS = (Action.STOP_SESSION, Action.EARCON_DONE)
_FAIL_ACTIONS = (Action.STOP_SESSION, Action.EARCON_ERROR, Action.REPORT_ERROR)

# Conditional rules are resolved by Machine._resolve (see the markers below).
RETRY_OR_FAIL = Rule(State.ERROR, _FAIL_ACTIONS)  # CONNECTING failed: maybe retry automatically
# A failed attempt that is retried at once: the user may be mid-sentence, so no earcon (the LEDs show
# the error) and the press's audio carries over to the next attempt (MicPath.settle).
RETRY = Rule(State.ERROR, (Action.STOP_SESSION, Action.REPORT_ERROR))
BARGE_IN = Rule(State.LISTENING, (Action.FLUSH,))  # only when barge-in is allowed
WAKE_WORD_BARGE_IN = Rule(State.LISTENING, (Action.FLUSH,))  # only with gate.barge_in = "wake_word"
VOICE_BARGE_IN = Rule(State.LISTENING, (Action.FLUSH,))  # only with gate.barge_in = "voice"
SPEECH_START = Rule(State.CONNECTING, (Action.START_SESSION,))  # only with gate.start_on_speech
ERROR_TIMEOUT = Rule(State.IDLE)  # or CONNECTING when a retry is due

_in_conversation = {
    Kind.LONG_PRESS: Rule(State.IDLE, _STOP_ACTIONS),
    Kind.STOP: Rule(State.IDLE, _STOP_ACTIONS),
    Kind.MAX_DURATION: Rule(State.IDLE, _STOP_ACTIONS),
    Kind.SHUTDOWN: Rule(State.IDLE, (Action.STOP_SESSION,)),
    Kind.ENDED: Rule(State.IDLE, _STOP_ACTIONS),
    Kind.FAILED: Rule(State.ERROR, _FAIL_ACTIONS),
    Kind.INTERRUPTION: Rule(None, (Action.FLUSH,)),  # audio may be queued before it is audible
}

TABLE: Mapping[tuple[State, Kind], Rule] = {
    # idle: nothing runs; a press (or speech, if configured) starts a conversation
    (State.IDLE, Kind.PRESS): Rule(State.CONNECTING, (Action.START_SESSION,)),
    (State.IDLE, Kind.START): Rule(State.CONNECTING, (Action.START_SESSION,)),
    (State.IDLE, Kind.TURN_START): SPEECH_START,
    (State.IDLE, Kind.MUTE): Rule(State.MUTED),
    # the cue confirms the wake word at once; the words after it are already being held for the agent
    (State.IDLE, Kind.WAKE_WORD): Rule(State.CONNECTING, (Action.START_SESSION, Action.EARCON_LISTENING)),
    # muted: the microphone is off until unmuted
    (State.MUTED, Kind.UNMUTE): Rule(State.IDLE),
    (State.MUTED, Kind.PRESS): Rule(None, (Action.EARCON_ERROR, Action.REPORT_MUTED)),
    (State.MUTED, Kind.START): Rule(None, (Action.EARCON_ERROR, Action.REPORT_MUTED)),
    # connecting
    **{(State.CONNECTING, k): r for k, r in _in_conversation.items()},
    (State.CONNECTING, Kind.CONNECTED): Rule(State.LISTENING, (Action.EARCON_LISTENING,)),
    (State.CONNECTING, Kind.FAILED): RETRY_OR_FAIL,
    (State.CONNECTING, Kind.TIMEOUT): RETRY_OR_FAIL,
    (State.CONNECTING, Kind.INTERRUPTION): STAY,
    # listening: the user's turn; the idle timeout ends a conversation nobody uses
    **{(State.LISTENING, k): r for k, r in _in_conversation.items()},
    (State.LISTENING, Kind.TURN_END): Rule(State.THINKING),
    (State.LISTENING, Kind.TURN_START): Rule(refresh=True),
    (State.LISTENING, Kind.ACTIVITY): Rule(refresh=True),
    (State.LISTENING, Kind.PRESS): Rule(refresh=True),
    (State.LISTENING, Kind.REPLY_STARTED): Rule(State.SPEAKING),
    (State.LISTENING, Kind.TIMEOUT): Rule(State.IDLE, _STOP_ACTIONS),
    # thinking: waiting for the agent
    **{(State.THINKING, k): r for k, r in _in_conversation.items()},
    (State.THINKING, Kind.REPLY_STARTED): Rule(State.SPEAKING),
    (State.THINKING, Kind.TURN_START): Rule(State.LISTENING),
    (State.THINKING, Kind.PRESS): Rule(State.LISTENING),
    (State.THINKING, Kind.TIMEOUT): Rule(State.LISTENING),
    # speaking: the agent's reply is audible
    **{(State.SPEAKING, k): r for k, r in _in_conversation.items()},
    (State.SPEAKING, Kind.REPLY_FINISHED): Rule(State.LISTENING),
    (State.SPEAKING, Kind.INTERRUPTION): Rule(State.LISTENING, (Action.FLUSH,)),
    (State.SPEAKING, Kind.PRESS): BARGE_IN,
    (State.SPEAKING, Kind.WAKE_WORD): WAKE_WORD_BARGE_IN,
    (State.SPEAKING, Kind.VOICE): VOICE_BARGE_IN,
    (State.SPEAKING, Kind.TIMEOUT): Rule(State.LISTENING, (Action.FLUSH,)),
    (State.SPEAKING, Kind.ENDED): Rule(State.ENDING, (Action.STOP_SESSION,)),
    (State.SPEAKING, Kind.FAILED): Rule(State.ERROR, (Action.FLUSH, *_FAIL_ACTIONS)),
    (State.SPEAKING, Kind.LONG_PRESS): Rule(State.IDLE, (Action.FLUSH, *_STOP_ACTIONS)),
    (State.SPEAKING, Kind.STOP): Rule(State.IDLE, (Action.FLUSH, *_STOP_ACTIONS)),
    (State.SPEAKING, Kind.MAX_DURATION): Rule(State.IDLE, (Action.FLUSH, *_STOP_ACTIONS)),
    (State.SPEAKING, Kind.SHUTDOWN): Rule(State.IDLE, (Action.FLUSH, Action.STOP_SESSION)),
    # ending: the socket is closed, the agent's last words play out
    (State.ENDING, Kind.REPLY_FINISHED): Rule(State.IDLE, (Action.EARCON_DONE,)),
    (State.ENDING, Kind.PRESS): Rule(State.CONNECTING, (Action.FLUSH, Action.START_SESSION)),
    (State.ENDING, Kind.START): Rule(State.CONNECTING, (Action.FLUSH, Action.START_SESSION)),
    (State.ENDING, Kind.LONG_PRESS): Rule(State.IDLE, (Action.FLUSH,)),
    (State.ENDING, Kind.STOP): Rule(State.IDLE, (Action.FLUSH,)),
    (State.ENDING, Kind.TIMEOUT): Rule(State.IDLE, (Action.FLUSH,)),
    (State.ENDING, Kind.SHUTDOWN): Rule(State.IDLE, (Action.FLUSH,)),
    # error: shown for error_hold_s (or until the automatic retry); a press retries now
    (State.ERROR, Kind.PRESS): Rule(State.CONNECTING, (Action.START_SESSION,)),
    (State.ERROR, Kind.START): Rule(State.CONNECTING, (Action.START_SESSION,)),
    (State.ERROR, Kind.TIMEOUT): ERROR_TIMEOUT,
    (State.ERROR, Kind.LONG_PRESS): Rule(State.IDLE),
    (State.ERROR, Kind.STOP): Rule(State.IDLE),
    (State.ERROR, Kind.MUTE): Rule(State.MUTED),
    (State.ERROR, Kind.SHUTDOWN): Rule(State.IDLE),
}


@dataclass(frozen=True)
class MachineSettings:
    """What the machine needs from the config."""

    session: SessionConfig = field(default_factory=SessionConfig)
    barge_in: str = "button"
    start_on_speech: bool = False

    @classmethod
    def from_config(cls, cfg: Config) -> MachineSettings:
        return cls(cfg.session, cfg.gate.barge_in, cfg.gate.start_on_speech)


class Machine:
    """The pure state machine. ``handle``/``poll`` return the actions to carry out."""

    def __init__(self, settings: MachineSettings, now_s: float, rng: random.Random | None = None) -> None:
        self.settings = settings
        self.state = State.IDLE
        self.since_s = now_s
        self.deadline_s: float | None = None
        self.conversation_deadline_s: float | None = None
        self.muted = False
        self.device_fault = False  # a microphone or speaker is missing (shown as an error)
        self.attempts = 0  # automatic retries made for the current press
        self.retry_pending = False
        self.last_error = ""
        self.conversations = 0
        self.errors = 0
        self.last_rule: Rule = STAY
        self.last_kind = Kind.SHUTDOWN  # the input handled last (the cause of a transition)
        self.started_by_wake_word = False  # connecting because the wake word was heard (shown as "woken")
        self._rng = rng or random.Random()

    @property
    def display(self) -> str:
        """What the LEDs show: the state, except that a missing audio device shows as an error
        and a muted microphone as muted (errors win)."""
        if self.device_fault and self.state not in CONVERSATION:
            return "error"
        if self.muted and self.state is not State.ERROR:
            return "muted"
        if self.started_by_wake_word and self.state is State.CONNECTING:
            return "woken"
        return DISPLAY[self.state]

    def timeout_for(self, state: State) -> float | None:
        s = self.settings.session
        return {
            State.CONNECTING: s.connecting_timeout_s,
            State.LISTENING: s.idle_timeout_s,
            State.THINKING: s.thinking_timeout_s,
            State.SPEAKING: s.speaking_timeout_s,
            State.ENDING: s.speaking_timeout_s,
            State.ERROR: s.error_hold_s,
        }.get(state)

    def next_deadline_s(self) -> float | None:
        deadlines = [d for d in (self.deadline_s, self.conversation_deadline_s) if d is not None]
        return min(deadlines) if deadlines else None

    def poll(self, now_s: float) -> list[Action]:
        """Fire the conversation's or the state's deadline when it has passed."""
        if (
            self.conversation_deadline_s is not None
            and now_s >= self.conversation_deadline_s
            and self.state in CONVERSATION
        ):
            return self.handle(Input(Kind.MAX_DURATION), now_s)
        if self.deadline_s is not None and now_s >= self.deadline_s:
            return self.handle(Input(Kind.TIMEOUT, retryable=True, message=self._timeout_message()), now_s)
        return []

    def _timeout_message(self) -> str:
        if self.state is State.CONNECTING:
            return (
                f"no connection to the agent within {self.settings.session.connecting_timeout_s:g} s; "
                "check the network, then press the button to try again"
            )
        return ""

    def handle(self, event: Input, now_s: float) -> list[Action]:
        """Apply one input; return the actions in the order to carry them out."""
        self.last_kind = event.kind
        if event.kind is Kind.MUTE:
            self.muted = True
        elif event.kind is Kind.UNMUTE:
            self.muted = False
        rule = self._resolve(TABLE.get((self.state, event.kind), STAY), event, now_s)
        self.last_rule = rule
        if rule.refresh:
            self._set_deadline(self.state, now_s)
        target = rule.target
        if target is State.IDLE and self.muted:
            target = State.MUTED
        if target is State.ERROR:
            self.errors += 1
            self.last_error = event.message or "the conversation failed"
        if target is not None and target is not self.state:
            self._enter(target, now_s, event)
        return list(rule.actions)

    def _resolve(self, rule: Rule, event: Input, now_s: float) -> Rule:
        if rule is BARGE_IN and self.settings.barge_in == "none":
            return STAY
        if rule is WAKE_WORD_BARGE_IN and self.settings.barge_in != "wake_word":
            return STAY
        if rule is VOICE_BARGE_IN and self.settings.barge_in != "voice":
            return STAY
        if rule is SPEECH_START and not self.settings.start_on_speech:
            return STAY
        if rule is ERROR_TIMEOUT and self.retry_pending:
            return Rule(State.CONNECTING, (Action.START_SESSION,))
        if rule is RETRY_OR_FAIL and self._will_retry(self.state, event):
            return RETRY
        return rule

    def _will_retry(self, previous: State, event: Input) -> bool:
        """A failed connection attempt is retried automatically (attempts left, worth retrying)."""
        return (
            previous is State.CONNECTING
            and event.retryable
            and self.attempts < self.settings.session.retry_attempts
        )

    @property
    def between_attempts(self) -> bool:
        """An automatic retry of the connection is due: the attempt goes on (the press's audio is kept)."""
        return self.state is State.ERROR and self.retry_pending

    def _enter(self, target: State, now_s: float, event: Input) -> None:
        previous = self.state
        self.state = target
        self.since_s = now_s
        if target is State.CONNECTING and previous is not State.ERROR:
            self.started_by_wake_word = event.kind is Kind.WAKE_WORD
        if target is State.CONNECTING:
            if previous not in CONVERSATION:
                self.conversation_deadline_s = now_s + self.settings.session.max_duration_s
            if not (previous is State.ERROR and event.kind is Kind.TIMEOUT):
                self.attempts = 0  # a person asked: start the retry count again
            self.retry_pending = False
        elif target is State.LISTENING and previous is State.CONNECTING:
            self.conversations += 1
            self.attempts = 0
            self.last_error = ""
        elif target not in CONVERSATION:
            self.conversation_deadline_s = None
        if target is State.ERROR:
            self.retry_pending = False
            delay_s = None
            s = self.settings.session
            if self._will_retry(previous, event):
                delay_s = retry_delay_s(
                    self.attempts, s.retry_initial_s, s.retry_max_s, event.retry_after_s, rng=self._rng
                )
                self.attempts += 1
                self.retry_pending = True
            self.deadline_s = now_s + (delay_s if delay_s is not None else self.settings.session.error_hold_s)
        else:
            self._set_deadline(target, now_s)

    def _set_deadline(self, state: State, now_s: float) -> None:
        timeout_s = self.timeout_for(state)
        self.deadline_s = None if timeout_s is None else now_s + timeout_s


class ButtonTracker:
    """Press/release from any source (GPIO, control socket) as one logical button.

    The button is down while any source holds it; a hold of ``long_press_s``
    is a long press, reported once per press. Long-press detection lives here,
    not in gpiozero, so the on-screen button behaves exactly like the physical one.
    """

    def __init__(self, long_press_s: float, long_press_enabled: bool = True) -> None:
        self.long_press_s = long_press_s
        self.long_press_enabled = long_press_enabled
        self._held: set[str] = set()
        self.pressed_at_s: float | None = None
        self._long_reported = False

    @property
    def down(self) -> bool:
        return bool(self._held)

    def press(self, source: str, t_s: float) -> bool:
        """True when this press is the logical press (the button was up)."""
        was_down = self.down
        self._held.add(source)
        if was_down:
            return False
        self.pressed_at_s = t_s
        self._long_reported = False
        return True

    def release(self, source: str, t_s: float) -> bool:
        """True when this release is the logical release (the last source let go)."""
        if source not in self._held:
            return False
        self._held.discard(source)
        if self.down:
            return False
        self.pressed_at_s = None
        return True

    def long_press_due_s(self) -> float | None:
        if not self.long_press_enabled or self.pressed_at_s is None or self._long_reported:
            return None
        return self.pressed_at_s + self.long_press_s

    def poll(self, now_s: float) -> bool:
        due = self.long_press_due_s()
        if due is not None and now_s >= due:
            self._long_reported = True
            return True
        return False
