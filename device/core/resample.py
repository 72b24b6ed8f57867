"""The one sample-rate converter of the firmware (pure: no threads, no I/O, no numpy).

A polyphase FIR resampler for S16_LE mono by the rational factor
``to_hz / from_hz``: a Kaiser-windowed sinc low-pass designed once per pair of
rates (cached), passband to 40 % of the lower rate, stopband from 50 % of it
(its Nyquist frequency) with ≥ 60 dB rejection, so nothing above the lower
rate's Nyquist folds back (a 6 kHz tone taken from 16 to 8 kHz is rejected by
more than 60 dB; the linear interpolators this replaced let it through at
-8 dB). Each output sample is one dot product of a filter phase with the
input, computed by ``sum(map(mul, …))`` so the inner loop runs in C.

:class:`Resampler` is the streaming form (it keeps the filter's history
between blocks, so a stream cut into blocks comes out as if converted
whole); :func:`resample` converts a whole clip.

Which path converts what (see "Audio" in docs/hardware.md): agent audio for the speaker
goes to ALSA at the agent's rate and ALSA's ``plug`` converts it (with the
``speexrate`` converter of libasound2-plugins when ``defaults.pcm.rate_converter``
selects it); this module converts the microphone's 16 kHz blocks when the
agent asks for another input format, earcons and bench/test WAV files, and
the emulator's audio.
"""

from __future__ import annotations

import array
import functools
import math
import sys
from dataclasses import dataclass
from operator import mul

PASS_FRACTION = 0.40  # passband edge, fraction of the lower rate
STOP_FRACTION = 0.50  # stopband edge: the lower rate's Nyquist frequency
CHUNK_SAMPLES = 4096  # whole clips are fed in pieces of this many samples
STOPBAND_DB = 65.0  # design target (≥ 60 dB measured, see tests/unit/audio/test_resample.py)


@dataclass(frozen=True)
class _Plan:
    up: int
    down: int
    taps: int  # per phase
    phases: tuple[tuple[float, ...], ...]  # phase p: coefficients for x[base-taps+1 … base], oldest first


def _bessel_i0(x: float) -> float:
    total, term, k = 1.0, 1.0, 1
    while term > 1e-12 * total:
        term *= (x / (2 * k)) ** 2
        total += term
        k += 1
    return total


@functools.lru_cache(maxsize=32)
def _plan(from_hz: int, to_hz: int) -> _Plan:
    g = math.gcd(from_hz, to_hz)
    up, down = to_hz // g, from_hz // g
    proto_hz = from_hz * up  # the filter runs at the common multiple rate
    low_hz = min(from_hz, to_hz)
    pass_hz, stop_hz = PASS_FRACTION * low_hz, STOP_FRACTION * low_hz
    transition = 2 * math.pi * (stop_hz - pass_hz) / proto_hz
    a = STOPBAND_DB
    beta = 0.1102 * (a - 8.7)
    taps = max(2, math.ceil(((a - 7.95) / (2.285 * transition) + 1) / up))  # per phase
    n = taps * up
    fc = (pass_hz + stop_hz) / 2 / proto_hz  # cycles per prototype sample
    centre = (n - 1) / 2
    i0_beta = _bessel_i0(beta)
    h = []
    for i in range(n):
        t = i - centre
        sinc = 2 * fc if t == 0 else math.sin(2 * math.pi * fc * t) / (math.pi * t)
        w = _bessel_i0(beta * math.sqrt(max(0.0, 1 - (2 * i / (n - 1) - 1) ** 2))) / i0_beta
        h.append(up * sinc * w)  # gain `up` restores the level lost to zero stuffing
    # Output j sits at prototype time j*down: input base = t // up, phase = t % up, and
    # y = sum_k h[phase + k*up] * x[base - k]; stored oldest input first for one dot product.
    phases = tuple(tuple(h[p + k * up] for k in reversed(range(taps))) for p in range(up))
    return _Plan(up, down, taps, phases)


def _samples(pcm: bytes) -> array.array[int]:
    a = array.array("h")
    a.frombytes(pcm[: len(pcm) - len(pcm) % 2])
    if sys.byteorder == "big":  # pragma: no cover
        a.byteswap()
    return a


def _to_bytes(a: array.array[int]) -> bytes:
    if sys.byteorder == "big":  # pragma: no cover
        a = array.array("h", a)
        a.byteswap()
    return a.tobytes()


def _clip(v: float) -> int:
    r = round(v)
    return 32767 if r > 32767 else -32768 if r < -32768 else r


class Resampler:
    """Streaming S16_LE mono conversion ``from_hz`` → ``to_hz``; blocks in, blocks out."""

    def __init__(self, from_hz: int, to_hz: int) -> None:
        if from_hz <= 0 or to_hz <= 0:
            raise ValueError(f"rates must be positive, got {from_hz} and {to_hz}")
        self.from_hz, self.to_hz = from_hz, to_hz
        self._plan = _plan(from_hz, to_hz) if from_hz != to_hz else None
        taps = self._plan.taps if self._plan else 1
        self._x: list[int] = [0] * (taps - 1)  # history: the last taps-1 input samples
        self._t = 0  # prototype time of the next output, relative to the first sample in _x after history

    @property
    def delay_s(self) -> float:
        """The filter's group delay: output lags input by this much (the filter is linear-phase)."""
        if self._plan is None:
            return 0.0
        return (self._plan.taps * self._plan.up - 1) / 2 / (self.from_hz * self._plan.up)

    def process_samples(self, new: array.array[int] | list[int]) -> array.array[int]:
        plan = self._plan
        if plan is None:
            return array.array("h", new)
        x = self._x
        x.extend(new)
        up, down, taps, phases = plan.up, plan.down, plan.taps, plan.phases
        out = array.array("h")
        t = self._t
        hist = taps - 1
        n = len(x)
        append = out.append
        while True:
            base = t // up + hist  # index in x of the newest input sample this output uses
            if base >= n:
                break
            start = base - hist
            append(_clip(sum(map(mul, phases[t % up], x[start : base + 1]))))
            t += down
        consumed = t // up  # whole input samples no output will need as its newest any more
        drop = min(consumed, n - hist)
        if drop > 0:
            del x[:drop]
            t -= drop * up
        self._t = t
        return out

    def process(self, pcm: bytes) -> bytes:
        """Convert the next piece of the stream (any length; an odd trailing byte is ignored)."""
        if self._plan is None:
            return pcm[: len(pcm) - len(pcm) % 2]
        return _to_bytes(self.process_samples(_samples(pcm)))


def resample_samples(samples: array.array[int], from_hz: int, to_hz: int) -> array.array[int]:
    """A whole clip of int16 samples at ``to_hz``: ``round(len * to / from)`` samples, delay removed."""
    if from_hz == to_hz or not samples:
        return array.array("h", samples)
    r = Resampler(from_hz, to_hz)
    want = round(len(samples) * to_hz / from_hz)
    lag = round(r.delay_s * to_hz)
    tail = [0] * (math.ceil(r.delay_s * from_hz) + 2)
    out = array.array("h")
    for i in range(0, len(samples), CHUNK_SAMPLES):  # in pieces: the history list stays short
        out.extend(r.process_samples(samples[i : i + CHUNK_SAMPLES]))
    out.extend(r.process_samples(tail))
    return out[lag : lag + want]


def resample(pcm: bytes, from_hz: int, to_hz: int) -> bytes:
    """A whole S16_LE mono clip at ``to_hz`` (time-aligned with the input; see :func:`resample_samples`)."""
    if from_hz <= 0 or to_hz <= 0:
        raise ValueError(f"rates must be positive, got {from_hz} and {to_hz}")
    if from_hz == to_hz:
        return pcm[: len(pcm) - len(pcm) % 2]
    return _to_bytes(resample_samples(_samples(pcm), from_hz, to_hz))


__all__ = ["Resampler", "resample", "resample_samples"]
