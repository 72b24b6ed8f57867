"""Benchmark: peak memory (RSS) of a signed-URL fetch by the size of the service's reply.

A local HTTP server answers the signed-URL request with a JSON body padded to
each size; a fresh Python process (the device code from ``--root``, this
checkout by default) fetches it once with :class:`~device.drivers.agent_http.AgentHttp`
and reports its peak RSS (``VmHWM``: ``ru_maxrss`` keeps the parent's peak
across exec) and the outcome. ``--root`` may point at an older checkout to
measure the same thing before a change.

Run: ``.venv/bin/python tests/bench/bench_signed_url_rss.py [--sizes 1024,65536,62914560] [--root DIR]``
or ``.venv/bin/python -m pytest tests/bench/bench_signed_url_rss.py -s``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(ROOT))

from tests.support import LocalHttp, QuietHandler  # noqa: E402

DEFAULT_SIZES = (1024, 64 * 1024, 60 * 1024 * 1024)

CHILD = r"""
import json, sys
from device.drivers.agent_http import AgentHttp, AgentHttpError
from device.core.config import AgentConfig
from device.drivers.secrets import Secret

cfg = AgentConfig(agent_id="a", base_url=sys.argv[1], http_timeout_s=60.0)
http = AgentHttp(cfg, Secret("bench-key", "bench"), attempts=1)
try:
    http.fetch_signed_url()
    outcome = "accepted"
except AgentHttpError as e:
    outcome = "refused: " + e.outcome.name
with open("/proc/self/status") as f:
    peak_kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
print(json.dumps({"outcome": outcome, "max_rss_kib": peak_kib}))
"""


class BodyServer(LocalHttp):
    """Answers every GET with a signed URL padded to ``size`` bytes of JSON."""

    def __init__(self) -> None:
        class Handler(QuietHandler):
            def do_GET(self) -> None:
                size = server.size
                body = {"signed_url": "ws://127.0.0.1:1/v1/convai/conversation?agent_id=a&token=T", "pad": ""}
                pad = max(0, size - len(json.dumps(body)))
                data = json.dumps(body).encode()[:-2] + b"x" * pad + b'"}'
                with contextlib.suppress(OSError):  # the client refused the rest
                    self.send_body(200, data, {"Content-Type": "application/json"})

        server = self
        self.size = 0
        super().__init__(Handler, "bench-body")
        self.url = f"http://127.0.0.1:{self.port}"


def run(sizes: list[int], root: Path) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    srv = BodyServer()
    try:
        for size in sizes:
            srv.size = size
            out = subprocess.run(
                [sys.executable, "-c", CHILD, srv.url],
                cwd=root,
                capture_output=True,
                text=True,
                timeout=300,
                check=True,
            )
            row: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
            row["body_bytes"] = size
            rows.append(row)
    finally:
        srv.close()
    return rows


def table(rows: list[dict[str, object]]) -> str:
    lines = [f"{'reply body':>12} {'peak RSS MiB':>12}  outcome"]
    for r in rows:
        lines.append(f"{r['body_bytes']:>12} {int(r['max_rss_kib']) / 1024:>12.1f}  {r['outcome']}")  # type: ignore[call-overload]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default=",".join(str(s) for s in DEFAULT_SIZES))
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout whose device/ is measured")
    args = parser.parse_args(argv)
    rows = run([int(x) for x in args.sizes.split(",") if x.strip()], args.root)
    print(f"signed-URL fetch peak RSS, {platform.node()} ({platform.machine()}, Python {platform.python_version()})")
    print(f"device code from {args.root}")
    print(table(rows))
    return 0


@pytest.mark.bench
def test_signed_url_rss_benchmark() -> None:
    rows = run(list(DEFAULT_SIZES), ROOT)
    print()
    print(table(rows))
    assert [r["outcome"] for r in rows] == ["accepted", "accepted", "refused: PROTOCOL"]


if __name__ == "__main__":
    sys.exit(main())
