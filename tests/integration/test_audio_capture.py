"""Capture through real ALSA ``type file`` devices: blocks are exactly the microphone's samples."""

from __future__ import annotations

import itertools
import queue
import random
import struct
import threading
import time
from pathlib import Path

import pytest

from device.core.audioevents import Block, CaptureEvent
from device.core.config import AudioConfig
from device.drivers import filedevices
from device.drivers.capture import Capture

pytestmark = pytest.mark.realtime

TIMEOUT_S = 20.0
BLOCK_BYTES = 8000


class Recorder:
    """Blocks and events from a Capture, waited for with timeouts."""

    def __init__(self) -> None:
        self.blocks: queue.Queue[Block] = queue.Queue()
        self.events: queue.Queue[CaptureEvent] = queue.Queue()
        self.handed_at_s: list[float] = []  # time.monotonic() when each block reached on_block

    def on_block(self, block: Block) -> None:
        self.handed_at_s.append(time.monotonic())
        self.blocks.put(block)

    def on_event(self, event: CaptureEvent) -> None:
        self.events.put(event)

    def take(self, n: int) -> list[Block]:
        return [self.blocks.get(timeout=TIMEOUT_S) for _ in range(n)]

    def event(self, kind: str) -> CaptureEvent:
        while True:
            e = self.events.get(timeout=TIMEOUT_S)
            if e.kind == kind:
                return e


def write_input(alsa_dir: Path, name: str, pcm: bytes, rate_hz: int = 16000, channels: int = 1) -> str:
    """A WAV as a test would record it, turned into a capture device."""
    src = alsa_dir / f"{name}.wav"
    filedevices.write_wav(src, pcm, rate_hz, channels)
    raw = alsa_dir / f"{name}.raw"
    filedevices.prepare_input(src, raw, channels=channels)
    return filedevices.capture_device(raw)


def capture(cfg: AudioConfig, rec: Recorder) -> Capture:
    cap = Capture(cfg, rec.on_block, on_event=rec.on_event)
    cap.start()
    return cap


def test_blocks_equal_the_input_samples_block_by_block(alsa_dir: Path) -> None:
    rng = random.Random(1)
    n_samples = 4000 * 6 + 1234  # six full blocks and a partial one
    speech = struct.pack(f"<{n_samples}h", *(rng.randint(-32768, 32767) for _ in range(n_samples)))
    rec = Recorder()
    cap = capture(AudioConfig(capture_device=write_input(alsa_dir, "blocks", speech)), rec)
    try:
        blocks = rec.take(20)  # past the input and past its silent tail
    finally:
        cap.stop()
    expected = speech + bytes(20 * BLOCK_BYTES - len(speech))  # then silence, for good
    for i, block in enumerate(blocks):
        assert block.seq == i
        assert len(block.pcm) == BLOCK_BYTES
        assert block.pcm == expected[i * BLOCK_BYTES : (i + 1) * BLOCK_BYTES], f"block {i} differs"
    times = [b.captured_at_s for b in blocks]
    assert times == sorted(times)
    assert cap.stats["blocks"] >= 20
    assert cap.stats["overruns"] == 0


@pytest.mark.parametrize(("mode", "expected"), [("left", 1000), ("right", -3000), ("mix", -1000)])
def test_stereo_microphone_is_picked_or_mixed(alsa_dir: Path, mode: str, expected: int) -> None:
    # a 2-mic HAT delivers only stereo: we read 4000 stereo frames and pick or mix
    stereo = struct.pack("<hh", 1000, -3000) * 12000
    device = write_input(alsa_dir, f"stereo-{mode}", stereo, 16000, 2)
    rec = Recorder()
    cfg = AudioConfig(capture_device=device, capture_channels=2, stereo_mode=mode)  # type: ignore[arg-type]
    cap = capture(cfg, rec)
    try:
        blocks = rec.take(3)
    finally:
        cap.stop()
    for block in blocks:
        assert block.pcm == struct.pack("<h", expected) * 4000, mode


def test_paced_capture_runs_at_real_time(alsa_dir: Path) -> None:
    device = write_input(alsa_dir, "paced", struct.pack("<h", 7) * 16000)
    rec = Recorder()
    cap = capture(AudioConfig(capture_device=device, pace_realtime=True), rec)
    try:
        blocks = rec.take(4)
    finally:
        cap.stop()
    # deadlines of a card at 16 kHz: 250 ms apart, and never handed over early
    steps = [b.captured_at_s - a.captured_at_s for a, b in itertools.pairwise(blocks)]
    assert steps == pytest.approx([0.25] * 3)
    handed = rec.handed_at_s[:4]
    assert all(h >= b.captured_at_s for h, b in zip(handed, blocks, strict=True)), (handed, blocks)


def test_microphone_that_appears_late_is_picked_up(alsa_dir: Path) -> None:
    raw = alsa_dir / "late-mic.raw"
    device = filedevices.capture_device(raw)
    rec = Recorder()
    cap = capture(AudioConfig(capture_device=device, reopen_max_s=0.5), rec)
    try:
        first = rec.event("device_error")
        assert "not found" in first.detail
        assert "arecord -L" in first.detail
        assert first.retry_in_s is not None
        assert 0 < first.retry_in_s <= 0.5
        assert rec.blocks.empty()
        assert cap.alive  # waiting, not crashed
        filedevices.prepare_input(_raw_of(alsa_dir, struct.pack("<h", 1234) * 4000), raw)  # plugged in
        rec.event("opened")
        block = rec.take(1)[0]
    finally:
        cap.stop()
    assert block.pcm == struct.pack("<h", 1234) * 4000
    assert block.seq == 0
    assert cap.stats["device_errors"] >= 1


def _raw_of(alsa_dir: Path, pcm: bytes) -> Path:
    src = alsa_dir / "late-src.raw"
    src.write_bytes(pcm)
    return src


def test_stop_while_waiting_for_a_missing_microphone_is_prompt(alsa_dir: Path) -> None:
    rec = Recorder()
    cfg = AudioConfig(capture_device=filedevices.capture_device(alsa_dir / "never.raw"), reopen_max_s=60)
    cap = capture(cfg, rec)
    for _ in range(2):
        rec.event("device_error")
    cap.stop(timeout_s=2.0)  # the backoff wait is wakeable: raises WorkerStuckError otherwise
    assert not cap.alive


def test_on_block_sees_the_capture_thread_by_name(alsa_dir: Path) -> None:
    device = write_input(alsa_dir, "named", bytes(8000))
    names: list[str] = []
    got = threading.Event()

    def on_block(block: Block) -> None:
        names.append(threading.current_thread().name)
        got.set()

    cap = Capture(AudioConfig(capture_device=device), on_block, name="mic")
    cap.start()
    try:
        assert got.wait(TIMEOUT_S)
    finally:
        cap.stop()
    assert names[0] == "mic"
