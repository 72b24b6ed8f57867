"""Earcons: bundled cues load, replacements are checked with errors that say what to do."""

from __future__ import annotations

import struct
import wave
from pathlib import Path

import pytest

from device.core.config import AudioConfig
from device.core.errors import ConfigError
from device.drivers.earcons import EARCON_NAMES, EarconSet, bundled_path, load_earcons, load_wav
from tests.support import make_fifo, unless_blocked_on


def _wav(path: Path, samples: list[int], rate: int = 16000, channels: int = 1, width: int = 2) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        if width == 2:
            w.writeframes(struct.pack(f"<{len(samples)}h", *samples))
        else:
            w.writeframes(bytes(len(samples) * width))
    return path


def test_bundled_cues_are_short_audible_mono() -> None:
    earcons = load_earcons(AudioConfig())
    assert set(earcons) == set(EARCON_NAMES)
    for e in earcons.values():
        assert 0.05 < e.duration_s < 0.5
        samples = struct.unpack(f"<{len(e.pcm) // 2}h", e.pcm)
        assert max(map(abs, samples)) > 1000  # not silence
        assert bundled_path(e.name).stat().st_size < 16_000


def test_disabled_earcons_load_nothing() -> None:
    assert load_earcons(AudioConfig(earcons=False)) == {}


def test_replacement_is_used_and_stereo_is_mixed(tmp_path: Path) -> None:
    path = _wav(tmp_path / "ding.wav", [100, 300] * 800, rate=8000, channels=2)
    earcons = load_earcons(AudioConfig(earcon_done=str(path)))
    assert earcons["done"].rate_hz == 8000
    assert earcons["done"].pcm == struct.pack("<h", 200) * 800


def test_missing_replacement_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_earcons(AudioConfig(earcon_error=str(tmp_path / "nope.wav")))
    assert err.value.key == "audio.earcon_error"
    assert "does not exist" in str(err.value)


def test_wrong_sample_width_says_how_to_convert(tmp_path: Path) -> None:
    path = _wav(tmp_path / "x.wav", [0] * 100, width=1)
    with pytest.raises(ConfigError, match="sox"):
        load_wav(path, "listening", "audio.earcon_listening")


def test_not_a_wav_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.wav"
    path.write_bytes(b"hello, not a wav file at all")
    with pytest.raises(ConfigError, match="not a readable PCM WAV"):
        load_wav(path, "listening", "audio.earcon_listening")


def test_too_long_is_refused(tmp_path: Path) -> None:
    path = _wav(tmp_path / "long.wav", [0] * 8000 * 6, rate=8000)
    with pytest.raises(ConfigError, match="at most"):
        load_wav(path, "listening", "audio.earcon_listening")


def test_a_fifo_as_a_cue_is_refused_not_waited_on(tmp_path: Path) -> None:
    fifo = make_fifo(tmp_path / "ding.wav")
    with pytest.raises(ConfigError) as err:
        unless_blocked_on(fifo, lambda: load_earcons(AudioConfig(earcon_done=str(fifo))))
    assert err.value.key == "audio.earcon_done"
    assert f"earcon file {fifo} cannot be used: it is a FIFO (named pipe), not a regular file" in str(err.value)


def test_cues_are_converted_to_the_speaker_rate_once() -> None:
    earcons = load_earcons(AudioConfig())
    cues = EarconSet(earcons)
    at_48k = cues.pcm_at("listening", 48000)
    assert len(at_48k) == pytest.approx(3 * len(earcons["listening"].pcm), abs=4)
    assert cues.pcm_at("listening", 48000) is at_48k
    assert cues.pcm_at("listening", 16000) == earcons["listening"].pcm
