"""Suite-wide guards: no test may leave a thread running."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

# No wall-clock limits (the machines are shared, and the ARM check runs the unit
# tests under qemu, 5-10x slower): no per-example deadline, no speed health check.
settings.register_profile("no-deadline", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("no-deadline")

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


@pytest.fixture(autouse=True)
def restore_root_logging() -> Iterator[None]:
    """Tests that run the CLI in-process call setup_logging(); undo it afterwards.

    Otherwise the root logger keeps a handler bound to a stream pytest has
    already closed, and later tests print 'Logging error' noise.
    """
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
