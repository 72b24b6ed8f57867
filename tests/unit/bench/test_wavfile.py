"""Input WAVs of any rate, channel count and width become 16 kHz mono S16."""

from __future__ import annotations

import array
import itertools
import math
import wave
from pathlib import Path

import pytest

from device.bench import wavfile


def _tone(rate_hz: int, seconds: float, freq_hz: float = 440.0, amp: int = 10000) -> array.array[int]:
    n = int(rate_hz * seconds)
    return array.array("h", (int(amp * math.sin(2 * math.pi * freq_hz * i / rate_hz)) for i in range(n)))


def _write(path: Path, frames: bytes, rate_hz: int, channels: int, width: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate_hz)
        w.writeframes(frames)


def _zero_crossings(samples: array.array[int]) -> int:
    return sum(1 for a, b in itertools.pairwise(samples) if (a < 0) != (b < 0))


@pytest.mark.parametrize("rate_hz", [8000, 16000, 22050, 44100, 48000])
def test_any_rate_keeps_duration_and_pitch(tmp_path: Path, rate_hz: int) -> None:
    path = tmp_path / "in.wav"
    _write(path, _tone(rate_hz, 1.0).tobytes(), rate_hz, 1, 2)
    pcm, info = wavfile.read_wav(path)
    out = array.array("h")
    out.frombytes(pcm)
    assert info.rate_hz == rate_hz
    assert info.duration_s == pytest.approx(1.0)
    assert len(out) == pytest.approx(16000, abs=1)
    # 440 Hz → 880 zero crossings per second, whatever the source rate
    assert _zero_crossings(out) == pytest.approx(880, abs=4)


def test_stereo_is_mixed_down(tmp_path: Path) -> None:
    left = _tone(16000, 0.5)
    inter = array.array("h")
    for s in left:
        inter.extend((s, 0))
    path = tmp_path / "st.wav"
    _write(path, inter.tobytes(), 16000, 2, 2)
    pcm, info = wavfile.read_wav(path)
    out = array.array("h")
    out.frombytes(pcm)
    assert info.channels == 2
    assert list(out[:100]) == [s // 2 for s in left[:100]]


@pytest.mark.parametrize("width", [1, 3, 4])
def test_other_sample_widths(tmp_path: Path, width: int) -> None:
    tone = _tone(16000, 0.25)
    if width == 1:
        raw = bytes(((s >> 8) + 128) & 0xFF for s in tone)
    else:
        raw = b"".join((s << (8 * (width - 2))).to_bytes(width, "little", signed=True) for s in tone)
    path = tmp_path / "w.wav"
    _write(path, raw, 16000, 1, width)
    pcm, info = wavfile.read_wav(path)
    out = array.array("h")
    out.frombytes(pcm)
    assert info.sample_bits == 8 * width
    tolerance = 256 if width == 1 else 0
    assert all(abs(a - b) <= tolerance for a, b in zip(out, tone, strict=True))


def test_a_file_that_is_not_a_wav_gets_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "x.wav"
    path.write_bytes(b"ID3 this is an mp3")
    with pytest.raises(wavfile.WavError, match=r"not a PCM WAV file.*sox"):
        wavfile.read_wav(path)
    with pytest.raises(wavfile.WavError, match="does not exist; give a WAV file with --input"):
        wavfile.read_wav(tmp_path / "missing.wav")


def test_levels() -> None:
    assert wavfile.level_dbfs(bytes(100)) == -120.0
    full = array.array("h", [32767, -32767] * 50).tobytes()
    assert wavfile.level_dbfs(full) == pytest.approx(0.0, abs=0.01)
    assert len(wavfile.levels(full + bytes(200), 16000, 0.00625)) == 2


def test_write_then_read_is_lossless(tmp_path: Path) -> None:
    tone = _tone(16000, 0.3).tobytes()
    wavfile.write_wav(tmp_path / "o.wav", tone, 16000)
    assert wavfile.read_wav(tmp_path / "o.wav")[0] == tone
