"""The controller's link to the agent: one session at a time, and what the session's events mean here.

Owned by the controller thread. A session's events reach it as
:class:`~device.core.events.SessionNote` (numbered: those of an older session
are ignored) and are handled by type (:data:`SESSION_HANDLERS`). Old sessions
are ended off the controller thread (:class:`SessionCloser`): closing can wait
on the network.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from device.app.reporter import Reporter
from device.app.speaker import Speaker
from device.core.events import SessionNote
from device.core.gate import Chunk
from device.core.machine import Input, Kind
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
from device.core.replyfilter import ReplyFilter
from device.drivers.worker import Worker, WorkerExited

log = logging.getLogger(__name__)

# The closer beats at least this often when nothing happens.
BEAT_S = 0.5
_ENDED_OK = (Outcome.NORMAL, Outcome.AGENT_ENDED, Outcome.MAX_DURATION, Outcome.LOCAL)
# Session events the kiosk cannot show but an operator may want to see (status, metrics).
_COUNTED_EVENTS: Mapping[type, str] = {
    AgentResponsePart: "agent_text_parts",
    RichContent: "rich_content",
}


class SessionLike(Protocol):
    """What the controller needs of :class:`device.drivers.session.Session`."""

    def start(self) -> None: ...
    def stop(self, timeout_s: float | None = None) -> None: ...
    def send_audio(self, pcm: bytes, captured_at_s: float) -> None: ...
    def send_contextual_update(self, text: str) -> None: ...
    def send_user_message(self, text: str) -> None: ...


SessionFactory = Callable[[Callable[[SessionEvent], None]], SessionLike]


class SessionCloser(Worker):
    """Ends old sessions off the controller thread (closing can wait on the network)."""

    def __init__(self, on_exit: Callable[[WorkerExited], None] | None = None) -> None:
        super().__init__("session-closer", on_exit)
        self._queue: queue.Queue[SessionLike | None] = queue.Queue()
        self.closed = 0

    def submit(self, session: SessionLike) -> None:
        self._queue.put(session)

    def unblock(self) -> None:
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


class AgentLink:
    """The current session (None between conversations), its number, its conversation id, its reply filter."""

    def __init__(
        self,
        make_session: SessionFactory,
        speaker: Speaker,
        report: Reporter,
        post: Callable[[object], bool],
        feed: Callable[[Input, float], None],
        on_question: Callable[[], None],
    ) -> None:
        self._make_session = make_session
        self._speaker = speaker
        self._report = report
        self._post = post
        self._feed = feed
        self._on_question = on_question  # the user said something after the wake word
        self.closer = SessionCloser()
        self.session: SessionLike | None = None
        self.replies = ReplyFilter()
        self.conversation_id = ""
        self._gen = 0

    def callback(self, gen: int) -> Callable[[SessionEvent], None]:
        """What session number ``gen`` calls with its events (on its own threads)."""

        def on_event(event: SessionEvent) -> None:
            self._post(SessionNote(gen, event))

        return on_event

    def start(self, held: Iterable[Chunk]) -> str | None:
        """Start a new session (ending the current one), sending ``held`` first; the error if it cannot start."""
        if self.session is not None:
            self.end()
        self._gen += 1
        self.conversation_id = ""
        self.replies.reset()
        try:
            session = self._make_session(self.callback(self._gen))
            for chunk in held:  # an earlier attempt of this press failed: its audio goes first
                session.send_audio(chunk.pcm, chunk.captured_at_s)
            session.start()
        except Exception as e:  # e.g. a configuration the session refuses: show it, do not crash
            log.debug("starting the conversation failed", exc_info=True)
            return str(e) or type(e).__name__
        self.session = session
        return None

    def end(self) -> None:
        session, self.session = self.session, None
        self._gen += 1  # whatever it still says is stale
        if session is not None:
            self.closer.submit(session)

    def send(self, chunks: Iterable[Chunk]) -> None:
        """The microphone's audio for the agent."""
        session = self.session
        if session is None:
            return
        telemetry = self._report.telemetry
        for chunk in chunks:
            session.send_audio(chunk.pcm, chunk.captured_at_s)
            self._report.count("blocks_sent")
            self._report.count("blocks_open", int(chunk.open))
            if telemetry.active:
                telemetry.publish(
                    "block_sent", seq=chunk.seq, captured_at_s=chunk.captured_at_s, open=chunk.open,
                    nbytes=len(chunk.pcm),
                )

    def on_note(self, note: SessionNote, now: float) -> None:
        """Hand a session event to its handler in :data:`SESSION_HANDLERS` (the first class of its MRO listed)."""
        if note.gen != self._gen or self.session is None:
            log.debug("ignored %s of an old conversation", type(note.event).__name__)
            return
        for cls in type(note.event).__mro__:
            handler = SESSION_HANDLERS.get(cls)
            if handler is not None:
                handler(self, note.event, now)
                return
        log.debug("session event %s not used", type(note.event).__name__)

    # One handler per session event type, each given the event and the time it is handled.
    def _on_agent_audio(self, event: AgentAudio, now: float) -> None:
        if not self.replies.admit(event.event_id):
            return  # the rest of a reply the user cut off
        position = self._speaker.write(event.audio, event.received_at_s)
        self._report.telemetry.publish(
            "agent_audio", now, event_id=event.event_id, nbytes=len(event.audio), received_at_s=event.received_at_s,
            position=position, frames=len(event.audio) // event.fmt.bytes_per_frame, rate_hz=event.fmt.rate_hz,
            alignment=event.alignment,
        )

    def _on_connected(self, event: Connected, now: float) -> None:
        self.conversation_id = event.conversation_id
        self._speaker.set_format(event.output_format)
        self._feed(Input(Kind.CONNECTED), now)

    def _on_interruption(self, event: Interruption, now: float) -> None:
        self.replies.resume()  # the session's own rule takes over
        self._report.count("interruptions")
        self._report.telemetry.publish("interruption", now, event_id=event.event_id, local=False)
        self._feed(Input(Kind.INTERRUPTION), now)

    def _on_user_transcript(self, event: UserTranscript, now: float) -> None:
        self._report.telemetry.publish("transcript", now, role="user", text=event.text, tentative=event.tentative)
        if event.tentative:
            self._feed(Input(Kind.ACTIVITY), now)
        else:
            self.replies.resume()
            if event.text.strip():
                self._on_question()
            self._feed(Input(Kind.TURN_END), now)

    def _on_agent_response(self, event: AgentResponse | AgentResponseCorrection, now: float) -> None:
        self._report.telemetry.publish(
            "transcript", now, role="agent", text=event.text, correction=isinstance(event, AgentResponseCorrection)
        )

    def _on_ping(self, event: Ping, now: float) -> None:
        if event.ping_ms is not None:
            self._report.set("ping_ms", event.ping_ms)
        self._report.telemetry.publish("ping", now, ping_ms=event.ping_ms)

    def _on_tool_call(self, event: ToolCallStarted | ToolCallFinished, now: float) -> None:
        finished = isinstance(event, ToolCallFinished)
        self._report.telemetry.publish(
            "tool_call",
            now,
            name=event.name,
            call_id=event.call_id,
            phase="finished" if finished else "started",
            is_error=isinstance(event, ToolCallFinished) and event.is_error,
        )

    def _on_counted(self, event: AgentResponsePart | RichContent, now: float) -> None:
        self._report.count(_COUNTED_EVENTS[type(event)])

    def _on_mcp_approval(self, event: McpApproval, now: float) -> None:
        self._report.count("mcp_approved" if event.approved else "mcp_denied")
        self._report.telemetry.publish("mcp_approval", now, name=event.tool_name, approved=event.approved)

    def _on_server_error(self, event: ServerError, now: float) -> None:
        self._report.telemetry.publish("error", now, message=event.message, source="agent")

    def _on_session_ended(self, event: SessionEnded, now: float) -> None:
        self._report.telemetry.publish(
            "session_end", now, outcome=event.outcome.name, detail=event.detail, close_code=event.close_code
        )
        if event.outcome in _ENDED_OK:
            log.info("conversation %s ended: %s", self.conversation_id or "-", event.message)
            self._feed(Input(Kind.ENDED), now)
        else:
            self._feed(Input(Kind.FAILED, event.outcome.retryable, event.retry_after_s, event.message), now)


# The session's events by type, table-driven like the Machine's TABLE: event type → handler. The kiosk
# does not use the types in SESSION_EVENTS_UNUSED (the test checks every type is in one of them).
SESSION_HANDLERS: Mapping[type, Callable[[AgentLink, Any, float], None]] = {
    AgentAudio: AgentLink._on_agent_audio,
    Connected: AgentLink._on_connected,
    Interruption: AgentLink._on_interruption,
    UserTranscript: AgentLink._on_user_transcript,
    AgentResponse: AgentLink._on_agent_response,
    AgentResponseCorrection: AgentLink._on_agent_response,
    Ping: AgentLink._on_ping,
    ToolCallStarted: AgentLink._on_tool_call,
    ToolCallFinished: AgentLink._on_tool_call,
    **dict.fromkeys(_COUNTED_EVENTS, AgentLink._on_counted),
    McpApproval: AgentLink._on_mcp_approval,
    SessionEnded: AgentLink._on_session_ended,
    ServerError: AgentLink._on_server_error,
}
SESSION_EVENTS_UNUSED: frozenset[type] = frozenset({TentativeAgentResponse, VadScore})
