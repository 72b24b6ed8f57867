"""Suite-wide guards: no test may leave a thread running."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

# Threads started by libraries that own them for the process lifetime.
_ALLOWED_PREFIXES = ("pytest_timeout", "asyncio_")


def _foreign(before: set[threading.Thread]) -> list[threading.Thread]:
    return [
        t
        for t in threading.enumerate()
        if t not in before and t.is_alive() and not t.name.startswith(_ALLOWED_PREFIXES)
    ]


@pytest.fixture(autouse=True)
def no_thread_left_running(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves a thread behind (waits up to 2 s for stragglers)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 2.0
    left = _foreign(before)
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = _foreign(before)
    if left:
        names = ", ".join(f"{t.name} (daemon={t.daemon})" for t in left)
        pytest.fail(f"test left thread(s) running: {names}", pytrace=False)
