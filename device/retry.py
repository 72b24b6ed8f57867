"""Capped, jittered exponential backoff (pure)."""

from __future__ import annotations

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
