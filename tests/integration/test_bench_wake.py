"""``voice-appliance bench --gate wake_word``: a wake-then-question conversation with no button, PASS."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from device.bench import report
from device.cli import main

pytestmark = pytest.mark.realtime

pytest.importorskip("websockets", reason="the emulator needs the bench extra (websockets)")
pytest.importorskip("pyopen_wakeword", reason="the wake extra is not installed")


def test_bench_gate_wake_word_runs_the_demo_hands_free(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = main(["bench", "--gate", "wake_word", "--no-progress", "--out", str(out)])
    printed = capsys.readouterr().out
    doc = json.loads((out / "report.json").read_text())
    assert report.validate(doc) == []
    assert code == 0, printed
    assert printed.startswith("PASS"), printed
    assert doc["gate_mode"] == "wake_word"
    assert doc["outcome"]["ended_by"] == "agent_ended"
    # The agent got both questions; the second wake word cut its first answer off (nobody pressed anything).
    assert [t["role"] for t in doc["transcript"]].count("user") == 2
    assert doc["turns"][0]["interrupted"] is True
    assert any(i["source"] == "local" for i in doc["interruptions"])
    svg = (out / "timeline.svg").read_text()
    ET.fromstring(svg)
    assert svg.count("wake word hey_jarvis") == 2
    assert "barge-in (wake word)" in svg
