import random

import pytest

from device.retry import backoff_delay_s


def test_grows_exponentially_and_is_capped() -> None:
    delays = [backoff_delay_s(n, 1.0, 30.0, jitter=0.0) for n in range(8)]
    assert delays == [1, 2, 4, 8, 16, 30, 30, 30]


def test_jitter_stays_within_bounds() -> None:
    rng = random.Random(1)
    for n in range(50):
        d = backoff_delay_s(n % 6, 1.0, 10.0, jitter=0.2, rng=rng)
        base = min(10.0, 2 ** (n % 6))
        assert 0.8 * base - 1e-9 <= d <= min(10.0, 1.2 * base) + 1e-9


def test_negative_attempt_refused() -> None:
    with pytest.raises(ValueError):
        backoff_delay_s(-1)
