"""The playback worker: agent replies and earcons on the speaker, flushable at once.

What plays when is decided by :class:`device.core.playqueue.PlayQueue` (the
ring of agent audio, the cue queue, prebuffering, when a reply or cue starts
and finishes, what a flush cuts). This worker is the loop around it: it opens
the speaker, writes the queue's chunks (62.5 ms: 1000 frames at 16 kHz)
through a non-blocking PCM opened at the agent's rate, so ALSA's plug layer
does any rate conversion, drops the device's buffer on a flush, reopens a
lost device with backoff, applies volume and mute (the mixer control, or
software gain), and posts the queue's events.

``flush()`` clears the ring at once and wakes the worker, which calls
``drop()``: ALSA discards what it still holds. The worker only ever has one
chunk in flight, so at most one chunk of the old reply is written after the
request, and the next reply starts cleanly.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ParamSpec, Protocol, TypeVar

from device.core.audioevents import FlushReport, PlaybackEvent
from device.core.audioformat import AudioFormat
from device.core.config import AudioConfig
from device.core.convert import GainTable, volume_to_gain
from device.core.errors import AudioError
from device.core.playqueue import Chunk, PlayQueue
from device.core.retry import backoff_delay_s
from device.drivers.audiobackend import Backend, MixerControl, PlaybackDevice
from device.drivers.earcons import EARCON_NAMES, EarconSet, load_earcons
from device.drivers.logs import RateLimitedLog
from device.drivers.pacing import PacedPlayback
from device.drivers.waker import Waker
from device.drivers.worker import DEFAULT_JOIN_TIMEOUT_S, Worker, WorkerExited

log = logging.getLogger(__name__)

PERIODS = 4  # ALSA buffer of four chunks: 250 ms of cushion against a late wake-up
IDLE_WAIT_S = 1.0  # heartbeat while idle
FIRST_RETRY_S = 0.25
LOG_EVERY_S = 10.0

P = ParamSpec("P")
T = TypeVar("T")


class EchoTapLike(Protocol):
    """Where playback tells echo cancellation what the speaker will play (:class:`device.drivers.aec.EchoTap`).

    Called on the playback thread; it must be quick and must not raise.
    """

    def played(self, heard_at_s: float, pcm: bytes, rate_hz: int) -> None: ...
    def flushed(self, at_s: float) -> None: ...


@dataclass
class _Pending:
    """The chunk in flight: the queue's chunk and the bytes written for it (volume applied)."""

    chunk: Chunk
    data: bytes
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
        echo_tap: EchoTapLike | None = None,
    ) -> None:
        super().__init__(name, on_exit)
        if backend is None:
            from device.drivers.alsa import AlsaBackend

            backend = AlsaBackend()
        self._cfg = cfg
        self._on_event = on_event
        self._backend = backend
        self._echo_tap = echo_tap  # told every write and flush (called on this worker's thread)
        self._earcons = EarconSet(load_earcons(cfg))  # ConfigError now rather than at the first cue
        self._waker = Waker()
        # _queue_lock guards the play queue (all it holds and counts); the callers' threads and the
        # worker take it briefly, never around a device call.
        self._queue_lock = threading.Lock()
        self._queue = PlayQueue(ring_s=cfg.ring_s, prebuffer_ms=cfg.prebuffer_ms, cue_pcm=self._earcons.pcm_at)
        self._volume = _Volume(cfg, backend, self._emit)  # locks of its own
        # The worker thread's alone (stats only asks whether _dev is set).
        self._dev: PlaybackDevice | None = None
        self._pending: _Pending | None = None
        self._failures = 0  # consecutive failed opens
        self._retry_at_s = 0.0
        self._spurious_wakes = 0
        self._error_log = RateLimitedLog(log, LOG_EVERY_S)  # replaced at each outage: its first line goes out
        self._chunk_log = RateLimitedLog(log, LOG_EVERY_S)  # overflow (callers' threads), underrun (worker)

    # -- for owners ---------------------------------------------------------
    def start(self) -> None:
        self._volume.open()
        self._volume.apply()
        super().start()

    def unblock(self) -> None:
        self._waker.wake()

    def stop(self, timeout_s: float = DEFAULT_JOIN_TIMEOUT_S) -> None:
        super().stop(timeout_s)
        if not self._started:  # never ran: run() did not get to release the eventfd
            self._waker.close()

    @property
    def format(self) -> AudioFormat:
        with self._queue_lock:
            return self._queue.format

    def set_format(self, fmt: AudioFormat) -> None:
        """Play what follows in the agent's announced format; audio of another format is flushed."""
        with self._queue_lock:
            changed = self._queue.set_format(fmt, time.monotonic())
        if changed:
            self._waker.wake()

    def write(self, audio: bytes, received_at_s: float | None = None) -> int:
        """Queue agent audio in the current format; never blocks. Returns its stream position.

        ``received_at_s`` (``time.monotonic()`` when it came off the network)
        makes ``reply_started`` measure from arrival rather than from this call.
        The position (frames, :attr:`PlayQueue.stream_position`) is what the
        ``reply_chunk`` events name when this audio is handed to the device.
        """
        now = time.monotonic()
        with self._queue_lock:
            position = self._queue.stream_position
            queued = self._queue.write(audio, now, received_at_s)
            events = self._queue.take_events()
        if queued:
            self._waker.wake()
        self._post(events)
        return position

    def end_of_input(self) -> None:
        """No more audio for the current reply: it finishes as soon as it has been heard."""
        with self._queue_lock:
            self._queue.end_of_input()
        self._waker.wake()

    @property
    def is_playing(self) -> bool:
        """True while a reply or earcon is audible or queued."""
        with self._queue_lock:
            return self._queue.is_playing

    def flush(self) -> FlushReport:
        """Stop the current reply now: clear the ring and make the worker drop ALSA's buffer."""
        with self._queue_lock:
            report = self._queue.flush(time.monotonic())
        self._waker.wake()
        return report

    def play_earcon(self, name: str) -> bool:
        """Queue a cue (listening, done, error); False when earcons are off."""
        if name not in EARCON_NAMES:
            raise ValueError(f"unknown earcon {name!r}; use one of {', '.join(EARCON_NAMES)}")
        if name not in self._earcons.names:
            return False
        with self._queue_lock:
            self._queue.request_earcon(name)
        self._waker.wake()
        return True

    @property
    def volume_percent(self) -> int:
        return self._volume.percent

    @property
    def muted(self) -> bool:
        return self._volume.muted

    def set_volume(self, percent: int) -> None:
        """Output volume 0..100 %: the mixer control when configured, software gain otherwise."""
        if not 0 <= int(percent) <= 100:
            raise ValueError(f"volume {percent} is out of range; use 0 to 100")
        self._volume.percent = int(percent)
        self._volume.apply()

    def set_muted(self, muted: bool) -> None:
        self._volume.muted = bool(muted)
        self._volume.apply()

    @property
    def stats(self) -> dict[str, int]:
        """Counters: chunks_written, frames_written, underruns, replies, flushes, …"""
        with self._queue_lock:
            return {**self._queue.stats, "open": int(self._dev is not None)}

    # -- the thread -------------------------------------------------------------
    def run(self) -> None:
        try:
            while not self.stopping:
                self.beat()
                self._serve_flush()
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
            self._volume.close()

    def _serve_flush(self) -> None:
        with self._queue_lock:
            req = self._queue.start_flush()
        if req is None:
            return
        dropped = 0
        if self._pending is not None:
            dropped += self._pending.remaining // 2
            self._pending = None
        if self._dev is not None:
            try:
                dropped += self._dev.delay_frames()
                self._dev.drop()
            except AudioError as e:
                self._lost_device(e)
        if self._echo_tap is not None:
            self._echo_tap.flushed(time.monotonic())  # the speaker will not play what was dropped
        self._locked(self._queue.flush_done, req, dropped, time.monotonic())

    def _ensure_device(self) -> bool:
        with self._queue_lock:
            changed = self._queue.take_format_change()
            fmt = self._queue.format
        if changed is not None:
            self._pending = None
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
        with self._queue_lock:
            self._queue.device_opened(fmt.rate_hz)
        self._dev = dev
        self._failures = 0
        log.info("speaker %s open at %d Hz", cfg.playback_device, fmt.rate_hz)
        self._emit(PlaybackEvent("opened", time.monotonic(), rate_hz=fmt.rate_hz, detail=cfg.playback_device))
        return True

    def _open_failed(self, error: AudioError) -> None:
        delay_s = backoff_delay_s(self._failures, FIRST_RETRY_S, self._cfg.reopen_max_s)
        self._failures += 1
        now = time.monotonic()
        self._retry_at_s = now + delay_s
        with self._queue_lock:
            self._queue.device_failed()  # what was queued for the missing speaker is discarded, counted
        if self._failures == 1:
            self._error_log = RateLimitedLog(log, LOG_EVERY_S)
        self._error_log.log(logging.ERROR, "device_error", "%s; retrying in %.1f s", error, delay_s)
        self._emit(PlaybackEvent("device_error", now, detail=f"{error}; retrying in {delay_s:.1f} s"))

    def _lost_device(self, error: AudioError) -> None:
        self._close_device()
        self._pending = None
        self._open_failed(error)

    def _close_device(self) -> None:
        if self._dev is not None:
            dev, self._dev = self._dev, None
            dev.close()
            if self._echo_tap is not None:
                self._echo_tap.flushed(time.monotonic())

    def _next_chunk(self) -> _Pending | None:
        """The queue's next chunk with the volume applied, or None (nothing ready yet)."""
        chunk = self._locked(self._queue.next_chunk, time.monotonic())
        return None if chunk is None else _Pending(chunk, self._volume.scale(chunk.data))

    def _wait_for_work(self) -> None:
        """Nothing to write now: finish a drained reply or cue, wait out the prebuffer, or idle."""
        dev = self._dev
        assert dev is not None
        with self._queue_lock:
            awaits_drain = self._queue.awaits_drain
        delay: int | None = None
        if awaits_drain:
            try:
                delay = dev.delay_frames()
            except AudioError as e:
                self._lost_device(e)
                return
        due_s = self._locked(self._queue.next_due_s, time.monotonic(), delay)
        self._waker.wait(IDLE_WAIT_S if due_s is None else min(due_s, IDLE_WAIT_S))

    def _write_pending(self) -> None:
        dev, pending = self._dev, self._pending
        assert dev is not None and pending is not None
        try:
            n = dev.write(pending.data[pending.offset :])
        except AudioError as e:
            self._lost_device(e)
            return
        if n < 0:
            # the device ran dry; pyalsaaudio has prepared it again, so rewrite the same data
            self._locked(self._queue.underrun, pending.chunk, time.monotonic())
            return
        if n == 0:
            self._wait_for_room(dev, pending)
            return
        report = pending.offset == 0 and pending.chunk.is_reply and self._on_event is not None
        if report or self._echo_tap is not None:
            self._heard(dev, pending, n, report)
        pending.offset += 2 * n
        complete = pending.remaining == 0
        if complete:
            self._pending = None
        self._locked(self._queue.wrote, pending.chunk, n, complete, time.monotonic())

    def _heard(self, dev: PlaybackDevice, pending: _Pending, frames: int, report: bool) -> None:
        """When the ``frames`` just handed to the device will be heard (its delay): for the echo
        canceller's reference and, for a reply chunk's first write, the ``reply_chunk`` event."""
        now = time.monotonic()
        try:
            ahead = max(0, dev.delay_frames() - frames)  # what the device holds before these frames
        except AudioError:
            return  # the next write reports the lost device
        heard_at_s = now + ahead / dev.rate_hz
        if self._echo_tap is not None:
            self._echo_tap.played(heard_at_s, pending.data[pending.offset : pending.offset + 2 * frames], dev.rate_hz)
        if report:
            chunk = pending.chunk
            self._emit(
                PlaybackEvent(
                    "reply_chunk", heard_at_s, rate_hz=dev.rate_hz, frames=len(chunk.data) // 2,
                    position=chunk.position, latency_ms=ahead * 1000.0 / dev.rate_hz,
                )
            )

    def _wait_for_room(self, dev: PlaybackDevice, pending: _Pending) -> None:
        period_s = dev.period_frames / dev.rate_hz
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
            wait_s = dev.seconds_until_room(min(pending.remaining // 2, dev.period_frames))
            self._waker.wait(max(wait_s, 0.001))

    # -- helpers ------------------------------------------------------------
    def _locked(self, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``call`` (a method of the queue) under the lock; then the events it produced are posted."""
        with self._queue_lock:
            result = call(*args, **kwargs)
            events = self._queue.take_events()
        self._post(events)
        return result

    def _post(self, events: list[PlaybackEvent]) -> None:
        for event in events:
            if event.kind == "overflow":
                self._chunk_log.warning(
                    "overflow",
                    "playback ring full: %d frames of agent audio discarded (raise audio.ring_s)",
                    event.frames,
                )
            elif event.kind == "underrun":
                self._chunk_log.warning("underrun", "playback underrun inside reply %d", event.reply_id)
            elif event.kind == "flushed":
                log.debug("flushed reply %d: %d frames written after the request", event.reply_id, event.frames)
            self._emit(event)

    def _emit(self, event: PlaybackEvent) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(event)
        except Exception:
            log.exception("playback event handler failed on %s", event.kind)


class _Volume:
    """Output volume and mute: the mixer control when configured and working, software gain otherwise."""

    def __init__(self, cfg: AudioConfig, backend: Backend, emit: Callable[[PlaybackEvent], None]) -> None:
        self._cfg = cfg
        self._backend = backend
        self._emit = emit
        self.percent = cfg.volume_percent  # the last wish of set_volume / set_muted (any thread)
        self.muted = False
        self._mixer_lock = threading.Lock()  # guards _mixer: set_volume and set_muted may come from any thread
        self._mixer: MixerControl | None = None
        self._soft_lock = threading.Lock()  # guards the software gain: set on any thread, used by the worker
        self._gain = GainTable(1.0)
        self._soft_muted = False

    def open(self) -> None:
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

    def apply(self) -> None:
        """Set the mixer to ``percent`` and ``muted``, or the software gain where the mixer cannot."""
        percent, muted = self.percent, self.muted
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
        with self._soft_lock:
            self._gain = table
            self._soft_muted = soft_mute

    def scale(self, pcm: bytes) -> bytes:
        """``pcm`` with the software gain or mute applied (unchanged when the mixer does the volume)."""
        with self._soft_lock:
            gain, mute = self._gain, self._soft_muted
        return bytes(len(pcm)) if mute else gain.apply(pcm)

    def close(self) -> None:
        with self._mixer_lock:
            if self._mixer is not None:
                self._mixer.close()
                self._mixer = None
