"""The clocked card itself: the speaker's monitor hears what is played, the microphone hears the room."""

from __future__ import annotations

import queue
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from device.bench.clockedcard import ClockedCard
from device.core.audioevents import Block, CaptureEvent
from device.core.config import AudioConfig
from device.drivers.capture import Capture
from tests.integration.audiorig import loud_samples, sound_spans
from tests.support import sine

pytestmark = pytest.mark.realtime

TIMEOUT_S = 20.0


def test_the_speaker_recording_hears_what_is_played_on_the_monotonic_clock(clocked_card: ClockedCard) -> None:
    pcm = sine(440, 16000, 1.0)
    with clocked_card.record_speaker() as rec:
        raw = clocked_card.directory / "tone.raw"
        raw.write_bytes(pcm)
        before_s = time.monotonic()
        subprocess.run(["aplay", "-q", "-t", "raw", "-f", "S16_LE", "-r", "16000", "-c", "1",
                        "-D", clocked_card.speaker_device, str(raw)], check=True, timeout=TIMEOUT_S)
        after_s = time.monotonic()
        rec.stop()
        loud = loud_samples(rec.pcm)
    assert loud, "nothing was heard"
    heard_s = (loud[-1] - loud[0]) / rec.rate_hz
    assert heard_s == pytest.approx(1.0, abs=0.02)  # all of it, played at the card's rate
    first_heard_s = rec.time_of(loud[0])
    assert before_s - 0.05 <= first_heard_s <= after_s  # placed on this process's monotonic clock


def test_the_microphone_hears_the_room(clocked_card: ClockedCard) -> None:
    blocks: queue.Queue[Block] = queue.Queue()
    events: queue.Queue[CaptureEvent] = queue.Queue()
    cap = Capture(AudioConfig(capture_device=clocked_card.microphone_device), blocks.put, on_event=events.put)
    cap.start()
    try:
        first = blocks.get(timeout=TIMEOUT_S)
        player = clocked_card.play_into_room(sine(1000, 16000, 1.0))
        assert player.wait(TIMEOUT_S) == 0
        got = [first]
        while len(sound_spans(b"".join(b.pcm for b in got), 16000)) == 0 or got[-1].pcm.count(0) < len(got[-1].pcm):
            got.append(blocks.get(timeout=TIMEOUT_S))  # until the tone was heard and the room is quiet again
    finally:
        cap.stop()
    assert [b.seq for b in got] == list(range(len(got)))
    room = clocked_card.room
    assert room is not None
    said = [(b - a) / 16000 for a, b in sound_spans(room.pcm, 16000)]
    heard = [(b - a) / 16000 for a, b in sound_spans(b"".join(b.pcm for b in got), 16000)]
    # what the room carried (a pacat starved on a loaded machine may leave a gap in the room itself)
    assert sum(said) == pytest.approx(1.0, abs=0.02)
    assert heard == pytest.approx(said, abs=0.002), (heard, said)  # the microphone lost nothing of it


def test_capture_through_the_sound_server_starts_without_a_lost_microphone(alsa_dir: Path) -> None:
    """A fresh sound server without a low-latency client on the room delivers the pulse plugin's first
    4000-frame period after ~1.9 s (measured here: 1.95 s): a slow start, never 'no audio for 2 s',
    which failed whenever the machine added 50 ms (one run in two on a loaded machine)."""
    for _ in range(3):
        with tempfile.TemporaryDirectory(prefix="va-card-") as directory:
            card = ClockedCard.start(Path(directory), listen_to_room=False)
            try:
                blocks: queue.Queue[Block] = queue.Queue()
                events: queue.Queue[CaptureEvent] = queue.Queue()
                cap = Capture(AudioConfig(capture_device=card.microphone_device), blocks.put, on_event=events.put)
                cap.start()
                try:
                    got = [blocks.get(timeout=TIMEOUT_S) for _ in range(3)]
                finally:
                    cap.stop()
            finally:
                card.stop()
        kinds = [events.get_nowait().kind for _ in range(events.qsize())]
        assert kinds == ["opened"], kinds
        assert [b.seq for b in got] == [0, 1, 2]
        assert cap.stats["device_errors"] == 0
