"""Benchmark: log lines and memory of a session flooded with ever-new unknown message types.

A hostile service (a ``websockets`` server in this process) starts a
conversation, then sends frames of a new unknown ``type`` each, as fast as the
device reads them, for ``--seconds`` (15 by default); then an agent response
that ends the flood. A fresh Python process (the device code from ``--root``,
this checkout by default) runs a real :class:`~device.drivers.session.Session` with
the daemon's logging (:func:`device.drivers.logs.setup_logging`, stderr) and reports
its RSS before, its peak (``VmHWM``) and its RSS after the conversation
ended (session dropped, garbage collected); the log lines are counted on its stderr.

Run: ``.venv/bin/python tests/bench/bench_log_flood.py [--seconds 15] [--root DIR]``
or ``.venv/bin/python -m pytest tests/bench/bench_log_flood.py -s``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import ServerConnection, serve

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SECONDS = 15.0
WAIT_S = 120.0
LAST_WORDS = "the flood is over"

# The child reads its settings from stdin; it logs as the daemon does (stderr, timestamps).
CHILD = r"""
import gc, json, queue, sys
from device.core.config import AgentConfig, SessionConfig, ToolsConfig
from device.drivers.logs import setup_logging
from device.core.protocol import AgentResponse, SessionEnded
from device.drivers.session import Session
from device.drivers.tools import ToolRegistry

def status_kib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

cfg = json.loads(sys.stdin.read())
setup_logging("info", journald=False)
events = queue.Queue()
agent = AgentConfig(agent_id="a", base_url=cfg["base_url"], connection="public", connect_timeout_s=10.0)
session = Session(agent, SessionConfig(), ToolRegistry(ToolsConfig(), None), None, events.put)
gc.collect()
before = status_kib("VmRSS")
session.start()
outcome = "no end"
try:
    while True:
        e = events.get(timeout=cfg["wait_s"])
        if isinstance(e, AgentResponse) and e.text == cfg["last_words"]:
            outcome = "survived"
            break
        if isinstance(e, SessionEnded):
            outcome = f"ended: {e.outcome.name}"
            break
finally:
    session.stop()
stats = session.stats
row = {"outcome": outcome, "unknown_events": stats.get("unknown_events", 0),
       "counter_keys": len(stats), "rss_before_kib": before, "max_rss_kib": status_kib("VmHWM")}
del session, stats, e
gc.collect()
row["rss_after_kib"] = status_kib("VmRSS")
print(json.dumps(row))
"""


class FloodServer:
    """Starts a conversation, floods it with new unknown types for ``seconds``, then says LAST_WORDS."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.sent = 0
        # No keepalive pings: a device too busy to answer them in time would only end the measurement early.
        self._server = serve(self._handler, "127.0.0.1", 0, compression=None, max_size=None, ping_interval=None)
        self.port = self._server.socket.getsockname()[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="bench-flood-server")
        self._thread.start()

    def _handler(self, ws: ServerConnection) -> None:
        try:
            ws.recv(timeout=WAIT_S)  # the initiation
            ws.send(json.dumps({
                "type": "conversation_initiation_metadata",
                "conversation_initiation_metadata_event": {
                    "conversation_id": "conv_flood", "agent_output_audio_format": "pcm_16000",
                    "user_input_audio_format": "pcm_16000",
                },
            }))
            end_s = time.monotonic() + self.seconds
            while time.monotonic() < end_s:
                for _ in range(100):
                    ws.send(f'{{"type": "flood_{self.sent}"}}')
                    self.sent += 1
            ws.send(json.dumps({"type": "agent_response", "agent_response_event": {"agent_response": LAST_WORDS}}))
            while True:  # until the device closes
                ws.recv(timeout=WAIT_S)
        except (ConnectionClosed, TimeoutError):
            pass

    def close(self) -> None:
        self._server.shutdown()
        self._thread.join(WAIT_S)


def measure(seconds: float, root: Path) -> dict[str, Any]:
    server = FloodServer(seconds)
    try:
        cfg = {"base_url": f"http://127.0.0.1:{server.port}", "wait_s": WAIT_S + seconds, "last_words": LAST_WORDS}
        out = subprocess.run(
            [sys.executable, "-c", CHILD], input=json.dumps(cfg), cwd=root, capture_output=True, text=True,
            timeout=WAIT_S + seconds + 60, check=False,
        )
    finally:
        server.close()
    if out.returncode != 0:
        raise RuntimeError(f"the device process failed ({out.returncode}): {out.stderr[-2000:]}")
    row: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    row["frames_sent"] = server.sent
    row["log_lines"] = len(out.stderr.splitlines())
    row["log_bytes"] = len(out.stderr.encode())
    row["seconds"] = seconds
    return row


def report(row: dict[str, Any], root: Path) -> str:
    machine = f"{platform.node()} ({platform.machine()}, Python {platform.python_version()})"
    mib = {k: row[k] / 1024 for k in ("rss_before_kib", "max_rss_kib", "rss_after_kib")}
    return "\n".join([
        f"unknown-type flood against one session, {machine}; device code from {root}",
        f"  {row['frames_sent']} frames of new types in {row['seconds']:g} s; the device counted "
        f"{row['unknown_events']} ({row['counter_keys']} counters); {row['outcome']}",
        f"  log: {row['log_lines']} lines, {row['log_bytes']} bytes",
        f"  RSS: {mib['rss_before_kib']:.1f} MiB before, {mib['max_rss_kib']:.1f} MiB peak, "
        f"{mib['rss_after_kib']:.1f} MiB after the conversation",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, help="how long the flood lasts")
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout whose device/ is measured")
    args = parser.parse_args(argv)
    print(report(measure(args.seconds, args.root), args.root))
    return 0


@pytest.mark.bench
def test_log_flood_benchmark() -> None:
    row = measure(DEFAULT_SECONDS, ROOT)
    print()
    print(report(row, ROOT))
    assert row["outcome"] == "survived"
    assert row["unknown_events"] == row["frames_sent"]
    assert row["log_lines"] < 100
    assert row["counter_keys"] < 100


if __name__ == "__main__":
    sys.exit(main())
