"""Sample conversions: μ-law, channels, software gain, earcon resampling."""

from __future__ import annotations

import math
import struct
import warnings

import pytest
from hypothesis import given
from hypothesis import strategies as st

from device.core import convert


def s16(*samples: int) -> bytes:
    return struct.pack(f"<{len(samples)}h", *samples)


def unpack(data: bytes) -> list[int]:
    return list(struct.unpack(f"<{len(data) // 2}h", data))


def reference_ulaw_decode(code: int) -> int:
    """G.711 μ-law expansion written from the standard's formula, independent of the table."""
    code = ~code & 0xFF
    sign, exponent, mantissa = code & 0x80, (code >> 4) & 7, code & 0x0F
    value = ((2 * mantissa + 33) << exponent) - 33  # in units of 4 (14-bit magnitude)
    return -(value * 4) if sign else value * 4


def test_ulaw_decode_matches_the_g711_formula_for_every_code() -> None:
    assert unpack(convert.ulaw_decode(bytes(range(256)))) == [reference_ulaw_decode(c) for c in range(256)]


def test_ulaw_decode_matches_audioop_when_available() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")
    data = bytes(range(256)) * 3
    assert convert.ulaw_decode(data) == audioop.ulaw2lin(data, 2)


def test_ulaw_encode_then_decode_is_within_the_g711_step() -> None:
    samples = list(range(-32768, 32768, 97))
    back = unpack(convert.ulaw_decode(convert.ulaw_encode(struct.pack(f"<{len(samples)}h", *samples))))
    for s, b in zip(samples, back, strict=True):
        assert abs(s - b) <= max(16, abs(s) // 16), (s, b)


def test_ulaw_landmarks() -> None:
    # 0xFF and 0x7F are the two zeros; 0x80 / 0x00 the loudest positive / negative
    assert unpack(convert.ulaw_decode(b"\xff\x7f\x80\x00")) == [0, 0, 32124, -32124]


def test_mono_passes_through() -> None:
    assert convert.to_mono(s16(1, 2, 3), 1) == s16(1, 2, 3)


@pytest.mark.parametrize(("mode", "expected"), [("left", [1, -3]), ("right", [3, 7]), ("mix", [2, 2])])
def test_stereo_pick_and_mix(mode: convert.StereoMode, expected: list[int]) -> None:
    assert unpack(convert.to_mono(s16(1, 3, -3, 7), 2, mode)) == expected


@given(st.lists(st.tuples(st.integers(-32768, 32767), st.integers(-32768, 32767)), max_size=200))
def test_mix_is_the_floored_mean_and_never_overflows(frames: list[tuple[int, int]]) -> None:
    data = b"".join(s16(a, b) for a, b in frames)
    assert unpack(convert.to_mono(data, 2, "mix")) == [(a + b) // 2 for a, b in frames]


def test_stereo_needs_whole_frames() -> None:
    with pytest.raises(ValueError):
        convert.to_mono(b"\x00\x00\x00", 2)
    with pytest.raises(ValueError):
        convert.to_mono(b"\x00" * 12, 3)


def test_volume_curve() -> None:
    assert convert.volume_to_gain(0) == 0.0
    assert convert.volume_to_gain(100) == 1.0
    assert 20 * math.log10(convert.volume_to_gain(50)) == pytest.approx(-12.04, abs=0.01)
    gains = [convert.volume_to_gain(p) for p in range(101)]
    assert gains == sorted(gains)


@given(st.lists(st.integers(-32768, 32767), max_size=300), st.floats(0.0, 1.0))
def test_gain_scales_every_sample(samples: list[int], gain: float) -> None:
    out = unpack(convert.GainTable(gain).apply(s16(*samples)))
    assert out == [round(s * gain) if 0 < gain < 1 else (s if gain >= 1 else 0) for s in samples]


def test_gain_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError):
        convert.GainTable(1.5)
