"""Playback through real ALSA ``type file`` devices: what the speaker would have been sent."""

from __future__ import annotations

import random
import struct
import threading
from pathlib import Path

import pytest

from device.core.audioevents import PlaybackEvent
from device.core.audioformat import AudioFormat
from device.core.config import AudioConfig
from device.core.convert import ulaw_decode
from device.drivers import filedevices
from device.drivers.earcons import load_earcons
from device.drivers.playback import Playback
from tests.integration.audiorig import Events

pytestmark = pytest.mark.realtime


def pcm(samples: list[int]) -> bytes:
    return struct.pack(f"<{len(samples)}h", *samples)


def samples_of(data: bytes) -> list[int]:
    return list(struct.unpack(f"<{len(data) // 2}h", data))


def run_playback(cfg: AudioConfig, events: Events) -> Playback:
    pb = Playback(cfg, events)
    pb.start()
    events.kind("opened")
    return pb


def split_randomly(data: bytes, rng: random.Random) -> list[bytes]:
    """Pieces of random sizes, some odd, as a network would deliver them."""
    pieces, i = [], 0
    while i < len(data):
        n = rng.randint(1, 3000)
        pieces.append(data[i : i + n])
        i += n
    return pieces


def test_output_equals_agent_audio_nothing_lost_or_duplicated(alsa_dir: Path) -> None:
    out = alsa_dir / "equal.raw"
    cfg = AudioConfig(playback_device=filedevices.playback_device(out), volume_percent=100)
    rng = random.Random(5)
    reply = pcm([rng.randint(-32768, 32767) for _ in range(16000 * 3 + 123)])
    events = Events()
    pb = run_playback(cfg, events)
    try:
        for piece in split_randomly(reply, rng):
            pb.write(piece)
        pb.end_of_input()
        finished = events.wait_for(
            lambda e: e.kind == "reply_finished" and sum(f.frames for f in events.of("reply_finished")) == 48123
        )
        assert finished.kind == "reply_finished"
        assert not pb.is_playing
    finally:
        pb.stop()
    assert filedevices.read_output(out) == reply
    assert pb.stats["frames_written"] == 48123
    assert pb.stats["underruns"] == 0
    assert pb.stats["overflow_frames"] == 0


def test_software_volume_scales_the_output(alsa_dir: Path) -> None:
    out = alsa_dir / "volume.raw"
    cfg = AudioConfig(playback_device=filedevices.playback_device(out), volume_percent=50)
    reply = pcm([20000, -20000, 4000, 3] * 2000)
    events = Events()
    pb = run_playback(cfg, events)
    try:
        pb.write(reply)
        pb.end_of_input()
        events.kind("reply_finished", 1)
        pb.set_muted(True)
        pb.write(reply)
        pb.end_of_input()
        events.kind("reply_finished", 2)
    finally:
        pb.stop()
    got = samples_of(filedevices.read_output(out))
    assert got[:8000] == [5000, -5000, 1000, 1] * 2000  # 50 % = gain 0.25
    assert got[8000:] == [0] * 8000


def test_flush_mid_reply_leaves_at_most_one_chunk_and_next_reply_is_clean(alsa_dir: Path) -> None:
    out = alsa_dir / "flush.raw"
    cfg = AudioConfig(playback_device=filedevices.playback_device(out), volume_percent=100, pace_realtime=True)
    old = pcm([1 + i % 20000 for i in range(16000 * 4)])  # positive: the old reply
    new = pcm([-1 - i % 20000 for i in range(16000)])  # negative: the next reply
    events = Events()
    pb = run_playback(cfg, events)
    try:
        pb.write(old)
        events.kind("reply_started", 1)
        threading.Event().wait(0.4)  # let part of it play; where it is cut does not matter
        report = pb.flush()
        flushed = events.kind("flushed")
        pb.write(new)
        pb.end_of_input()
        events.kind("reply_finished", 2)
    finally:
        pb.stop()
    got = samples_of(filedevices.read_output(out))
    n_old = sum(1 for s in got if s > 0)
    assert got[:n_old] == samples_of(old)[:n_old]  # the old reply, uncorrupted, then cut
    assert got[n_old:] == samples_of(new)  # the next reply complete, nothing old after it
    assert report.was_playing
    assert report.reply_id == 1
    assert report.discarded_frames > 0
    chunk = 1000
    assert flushed.frames <= chunk  # written after the request
    assert n_old == report.reply_frames_written + flushed.frames
    assert n_old < 16000 * 4 - report.discarded_frames + chunk
    assert flushed.latency_ms is not None
    assert flushed.reply_id == 1
    assert pb.stats["flushes"] == 1


def test_flush_when_idle_is_harmless(alsa_dir: Path) -> None:
    cfg = AudioConfig(playback_device=filedevices.playback_device(alsa_dir / "idle.raw"))
    events = Events()
    pb = run_playback(cfg, events)
    try:
        report = pb.flush()
        flushed = events.kind("flushed")
    finally:
        pb.stop()
    assert not report.was_playing
    assert report.reply_id == 0
    assert flushed.frames == 0


def play_reply(device: str, fmt: AudioFormat, reply: bytes, paced: bool) -> tuple[PlaybackEvent, PlaybackEvent]:
    """Play one reply in ``fmt``; return its reply_started and reply_finished events."""
    cfg = AudioConfig(playback_device=device, volume_percent=100, pace_realtime=paced)
    events = Events()
    pb = run_playback(cfg, events)
    try:
        pb.set_format(fmt)
        events.wait_for(lambda e: e.kind == "opened" and e.rate_hz == fmt.rate_hz)
        # an unpaced device plays everything at once, so a gap between pieces would end the reply
        for piece in split_randomly(reply, random.Random(len(reply))) if paced else [reply]:
            pb.write(piece)
        pb.end_of_input()
        return events.kind("reply_started"), events.kind("reply_finished")
    finally:
        pb.stop()


@pytest.mark.parametrize("rate_hz", [22050, 44100, 8000])
def test_other_pcm_rates_reach_the_device_unchanged(alsa_dir: Path, rate_hz: int) -> None:
    raw = alsa_dir / f"rate{rate_hz}.raw"
    reply = pcm([int(8000 * ((i * 440 / rate_hz) % 1.0 - 0.5)) for i in range(rate_hz)])  # 1 s sawtooth
    _, finished = play_reply(filedevices.playback_device(raw), AudioFormat("pcm", rate_hz), reply, paced=False)
    assert finished.frames == rate_hz
    assert finished.rate_hz == rate_hz
    # the PCM is opened at the agent's rate: ALSA (plug, dmix) converts, not Python
    assert filedevices.read_output(raw) == reply


@pytest.mark.parametrize("fmt", [AudioFormat("pcm", 22050), AudioFormat("ulaw", 8000)], ids=lambda f: f.name)
def test_22050_and_ulaw_replies_come_out_at_the_right_duration(alsa_dir: Path, fmt: AudioFormat) -> None:
    out16 = alsa_dir / f"duration-{fmt.name}.raw"
    if fmt.encoding == "ulaw":
        rng = random.Random(3)
        reply = bytes(rng.randrange(256) for _ in range(fmt.rate_hz))  # 1 s
    else:
        reply = pcm([int(8000 * ((i * 440 / fmt.rate_hz) % 1.0 - 0.5)) for i in range(fmt.rate_hz)])
    device = filedevices.playback_device(out16, fixed_16k=True)
    started, finished = play_reply(device, fmt, reply, paced=True)
    # paced at the nominal rate, it cannot be over sooner than it lasts, less the ALSA buffer
    assert finished.t_s - started.t_s >= 1.0 - 0.25 - 0.07
    assert finished.frames == fmt.rate_hz
    heard = samples_of(filedevices.read_output(out16))  # converted by ALSA to 16 kHz
    assert abs(len(heard) - 16000) <= 1000  # 1 s, within one chunk
    assert max(map(abs, heard)) > 1000


def test_ulaw_is_decoded_before_the_device(alsa_dir: Path) -> None:
    raw = alsa_dir / "ulaw.raw"
    reply = bytes(random.Random(4).randrange(256) for _ in range(8000))
    play_reply(filedevices.playback_device(raw), AudioFormat("ulaw", 8000), reply, paced=False)
    assert filedevices.read_output(raw) == ulaw_decode(reply)


def test_earcon_plays_through_the_same_path(alsa_dir: Path) -> None:
    out = alsa_dir / "earcon.raw"
    cfg = AudioConfig(playback_device=filedevices.playback_device(out), volume_percent=100)
    events = Events()
    pb = run_playback(cfg, events)
    try:
        assert pb.play_earcon("listening")
        events.kind("earcon_started")
        pb.write(pcm([7] * 1600))  # a reply queued behind the cue plays after it
        pb.end_of_input()
        events.kind("reply_finished", 1)
    finally:
        pb.stop()
    cue = load_earcons(cfg)["listening"].pcm
    assert filedevices.read_output(out) == cue + pcm([7] * 1600)
    kinds = [e.kind for e in events.items if e.kind not in ("opened", "reply_chunk")]
    assert kinds[:3] == ["earcon_started", "earcon_finished", "reply_started"]


def test_earcon_finishes_when_heard(alsa_dir: Path) -> None:
    cfg = AudioConfig(playback_device=filedevices.playback_device(alsa_dir / "cue.raw"), pace_realtime=True)
    events = Events()
    pb = run_playback(cfg, events)
    try:
        pb.play_earcon("error")
        assert pb.is_playing
        started, finished = events.kind("earcon_started"), events.kind("earcon_finished")
        assert not pb.is_playing
    finally:
        pb.stop()
    assert started.detail == finished.detail == "error"
    cue_s = load_earcons(cfg)["error"].duration_s
    assert finished.t_s - started.t_s >= cue_s - 0.25 - 0.07  # paced: heard, not just written


def test_disabled_earcons_play_nothing(alsa_dir: Path) -> None:
    cfg = AudioConfig(playback_device=filedevices.playback_device(alsa_dir / "noear.raw"), earcons=False)
    pb = Playback(cfg)
    assert pb.play_earcon("done") is False
    with pytest.raises(ValueError):
        pb.play_earcon("fanfare")


def test_speaker_that_appears_late_is_picked_up(alsa_dir: Path) -> None:
    late_dir = alsa_dir / "late-speaker"
    out = late_dir / "out.raw"
    cfg = AudioConfig(playback_device=filedevices.playback_device(out), volume_percent=100, reopen_max_s=0.5)
    events = Events()
    pb = Playback(cfg, events)
    pb.start()
    try:
        error = events.kind("device_error")
        assert "not found" in error.detail
        assert "aplay -L" in error.detail
        pb.write(pcm([5] * 100))  # while the speaker is missing: discarded, counted
        late_dir.mkdir()
        events.kind("opened")
        pb.write(pcm([9] * 3000))
        pb.end_of_input()
        events.kind("reply_finished")
    finally:
        pb.stop()
    assert filedevices.read_output(out) == pcm([9] * 3000)
    assert pb.stats["dropped_no_device_frames"] >= 100
    assert pb.stats["device_errors"] >= 1


def test_stop_is_prompt_in_the_middle_of_a_paced_reply(alsa_dir: Path) -> None:
    cfg = AudioConfig(playback_device=filedevices.playback_device(alsa_dir / "stop.raw"), pace_realtime=True)
    events = Events()
    pb = run_playback(cfg, events)
    pb.write(pcm([1] * 16000 * 30))
    events.kind("reply_started")
    pb.stop(timeout_s=2.0)  # raises WorkerStuckError if the thread hangs
    assert not pb.alive
