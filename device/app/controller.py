"""The controller: the only owner of the appliance's state.

:class:`Controller` is the worker that owns the machine
(:class:`device.core.machine.Machine`), the gate and the conversation: it
consumes a bounded queue of the small frozen events of :mod:`device.core.events`
posted by the other workers (capture blocks, playback and session events,
button, control commands), feeds the machine, and carries out its actions.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from device.app.telemetry import TelemetryBus
from device.core.audioformat import CAPTURE_RATE_HZ
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
from device.core.gate import Chunk, Gate, GateOutput
from device.core.machine import (
    CONVERSATION,
    DISPLAY,
    Action,
    ButtonTracker,
    Input,
    Kind,
    Machine,
    MachineSettings,
    State,
)
from device.core.protocol import (
    AgentAudio,
    AgentResponse,
    AgentResponseCorrection,
    AgentResponsePart,
    Connected,
    Interruption,
    McpApproval,
    Outcome,
    Ping,
    RichContent,
    ServerError,
    SessionEnded,
    SessionEvent,
    TentativeAgentResponse,
    ToolCallFinished,
    ToolCallStarted,
    UserTranscript,
    VadScore,
)
from device.drivers import dsp
from device.drivers.status import Status
from device.drivers.worker import Worker, WorkerExited

log = logging.getLogger(__name__)




class HeldAudio:
    """What the gate produced since the press, until a connection attempt succeeds (pure).

    A session holds the audio captured before its socket opens, but a session
    whose attempt fails takes it along. This copy lets an automatic retry hand
    the whole question to the next session. Bounded like the session's send
    backlog (``session.send_backlog_s``): beyond it the oldest is dropped.
    Amounts are seconds of microphone audio (chunks the gate let through).
    """

    def __init__(self, max_s: float) -> None:
        self._max_bytes = int(max_s * CAPTURE_RATE_HZ) * 2
        self._chunks: collections.deque[Chunk] = collections.deque()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._chunks)

    @property
    def chunks(self) -> tuple[Chunk, ...]:
        return tuple(self._chunks)

    def add(self, chunk: Chunk) -> float:
        """Keep ``chunk``; returns the microphone seconds dropped to stay within the bound."""
        self._chunks.append(chunk)
        self._bytes += len(chunk.pcm)
        dropped_s = 0.0
        while self._bytes > self._max_bytes and len(self._chunks) > 1:
            dropped_s += self._pop()
        return dropped_s

    def clear(self) -> float:
        """Forget everything (delivered, or given up); returns the microphone seconds in it."""
        dropped_s = 0.0
        while self._chunks:
            dropped_s += self._pop()
        return dropped_s

    def _pop(self) -> float:
        old = self._chunks.popleft()
        self._bytes -= len(old.pcm)
        return len(old.pcm) / 2 / CAPTURE_RATE_HZ if old.open else 0.0


# -- the worker ------------------------------------------------------------------------------------------------


class SessionLike(Protocol):
    """What the controller needs of :class:`device.drivers.session.Session`."""

    def start(self) -> None: ...
    def stop(self, timeout_s: float | None = None) -> None: ...
    def send_audio(self, pcm: bytes, captured_at_s: float) -> None: ...
    def send_contextual_update(self, text: str) -> None: ...
    def send_user_message(self, text: str) -> None: ...


class PlaybackLike(Protocol):
    """What the controller needs of :class:`device.drivers.playback.Playback`."""

    def set_format(self, fmt: Any) -> None: ...
    def write(self, audio: bytes, received_at_s: float | None = None) -> None: ...
    def flush(self) -> Any: ...
    def play_earcon(self, name: str) -> bool: ...


SessionFactory = Callable[[Callable[[SessionEvent], None]], SessionLike]


@dataclass(frozen=True)
class _Unblock:
    """Put on the queue by :meth:`Controller.wake` so that a waiting ``get`` returns (stop)."""


QUEUE_SIZE = 1024
# The controller beats at least this often when nothing happens.
BEAT_S = 0.5
# Local barge-in: after a press cut the agent off, its reply's later audio is dropped until
# the service starts a new turn (interruption, the user's transcript, or a reply with a newer id).
_NO_EVENT_ID = -1
_ENDED_OK = (Outcome.NORMAL, Outcome.AGENT_ENDED, Outcome.MAX_DURATION, Outcome.LOCAL)
_DROP_LOG_EVERY = 100
# Session events the kiosk cannot show but an operator may want to see (status, metrics).
_COUNTED_EVENTS: Mapping[type, str] = {
    AgentResponsePart: "agent_text_parts",
    RichContent: "rich_content",
}


class SessionCloser(Worker):
    """Ends old sessions off the controller thread (closing can wait on the network)."""

    def __init__(self, on_exit: Callable[[WorkerExited], None] | None = None) -> None:
        super().__init__("session-closer", on_exit)
        self._queue: queue.Queue[SessionLike | None] = queue.Queue()
        self.closed = 0

    def submit(self, session: SessionLike) -> None:
        self._queue.put(session)

    def wake(self) -> None:
        self._queue.put(None)

    def run(self) -> None:
        while True:
            self.beat()
            try:
                session = self._queue.get(timeout=BEAT_S) if not self.stopping else self._queue.get_nowait()
            except queue.Empty:
                if self.stopping:
                    return
                continue
            if session is None:
                continue
            try:
                session.stop()
            except Exception:
                log.exception("ending a conversation failed")
            self.closed += 1


class Controller(Worker):
    """Owns the state: consumes the event queue, drives the machine, gate, session, playback and LEDs."""

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
    ) -> None:
        super().__init__("controller", on_exit)
        self.cfg = cfg
        self._make_session = make_session
        self._playback = playback
        self.telemetry = telemetry or TelemetryBus()
        self._show = show
        self._clock = clock
        self._queue: queue.Queue[object] = queue.Queue(QUEUE_SIZE)
        self.machine = Machine(MachineSettings.from_config(cfg), clock())
        self.gate = Gate(cfg.gate)
        self.button = ButtonTracker(cfg.button.long_press_s, cfg.gate.mode != "push_to_talk")
        self.closer = SessionCloser()
        self._session: SessionLike | None = None
        self._held = HeldAudio(cfg.session.send_backlog_s)  # the press's audio until a connection succeeds
        self._deferred: list[Input] = []
        self._gen = 0
        self._mute_sources: set[str] = set()
        self._playing: set[str] = set()  # what the speaker plays now: "reply", "earcon"
        self._faults: dict[str, str] = {}  # devices missing now: source -> the last_error it set
        self._started_by_speech = False
        # Noise suppression / automatic gain, applied once to every block that is used.
        self._dsp = dsp.make(cfg.audio.noise_suppression, cfg.audio.auto_gain_dbfs)
        self._wake: Any = None  # device.drivers.wake.WakeDetector in wake_word mode
        if cfg.gate.mode == "wake_word":
            from device.drivers.wake import WakeDetector  # the engines load only in this mode

            self._wake = WakeDetector(cfg.wake)
        self._woke_seq: int | None = None  # the block the wake word ended in (this conversation)
        self._wake_fed_seq: int | None = None  # the last block the detector heard
        self._woke_heard_user = False  # the user spoke after the wake word
        self.conversation_id = ""
        self._discard_le_id = _NO_EVENT_ID  # local barge-in: drop audio with event_id <= this
        self._last_audio_id = _NO_EVENT_ID
        self._shown = ""
        self._started_at_s = clock()
        self.counters: dict[str, float] = {
            "barge_ins": 0,
            "interruptions": 0,
            "blocks_sent": 0,
            "blocks_open": 0,
            "dropped_events": 0,
            "playback_underruns": 0,
            "capture_overruns": 0,
            "audio_errors": 0,
            "audio_dropped_s": 0.0,
            "ping_ms": 0,
            **dict.fromkeys(_COUNTED_EVENTS.values(), 0),
            "mcp_approved": 0,
            "mcp_denied": 0,
            "wake_detections": 0,
            "false_wakes": 0,  # a wake word that led to no user speech
        }
        self._lock = threading.Lock()
        self._snapshot = Status(gate_mode=cfg.gate.mode)
        self.idle = threading.Event()  # set while nothing is running (tests, reload)
        self.idle.set()

    # -- for other threads ------------------------------------------------------------
    def post(self, event: object) -> bool:
        """Queue an event; never blocks. False (and counted) when the queue is full."""
        try:
            self._queue.put_nowait(event)
            return True
        except queue.Full:
            with self._lock:
                self.counters["dropped_events"] += 1
                dropped = self.counters["dropped_events"]
            if dropped == 1 or dropped % _DROP_LOG_EVERY == 0:
                log.warning("controller queue full: %d event(s) dropped (is a worker stuck?)", dropped)
            return False

    def press(self, source: str = "ctl") -> None:
        self.post(ButtonEvent(source, True, self._clock()))

    def release(self, source: str = "ctl") -> None:
        self.post(ButtonEvent(source, False, self._clock()))

    def session_callback(self, gen: int) -> Callable[[SessionEvent], None]:
        def on_event(event: SessionEvent) -> None:
            self.post(SessionNote(gen, event))

        return on_event

    @property
    def status(self) -> Status:
        """The latest snapshot (built on the controller thread)."""
        return self._snapshot

    def start(self) -> None:
        self.closer.start()
        super().start()

    def stop(self, timeout_s: float = 5.0) -> None:
        try:
            super().stop(timeout_s)
        finally:
            self.closer.stop(max(timeout_s, 30.0))  # a session may take its connect timeout to end

    def wake(self) -> None:
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
        now = self._clock()
        try:
            self._feed(Input(Kind.SHUTDOWN), now)
        finally:
            if self._session is not None:
                self._end_session()
            if self._wake is not None:
                self._wake.close()
            self.idle.set()

    # -- dispatch ---------------------------------------------------------------------------
    def _dispatch(self, event: object) -> None:
        handler = QUEUE_HANDLERS.get(type(event))
        if handler is None:
            log.warning("the controller got an unknown event %r", type(event).__name__)
        else:
            handler(self, event)

    def _on_session_note(self, note: SessionNote) -> None:
        if note.gen == self._gen and self._session is not None:
            self._on_session_event(note.event)
        else:
            log.debug("ignored %s of an old conversation", type(note.event).__name__)

    def _on_playback_note(self, note: PlaybackNote) -> None:
        self._on_playback_event(note.event)

    def _feed(self, event: Input, now: float) -> None:
        before = self.machine.state
        actions = self.machine.handle(event, now)
        self._apply(before, actions, now, event.kind)

    def _apply(self, before: State, actions: list[Action], now: float, cause: Kind) -> None:
        for action in actions:
            self._act(action, now, cause)
        if self.machine.state is not before:
            self._settle_held(before)
            self._settle_wake()
        self._refresh_snapshot()  # before telling anyone: whoever hears of the change can read it
        if self.machine.state is not before:
            self._entered(before, now, cause)
        elif self.machine.display != self._shown:  # e.g. muted during a conversation
            self._publish_state(cause.value, before)
        while self._deferred:  # inputs raised while carrying out the actions, in order
            self._feed(self._deferred.pop(0), now)

    def _entered(self, before: State, now: float, cause: Kind) -> None:
        state = self.machine.state
        reason = cause.value
        log.info("state %s -> %s (%s)", before.value, state.value, reason)
        if state in CONVERSATION or self.machine.between_attempts:
            # Between automatic attempts the press goes on: a held button keeps the gate open.
            self.gate.set_active(True)
            self.idle.clear()
        else:
            self.gate.reset(now)
            self._discard_le_id = _NO_EVENT_ID
            if state in (State.IDLE, State.MUTED):
                self.idle.set()
        self._publish_state(reason, before)

    def _publish_state(self, cause: str, before: State | None = None) -> None:
        display = self.machine.display
        self.telemetry.publish(
            "state",
            state=display,
            machine_state=self.machine.state.value,
            previous=DISPLAY[before] if before is not None else "",
            cause=cause,
            conversation_id=self.conversation_id,
        )
        if display != self._shown:
            self._shown = display
            if self._show is not None:
                try:
                    self._show(display)
                except Exception:
                    log.exception("showing %s on the LEDs failed", display)
            self.telemetry.publish("led", state=display)

    def _act(self, action: Action, now: float, cause: Kind) -> None:
        if action is Action.START_SESSION:
            self._start_session(now, cause)
        elif action is Action.STOP_SESSION:
            self._end_session()
        elif action is Action.FLUSH:
            self._flush(now, cause)
        elif action is Action.EARCON_LISTENING:
            # "Talk now" is for someone who pressed; whoever started it by speaking is talking already,
            # and a cue would only close the echo guard over their words.
            if not self._started_by_speech or cause is Kind.WAKE_WORD:
                self._earcon("listening")
        elif action in (Action.EARCON_DONE, Action.EARCON_ERROR):
            self._earcon(action.value.removeprefix("earcon_"))
        elif action is Action.REPORT_ERROR:
            m = self.machine
            retry = ""
            if m.retry_pending and m.deadline_s is not None:
                retry = f" (trying again in {max(0.0, m.deadline_s - now):.1f} s)"
            log.error("%s%s", m.last_error, retry)
            self.telemetry.publish("error", message=m.last_error, source="session")
        elif action is Action.REPORT_MUTED:
            log.warning("the microphone is muted; turn the mute switch off (or run `voice-appliance ctl unmute`)")

    # -- conversation ------------------------------------------------------------------------
    def _start_session(self, now: float, cause: Kind) -> None:
        if self._session is not None:
            self._end_session()
        self._started_by_speech = cause in (Kind.TURN_START, Kind.WAKE_WORD)
        self._gen += 1
        self.conversation_id = ""
        self._discard_le_id = _NO_EVENT_ID
        self._last_audio_id = _NO_EVENT_ID
        try:
            session = self._make_session(self.session_callback(self._gen))
            for chunk in self._held.chunks:  # an earlier attempt of this press failed: its audio goes first
                session.send_audio(chunk.pcm, chunk.captured_at_s)
            session.start()
        except Exception as e:  # e.g. a configuration the session refuses: show it, do not crash
            log.debug("starting the conversation failed", exc_info=True)
            message = str(e) or type(e).__name__
            self._deferred.append(Input(Kind.FAILED, retryable=False, message=message))
            return
        self._session = session

    def _settle_held(self, before: State) -> None:
        """The state changed: the press's audio was delivered, still waits for an attempt, or is lost."""
        state = self.machine.state
        if state is State.LISTENING and before is State.CONNECTING:
            self._held.clear()  # the connected session holds it now and sends it first
        elif state is not State.CONNECTING and not self.machine.between_attempts:
            lost_s = self._held.clear()  # every attempt failed (or the press was given up)
            if lost_s > 0:
                self._count_dropped(lost_s)
                log.warning("%.2f s of the user's speech never reached the agent (no connection)", lost_s)

    def _count_dropped(self, seconds: float) -> None:
        with self._lock:
            self.counters["audio_dropped_s"] = round(self.counters["audio_dropped_s"] + seconds, 3)

    def _end_session(self) -> None:
        session, self._session = self._session, None
        self._gen += 1  # whatever it still says is stale
        if session is not None:
            self.closer.submit(session)

    def _flush(self, now: float, cause: Kind) -> None:
        if self._playback is not None:
            try:
                self._playback.flush()
            except Exception:
                log.exception("flushing playback failed")
        self._playing.clear()  # the flush cleared replies and queued cues alike
        self.gate.agent_stopped(now, flushed=True)
        if cause in (Kind.PRESS, Kind.TIMEOUT, Kind.WAKE_WORD):
            # We cut the reply short, not the service: drop the rest of it when it still arrives.
            self._discard_le_id = self._last_audio_id
        if cause in (Kind.PRESS, Kind.WAKE_WORD):
            with self._lock:
                self.counters["barge_ins"] += 1
            log.info("barge-in: the agent's reply was cut off by a %s", "press" if cause is Kind.PRESS else "wake word")
            self.telemetry.publish(
                "interruption", now, event_id=self._last_audio_id, local=True,
                by="press" if cause is Kind.PRESS else "wake word",
            )

    def _earcon(self, name: str) -> None:
        if self._playback is None or not self.cfg.audio.earcons:
            return
        try:
            self._playback.play_earcon(name)
        except Exception:
            log.exception("playing the %s earcon failed", name)

    def _on_session_event(self, event: SessionEvent) -> None:
        """Hand a session event to its handler in :data:`SESSION_HANDLERS` (the first class of its MRO listed)."""
        for cls in type(event).__mro__:
            handler = SESSION_HANDLERS.get(cls)
            if handler is not None:
                handler(self, event, self._clock())
                return
        log.debug("session event %s not used", type(event).__name__)

    # One handler per session event type, each given the event and the time it is handled.
    def _on_agent_audio(self, event: AgentAudio, now: float) -> None:
        if event.event_id <= self._discard_le_id:
            return  # the rest of a reply the user cut off
        self._discard_le_id = _NO_EVENT_ID
        self._last_audio_id = event.event_id
        if self._playback is not None:
            self._playback.write(event.audio, event.received_at_s)
        self.telemetry.publish(
            "agent_audio", now, event_id=event.event_id, nbytes=len(event.audio), received_at_s=event.received_at_s
        )

    def _on_connected(self, event: Connected, now: float) -> None:
        self.conversation_id = event.conversation_id
        if self._playback is not None:
            self._playback.set_format(event.output_format)
        self._feed(Input(Kind.CONNECTED), now)

    def _on_interruption(self, event: Interruption, now: float) -> None:
        self._discard_le_id = _NO_EVENT_ID  # the session's own rule takes over
        with self._lock:
            self.counters["interruptions"] += 1
        self.telemetry.publish("interruption", now, event_id=event.event_id, local=False)
        self._feed(Input(Kind.INTERRUPTION), now)

    def _on_user_transcript(self, event: UserTranscript, now: float) -> None:
        self.telemetry.publish("transcript", now, role="user", text=event.text, tentative=event.tentative)
        if event.tentative:
            self._feed(Input(Kind.ACTIVITY), now)
        else:
            self._discard_le_id = _NO_EVENT_ID
            if event.text.strip():
                self._woke_heard_user = True  # a wake word that led to a question
            self._feed(Input(Kind.TURN_END), now)

    def _on_agent_response(self, event: AgentResponse | AgentResponseCorrection, now: float) -> None:
        self.telemetry.publish(
            "transcript", now, role="agent", text=event.text, correction=isinstance(event, AgentResponseCorrection)
        )

    def _on_ping(self, event: Ping, now: float) -> None:
        if event.ping_ms is not None:
            with self._lock:
                self.counters["ping_ms"] = event.ping_ms
        self.telemetry.publish("ping", now, ping_ms=event.ping_ms)

    def _on_tool_call(self, event: ToolCallStarted | ToolCallFinished, now: float) -> None:
        finished = isinstance(event, ToolCallFinished)
        self.telemetry.publish(
            "tool_call",
            now,
            name=event.name,
            call_id=event.call_id,
            phase="finished" if finished else "started",
            is_error=isinstance(event, ToolCallFinished) and event.is_error,
        )

    def _on_counted(self, event: AgentResponsePart | RichContent, now: float) -> None:
        with self._lock:
            self.counters[_COUNTED_EVENTS[type(event)]] += 1

    def _on_mcp_approval(self, event: McpApproval, now: float) -> None:
        with self._lock:
            self.counters["mcp_approved" if event.approved else "mcp_denied"] += 1
        self.telemetry.publish("mcp_approval", now, name=event.tool_name, approved=event.approved)

    def _on_server_error(self, event: ServerError, now: float) -> None:
        self.telemetry.publish("error", now, message=event.message, source="agent")

    def _on_session_ended(self, event: SessionEnded, now: float) -> None:
        self.telemetry.publish(
            "session_end", now, outcome=event.outcome.name, detail=event.detail, close_code=event.close_code
        )
        if event.outcome in _ENDED_OK:
            log.info("conversation %s ended: %s", self.conversation_id or "-", event.message)
            self._feed(Input(Kind.ENDED), now)
        else:
            self._feed(Input(Kind.FAILED, event.outcome.retryable, event.retry_after_s, event.message), now)

    def _on_playback_event(self, event: Any) -> None:
        kind = getattr(event, "kind", "")
        t_s = float(getattr(event, "t_s", self._clock()))
        now = self._clock()
        if kind == "reply_started":
            self._audible(t_s, "reply", True)
            self.telemetry.publish(
                "reply_started", t_s, reply_id=event.reply_id, latency_ms=event.latency_ms, rate_hz=event.rate_hz
            )
            self._feed(Input(Kind.REPLY_STARTED), now)
        elif kind == "reply_finished":
            self._audible(t_s, "reply", False)
            self.telemetry.publish("reply_finished", t_s, reply_id=event.reply_id, frames=event.frames)
            self._feed(Input(Kind.REPLY_FINISHED), now)
        elif kind == "flushed":
            self.telemetry.publish(
                "flushed",
                t_s,
                old_audio_ms_after=event.ms,
                frames_after=event.frames,
                latency_ms=event.latency_ms,
                dropped_frames=event.dropped_frames,
            )
        elif kind == "underrun":
            with self._lock:
                self.counters["playback_underruns"] += 1
            self.telemetry.publish("xrun", t_s, kind="underrun", detail=event.detail)
        elif kind == "device_error":
            self._on_fault(DeviceFault("speaker", event.detail or "the speaker failed"))
        elif kind == "opened":
            self._on_fault(DeviceFault("speaker", ok=True))
            self.telemetry.publish("playback", t_s, kind=kind, detail=getattr(event, "detail", ""))
        elif kind in ("earcon_started", "earcon_finished"):
            # a cue is audible: keep it out of the microphone like the agent's voice -- except the cue
            # that answers a wake word: the user goes on talking over it ("hey jarvis, when does ...")
            if not (self._wake is not None and event.detail == "listening"):
                self._audible(t_s, "earcon", kind == "earcon_started")
            self.telemetry.publish(
                "earcon", t_s, name=event.detail, phase="started" if kind == "earcon_started" else "finished"
            )
        else:
            self.telemetry.publish("playback", t_s, kind=kind, detail=getattr(event, "detail", ""))

    def _audible(self, t_s: float, source: str, playing: bool) -> None:
        """The speaker plays (a reply, a cue) or fell silent: the echo guard follows the union."""
        was = bool(self._playing)
        if playing:
            self._playing.add(source)
        else:
            self._playing.discard(source)
        if self._playing and not was:
            self.gate.agent_started(t_s)
        elif was and not self._playing:
            self.gate.agent_stopped(t_s)

    def on_capture_event(self, event: Any) -> None:
        """Capture events arrive on the capture thread: turn them into queue events."""
        kind = getattr(event, "kind", "")
        if kind == "overrun":
            with self._lock:
                self.counters["capture_overruns"] += 1
            self.telemetry.publish("xrun", getattr(event, "t_s", None), kind="overrun", detail="")
        elif kind == "device_error":
            self.post(DeviceFault("microphone", getattr(event, "detail", "") or "the microphone failed"))
        elif kind == "opened":
            self.post(DeviceFault("microphone", ok=True))

    # -- blocks ----------------------------------------------------------------------------------
    def _on_block(self, block: BlockEvent) -> None:
        state = self.machine.state
        listening_idle = state in (State.IDLE,) and self.cfg.gate.start_on_speech
        attempting = state in CONVERSATION or self.machine.between_attempts
        wake_listening = self._wake_listening(state)
        if not attempting and not listening_idle and not self.gate.talking and not wake_listening:
            return  # nothing runs and nothing could start: the microphone goes nowhere
        pcm = block.pcm if self._dsp is None else self._dsp.process(block.pcm)
        if wake_listening and self._on_wake_block(pcm, block) is None and self.machine.state is State.IDLE:
            return  # idle, no wake word: nothing leaves the device
        out = self.gate.process(pcm, block.captured_at_s, block.seq)
        if out.speech and self._woke_seq is not None and block.seq > self._woke_seq:
            self._woke_heard_user = True
        now = self._clock()
        if self.telemetry.active:
            self.telemetry.publish(
                "gate", block.captured_at_s, open=out.open, level_dbfs=round(out.level_dbfs, 1), seq=block.seq,
                speech=out.speech,
            )
        if out.turn_started:
            self._feed(Input(Kind.TURN_START), now)
        self._send(out)
        if out.turn_ended:
            self._feed(Input(Kind.TURN_END), now)
        if out.speech or (out.open and self.gate.talking):
            self._feed(Input(Kind.ACTIVITY), now)

    # -- wake word ------------------------------------------------------------------------------
    def _wake_listening(self, state: State) -> bool:
        """The detector hears this block: idle (to start), and with barge-in by wake word the whole
        conversation (it acts only while the agent speaks, but keeps hearing so that it is not deaf
        while its model's context -- over a second of audio -- fills again)."""
        if self._wake is None or self.gate.muted:
            return False
        return state is State.IDLE or (state in CONVERSATION and self.cfg.gate.barge_in == "wake_word")

    def _on_wake_block(self, pcm: bytes, block: BlockEvent) -> Any:
        if self._wake_fed_seq is not None and block.seq != self._wake_fed_seq + 1:
            # The detector did not hear the blocks in between (a conversation, mute): what it still
            # holds is old audio -- e.g. the wake word that started this conversation -- not the room now.
            self._wake.reset()
        self._wake_fed_seq = block.seq
        detection = self._wake.process(pcm, block.captured_at_s)
        if detection is None or self.machine.state not in (State.IDLE, State.SPEAKING):
            return None
        now = self._clock()
        n = len(pcm) // 2
        t_s = block.captured_at_s - (n - detection.offset_samples) / CAPTURE_RATE_HZ
        with self._lock:
            self.counters["wake_detections"] += 1
        self.telemetry.publish("wake", t_s, model=self._wake.info.name, score=round(detection.score, 3))
        starting = self.machine.state is State.IDLE
        self._feed(Input(Kind.WAKE_WORD), now)
        if self.machine.state in CONVERSATION:
            if starting:
                self._woke_seq, self._woke_heard_user = block.seq, False
            self.gate.wake(t_s)
        return detection

    def _settle_wake(self) -> None:
        """Out of the conversation: count a wake that led to no user speech; the detector starts afresh."""
        if self.machine.state in CONVERSATION or self.machine.between_attempts:
            return
        if self._woke_seq is not None and not self._woke_heard_user:
            with self._lock:
                self.counters["false_wakes"] += 1
            log.info("the wake word led to no question (false wake?)")
        self._woke_seq = None
        if self._wake is not None:
            self._wake.reset()

    def _send(self, out: GateOutput) -> None:
        session = self._session
        # Until a connection attempt succeeds, every chunk is also kept for a possible retry.
        holding = self.machine.state is State.CONNECTING or self.machine.between_attempts
        if not holding and (session is None or self.machine.state not in CONVERSATION):
            return
        for chunk in out.chunks:
            if holding:
                lost_s = self._held.add(chunk)
                if lost_s:
                    self._count_dropped(lost_s)
            if session is None or self.machine.state not in CONVERSATION:
                continue
            session.send_audio(chunk.pcm, chunk.captured_at_s)
            with self._lock:
                self.counters["blocks_sent"] += 1
                self.counters["blocks_open"] += int(chunk.open)
            if self.telemetry.active:
                self.telemetry.publish(
                    "block_sent", seq=chunk.seq, captured_at_s=chunk.captured_at_s, open=chunk.open,
                    nbytes=len(chunk.pcm),
                )

    # -- inputs --------------------------------------------------------------------------------------
    def _on_button(self, event: ButtonEvent) -> None:
        now = self._clock()
        if event.pressed:
            if not self.button.press(event.source, event.t_s):
                return
            self.telemetry.publish("button", event.t_s, action="press", source=event.source)
            changed = self.gate.press(event.t_s)
            self._feed(Input(Kind.PRESS), now)
            if changed is False:  # toggle: the second press ends the user's turn
                self._feed(Input(Kind.TURN_END), now)
        else:
            if not self.button.release(event.source, event.t_s):
                return
            self.telemetry.publish("button", event.t_s, action="release", source=event.source)
            if self.gate.release(event.t_s) is False:
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
        self.gate.set_muted(event.t_s, muted)
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
            session = self._session
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
            with self._lock:
                self.counters["audio_errors"] += 1
            self.telemetry.publish("error", now, message=fault.message, source=fault.source)
            self._faults[fault.source] = self.machine.last_error = f"{fault.source}: {fault.message}"
        self.machine.device_fault = bool(self._faults)
        if not fault.ok and self.machine.state in CONVERSATION:
            # Without a microphone or speaker the conversation cannot go on.
            self._feed(Input(Kind.FAILED, retryable=False, message=self.machine.last_error), now)
            return
        self._refresh_snapshot()
        if self.machine.display != self._shown:
            self._publish_state(f"{fault.source} {'back' if fault.ok else 'failed'}", before)

    # -- status ---------------------------------------------------------------------------------------
    def _refresh_snapshot(self) -> None:
        m = self.machine
        with self._lock:
            counters = dict(self.counters)
        counters["conversations"] = m.conversations
        counters["errors"] = m.errors + counters["audio_errors"]
        counters["xruns"] = counters["playback_underruns"] + counters["capture_overruns"]
        counters["uptime_s"] = round(self._clock() - self._started_at_s, 1)
        self._snapshot = Status(
            state=m.display,
            muted=m.muted,
            conversation_id=self.conversation_id if m.state in CONVERSATION else "",
            last_error=m.last_error,
            state_for_s=self._clock() - m.since_s,
            gate_mode=self.cfg.gate.mode,
            counters=counters,
        )


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

# The controller's dispatch of session events, table-driven like the Machine's TABLE: event type →
# handler. The kiosk does not use the types in SESSION_EVENTS_UNUSED (the test checks every type is in one).
SESSION_HANDLERS: Mapping[type, Callable[[Controller, Any, float], None]] = {
    AgentAudio: Controller._on_agent_audio,
    Connected: Controller._on_connected,
    Interruption: Controller._on_interruption,
    UserTranscript: Controller._on_user_transcript,
    AgentResponse: Controller._on_agent_response,
    AgentResponseCorrection: Controller._on_agent_response,
    Ping: Controller._on_ping,
    ToolCallStarted: Controller._on_tool_call,
    ToolCallFinished: Controller._on_tool_call,
    **dict.fromkeys(_COUNTED_EVENTS, Controller._on_counted),
    McpApproval: Controller._on_mcp_approval,
    ServerError: Controller._on_server_error,
    SessionEnded: Controller._on_session_ended,
}
SESSION_EVENTS_UNUSED: frozenset[type] = frozenset({TentativeAgentResponse, VadScore})
