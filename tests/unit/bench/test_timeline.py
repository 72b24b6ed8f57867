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
    assert "LED red" in texts
    assert "LED green" in texts
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
    assert len(ys) == 5
    assert len(set(ys)) == 5


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


ROWS = ("state", "LED status", "button", "gate", "mic", "speaker", "latency", "events")


def _full(events: list[Ev]) -> str:
    return timeline.render_svg(events, t0_s=T0, t1_s=T0 + 20, speaker_levels=speaker_levels(),
                               spans=[(T0 + 5.5, T0 + 6.55, "1050 ms")], title="demo")


def test_the_picture_depends_only_on_the_events_not_on_their_order() -> None:
    events = conversation()
    svg = _full(events)
    assert _full(events) == svg  # nothing carried over from one picture to the next
    # latest first (stable, so events at the same time keep their order): the same picture
    assert _full(sorted(events, key=lambda e: -e.t_s)) == svg
    assert timeline.render_svg(iter(events), t0_s=T0) == timeline.render_svg(events, t0_s=T0)


def test_rows_are_stacked_in_order_and_everything_stays_in_the_picture() -> None:
    root = ET.fromstring(_full(conversation()))
    height = float(root.get("height", 0))
    label_y = {t.text: float(t.get("y", 0)) for t in root.iter(f"{SVG}text") if t.get("font-weight") == "bold"}
    ys = [label_y[row] for row in ROWS]
    assert ys == sorted(ys)
    assert len(set(ys)) == len(ys)
    for r in root.iter(f"{SVG}rect"):
        if r.get("x") is None:  # the page's background
            continue
        assert float(r.get("x", 0)) + float(r.get("width", 0)) <= timeline.WIDTH_PX + 0.05
        assert float(r.get("y", 0)) >= 0
        assert float(r.get("y", 0)) + float(r.get("height", 0)) <= height
    # the axis ticks sit below the events row, above the bottom
    ticks = [float(t.get("y", 0)) for t in root.iter(f"{SVG}text") if t.text == "20"]
    assert ticks
    assert label_y["events"] < ticks[0] < height


def test_without_latency_spans_there_is_no_latency_row_and_the_rows_below_move_up() -> None:
    with_spans = ET.fromstring(_full(conversation()))
    without = _render(conversation(), t1_s=T0 + 20, speaker_levels=speaker_levels(), title="demo")
    assert "latency" not in _texts(without)

    def events_y(root: ET.Element) -> float:
        return next(float(t.get("y", 0)) for t in root.iter(f"{SVG}text") if t.text == "events")

    shift = events_y(with_spans) - events_y(without)
    assert shift == timeline.ROW_PX + timeline.ROW_GAP_PX
    assert float(with_spans.get("height", 0)) - float(without.get("height", 0)) == shift


def test_each_interruption_gets_a_guide_through_every_row() -> None:
    root = ET.fromstring(_full(conversation()))
    guides = [ln for ln in root.iter(f"{SVG}line") if ln.get("stroke-dasharray") == "4,3"]
    assert len(guides) == 2  # the barge-in press at 9.0 s and the agent's interruption at 9.7 s
    state_top = timeline.TOP_PX
    events_y = next(float(t.get("y", 0)) for t in root.iter(f"{SVG}text") if t.text == "events")
    for g in guides:
        assert float(g.get("y1", 0)) == state_top
        assert float(g.get("y2", 0)) > events_y
    xs = sorted(float(g.get("x1", 0)) for g in guides)
    plot_px = timeline.WIDTH_PX - timeline.LABEL_PX - timeline.RIGHT_PX
    assert xs == [pytest.approx(timeline.LABEL_PX + t / 20 * plot_px, abs=0.05) for t in (9.0, 9.7)]
