"""The room's level between words, for a voice gate in babble (pure: no I/O, no threads).

webrtcvad calls four-talker babble speech: in a hall it hears every pause as speech, so a voice
gate never closes (tests/bench/bench_babble_gate.py: 0 of 20 turns closed within 1.5 s at 10 dB
SNR). The user at the kiosk is nearer, so louder, than the crowd: :class:`NoiseFloor` tracks a
low percentile of the last seconds of 10 ms frame levels, and the gate counts a frame as the
user's speech only when it is also ``gate.speech_margin_db`` above that floor.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable

SILENCE_DBFS = -120.0


class NoiseFloor:
    """A low percentile (``percentile``) of the last ``window_frames`` frame levels (dBFS)."""

    def __init__(self, window_frames: int = 400, percentile: float = 20.0) -> None:
        if window_frames < 1 or not 0.0 <= percentile <= 100.0:
            raise ValueError("window_frames >= 1 and percentile in 0..100")
        self._levels: deque[float] = deque(maxlen=window_frames)
        self._percentile = percentile
        self._floor = SILENCE_DBFS

    def add(self, levels: Iterable[float]) -> None:
        """Frames heard (in order); the floor is recomputed once per call (once per block)."""
        self._levels.extend(levels)
        if self._levels:
            ordered = sorted(self._levels)
            rank = min(len(ordered) - 1, max(0, math.ceil(self._percentile / 100 * len(ordered)) - 1))
            self._floor = ordered[rank]

    @property
    def floor_dbfs(self) -> float:
        return self._floor

    def reset(self) -> None:
        self._levels.clear()
        self._floor = SILENCE_DBFS
