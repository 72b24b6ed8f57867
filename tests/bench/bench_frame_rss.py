"""Benchmark: peak memory (RSS) of a device session by the size of one frame from the service.

The emulator (in this process) pads the first audio event of the agent's first
message with alignment data (the ``oversized_frame`` fault) to each frame size:
1 MiB, 8 MiB, the largest the device accepts (``MAX_MESSAGE_BYTES``) and one
element more (refused from the frame header, close 1009); a baseline has no
fault. A fresh Python process (the device code from ``--root``, this checkout
by default) runs a real :class:`~device.drivers.session.Session` through the signed
URL, waits for that audio event to arrive (accepted) or for the session to end
(refused), and reports its peak RSS (``VmHWM``; ``ru_maxrss`` would include the
parent's peak, carried over by Linux through the exec), before the session too.

The fault's ``size_bytes`` sets the number of alignment elements, not the
frame's length, so the frame sizes are solved for here and checked against
what the emulator recorded it sent.

Run: ``.venv/bin/python tests/bench/bench_frame_rss.py [--sizes 1048576,8388608,max,over] [--root DIR]``
or ``.venv/bin/python -m pytest tests/bench/bench_frame_rss.py -s``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from device.core.protocol import MAX_MESSAGE_BYTES  # noqa: E402
from device.emulator.scenario import Fault, default_scenario  # noqa: E402
from device.emulator.server import Emulator  # noqa: E402

KEY = "emulator-key"
WAIT_S = 120.0  # a 16 MiB frame is built, sent and parsed on a shared machine
DEFAULT_SIZES = ("1048576", "8388608", "max", "over")

# The child reads its settings (the key among them) from stdin: never in argv.
CHILD = r"""
import json, queue, resource, sys
from device.core.config import AgentConfig, SessionConfig, ToolsConfig
from device.core.protocol import AgentAudio, SessionEnded
from device.drivers.secrets import Secret
from device.drivers.session import Session
from device.drivers.tools import ToolRegistry

def rss_kib():
    # VmHWM: the peak of this process image only. ru_maxrss also counts the parent's peak, which
    # Linux carries over from the (v)forked image through execve (the emulator's frames are in it).
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))

cfg = json.loads(sys.stdin.read())
before = rss_kib()
events = queue.Queue()
agent = AgentConfig(agent_id=cfg["agent_id"], base_url=cfg["base_url"], connection="signed_url")
session = Session(agent, SessionConfig(), ToolRegistry(ToolsConfig(), None), Secret(cfg["key"], "bench"), events.put)
session.start()
try:
    while True:
        e = events.get(timeout=cfg["wait_s"])
        if isinstance(e, AgentAudio):
            outcome = "accepted"
            break
        if isinstance(e, SessionEnded):
            outcome = f"refused: {e.outcome.name} {e.close_code}"
            break
finally:
    session.stop()
malformed = session.stats.get("malformed_messages", 0)
ru_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"outcome": outcome, "malformed": malformed, "rss_before_kib": before, "max_rss_kib": rss_kib(),
                  "ru_maxrss_kib": ru_maxrss}))
"""


def _digits_below(n: int) -> int:
    """Total decimal digits of 0, 1, …, n-1."""
    total, lo, width = 0, 0, 1
    while lo < n:
        hi = min(n, 10**width)
        total += (hi - lo) * width
        lo, width = hi, width + 1
    return total


def frame_bytes(elements: int, chunk_bytes: int, event_id: int) -> int:
    """Length of the padded audio event the emulator sends (its _send_audio/_padding_alignment, json.dumps)."""
    one = {
        "type": "audio",
        "audio_event": {
            "audio_base_64": "A" * (4 * ((chunk_bytes + 2) // 3)),
            "event_id": event_id,
            "alignment": {"chars": ["a"], "char_start_times_ms": [0], "char_durations_ms": [1]},
        },
    }
    # each element after the first adds '"a", ' + 'i, ' + '1, '
    extra = elements - 1
    return len(json.dumps(one)) + extra * (5 + 2 + 3) + _digits_below(elements) - 1


def elements_for(target_bytes: int, chunk_bytes: int, event_id: int) -> int:
    """The most alignment elements whose frame is at most ``target_bytes``."""
    lo, hi = 1, target_bytes
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if frame_bytes(mid, chunk_bytes, event_id) <= target_bytes:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _child(emu: Emulator, root: Path) -> dict[str, Any]:
    cfg = {"agent_id": emu.agent_id, "base_url": emu.base_url, "key": KEY, "wait_s": WAIT_S}
    out = subprocess.run(
        [sys.executable, "-c", CHILD],
        input=json.dumps(cfg),
        cwd=root,
        capture_output=True,
        text=True,
        timeout=WAIT_S + 60,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"the device process failed ({out.returncode}): {out.stderr[-2000:]}")
    row: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    if row["malformed"]:  # the padded event must be taken as audio, not counted and skipped
        raise RuntimeError(f"the device counted {row['malformed']} malformed messages")
    return row


def _first_audio(emu: Emulator) -> dict[str, Any]:
    record = emu.wait_for_conversation_end(timeout_s=WAIT_S)
    sent = [e for e in record.events if e["direction"] == "from_agent" and e["type"] == "audio"]
    if not sent:
        raise RuntimeError("the emulator sent no audio")
    return sent[0]


def measure(elements: int | None, root: Path) -> dict[str, Any]:
    """One device process against an emulator padding the first audio event to ``elements`` (None: no fault)."""
    faults: tuple[Fault, ...] = ()
    if elements is not None:  # the first chunk of the first message carries the padding
        faults = (Fault(kind="oversized_frame", reply=0, after_chunks=0, size_bytes=12 * elements),)
    with Emulator(default_scenario().with_changes(faults=faults), speech="tone") as emu:
        row = _child(emu, root)
        first = _first_audio(emu)
    if elements is None:
        row["frame_bytes"] = 0
    else:
        if first.get("oversized_to_bytes") != 12 * elements:
            raise RuntimeError(f"the first audio event was not the padded one: {first}")
        row["frame_bytes"] = frame_bytes(elements, int(first["bytes"]), int(first["event_id"]))
    row["chunk_bytes"] = int(first["bytes"])
    row["event_id"] = int(first["event_id"])
    return row


def run(sizes: list[str], root: Path) -> list[dict[str, Any]]:
    base = measure(None, root)
    rows = [base]
    chunk, event_id = base["chunk_bytes"], base["event_id"]  # the same first chunk in every run
    for size in sizes:
        if size == "max":
            n = elements_for(MAX_MESSAGE_BYTES, chunk, event_id)
        elif size == "over":
            n = elements_for(MAX_MESSAGE_BYTES, chunk, event_id) + 1
        else:
            n = elements_for(int(size), chunk, event_id)
        rows.append(measure(n, root))
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'frame bytes':>12} {'MiB':>7} {'RSS before MiB':>14} {'peak RSS MiB':>12}  outcome"]
    for r in rows:
        size = "no fault" if not r["frame_bytes"] else str(r["frame_bytes"])
        mib = "" if not r["frame_bytes"] else f"{r['frame_bytes'] / 1048576:.3f}"
        lines.append(
            f"{size:>12} {mib:>7} {r['rss_before_kib'] / 1024:>14.1f} {r['max_rss_kib'] / 1024:>12.1f}  {r['outcome']}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--sizes", default=",".join(DEFAULT_SIZES), help="frame bytes, or max / over (the cap)")
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout whose device/ is measured")
    args = parser.parse_args(argv)
    rows = run([x.strip() for x in args.sizes.split(",") if x.strip()], args.root)
    machine = f"{platform.node()} ({platform.machine()}, Python {platform.python_version()})"
    print(f"session peak RSS by frame size, {machine}")
    print(f"device code from {args.root}; cap MAX_MESSAGE_BYTES = {MAX_MESSAGE_BYTES}")
    print(table(rows))
    return 0


@pytest.mark.bench
def test_frame_rss_benchmark() -> None:
    rows = run(list(DEFAULT_SIZES), ROOT)
    print()
    print(table(rows))
    assert rows[-2]["frame_bytes"] <= MAX_MESSAGE_BYTES < rows[-1]["frame_bytes"]
    assert [r["outcome"] for r in rows] == ["accepted"] * 4 + ["refused: PROTOCOL 1009"]


if __name__ == "__main__":
    sys.exit(main())
