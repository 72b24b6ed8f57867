"""μ-law, resampling and WAV helpers of the emulator."""

from __future__ import annotations

import io
import itertools
import struct
import wave
from array import array

import pytest
from hypothesis import given
from hypothesis import strategies as st

from device.core.audioformat import parse_format
from device.emulator import pcm
from tests.support import sine


def zero_crossings(data: bytes) -> int:
    a = array("h")
    a.frombytes(data)
    return sum(1 for x, y in itertools.pairwise(a) if (x < 0) != (y < 0))


def test_ulaw_known_codes() -> None:
    # G.711: silence is 0xFF, the extremes are 0x00 (negative) and 0x80 (positive).
    assert pcm.ulaw_encode(struct.pack("<h", 0)) == b"\xff"
    assert pcm.ulaw_decode(b"\xff\x7f") == struct.pack("<hh", 0, 0)
    assert pcm.ulaw_decode(b"\x00\x80") == struct.pack("<hh", -32124, 32124)
    assert pcm.ulaw_encode(struct.pack("<hh", 32767, -32768)) == b"\x80\x00"


@given(st.lists(st.integers(-32768, 32767), min_size=1, max_size=200))
def test_ulaw_round_trip_error_is_bounded_by_the_segment(samples: list[int]) -> None:
    data = array("h", samples).tobytes()
    back = array("h")
    back.frombytes(pcm.ulaw_decode(pcm.ulaw_encode(data)))
    for x, y in zip(samples, back, strict=True):
        assert abs(x - y) <= abs(x) / 16 + 8, (x, y)


def test_ulaw_is_one_byte_per_sample() -> None:
    data = sine(440, 8000, 0.1)
    assert len(pcm.ulaw_encode(data)) == len(data) // 2
    assert len(pcm.ulaw_decode(pcm.ulaw_encode(data))) == len(data)


@pytest.mark.parametrize(("src", "dst"), [(22050, 16000), (16000, 44100), (16000, 8000), (48000, 16000)])
def test_resample_keeps_duration_and_pitch(src: int, dst: int) -> None:
    data = sine(300, src, 0.5)
    out = pcm.resample(data, src, dst)
    assert len(out) // 2 == round(len(data) // 2 * dst / src)
    # 300 Hz → 600 zero crossings per second at either rate.
    assert abs(zero_crossings(out) - 300) <= 3
    assert pcm.peak(out) > 9000  # the tone is not filtered away


def test_resample_same_rate_drops_only_a_trailing_half_sample() -> None:
    assert pcm.resample(b"\x01\x02\x03", 16000, 16000) == b"\x01\x02"
    assert pcm.resample(b"", 16000, 8000) == b""


def test_encode_to_each_protocol_format_has_the_right_length() -> None:
    data = sine(200, 16000, 1.0)
    for name in ("pcm_8000", "pcm_16000", "pcm_22050", "pcm_24000", "pcm_44100", "pcm_48000", "ulaw_8000"):
        fmt = parse_format(name)
        out = pcm.encode(data, 16000, fmt)
        assert fmt.duration_s(len(out)) == pytest.approx(1.0, abs=0.001), name
        decoded = pcm.to_pcm(out, fmt)
        assert len(decoded) // 2 == round(fmt.rate_hz * 1.0)
        assert abs(zero_crossings(decoded) - 400) <= 4, name


def test_wav_round_trip() -> None:
    data = sine(440, 22050, 0.2)
    blob = pcm.wav_bytes(data, 22050)
    with wave.open(io.BytesIO(blob)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 22050)
        assert w.readframes(w.getnframes()) == data
    assert pcm.parse_wav(blob) == (data, 22050)


def test_parse_wav_accepts_espeak_streaming_header() -> None:
    data = sine(440, 22050, 0.1)
    fmt = struct.pack("<HHIIHH", 1, 1, 22050, 44100, 2, 16)
    blob = b"RIFF" + struct.pack("<I", 0x7FFFFFFF) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
    blob += b"data" + struct.pack("<I", 0x7FFFFFFF) + data
    assert pcm.parse_wav(blob) == (data, 22050)


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"not a wav file at all", "not a RIFF"),
        (
            b"RIFF\x00\x00\x00\x00WAVEfmt \x10\x00\x00\x00"
            + struct.pack("<HHIIHH", 1, 2, 8000, 32000, 4, 16)
            + b"data\x04\x00\x00\x00\x00\x00\x00\x00",
            "mono 16-bit",
        ),
        (b"RIFF\x00\x00\x00\x00WAVE", "no data chunk"),
    ],
)
def test_parse_wav_refuses_what_it_cannot_use(blob: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pcm.parse_wav(blob)


def test_peak() -> None:
    assert pcm.peak(bytes(100)) == 0
    assert pcm.peak(struct.pack("<hhh", 5, -300, 7)) == 300
