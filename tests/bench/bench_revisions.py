"""Side by side: the bench demo on two revisions of this repository, in one run.

A restructuring is meant to change nothing a user notices. This runs
``voice-appliance bench`` (the demo: a press, a question that needs a client
tool, a barge-in, a second answer, the agent hangs up) from two checkouts of
the repository, alternating A B A B … so both see the same machine load, and
prints the medians of what the demo measures:

- reply latency (speech end → first sample heard) and the device's share of it;
- old audio heard after each interruption (the flush);
- press → first frame on the wire, block captured → wire p99;
- device CPU s per conversation minute, the bench process's peak RSS;
- xruns and whether every run passed.

Each revision runs from a detached ``git worktree`` in a temporary folder,
with this venv's interpreter and ``PYTHONPATH`` at that checkout, so only the
firmware differs. The card is the clocked one (what was heard) when
PulseAudio is installed.

Run: ``.venv/bin/python tests/bench/bench_revisions.py BEFORE [AFTER] [--runs N] [-- BENCH ARGS]``
(AFTER defaults to the working tree, uncommitted changes included).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

Report = dict[str, Any]


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _turn_values(key: str) -> Callable[[Report], list[float]]:
    return lambda r: [t[key] for t in r["turns"] if t.get(key) is not None and not t.get("interrupted")]


def _interruption_values(key: str) -> Callable[[Report], list[float]]:
    return lambda r: [i[key] for i in r["interruptions"] if i.get(key) is not None]


def _one(get: Callable[[Report], float | None]) -> Callable[[Report], list[float]]:
    def values(r: Report) -> list[float]:
        v = get(r)
        return [] if v is None else [v]

    return values


# (row label, unit, values of one report)
FIGURES: list[tuple[str, str, Callable[[Report], list[float]]]] = [
    ("reply latency (speech end → heard)", "ms", _turn_values("latency_ms")),
    ("device's share of it", "ms", _turn_values("device_share_ms")),
    ("old audio heard after an interruption", "ms", _interruption_values("old_audio_ms_after")),
    ("press → first frame sent", "ms", lambda r: list(r["press_to_first_frame_sent_ms"])),
    ("block captured → wire, p99", "ms", _one(lambda r: r["block_capture_to_wire_ms"]["p99"])),
    ("reply received → written, p50", "ms", _one(lambda r: r["reply_received_to_written_ms"]["p50"])),
    ("device CPU per conversation minute", "s", _one(lambda r: r["cpu_s"]["per_conversation_minute"])),
    ("bench process peak RSS", "MB", _one(lambda r: r["peak_rss_mb"])),
    ("xruns (capture + playback)", "", _one(
        lambda r: r["xruns"]["capture_overruns"] + r["xruns"]["playback_underruns"])),
]


@contextmanager
def checkout(revision: str | None) -> Iterator[Path]:
    """A detached worktree of ``revision`` (None: this working tree as it is)."""
    if revision is None:
        yield ROOT
        return
    with tempfile.TemporaryDirectory(prefix="bench-rev-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree), revision], check=True)
        try:
            yield tree
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)


def run_demo(tree: Path, out: Path, extra: list[str]) -> Report:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    env.pop("VOICE_APPLIANCE_CONFIG", None)
    cmd = [sys.executable, "-m", "device", "bench", "--no-progress", "--out", str(out), *extra]
    done = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=600)
    report = out / "report.json"
    if not report.exists():
        raise SystemExit(f"bench in {tree} wrote no report (exit {done.returncode}): {done.stderr[-2000:]}")
    doc: Report = json.loads(report.read_text())
    return doc


def _cell(values: list[float], unit: str) -> str:
    m = _median(values)
    return "—" if m is None else f"{m:.2f}" if unit == "s" else f"{m:.1f}"


def table(names: tuple[str, str], reports: tuple[list[Report], list[Report]]) -> str:
    lines = [f"| figure (median of runs) | {names[0]} | {names[1]} |", "|---|---|---|"]
    for label, unit, values in FIGURES:
        a = [v for r in reports[0] for v in values(r)]
        b = [v for r in reports[1] for v in values(r)]
        lines.append(f"| {label}{f' ({unit})' if unit else ''} | {_cell(a, unit)} | {_cell(b, unit)} |")
    passed = [f"{sum(r['outcome']['ok'] for r in rs)}/{len(rs)}" for rs in reports]
    lines.append(f"| runs passed | {passed[0]} | {passed[1]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("before", help="git revision A")
    ap.add_argument("after", nargs="?", help="git revision B (default: this working tree)")
    ap.add_argument("--runs", type=int, default=3, help="demo runs per revision (default 3)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out" / "revisions", help="where the reports go")
    argv = sys.argv[1:] if argv is None else argv
    # What follows a "--" goes to voice-appliance bench as it is.
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    names = (args.before, args.after or "working tree")
    reports: tuple[list[Report], list[Report]] = ([], [])
    with checkout(args.before) as tree_a, checkout(args.after) as tree_b:
        for n in range(args.runs):
            for side, tree in enumerate((tree_a, tree_b)):
                out = args.out / f"{'ab'[side]}{n}"
                reports[side].append(run_demo(tree, out, extra))
                ok = reports[side][-1]["outcome"]["ok"]
                print(f"[bench-revisions] {names[side]} run {n + 1}: {'PASS' if ok else 'FAIL'}", file=sys.stderr)
    print(table(names, reports))
    machine = reports[0][0]["machine"]
    print(f"\n{machine['platform']}, {machine['cpus']} CPUs, Python {machine['python']}; "
          f"card {reports[0][0]['card']}; {args.runs} runs each, alternating")
    return 0 if all(r["outcome"]["ok"] for rs in reports for r in rs) else 1


if __name__ == "__main__":
    sys.exit(main())
