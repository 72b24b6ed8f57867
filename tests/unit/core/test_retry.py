import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from device.core.retry import backoff_delay_s, retry_delay_s


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


BACKOFF = None  # the expected delay is the plain backoff


@pytest.mark.parametrize(
    ("retry_after_s", "expected_s"),
    [
        (None, BACKOFF),  # no header
        (0.0, BACKOFF),  # "now": no sooner than the backoff
        (3.0, 3.0),  # longer than the backoff: the server's figure
        (3600.0, 5.0),  # an hour: capped
        (math.inf, BACKOFF),  # not a figure
        (math.nan, BACKOFF),
        (-5.0, BACKOFF),
    ],
)
def test_retry_after_is_honoured_up_to_the_cap(retry_after_s: float | None, expected_s: float | None) -> None:
    backoff_s = backoff_delay_s(0, 1.0, 5.0, rng=random.Random(0))
    assert 0.8 <= backoff_s <= 1.2
    delay_s = retry_delay_s(0, 1.0, 5.0, retry_after_s, rng=random.Random(0))
    assert delay_s == (backoff_s if expected_s is BACKOFF else expected_s)


@given(
    st.integers(min_value=0, max_value=40),
    st.floats(min_value=0.1, max_value=3600),
    st.none() | st.floats(allow_nan=True, allow_infinity=True),
)
def test_the_retry_delay_is_never_above_the_cap(attempt: int, max_s: float, retry_after_s: float | None) -> None:
    delay_s = retry_delay_s(attempt, 0.1, max_s, retry_after_s)
    assert 0.0 <= delay_s <= max_s
