"""WAV files for the bench: read any PCM WAV as capture audio, write results (pure + file I/O).

The capture path takes S16_LE mono 16 kHz; ``--input`` may be any rate,
channel count and PCM sample width, so it is converted here once, before the
run (through the firmware's one resampler, device/core/resample.py; no numpy).
"""

from __future__ import annotations

import array
import math
import sys
import wave
from dataclasses import dataclass
from pathlib import Path

from device.core.audioformat import CAPTURE_RATE_HZ
from device.core.errors import DeviceError
from device.core.resample import resample_samples


class WavError(DeviceError):
    """A WAV file could not be read or is not in a usable format."""


@dataclass(frozen=True)
class WavInfo:
    """What a source file held before conversion."""

    path: str
    rate_hz: int
    channels: int
    sample_bits: int
    duration_s: float


def _to_int16(raw: bytes, width: int) -> array.array[int]:
    """Little-endian PCM of any width → native int16 samples."""
    out = array.array("h")
    if width == 2:
        out.frombytes(raw)
        if sys.byteorder == "big":  # pragma: no cover - WAV data is little-endian
            out.byteswap()
    elif width == 1:  # unsigned 8-bit
        out.extend((b - 128) << 8 for b in raw)
    elif width in (3, 4):
        step = width
        out.extend(
            int.from_bytes(raw[i + step - 2 : i + step], "little", signed=True)
            for i in range(0, len(raw) - step + 1, step)
        )
    else:
        raise WavError(f"unsupported sample width of {width * 8} bits")
    return out


def downmix(samples: array.array[int], channels: int) -> array.array[int]:
    """Interleaved int16 of ``channels`` → mono by averaging."""
    if channels == 1:
        return samples
    frames = len(samples) // channels
    out = array.array("h", bytes(2 * frames))
    for i in range(frames):
        base = i * channels
        out[i] = sum(samples[base : base + channels]) // channels
    return out


def resample(samples: array.array[int], src_hz: int, dst_hz: int) -> array.array[int]:
    """Mono int16 at another rate: the firmware's one resampler (:mod:`device.core.resample`)."""
    return resample_samples(samples, src_hz, dst_hz)


def read_wav(path: Path, rate_hz: int = CAPTURE_RATE_HZ) -> tuple[bytes, WavInfo]:
    """Read a PCM WAV of any rate/channels/width as S16_LE mono at ``rate_hz``."""
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, src_hz, nframes = (
                w.getnchannels(),
                w.getsampwidth(),
                w.getframerate(),
                w.getnframes(),
            )
            raw = w.readframes(nframes)
    except FileNotFoundError:
        raise WavError(f"input file {path} does not exist; give a WAV file with --input") from None
    except (wave.Error, EOFError) as e:
        raise WavError(
            f"{path} is not a PCM WAV file ({e}); convert it first, e.g. "
            f"sox {path} -r 16000 -c 1 -b 16 out.wav"
        ) from None
    except OSError as e:
        raise WavError(f"cannot read {path}: {e.strerror}") from None
    if channels < 1 or src_hz < 1000:
        raise WavError(f"{path} claims {channels} channel(s) at {src_hz} Hz; that is not usable audio")
    samples = resample(downmix(_to_int16(raw, width), channels), src_hz, rate_hz)
    if sys.byteorder == "big":  # pragma: no cover
        samples.byteswap()
    info = WavInfo(str(path), src_hz, channels, width * 8, nframes / src_hz)
    return samples.tobytes(), info


def write_wav(path: Path, pcm: bytes, rate_hz: int) -> None:
    """Write S16_LE mono PCM as a WAV file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate_hz)
        w.writeframes(pcm[: len(pcm) - len(pcm) % 2])


def mix_under(pcm: bytes, noise: bytes) -> bytes:
    """``pcm`` with ``noise`` added (looped to its length, clipped to 16 bits), both S16_LE mono."""
    a = array.array("h")
    a.frombytes(pcm[: len(pcm) - len(pcm) % 2])
    n = array.array("h")
    n.frombytes(noise[: len(noise) - len(noise) % 2])
    if not n:
        return a.tobytes()
    out = array.array("h", bytes(2 * len(a)))
    k = len(n)
    for i, x in enumerate(a):
        out[i] = max(-32768, min(32767, x + n[i % k]))
    return out.tobytes()


def silence(duration_s: float, rate_hz: int = CAPTURE_RATE_HZ) -> bytes:
    return bytes(2 * round(duration_s * rate_hz))


def level_dbfs(pcm: bytes) -> float:
    """RMS level of S16_LE PCM in dBFS (-120 for digital silence)."""
    samples = array.array("h")
    samples.frombytes(pcm[: len(pcm) - len(pcm) % 2])
    if not samples:
        return -120.0
    mean_sq = sum(s * s for s in samples) / len(samples)
    if mean_sq <= 0:
        return -120.0
    return max(-120.0, 10 * math.log10(mean_sq / (32768.0 * 32768.0)))


def levels(pcm: bytes, rate_hz: int, window_s: float) -> list[float]:
    """Level in dBFS of each ``window_s`` window of S16_LE PCM."""
    step = max(2, 2 * round(rate_hz * window_s))
    return [level_dbfs(pcm[i : i + step]) for i in range(0, len(pcm), step)]
