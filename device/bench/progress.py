"""The progress display while a bench runs.

On a terminal: one status line redrawn in place (bar, time, daemon state,
counters) with notable moments (what was said, tool calls, interruptions,
the end) printed as lines above it. Elsewhere (a log, CI): the notable lines
plus a plain status line every few seconds. Telemetry arrives on daemon
threads: :meth:`Progress.on_event` only records under a lock; drawing happens
on the runner's thread in :meth:`Progress.tick`.
"""

from __future__ import annotations

import shutil
import threading
import time
from dataclasses import dataclass
from typing import TextIO

from device.bench.analysis import Event


@dataclass
class Counters:
    state: str = "starting"
    blocks_sent: int = 0
    replies: int = 0
    interruptions: int = 0
    tool_calls: int = 0
    xruns: int = 0
    ping_ms: float | None = None


def bar(fraction: float, width: int = 20) -> str:
    filled = max(0, min(width, round(fraction * width)))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def status_line(elapsed_s: float, expected_s: float, c: Counters) -> str:
    """``[#####.....]  8.2/18 s  speaking  | 31 blocks sent, 1 reply, …``"""
    frac = elapsed_s / expected_s if expected_s > 0 else 0.0
    parts = [
        f"{c.blocks_sent} blocks sent",
        f"{c.replies} repl{'y' if c.replies == 1 else 'ies'}",
    ]
    if c.interruptions:
        parts.append(f"{c.interruptions} interruption{'s' if c.interruptions > 1 else ''}")
    if c.tool_calls:
        parts.append(f"{c.tool_calls} tool call{'s' if c.tool_calls > 1 else ''}")
    if c.xruns:
        parts.append(f"{c.xruns} xrun{'s' if c.xruns > 1 else ''}")
    if c.ping_ms is not None:
        parts.append(f"ping {c.ping_ms:.0f} ms")
    return f"{bar(frac)} {elapsed_s:5.1f}/{expected_s:.0f} s  {c.state:<10} | " + ", ".join(parts)


def notable(ev: Event, t0_s: float) -> str | None:
    """The line printed for a moment worth a line of its own, else None."""
    d = ev.data
    at = f"{ev.t_s - t0_s:6.1f} s"
    if ev.kind == "transcript" and not d.get("tentative"):
        who = "you" if d.get("role") == "user" else ("agent, cut" if d.get("correction") else "agent")
        return f"{at}  {who:>5}: {d.get('text', '')}" + (" …" if d.get("correction") else "")
    if ev.kind == "tool_call" and d.get("phase", "finished") == "finished":
        return f"{at}   tool: {d.get('name', '?')}{' (failed)' if d.get('is_error') else ''}"
    if ev.kind == "interruption":
        if d.get("local"):
            return f"{at}   barge-in: a press cut the agent off, playback flushed"
        return f"{at}   interruption (event {d.get('event_id', '?')}): playback flushed"
    if ev.kind == "session_end":
        detail = d.get("detail") or ""
        return f"{at}   conversation ended: {getattr(d.get('outcome'), 'name', d.get('outcome'))}" + (
            f" ({detail})" if detail else ""
        )
    if ev.kind == "xrun":
        return f"{at}   xrun: {d.get('kind', '')}"
    return None


class Progress:
    """Collects counters from telemetry and draws them on ``stream``."""

    PLAIN_EVERY_S = 5.0

    def __init__(self, stream: TextIO, *, t0_s: float, expected_s: float, tty: bool | None = None) -> None:
        self._stream = stream
        self._t0_s = t0_s
        self.expected_s = expected_s
        self._tty = stream.isatty() if tty is None else tty
        self._lock = threading.Lock()
        self._c = Counters()
        self._lines: list[str] = []
        self._last_plain_s = float("-inf")
        self._drawn = False

    def set_time_zero(self, t0_s: float) -> None:
        """Count from ``t0_s`` from now on (the run learnt when its input really started)."""
        self._t0_s = t0_s

    def on_event(self, ev: Event) -> None:
        """Record one telemetry event (called on daemon threads; never blocks for long)."""
        line = notable(ev, self._t0_s)
        with self._lock:
            c = self._c
            if ev.kind == "state":
                c.state = str(ev.data.get("state", c.state))
            elif ev.kind == "block_sent":
                c.blocks_sent += 1
            elif ev.kind == "reply_started":
                c.replies += 1
            elif ev.kind == "interruption":
                c.interruptions += 1
            elif ev.kind == "tool_call" and ev.data.get("phase", "finished") == "finished":
                c.tool_calls += 1
            elif ev.kind == "xrun":
                c.xruns += 1
            elif ev.kind == "ping" and isinstance(ev.data.get("ping_ms"), (int, float)):
                c.ping_ms = float(ev.data["ping_ms"])
            if line is not None:
                self._lines.append(line)

    def note(self, text: str) -> None:
        """A line from the runner itself (e.g. a scripted step)."""
        with self._lock:
            self._lines.append(f"{time.monotonic() - self._t0_s:6.1f} s   {text}")

    def tick(self, now_s: float | None = None, force: bool = False) -> None:
        """Draw what changed (call from the runner's thread)."""
        now = time.monotonic() if now_s is None else now_s
        with self._lock:
            lines, self._lines = self._lines, []
            status = status_line(max(0.0, now - self._t0_s), self.expected_s, self._c)
        out = self._stream
        if self._tty:
            # A status line longer than the terminal would wrap and defeat the redraw.
            status = status[: max(20, shutil.get_terminal_size((100, 24)).columns - 1)]
            clear = "\r\033[K" if self._drawn else ""
            out.write(clear + "".join(f"{line}\n" for line in lines) + status)
            self._drawn = True
        else:
            for line in lines:
                out.write(line + "\n")
            if force or now - self._last_plain_s >= self.PLAIN_EVERY_S:
                out.write(status + "\n")
                self._last_plain_s = now
        out.flush()

    def finish(self, now_s: float | None = None) -> None:
        """The last status line, left on screen."""
        self.tick(now_s, force=True)
        if self._tty and self._drawn:
            self._stream.write("\n")
            self._stream.flush()
