"""The timeline picture: one SVG a person reads at a glance (pure, plus an optional PNG).

Rows, top to bottom, on one time axis (seconds from the start of the run):
daemon state, LED colour/pattern, button, gate, microphone level (green when
the agent received it, grey when the gate sent zeros), speaker level (with a
tick for each chunk of agent audio received), and labelled events
(interruptions, flushes, tool calls, transcripts, xruns, session end).

Input is the daemon's telemetry: objects with ``t_s`` (monotonic), ``kind``
and ``data`` (see device/app/telemetry.py). Written directly as SVG so a Pi needs
no plotting library; ``rsvg-convert`` (librsvg2-bin) makes a PNG when present.
"""

from __future__ import annotations

import itertools
import logging
import math
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from device.bench.analysis import Event

log = logging.getLogger(__name__)


STATE_COLOURS = {
    "idle": "#d9d9d9",
    "connecting": "#f2c744",
    "listening": "#5cb85c",
    "thinking": "#5b9bd5",
    "speaking": "#9b59b6",
    "error": "#d9534f",
    "muted": "#555555",
    "stopping": "#999999",
}
LEVEL_FLOOR_DBFS = -60.0
WIDTH_PX = 1200
LABEL_PX = 120
RIGHT_PX = 20
ROW_PX = 26
LEVEL_ROW_PX = 54
ROW_GAP_PX = 6
TOP_PX = 58.0  # the first row's top: below the title and subtitle
GATE_BLOCK_S = 0.25  # a gate report covers the block that ended at its time
FONT = "DejaVu Sans, Verdana, Arial, sans-serif"
CHAR_PX = 6.2  # average glyph width at 11 px, to keep labels from overlapping


@dataclass
class _Canvas:
    t0: float
    t1: float
    parts: list[str] = field(default_factory=list)

    @property
    def plot_px(self) -> float:
        return WIDTH_PX - LABEL_PX - RIGHT_PX

    def x(self, t_s: float) -> float:
        span = max(self.t1 - self.t0, 1e-6)
        return LABEL_PX + (min(max(t_s, self.t0), self.t1) - self.t0) / span * self.plot_px

    def add(self, s: str) -> None:
        self.parts.append(s)

    def rect(self, x: float, y: float, w: float, h: float, fill: str, title: str = "", extra: str = "") -> None:
        tip = f"<title>{escape(title)}</title>" if title else ""
        self.add(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(w, 0.6):.1f}" height="{h:.1f}" fill="{fill}"{extra}>'
            f"{tip}</rect>"
        )

    def text(self, x: float, y: float, s: str, size: int = 11, anchor: str = "start", fill: str = "#222",
             weight: str = "normal") -> None:
        self.add(
            f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" fill="{fill}" '
            f'font-weight="{weight}">{escape(s)}</text>'
        )

    def line(self, x1: float, y1: float, x2: float, y2: float, stroke: str, width: float = 1,
             dash: str = "") -> None:
        d = f' stroke-dasharray="{dash}"' if dash else ""
        self.add(
            f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{stroke}" '
            f'stroke-width="{width}"{d}/>'
        )


def _field(data: Mapping[str, Any], *names: str, default: Any = None) -> Any:
    for n in names:
        if n in data and data[n] is not None:
            return data[n]
    return default


def _segments(
    points: Sequence[tuple[float, Any]], t_end: float
) -> list[tuple[float, float, Any]]:
    """Step function (time, value) → [(start, end, value)], merging repeats."""
    out: list[tuple[float, float, Any]] = []
    for i, (t, v) in enumerate(points):
        end = points[i + 1][0] if i + 1 < len(points) else t_end
        if out and out[-1][2] == v:
            out[-1] = (out[-1][0], end, v)
        else:
            out.append((t, end, v))
    return out


def nice_step_s(span_s: float, target_ticks: int = 12) -> float:
    """A 1-2-5 tick spacing giving about ``target_ticks`` ticks."""
    raw = max(span_s, 1e-3) / target_ticks
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if m * mag >= raw:
            return m * mag
    return 10 * mag  # pragma: no cover - the loop always returns


def pattern_colour(pattern: str) -> str:
    """Fill colour of an LED pattern such as ``"pulse 1.0 #00ff00"`` (off: dark, lit: its colour)."""
    words = pattern.split()
    if not words or words[0] == "off":
        return "#333333"
    colour = next((w for w in words if w.startswith("#") and len(w) == 7), None)
    return colour or "#f5d000"


def text_colour_on(fill: str) -> str:
    """Black or white, whichever reads better on ``fill`` (#rrggbb)."""
    try:
        r, g, b = (int(fill[i : i + 2], 16) for i in (1, 3, 5))
    except (ValueError, IndexError):
        return "#111"
    return "#111" if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "#fff"


def _led_colour(data: Mapping[str, Any]) -> str:
    colour = _field(data, "colour", "color", "rgb", "value")
    if isinstance(colour, str) and colour.startswith("#"):
        return colour
    if isinstance(colour, (list, tuple)) and len(colour) == 3:
        r, g, b = (max(0, min(255, round(float(c) * 255 if float(c) <= 1 else float(c)))) for c in colour)
        return f"#{r:02x}{g:02x}{b:02x}"
    if isinstance(colour, (int, float)) and not isinstance(colour, bool):
        v = max(0, min(255, round(float(colour) * 255)))
        return f"#{v:02x}{v:02x}00"
    on = _field(data, "on", "lit")
    pattern = str(_field(data, "pattern", default="")).split(" ")[0]
    if on is False or pattern == "off":
        return "#333333"
    return "#f5d000"


def _level_h(dbfs: float, row_px: float) -> float:
    frac = (max(LEVEL_FLOOR_DBFS, min(0.0, dbfs)) - LEVEL_FLOOR_DBFS) / -LEVEL_FLOOR_DBFS
    return frac * (row_px - 4)


def _event_label(ev: Event, t0: float) -> tuple[str, str, str] | None:
    """(label, colour, tooltip) for events worth a marker, else None."""
    d = ev.data
    when = f"{ev.t_s - t0:.2f} s"
    if ev.kind == "interruption":
        if _field(d, "local"):
            return f"barge-in ({_field(d, 'by', default='press')})", "#d9534f", when
        return f"interruption #{_field(d, 'event_id', default='?')}", "#d9534f", when
    if ev.kind == "wake":
        return f"wake word {_field(d, 'model', default='')}".strip(), "#16a085", f"{when} score {_field(d, 'score')}"
    if ev.kind == "flushed":
        ms = _field(d, "old_audio_ms_after")
        return (f"flush +{ms:.0f} ms" if isinstance(ms, (int, float)) else "flush"), "#e67e22", when
    if ev.kind == "tool_call":
        if _field(d, "phase", default="finished") != "finished":
            return None
        err = " (error)" if _field(d, "is_error") else ""
        return f"tool {_field(d, 'name', default='?')}{err}", "#2e86c1", when
    if ev.kind == "transcript":
        if _field(d, "tentative", default=False):
            return None
        role = _field(d, "role", default="?")
        if _field(d, "correction", default=False):
            role = "agent (cut)"
        text = str(_field(d, "text", default=""))
        short = text if len(text) <= 38 else text[:37] + "…"
        return f"{'you' if role == 'user' else role}: {short}", ("#1e8449" if role == "user" else "#7d3c98"), (
            f"{when} {role}: {text}"
        )
    if ev.kind == "session_end":
        return f"end: {_field(d, 'outcome', default='?')}", "#000000", f"{when} {_field(d, 'detail', default='')}"
    if ev.kind == "xrun":
        return f"xrun {_field(d, 'kind', default='')}".strip(), "#c0392b", when
    if ev.kind == "error":
        return f"error {_field(d, 'message', 'detail', default='')}"[:40], "#c0392b", when
    return None


def render_svg(
    events: Iterable[Event],
    *,
    t0_s: float,
    t1_s: float | None = None,
    speaker_levels: Sequence[tuple[float, float]] = (),
    spans: Sequence[tuple[float, float, str]] = (),
    title: str = "voice-appliance bench",
    subtitle: str = "",
) -> str:
    """The timeline as an SVG document.

    ``speaker_levels`` are (monotonic time, dBFS) points of the audio written
    to the speaker; ``spans`` are (start, end, label) brackets drawn in a
    "latency" row (e.g. speech end → first reply sample); everything else
    comes from ``events``.
    """
    evs = sorted(events, key=lambda e: e.t_s)
    last = max([e.t_s for e in evs] + [t for t, _ in speaker_levels] + [t0_s + 1.0])
    t1 = t1_s if t1_s is not None else last
    c = _Canvas(t0_s, max(t1, t0_s + 0.5))
    y = TOP_PX
    y = _state_row(c, evs, y)
    y = _led_rows(c, evs, y)
    y = _button_row(c, evs, y)
    gates = [e for e in evs if e.kind == "gate"]
    y = _gate_row(c, gates, y)
    y = _mic_row(c, gates, y)
    y = _speaker_row(c, evs, speaker_levels, y)
    y = _latency_row(c, spans, y)
    y = _events_row(c, evs, y)
    _interruption_guides(c, evs, y)
    _axis(c, y)
    height = _legend(c, y + 30)
    return _document(c, height, title, subtitle)


def _row_label(c: _Canvas, name: str, y: float, h: float) -> None:
    c.text(8, y + h / 2 + 4, name, size=12, weight="bold", fill="#333")


def _state_row(c: _Canvas, evs: Sequence[Event], y: float) -> float:
    """The daemon's state as coloured bands, named where they are wide enough; returns the next row's y."""
    states = [(e.t_s, str(_field(e.data, "state", "to", "new", default="?"))) for e in evs if e.kind == "state"]
    _row_label(c, "state", y, ROW_PX)
    for a, b, v in _segments(states, c.t1):
        xa, xb = c.x(a), c.x(b)
        c.rect(xa, y, xb - xa, ROW_PX, STATE_COLOURS.get(v, "#bbbbbb"), f"{v} {a - c.t0:.2f}–{b - c.t0:.2f} s")
        if xb - xa > len(v) * CHAR_PX + 4:
            c.text(xa + 3, y + ROW_PX / 2 + 4, v, fill="#fff" if v in ("muted", "speaking", "error") else "#222")
    return y + ROW_PX + ROW_GAP_PX


def _led_points(evs: Sequence[Event]) -> dict[str, list[tuple[float, tuple[str, str]]]]:
    """Per LED output: (time, (fill colour, label)) at each change."""
    leds: dict[str, list[tuple[float, tuple[str, str]]]] = {}
    for e in evs:
        if e.kind != "led":
            continue
        outputs = e.data.get("outputs")
        if isinstance(outputs, Mapping):  # {name: pattern}, the daemon's form
            for name, pattern in outputs.items():
                text = str(pattern)
                label = " ".join(w for w in text.split() if not w.startswith("#"))
                leds.setdefault(str(name), []).append((e.t_s, (pattern_colour(text), label)))
        else:
            name = str(_field(e.data, "name", "output", default="led"))
            label = str(_field(e.data, "pattern", default=""))
            leds.setdefault(name, []).append((e.t_s, (_led_colour(e.data), label)))
    return leds


def _led_rows(c: _Canvas, evs: Sequence[Event], y: float) -> float:
    """One row per LED output, lit in its colour with its pattern's name; returns the next row's y."""
    for name, points in _led_points(evs).items():
        _row_label(c, f"LED {name}" if name != "led" else "LED", y, ROW_PX)
        c.rect(LABEL_PX, y, c.plot_px, ROW_PX, "#333333")
        for a, b, (colour, label) in _segments(points, c.t1):
            xa, xb = c.x(a), c.x(b)
            c.rect(xa, y + 2, xb - xa, ROW_PX - 4, colour, f"{label or colour} {a - c.t0:.2f} s")
            if label and xb - xa > len(label) * CHAR_PX + 4:
                c.text(xa + 3, y + ROW_PX / 2 + 4, label, size=10, fill=text_colour_on(colour))
        y += ROW_PX + ROW_GAP_PX
    return y


def _button_row(c: _Canvas, evs: Sequence[Event], y: float) -> float:
    """A bar for each time the button was held, "long" at long presses; returns the next row's y."""
    _row_label(c, "button", y, ROW_PX)
    c.rect(LABEL_PX, y, c.plot_px, ROW_PX, "#f4f4f4")
    pressed_at: float | None = None
    for e in evs:
        if e.kind != "button":
            continue
        action = str(_field(e.data, "action", "kind", "event", default=""))
        if action == "press":
            pressed_at = e.t_s
        elif action == "release" and pressed_at is not None:
            c.rect(c.x(pressed_at), y + 3, c.x(e.t_s) - c.x(pressed_at), ROW_PX - 6, "#34495e",
                   f"held {e.t_s - pressed_at:.2f} s")
            pressed_at = None
        elif action == "long_press":
            c.text(c.x(e.t_s), y + ROW_PX / 2 + 4, "long", size=10, fill="#fff")
    if pressed_at is not None:  # still held when the picture ends
        c.rect(c.x(pressed_at), y + 3, c.x(c.t1) - c.x(pressed_at), ROW_PX - 6, "#34495e", "held")
    return y + ROW_PX + ROW_GAP_PX


def _gate_row(c: _Canvas, gates: Sequence[Event], y: float) -> float:
    """A mark for each block the gate let through; returns the next row's y."""
    _row_label(c, "gate", y, ROW_PX)
    c.rect(LABEL_PX, y, c.plot_px, ROW_PX, "#f4f4f4")
    for e in gates:
        if _field(e.data, "open", default=False):
            c.rect(c.x(e.t_s - GATE_BLOCK_S), y + 3, c.x(e.t_s) - c.x(e.t_s - GATE_BLOCK_S), ROW_PX - 6, "#27ae60")
    return y + ROW_PX + ROW_GAP_PX


def _mic_row(c: _Canvas, gates: Sequence[Event], y: float) -> float:
    """Each block's level: green when the agent got it, grey when zeros went instead; returns the next row's y."""
    _row_label(c, "mic", y, LEVEL_ROW_PX)
    c.text(8, y + LEVEL_ROW_PX / 2 + 18, "(→ agent)", size=10, fill="#666")
    c.rect(LABEL_PX, y, c.plot_px, LEVEL_ROW_PX, "#fafafa")
    for e in gates:
        level = _field(e.data, "level_dbfs")
        if not isinstance(level, (int, float)):
            continue
        h = _level_h(float(level), LEVEL_ROW_PX)
        sent = bool(_field(e.data, "open", default=False))
        xa, xb = c.x(e.t_s - GATE_BLOCK_S), c.x(e.t_s)
        c.rect(xa, y + LEVEL_ROW_PX - 2 - h, max(xb - xa - 0.5, 0.6), h, "#27ae60" if sent else "#b3b3b3",
               f"{level:.0f} dBFS {'sent' if sent else 'gated (zeros sent)'}")
    return y + LEVEL_ROW_PX + ROW_GAP_PX


def _speaker_row(c: _Canvas, evs: Sequence[Event], speaker_levels: Sequence[tuple[float, float]],
                 y: float) -> float:
    """The speaker's level, a tick per agent chunk received, a dashed line per reply start; returns next y."""
    _row_label(c, "speaker", y, LEVEL_ROW_PX)
    c.rect(LABEL_PX, y, c.plot_px, LEVEL_ROW_PX, "#fafafa")
    if speaker_levels:
        pts = sorted(speaker_levels)
        step = min((b[0] - a[0] for a, b in itertools.pairwise(pts) if b[0] > a[0]), default=0.05)
        for t, level in pts:
            h = _level_h(level, LEVEL_ROW_PX)
            if h <= 0:
                continue
            xa, xb = c.x(t), c.x(t + step)
            c.rect(xa, y + LEVEL_ROW_PX - 2 - h, max(xb - xa, 0.6), h, "#8e44ad")
    for e in evs:
        if e.kind == "agent_audio":
            x = c.x(e.t_s)
            c.line(x, y, x, y + 6, "#e67e22", 1)
        elif e.kind == "reply_started":
            x = c.x(e.t_s)
            c.line(x, y, x, y + LEVEL_ROW_PX, "#8e44ad", 1, "3,2")
    c.text(8, y + LEVEL_ROW_PX / 2 + 18, "(heard)", size=10, fill="#666")
    return y + LEVEL_ROW_PX + ROW_GAP_PX


def _latency_row(c: _Canvas, spans: Sequence[tuple[float, float, str]], y: float) -> float:
    """A labelled bracket per span (none: no row); returns the next row's y."""
    if not spans:
        return y
    _row_label(c, "latency", y, ROW_PX)
    for a, b, label in spans:
        xa, xb = c.x(a), c.x(b)
        yy = y + 8
        c.line(xa, yy, xb, yy, "#c0392b", 2)
        c.line(xa, yy - 5, xa, yy + 5, "#c0392b", 1.5)
        c.line(xb, yy - 5, xb, yy + 5, "#c0392b", 1.5)
        fits = xb - xa > len(label) * CHAR_PX
        c.text((xa + xb) / 2 if fits else xb + 4, yy + 15, label, size=10,
               anchor="middle" if fits else "start", fill="#c0392b")
    return y + ROW_PX + ROW_GAP_PX


def _place_labels(c: _Canvas, evs: Sequence[Event]) -> tuple[list[tuple[float, int, str, str, str]], int]:
    """Event labels on as few lines as keep them from overlapping: ([(x, line, label, colour, tip)], lines)."""
    marks = [(e, lab) for e in evs if (lab := _event_label(e, c.t0)) is not None]
    rows_end: list[float] = []
    placed: list[tuple[float, int, str, str, str]] = []
    for e, (label, colour, tip) in marks:
        x = c.x(e.t_s)
        width = len(label) * CHAR_PX + 10
        for i, end in enumerate(rows_end):
            if end < x:
                rows_end[i] = x + width
                row = i
                break
        else:
            rows_end.append(x + width)
            row = len(rows_end) - 1
        placed.append((x, row, label, colour, tip))
    return placed, max(1, len(rows_end))


def _events_row(c: _Canvas, evs: Sequence[Event], y: float) -> float:
    """Labelled markers (interruptions, flushes, tools, transcripts, xruns, end); returns the axis's y."""
    placed, n_rows = _place_labels(c, evs)
    ev_h = n_rows * 16 + 8
    _row_label(c, "events", y, min(ev_h, ROW_PX))
    right = LABEL_PX + c.plot_px
    for x, row, label, colour, tip in placed:
        yy = y + 12 + row * 16
        c.line(x, y, x, yy + 2, colour, 1)
        c.add(f'<circle cx="{x:.1f}" cy="{yy - 4:.1f}" r="3" fill="{colour}"><title>{escape(tip)}</title></circle>')
        if x + 5 + len(label) * CHAR_PX > right + RIGHT_PX:  # would run off the picture: label on the left
            c.text(x - 5, yy, label, size=11, fill=colour, anchor="end")
        else:
            c.text(x + 5, yy, label, size=11, fill=colour)
    return y + ev_h + 4


def _interruption_guides(c: _Canvas, evs: Sequence[Event], axis_y: float) -> None:
    """A dashed line through every row at each interruption."""
    for e in evs:
        if e.kind == "interruption":
            c.line(c.x(e.t_s), TOP_PX, c.x(e.t_s), axis_y - 4, "#d9534f", 1, "4,3")


def _axis(c: _Canvas, y: float) -> None:
    """The time axis at ``y``: 1-2-5 ticks in seconds from t0, with faint guides up through the rows."""
    step = nice_step_s(c.t1 - c.t0)
    c.line(LABEL_PX, y, LABEL_PX + c.plot_px, y, "#444")
    k = 0
    while (t := k * step) <= c.t1 - c.t0 + 1e-9:
        x = c.x(c.t0 + t)
        c.line(x, y, x, y + 5, "#444")
        c.line(x, TOP_PX, x, y, "#000", 0.3, "1,4")
        c.text(x, y + 17, f"{t:g}", size=10, anchor="middle")
        k += 1
    c.text(LABEL_PX + c.plot_px, y + 30, "time (s)", size=10, anchor="end", fill="#555")


def _legend(c: _Canvas, ly: float) -> float:
    """The colour key on the line at ``ly``; returns the picture's height."""
    lx: float = LABEL_PX
    for name in ("idle", "connecting", "listening", "thinking", "speaking", "error", "muted"):
        c.rect(lx, ly - 9, 12, 12, STATE_COLOURS[name])
        c.text(lx + 16, ly + 1, name, size=10)
        lx += 24 + len(name) * CHAR_PX
    c.rect(lx, ly - 9, 12, 12, "#27ae60")
    c.text(lx + 16, ly + 1, "mic sent", size=10)
    lx += 80
    c.rect(lx, ly - 9, 12, 12, "#b3b3b3")
    c.text(lx + 16, ly + 1, "mic gated (zeros)", size=10)
    lx += 120
    c.line(lx, ly - 9, lx, ly + 3, "#e67e22", 2)
    c.text(lx + 6, ly + 1, "agent audio received", size=10)
    return ly + 14


def _document(c: _Canvas, height: float, title: str, subtitle: str) -> str:
    """The SVG document: white page, title and subtitle, then everything drawn on ``c``."""
    header = (
        f'<text x="{LABEL_PX}" y="24" font-size="16" font-weight="bold" fill="#111">{escape(title)}</text>'
        f'<text x="{LABEL_PX}" y="44" font-size="12" fill="#444">{escape(subtitle)}</text>'
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH_PX}" height="{height:.0f}" '
        f'viewBox="0 0 {WIDTH_PX} {height:.0f}" font-family="{FONT}">'
        f'<rect width="100%" height="100%" fill="#ffffff"/>' + header + "".join(c.parts) + "</svg>\n"
    )


def png_converter() -> str | None:
    """Path of rsvg-convert when installed (Debian: librsvg2-bin)."""
    return shutil.which("rsvg-convert")


def write(svg: str, svg_path: Path, png: bool = True, timeout_s: float = 30.0) -> Path | None:
    """Write the SVG; also a PNG next to it when possible. Returns the PNG path or None."""
    svg_path.write_text(svg, encoding="utf-8")
    tool = png_converter() if png else None
    if tool is None:
        return None
    png_path = svg_path.with_suffix(".png")
    try:
        subprocess.run(
            [tool, "--format", "png", "--output", str(png_path), str(svg_path)],
            check=True, capture_output=True, timeout=timeout_s,
        )
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("could not render %s as PNG (%s); the SVG is there", svg_path, e)
        return None
    return png_path
