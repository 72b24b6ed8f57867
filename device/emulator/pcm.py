"""Sample-level helpers for the emulator (pure): μ-law, resampling, WAV.

PCM is signed 16-bit little-endian mono throughout, as in the protocol.
``audioop`` is deprecated (removed in Python 3.13), so μ-law goes through
lookup tables built here.
"""

from __future__ import annotations

import io
import struct
import sys
import wave
from array import array

from device.core.audioformat import AudioFormat
from device.core.convert import ulaw_decode, ulaw_encode
from device.core.resample import resample as _resample


def _samples(pcm: bytes) -> array[int]:
    """``pcm`` (S16LE) as an int array; a trailing odd byte is ignored."""
    a = array("h")
    a.frombytes(pcm[: len(pcm) - (len(pcm) % 2)])
    if sys.byteorder == "big":  # pragma: no cover - the Pi and x86 are little-endian
        a.byteswap()
    return a


def _to_bytes(a: array[int]) -> bytes:
    if sys.byteorder == "big":  # pragma: no cover
        a = array("h", a)
        a.byteswap()
    return a.tobytes()


def resample(pcm: bytes, from_hz: int, to_hz: int) -> bytes:
    """S16LE mono at another rate: the firmware's one resampler (:mod:`device.core.resample`)."""
    return _resample(pcm, from_hz, to_hz)


def encode(pcm: bytes, rate_hz: int, fmt: AudioFormat) -> bytes:
    """S16LE at ``rate_hz`` → bytes in the wire format ``fmt``."""
    converted = resample(pcm, rate_hz, fmt.rate_hz)
    return ulaw_encode(converted) if fmt.encoding == "ulaw" else converted


def to_pcm(data: bytes, fmt: AudioFormat) -> bytes:
    """Wire bytes in ``fmt`` → S16LE at ``fmt.rate_hz``."""
    return ulaw_decode(data) if fmt.encoding == "ulaw" else data[: len(data) - (len(data) % 2)]


def peak(pcm: bytes) -> int:
    """Largest absolute sample value (0 for silence)."""
    a = _samples(pcm)
    return max((abs(s) for s in a), default=0)


def wav_bytes(pcm: bytes, rate_hz: int) -> bytes:
    """A complete mono 16-bit WAV file holding ``pcm``."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate_hz)
        w.writeframes(pcm[: len(pcm) - (len(pcm) % 2)])
    return buf.getvalue()


def parse_wav(data: bytes) -> tuple[bytes, int]:
    """(S16LE mono PCM, rate) from a WAV file.

    Tolerates the streaming header espeak-ng writes to stdout (sizes of
    0x7fffffff): the data chunk runs to the end of what is there.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE file")
    pos = 12
    rate_hz = 0
    channels = 0
    bits = 0
    while pos + 8 <= len(data):
        chunk_id = data[pos : pos + 4]
        (size,) = struct.unpack("<I", data[pos + 4 : pos + 8])
        body_start = pos + 8
        if chunk_id == b"fmt ":
            fmt_tag, channels, rate_hz, _byte_rate, _align, bits = struct.unpack(
                "<HHIIHH", data[body_start : body_start + 16]
            )
            if fmt_tag != 1:
                raise ValueError(f"WAV encoding {fmt_tag} is not PCM")
        elif chunk_id == b"data":
            if not rate_hz:
                raise ValueError("WAV data before its fmt chunk")
            if channels != 1 or bits != 16:
                raise ValueError(f"WAV is {channels} channel(s) of {bits} bits; need mono 16-bit")
            body = data[body_start : body_start + size]
            return body[: len(body) - (len(body) % 2)], rate_hz
        pos = body_start + size + (size % 2)
    raise ValueError("WAV file has no data chunk")
