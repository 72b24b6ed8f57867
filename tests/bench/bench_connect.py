"""Benchmark: button press → conversation connected, with and without signed-URL prefetch.

Against the emulator, directly on loopback and through a TCP proxy that adds a
one-way delay per direction (a stand-in for the WAN; on loopback the REST round
trip costs almost nothing, over a real network it costs at least two round
trips: TCP connect and the GET, plus TLS with the real service).

Per round, ``Session.start()`` is the press (one captured block is queued at
that moment) and the figures come from the session's own stats:

- press → connected: ``connect_ms`` (conversation_initiation_metadata received);
- of which URL: ``url_ms`` (REST fetch, or taking the prefetched URL);
- press → first audio on the wire: ``first_audio_sent_ms``.

Modes: ``fetch`` (signed URL fetched at the press), ``prefetch`` (a warm
:class:`~device.drivers.agent_http.SignedUrlSource`), ``public`` (no URL needed: the floor).

Run: ``.venv/bin/python tests/bench/bench_connect.py [--rounds 20] [--delays-ms 0,25]``
or ``.venv/bin/python -m pytest tests/bench/bench_connect.py -s``.
"""

from __future__ import annotations

import argparse
import collections
import platform
import selectors
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from device.core.config import AgentConfig, SessionConfig, ToolsConfig  # noqa: E402
from device.core.protocol import Connected, SessionEnded, SessionEvent  # noqa: E402
from device.drivers.agent_http import AgentHttp, SignedUrlSource  # noqa: E402
from device.drivers.secrets import Secret  # noqa: E402
from device.drivers.session import Session  # noqa: E402
from device.drivers.tools import ToolRegistry  # noqa: E402
from device.emulator.scenario import default_scenario  # noqa: E402
from device.emulator.server import Emulator  # noqa: E402

KEY = "emulator-key"
WAIT_S = 30.0
MODES = ("fetch", "prefetch", "public")


class DelayProxy:
    """TCP proxy adding ``delay_s`` to each direction (bench only; one thread pair per connection)."""

    def __init__(self, target_port: int, delay_s: float) -> None:
        self._target = ("127.0.0.1", target_port)
        self._delay_s = delay_s
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._serve, name="delay-proxy")
        self._accept.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(self._target)
            for a, b in ((client, upstream), (upstream, client)):
                t = threading.Thread(target=self._pump, args=(a, b), name="delay-pump")
                t.start()
                self._threads.append(t)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        pending: collections.deque[tuple[float, bytes]] = collections.deque()
        sel = selectors.DefaultSelector()
        sel.register(src, selectors.EVENT_READ)
        eof = False
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                while pending and pending[0][0] <= now:
                    dst.sendall(pending.popleft()[1])
                if eof and not pending:
                    dst.shutdown(socket.SHUT_WR)
                    return
                wait_s = 0.2 if not pending else max(0.0, pending[0][0] - now)
                if eof:
                    self._stop.wait(wait_s)
                    continue
                if sel.select(wait_s):
                    data = src.recv(65536)
                    if data:
                        pending.append((time.monotonic() + self._delay_s, data))
                    else:
                        eof = True
        except OSError:
            pass
        finally:
            sel.close()

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        self._accept.join(WAIT_S)
        for t in self._threads:
            t.join(WAIT_S)


def one_round(agent: AgentConfig, mode: str, source: SignedUrlSource | None) -> dict[str, float]:
    done = threading.Event()
    connected = threading.Event()
    ended: list[SessionEnded] = []

    def on_event(event: SessionEvent) -> None:
        if isinstance(event, Connected):
            connected.set()
        elif isinstance(event, SessionEnded):
            ended.append(event)
            done.set()

    session = Session(
        agent,
        SessionConfig(),
        ToolRegistry(ToolsConfig(), None),
        None if mode == "public" else Secret(KEY, "bench"),
        on_event,
        source if mode == "prefetch" else None,
    )
    session.start()  # the press
    session.send_audio(bytes(8000), time.monotonic())
    ok = connected.wait(WAIT_S)
    # wait for the first block to be on the wire
    deadline = time.monotonic() + WAIT_S
    while ok and "first_audio_sent_ms" not in session.stats and time.monotonic() < deadline:
        done.wait(0.005)
    session.stop()
    if not ok:
        raise RuntimeError(f"{mode}: no connection: {ended[0].message if ended else 'no outcome'}")
    stats = session.stats
    return {k: float(stats[k]) for k in ("connect_ms", "url_ms", "first_audio_sent_ms")}


def run(rounds: int, delays_ms: list[int]) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for public in (False, True):
        scenario = default_scenario().with_changes(agent={"public": public})
        with Emulator(scenario, speech="tone") as emu:
            for delay_ms in delays_ms:
                proxy = DelayProxy(emu.port, delay_ms / 1000) if delay_ms else None
                base = f"http://127.0.0.1:{proxy.port}" if proxy else emu.base_url
                modes = ("public",) if public else ("fetch", "prefetch")
                agent = AgentConfig(agent_id=emu.agent_id, base_url=base, connection="signed_url")
                source = None
                if not public:
                    source = SignedUrlSource(AgentHttp(agent, Secret(KEY, "bench")))
                    source.start()
                results: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
                try:
                    for _ in range(rounds):
                        for mode in modes:
                            if mode == "prefetch":
                                assert source is not None
                                assert source.wait_ready(WAIT_S)
                            a = AgentConfig(
                                agent_id=emu.agent_id, base_url=base, connection="public" if public else "signed_url"
                            )
                            results[mode].append(one_round(a, mode, source))
                finally:
                    if source is not None:
                        source.close()
                    if proxy is not None:
                        proxy.close()
                for mode in modes:
                    rows.append({"mode": mode, "delay_ms": delay_ms, "samples": results[mode]})
    return rows


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def table(rows: list[dict[str, object]]) -> str:
    head = (
        f"{'mode':<9} {'one-way delay':>13} {'n':>3}  {'press→connected ms':>21}  {'URL ms':>13}  "
        f"{'press→first audio ms':>21}"
    )
    lines = [head, f"{'':<9} {'':>13} {'':>3}  {'p50 / p90 / max':>21}  {'p50 / p90':>13}  {'p50 / p90':>21}"]
    for row in sorted(rows, key=lambda r: (r["delay_ms"], MODES.index(str(r["mode"])))):  # type: ignore[arg-type]
        samples = row["samples"]
        assert isinstance(samples, list)
        c = [s["connect_ms"] for s in samples]
        u = [s["url_ms"] for s in samples]
        f = [s["first_audio_sent_ms"] for s in samples]
        lines.append(
            f"{row['mode']!s:<9} {str(row['delay_ms']) + ' ms':>13} {len(samples):>3}  "
            f"{pct(c, .5):>6.1f} / {pct(c, .9):>6.1f} / {max(c):>5.1f}  "
            f"{pct(u, .5):>5.1f} / {pct(u, .9):>5.1f}  {pct(f, .5):>9.1f} / {pct(f, .9):>9.1f}"
        )
    return "\n".join(lines)


def summary(rows: list[dict[str, object]]) -> str:
    out = []
    by = {(r["mode"], r["delay_ms"]): r["samples"] for r in rows}
    for delay in sorted({r["delay_ms"] for r in rows}):  # type: ignore[type-var]
        fetch = [s["connect_ms"] for s in by[("fetch", delay)]]  # type: ignore[index]
        pre = [s["connect_ms"] for s in by[("prefetch", delay)]]  # type: ignore[index]
        out.append(
            f"prefetch saves {statistics.median(fetch) - statistics.median(pre):.1f} ms (median) at {delay} ms one-way"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--delays-ms", default="0,25", help="one-way delays to add, comma-separated")
    args = parser.parse_args(argv)
    delays = [int(x) for x in args.delays_ms.split(",") if x.strip()]
    rows = run(args.rounds, delays)
    print(f"press → connected, {platform.node()} ({platform.machine()}, Python {platform.python_version()})")
    print(table(rows))
    print(summary(rows))
    return 0


@pytest.mark.bench
def test_connect_benchmark() -> None:
    rows = run(5, [0, 25])
    print()
    print(table(rows))
    print(summary(rows))
    by = {(r["mode"], r["delay_ms"]): r["samples"] for r in rows}
    fetch = statistics.median(s["connect_ms"] for s in by[("fetch", 25)])  # type: ignore[attr-defined]
    pre = statistics.median(s["connect_ms"] for s in by[("prefetch", 25)])  # type: ignore[attr-defined]
    assert pre < fetch, "with a network delay, prefetch must save the REST round trips"


if __name__ == "__main__":
    raise SystemExit(main())
