"""What the speaker plays next: agent replies and earcons as one explicit state machine (pure).

The playback driver (:class:`device.drivers.playback.Playback`) feeds a
:class:`PlayQueue` its inputs — agent audio, the end of a reply's input, cue
requests, flushes, format changes, and what the device did with each chunk —
and writes the chunks it hands out. The queue owns the ring of agent audio
and the cue queue, and produces the typed :class:`PlaybackEvent` s in an
outbox the driver empties after every call. It has no threads, no locks and
no clock: the driver holds its lock around every call and passes ``now_s``.

States (:class:`PlayState`):

- ``idle``: nothing is playing and no reply's audio waits.
- ``prebuffering``: a reply's audio is arriving; its first chunk waits for
  ``prebuffer_ms`` of audio (or that long in time, or :meth:`end_of_input`).
- ``earcon``: a cue is being written or is still sounding. Cues go before a
  reply that has not started; a reply whose audio waits follows the cue as
  soon as the cue is written and the reply is prebuffered.
- ``reply``: a reply is being written or is still sounding. Cues asked for
  meanwhile wait until it has finished.
- ``flushed``: a flush was asked for; the driver has yet to drop what the
  device holds (:meth:`start_flush`, :meth:`flush_done`). Nothing is handed out.

A reply finishes when the ring is empty and the device has played
everything (a device delay of 0); a cue when it is written and heard.
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from device.core.audioevents import FlushReport, PlaybackEvent
from device.core.audioformat import PCM_16000, PLAYBACK_CHUNK_S, AudioFormat
from device.core.convert import ulaw_decode
from device.core.ringbuffer import RingBuffer


class PlayState(enum.Enum):
    IDLE = "idle"
    EARCON = "earcon"
    PREBUFFERING = "prebuffering"
    REPLY = "reply"
    FLUSHED = "flushed"


@dataclass(frozen=True)
class Chunk:
    """Up to one 62.5 ms chunk of S16_LE at the device's rate, of a reply or of a cue."""

    data: bytes
    is_reply: bool
    position: int = field(default=-1, compare=False)  # a reply chunk: stream position of its first frame


@dataclass
class FlushRequest:
    """A flush asked for and not yet served; later requests before it is served add to it."""

    requested_at_s: float
    written_at_request: int  # frames written to the device when the flush was asked for
    reply_id: int  # the reply it cuts (0: none was playing)
    discarded_frames: int  # removed from the ring, never written
    reply_frames_written: int  # of the cut reply, written when the flush was asked for


@dataclass
class _Cue:
    name: str
    left: memoryview | None  # the cue's bytes not yet handed out; None once all are


class PlayQueue:
    """Agent audio and cues in, chunks and playback events out (not thread-safe: the caller locks)."""

    def __init__(
        self,
        *,
        ring_s: float,
        prebuffer_ms: float,
        cue_pcm: Callable[[str, int], bytes],
        fmt: AudioFormat = PCM_16000,
    ) -> None:
        self._ring_s = ring_s
        self._prebuffer_s = prebuffer_ms / 1000.0
        self._cue_pcm = cue_pcm  # a cue's S16_LE at a rate
        self._fmt = fmt
        self._format_changed = False  # the driver has yet to reopen the device in _fmt
        self._ring = RingBuffer(self._ring_bytes(fmt))
        self._carry = b""  # an odd trailing byte of PCM waiting for its partner
        self._state = PlayState.IDLE
        self._cues: collections.deque[str] = collections.deque()  # asked for, not started
        self._cue: _Cue | None = None  # the cue being written or heard
        self._flush_req: FlushRequest | None = None  # set exactly in the flushed state
        self._end_of_input = False
        self._first_audio_at_s: float | None = None  # arrival of the next reply's first audio
        self._rate_hz = 0  # of the open device: chunks and events are at this rate
        self._device_failed = False
        self._reply_id = 0
        self._reply_frames = 0  # of the current reply, written to the device
        self._reply_first_audio_s = 0.0
        self._reply_started_sent = False
        self._written_total = 0
        self._stream_in = 0  # frames of agent audio ever stored in the ring (or skipped for a missing device)
        self._events: list[PlaybackEvent] = []
        self._stats = {
            "chunks_written": 0,
            "frames_written": 0,
            "underruns": 0,
            "replies": 0,
            "flushes": 0,
            "overflow_frames": 0,
            "dropped_no_device_frames": 0,
            "earcons": 0,
            "reopen_count": 0,
            "device_errors": 0,
        }

    # -- reading ------------------------------------------------------------------
    @property
    def state(self) -> PlayState:
        return self._state

    @property
    def format(self) -> AudioFormat:
        return self._fmt

    @property
    def is_playing(self) -> bool:
        """True while a reply or cue is audible or queued."""
        if self._state is PlayState.FLUSHED:
            assert self._flush_req is not None
            sounding = bool(self._flush_req.reply_id) or self._cue is not None  # until the device drops it
        else:
            sounding = self._state is not PlayState.IDLE
        return sounding or bool(len(self._ring)) or bool(self._cues)

    @property
    def stats(self) -> dict[str, int]:
        return {**self._stats, "ring_frames": len(self._ring) // 2}

    @property
    def stream_position(self) -> int:
        """Where the next agent audio goes in the stream of all agent audio written (frames).

        Every frame of agent audio :meth:`write` takes has one position; a reply chunk carries
        the position of its first frame, so what was written can be matched with what is played.
        The ring holds positions ``stream_position - len(ring)`` to ``stream_position``; a flush
        skips what it clears.
        """
        return self._stream_in

    def take_events(self) -> list[PlaybackEvent]:
        """The events produced since the last call, oldest first."""
        events, self._events = self._events, []
        return events

    # -- inputs from the callers ------------------------------------------------
    def set_format(self, fmt: AudioFormat, now_s: float) -> bool:
        """Play what follows in ``fmt``; audio of the old format is flushed. False when it is the same."""
        if fmt == self._fmt:
            return False
        cut_reply = self._state is PlayState.REPLY or bool(self._flush_req and self._flush_req.reply_id)
        if cut_reply or len(self._ring) or (self._cue is not None and self._cue.left is not None):
            self._request_flush(now_s)
        self._fmt = fmt
        self._format_changed = True
        self._carry = b""
        self._ring = RingBuffer(self._ring_bytes(fmt))
        return True

    def write(self, audio: bytes, now_s: float, received_at_s: float | None = None) -> bool:
        """Queue agent audio in the current format; True when it reached the ring (the driver has work).

        ``received_at_s`` (when it came off the network) makes ``reply_started``
        measure from arrival rather than from ``now_s``.
        """
        if self._fmt.encoding == "ulaw":
            pcm = ulaw_decode(audio)
        else:
            data = self._carry + audio
            cut = len(data) - len(data) % 2
            pcm, self._carry = data[:cut], data[cut:]
        if not pcm:
            return False
        if self._device_failed:
            self._stats["dropped_no_device_frames"] += len(pcm) // 2
            self._stream_in += len(pcm) // 2
            return False
        # after a flush this audio starts the next reply, even before the driver has served the flush
        if self._state is not PlayState.REPLY and self._first_audio_at_s is None:
            self._first_audio_at_s = received_at_s if received_at_s is not None else now_s
        if self._state is PlayState.IDLE:
            self._state = PlayState.PREBUFFERING
        self._end_of_input = False
        stored = self._ring.write(pcm)
        self._stream_in += stored // 2
        if stored < len(pcm):
            overflow = (len(pcm) - stored) // 2
            self._stats["overflow_frames"] += overflow
            self._events.append(PlaybackEvent("overflow", now_s, self._reply_id, self._fmt.rate_hz, overflow))
        return True

    def end_of_input(self) -> None:
        """No more audio for the current reply: it need not wait for its prebuffer."""
        self._end_of_input = True

    def request_earcon(self, name: str) -> None:
        """Queue a cue by name (the driver checked that it exists)."""
        self._cues.append(name)

    def flush(self, now_s: float) -> FlushReport:
        """Cut the current reply and every queued cue now; the ``flushed`` event follows :meth:`flush_done`."""
        was_playing = (
            self._state is PlayState.REPLY
            or bool(self._flush_req and self._flush_req.reply_id)
            or bool(len(self._ring))
        )
        req = self._request_flush(now_s)
        self._stats["flushes"] += 1
        return FlushReport(now_s, req.reply_id, req.discarded_frames, was_playing, req.reply_frames_written)

    # -- inputs from the driver's loop ----------------------------------------------
    def take_format_change(self) -> AudioFormat | None:
        """The format to reopen the device in, once after :meth:`set_format`; what played is over."""
        if not self._format_changed:
            return None
        self._format_changed = False
        self._cue = None
        if self._state is not PlayState.FLUSHED:
            self._settle()
        return self._fmt

    def device_opened(self, rate_hz: int) -> None:
        if self._stats["device_errors"] or self._stats["chunks_written"]:
            self._stats["reopen_count"] += 1
        self._rate_hz = rate_hz
        self._device_failed = False

    def device_failed(self) -> None:
        """The device could not be opened or was lost: audio queued for it would come out late."""
        self._stats["device_errors"] += 1
        self._stats["dropped_no_device_frames"] += self._ring.clear() // 2
        self._device_failed = True
        self._first_audio_at_s = None
        self._cues.clear()
        self._cue = None
        if self._state is not PlayState.FLUSHED:  # a pending flush is still served and reported
            self._state = PlayState.IDLE

    def start_flush(self) -> FlushRequest | None:
        """The flush to serve now (the driver drops the device's buffer), or None; the cut is over."""
        req = self._flush_req
        if req is None:
            return None
        self._flush_req = None
        self._cue = None
        self._settle()  # audio written since the request waits as the next reply
        return req

    def flush_done(self, req: FlushRequest, dropped_frames: int, now_s: float) -> None:
        """The device dropped ``dropped_frames`` (the chunk in flight and what it still held)."""
        after = self._written_total - req.written_at_request
        self._events.append(
            PlaybackEvent(
                "flushed",
                now_s,
                req.reply_id,
                self._rate_hz,
                after,
                (now_s - req.requested_at_s) * 1000.0,
                req.discarded_frames + dropped_frames,
            )
        )

    def next_chunk(self, now_s: float) -> Chunk | None:
        """The next chunk to write, or None (nothing ready yet: see :meth:`next_due_s`)."""
        if self._state is PlayState.FLUSHED or self._format_changed:
            return None  # the driver drops or reopens first
        chunk_bytes = 2 * round(self._rate_hz * PLAYBACK_CHUNK_S)
        if self._state is PlayState.REPLY:
            return self._reply_chunk(chunk_bytes) if len(self._ring) else None
        if self._cues and (self._cue is None or self._cue.left is None):
            self._start_cue(now_s)
        if self._cue is not None and self._cue.left is not None:
            data, rest = bytes(self._cue.left[:chunk_bytes]), self._cue.left[chunk_bytes:]
            self._cue.left = rest if len(rest) else None
            return Chunk(data, is_reply=False)
        if len(self._ring) and self._prebuffered(now_s):
            self._start_reply(now_s)
            return self._reply_chunk(chunk_bytes)
        return None

    def _reply_chunk(self, chunk_bytes: int) -> Chunk:
        position = self._stream_in - len(self._ring) // 2
        return Chunk(self._ring.read(chunk_bytes), is_reply=True, position=position)

    @property
    def awaits_drain(self) -> bool:
        """True when everything of a cue or reply is written and the device's delay says when it is heard."""
        if self._state is PlayState.REPLY:
            return True
        return self._state is PlayState.EARCON and self._cue is not None and self._cue.left is None

    def next_due_s(self, now_s: float, delay_frames: int | None) -> float | None:
        """Seconds until the queue has something for the driver (0: now); None: nothing is due.

        Called when :meth:`next_chunk` had nothing; ``delay_frames`` is the device's
        delay, asked for when :attr:`awaits_drain`. A drained cue or reply finishes here.
        """
        due_s: float | None = None
        if delay_frames is not None and self.awaits_drain:
            if delay_frames == 0:
                self._drained(now_s)
                return 0.0
            due_s = delay_frames / self._rate_hz
        if self._state is not PlayState.REPLY and len(self._ring) and self._first_audio_at_s is not None:
            prebuffer_due_s = self._first_audio_at_s + self._prebuffer_s - now_s  # a reply may be due first
            due_s = prebuffer_due_s if due_s is None else min(due_s, prebuffer_due_s)
        return None if due_s is None else max(0.0, due_s)

    def wrote(self, chunk: Chunk, frames: int, complete: bool, now_s: float) -> None:
        """The device took ``frames`` of ``chunk`` (``complete``: all of it now)."""
        self._written_total += frames
        self._stats["frames_written"] += frames
        if complete:
            self._stats["chunks_written"] += 1
        if not chunk.is_reply:
            return
        self._reply_frames += frames
        if not self._reply_started_sent:
            self._reply_started_sent = True
            latency_ms = (now_s - self._reply_first_audio_s) * 1000.0
            self._events.append(
                PlaybackEvent("reply_started", now_s, self._reply_id, self._rate_hz, frames, latency_ms)
            )

    def underrun(self, chunk: Chunk, now_s: float) -> None:
        """The device ran dry before taking ``chunk``; it counts inside a reply only."""
        if chunk.is_reply and self._reply_frames > 0:
            self._stats["underruns"] += 1
            self._events.append(
                PlaybackEvent("underrun", now_s, self._reply_id, self._rate_hz, self._reply_frames)
            )

    # -- transitions ----------------------------------------------------------------
    def _settle(self) -> None:
        self._state = PlayState.PREBUFFERING if len(self._ring) else PlayState.IDLE

    def _request_flush(self, now_s: float) -> FlushRequest:
        discarded = self._ring.clear() // 2
        self._carry = b""
        self._cues.clear()
        self._end_of_input = False
        self._first_audio_at_s = None
        if self._flush_req is not None:  # one still pending: the earlier request stays the reference
            self._flush_req.discarded_frames += discarded
            return self._flush_req
        active = self._state is PlayState.REPLY
        self._flush_req = FlushRequest(
            now_s,
            self._written_total,
            self._reply_id if active else 0,
            discarded,
            self._reply_frames if active else 0,
        )
        self._state = PlayState.FLUSHED
        return self._flush_req

    def _start_cue(self, now_s: float) -> None:
        if self._cue is not None:  # back to back: the previous one is over
            self._finish_cue(now_s)
        name = self._cues.popleft()
        pcm = self._cue_pcm(name, self._rate_hz)
        self._cue = _Cue(name, memoryview(pcm) if pcm else None)
        self._state = PlayState.EARCON
        self._stats["earcons"] += 1
        self._events.append(PlaybackEvent("earcon_started", now_s, rate_hz=self._rate_hz, detail=name))

    def _finish_cue(self, now_s: float) -> None:
        assert self._cue is not None
        self._events.append(PlaybackEvent("earcon_finished", now_s, rate_hz=self._rate_hz, detail=self._cue.name))
        self._cue = None

    def _start_reply(self, now_s: float) -> None:
        if self._cue is not None:  # the reply follows the cue seamlessly
            self._finish_cue(now_s)
        self._state = PlayState.REPLY
        self._reply_id += 1
        self._stats["replies"] += 1
        self._reply_frames = 0
        self._reply_started_sent = False
        self._reply_first_audio_s = self._first_audio_at_s or now_s
        self._first_audio_at_s = None

    def _drained(self, now_s: float) -> None:
        if self._state is PlayState.EARCON:
            self._finish_cue(now_s)
            self._settle()
        elif not len(self._ring):  # a reply goes on when audio arrived meanwhile
            self._end_of_input = False
            self._state = PlayState.IDLE
            self._events.append(
                PlaybackEvent("reply_finished", now_s, self._reply_id, self._rate_hz, self._reply_frames)
            )

    def _prebuffered(self, now_s: float) -> bool:
        queued_s = len(self._ring) / 2 / self._rate_hz
        waited_s = now_s - (self._first_audio_at_s if self._first_audio_at_s is not None else now_s)
        return (
            queued_s >= self._prebuffer_s
            or waited_s >= self._prebuffer_s
            or self._end_of_input
            or self._ring.free < 2 * self._rate_hz  # nearly full: no point in waiting
        )

    def _ring_bytes(self, fmt: AudioFormat) -> int:
        return 2 * round(self._ring_s * fmt.rate_hz)
