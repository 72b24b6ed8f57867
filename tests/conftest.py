"""Suite-wide guards: no test may leave a thread or a child process running; in CI, no test may skip.

Also the tiers: every test under tests/system is marked ``system``; a run that leaves the
``realtime`` tests out (the fast tier) draws fewer hypothesis examples per property.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from tests.support import self_signed_cert

# No wall-clock limits (the machines are shared, and the ARM check runs the unit
# tests under qemu, 5-10x slower): no per-example deadline, no speed health check.
settings.register_profile("no-deadline", deadline=None, suppress_health_check=[HealthCheck.too_slow])
# The fast tier's share of the examples: the same properties, a quarter of the search (tests.support.examples).
settings.register_profile("fast", settings.get_profile("no-deadline"), max_examples=25)
settings.load_profile("no-deadline")

SYSTEM_TESTS = Path(__file__).resolve().parent / "system"


def _leaves_out_realtime(markexpr: str) -> bool:
    """Whether ``-m markexpr`` deselects a test marked only ``realtime``."""
    if not markexpr:
        return False
    from _pytest.mark.expression import Expression  # the parser -m itself uses

    try:
        expression = Expression.compile(markexpr)
    except Exception:  # SyntaxError here, ParseError in older pytest
        return False  # pytest itself reports the bad expression
    return not expression.evaluate(lambda name, **_: name == "realtime")


def pytest_configure(config: pytest.Config) -> None:
    # An explicit --hypothesis-profile wins; the full run (CI) keeps every example.
    if config.getoption("hypothesis_profile", None) is None and _leaves_out_realtime(config.option.markexpr):
        settings.load_profile("fast")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/system boots systemd or builds a Debian root: ``system``, whatever the module says."""
    for item in items:
        if item.path.is_relative_to(SYSTEM_TESTS):
            item.add_marker(pytest.mark.system)

# Threads started by libraries that own them for the process lifetime.
_ALLOWED_PREFIXES = ("pytest_timeout", "asyncio_")


def _foreign(before: set[threading.Thread]) -> list[threading.Thread]:
    return [
        t
        for t in threading.enumerate()
        if t not in before and t.is_alive() and not t.name.startswith(_ALLOWED_PREFIXES)
    ]


# .ci/run sets this: every tool a skip could be waiting for is installed by
# provisioning/dev.sh, so a skip in CI means a missing install step, and a green
# run would claim more than it proved.
FAIL_ON_SKIP_ENV = "VOICE_APPLIANCE_TEST_FAIL_ON_SKIP"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Turn a skip into a failure that names the skip's reason, when FAIL_ON_SKIP_ENV is 1."""
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or os.environ.get(FAIL_ON_SKIP_ENV) != "1" or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"skipped, and {FAIL_ON_SKIP_ENV}=1 makes a skip a failure: {reason}"


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


def _children() -> dict[int, str]:
    """Live child processes of this process: pid → command line (zombies excluded)."""
    pids: set[int] = set()
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as f:
                pids.update(int(p) for p in f.read().split())
        except OSError:
            continue  # the thread ended meanwhile
    out = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rpartition(")")[2].split()[0] == "Z":
                    continue  # exited, only not yet reaped: nothing runs
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                out[pid] = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
    return out


@pytest.fixture(autouse=True)
def no_process_left_running() -> Iterator[None]:
    """Fail a test that leaves a child process behind (a sound server, a recorder; waits up to 2 s)."""
    before = set(_children())
    yield
    deadline = time.monotonic() + 2.0
    left = {p: c for p, c in _children().items() if p not in before}
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = {p: c for p, c in _children().items() if p not in before}
    if left:
        names = ", ".join(f"{c or '?'} (pid {p})" for p, c in sorted(left.items()))
        pytest.fail(f"test left process(es) running: {names}", pytrace=False)


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


@pytest.fixture(scope="session")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate and key for 127.0.0.1."""
    return self_signed_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture(autouse=True)
def close_every_registry(monkeypatch: pytest.MonkeyPatch, no_process_left_running: None) -> Iterator[None]:
    """Close each ToolRegistry a test made: it may hold a Python tool's process started ahead.

    It asks for the process-leak guard so that the guard is torn down after it, once the
    registries have closed.
    """
    from device.drivers.tools import ToolRegistry

    made: list[ToolRegistry] = []
    init = ToolRegistry.__init__

    def recording_init(self: ToolRegistry, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(ToolRegistry, "__init__", recording_init)
    yield
    for registry in made:
        registry.close()
