"""One conversation's behaviour, as a state machine without I/O.

The server feeds it what the client sent (:meth:`Conversation.receive`) and
wakes it at :meth:`Conversation.next_deadline_s` (:meth:`Conversation.tick`);
both return the :data:`Action` list to perform on the socket, in order. Time
comes from an injected clock, so tests can run it without a socket or sleeps.

What it models (docs/bench.md, "The agent emulator"): the initiation handshake and overrides, the
metadata, turn-taking with webrtcvad, replies streamed faster than real time
in variable-size chunks with a per-reply playback clock, interruptions,
pings, client tools, the service's timeouts, injected faults, and a check of
every client message against the protocol (violations are recorded).

The Conversation keeps the handshake, the turn-taking, the client tools and
the service's timeouts; its parts are modules of their own: ``outbox`` (the
actions and the record's events), ``inbound`` (each client message read and
checked), ``speaker`` (the agent's replies as they stream), ``faults`` (the
reply-level faults, one handler per kind), ``pings``, ``toolcalls`` and
``replies`` (the turn script, pending replies, chunks); ``wire`` builds
every message.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import logging
from collections.abc import Callable
from enum import Enum
from typing import Any

from device.core.audioformat import AudioFormat
from device.emulator import inbound, wire
from device.emulator import pcm as pcmlib
from device.emulator.faults import FaultRunner
from device.emulator.inbound import INIT_TYPE, Problem
from device.emulator.outbox import (
    FROM_AGENT,
    TO_AGENT,
    Action,
    Close,
    Drop,
    Outbox,
    Send,
    SendRaw,
    add_message_tap,
    clip,
    remove_message_tap,
    tap,
)
from device.emulator.pings import Pinger
from device.emulator.recording import ConversationRecord, ToolCallRecord, TurnRecord, Violation
from device.emulator.replies import Pending, TurnScript, words_prefix
from device.emulator.scenario import QUOTA_REASON, Scenario, Turn
from device.emulator.speaker import Speaker
from device.emulator.toolcalls import Answer, ToolCalls
from device.emulator.vad import SpeechEnded, SpeechStarted, TurnDetector

log = logging.getLogger(__name__)

__all__ = [
    "CLOSE_INTERNAL",
    "Action",
    "Close",
    "Conversation",
    "ConversationState",
    "Drop",
    "Send",
    "SendRaw",
    "add_message_tap",
    "remove_message_tap",
]

# Close codes and reasons the emulator uses (what the device must classify).
CLOSE_NO_INITIATION = (1008, "No conversation initiation received")
CLOSE_INACTIVITY = 1002
CLOSE_MAX_DURATION = (1000, "Maximum conversation duration reached")
# The document lists only 1000/1002/1008/1011: a shutdown is an unexpected end (1011), not 1001.
CLOSE_STOPPING = (1011, "Emulator shutting down")
CLOSE_INTERNAL = (1011, "Internal error")


class ConversationState(Enum):
    """Where a conversation is: new → awaiting_init → awaiting_metadata → active → closed (from any)."""

    NEW = "new"
    AWAITING_INIT = "awaiting_init"  # connected; the client's initiation has not come yet
    AWAITING_METADATA = "awaiting_metadata"  # initiated; the metadata is not sent yet (slow or missing)
    ACTIVE = "active"  # the metadata is sent: turns, replies and pings
    CLOSED = "closed"  # either side closed, or the connection dropped


class Conversation:
    """The agent's side of one conversation (not thread-safe: one thread drives it)."""

    def __init__(
        self,
        scenario: Scenario,
        record: ConversationRecord,
        *,
        render: Callable[[str, AudioFormat], bytes],
        clock: Callable[[], float],
        seed: int = 0,
    ) -> None:
        self.scenario = scenario
        self.agent = scenario.agent
        self.timing = scenario.timing
        self.record = record
        self._clock = clock
        self.input_fmt = self.agent.input
        self.output_fmt = self.agent.output
        self._phase = ConversationState.NEW
        self._out = Outbox(record)
        self._first_message = self.agent.first_message
        self._vad = TurnDetector(
            self.input_fmt.rate_hz,
            aggressiveness=self.timing.vad_aggressiveness,
            speech_start_ms=self.timing.speech_start_ms,
            end_silence_ms=self.timing.end_of_turn_silence_ms,
            min_speech_ms=self.timing.min_speech_ms,
        )
        self._faults = [f for f in scenario.faults if f.applies_to(record.index)]
        now = clock()
        self._opened_s = now
        self._init_deadline_s = now + self.timing.init_timeout_s
        self._metadata_due_s: float | None = None
        self._last_audio_s = now
        strict = scenario.strict
        self._audio_rate = inbound.AudioRate(self.input_fmt.name, strict.audio_rate_factor, strict.audio_burst_s)
        self._early_flagged = False
        self._next_score_s = 0.0
        self._tentative_sent = False
        self._speech_start_t_s: float | None = None
        self._pinger = Pinger(self.timing.ping_interval_s, self.timing.pong_timeout_s)
        self._script = TurnScript(scenario.turns, self.agent.after_last_turn)
        self._pending: Pending | None = None
        self._reprompt_at_s: float | None = None
        call_numbers = itertools.count(1)  # client tool calls and agent tool responses share them
        self._tool_calls = ToolCalls(record.conversation_id, self.timing.tool_timeout_s, call_numbers)
        self._fault_runner = FaultRunner(
            self._faults, self._out, end_call_reason=self.agent.end_call_reason, call_numbers=call_numbers
        )
        self._speaker = Speaker(
            self._out,
            record,
            self._fault_runner,
            agent=self.agent,
            timing=self.timing,
            render=render,
            clock=clock,
            seed=seed,
        )

    # -- entry points --------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._out.ended

    @property
    def state(self) -> ConversationState:
        return ConversationState.CLOSED if self._out.ended else self._phase

    def open(self) -> list[Action]:
        self._phase = ConversationState.AWAITING_INIT
        self._out.event(self._clock(), FROM_AGENT, "connected")
        return self._out.flush()

    def receive(self, data: str | bytes) -> list[Action]:
        now = self._clock()
        if self.closed:
            return []
        if isinstance(data, bytes):
            self._out.event(now, TO_AGENT, "binary_frame", bytes=len(data))
            self._violate(now, "binary_frame", f"a {len(data)}-byte binary frame; every message is JSON text")
            return self._out.flush()
        try:
            msg = json.loads(data)
        except ValueError as e:
            self._out.event(now, TO_AGENT, "invalid_json", bytes=len(data))
            self._violate(now, "invalid_json", f"not JSON ({e}): {data[:80]!r}")
            return self._out.flush()
        if not isinstance(msg, dict):
            self._out.event(now, TO_AGENT, "not_an_object")
            self._violate(now, "not_an_object", f"a JSON {type(msg).__name__}, not an object: {data[:80]!r}")
            return self._out.flush()
        tap(TO_AGENT, msg)
        if self._speaker.text_only:  # a text-only client sends no audio: its messages keep the session alive
            self._last_audio_s = now
        if "user_audio_chunk" in msg:
            self._on_audio(now, msg)
        else:
            self._on_message(now, msg)
        if not self._out.muted:  # nobody is listening any more: no replies to prepare
            self._advance(now)
        return self._out.flush()

    def tick(self) -> list[Action]:
        if not self.closed:
            self._advance(self._clock())
        return self._out.flush()

    def stop(self) -> list[Action]:
        """The emulator is shutting down."""
        if not self.closed:
            self._out.close(self._clock(), *CLOSE_STOPPING)
        return self._out.flush()

    def mute(self) -> None:
        """The socket is gone: keep checking what the client sent, but say and log nothing more."""
        self._out.muted = True

    def client_closed(self, code: int | None, reason: str) -> None:
        if not self.closed:
            self._out.event(self._clock(), TO_AGENT, "close", code=code, reason=reason)
            self._out.ended = True

    def next_deadline_s(self) -> float | None:
        if self.closed:
            return None
        t = self.timing
        times: list[float] = []
        if self.state is ConversationState.AWAITING_INIT:
            times.append(self._init_deadline_s)
        if self._metadata_due_s is not None:
            times.append(self._metadata_due_s)
        if t.inactivity_timeout_s:
            times.append(self._last_audio_s + t.inactivity_timeout_s)
        if t.max_duration_s:
            times.append(self._opened_s + t.max_duration_s)
        times += self._fault_runner.deadlines()
        times += self._pinger.deadlines()
        times += self._tool_calls.deadlines()
        if self._pending is not None and self._pending.tool_call is None:
            times.append(self._pending.start_at_s)
        times += self._speaker.deadlines()
        if self._reprompt_at_s is not None:
            times.append(self._reprompt_at_s)
        return min(times) if times else None

    # -- client messages -----------------------------------------------------
    def _on_audio(self, now: float, msg: dict[str, Any]) -> None:
        value = msg["user_audio_chunk"]
        extra = sorted(set(msg) - {"user_audio_chunk"})
        if extra:
            self._violate(now, "unknown_field", f"user_audio_chunk message has extra field(s) {extra}")
        if not isinstance(value, str):
            self._out.event(now, TO_AGENT, "user_audio_chunk", error="not a string")
            self._violate(now, "audio_not_string", f"user_audio_chunk is a {type(value).__name__}, not base64 text")
            return
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as e:
            self._out.event(now, TO_AGENT, "user_audio_chunk", error="bad base64", chars=len(value))
            self._violate(now, "audio_bad_base64", f"user_audio_chunk of {len(value)} characters is not base64: {e}")
            return
        if self.input_fmt.encoding == "pcm" and len(raw) % 2:
            self._violate(
                now,
                "audio_odd_length",
                f"user_audio_chunk of {len(raw)} bytes is not a whole number of 16-bit samples",
            )
            raw = raw[:-1]
        if not raw:
            self._out.event(now, TO_AGENT, "user_audio_chunk", bytes=0)
            self._violate(now, "audio_empty", "user_audio_chunk with no audio")
            return
        pcm = pcmlib.to_pcm(raw, self.input_fmt)
        duration_s = self.input_fmt.duration_s(len(raw))
        with self.record.locked():  # audio and its event land together in snapshots
            self.record.add_audio(pcm)
            self._out.event(
                now,
                TO_AGENT,
                "user_audio_chunk",
                bytes=len(raw),
                duration_ms=round(duration_s * 1000, 1),
                peak=pcmlib.peak(pcm),
            )
        if self.state is ConversationState.AWAITING_INIT:
            self._early(now, "user_audio_chunk")
            return
        self._last_audio_s = now
        self._violations(now, self._audio_rate.feed(now, duration_s))
        if self.state is not ConversationState.ACTIVE:
            return
        for ev in self._vad.feed(pcm, now):
            if isinstance(ev, SpeechStarted):
                self._on_speech_started(now, ev)
            elif isinstance(ev, SpeechEnded):
                self._on_speech_ended(now, ev)
        self._maybe_tentative(now)
        if "vad_score" in self._speaker.client_events and now >= self._next_score_s:
            score = self._vad.take_score()
            if score is not None:
                self._out.send(now, wire.vad_score(round(score, 3)))
                self._next_score_s = now + self.timing.vad_score_interval_ms / 1000

    def _on_message(self, now: float, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == INIT_TYPE:
            self._on_initiation(now, msg)
            return
        summary = {k: v for k, v in msg.items() if k != "type"}
        if not isinstance(kind, str):
            self._out.event(now, TO_AGENT, "untyped", keys=sorted(msg))
            self._violate(now, "unknown_message", f"message without user_audio_chunk or type: keys {sorted(msg)}")
            return
        handler = {
            "pong": self._on_pong,
            "client_tool_result": self._on_tool_result,
            "contextual_update": self._on_contextual_update,
            "user_message": self._on_user_message,
            "user_activity": self._on_user_activity,
            "feedback": self._on_feedback,
            "mcp_tool_approval_result": self._on_mcp_approval,
            "multimodal_message": self._on_multimodal_message,
        }.get(kind)
        self._out.event(now, TO_AGENT, kind, **clip(summary))
        if handler is None:
            self._violate(now, "unknown_type", f"client message type {kind!r} is not in the protocol")
            return
        if self.state is ConversationState.AWAITING_INIT:
            self._early(now, kind)
            return
        handler(now, msg)

    def _early(self, now: float, what: str) -> None:
        if not self._early_flagged:
            self._early_flagged = True
            self._violate(
                now,
                "first_message_not_initiation",
                f"the first client message was {what}; it must be {INIT_TYPE}",
            )

    def _on_initiation(self, now: float, msg: dict[str, Any]) -> None:
        self._out.event(now, TO_AGENT, INIT_TYPE, **clip({k: v for k, v in msg.items() if k != "type"}))
        if self.state is not ConversationState.AWAITING_INIT:
            self._violate(now, "initiation_repeated", f"{INIT_TYPE} sent again after the conversation started")
            return
        with self.record.locked():
            self.record.initiation = json.loads(json.dumps(msg))
        strict = self.scenario.strict
        self._violations(now, inbound.initiation_problems(msg, unknown_fields=strict.unknown_initiation_fields))
        found = inbound.overrides(msg)
        for name in found:
            if name not in self.agent.allowed_overrides:
                self._out.error(now, "override_error", f"Override for field '{name}' is not allowed by config.")
                return
        if isinstance(found.get("first_message"), str):
            self._first_message = found["first_message"]
        if found.get("text_only") is True:
            self._speaker.text_only = True
        if isinstance(found.get("client_events"), list):
            self._speaker.client_events = frozenset(str(e) for e in found["client_events"])
        if any(f.kind == "quota" for f in self._faults):
            self._out.close(now, 1002, QUOTA_REASON)
            return
        self._phase = ConversationState.AWAITING_METADATA
        if any(f.kind == "missing_metadata" for f in self._faults):
            return
        delays = [f.delay_s for f in self._faults if f.kind == "slow_metadata"]
        self._metadata_due_s = now + max(delays, default=0.0)

    def _on_pong(self, now: float, msg: dict[str, Any]) -> None:
        eid, problems = inbound.pong_event_id(msg)
        self._violations(now, problems)
        if eid is None:
            return
        rtt_ms = self._pinger.pong(now, eid)
        if rtt_ms is None:
            self._violate(now, "pong_unknown_event_id", f"pong for event_id {eid}, which is not an outstanding ping")
            return
        with self.record.locked():
            self.record.ping_rtts_ms.append(round(rtt_ms, 3))

    def _on_tool_result(self, now: float, msg: dict[str, Any]) -> None:
        got, problems = inbound.tool_result(msg)
        self._violations(now, problems)
        if got is None:
            return
        call_id, result, is_error = got.call_id, got.result, got.is_error
        answer, call = self._tool_calls.answer(call_id)
        if answer is Answer.DUPLICATE:
            self._violate(now, "tool_result_duplicate", f"second client_tool_result for tool_call_id {call_id!r}")
            return
        if answer is Answer.LATE:
            self._out.event(now, TO_AGENT, "late_tool_result", tool_call_id=call_id)
            return
        if call is None:
            self._violate(now, "tool_result_unknown_id", f"client_tool_result for unknown tool_call_id {call_id!r}")
            return
        with self.record.locked():
            call.result, call.is_error, call.result_t_s = result, is_error, now
        p = self._pending
        if p is not None and p.tool_call is call:
            p.tool_deadline_s = None
            self._speaker.begin(now, self._tool_reply_text(p.turn, result, is_error), p.record, p.turn.end_call)
            self._pending = None

    def _on_contextual_update(self, now: float, msg: dict[str, Any]) -> None:
        self._violations(now, inbound.contextual_update_problems(msg))

    def _on_user_message(self, now: float, msg: dict[str, Any]) -> None:
        text, problems = inbound.user_message_text(msg)
        self._violations(now, problems)
        self._user_text(now, text)

    def _on_multimodal_message(self, now: float, msg: dict[str, Any]) -> None:
        text, problems = inbound.multimodal_message_text(msg)
        self._violations(now, problems)
        self._user_text(now, text)

    def _user_text(self, now: float, text: str | None) -> None:
        """A typed user turn; null or blank text (the document allows both) starts none."""
        if text is None or not text.strip():
            return
        self._reprompt_at_s = None
        if self._speaker.playing(now):
            self._speaker.interrupt(now)
        self._user_turn(now, "user_message", text, None)

    def _on_user_activity(self, now: float, msg: dict[str, Any]) -> None:
        if self._reprompt_at_s is not None:
            self._reprompt_at_s = now + self.timing.turn_timeout_s

    def _on_feedback(self, now: float, msg: dict[str, Any]) -> None:
        self._violations(now, inbound.feedback_problems(msg, self._speaker.reply_ids))

    def _on_mcp_approval(self, now: float, msg: dict[str, Any]) -> None:
        got, problems = inbound.mcp_approval(msg)
        self._violations(now, problems)
        if got is not None and not self._fault_runner.approve(now, *got):
            detail = f"mcp_tool_approval_result for {got[0]!r}, which awaits no approval"
            self._violate(now, "mcp_approval_unknown_id", detail)

    # -- turn-taking ---------------------------------------------------------
    def _on_speech_started(self, now: float, ev: SpeechStarted) -> None:
        self._out.event(now, FROM_AGENT, "vad_speech_started", audio_pos_s=round(ev.audio_pos_s, 3))
        self._reprompt_at_s = None
        self._tentative_sent = False
        self._speech_start_t_s = ev.t_s
        if self._speaker.playing(now):
            self._speaker.interrupt(now)
        p = self._pending
        if p is not None and p.tool_call is None:
            # The user went on talking before the agent began: that turn is not over.
            with self.record.locked():
                p.record.cancelled = True
            self._script.cursor = p.cursor_before
            self._pending = None

    def _on_speech_ended(self, now: float, ev: SpeechEnded) -> None:
        self._out.event(now, FROM_AGENT, "vad_speech_ended", speech_s=round(ev.speech_s, 3), is_turn=ev.is_turn)
        if not ev.is_turn:
            self._arm_reprompt(now)
            return
        record = self._user_turn(now, "speech", None, ev)
        with self.record.locked():
            record.speech_end_t_s = ev.t_s
            record.turn_end_t_s = ev.decided_t_s
            record.speech_s = ev.speech_s

    def _maybe_tentative(self, now: float) -> None:
        if (
            "tentative_user_transcript" in self._speaker.client_events
            and not self._tentative_sent
            and self._vad.in_speech
            and self._vad.speech_so_far_s() * 1000 >= self.timing.tentative_after_ms
        ):
            self._tentative_sent = True
            text = self._script.peek().transcript or "…"
            self._out.send(now, wire.tentative_user_transcript(words_prefix(text, 0.5), self._speaker.turn_event_id()))

    def _user_turn(self, now: float, trigger: str, typed: str | None, ev: SpeechEnded | None) -> TurnRecord:
        p = self._pending
        if p is not None:  # still waiting on a tool: that reply is abandoned, the call stays open
            with self.record.locked():
                p.record.cancelled = True
            self._pending = None
        cursor_before = self._script.cursor
        turn = self._script.take()
        if typed is not None:
            transcript = typed
        else:
            speech_s = ev.speech_s if ev else 0.0
            transcript = turn.transcript or f"[{speech_s:.1f} s of speech]"
            if "user_transcript" in self._speaker.client_events:
                self._out.send(now, wire.user_transcript(transcript, self._speaker.turn_event_id()))
        record = TurnRecord(index=len(self.record.turns), trigger=trigger, user_transcript=transcript)
        if ev is not None:
            record.speech_start_t_s = self._speech_start_t_s
        with self.record.locked():
            self.record.turns.append(record)
        self._pending = Pending(turn, record, now + self.timing.response_delay_ms / 1000, cursor_before)
        return record

    def _arm_reprompt(self, now: float) -> None:
        if (
            self.timing.turn_timeout_s
            and self._speaker.reply is None
            and self._pending is None
            and not self._vad.in_speech
            and self.state is ConversationState.ACTIVE
        ):
            self._reprompt_at_s = now + self.timing.turn_timeout_s

    # -- time-driven ---------------------------------------------------------
    def _advance(self, now: float) -> None:
        t = self.timing
        if self.closed:
            return
        if self.state is ConversationState.AWAITING_INIT and now >= self._init_deadline_s:
            self._violate(now, "initiation_missing", f"no {INIT_TYPE} within {t.init_timeout_s:g} s of connecting")
            self._out.close(now, *CLOSE_NO_INITIATION)
            return
        if self._metadata_due_s is not None and now >= self._metadata_due_s:
            self._metadata_due_s = None
            self._activate(now)
        if t.inactivity_timeout_s and now - self._last_audio_s >= t.inactivity_timeout_s:
            message = f"No user audio received for {t.inactivity_timeout_s:g} s"
            self._out.send(now, wire.error(CLOSE_INACTIVITY, message, "transport_receive_timeout"))
            self._out.close(now, CLOSE_INACTIVITY, f"{message} (transport_receive_timeout)")
            return
        if t.max_duration_s and now - self._opened_s >= t.max_duration_s:
            self._out.error(now, "max_duration_exceeded", CLOSE_MAX_DURATION[1])
            return
        self._fault_runner.advance(now)
        if self.closed:
            return
        self._check_pings(now)
        self._check_abandoned_calls(now)
        p = self._pending
        if p is not None:
            if p.tool_deadline_s is not None and now >= p.tool_deadline_s:
                self._tool_timed_out(now, p)
            elif p.tool_call is None and now >= p.start_at_s:
                self._start_pending(now, p)
        self._speaker.stream(now)
        if self.closed:
            return
        r = self._speaker.finished(now)
        if r is not None:
            if r.end_call and not r.interrupted:
                self._out.close(now, 1000, self.agent.end_call_reason)
                return
            self._arm_reprompt(now)
        if self._reprompt_at_s is not None and now >= self._reprompt_at_s:
            self._reprompt_at_s = None
            if self._speaker.reply is None and self._pending is None and not self._vad.in_speech:
                record = TurnRecord(index=len(self.record.turns), trigger="reprompt")
                with self.record.locked():
                    self.record.turns.append(record)
                self._speaker.begin(now, self.agent.reprompt, record, False)

    def _activate(self, now: float) -> None:
        metadata = wire.conversation_initiation_metadata(
            self.record.conversation_id, self.output_fmt.name, self.input_fmt.name
        )
        self._out.send(now, metadata)
        self._phase = ConversationState.ACTIVE
        self._pinger.start(now)
        if self._first_message.strip():
            record = TurnRecord(index=0, trigger="first_message")
            with self.record.locked():
                self.record.turns.append(record)
            delay_s = self.timing.first_message_delay_ms / 1000
            if delay_s > 0:
                # The service synthesises before it speaks; some clients (the official JS one) listen
                # for messages only after handling the metadata and lose what arrives with it.
                first = Turn(reply=self._first_message)
                self._pending = Pending(first, record, now + delay_s, self._script.cursor)
            else:
                self._speaker.begin(now, self._first_message, record, False)
        else:
            self._arm_reprompt(now)

    def _check_pings(self, now: float) -> None:
        for eid in self._pinger.late(now):
            self._violate(now, "pong_missing", f"no pong for ping {eid} within {self.timing.pong_timeout_s:g} s")
        if self._pinger.due(now):
            self._out.send(now, self._pinger.ping(now, self._speaker.new_event_id()))

    # -- tools ---------------------------------------------------------------
    def _start_pending(self, now: float, p: Pending) -> None:
        tool = p.turn.tool
        if tool is None:
            self._pending = None
            self._speaker.begin(now, p.turn.reply, p.record, p.turn.end_call)
            return
        params = json.loads(json.dumps(dict(tool.parameters)))
        call = self._tool_calls.open(now, tool.name, params)
        with self.record.locked():
            p.record.tool_calls.append(call)
        p.tool_call = call
        p.tool_deadline_s = now + self.timing.tool_timeout_s
        self._out.send(now, wire.client_tool_call(tool.name, call.call_id, params, self._speaker.turn_event_id()))

    def _tool_timed_out(self, now: float, p: Pending) -> None:
        call = p.tool_call
        assert call is not None
        self._call_unanswered(now, call)
        self._pending = None
        text = self.agent.tool_timeout_reply.replace("{name}", call.name)
        self._speaker.begin(now, text, p.record, p.turn.end_call)

    def _call_unanswered(self, now: float, call: ToolCallRecord) -> None:
        self._tool_calls.give_up(call)
        with self.record.locked():
            call.timed_out = True
        self._violate(
            now,
            "tool_result_missing",
            f"no client_tool_result for {call.name} ({call.call_id}) within {self.timing.tool_timeout_s:g} s",
        )

    def _check_abandoned_calls(self, now: float) -> None:
        """Calls whose reply was abandoned (the user spoke on) still owe exactly one result."""
        waiting = self._pending.tool_call if self._pending is not None else None
        for call in self._tool_calls.overdue(now, waiting):
            self._call_unanswered(now, call)

    def _tool_reply_text(self, turn: Turn, result: str, is_error: bool) -> str:
        assert turn.tool is not None
        template = (turn.tool.error_reply or self.agent.tool_error_reply) if is_error else turn.reply
        return template.replace("{name}", turn.tool.name).replace("{result}", result)

    # -- helpers -------------------------------------------------------------
    def _violations(self, now: float, problems: list[Problem]) -> None:
        for rule, detail in problems:
            self._violate(now, rule, detail)

    def _violate(self, now: float, rule: str, detail: str) -> None:
        v = Violation(self.record.conversation_id, rule, detail, now)
        self.record.add_violation(v)
        self.record.add_event(now, TO_AGENT, "violation", rule=rule, detail=detail)
        log.warning("protocol violation in %s: %s: %s", v.conversation_id, rule, detail)
