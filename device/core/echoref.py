"""What the speaker played, on the clock the microphone's blocks carry (pure: no threads, no I/O).

An echo canceller needs, for every microphone frame, the sound the speaker
was making then. Playback knows when each piece of audio it hands to ALSA
will be heard (write time plus the device's delay); :class:`EchoReference`
keeps that audio, at the capture rate, placed on ``time.monotonic()``, for
the last few seconds. The controller asks it for the span under a captured
block (:meth:`span`) and hands both to the canceller, which estimates the
rest of the echo path's delay itself (the room, the microphone's buffering).

Rules:

* A piece that starts within ``snap_s`` of where the previous one ended
  continues it: the delay ALSA reports, and when the worker reads the clock
  after a write, jitter by a few milliseconds from write to write, and each gap
  or overlap would be a jump of the echo's delay the canceller has to follow.
* :meth:`flushed` silences everything from that moment on: ALSA dropped it,
  the speaker never played it.
* What nothing was recorded for is silence (the speaker was quiet); what is
  older than ``keep_s`` is forgotten, and a span that reaches back beyond it
  is counted (:attr:`late_spans`): the controller fell that far behind.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from device.core.audioformat import CAPTURE_RATE_HZ

BYTES_PER_SAMPLE = 2
DEFAULT_KEEP_S = 4.0
DEFAULT_SNAP_S = 0.02


@dataclass(frozen=True)
class SpanInfo:
    """What :meth:`EchoReference.span` found: whether any of it was sound the speaker played."""

    pcm: bytes
    played_samples: int  # how many of its samples came from playback (not silence)


class EchoReference:
    """A ring of the last ``keep_s`` seconds the speaker played, S16_LE mono at ``rate_hz``."""

    def __init__(self, keep_s: float = DEFAULT_KEEP_S, snap_s: float = DEFAULT_SNAP_S,
                 rate_hz: int = CAPTURE_RATE_HZ) -> None:
        self.rate_hz = rate_hz
        self._size = int(keep_s * rate_hz)
        self._snap = round(snap_s * rate_hz)
        self._ring = bytearray(self._size * BYTES_PER_SAMPLE)
        self._played = bytearray(self._size)  # 1 where the sample came from playback
        self._end: int | None = None  # absolute index one past the newest sample written
        self._newest = 0  # the newest absolute index the ring holds (written or silenced)
        self.pieces = 0
        self.snapped = 0
        self.late_spans = 0

    def _index(self, t_s: float) -> int:
        return math.floor(t_s * self.rate_hz + 0.5)

    def played(self, heard_at_s: float, pcm: bytes) -> None:
        """``pcm`` (at :attr:`rate_hz`) is heard from ``heard_at_s`` on."""
        n = len(pcm) // BYTES_PER_SAMPLE
        if n == 0:
            return
        start = self._index(heard_at_s)
        if self._end is not None and abs(start - self._end) <= self._snap:
            if start != self._end:
                self.snapped += 1
            start = self._end
        if n > self._size:  # longer than the ring: only its end can be kept
            pcm = pcm[(n - self._size) * BYTES_PER_SAMPLE:]
            start += n - self._size
            n = self._size
        self._advance(start + n)
        self._write(start, pcm[: n * BYTES_PER_SAMPLE], 1)
        self._end = start + n
        self.pieces += 1

    def flushed(self, at_s: float) -> None:
        """Everything meant to be heard from ``at_s`` on was dropped: silence it."""
        start = self._index(at_s)
        if self._end is None or self._end <= start:
            self._end = None
            return
        stop = self._end
        first = max(start, stop - self._size)
        self._write(first, bytes((stop - first) * BYTES_PER_SAMPLE), 0)
        self._end = None  # what follows is placed where it is heard: nothing continues a dropped stream

    def span(self, end_s: float, samples: int) -> SpanInfo:
        """The ``samples`` heard up to ``end_s`` (silence where nothing played)."""
        stop = self._index(end_s)
        start = stop - samples
        out = bytearray(samples * BYTES_PER_SAMPLE)
        played = 0
        oldest = self._newest - self._size
        if start < oldest and self._end is not None:
            self.late_spans += 1
        lo, hi = max(start, oldest), min(stop, self._newest)
        for first, count in self._runs(lo, hi):
            pos = first % self._size
            dst = (first - start) * BYTES_PER_SAMPLE
            out[dst : dst + count * BYTES_PER_SAMPLE] = self._ring[pos * 2 : (pos + count) * 2]
            played += sum(self._played[pos : pos + count])
        return SpanInfo(bytes(out), played)

    # -- the ring ---------------------------------------------------------------------------------
    def _runs(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """[lo, hi) as runs that do not wrap around the ring."""
        runs = []
        while lo < hi:
            pos = lo % self._size
            count = min(hi - lo, self._size - pos)
            runs.append((lo, count))
            lo += count
        return runs

    def _advance(self, newest: int) -> None:
        """Make room up to ``newest``: what the ring held there (older audio) becomes silence."""
        if newest <= self._newest:
            return
        lo = max(self._newest, newest - self._size)
        self._clear(lo, newest)
        self._newest = newest

    def _clear(self, lo: int, hi: int) -> None:
        for first, count in self._runs(lo, hi):
            pos = first % self._size
            self._ring[pos * 2 : (pos + count) * 2] = bytes(count * 2)
            self._played[pos : pos + count] = bytes(count)

    def _write(self, start: int, pcm: bytes, played: int) -> None:
        oldest = self._newest - self._size
        n = len(pcm) // BYTES_PER_SAMPLE
        skip = max(0, oldest - start)  # older than the ring now holds
        start, pcm, n = start + skip, pcm[skip * 2 :], n - skip
        off = 0
        for first, count in self._runs(start, start + n):
            pos = first % self._size
            self._ring[pos * 2 : (pos + count) * 2] = pcm[off * 2 : (off + count) * 2]
            self._played[pos : pos + count] = bytes([played]) * count
            off += count


class CaptureClock:
    """When each microphone block really ended, from time stamps that jitter.

    A block is stamped when the read returned: later than the last sample was captured, by a
    scheduling delay that varies from block to block (~10 ms on a loaded machine). The canceller's
    reference must be as continuous as the microphone's samples: cut at jittering stamps, it would
    skip or repeat a few milliseconds at every block, and to the canceller the echo's delay would
    jump four times a second. So consecutive blocks are placed on one sample clock, anchored at the
    earliest stamp it has seen (the least delayed read), which creeps ``drift_ppm`` later per
    second to follow a sound card that runs slow; a block that is not the next one (the path
    skipped blocks), or a stamp earlier than the clock, anchors it afresh.
    """

    def __init__(self, rate_hz: int = CAPTURE_RATE_HZ, drift_ppm: float = 100.0,
                 reanchor_s: float = 0.05) -> None:
        self.rate_hz = rate_hz
        self._drift = drift_ppm * 1e-6
        self._reanchor_s = reanchor_s
        self._seq: int | None = None
        self._end_s = 0.0  # the placed end of the last block
        self.reanchors = 0

    def place(self, seq: int, samples: int, stamped_s: float) -> float:
        """The end time of block ``seq`` (``samples`` long, stamped at ``stamped_s``)."""
        duration_s = samples / self.rate_hz
        if self._seq is None or seq != self._seq + 1:
            end_s = stamped_s
            self.reanchors += self._seq is not None
        else:
            end_s = self._end_s + duration_s * (1.0 + self._drift)
            if stamped_s < end_s or stamped_s - end_s > self._reanchor_s:
                # earlier: a less delayed read than any before, so the clock was late;
                # far later: the microphone lost samples (an overrun) -- start from the stamp
                self.reanchors += stamped_s - end_s > self._reanchor_s
                end_s = stamped_s
        self._seq, self._end_s = seq, end_s
        return end_s


class EchoDelay:
    """How much later than ALSA says a sound is played the microphone's blocks carry its echo.

    What ALSA reports covers the device's buffer; the room, the microphone's own buffering and a
    sound server's streams come on top (100 to 400 ms on the bench's room through PulseAudio, a few
    milliseconds on a bare Pi). AEC3 finds that delay itself -- handing it a reference shifted by an
    estimate was tried and made things worse: each change of the estimate is a jump it must follow.
    So this is a diagnostic (the status's ``echo_delay_ms``, ``check``): the lag (10 ms steps) at
    which the microphone's frame levels follow the reference's best, over the last ``window_s`` in
    which the speaker played, taken when the match is clear (correlation >= ``min_correlation``)
    and the same twice running.
    """

    FRAME_S = 0.01

    def __init__(self, max_s: float = 0.5, window_s: float = 2.0, min_correlation: float = 0.6,
                 hysteresis_s: float = 0.02) -> None:
        self._max = round(max_s / self.FRAME_S)
        self._window = round(window_s / self.FRAME_S)
        self._min_corr = min_correlation
        self._hysteresis = hysteresis_s
        self._near: list[float] = []
        self._ref: list[float] = []
        self._candidate: int | None = None
        self._since = 0
        self.delay_s = 0.0
        self.correlation = 0.0
        self.changes = 0
        self.locked = False  # a clear estimate was seen

    def feed(self, near_dbfs: list[float], ref_dbfs: list[float]) -> bool:
        """One block's frame levels (microphone, and the reference as handed over); True when the shift moved."""
        self._near.extend(max(v, -80.0) for v in near_dbfs)
        self._ref.extend(max(v, -80.0) for v in ref_dbfs)
        keep = self._window + self._max
        del self._near[: max(0, len(self._near) - keep)]
        del self._ref[: max(0, len(self._ref) - keep)]
        self._since += len(near_dbfs)
        if self._since < 50 or len(self._near) < keep:
            return False
        self._since = 0
        if sum(1 for v in self._ref[-self._window:] if v > -50.0) < self._window // 3:
            return False  # too little playing to tell
        lag, corr = self._best_lag()
        self.correlation = corr
        if corr < self._min_corr:
            self._candidate = None
            return False
        if self._candidate != lag:
            self._candidate = lag
            return False
        self.locked = True
        new_s = max(0.0, lag * self.FRAME_S)
        if abs(new_s - self.delay_s) <= self._hysteresis:
            return False
        self.delay_s = new_s
        self._candidate = None
        self.changes += 1
        return True

    def _best_lag(self) -> tuple[int, float]:
        total, n = len(self._near), self._window
        near = self._near[total - n :]
        best = (0, -1.0)
        mean_n = sum(near) / n
        dn = [v - mean_n for v in near]
        sn = sum(v * v for v in dn) ** 0.5
        for lag in range(0, self._max):
            ref = self._ref[total - n - lag : total - lag]
            mean_r = sum(ref) / n
            dr = [v - mean_r for v in ref]
            sr = sum(v * v for v in dr) ** 0.5
            if sn == 0 or sr == 0:
                continue
            c = sum(a * b for a, b in zip(dn, dr, strict=True)) / (sn * sr)
            if c > best[1]:
                best = (lag, c)
        return best


__all__ = ["CaptureClock", "EchoDelay", "EchoReference", "SpanInfo"]
