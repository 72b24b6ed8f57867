"""The playback worker: agent replies and earcons on the speaker, flushable at once.

Agent audio (which arrives faster than real time) goes into a ring buffer
sized for ``audio.ring_s`` seconds; this worker writes it to ALSA in chunks of
62.5 ms (1000 frames at 16 kHz) through a non-blocking PCM opened at the
agent's rate, so ALSA's plug layer does any rate conversion. μ-law is decoded
on arrival (two ``bytes.translate`` passes) so the ring, software volume and
earcons all deal in S16_LE.

``flush()`` clears the ring at once and wakes the worker, which calls
``drop()``: ALSA discards what it still holds. The worker only ever has one
chunk in flight, so at most one chunk of the old reply is written after the
request, and the next reply starts cleanly.

A *reply* starts when audio arrives while nothing plays; its first chunk waits
for ``audio.prebuffer_ms`` of audio (or that long in time, or
:meth:`Playback.end_of_input`). It finishes when the ring is empty and the
device has played everything. An underrun counts when the device ran dry while
a reply still had audio to write; running dry between replies is normal.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from device.core.audioevents import FlushReport, PlaybackEvent
from device.core.audioformat import PCM_16000, AudioFormat
from device.core.config import AudioConfig
from device.core.convert import GainTable, ulaw_decode, volume_to_gain
from device.core.errors import AudioError
from device.core.retry import backoff_delay_s
from device.core.ringbuffer import RingBuffer
from device.drivers.audiobackend import Backend, MixerControl, PlaybackDevice
from device.drivers.earcons import EARCON_NAMES, EarconSet, load_earcons
from device.drivers.pacing import PacedPlayback
from device.drivers.waker import Waker
from device.drivers.worker import DEFAULT_JOIN_TIMEOUT_S, Worker, WorkerExited

log = logging.getLogger(__name__)

PERIODS = 4  # ALSA buffer of four chunks: 250 ms of cushion against a late wake-up
IDLE_WAIT_S = 1.0  # heartbeat while idle
FIRST_RETRY_S = 0.25
LOG_EVERY_S = 10.0


@dataclass
class _FlushRequest:
    requested_at_s: float
    written_at_request: int  # frames written to ALSA when the flush was asked for
    reply_id: int
    discarded_frames: int
    reply_frames_written: int


@dataclass
class _Chunk:
    data: bytes
    is_reply: bool
    offset: int = 0  # bytes already written

    @property
    def remaining(self) -> int:
        return len(self.data) - self.offset


class Playback(Worker):
    """Plays agent audio and earcons on ``cfg.playback_device``."""

    def __init__(
        self,
        cfg: AudioConfig,
        on_event: Callable[[PlaybackEvent], None] | None = None,
        on_exit: Callable[[WorkerExited], None] | None = None,
        *,
        backend: Backend | None = None,
        name: str = "audio-playback",
    ) -> None:
        super().__init__(name, on_exit)
        if backend is None:
            from device.drivers.alsa import AlsaBackend

            backend = AlsaBackend()
        self._cfg = cfg
        self._on_event = on_event
        self._backend = backend
        self._earcons = EarconSet(load_earcons(cfg))  # ConfigError now rather than at the first cue
        self._waker = Waker()
        self._lock = threading.Lock()
        # -- shared with the callers' threads (under _lock) --
        self._fmt = PCM_16000
        self._ring = RingBuffer(self._ring_bytes(self._fmt))
        self._carry = b""  # an odd trailing byte of PCM waiting for its partner
        self._flush_req: _FlushRequest | None = None
        self._format_changed = False
        self._earcon_queue: collections.deque[str] = collections.deque()
        self._end_of_input = False
        self._first_audio_at_s: float | None = None  # arrival of the next reply's first audio
        self._reply_active = False
        self._reply_id = 0
        self._written_total = 0
        self._reply_frames_shared = 0  # the current reply's frames written (worker writes, flush reads)
        self._device_failed = False
        self._gain = GainTable(1.0)
        self._soft_muted = False
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
        # -- mixer (its own lock: set_volume may come from any thread) --
        self._mixer_lock = threading.Lock()
        self._mixer: MixerControl | None = None
        self._volume_percent = cfg.volume_percent
        self._muted = False
        # -- worker-owned --
        self._dev: PlaybackDevice | None = None
        self._dev_rate_hz = 0
        self._pending: _Chunk | None = None
        self._earcon_left: memoryview | None = None  # the cue's frames not yet written
        self._earcon_name: str | None = None  # the cue being heard (until it drained)
        self._reply_frames = 0
        self._reply_started_sent = False
        self._reply_first_audio_s = 0.0
        self._failures = 0
        self._retry_at_s = 0.0
        self._spurious_wakes = 0
        self._last_log_s = -LOG_EVERY_S

    # -- for owners ---------------------------------------------------------
    def start(self) -> None:
        self._open_mixer()
        self._apply_volume()
        super().start()

    def wake(self) -> None:
        self._waker.wake()

    def stop(self, timeout_s: float = DEFAULT_JOIN_TIMEOUT_S) -> None:
        super().stop(timeout_s)
        if not self._started:  # never ran: run() did not get to release the eventfd
            self._waker.close()

    @property
    def format(self) -> AudioFormat:
        with self._lock:
            return self._fmt

    def set_format(self, fmt: AudioFormat) -> None:
        """Play what follows in the agent's announced format; audio of another format is flushed."""
        with self._lock:
            if fmt == self._fmt:
                return
            if self._reply_active or len(self._ring) or self._earcon_left is not None:
                self._request_flush_locked(time.monotonic())  # audio in the old format is cut
            self._fmt = fmt
            self._format_changed = True
            self._carry = b""
            self._ring = RingBuffer(self._ring_bytes(fmt))
        self._waker.wake()

    def write(self, audio: bytes, received_at_s: float | None = None) -> None:
        """Queue agent audio in the current format; never blocks.

        ``received_at_s`` (``time.monotonic()`` when it came off the network)
        makes ``reply_started`` measure from arrival rather than from this call.
        """
        now = time.monotonic()
        overflow = 0
        with self._lock:
            if self._fmt.encoding == "ulaw":
                pcm = ulaw_decode(audio)
            else:
                data = self._carry + audio
                cut = len(data) - len(data) % 2
                pcm, self._carry = data[:cut], data[cut:]
            if not pcm:
                return
            if self._device_failed:
                self._stats["dropped_no_device_frames"] += len(pcm) // 2
                return
            # a reply still marked active but already flushed is over: this audio starts the next one
            starts_reply = not self._reply_active or self._flush_req is not None
            if starts_reply and self._first_audio_at_s is None:
                self._first_audio_at_s = received_at_s if received_at_s is not None else now
            self._end_of_input = False
            stored = self._ring.write(pcm)
            if stored < len(pcm):
                overflow = (len(pcm) - stored) // 2
                self._stats["overflow_frames"] += overflow
            rate_hz, reply_id = self._fmt.rate_hz, self._reply_id
        self._waker.wake()
        if overflow:
            self._log_limited(
                logging.WARNING,
                "playback ring full: %d frames of agent audio discarded (raise audio.ring_s)",
                overflow,
            )
            self._emit(PlaybackEvent("overflow", now, reply_id, rate_hz, overflow))

    def end_of_input(self) -> None:
        """No more audio for the current reply: it finishes as soon as it has been heard."""
        with self._lock:
            self._end_of_input = True
        self._waker.wake()

    @property
    def is_playing(self) -> bool:
        """True while a reply or earcon is audible or queued."""
        with self._lock:
            return bool(
                self._reply_active
                or len(self._ring)
                or self._earcon_queue
                or self._earcon_name is not None
            )

    def flush(self) -> FlushReport:
        """Stop the current reply now: clear the ring and make the worker drop ALSA's buffer."""
        now = time.monotonic()
        with self._lock:
            was_playing = bool(self._reply_active or len(self._ring))
            req = self._request_flush_locked(now)
            self._stats["flushes"] += 1
        self._waker.wake()
        return FlushReport(now, req.reply_id, req.discarded_frames, was_playing, req.reply_frames_written)

    def play_earcon(self, name: str) -> bool:
        """Queue a cue (listening, done, error); False when earcons are off."""
        if name not in EARCON_NAMES:
            raise ValueError(f"unknown earcon {name!r}; use one of {', '.join(EARCON_NAMES)}")
        if name not in self._earcons.names:
            return False
        with self._lock:
            self._earcon_queue.append(name)
        self._waker.wake()
        return True

    @property
    def volume_percent(self) -> int:
        return self._volume_percent

    @property
    def muted(self) -> bool:
        return self._muted

    def set_volume(self, percent: int) -> None:
        """Output volume 0..100 %: the mixer control when configured, software gain otherwise."""
        if not 0 <= int(percent) <= 100:
            raise ValueError(f"volume {percent} is out of range; use 0 to 100")
        self._volume_percent = int(percent)
        self._apply_volume()

    def set_muted(self, muted: bool) -> None:
        self._muted = bool(muted)
        self._apply_volume()

    @property
    def stats(self) -> dict[str, int]:
        """Counters: chunks_written, frames_written, underruns, replies, flushes, …"""
        with self._lock:
            return {**self._stats, "ring_frames": len(self._ring) // 2, "open": int(self._dev is not None)}

    # -- volume ---------------------------------------------------------------
    def _open_mixer(self) -> None:
        if not self._cfg.mixer_control:
            return
        try:
            mixer = self._backend.open_mixer(self._cfg.mixer_card, self._cfg.mixer_control)
        except AudioError as e:
            log.warning("%s; using software volume instead", e)
            self._emit(PlaybackEvent("mixer_unavailable", time.monotonic(), detail=str(e)))
            return
        with self._mixer_lock:
            self._mixer = mixer

    def _apply_volume(self) -> None:
        percent, muted = self._volume_percent, self._muted
        soft_gain = volume_to_gain(percent)
        soft_mute = muted
        with self._mixer_lock:
            if self._mixer is not None:
                try:
                    self._mixer.set_volume(percent)
                    soft_gain = 1.0
                    switched = self._mixer.set_mute(muted)  # also unmutes: always ask
                    soft_mute = muted and not switched
                except AudioError as e:
                    log.warning("%s; using software volume instead", e)
                    self._mixer.close()
                    self._mixer = None
                    self._emit(PlaybackEvent("mixer_unavailable", time.monotonic(), detail=str(e)))
        table = GainTable(soft_gain)  # built outside the lock: up to 65536 entries
        with self._lock:
            self._gain = table
            self._soft_muted = soft_mute

    # -- the thread -------------------------------------------------------------
    def run(self) -> None:
        try:
            while not self.stopping:
                self.beat()
                self._service_flush()
                if not self._ensure_device():
                    continue
                if self._pending is None:
                    self._pending = self._next_chunk()
                    if self._pending is None:
                        self._wait_for_work()
                        continue
                self._write_pending()
        finally:
            self._close_device()
            self._waker.close()
            with self._mixer_lock:
                if self._mixer is not None:
                    self._mixer.close()
                    self._mixer = None

    def _request_flush_locked(self, now: float) -> _FlushRequest:
        discarded = self._ring.clear() // 2
        self._carry = b""
        self._earcon_queue.clear()
        self._end_of_input = False
        self._first_audio_at_s = None
        if self._flush_req is not None:  # one still pending: the earlier request stays the reference
            self._flush_req.discarded_frames += discarded
            return self._flush_req
        active = self._reply_active
        self._flush_req = _FlushRequest(
            now,
            self._written_total,
            self._reply_id if active else 0,
            discarded,
            self._reply_frames_shared if active else 0,
        )
        return self._flush_req

    def _service_flush(self) -> None:
        with self._lock:
            req, self._flush_req = self._flush_req, None
        if req is None:
            return
        dropped = req.discarded_frames
        if self._pending is not None:
            dropped += self._pending.remaining // 2
            self._pending = None
        with self._lock:
            self._earcon_left = None
            self._earcon_name = None
        rate_hz = self._dev_rate_hz
        if self._dev is not None:
            try:
                dropped += self._dev.delay_frames()
                self._dev.drop()
            except AudioError as e:
                self._lost_device(e)
        done_s = time.monotonic()
        with self._lock:
            after = self._written_total - req.written_at_request
            self._reply_active = False
        self._reply_started_sent = False
        event = PlaybackEvent(
            "flushed",
            done_s,
            req.reply_id,
            rate_hz,
            after,
            (done_s - req.requested_at_s) * 1000.0,
            dropped,
        )
        log.debug("flushed reply %d: %d frames written after the request", req.reply_id, after)
        self._emit(event)

    def _ensure_device(self) -> bool:
        with self._lock:
            fmt, changed = self._fmt, self._format_changed
            self._format_changed = False
        if changed:
            self._pending = None
            with self._lock:
                self._earcon_left = None
                self._earcon_name = None
                self._reply_active = False
            self._reply_started_sent = False
            if self._dev is not None:
                self._close_device()
        if self._dev is not None:
            return True
        now = time.monotonic()
        if now < self._retry_at_s:
            self._waker.wait(self._retry_at_s - now)
            return False
        cfg = self._cfg
        try:
            dev: PlaybackDevice = self._backend.open_playback(
                cfg.playback_device, fmt.rate_hz, fmt.chunk_frames, PERIODS
            )
        except AudioError as e:
            self._open_failed(e)
            return False
        if cfg.pace_realtime:
            dev = PacedPlayback(dev)
        for name in self._earcons.names:
            self._earcons.pcm_at(name, fmt.rate_hz)  # convert the cues now, not under the lock
        if self._stats["device_errors"] or self._stats["chunks_written"]:
            self._stats["reopen_count"] += 1
        self._dev, self._dev_rate_hz = dev, fmt.rate_hz
        self._failures = 0
        with self._lock:
            self._device_failed = False
        log.info("speaker %s open at %d Hz", cfg.playback_device, fmt.rate_hz)
        self._emit(PlaybackEvent("opened", time.monotonic(), rate_hz=fmt.rate_hz, detail=cfg.playback_device))
        return True

    def _open_failed(self, error: AudioError) -> None:
        delay_s = backoff_delay_s(self._failures, FIRST_RETRY_S, self._cfg.reopen_max_s)
        self._failures += 1
        now = time.monotonic()
        self._retry_at_s = now + delay_s
        with self._lock:
            self._device_failed = True
            self._stats["device_errors"] += 1
            # audio queued for a missing speaker would come out late: discard it, counted
            self._stats["dropped_no_device_frames"] += self._ring.clear() // 2
            self._reply_active = False
            self._first_audio_at_s = None
            self._earcon_queue.clear()
            self._earcon_left = None
            self._earcon_name = None
        self._reply_started_sent = False
        if self._failures == 1 or now - self._last_log_s >= LOG_EVERY_S:
            self._last_log_s = now
            log.error("%s; retrying in %.1f s", error, delay_s)
        self._emit(PlaybackEvent("device_error", now, detail=f"{error}; retrying in {delay_s:.1f} s"))

    def _lost_device(self, error: AudioError) -> None:
        self._close_device()
        self._pending = None
        self._open_failed(error)

    def _close_device(self) -> None:
        if self._dev is not None:
            dev, self._dev = self._dev, None
            dev.close()

    def _next_chunk(self) -> _Chunk | None:
        """The next chunk to write, or None (nothing ready yet)."""
        rate_hz = self._dev_rate_hz
        chunk_bytes = 2 * round(rate_hz * 0.0625)
        now = time.monotonic()
        notes: list[PlaybackEvent] = []
        with self._lock:
            if self._flush_req is not None or self._format_changed:
                return None  # the loop drops or reopens first
            gain, mute = self._gain, self._soft_muted
            if not self._reply_active:
                if self._earcon_left is None and self._earcon_queue:
                    if self._earcon_name is not None:  # back to back: the previous one is over
                        notes.append(PlaybackEvent("earcon_finished", now, rate_hz=rate_hz, detail=self._earcon_name))
                    name = self._earcon_queue.popleft()
                    self._earcon_left = memoryview(self._earcons.pcm_at(name, rate_hz))
                    self._earcon_name = name
                    self._stats["earcons"] += 1
                    notes.append(PlaybackEvent("earcon_started", now, rate_hz=rate_hz, detail=name))
                if self._earcon_left is not None:
                    data = bytes(self._earcon_left[:chunk_bytes])
                    rest = self._earcon_left[chunk_bytes:]
                    self._earcon_left = rest if len(rest) else None
                    chunk: _Chunk | None = _Chunk(data, is_reply=False)
                elif len(self._ring) and self._prebuffered_locked(now, rate_hz):
                    if self._earcon_name is not None:  # the reply follows the cue seamlessly
                        notes.append(PlaybackEvent("earcon_finished", now, rate_hz=rate_hz, detail=self._earcon_name))
                        self._earcon_name = None
                    self._reply_active = True
                    self._reply_id += 1
                    self._stats["replies"] += 1
                    self._reply_frames = 0
                    self._reply_frames_shared = 0
                    self._reply_started_sent = False
                    self._reply_first_audio_s = self._first_audio_at_s or now
                    self._first_audio_at_s = None
                    chunk = _Chunk(self._ring.read(chunk_bytes), is_reply=True)
                else:
                    chunk = None
            elif len(self._ring):
                chunk = _Chunk(self._ring.read(chunk_bytes), is_reply=True)
            else:
                chunk = None
        for note in notes:
            self._emit(note)
        if chunk is not None and (mute or gain.gain < 1.0):
            chunk.data = bytes(len(chunk.data)) if mute else gain.apply(chunk.data)
        return chunk

    def _prebuffered_locked(self, now: float, rate_hz: int) -> bool:
        prebuffer_s = self._cfg.prebuffer_ms / 1000.0
        queued_s = len(self._ring) / 2 / rate_hz
        waited_s = now - (self._first_audio_at_s if self._first_audio_at_s is not None else now)
        return (
            queued_s >= prebuffer_s
            or waited_s >= prebuffer_s
            or self._end_of_input
            or self._ring.free < 2 * rate_hz  # nearly full: no point in waiting
        )

    def _wait_for_work(self) -> None:
        """Nothing to write now: finish a drained reply, wait out the prebuffer, or idle."""
        dev = self._dev
        assert dev is not None
        timeout_s = IDLE_WAIT_S
        with self._lock:
            reply_active = self._reply_active
            first_audio_s = self._first_audio_at_s
            ring_has_audio = len(self._ring) > 0
            earcon_name = self._earcon_name if self._earcon_left is None else None
        if earcon_name is not None and not reply_active:
            try:
                delay = dev.delay_frames()
            except AudioError as e:
                self._lost_device(e)
                return
            if delay == 0:
                with self._lock:
                    self._earcon_name = None
                self._emit(
                    PlaybackEvent("earcon_finished", time.monotonic(), rate_hz=self._dev_rate_hz, detail=earcon_name)
                )
                return
            timeout_s = delay / self._dev_rate_hz
            if ring_has_audio and first_audio_s is not None:  # a reply may be due before the cue ends
                timeout_s = min(timeout_s, first_audio_s + self._cfg.prebuffer_ms / 1000.0 - time.monotonic())
        elif reply_active:
            try:
                delay = dev.delay_frames()
            except AudioError as e:
                self._lost_device(e)
                return
            if delay == 0:
                self._finish_reply()
                return
            timeout_s = delay / self._dev_rate_hz
        elif ring_has_audio and first_audio_s is not None:
            timeout_s = max(0.0, first_audio_s + self._cfg.prebuffer_ms / 1000.0 - time.monotonic())
        self._waker.wait(max(0.0, min(timeout_s, IDLE_WAIT_S)))

    def _finish_reply(self) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._ring) or not self._reply_active:
                return  # audio arrived meanwhile: the reply goes on
            self._reply_active = False
            self._end_of_input = False
            reply_id = self._reply_id
        self._reply_started_sent = False
        self._emit(PlaybackEvent("reply_finished", now, reply_id, self._dev_rate_hz, self._reply_frames))

    def _write_pending(self) -> None:
        dev, chunk = self._dev, self._pending
        assert dev is not None and chunk is not None
        try:
            n = dev.write(chunk.data[chunk.offset :])
        except AudioError as e:
            self._lost_device(e)
            return
        if n < 0:
            # the device ran dry; pyalsaaudio has prepared it again, so rewrite the same data
            if chunk.is_reply and self._reply_frames > 0:
                with self._lock:
                    self._stats["underruns"] += 1
                self._log_limited(logging.WARNING, "playback underrun inside reply %d", self._reply_id)
                self._emit(
                    PlaybackEvent("underrun", time.monotonic(), self._reply_id, self._dev_rate_hz, self._reply_frames)
                )
            return
        if n == 0:
            self._wait_for_room(dev, chunk)
            return
        now = time.monotonic()
        chunk.offset += 2 * n
        with self._lock:
            self._written_total += n
            self._stats["frames_written"] += n
            if chunk.is_reply:
                self._reply_frames_shared += n
            if chunk.remaining == 0:
                self._stats["chunks_written"] += 1
        if chunk.remaining == 0:
            self._pending = None
        if chunk.is_reply:
            self._reply_frames += n
            if not self._reply_started_sent:
                self._reply_started_sent = True
                latency_ms = (now - self._reply_first_audio_s) * 1000.0
                self._emit(
                    PlaybackEvent("reply_started", now, self._reply_id, self._dev_rate_hz, n, latency_ms)
                )

    def _wait_for_room(self, dev: PlaybackDevice, chunk: _Chunk) -> None:
        period_s = dev.period_frames / self._dev_rate_hz
        if dev.clocked:
            ready = self._waker.wait(2 * period_s, dev.pollfds())
            try:
                spurious = bool(ready) and not dev.writable(ready)
            except AudioError as e:
                self._lost_device(e)
                return
            self._spurious_wakes = self._spurious_wakes + 1 if spurious else 0
            if self._spurious_wakes > 100:  # descriptors keep firing without room: do not spin
                self._waker.wait(0.005)
        else:
            wait_s = dev.seconds_until_room(min(chunk.remaining // 2, dev.period_frames))
            self._waker.wait(max(wait_s, 0.001))

    # -- helpers ------------------------------------------------------------
    def _ring_bytes(self, fmt: AudioFormat) -> int:
        return 2 * round(self._cfg.ring_s * fmt.rate_hz)

    def _emit(self, event: PlaybackEvent) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(event)
        except Exception:
            log.exception("playback event handler failed on %s", event.kind)

    def _log_limited(self, level: int, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last_log_s >= LOG_EVERY_S:
            self._last_log_s = now
            log.log(level, msg, *args)
        else:
            log.debug(msg, *args)
