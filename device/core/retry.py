"""Capped, jittered exponential backoff (pure)."""

from __future__ import annotations

import math
import random


def backoff_delay_s(
    attempt: int,
    initial_s: float = 1.0,
    max_s: float = 60.0,
    jitter: float = 0.2,
    rng: random.Random | None = None,
) -> float:
    """Delay before retry number ``attempt`` (0-based): initial·2^n, capped, ±jitter."""
    if attempt < 0:
        raise ValueError("attempt must be >= 0")
    base = min(max_s, initial_s * (2 ** min(attempt, 32)))
    r = (rng or random).uniform(-jitter, jitter)
    return max(0.0, min(max_s, base * (1.0 + r)))


def retry_delay_s(
    attempt: int,
    initial_s: float,
    max_s: float,
    retry_after_s: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Delay before retry ``attempt``: the backoff, or the server's Retry-After when longer, never over ``max_s``.

    A server asking for an hour (or for ever) must not hold a kiosk in its error state that long:
    ``max_s`` (``session.retry_max_s``) is the longest the device waits, whatever the server says.
    """
    delay_s = backoff_delay_s(attempt, initial_s, max_s, rng=rng)
    if retry_after_s is not None and math.isfinite(retry_after_s):
        delay_s = max(delay_s, retry_after_s)
    return min(delay_s, max_s)
