"""Real test audio made on the spot: espeak-ng speech and sox noise, 16 kHz S16LE mono (no fixtures committed)."""

from __future__ import annotations

import functools
import math
import shutil
import subprocess
import tempfile
import wave
from array import array
from pathlib import Path

import pytest

RATE_HZ = 16000
needs_tools = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("sox") is None, reason="needs espeak-ng and sox"
)


def _read_wav(path: Path) -> bytes:
    with wave.open(str(path), "rb") as w:
        assert (w.getframerate(), w.getsampwidth(), w.getnchannels()) == (RATE_HZ, 2, 1)
        return w.readframes(w.getnframes())


@functools.lru_cache(maxsize=64)
def speak(text: str, voice: str = "en-us", speed_wpm: int = 160, *sox_effects: str) -> bytes:
    """``text`` spoken by espeak-ng, resampled by sox (plus optional sox effects)."""
    with tempfile.TemporaryDirectory() as d:
        raw, out = Path(d) / "a.wav", Path(d) / "b.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed_wpm), "-w", str(raw), text], check=True)
        subprocess.run(["sox", str(raw), "-r", str(RATE_HZ), "-c", "1", "-b", "16", str(out), *sox_effects],
                       check=True)
        return _read_wav(out)


@functools.lru_cache(maxsize=16)
def noise(kind: str, seconds: float, seed: int = 1) -> bytes:
    """sox-synthesised ``whitenoise`` / ``pinknoise`` at -20 dBFS-ish."""
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "n.wav"
        subprocess.run(
            ["sox", "-R", "-n", "-r", str(RATE_HZ), "-c", "1", "-b", "16", str(out), "synth", str(seconds), kind,
             "vol", "0.3"],
            check=True,
        )
        del seed
        return _read_wav(out)


def silence(seconds: float) -> bytes:
    return bytes(int(seconds * RATE_HZ) * 2)


def rms(pcm: bytes) -> float:
    s = array("h", pcm)
    return math.sqrt(sum(x * x for x in s) / max(1, len(s)))


def db(ratio: float) -> float:
    return 20 * math.log10(max(ratio, 1e-9))


def mix(signal: bytes, background: bytes, snr_db: float) -> bytes:
    """``signal`` plus ``background`` scaled to ``snr_db`` below it (background looped/cut to length)."""
    s = array("h", signal)
    b = array("h", (background * (len(signal) // max(1, len(background)) + 1))[: len(signal)])
    scale = rms(signal) / max(rms(bytes(b)), 1e-9) / (10 ** (snr_db / 20))
    out = array("h", (max(-32768, min(32767, int(x + y * scale))) for x, y in zip(s, b, strict=True)))
    return out.tobytes()


def scale(pcm: bytes, gain_db: float) -> bytes:
    g = 10 ** (gain_db / 20)
    return array("h", (max(-32768, min(32767, int(x * g))) for x in array("h", pcm))).tobytes()


def blocks(pcm: bytes, frames: int = 4000) -> list[bytes]:
    """Whole capture blocks (the tail padded with zeros)."""
    size = frames * 2
    pcm = pcm + bytes(-len(pcm) % size)
    return [pcm[i:i + size] for i in range(0, len(pcm), size)]
