"""The pure parts of `voice-appliance check`: levels, verdicts, tones, VAD advice, presses."""

from __future__ import annotations

import math
from array import array

import pytest

from device.commands import bringup
from device.commands.bringup import MicStats, PressTracker, VadSummary

RATE = 16000


def sine(level_dbfs: float, seconds: float, freq_hz: float = 300.0, dc: int = 0) -> bytes:
    amp = 32768 * 10 ** (level_dbfs / 20)
    n = int(seconds * RATE)
    return array(
        "h", (max(-32768, min(32767, round(amp * math.sin(2 * math.pi * freq_hz * i / RATE)) + dc)) for i in range(n))
    ).tobytes()


def noise(level_dbfs: float, seconds: float) -> bytes:
    import random

    rng = random.Random(1)
    sd = 32768 * 10 ** (level_dbfs / 20)
    return array("h", (max(-32768, min(32767, round(rng.gauss(0, sd)))) for _ in range(int(seconds * RATE)))).tobytes()


def test_levels_of_a_quiet_room_then_speech() -> None:
    stats = bringup.analyse(noise(-60, 2.0) + sine(-20, 1.0), RATE)
    assert stats.seconds == pytest.approx(3.0)
    assert stats.noise_floor_dbfs == pytest.approx(-60, abs=1.5)
    assert stats.loud_dbfs == pytest.approx(-23, abs=0.5)  # a sine's RMS is 3 dB below its peak
    assert stats.peak_dbfs == pytest.approx(-20, abs=0.1)
    assert stats.clipped_fraction == 0
    verdicts = bringup.mic_verdicts(stats, "alsamixer")
    assert [v.verdict for v in verdicts] == ["PASS"]
    assert "usable for the VAD" in verdicts[0].detail


def test_clipping_fails_and_asks_for_less_gain() -> None:
    stats = bringup.analyse(noise(-60, 1.0) + sine(3, 1.0), RATE)
    assert stats.clipped_fraction > 0.1
    verdicts = bringup.mic_verdicts(stats, "alsamixer -c X")
    fail = [v for v in verdicts if v.verdict == "FAIL"]
    assert fail
    assert "clipping" in fail[0].detail
    assert bringup.suggest_gain_db(stats) <= -6
    assert "lower the capture gain" in fail[0].fix
    assert "alsamixer -c X" in fail[0].fix


def test_quiet_speech_suggests_a_gain_that_does_not_clip() -> None:
    stats = bringup.analyse(noise(-70, 1.0) + sine(-50, 1.0), RATE)
    gain = bringup.suggest_gain_db(stats)
    assert gain == 33  # from -53 dBFS RMS to -20
    warn = [v for v in bringup.mic_verdicts(stats, "alsamixer") if v.verdict == "WARN"]
    assert any("quiet" in v.detail and "33 dB" in v.fix for v in warn)
    # headroom wins: the peak may rise to -1 dBFS, no further
    loud_peak = MicStats(1.0, -50, -6.0, 0.0, 0.0, -70, -50)
    assert bringup.suggest_gain_db(loud_peak) == 5


def test_dc_offset_and_noise_floor_warn() -> None:
    stats = bringup.analyse(sine(-20, 1.0, dc=3000) + sine(-40, 1.0, dc=3000), RATE)
    assert stats.dc_offset == pytest.approx(3000 / 32768, rel=0.01)
    details = " | ".join(v.detail for v in bringup.mic_verdicts(stats, "x"))
    assert "DC offset +9.2 %" in details
    assert "noise floor" in details


def test_digital_silence_is_a_failure_with_the_likely_causes() -> None:
    (v,) = bringup.mic_verdicts(bringup.analyse(bytes(32000), RATE), "alsamixer")
    assert v.verdict == "FAIL"
    assert "silence" in v.detail
    assert "muted" in v.fix
    (empty,) = bringup.mic_verdicts(bringup.analyse(b"", RATE), "x")
    assert empty.verdict == "FAIL"
    assert "no audio" in empty.detail


def test_meter_shows_level_and_clipping() -> None:
    quiet = bringup.meter(bringup.block_level(sine(-40, 0.1)), width=30)
    loud = bringup.meter(bringup.block_level(sine(0.5, 0.1)), width=30)
    assert quiet.count("#") == 8  # -43 dBFS RMS on a -60..0 scale
    assert "CLIP" in loud
    assert "CLIP" not in quiet


def test_tone_has_its_frequency_level_and_length() -> None:
    pcm = bringup.tone(440, 1.0, RATE, level_dbfs=-12)
    assert len(pcm) == 2 * RATE
    assert bringup.dominant_frequency_hz(pcm, RATE) == pytest.approx(440, abs=2)
    assert bringup.block_level(pcm).peak_dbfs == pytest.approx(-12, abs=0.1)
    s = array("h", pcm)
    assert abs(s[0]) < 100
    assert abs(s[-1]) < 100  # faded: no click


def test_vad_advice() -> None:
    heard = [VadSummary(0, 100, 60), VadSummary(1, 100, 50), VadSummary(2, 100, 40), VadSummary(3, 100, 0)]
    assert bringup.vad_advice(heard, 2).verdict == "PASS"
    deaf = bringup.vad_advice(heard, 3)
    assert deaf.verdict == "WARN"
    assert "lower gate.vad_aggressiveness" in deaf.fix
    assert "3: 0 %" in deaf.detail
    assert bringup.vad_advice([], 2).verdict == "FAIL"
    assert bringup.vad_strip([True, False, True]) == "#.#"


def test_press_tracker_short_long_and_live_long_press() -> None:
    t = PressTracker(long_press_s=2.0)
    assert t.edge(True, 10.0) == "button: pressed"
    assert t.edge(False, 10.25) == "button: released after 0.25 s (short press)"
    t.edge(True, 20.0)
    assert t.tick(21.0) is None
    assert t.tick(22.0) == "button: long press (2 s held)"
    assert t.tick(23.0) is None  # once
    assert t.edge(False, 23.5) == "button: released after 3.50 s (long press)"
    t.edge(True, 30.0)
    t.edge(False, 33.0)  # long, not seen live
    assert (t.presses, t.long_presses) == (3, 2)
    assert PressTracker(1.0).edge(False, 1.0).endswith("(was held when the check started)")
