"""Sample conversions the audio path needs, all pure and cheap.

Everything here works on signed 16-bit little-endian samples (S16_LE), the
format of the capture blocks and of the playback ring. Heavy lifting (rate
conversion of agent audio, hardware formats) is left to ALSA's plug layer; what
remains runs at C speed through ``bytes.translate``, slicing and table lookups,
so a Pi Zero 2 W stays idle. Rate conversion is :mod:`device.core.resample`'s.
"""

from __future__ import annotations

import sys
from array import array
from typing import Literal

from device.core.audioformat import CAPTURE_RATE_HZ, PCM_16000, AudioFormat
from device.core.resample import Resampler

StereoMode = Literal["mix", "left", "right"]

_LITTLE = sys.byteorder == "little"


def _samples(data: bytes | bytearray | memoryview, typecode: str = "h") -> array[int]:
    arr = array(typecode)
    arr.frombytes(data)
    if not _LITTLE:
        arr.byteswap()
    return arr


def _to_bytes(arr: array[int]) -> bytes:
    if not _LITTLE:
        arr = array(arr.typecode, arr)
        arr.byteswap()
    return arr.tobytes()


# -- μ-law (G.711) ------------------------------------------------------------


def _ulaw_to_linear(code: int) -> int:
    u = ~code & 0xFF
    magnitude = ((((u & 0x0F) << 3) + 0x84) << ((u >> 4) & 0x07)) - 0x84
    return -magnitude if u & 0x80 else magnitude


_ULAW_LO = bytes(_ulaw_to_linear(c) & 0xFF for c in range(256))
_ULAW_HI = bytes((_ulaw_to_linear(c) >> 8) & 0xFF for c in range(256))


def ulaw_decode(data: bytes | bytearray) -> bytes:
    """G.711 μ-law bytes → S16_LE (two translate passes, no per-sample Python)."""
    out = bytearray(2 * len(data))
    out[0::2] = data.translate(_ULAW_LO)
    out[1::2] = data.translate(_ULAW_HI)
    return bytes(out)


def _linear_to_ulaw(sample: int) -> int:
    sign = 0x80 if sample < 0 else 0
    magnitude = min(-sample if sample < 0 else sample, 32635) + 0x84  # clip, then bias
    exponent = max(0, (magnitude >> 7).bit_length() - 1)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


# Indexed by the sample's 16-bit two's-complement pattern (s & 0xFFFF).
_ULAW_ENCODE = bytes(_linear_to_ulaw(v - 65536 if v >= 32768 else v) for v in range(65536))


def ulaw_encode(data: bytes) -> bytes:
    """S16_LE → G.711 μ-law, one byte per sample (a trailing odd byte is ignored)."""
    table = _ULAW_ENCODE
    return bytes(table[s & 0xFFFF] for s in _samples(data[: len(data) - len(data) % 2]))


# -- channels -----------------------------------------------------------------


def to_mono(data: bytes, channels: int, mode: StereoMode = "mix") -> bytes:
    """Interleaved S16_LE with 1 or 2 channels → mono (pick one side or average both)."""
    if channels == 1:
        return bytes(data)
    if channels != 2:
        raise ValueError(f"cannot convert {channels} channels to mono; use 1 or 2")
    if len(data) % 4:
        raise ValueError("stereo S16 data must be a whole number of 4-byte frames")
    if mode == "left":
        return memoryview(data).cast("h")[0::2].tobytes()  # byte copies: no endianness issue
    if mode == "right":
        return memoryview(data).cast("h")[1::2].tobytes()
    both = _samples(data)
    # (l + r) >> 1 cannot overflow 16 bits and rounds towards -inf like a shift in C
    mixed = array("h", map(_half_sum, both[0::2], both[1::2]))
    return _to_bytes(mixed)


def _half_sum(a: int, b: int) -> int:
    return (a + b) >> 1


# -- gain -----------------------------------------------------------------------


def volume_to_gain(percent: int) -> float:
    """Volume 0..100 % → amplitude factor (square law: 50 % ≈ -12 dB, 0 % silent)."""
    p = min(max(percent, 0), 100) / 100.0
    return p * p


class GainTable:
    """Software volume for S16: one lookup per sample through a 65536-entry table."""

    def __init__(self, gain: float) -> None:
        if not 0.0 <= gain <= 1.0:
            raise ValueError("gain must be within 0..1")
        self.gain = gain
        self._table: array[int] | None = None
        if 0.0 < gain < 1.0:
            # index = the sample's bits read as unsigned; value = the scaled signed sample
            self._table = array(
                "h", (round((u - 65536 if u >= 32768 else u) * gain) for u in range(65536))
            )

    def apply(self, data: bytes) -> bytes:
        if self.gain >= 1.0:
            return data
        if self.gain <= 0.0:
            return bytes(len(data))
        assert self._table is not None
        scaled = array("h", map(self._table.__getitem__, _samples(data, "H")))
        return _to_bytes(scaled)


# -- the microphone in the agent's input format ----------------------------------


class CaptureConverter:
    """16 kHz capture blocks → the agent's announced input format, for one stream.

    It keeps the resampler's filter history between blocks, so the agent gets
    the stream as if converted whole (no edge at every 250 ms block).
    """

    def __init__(self) -> None:
        self._fmt: AudioFormat | None = None
        self._resampler: Resampler | None = None

    def convert(self, pcm16k: bytes, fmt: AudioFormat) -> bytes:
        if fmt == PCM_16000:
            return pcm16k
        if fmt != self._fmt or self._resampler is None:
            self._fmt, self._resampler = fmt, Resampler(CAPTURE_RATE_HZ, fmt.rate_hz)
        pcm = self._resampler.process(pcm16k)
        return ulaw_encode(pcm) if fmt.encoding == "ulaw" else pcm
