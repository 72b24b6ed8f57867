"""Soak: one daemon holding conversation after conversation, with the other core busy.

Three processes so that what is measured is the daemon alone:

- the agent: the built-in emulator (its own process: it records every
  conversation's audio, which would otherwise count as the daemon's memory);
- the device: the real daemon over ALSA ``type file`` devices and mock pins,
  driven by the bench demo's person in a loop (question with the button held,
  a barge-in while the agent answers, the second answer, a pause); the
  session's maximum duration is shortened so it also reconnects regularly;
- a busy loop on the other core.

Every ``--sample-s`` the device process reports RSS, open file descriptors,
threads, CPU and the xrun counters; the table shows them over time, and the
verdict line RSS growth after warm-up, fd/thread drift, xruns, conversations
and protocol violations.

Run: ``.venv/bin/python tests/bench/soak.py`` (30 minutes) or ``--short``
(2 minutes), or ``--minutes N``; also collected by ``provisioning/dev.sh bench``
in short mode (``SOAK_MINUTES`` to change it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CYCLE_S = 24.0  # one round of the demo's person: question, barge-in, answer, pause
WARMUP_S = 60.0  # RSS growth is measured from here on (imports, caches and rings settle first)


# -- the agent (its own process) -----------------------------------------------------


def run_emulator(args: argparse.Namespace) -> int:
    from device.bench import fixtures
    from device.bench.runner import _emulator_api

    emulator_cls, load_scenario, _default = _emulator_api()
    sc = load_scenario(fixtures.DEMO_SCENARIO).with_changes(
        agent={"after_last_turn": "cycle"},
        timing={"max_duration_s": float(args.max_conversation_s) + 30},
    )
    # The demo's second answer hangs up; in the loop the conversation goes on.
    sc = sc.with_changes(turns=tuple(dataclasses.replace(t, end_call=False) for t in sc.turns))
    key = Path(args.api_key_file).read_text().strip()
    with emulator_cls(sc, api_key=key) as emu:
        print(json.dumps({"base_url": emu.base_url, "agent_id": emu.agent_id}), flush=True)
        sys.stdin.read()  # until the harness closes our stdin
        records = emu.conversations
        print(json.dumps({
            "conversations": len(records),
            "violations": [str(v) for r in records for v in r.violations],
            "close_codes": [r.close_code for r in records],
        }), flush=True)
    return 0


# -- the device (its own process) -------------------------------------------------------


def _write_long_input(path: Path, cycles: int) -> None:
    """The demo's speech, once per cycle, streamed to a raw file (no big buffer in memory)."""
    from device.bench import fixtures
    from device.drivers import filedevices

    demo = fixtures.demo_input().pcm
    cycle_bytes = 2 * int(CYCLE_S * 16000)
    one = demo[:cycle_bytes] + bytes(max(0, cycle_bytes - len(demo)))
    with path.open("wb") as f:
        for _ in range(cycles):
            f.write(one)
        f.write(bytes(2 * int(filedevices.SILENT_TAIL_S * 16000)))


def run_device(args: argparse.Namespace) -> int:
    import gc
    import importlib
    import tempfile

    from gpiozero.pins.mock import MockFactory, MockPWMPin

    from device.bench import analysis, resources, script
    from device.bench.fixtures import DEMO_TIMELINE
    from device.bench.runner import bench_config
    from device.drivers import filedevices
    from device.drivers.secrets import Secret

    daemon_cls = importlib.import_module("device.app.daemon").Daemon

    minutes = float(args.minutes)
    cycles = int(minutes * 60 // CYCLE_S) + 1
    demo_steps = script.load_steps(DEMO_TIMELINE)
    with tempfile.TemporaryDirectory(prefix="voice-appliance-soak-") as tmp:
        work = Path(tmp)
        filedevices.install(work)
        in_raw = work / "in.raw"
        _write_long_input(in_raw, cycles)
        cfg = bench_config(
            None,
            [f"session.max_duration_s={args.max_conversation_s}"],
            capture=filedevices.capture_device(in_raw),
            playback=filedevices.playback_device(work / "out.raw", fixed_16k=True),
            agent={"base_url": args.base_url, "agent_id": args.agent_id, "connection": "signed_url",
                   "api_key_file": ""},
        )
        counts: dict[str, int] = {"overrun": 0, "underrun": 0, "replies": 0, "interruptions": 0,
                                  "conversations": 0, "failed": 0}
        old_audio_max_ms = [0.0]
        in_conversation = [False]
        lock = threading.Lock()

        def on_event(ev: Any) -> None:
            with lock:
                if ev.kind == "state":
                    talking = analysis.machine_state(ev.data) in analysis.CONVERSATION_STATES
                    if in_conversation[0] and not talking:
                        counts["conversations"] += 1
                        if analysis.machine_state(ev.data) == "error":
                            counts["failed"] += 1
                    in_conversation[0] = talking
                if ev.kind == "xrun":
                    k = str(ev.data.get("kind", ""))
                    counts["overrun" if "over" in k else "underrun"] += 1
                elif ev.kind == "reply_started":
                    counts["replies"] += 1
                elif ev.kind == "interruption":
                    counts["interruptions"] += 1
                elif ev.kind == "flushed":
                    old_audio_max_ms[0] = max(old_audio_max_ms[0], float(ev.data.get("old_audio_ms_after") or 0))

        factory = MockFactory(pin_class=MockPWMPin)
        daemon = daemon_cls(cfg, Secret(Path(args.api_key_file).read_text().strip(), "soak"), pin_factory=factory)
        daemon.telemetry.subscribe(on_event)
        pin = factory.pin(cfg.button.pin)
        schedule = [(c * CYCLE_S + s.at_s, s.action) for c in range(cycles) for s in demo_steps]
        t0 = time.monotonic()
        end = t0 + minutes * 60
        next_sample = t0
        daemon.start()
        try:
            while time.monotonic() < end:
                now = time.monotonic()
                while schedule and t0 + schedule[0][0] <= now:
                    _, action = schedule.pop(0)
                    (pin.drive_low if action == "press" else pin.drive_high)()
                if now >= next_sample:
                    # Mock pins keep every change they saw (LED pulses: dozens a second); a real
                    # pin keeps nothing, so that history is not the daemon's memory.
                    for mock_pin in list(factory.pins.values()):
                        mock_pin.clear_states()
                    gc.collect()
                    s = resources.sample()
                    with lock:
                        line = {"t_s": round(now - t0, 1), "rss_mb": round(s.rss_mb, 2), "fds": s.fds,
                                "threads": s.threads, "cpu_s": round(s.cpu_s, 2), **counts,
                                "old_audio_max_ms": round(old_audio_max_ms[0], 1)}
                    print(json.dumps(line), flush=True)
                    next_sample += args.sample_s
                nxt = min([t0 + schedule[0][0]] if schedule else [end], default=end)
                time.sleep(max(0.0, min(0.05, nxt - time.monotonic(), next_sample - time.monotonic())))
        finally:
            daemon.stop()
        s = resources.sample()
        with lock:
            print(json.dumps({"final": True, "t_s": round(time.monotonic() - t0, 1), "rss_mb": round(s.rss_mb, 2),
                              "peak_rss_mb": round(resources.peak_rss_mb(), 2), "fds": s.fds, "threads": s.threads,
                              "cpu_s": round(s.cpu_s, 2), **counts,
                              "old_audio_max_ms": round(old_audio_max_ms[0], 1)}), flush=True)
    return 0


# -- the harness ------------------------------------------------------------------


def _busy_other_core() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def soak(minutes: float, sample_s: float, max_conversation_s: float, work: Path,
         echo: bool = True) -> tuple[str, bool]:
    """Run the soak; returns (report text, passed)."""
    work.mkdir(parents=True, exist_ok=True)
    key_file = work / "api_key"
    key_file.write_text(secrets.token_urlsafe(24) + "\n")
    key_file.chmod(0o600)
    me = str(Path(__file__).resolve())
    emu = subprocess.Popen([sys.executable, me, "--role", "emulator", "--api-key-file", str(key_file),
                            "--max-conversation-s", str(max_conversation_s)],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    busy = _busy_other_core()
    samples: list[dict[str, Any]] = []
    final: dict[str, Any] = {}
    agent_end: dict[str, Any] = {}
    try:
        assert emu.stdout is not None
        assert emu.stdin is not None
        hello = json.loads(emu.stdout.readline())
        dev = subprocess.Popen(
            [sys.executable, me, "--role", "device", "--base-url", hello["base_url"], "--agent-id",
             hello["agent_id"], "--api-key-file", str(key_file), "--minutes", str(minutes),
             "--sample-s", str(sample_s), "--max-conversation-s", str(max_conversation_s)],
            stdout=subprocess.PIPE, text=True, cwd=ROOT,
        )
        assert dev.stdout is not None
        header = (f"{'t (s)':>7} {'RSS MB':>8} {'fds':>5} {'threads':>7} {'CPU %':>6} {'xruns':>6} "
                  f"{'convs':>5} {'replies':>7}")
        if echo:
            print(header, flush=True)
        last_cpu, last_t = 0.0, 0.0
        for raw in dev.stdout:
            line = json.loads(raw)
            if line.get("final"):
                final = line
                continue
            samples.append(line)
            cpu_pct = 100 * (line["cpu_s"] - last_cpu) / max(line["t_s"] - last_t, 1e-3) if samples[:-1] else 0.0
            last_cpu, last_t = line["cpu_s"], line["t_s"]
            line["cpu_pct"] = cpu_pct
            if echo:
                print(_row(line), flush=True)
        dev.wait(timeout=60)
        emu.stdin.close()
        agent_end = json.loads(emu.stdout.readline() or "{}")
        emu.wait(timeout=30)
    finally:
        busy.send_signal(signal.SIGTERM)
        busy.wait(10)
        if emu.poll() is None:
            emu.terminate()
            emu.wait(10)
    return _verdict(samples, final, agent_end, minutes)


def _row(line: dict[str, Any]) -> str:
    xruns = line["overrun"] + line["underrun"]
    return (f"{line['t_s']:7.0f} {line['rss_mb']:8.1f} {line['fds']:5d} {line['threads']:7d} "
            f"{line.get('cpu_pct', 0.0):6.1f} {xruns:6d} {line['conversations']:5d} {line['replies']:7d}")


def _verdict(samples: list[dict[str, Any]], final: dict[str, Any], agent: dict[str, Any],
             minutes: float) -> tuple[str, bool]:
    if not samples or not final:
        return "the soak produced no samples: the device process failed (see its output above)", False
    warm = [s for s in samples if s["t_s"] >= min(WARMUP_S, minutes * 60 / 3)] or samples
    growth_mb = warm[-1]["rss_mb"] - warm[0]["rss_mb"]
    span_h = max((warm[-1]["t_s"] - warm[0]["t_s"]) / 3600, 1e-6)
    fds = [s["fds"] for s in samples]
    threads = [s["threads"] for s in samples]
    violations = agent.get("violations", [])
    cpu_per_min = final["cpu_s"] / (final["t_s"] / 60) if final["t_s"] else float("nan")
    peak_mb = max([final["peak_rss_mb"], *(s["rss_mb"] for s in samples)])
    lines = [
        f"soak: {final['t_s'] / 60:.1f} min, other core busy; machine: {platform.platform(terse=True)} "
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        f"RSS: {warm[0]['rss_mb']:.1f} → {warm[-1]['rss_mb']:.1f} MB after warm-up "
        f"({growth_mb:+.2f} MB, {growth_mb / span_h:+.1f} MB/h), peak {peak_mb:.1f} MB",
        f"fds: {min(fds)}–{max(fds)} (end {final['fds']}); threads: {min(threads)}–{max(threads)} "
        f"(end {final['threads']})",
        f"xruns: {final['overrun']} capture overruns, {final['underrun']} playback underruns",
        f"conversations: {final['conversations']} ended ({final['failed']} failed), {final['replies']} replies, "
        f"{final['interruptions']} interruptions (old audio after a flush: max {final['old_audio_max_ms']:.0f} ms)",
        f"CPU: {cpu_per_min:.2f} s per minute (device process, whole run)",
        f"protocol violations seen by the agent: {len(violations)}",
    ]
    lines += [f"  {v}" for v in violations[:10]]
    drift = max(fds) - min(fds) > 8 or max(threads) - min(threads) > 8
    passed = not violations and final["failed"] == 0 and final["replies"] > 0 and not drift
    return "\n".join(lines), passed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--short", action="store_true", help="2 minutes (quick check)")
    p.add_argument("--minutes", type=float, default=30.0, help="length of the soak (default 30)")
    p.add_argument("--sample-s", type=float, default=None, help="sampling interval (default: minutes × 2 s)")
    p.add_argument("--max-conversation-s", type=float, default=None,
                   help="session.max_duration_s, so the daemon reconnects (default 300; 60 with --short)")
    p.add_argument("--work", default=str(ROOT / "bench-out" / "soak"), help="working folder")
    p.add_argument("--role", choices=["harness", "emulator", "device"], default="harness", help=argparse.SUPPRESS)
    p.add_argument("--base-url", help=argparse.SUPPRESS)
    p.add_argument("--agent-id", help=argparse.SUPPRESS)
    p.add_argument("--api-key-file", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.short:
        args.minutes = 2.0
    if args.max_conversation_s is None:
        args.max_conversation_s = 60.0 if args.minutes <= 5 else 300.0
    if args.sample_s is None:
        args.sample_s = max(5.0, args.minutes * 2)
    if args.role == "emulator":
        return run_emulator(args)
    if args.role == "device":
        return run_device(args)
    text, passed = soak(args.minutes, args.sample_s, args.max_conversation_s, Path(args.work))
    print(text)
    return 0 if passed else 1


def test_soak(tmp_path: Path) -> None:
    """pytest entry (provisioning/dev.sh bench): short by default."""

    minutes = float(os.environ.get("SOAK_MINUTES", "2"))
    text, passed = soak(minutes, max(5.0, minutes * 2), 60.0 if minutes <= 5 else 300.0, tmp_path)
    print("\n" + text)
    assert passed, text


if __name__ == "__main__":
    sys.exit(main())
