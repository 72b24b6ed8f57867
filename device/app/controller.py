"""The controller: the only owner of the appliance's state.

The decisions are made by pure objects of :mod:`device.core`, each tested on
its own: the :class:`~device.core.machine.Machine` (states, transitions,
deadlines), the :class:`~device.core.micpath.MicPath` (what the microphone
sends, holds and hears), the :class:`~device.core.replyfilter.ReplyFilter`
(which of the agent's audio is played). :class:`Controller` is the worker that
owns them: it consumes a bounded queue of the small frozen events of
:mod:`device.core.events` posted by the other workers, hands each to its
handler (:data:`QUEUE_HANDLERS`), and carries out the machine's actions.

Its three edges, on the controller thread too: :class:`~device.app.agent.AgentLink`
(the session and its events), :class:`~device.app.speaker.Speaker` (playback and
its events) and :class:`~device.app.reporter.Reporter` (counters, status
snapshot, the state on the LEDs and in the telemetry).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from device.app.agent import AgentLink, SessionFactory
from device.app.reporter import Reporter
from device.app.speaker import PlaybackLike, Speaker
from device.app.telemetry import TelemetryBus
from device.core.audioevents import CaptureEvent
from device.core.config import Config
from device.core.events import (
    BlockEvent,
    ButtonEvent,
    Command,
    DeviceFault,
    MuteEvent,
    PlaybackNote,
    SessionNote,
)
from device.core.gate import Gate
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
from device.core.micpath import EchoCanceller, MicPath, WakeWord, WakeWordDetector
from device.drivers import dsp
from device.drivers.logs import RateLimitedLog
from device.drivers.status import Status
from device.drivers.vad import WebrtcVad
from device.drivers.worker import Worker, WorkerExited

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Unblock:
    """Put on the queue by :meth:`Controller.unblock` so that a waiting ``get`` returns (stop)."""


QUEUE_SIZE = 1024
# The controller beats at least this often when nothing happens.
BEAT_S = 0.5
_DROP_LOG_INTERVAL_S = 10.0  # a full queue is reported at once, then at most this often


def make_mic_path(cfg: Config, echo_canceller: EchoCanceller | None = None) -> MicPath:
    """The microphone path with the engines ``cfg`` asks for (the wake-word engines load only in wake_word mode).

    ``echo_canceller`` is built with the playback tap it reads (:func:`device.drivers.aec.make`).
    """
    gate = Gate(cfg.gate, WebrtcVad(cfg.gate.vad_aggressiveness), echo_cancelled=echo_canceller is not None)
    noise_gain = dsp.make(cfg.audio.noise_suppression, cfg.audio.auto_gain_dbfs)
    detector: WakeWordDetector | None = None
    if cfg.gate.mode == "wake_word":
        from device.drivers.wake import WakeDetector

        detector = WakeDetector(cfg.wake)
    double_talk_vad = WebrtcVad(cfg.gate.vad_aggressiveness) if echo_canceller is not None else None
    return MicPath(gate, cfg.session.send_backlog_s, noise_gain=noise_gain, detector=detector,
                   echo_canceller=echo_canceller, double_talk_vad=double_talk_vad)


class Controller(Worker):
    """Owns the state: consumes the event queue, feeds the core's objects and carries out their decisions."""

    def __init__(
        self,
        cfg: Config,
        make_session: SessionFactory,
        playback: PlaybackLike | None,
        telemetry: TelemetryBus | None = None,
        *,
        show: Callable[[str], None] | None = None,
        on_exit: Callable[[WorkerExited], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        echo_canceller: EchoCanceller | None = None,
    ) -> None:
        super().__init__("controller", on_exit)
        self.cfg = cfg
        self.telemetry = telemetry or TelemetryBus()
        self._clock = clock
        self._queue: queue.Queue[object] = queue.Queue(QUEUE_SIZE)
        self.machine = Machine(MachineSettings.from_config(cfg), clock())
        self.mic = make_mic_path(cfg, echo_canceller)
        self.button = ButtonTracker(cfg.button.long_press_s, cfg.gate.mode != "push_to_talk")
        self.report = Reporter(self.telemetry, show, clock, cfg.gate.mode)
        self.speaker = Speaker(playback, cfg.audio.earcons, self.mic, self.report, self._feed, self._on_fault)
        self.agent = AgentLink(make_session, self.speaker, self.report, self.post, self._feed, self.mic.user_spoke)
        self._deferred: list[Input] = []
        self._mute_sources: set[str] = set()
        self._faults: dict[str, str] = {}  # devices missing now: source -> the last_error it set
        self._started_by_speech = False
        self._drop_log = RateLimitedLog(log, _DROP_LOG_INTERVAL_S, clock=clock)
        self.idle = threading.Event()  # set while nothing is running (tests, reload)
        self.idle.set()

    # -- for other threads ------------------------------------------------------------
    def post(self, event: object) -> bool:
        """Queue an event; never blocks. False (and counted) when the queue is full."""
        try:
            self._queue.put_nowait(event)
            return True
        except queue.Full:
            dropped = self.report.count("dropped_events")
            self._drop_log.warning("queue_full", "controller queue full: %d event(s) dropped (is a worker stuck?)",
                                   dropped)
            return False

    def press(self, source: str = "ctl") -> None:
        self.post(ButtonEvent(source, True, self._clock()))

    def release(self, source: str = "ctl") -> None:
        self.post(ButtonEvent(source, False, self._clock()))

    def on_capture_event(self, event: CaptureEvent) -> None:
        """Capture events arrive on the capture thread: turn them into queue events."""
        if event.kind == "overrun":
            self.report.count("capture_overruns")
            self.telemetry.publish("xrun", event.t_s, kind="overrun", detail="")
        elif event.kind == "device_error":
            self.post(DeviceFault("microphone", event.detail or "the microphone failed"))
        elif event.kind == "opened":
            self.post(DeviceFault("microphone", ok=True))

    @property
    def status(self) -> Status:
        """The latest snapshot (built on the controller thread)."""
        return self.report.status

    @property
    def counters(self) -> dict[str, float]:
        return self.report.counters

    def start(self) -> None:
        self.agent.closer.start()
        super().start()

    def stop(self, timeout_s: float = 5.0) -> None:
        try:
            super().stop(timeout_s)
        finally:
            self.agent.closer.stop(max(timeout_s, 30.0))  # a session may take its connect timeout to end

    def unblock(self) -> None:
        """Unblock the queue's wait (the thread then sees the stop flag)."""
        with contextlib.suppress(queue.Full):  # a full queue: the loop is busy and will see the flag
            self._queue.put_nowait(_Unblock())

    # -- the thread -----------------------------------------------------------------------
    def run(self) -> None:
        self._publish_state("start")
        try:
            while not self.stopping:
                self.beat()
                now = self._clock()
                wait_s = BEAT_S
                for due in (self.machine.next_deadline_s(), self.button.long_press_due_s()):
                    if due is not None:
                        wait_s = min(wait_s, max(0.0, due - now))
                try:
                    event = self._queue.get(timeout=wait_s)
                except queue.Empty:
                    event = None
                if event is not None and not isinstance(event, _Unblock):
                    try:
                        self._dispatch(event)
                    except Exception:
                        log.exception("the controller failed on %s; carrying on", type(event).__name__)
                self._poll()
        finally:
            self._shutdown()

    def _poll(self) -> None:
        now = self._clock()
        if self.button.poll(now):
            self.telemetry.publish("button", now, action="long_press", source="any")
            self._feed(Input(Kind.LONG_PRESS), now)
        before = self.machine.state
        actions = self.machine.poll(now)
        if actions or self.machine.state is not before:
            self._apply(before, actions, now, self.machine.last_kind)

    def _shutdown(self) -> None:
        try:
            self._feed(Input(Kind.SHUTDOWN), self._clock())
        finally:
            if self.agent.session is not None:
                self.agent.end()
            self.mic.close()
            self.idle.set()

    def _dispatch(self, event: object) -> None:
        handler = QUEUE_HANDLERS.get(type(event))
        if handler is None:
            log.warning("the controller got an unknown event %r", type(event).__name__)
        else:
            handler(self, event)

    # -- the machine ------------------------------------------------------------------------
    def _feed(self, event: Input, now: float) -> None:
        before = self.machine.state
        actions = self.machine.handle(event, now)
        self._apply(before, actions, now, event.kind)

    def _apply(self, before: State, actions: list[Action], now: float, cause: Kind) -> None:
        for action in actions:
            self._act(action, now, cause)
        if self.machine.state is not before:
            self._settle(before, now)
        self.report.refresh(self.machine, self.agent.conversation_id)  # before telling anyone of the change
        if self.machine.state is not before:
            self._entered(before, cause)
        elif self.machine.display != self.report.shown:  # e.g. muted during a conversation
            self._publish_state(cause.value, before)
        while self._deferred:  # inputs raised while carrying out the actions, in order
            self._feed(self._deferred.pop(0), now)

    def _settle(self, before: State, now: float) -> None:
        settled = self.mic.settle(before, self.machine, now)
        if settled.lost_s > 0:
            self.report.dropped(settled.lost_s)
            log.warning("%.2f s of the user's speech never reached the agent (no connection)", settled.lost_s)
        if settled.false_wake:
            self.report.count("false_wakes")
            log.info("the wake word led to no question (false wake?)")

    def _entered(self, before: State, cause: Kind) -> None:
        state = self.machine.state
        log.info("state %s -> %s (%s)", before.value, state.value, cause.value)
        if state in CONVERSATION or self.machine.between_attempts:
            self.idle.clear()
        else:
            self.agent.replies.resume()
            if state in (State.IDLE, State.MUTED):
                self.idle.set()
        self._publish_state(cause.value, before)

    def _publish_state(self, cause: str, before: State | None = None) -> None:
        self.report.publish_state(self.machine, cause, before, self.agent.conversation_id)

    def _act(self, action: Action, now: float, cause: Kind) -> None:
        if action is Action.START_SESSION:
            self._started_by_speech = cause in (Kind.TURN_START, Kind.WAKE_WORD)
            error = self.agent.start(self.mic.held)
            if error is not None:
                self._deferred.append(Input(Kind.FAILED, retryable=False, message=error))
        elif action is Action.STOP_SESSION:
            self.agent.end()
        elif action is Action.FLUSH:
            self._flush(now, cause)
        elif action is Action.EARCON_LISTENING:
            # "Talk now" is for someone who pressed; whoever started it by speaking is talking already,
            # and a cue would only close the echo guard over their words.
            if not self._started_by_speech or cause is Kind.WAKE_WORD:
                self.speaker.earcon("listening")
        elif action in (Action.EARCON_DONE, Action.EARCON_ERROR):
            self.speaker.earcon(action.value.removeprefix("earcon_"))
        elif action is Action.REPORT_ERROR:
            m = self.machine
            retry = ""
            if m.retry_pending and m.deadline_s is not None:
                retry = f" (trying again in {max(0.0, m.deadline_s - now):.1f} s)"
            log.error("%s%s", m.last_error, retry)
            self.telemetry.publish("error", message=m.last_error, source="session")
        elif action is Action.REPORT_MUTED:
            log.warning("the microphone is muted; turn the mute switch off (or run `voice-appliance ctl unmute`)")

    def _flush(self, now: float, cause: Kind) -> None:
        if cause is Kind.INTERRUPTION and self.mic.echo_canceller is not None and self.mic.gate.barge_in == "voice":
            self.mic.audit.barged_in(now)  # the service heard the user over the agent: did they say anything?
        self.speaker.flush(now)
        replies = self.agent.replies
        replies.flushed(cause)  # cut short here (not by the service): the rest of the reply is dropped
        if cause in (Kind.PRESS, Kind.WAKE_WORD, Kind.VOICE):
            self.report.count("barge_ins")
            by = {Kind.PRESS: "press", Kind.WAKE_WORD: "wake word", Kind.VOICE: "voice"}[cause]
            log.info("barge-in: the agent's reply was cut off by a %s", by)
            self.telemetry.publish("interruption", now, event_id=replies.last_id, local=True, by=by)

    # -- the microphone ------------------------------------------------------------------------
    def _on_block(self, block: BlockEvent) -> None:
        false_barge_ins = self.mic.false_barge_ins(block.captured_at_s)
        if false_barge_ins:
            total = self.report.count("false_barge_ins", false_barge_ins)
            log.warning(
                "false barge-in (%d so far): the agent was cut off as if the user talked over it, and the "
                "service then heard no words; if this repeats, move the speaker away from the microphone or "
                "lower the volume (docs/duplex.md), or set gate.barge_in = \"button\"", total,
            )
            self.telemetry.publish("false_barge_in", block.captured_at_s, total=total)
        heard = self.mic.process(block, self.machine, self._on_wake_word)
        if heard is None:
            return
        out, now = heard.gated, self._clock()
        if heard.voice_barge_in_s is not None:
            # before the block's chunks go out: they belong to the user's turn the barge-in starts
            self._feed(Input(Kind.VOICE), now)
        if self.telemetry.active:
            self.telemetry.publish(
                "gate", block.captured_at_s, open=out.open, level_dbfs=round(out.level_dbfs, 1), seq=block.seq,
                speech=out.speech,
            )
        if out.turn_started:
            self._feed(Input(Kind.TURN_START), now)
        route = self.mic.route(out.chunks, self.machine)
        if route.dropped_s:
            self.report.dropped(route.dropped_s)
        self.agent.send(route.send)
        if out.turn_ended:
            self._feed(Input(Kind.TURN_END), now)
        if heard.activity:
            self._feed(Input(Kind.ACTIVITY), now)

    def _on_wake_word(self, word: WakeWord) -> None:
        self.report.count("wake_detections")
        self.telemetry.publish("wake", word.t_s, model=word.model, score=round(word.score, 3))
        self._feed(Input(Kind.WAKE_WORD), self._clock())

    # -- inputs --------------------------------------------------------------------------------------
    def _on_button(self, event: ButtonEvent) -> None:
        now = self._clock()
        if event.pressed:
            if not self.button.press(event.source, event.t_s):
                return
            self.telemetry.publish("button", event.t_s, action="press", source=event.source)
            changed = self.mic.press(event.t_s)
            self._feed(Input(Kind.PRESS), now)
            if changed is False:  # toggle: the second press ends the user's turn
                self._feed(Input(Kind.TURN_END), now)
        else:
            if not self.button.release(event.source, event.t_s):
                return
            self.telemetry.publish("button", event.t_s, action="release", source=event.source)
            if self.mic.release(event.t_s) is False:
                self._feed(Input(Kind.TURN_END), now)

    def _on_mute(self, event: MuteEvent) -> None:
        was = bool(self._mute_sources)
        if event.muted:
            self._mute_sources.add(event.source)
        else:
            self._mute_sources.discard(event.source)
        muted = bool(self._mute_sources)
        if muted == was:
            return  # e.g. ctl unmute while the switch still mutes: the switch wins
        self.mic.set_muted(event.t_s, muted)
        log.info("microphone %s (%s)", "muted" if muted else "unmuted", event.source)
        self.telemetry.publish("mute", event.t_s, muted=muted, source=event.source)
        self._feed(Input(Kind.MUTE if muted else Kind.UNMUTE), self._clock())

    def _on_command(self, cmd: Command) -> None:
        now = self._clock()
        ok, text = True, ""
        if cmd.name == "start":
            if self.machine.state in CONVERSATION:
                text = f"already in a conversation ({self.machine.display})"
            self._feed(Input(Kind.START), now)
            if self.machine.state is State.MUTED:
                ok, text = False, "muted: unmute first"
        elif cmd.name == "stop":
            self._feed(Input(Kind.STOP), now)
        elif cmd.name in ("context", "message"):
            session = self.agent.session
            if session is None or self.machine.state not in CONVERSATION:
                ok, text = False, "no conversation is running; start one first"
            elif cmd.name == "context":
                session.send_contextual_update(cmd.text)
            else:
                session.send_user_message(cmd.text)
        else:
            ok, text = False, f"unknown command {cmd.name!r}"
        if cmd.reply is not None:
            cmd.reply(ok, text or self.machine.display)

    def _on_fault(self, fault: DeviceFault) -> None:
        """A device failed or came back: the error shows for as long as one is missing."""
        now = self._clock()
        before = self.machine.state
        if fault.ok:
            shown = self._faults.pop(fault.source, None)
            if shown is None:
                return
            log.info("the %s works again", fault.source)
            if self.machine.last_error == shown:  # its error is over (a newer, unrelated one stays)
                self.machine.last_error = next(iter(self._faults.values()), "")  # another device still missing
        else:
            if fault.source in self._faults:
                return  # still failing: the audio worker retries (and logs, rate-limited)
            self.report.count("audio_errors")
            self.telemetry.publish("error", now, message=fault.message, source=fault.source)
            self._faults[fault.source] = self.machine.last_error = f"{fault.source}: {fault.message}"
        self.machine.device_fault = bool(self._faults)
        if not fault.ok and self.machine.state in CONVERSATION:
            # Without a microphone or speaker the conversation cannot go on.
            self._feed(Input(Kind.FAILED, retryable=False, message=self.machine.last_error), now)
            return
        self.report.refresh(self.machine, self.agent.conversation_id)
        if self.machine.display != self.report.shown:
            self._publish_state(f"{fault.source} {'back' if fault.ok else 'failed'}", before)

    def _on_session_note(self, note: SessionNote) -> None:
        self.agent.on_note(note, self._clock())

    def _on_playback_note(self, note: PlaybackNote) -> None:
        self.speaker.on_event(note.event, self._clock())


# What the controller's queue carries: event type → handler.
QUEUE_HANDLERS: Mapping[type, Callable[[Controller, Any], None]] = {
    BlockEvent: Controller._on_block,
    SessionNote: Controller._on_session_note,
    PlaybackNote: Controller._on_playback_note,
    ButtonEvent: Controller._on_button,
    MuteEvent: Controller._on_mute,
    Command: Controller._on_command,
    DeviceFault: Controller._on_fault,
}
