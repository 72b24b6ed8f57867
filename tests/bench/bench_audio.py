"""Benchmark of the audio engine over real ALSA ``type file`` devices, paced in real time.

Figures:

- interruption → last old sample written: ``flush()`` called mid-reply →
  the playback worker has ``drop()``-ed ALSA's buffer, after which no old
  sample can be written or heard; plus how much old audio was written after
  the request (bound: one chunk = 62.5 ms);
- agent audio received → first sample written: ``write(…, received_at_s)``
  → ``reply_started``, with the reply arriving at once or streamed in 100 ms
  pieces at twice real time, for prebuffer 0 and 125 ms;
- block captured → handed over: the block's capture time → ``on_block``;
- CPU seconds per minute of full-duplex audio (capture + a reply playing
  through ALSA's plug layer at the agent's rate, software volume at 80 %),
  per process and per worker thread; peak RSS of the process.

Run: ``.venv/bin/python tests/bench/bench_audio.py [--duration-s 20] [--flushes 50]``
or ``.venv/bin/python -m pytest tests/bench/bench_audio.py -s``.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import resource
import sys
import tempfile
import threading
import time
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from device.core.audioevents import Block, PlaybackEvent  # noqa: E402
from device.core.audioformat import AudioFormat, parse_format  # noqa: E402
from device.core.config import AudioConfig  # noqa: E402
from device.core.convert import ulaw_decode  # noqa: E402
from device.drivers import filedevices  # noqa: E402
from device.drivers.capture import Capture  # noqa: E402
from device.drivers.playback import Playback  # noqa: E402
from tests.support import Collector  # noqa: E402

TIMEOUT_S = 30.0


class Events(Collector[PlaybackEvent]):
    def next(self, kind: str, after: int) -> PlaybackEvent:
        """The first ``kind`` event at index ≥ ``after``."""
        return self.wait_first(lambda e: e.kind == kind, TIMEOUT_S, after, what=f"a {kind} event")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def tone(rate_hz: int, seconds: float, fmt: AudioFormat | None = None) -> bytes:
    """A 320 Hz-ish sawtooth (or μ-law bytes), built without big temporaries."""
    n = int(rate_hz * seconds)
    if fmt is not None and fmt.encoding == "ulaw":
        cycle = bytes(0x20 + i % 64 for i in range(50))
        return (cycle * (n // len(cycle) + 1))[:n]
    period = max(2, rate_hz // 320)
    cycle = array("h", (int(6000 * (i / period - 0.5)) for i in range(period))).tobytes()
    return (cycle * (n // period + 1))[: 2 * n]


@contextmanager
def running(worker: Capture | Playback) -> Iterator[None]:
    worker.start()
    try:
        yield
    finally:
        worker.stop()


def bench_flush(work: Path, flushes: int) -> list[str]:
    out = work / "flush.raw"
    cfg = AudioConfig(playback_device=filedevices.playback_device(out), pace_realtime=True)
    events = Events()
    pb = Playback(cfg, events)
    rng = random.Random(7)
    reply = tone(16000, 20.0)
    latencies, after_ms = [], []
    with running(pb):
        mark = len(events)
        pb.write(reply)
        for _ in range(flushes):
            events.next("reply_started", mark)
            threading.Event().wait(rng.uniform(0.08, 0.3))  # somewhere inside the reply
            mark = len(events)
            pb.flush()
            flushed = events.next("flushed", mark)
            assert flushed.latency_ms is not None
            latencies.append(flushed.latency_ms)
            after_ms.append(flushed.ms)
            mark = len(events)
            pb.write(reply)  # the next reply
    return [
        f"| interruption → last old sample written (flush → drop done) | "
        f"{pct(latencies, 50):.2f} ms | {pct(latencies, 99):.2f} ms | {flushes} flushes |",
        f"| old audio written after the flush request | {pct(after_ms, 50):.1f} ms | "
        f"{pct(after_ms, 99):.1f} ms | max {max(after_ms):.1f} ms (bound 62.5) |",
    ]


def bench_first_sample(work: Path, replies: int) -> list[str]:
    rows = []
    for prebuffer_ms in (0, 125):
        for streamed in (False, True):
            cfg = AudioConfig(
                playback_device=filedevices.playback_device(work / "first.raw"),
                pace_realtime=True,
                prebuffer_ms=prebuffer_ms,
            )
            events = Events()
            pb = Playback(cfg, events)
            piece = tone(16000, 0.1)
            latencies = []
            with running(pb):
                for _ in range(replies):
                    mark = len(events)
                    if streamed:  # 100 ms pieces every 50 ms: twice real time, as TTS streams
                        for _ in range(6):
                            pb.write(piece, time.monotonic())
                            threading.Event().wait(0.05)
                    else:
                        pb.write(piece * 10, time.monotonic())
                    started = events.next("reply_started", mark)
                    assert started.latency_ms is not None
                    latencies.append(started.latency_ms)
                    mark = len(events)
                    pb.flush()
                    events.next("flushed", mark)
            arrival = "streamed 100 ms pieces at 2× real time" if streamed else "whole reply at once"
            rows.append(
                f"| agent audio received → first sample written, prebuffer {prebuffer_ms} ms, {arrival} | "
                f"{pct(latencies, 50):.2f} ms | {pct(latencies, 99):.2f} ms | {replies} replies |"
            )
    return rows


def thread_cpu_s(name: str) -> float:
    """CPU time of a live thread of this process, by name."""
    for t in threading.enumerate():
        if t.name == name and t.ident is not None:
            return time.clock_gettime(time.pthread_getcpuclockid(t.ident))
    return float("nan")


def bench_duplex(work: Path, duration_s: float, fmt_name: str, volume_percent: int = 80) -> tuple[str, list[float]]:
    fmt = parse_format(fmt_name)
    src = work / "mic.raw"
    (work / "mic-src.raw").write_bytes(tone(16000, duration_s + 5))
    filedevices.prepare_input(work / "mic-src.raw", src)
    cfg = AudioConfig(
        capture_device=filedevices.capture_device(src),
        playback_device=filedevices.playback_device(work / "duplex.raw", fixed_16k=True),
        pace_realtime=True,
        volume_percent=volume_percent,
    )
    handover_ms: list[float] = []

    def on_block(block: Block) -> None:
        handover_ms.append((time.monotonic() - block.captured_at_s) * 1000.0)

    events = Events()
    cap = Capture(cfg, on_block)
    pb = Playback(cfg, events)
    reply = tone(fmt.rate_hz, duration_s + 2, fmt)
    with running(cap), running(pb):
        pb.set_format(fmt)
        mark = len(events)
        pb.write(reply)
        events.next("reply_started", mark)
        handover_ms.clear()
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        c0, p0 = thread_cpu_s("audio-capture"), thread_cpu_s("audio-playback")
        threading.Event().wait(duration_s)
        r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        c1, p1 = thread_cpu_s("audio-capture"), thread_cpu_s("audio-playback")
    per_min = 60.0 / (t1 - t0)
    cpu = (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) * per_min
    stats = pb.stats
    row = (
        f"| {fmt_name}, volume {volume_percent} % | {cpu:.2f} s | {(c1 - c0) * per_min:.2f} s | "
        f"{(p1 - p0) * per_min:.2f} s | {stats['underruns']} | {cap.stats['overruns']} |"
    )
    return row, handover_ms


def bench_ulaw_decode() -> str:
    minute = bytes(range(256)) * (8000 * 60 // 256)
    t0 = time.process_time()
    for _ in range(10):
        ulaw_decode(minute)
    ms = (time.process_time() - t0) * 100.0
    return f"μ-law → S16 in Python (two bytes.translate passes): {ms:.2f} ms CPU per minute of 8 kHz audio"


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_benchmark(work: Path, duration_s: float, flushes: int) -> str:
    rss_start_mb = rss_mb()
    filedevices.install(work / "alsa")
    lines = [
        f"Audio engine benchmark — {platform.node()}, {os.cpu_count()} CPU(s), Python {platform.python_version()}, "
        f"ALSA type-file devices paced in real time",
        "",
        "| measure | p50 | p99 | n |",
        "|---|---|---|---|",
    ]
    lines += bench_flush(work, flushes)
    lines += bench_first_sample(work, max(5, flushes // 5))
    duplex_rows, handovers = [], []
    runs = (("pcm_16000", 80), ("pcm_16000", 100), ("pcm_22050", 80), ("pcm_44100", 80), ("ulaw_8000", 80))
    for fmt_name, volume in runs:
        row, handover = bench_duplex(work, duration_s, fmt_name, volume)
        duplex_rows.append(row)
        handovers += handover
    lines.append(
        f"| block captured → handed over (on_block) | {pct(handovers, 50):.2f} ms | "
        f"{pct(handovers, 99):.2f} ms | {len(handovers)} blocks |"
    )
    lines += [
        "",
        f"Full duplex, {duration_s:.0f} s per row: capture 16 kHz mono + a reply played through plug "
        "(→ S16 16 kHz file); volume below 100 % is software gain. CPU seconds per minute of audio:",
        "",
        "| agent format | process | capture thread | playback thread | underruns | overruns |",
        "|---|---|---|---|---|---|",
        *duplex_rows,
        "",
        bench_ulaw_decode(),
        f"RSS after imports: {rss_start_mb:.1f} MB; peak RSS of the process (incl. the bench's "
        f"test audio): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f} MB",
    ]
    return "\n".join(lines)


@pytest.mark.bench
def test_audio_benchmark(tmp_path: Path) -> None:
    old = os.environ.get("ALSA_CONFIG_PATH")
    try:
        duration_s = float(os.environ.get("BENCH_AUDIO_DURATION_S", "10"))
        print("\n" + run_benchmark(tmp_path, duration_s, int(os.environ.get("BENCH_AUDIO_FLUSHES", "30"))))
    finally:
        if old is None:
            os.environ.pop("ALSA_CONFIG_PATH", None)
        else:
            os.environ["ALSA_CONFIG_PATH"] = old


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration-s", type=float, default=20.0, help="full-duplex run per agent format")
    parser.add_argument("--flushes", type=int, default=50, help="interruptions to measure")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-audio-") as work:
        print(run_benchmark(Path(work), args.duration_s, args.flushes))
    return 0


if __name__ == "__main__":
    sys.exit(main())


