"""The agent's voice (no I/O): one reply at a time, begun, streamed chunk by chunk, cut short.

The conversation decides *when* the agent speaks (turns, tools, reprompts);
the :class:`Speaker` decides *how*: it renders the text, numbers the reply,
streams its chunks when their time comes (firing the reply-level faults
between them), sends its text as the agent's client_events ask, and, when
the user barges in, the interruption and what was heard.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from device.core.audioformat import AudioFormat
from device.emulator import wire
from device.emulator.faults import FaultRunner
from device.emulator.outbox import Outbox
from device.emulator.recording import ConversationRecord, TurnRecord
from device.emulator.replies import Reply, plan_chunks, send_chunk, words_prefix
from device.emulator.scenario import AgentSettings, Timing


class Speaker:
    """Replies of one conversation into ``out``; ``clock`` is read again once a reply is rendered."""

    def __init__(
        self,
        out: Outbox,
        record: ConversationRecord,
        faults: FaultRunner,
        *,
        agent: AgentSettings,
        timing: Timing,
        render: Callable[[str, AudioFormat], bytes],
        clock: Callable[[], float],
        seed: int,
    ) -> None:
        self._out = out
        self._record = record
        self._faults = faults
        self._agent = agent
        self._timing = timing
        self._render = render
        self._clock = clock
        self._rng = random.Random(seed)
        self._fmt = agent.output
        # What the agent sends may change with the initiation's overrides.
        self.client_events = frozenset(agent.client_events)
        self.text_only = False
        self.reply: Reply | None = None  # the reply streaming or playing, if any
        self.reply_ids: set[int] = set()  # every reply's event_id so far
        self._event_id = 0
        self._replies_started = 0
        self._interrupted_id: int | None = None

    def new_event_id(self) -> int:
        """A fresh event_id (replies and pings draw from the same count)."""
        self._event_id += 1
        return self._event_id

    def turn_event_id(self) -> int:
        """The event_id the coming reply will most likely get: transcripts and tool calls of a turn carry it.

        Taking a fresh id for each would shift every reply's id; the document only asks for an integer.
        """
        if self._agent.reuse_event_id_after_interruption and self._interrupted_id is not None:
            return self._interrupted_id
        return self._event_id + 1

    def playing(self, now: float) -> bool:
        """A reply the client is still playing (or being sent) that a user turn would cut short."""
        return self.reply is not None and not self.reply.interrupted and now < self.reply.play_end_s

    def deadlines(self) -> list[float]:
        r = self.reply
        if r is None:
            return []
        due = [r.chunk_due_s(r.next_chunk, self._timing.speed)] if r.streaming else []
        return [*due, r.play_end_s]

    def begin(self, now: float, text: str, record: TurnRecord, end_call: bool) -> None:
        """Say ``text`` in answer to ``record``'s turn (``end_call``: hang up once it has been played)."""
        if self.text_only:
            self._begin_text(now, text, record, end_call)
            return
        fmt = self._fmt
        audio = self._render(text, fmt)
        now = self._clock()  # synthesis takes a while: the reply starts when it is done
        audio = audio[: len(audio) - len(audio) % fmt.bytes_per_frame]
        if not audio:  # nothing to say still takes a moment of sound
            audio = bytes(fmt.bytes_per_frame * (fmt.rate_hz // 10))
        event_id = self._reply_event_id()
        bounds = plan_chunks(len(audio), fmt, self._rng, self._timing.chunk_min_ms, self._timing.chunk_max_ms)
        duration_s = fmt.duration_s(len(audio))
        speed = self._timing.speed
        last_s = fmt.duration_s(bounds[-1][1] - bounds[-1][0]) if bounds else 0.0
        play_end = now + max(duration_s, (duration_s - last_s) / speed + last_s)
        self._start(Reply(text, event_id, self._replies_started, audio, fmt, bounds, now, play_end, record, end_call))
        self.stream(now)

    def stream(self, now: float) -> None:
        """Send the chunks of the reply that are due by ``now``."""
        r = self.reply
        while r is not None and r.streaming and not self._out.ended:
            i = r.next_chunk
            if r.chunk_due_s(i, self._timing.speed) > now:
                return
            self._faults.inject(now, r, i)
            if self._out.ended or r.interrupted:
                return
            send_chunk(self._out, now, r, i, alignment=self._agent.alignment)
            r.next_chunk += 1
            with self._record.locked():
                r.record.chunks_sent = r.next_chunk
                if r.record.reply_first_audio_sent_t_s is None:
                    r.record.reply_first_audio_sent_t_s = now
                r.record.reply_last_audio_sent_t_s = now
            if not r.response_sent:
                self._send_response(now, r)
            if not r.streaming:
                self._faults.inject(now, r, r.next_chunk, at_end=True)

    def finished(self, now: float) -> Reply | None:
        """The reply whose playback ended by ``now``, once; the agent is then silent."""
        r = self.reply
        if r is None or r.streaming or now < r.play_end_s:
            return None
        self.reply = None
        return r

    def interrupt(self, now: float) -> None:
        """The user spoke over the reply: stop it, say so, and (when asked) correct its text to what was heard."""
        r = self.reply
        assert r is not None
        r.interrupted = True
        self.reply = None
        self._interrupted_id = r.event_id
        self._out.send(now, wire.interruption(r.event_id))
        with self._record.locked():
            r.record.interrupted = True
            r.record.interrupted_t_s = now
        if r.response_sent and "agent_response_correction" in self.client_events:
            heard = (now - r.play_start_s) / max(1e-6, self._fmt.duration_s(len(r.audio)))
            self._out.send(now, wire.agent_response_correction(r.text, words_prefix(r.text, heard), r.event_id))

    def _reply_event_id(self) -> int:
        if self._agent.reuse_event_id_after_interruption and self._interrupted_id is not None:
            event_id = self._interrupted_id
        else:
            event_id = self.new_event_id()
        self._interrupted_id = None
        return event_id

    def _start(self, r: Reply) -> None:
        """``r`` is the reply now: counted, and its record says what it is."""
        self._replies_started += 1
        self.reply_ids.add(r.event_id)
        with self._record.locked():
            r.record.reply_text = r.text
            r.record.event_id = r.event_id
            if r.audio:  # a text-only reply has no audio to describe
                r.record.reply_audio_s = r.fmt.duration_s(len(r.audio))
                r.record.chunks_total = len(r.bounds)
            r.record.reply_play_end_t_s = r.play_end_s
        self.reply = r

    def _begin_text(self, now: float, text: str, record: TurnRecord, end_call: bool) -> None:
        """Text-only mode (conversation.text_only override): the reply is text, at once."""
        reply = Reply(
            text, self._reply_event_id(), self._replies_started, b"", self._fmt, [], now, now, record, end_call
        )
        self._start(reply)
        self._send_response(now, reply)
        self._faults.inject(now, reply, 0, at_end=True)

    def _send_response(self, now: float, r: Reply) -> None:
        """The reply's text: streamed parts (when enabled), then agent_response."""
        r.response_sent = True
        if "agent_chat_response_part" in self.client_events:
            words = r.text.split(" ")
            parts = (
                [("start", "")] + [("delta", w if i == 0 else " " + w) for i, w in enumerate(words)] + [("stop", "")]
            )
            for kind, text in parts:
                self._out.send(now, wire.agent_chat_response_part(text, kind, r.event_id))
        if "agent_response" in self.client_events:
            self._out.send(now, wire.agent_response(r.text, r.event_id))
