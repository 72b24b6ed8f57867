"""The timeline picture, rendered from synthetic telemetry."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from device.bench import timeline
from tests.unit.bench.synthetic import T0, Ev, conversation, speaker_levels

SVG = "{http://www.w3.org/2000/svg}"


def _render(events: list[Ev], **kw: object) -> ET.Element:
    svg = timeline.render_svg(events, t0_s=T0, **kw)  # type: ignore[arg-type]
    return ET.fromstring(svg)


def _texts(root: ET.Element) -> list[str]:
    return [t.text or "" for t in root.iter(f"{SVG}text")]


def _titles(root: ET.Element) -> list[str]:
    return [t.text or "" for t in root.iter(f"{SVG}title")]


def test_every_row_and_the_important_events_are_drawn() -> None:
    root = _render(conversation(), t1_s=T0 + 20, speaker_levels=speaker_levels(),
                   spans=[(T0 + 5.5, T0 + 6.55, "1050 ms")], title="demo")
    texts = _texts(root)
    for row in ("state", "LED status", "button", "gate", "mic", "speaker", "latency", "events"):
        assert row in texts
    assert "interruption #3" in texts
    assert "tool set_volume" in texts
    assert "flush +0 ms" in texts
    assert "flush +12 ms" in texts
    assert "barge-in (press)" in texts
    assert "pulse 1" in texts  # the LED's pattern, drawn in its colour
    assert "end: local" in texts
    assert "xrun underrun" in texts
    assert "1050 ms" in texts
    assert any(t.startswith("you: Please turn the volume down") for t in texts)
    assert "you: Please turn the" not in texts  # tentative transcripts are left out
    assert "agent (cut): I turned the volume down." in texts
    # the state row shows each state for as long as it lasted
    assert "speaking 6.55–9.00 s" in _titles(root)
    assert "held 4.75 s" in _titles(root)


def test_led_patterns_are_drawn_in_their_colour() -> None:
    assert timeline.pattern_colour("pulse 1.0 #00ff00") == "#00ff00"
    assert timeline.pattern_colour("off") == "#333333"
    assert timeline.pattern_colour("on") == "#f5d000"
    assert timeline.text_colour_on("#0000ff") == "#fff"
    assert timeline.text_colour_on("#00ff00") == "#111"
    root = _render([Ev(T0, "led", {"state": "listening", "outputs": {"red": "on #ff0000", "green": "off"}})])
    texts = _texts(root)
    assert "LED red" in texts and "LED green" in texts
    fills = {r.get("fill") for r in root.iter(f"{SVG}rect")}
    assert "#ff0000" in fills


def test_blocks_the_gate_closed_are_shown_as_zeros_sent() -> None:
    events = [
        Ev(T0 + 0.25, "gate", {"open": False, "level_dbfs": -20.0, "seq": 0}),
        Ev(T0 + 0.5, "gate", {"open": True, "level_dbfs": -20.0, "seq": 1}),
    ]
    titles = _titles(_render(events))
    assert titles.count("-20 dBFS gated (zeros sent)") == 1
    assert titles.count("-20 dBFS sent") == 1


def test_labels_never_overlap_in_the_event_row() -> None:
    events = [Ev(T0 + 1 + 0.01 * i, "tool_call", {"name": f"tool{i}", "is_error": False, "phase": "finished"})
              for i in range(5)]
    root = _render(events, t1_s=T0 + 10)
    ys = sorted(
        float(t.get("y", 0)) for t in root.iter(f"{SVG}text") if (t.text or "").startswith("tool tool")
    )
    assert len(ys) == 5 and len(set(ys)) == 5


def test_a_label_at_the_right_edge_stays_in_the_picture() -> None:
    root = _render([Ev(T0 + 9.9, "session_end", {"outcome": "agent_ended"})], t1_s=T0 + 10)
    label = next(t for t in root.iter(f"{SVG}text") if t.text == "end: agent_ended")
    assert label.get("text-anchor") == "end"


def test_text_from_the_agent_is_escaped() -> None:
    events = [Ev(T0 + 1, "transcript", {"role": "agent", "text": "<script>&'\""})]
    root = _render(events)
    assert "agent: <script>&'\"" in _texts(root)


def test_no_events_still_gives_a_picture() -> None:
    root = _render([])
    assert root.tag == f"{SVG}svg"
    assert float(root.get("height", 0)) > 100


@pytest.mark.parametrize(("span", "step"), [(20, 2), (5, 0.5), (1800, 200), (0.3, 0.05)])
def test_ticks_follow_1_2_5(span: float, step: float) -> None:
    assert timeline.nice_step_s(span) == pytest.approx(step)


def test_the_png_is_written_next_to_the_svg_when_rsvg_convert_is_installed(tmp_path: Path) -> None:
    svg = timeline.render_svg(conversation(), t0_s=T0, speaker_levels=speaker_levels())
    png = timeline.write(svg, tmp_path / "timeline.svg")
    assert (tmp_path / "timeline.svg").read_text().startswith("<svg")
    if shutil.which("rsvg-convert") is None:
        assert png is None
        pytest.skip("rsvg-convert (librsvg2-bin) is not installed: only the SVG is written")
    assert png == tmp_path / "timeline.png"
    assert png.read_bytes().startswith(b"\x89PNG")


def test_without_a_converter_only_the_svg_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(timeline.shutil, "which", lambda name: None)
    assert timeline.write("<svg/>", tmp_path / "t.svg") is None
    assert not (tmp_path / "t.png").exists()
