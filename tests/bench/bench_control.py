"""Benchmark: control-socket request latency while hostile local clients hold connections.

A real :class:`~device.drivers.control.ControlServer` on a Unix socket, with a
controller stand-in that answers at once. Hostile clients, kept up by one
thread that reconnects them whenever the server closes them:

- ``idle``: connect and never send anything;
- ``nonreading``: send a burst of ``help`` requests and never read an answer.

A well-behaved client (``voice-appliance ctl``'s :func:`~device.drivers.control.request`,
one connection per request) then sends ``status`` requests one after another;
the figures are its latency (median, p95, max) and how many requests failed
(refused, error answer or timeout).

Run: ``.venv/bin/python tests/bench/bench_control.py [--requests 40] [--hostile 16]``
or ``.venv/bin/python -m pytest tests/bench/bench_control.py -s``.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from device.drivers.control import ControlError, ControlServer, request  # noqa: E402

REQUEST_TIMEOUT_S = 10.0
SCENARIO_BUDGET_S = 90.0  # the unfixed server can take seconds per request; stop measuring after this
BURST = b"help\n" * 400  # ~170 KB of answers: more than a Unix socket buffers


def fake_status() -> dict[str, object]:
    """About the size of the daemon's real status line."""
    return {"state": "idle", "counters": {f"counter_{i}": i * 1000 for i in range(40)}, "version": "bench"}


def fake_post(event: object) -> bool:
    reply = getattr(event, "reply", None)
    if reply is not None:
        reply(True, "idle")
    return True


class Hostiles:
    """Keeps ``idle`` + ``nonreading`` hostile connections open from one thread."""

    def __init__(self, path: str, idle: int, nonreading: int) -> None:
        self.path = path
        self.kinds = ["idle"] * idle + ["nonreading"] * nonreading
        self.socks: list[socket.socket | None] = [None] * len(self.kinds)
        self.reconnects = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-hostiles")

    def __enter__(self) -> Hostiles:
        for i in range(len(self.kinds)):
            self._connect(i)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        for s in self.socks:
            if s is not None:
                s.close()

    def _connect(self, i: int) -> None:
        old = self.socks[i]
        if old is not None:
            old.close()
            self.reconnects += 1
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(self.path)
        except OSError:
            s.close()
            self.socks[i] = None
            return
        if self.kinds[i] == "nonreading":
            with contextlib.suppress(OSError):
                s.send(BURST)
        self.socks[i] = s

    def _closed_by_server(self, i: int, s: socket.socket) -> bool:
        if self.kinds[i] == "idle":
            try:
                return s.recv(65536) == b""  # idle clients may read: only to notice the close
            except BlockingIOError:
                return False
            except OSError:
                return True
        try:  # a non-reading client notices the close when a send fails
            s.send(b"help\n")
            return False
        except BlockingIOError:
            return False
        except OSError:
            return True

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            for i, s in enumerate(self.socks):
                if s is None or self._closed_by_server(i, s):
                    self._connect(i)


def measure(path: str, requests: int) -> dict[str, object]:
    latencies_ms: list[float] = []
    failures = 0
    started = time.monotonic()
    for _ in range(requests):
        if time.monotonic() - started > SCENARIO_BUDGET_S:
            break
        t0 = time.perf_counter()
        try:
            ok, _ = request(path, "status", REQUEST_TIMEOUT_S)
        except ControlError:
            ok = False
        dt_ms = (time.perf_counter() - t0) * 1000
        if ok:
            latencies_ms.append(dt_ms)
        else:
            failures += 1
    return {"ok": len(latencies_ms), "failed": failures, "latencies_ms": latencies_ms}


def run(requests: int, hostile: int) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    scenarios = [
        ("none", 0, 0),
        ("idle", hostile, 0),
        ("nonreading", 0, hostile // 2),
        ("nonreading", 0, hostile),
        ("both", hostile, hostile),
    ]
    for name, idle, nonreading in scenarios:
        with tempfile.TemporaryDirectory() as tmp:
            path = str(Path(tmp) / "control.sock")
            srv = ControlServer(path, "", fake_post, fake_status)
            srv.start()
            try:
                with Hostiles(path, idle, nonreading) as hostiles:
                    time.sleep(0.3)  # let the server see them all
                    row = measure(path, requests)
                    row["reconnects"] = hostiles.reconnects
            finally:
                srv.close()
        row.update(scenario=name, idle=idle, nonreading=nonreading)
        rows.append(row)
    return rows


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def table(rows: list[dict[str, object]]) -> str:
    lines = [
        f"{'scenario':<11} {'idle':>4} {'nonrd':>5} {'ok':>4} {'fail':>4} {'median ms':>9} {'p95 ms':>8} "
        f"{'max ms':>8} {'hostile reconnects':>18}"
    ]
    for r in rows:
        lat: list[float] = r["latencies_ms"]  # type: ignore[assignment]
        med = statistics.median(lat) if lat else float("nan")
        lines.append(
            f"{r['scenario']:<11} {r['idle']:>4} {r['nonreading']:>5} {r['ok']:>4} {r['failed']:>4} {med:>9.2f} "
            f"{pct(lat, 0.95):>8.2f} {max(lat, default=float('nan')):>8.2f} {r['reconnects']:>18}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--hostile", type=int, default=16, help="idle and non-reading clients, each")
    args = parser.parse_args(argv)
    rows = run(args.requests, args.hostile)
    print(f"control-socket latency, {platform.node()} ({platform.machine()}, Python {platform.python_version()})")
    print(table(rows))
    return 0


@pytest.mark.bench
def test_control_benchmark() -> None:
    rows = run(20, 16)
    print()
    print(table(rows))
    for r in rows:
        assert r["failed"] == 0, f"{r['scenario']}: requests failed while hostile clients were connected"


if __name__ == "__main__":
    sys.exit(main())
