"""Shared pieces of the audio integration tests (no tests here): a playback event collector, sound analysis."""

from __future__ import annotations

import array
from collections.abc import Callable

from device.core.audioevents import PlaybackEvent
from tests.support import Collector

TIMEOUT_S = 20.0


class Events(Collector[PlaybackEvent]):
    """Collects playback events; tests wait on them instead of sleeping."""

    def wait_for(self, pred: Callable[[PlaybackEvent], bool], timeout_s: float = TIMEOUT_S) -> PlaybackEvent:
        return self.wait_first(pred, timeout_s, what=lambda: f"no such event; got {[e.kind for e in self.items]}")

    def kind(self, kind: str, reply_id: int | None = None) -> PlaybackEvent:
        return self.wait_for(lambda e: e.kind == kind and (reply_id is None or e.reply_id == reply_id))

    def of(self, kind: str) -> list[PlaybackEvent]:
        return self.matching(lambda e: e.kind == kind)


def loud_samples(pcm: bytes, threshold: int = 1000) -> list[int]:
    a = array.array("h", pcm)
    return [i for i, x in enumerate(a) if abs(x) > threshold]


def sound_spans(pcm: bytes, rate_hz: int, threshold: int = 200, gap_s: float = 0.005) -> list[tuple[int, int]]:
    """(first, end) sample of each stretch of sound; gaps shorter than ``gap_s`` (zero crossings) are joined."""
    spans: list[tuple[int, int]] = []
    gap = int(gap_s * rate_hz)
    for i in loud_samples(pcm, threshold):
        if spans and i - spans[-1][1] <= gap:
            spans[-1] = (spans[-1][0], i + 1)
        else:
            spans.append((i, i + 1))
    return spans
