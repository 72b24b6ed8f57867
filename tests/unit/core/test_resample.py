"""The one resampler: duration, pitch and level kept; what would alias rejected by ≥ 60 dB; streams exact."""

from __future__ import annotations

import array
import itertools
import math

import pytest

from device.core.audioformat import PCM_16000, AudioFormat
from device.core.convert import CaptureConverter
from device.core.resample import Resampler, resample, resample_samples
from tests.support import sine

RATES = (8000, 16000, 22050, 24000, 44100, 48000)


def rms(pcm: bytes) -> float:
    a = array.array("h", pcm)
    a = a[len(a) // 4 : 3 * len(a) // 4]  # away from the clip's edges
    return math.sqrt(sum(x * x for x in a) / len(a))


def db(ratio: float) -> float:
    return 20 * math.log10(max(ratio, 1e-9))


def zero_crossings(pcm: bytes) -> int:
    a = array.array("h", pcm)
    return sum(1 for x, y in itertools.pairwise(a) if (x < 0) != (y < 0))


@pytest.mark.parametrize(("src", "dst"), [(16000, r) for r in RATES if r != 16000] + [(44100, 16000), (48000, 16000)])
def test_duration_pitch_and_level_are_kept(src: int, dst: int) -> None:
    clip = sine(440, src, 0.5)
    out = resample(clip, src, dst)
    assert len(out) == 2 * round(len(clip) // 2 * dst / src)
    assert abs(zero_crossings(out) - zero_crossings(clip)) <= 2  # 440 Hz at any rate
    assert db(rms(out) / rms(clip)) == pytest.approx(0.0, abs=0.1)


@pytest.mark.parametrize(
    ("src", "dst", "tone_hz"),
    [(16000, 8000, 6000), (16000, 8000, 4500), (44100, 16000, 10000), (48000, 16000, 9000), (24000, 16000, 9000)],
)
def test_what_would_alias_is_rejected_by_60_db(src: int, dst: int, tone_hz: int) -> None:
    # The linear interpolators this replaced passed a 6 kHz tone taken to 8 kHz at -8.3 dB (as 2 kHz).
    reference = rms(sine(440, src, 0.5))
    assert db(rms(resample(sine(tone_hz, src, 0.5), src, dst)) / reference) <= -60.0


def test_a_stream_cut_into_blocks_equals_the_whole() -> None:
    speechy = sine(440, 16000, 1.0)[:-200] + sine(1700, 16000, 0.3)
    whole = Resampler(16000, 22050).process(speechy)
    r = Resampler(16000, 22050)
    pieces = [r.process(speechy[i : i + 7998]) for i in range(0, len(speechy), 7998)]  # odd-sized pieces
    assert b"".join(pieces) == whole


def test_the_same_rate_passes_through_and_bad_rates_are_refused() -> None:
    clip = sine(440, 16000, 0.1)
    assert resample(clip + b"\x01", 16000, 16000) == clip
    assert resample_samples(array.array("h"), 16000, 8000) == array.array("h")
    with pytest.raises(ValueError):
        resample(clip, 0, 8000)
    with pytest.raises(ValueError):
        Resampler(16000, -1)


def test_capture_blocks_reach_the_agent_in_its_format() -> None:
    block = sine(300, 16000, 0.25, amp=20000)
    to_agent = CaptureConverter()
    assert to_agent.convert(block, PCM_16000) is block
    ulaw = to_agent.convert(block, AudioFormat("ulaw", 8000))
    assert len(ulaw) == 2000  # one byte per 8 kHz sample
    assert CaptureConverter().convert(bytes(8000), AudioFormat("ulaw", 8000)) == b"\xff" * 2000
    pcm = CaptureConverter()
    out = [pcm.convert(block, AudioFormat("pcm", 22050)) for _ in range(4)]
    assert sum(len(o) for o in out) == 2 * 22050  # a second of blocks → a second at 22.05 kHz
