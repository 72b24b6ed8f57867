"""The capture worker: the microphone as a stream of 4000-frame blocks.

It owns the capture PCM. Each block is exactly 4000 frames (250 ms) of S16_LE
mono 16 kHz, handed to ``on_block`` from this thread (the callee must not
block: it queues). Overruns are recovered and counted. A microphone that is
missing at start or vanishes mid-run is reopened with capped, jittered
backoff; every failure is reported through ``on_event`` so the controller can
show an error state. The worker never exits because of the device.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from device.core.audioevents import Block, CaptureEvent
from device.core.audioformat import CAPTURE_BLOCK_FRAMES, CAPTURE_RATE_HZ
from device.core.config import AudioConfig
from device.core.convert import to_mono
from device.core.errors import AudioError
from device.core.retry import backoff_delay_s
from device.drivers.audiobackend import Backend, CaptureDevice
from device.drivers.logs import RateLimitedLog
from device.drivers.pacing import BlockPacer
from device.drivers.waker import Waker
from device.drivers.worker import DEFAULT_JOIN_TIMEOUT_S, Worker, WorkerExited

log = logging.getLogger(__name__)

BLOCK_S = CAPTURE_BLOCK_FRAMES / CAPTURE_RATE_HZ
PERIODS = 4  # ALSA buffer: 4 blocks = 1 s before an overrun
STALL_S = 2.0  # a running stream silent this long is treated as gone
# The first period after opening may take a period plus the whole buffer (ALSA's pulse plugin
# over a sound server: ~1.9 s at 4000-frame periods), so a start gets that and the margin on top.
FIRST_DATA_S = BLOCK_S * (1 + PERIODS) + STALL_S
FIRST_RETRY_S = 0.25
LOG_EVERY_S = 10.0


def stall_deadline_s(opened_at_s: float, last_data_s: float | None) -> float:
    """When a silent microphone counts as lost: a stall of a running stream, not a slow start."""
    if last_data_s is None:
        return opened_at_s + FIRST_DATA_S
    return last_data_s + STALL_S


class Capture(Worker):
    """Reads blocks from ``cfg.capture_device`` until stopped."""

    def __init__(
        self,
        cfg: AudioConfig,
        on_block: Callable[[Block], None],
        on_exit: Callable[[WorkerExited], None] | None = None,
        on_event: Callable[[CaptureEvent], None] | None = None,
        *,
        backend: Backend | None = None,
        name: str = "audio-capture",
    ) -> None:
        super().__init__(name, on_exit)
        if backend is None:
            from device.drivers.alsa import AlsaBackend

            backend = AlsaBackend()
        self._cfg = cfg
        self._on_block = on_block
        self._on_event = on_event
        self._backend = backend
        self._channels = cfg.capture_channels
        self._block_bytes = CAPTURE_BLOCK_FRAMES * self._channels * 2
        self._waker = Waker()
        self._dev: CaptureDevice | None = None
        self._buf = bytearray()
        self._opened_at_s = 0.0
        self._last_data_s: float | None = None  # None until the open stream delivered its first frames
        self._has_clock = False  # the open device made us wait for frames: it is not paced
        self._pacer = BlockPacer(BLOCK_S)
        self._seq = 0
        self._failures = 0  # consecutive failures without a block in between
        self._error_log = RateLimitedLog(log, LOG_EVERY_S)  # replaced at each outage: its first line goes out
        self._overrun_log = RateLimitedLog(log, LOG_EVERY_S)
        self._stats = {"blocks": 0, "overruns": 0, "reopen_count": 0, "device_errors": 0}
        self._settled = threading.Event()  # the first block was handed on, or the microphone failed

    # -- for owners -----------------------------------------------------
    @property
    def stats(self) -> dict[str, int]:
        """Counters: blocks, overruns, reopen_count, device_errors, open (0/1)."""
        return {**self._stats, "open": int(self._dev is not None)}

    def wait_settled(self, timeout_s: float) -> bool:
        """Until the microphone has delivered its first block or failed (True), or ``timeout_s`` passed.

        Through a sound server the first block may come ~2 s after the open: until then the
        device cannot hear.
        """
        return self._settled.wait(timeout_s)

    def unblock(self) -> None:
        self._waker.wake()

    def stop(self, timeout_s: float = DEFAULT_JOIN_TIMEOUT_S) -> None:
        super().stop(timeout_s)
        if not self._started:  # never ran: run() did not get to release the eventfd
            self._waker.close()

    # -- the thread -----------------------------------------------------
    def run(self) -> None:
        try:
            while not self.stopping:
                self.beat()
                if self._dev is None and not self._open():
                    continue
                try:
                    block = self._next_block()
                except AudioError as e:
                    self._device_failed(e, lost=True)
                    continue
                if block is not None:
                    self._failures = 0
                    self._stats["blocks"] += 1
                    self._on_block(block)
                    self._settled.set()
        finally:
            self._settled.set()  # nobody waits for a worker that ended
            self._close()
            self._waker.close()

    def _open(self) -> bool:
        cfg = self._cfg
        try:
            self._dev = self._backend.open_capture(
                cfg.capture_device, CAPTURE_RATE_HZ, self._channels, CAPTURE_BLOCK_FRAMES, PERIODS
            )
        except AudioError as e:
            self._device_failed(e, lost=False)
            return False
        if self._stats["blocks"] or self._stats["device_errors"]:
            self._stats["reopen_count"] += 1
        self._buf.clear()
        self._opened_at_s = time.monotonic()
        self._last_data_s = None
        self._has_clock = False
        self._pacer.start(self._opened_at_s)
        if cfg.pace_realtime and not self._probe_clockless():
            self._has_clock = True
            log.info("microphone %s has its own clock: not pacing it (audio.pace_realtime)", cfg.capture_device)
        log.info("microphone %s open (%d channel(s))", cfg.capture_device, self._channels)
        self._emit(CaptureEvent("opened", time.monotonic(), cfg.capture_device))
        return True

    def _probe_clockless(self) -> bool:
        """Read at once after the open: a clockless file device has a whole block ready, a card or a
        sound server has not started yet. Pacing a clocked device would stamp its blocks with the
        pacer's times, not the audio's (through a sound server the stream starts up to ~1.7 s late),
        and the gate would match the button against the wrong audio."""
        assert self._dev is not None
        try:
            data = self._dev.read()
        except AudioError:
            return True  # the read loop meets the error again and reports it
        if data:
            self._buf += data
        return data is not None and len(data) >= self._block_bytes

    def _device_failed(self, error: AudioError, lost: bool) -> None:
        self._close()
        self._stats["device_errors"] += 1
        delay_s = backoff_delay_s(self._failures, FIRST_RETRY_S, self._cfg.reopen_max_s)
        self._failures += 1
        now = time.monotonic()
        if self._failures == 1:
            self._error_log = RateLimitedLog(log, LOG_EVERY_S)
        lost_text = "lost " if lost else ""
        self._error_log.log(logging.ERROR, "device_error", "%s%s; retrying in %.1f s", lost_text, error, delay_s)
        self._emit(
            CaptureEvent(
                "device_error", now, self._cfg.capture_device, str(error), delay_s, self._failures
            )
        )
        self._settled.set()  # the failure is reported (the owner shows it): no use waiting for audio
        self.wait(delay_s)

    def _next_block(self) -> Block | None:
        """Collect one block; None when stopping."""
        dev = self._dev
        assert dev is not None
        idle_polls = 0
        while True:
            paced = self._cfg.pace_realtime and not self._has_clock
            if self.stopping:
                return None
            if paced:
                # a clockless device has every frame at once: hand them out at the nominal rate
                wait_s = self._pacer.next_deadline_s - time.monotonic()
                if wait_s > 0:
                    self._waker.wait(wait_s)
                    continue
            if len(self._buf) >= self._block_bytes:
                break
            data = dev.read()
            if data is None:
                self._overrun()
                continue
            if data:
                self._buf += data
                self._last_data_s = time.monotonic()
                idle_polls = 0
                continue
            if paced:
                # A clockless device always has frames; this one made us wait, so it keeps time
                # itself after all: pacing it as well would starve it.
                self._has_clock = True
                log.info("microphone %s has its own clock: not pacing it (audio.pace_realtime)", dev.device)
                continue
            # checked after a read that found nothing, so a wait that ends at the deadline reads once more
            deadline_s = stall_deadline_s(self._opened_at_s, self._last_data_s)
            if time.monotonic() > deadline_s:
                if self._last_data_s is None:
                    raise AudioError(
                        f"microphone {dev.device!r} delivered no audio within {FIRST_DATA_S:.2f} s of "
                        f"opening; check that it is not muted or held by another program (`arecord -L`)"
                    )
                raise AudioError(f"microphone {dev.device!r} delivered no audio for {STALL_S:.0f} s")
            ready = self._waker.wait(max(0.0, deadline_s - time.monotonic()) + 0.001, dev.pollfds())
            if ready and not dev.readable(ready):
                idle_polls += 1
                if idle_polls > 100:  # descriptors keep firing without data: do not spin
                    self._waker.wait(0.01)
        if self._cfg.pace_realtime and not self._has_clock:
            captured_at_s = self._pacer.next_deadline_s
            self._pacer.advance()
        else:
            captured_at_s = time.monotonic()
        raw = bytes(self._buf[: self._block_bytes])
        del self._buf[: self._block_bytes]
        pcm = to_mono(raw, self._channels, self._cfg.stereo_mode)
        block = Block(pcm, self._seq, captured_at_s)
        self._seq += 1
        return block

    def _overrun(self) -> None:
        self._stats["overruns"] += 1
        self._overrun_log.warning(
            "overrun",
            "microphone overrun (%d so far): audio was lost because this thread fell behind",
            self._stats["overruns"],
        )
        self._emit(CaptureEvent("overrun", time.monotonic(), self._cfg.capture_device))

    def _close(self) -> None:
        if self._dev is not None:
            dev, self._dev = self._dev, None
            dev.close()

    def _emit(self, event: CaptureEvent) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(event)
        except Exception:
            log.exception("capture event handler failed on %s", event.kind)
