"""Benchmark: N simulated kiosks on one Mosquitto (TLS, passwords, ACL), as docs/fleet.md reports.

Each kiosk is a real :class:`~device.drivers.mqtt.FleetLink` (its own thread and TLS connection,
as on a Pi) fed a state change every ``--period`` seconds (a busy conversation: listening,
thinking, speaking…) and a button event with each; one subscriber plays Home Assistant and
measures how long each state takes from the kiosk's telemetry to it. The figures: state
latency (median, p95, max), messages per second through the broker, the broker's CPU and
resident memory, and this process's CPU (all N kiosks' clients together).

Run: ``.venv/bin/python tests/bench/bench_fleet.py [--kiosks 50] [--seconds 30] [--period 1.0]``
or ``.venv/bin/python -m pytest tests/bench/bench_fleet.py -s``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import types
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from device.app.telemetry import Telemetry  # noqa: E402
from device.drivers.mqtt import FleetLink  # noqa: E402
from device.drivers.secrets import Secret  # noqa: E402
from tests.integration.brokerrig import HA_PASSWORD, HA_USER, Broker, Watcher  # noqa: E402

STATES = ("listening", "thinking", "speaking")


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def add_users(broker: Broker, n: int) -> None:
    """Kiosk users kiosk-1 … kiosk-N (the ACL's %u patterns give each its own topics)."""
    import subprocess

    pw = broker.directory / "passwd"
    for i in range(1, n + 1):
        subprocess.run(["mosquitto_passwd", "-b", str(pw), f"kiosk-{i}", f"pw-{i}-secret"], check=True,
                       capture_output=True, timeout=30)


def run(kiosks: int, seconds: float, period_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="va-fleet-") as d:
        broker = Broker(Path(d) / "broker")
        broker.write_files()
        add_users(broker, kiosks)
        broker._spawn()
        assert broker.proc is not None
        sent: dict[tuple[str, str], float] = {}
        lat_ms: list[float] = []
        lock = threading.Lock()
        links: list[FleetLink] = []
        try:
            with Watcher(broker, HA_USER, HA_PASSWORD, subscribe="voice-appliance/+/state") as ha:
                def on_state(r: Any) -> None:
                    if not r.payload:
                        return
                    kiosk = r.topic.split("/")[1]
                    key = (kiosk, json.loads(r.payload)["state"])
                    with lock:
                        t0 = sent.pop(key, None)
                    if t0 is not None:
                        lat_ms.append((time.monotonic() - t0) * 1000)

                ha.client.on_message = lambda c, u, m: on_state(m)
                for i in range(1, kiosks + 1):
                    cfg = broker.kiosk_config(None, username=f"kiosk-{i}", device_id=f"kiosk-{i}",
                                              min_publish_interval_s=0.0)
                    link = FleetLink(cfg, Secret(f"pw-{i}-secret", "bench"), post=lambda e: True,
                                     status=lambda: {"state": "idle", "counters": {}}, set_volume=lambda v: None,
                                     volume=lambda: 50, request_reload=lambda: None)
                    links.append(link)
                    link.start()
                for link in links:
                    assert link.wait_connected(60), "a kiosk did not connect"
                time.sleep(1.0)  # the discovery burst is over
                cpu0, broker_cpu0, t0, n = time.process_time(), _proc_cpu_s(broker.proc.pid), time.monotonic(), 0
                lat_ms.clear()
                while time.monotonic() - t0 < seconds:
                    tick = time.monotonic()
                    for i, link in enumerate(links, 1):
                        state = f"{STATES[n % 3]}-{n}"
                        with lock:
                            sent[(f"kiosk-{i}", state)] = time.monotonic()
                        link.on_telemetry(Telemetry(tick, "state", types.MappingProxyType({"state": state})))
                        link.on_telemetry(Telemetry(tick, "button", types.MappingProxyType({"action": "press"})))
                    n += 1
                    time.sleep(max(0.0, period_s - (time.monotonic() - tick)))
                time.sleep(1.0)
                elapsed = time.monotonic() - t0
                cpu, broker_cpu = time.process_time() - cpu0, _proc_cpu_s(broker.proc.pid) - broker_cpu0
                rss = _rss_mb(broker.proc.pid)
                lost = len(sent)
        finally:
            for link in links:
                link.stop()
            broker.stop()
    lat = sorted(lat_ms)
    return {
        "kiosks": kiosks,
        "seconds": round(elapsed, 1),
        "state_changes": n * kiosks,
        "messages_per_s": round(2 * n * kiosks / elapsed, 1),
        "latency_ms_median": round(statistics.median(lat), 1) if lat else None,
        "latency_ms_p95": round(lat[int(0.95 * (len(lat) - 1))], 1) if lat else None,
        "latency_ms_max": round(lat[-1], 1) if lat else None,
        "states_not_seen": lost,
        "broker_cpu_percent": round(100 * broker_cpu / elapsed, 1),
        "broker_rss_mb": round(rss, 1),
        "clients_cpu_percent": round(100 * cpu / elapsed, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }


def test_fifty_kiosks_on_one_broker() -> None:
    result = run(50, 20.0, 1.0)
    print(json.dumps(result))
    assert result["states_not_seen"] == 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kiosks", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--period", type=float, default=1.0, help="seconds between each kiosk's state changes")
    args = ap.parse_args()
    print(json.dumps(run(args.kiosks, args.seconds, args.period), indent=2))
