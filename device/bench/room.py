"""An echoing room on the clocked card: the microphone hears the speaker, as in a real kiosk.

The clocked card's ``speaker`` and ``room`` sinks are separate: the microphone
(the room's monitor) hears only what is said into the room. :class:`EchoRoom`
joins them the way a small loudspeaker in a box does:

    speaker.monitor (16 kHz) → a small speaker's soft clipping (tanh(1.6x)/1.6)
    → the room's response (a bulk delay, the direct path, an early reflection, a decaying
    tail) at ``echo_db`` under the speaker → a noise floor → the room sink

so what the microphone hears is the user's voice (``say_in_room``) plus a
delayed, non-linear, reverberant copy of what the device played.

A real room's delay does not move. Two sound-server streams chained through a
pipe do: a stall of the process between them (a loaded machine) adds its
length to the echo's delay for good. So the room runs as a process of its own
(at real-time priority where it may) on ALSA's pulse plugin, and keeps time:
each sample from the monitor is placed on its sink's clock, and its echo is
written so that it leaves the room sink ``delay_ms`` later -- late input is
dropped, missing input is silence -- whatever the streams' buffering does.
Needs numpy (the bench runs with the aec or wake extra, which bring it).

Run by :class:`EchoRoom`: ``python -m device.bench.room SERVER [options]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any

from device.bench.clockedcard import ROOM_RATE_HZ, ClockedCard, _stop_process
from device.core.errors import AudioError, UnavailableError

if TYPE_CHECKING:
    import numpy as np

BLOCK = 160  # 10 ms at 16 kHz
OUT_AHEAD = 4 * BLOCK  # what the room keeps queued in its output stream (40 ms)
TOLERANCE = 2 * BLOCK  # how far the echo may be off its schedule before the room resyncs (20 ms)
READY = "room ready"
START_TIMEOUT_S = 10.0


def _numpy() -> Any:
    try:
        import numpy
    except ImportError as e:
        raise UnavailableError("the echoing room needs numpy: pip install numpy (the aec extra brings it)") from e
    return numpy


def room_response(delay_ms: float, echo_db: float, tail_s: float = 0.3, seed: int = 7) -> np.ndarray:
    """The room's impulse response at 16 kHz after the bulk delay: direct path, a reflection, a decaying tail.

    Scaled so that a sustained signal comes back ``echo_db`` dB (negative) under what was played.
    The bulk delay itself is the room's schedule (:class:`_Room`), not taps.
    """
    np = _numpy()
    rng = np.random.default_rng(seed)
    n_tail = round(tail_s * ROOM_RATE_HZ)
    ir = np.zeros(n_tail)
    ir[0] = 1.0
    ir[round(0.007 * ROOM_RATE_HZ)] += 0.45  # a wall 1.2 m away
    t = np.arange(n_tail) / ROOM_RATE_HZ
    ir += 0.12 * rng.standard_normal(n_tail) * np.exp(-t * 13.8 / tail_s)  # about -60 dB at tail_s
    ir *= 10 ** (echo_db / 20) / np.sqrt(np.sum(ir**2))
    return ir


class _Room:
    """The room's signal path (numpy), 10 ms at a time."""

    def __init__(self, echo_db: float, noise_dbfs: float, seed: int) -> None:
        np = self.np = _numpy()
        self._ir = room_response(0.0, echo_db, seed=seed)
        self._n_fft = 1 << (len(self._ir) + BLOCK - 1).bit_length()
        self._h = np.fft.rfft(self._ir, self._n_fft)
        self._history = np.zeros(len(self._ir) - 1)
        self._rng = np.random.default_rng(seed + 1)
        self._noise_rms = 32768.0 * 10 ** (noise_dbfs / 20)

    def process(self, block: bytes) -> bytes:
        np = self.np
        x = np.frombuffer(block, dtype="<i2").astype(np.float64) / 32768.0
        x = np.tanh(1.6 * x) / 1.6  # a small speaker driven hard
        buf = np.concatenate((self._history, x))
        y = np.fft.irfft(np.fft.rfft(buf, self._n_fft) * self._h, self._n_fft)[len(self._history): len(buf)]
        self._history = buf[len(x):]
        y = y * 32768.0 + self._rng.standard_normal(len(y)) * self._noise_rms
        return bytes(np.clip(np.round(y), -32768, 32767).astype("<i2").tobytes())

    def noise(self, n: int) -> bytes:
        np = self.np
        y = self._rng.standard_normal(n) * self._noise_rms
        return bytes(np.clip(np.round(y), -32768, 32767).astype("<i2").tobytes())


def run_room(server: str, delay_ms: float, echo_db: float, noise_dbfs: float, seed: int,
             stop: threading.Event) -> None:
    """The room's loop (in its own process): until ``stop``."""
    from device.drivers.alsa import AlsaBackend
    from device.drivers.filedevices import pulse_device

    room = _Room(echo_db, noise_dbfs, seed)
    backend = AlsaBackend()
    mic = backend.open_capture(pulse_device(server, "speaker.monitor"), ROOM_RATE_HZ, 1, BLOCK, 16)
    out = backend.open_playback(pulse_device(server, "room"), ROOM_RATE_HZ, BLOCK, 16)
    print(READY, flush=True)
    delay = round(delay_ms * ROOM_RATE_HZ / 1000)
    clock_start_s: float | None = None  # monotonic time of the monitor's sample 0 (its sink's clock)
    read = 0  # monitor samples read
    pending = bytearray()  # monitor samples not yet through the room
    queue = bytearray()  # the room's output for the last monitor samples processed
    try:
        while not stop.is_set():
            data = mic.read()
            now = time.monotonic()
            if data:
                pending += data
                read += len(data) // 2
                start = now - read / ROOM_RATE_HZ  # as the speaker recorder places its samples
                clock_start_s = start if clock_start_s is None else min(clock_start_s, start)
            while len(pending) >= 2 * BLOCK:
                queue += room.process(bytes(pending[: 2 * BLOCK]))
                del pending[: 2 * BLOCK]
            ahead = out.delay_frames()
            if clock_start_s is None or ahead >= OUT_AHEAD:
                time.sleep(0.002)
                continue
            # The monitor sample whose echo the next output sample must be: it is heard `delay` later.
            want = round((now + ahead / ROOM_RATE_HZ - clock_start_s) * ROOM_RATE_HZ) - delay
            q_start = read - len(pending) // 2 - len(queue) // 2  # the monitor sample queue[0] came from
            # Within TOLERANCE the stream just flows: the jitter of `want` (scheduling, the streams'
            # reports) is not the room's, and every drop or gap would move the echo like a wall moving.
            if q_start < want - TOLERANCE:  # late (the process or a stream stalled): its moment has passed
                drop = min(len(queue) // 2, want - q_start)
                del queue[: 2 * drop]
                q_start += drop
            if queue and q_start <= want + TOLERANCE:
                n = min(BLOCK, len(queue) // 2)
                chunk = bytes(queue[: 2 * n])
                del queue[: 2 * n]
            else:  # nothing for this moment yet: the room's noise
                n = BLOCK if not queue else min(BLOCK, q_start - want)
                chunk = room.noise(n)
            out.write(chunk)
    finally:
        out.drop()
        out.close()
        mic.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m device.bench.room", description=__doc__)
    p.add_argument("server")
    p.add_argument("--delay-ms", type=float, default=120.0)
    p.add_argument("--echo-db", type=float, default=-6.0)
    p.add_argument("--noise-dbfs", type=float, default=-80.0)
    p.add_argument("--seed", type=int, default=7)
    a = p.parse_args(argv)
    with contextlib.suppress(OSError, AttributeError):  # real-time priority where allowed (root, CAP_SYS_NICE)
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    run_room(a.server, a.delay_ms, a.echo_db, a.noise_dbfs, a.seed, stop)
    return 0


class EchoRoom:
    """Feeds the speaker, through a room, back into the microphone (see the module doc)."""

    def __init__(self, card: ClockedCard, *, delay_ms: float = 120.0, echo_db: float = -6.0,
                 noise_dbfs: float = -80.0, seed: int = 7) -> None:
        _numpy()
        self.delay_ms, self.echo_db, self.noise_dbfs = delay_ms, echo_db, noise_dbfs
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "device.bench.room", card.server, f"--delay-ms={delay_ms}",
             f"--echo-db={echo_db}", f"--noise-dbfs={noise_dbfs}", f"--seed={seed}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        )
        assert self._proc.stdout is not None
        ready = threading.Event()

        def wait_ready() -> None:
            assert self._proc.stdout is not None
            if self._proc.stdout.readline().strip() == READY:
                ready.set()

        waiter = threading.Thread(target=wait_ready, name="bench-room-start")
        waiter.start()
        ok = ready.wait(START_TIMEOUT_S)
        if not ok:
            self.stop()
            waiter.join(START_TIMEOUT_S)
            raise AudioError(f"the echo room did not start: {self._stderr_tail()}")
        waiter.join()

    def _stderr_tail(self) -> str:
        if self._proc.stderr is None or self._proc.poll() is None:
            return "(still starting)"
        return " | ".join(self._proc.stderr.read().splitlines()[-3:])

    def stop(self) -> None:
        """Stop the room process (idempotent)."""
        _stop_process(self._proc, "echo room")  # type: ignore[arg-type]
        for f in (self._proc.stdout, self._proc.stderr):
            if f is not None:
                f.close()

    def __enter__(self) -> EchoRoom:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


__all__ = ["EchoRoom", "room_response"]

if __name__ == "__main__":
    sys.exit(main())
