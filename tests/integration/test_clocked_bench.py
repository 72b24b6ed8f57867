"""``voice-appliance bench --card clocked``: the demo on the clocked card reports what was heard."""

from __future__ import annotations

import array
import json
import wave
from pathlib import Path

import pytest

from device.bench import clockedcard, fixtures, report, script
from device.cli import main

pytestmark = pytest.mark.realtime

pytest.importorskip("websockets", reason="the emulator needs the bench extra (websockets)")
CLOCK_ERROR_MS = 15.0  # the speaker recorder places heard samples within this


def _wav(path: Path) -> tuple[array.array[int], int]:
    with wave.open(str(path), "rb") as w:
        return array.array("h", w.readframes(w.getnframes())), w.getframerate()


def _sound_s(samples: array.array[int], rate_hz: int) -> float:
    return sum(1 for x in samples if abs(x) > 16) / rate_hz


def test_the_demo_on_the_clocked_card_reports_heard_audio(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if (reason := clockedcard.available()) is not None:
        pytest.skip(reason)
    out = tmp_path / "out"
    code = main(["bench", "--card", "clocked", "--fast", "--no-progress", "--out", str(out)])
    printed = capsys.readouterr().out
    doc = json.loads((out / "report.json").read_text())
    assert report.validate(doc) == []
    assert code == 0, printed
    assert doc["card"] == "clocked"
    assert "clocked card" in printed
    assert "heard after it" in printed

    # every reply was heard, no sooner than it was written
    assert len(doc["turns"]) == 2
    for t in doc["turns"]:
        assert t["first_agent_audio_heard_s"] is not None
        assert t["first_agent_audio_heard_s"] >= t["first_agent_audio_written_s"] - CLOCK_ERROR_MS / 1000
        assert t["latency_ms"] is not None
        assert t["written_latency_ms"] is not None
    # interruptions: at most one 62.5 ms chunk of the old reply heard after each
    assert {i["source"] for i in doc["interruptions"]} >= {"local"}
    for i in doc["interruptions"]:
        assert i["old_audio_ms_after"] is not None
        assert i["old_audio_ms_after"] <= 62.5 + CLOCK_ERROR_MS

    # what the agent received: all the speech said while the button was held
    demo = fixtures.demo_input()
    steps = script.load_steps(fixtures.DEMO_TIMELINE)
    presses = [s.at_s for s in steps if s.action == "press"]
    releases = [s.at_s for s in steps if s.action == "release"]
    said = array.array("h", demo.pcm)
    held = array.array("h")
    for a, b in zip(presses, releases, strict=True):
        held.extend(said[int(a * 16000) : int(b * 16000)])
    user, rate = _wav(out / "user_audio.wav")
    assert _sound_s(user, rate) >= _sound_s(held, 16000) - 0.02
    # what the user heard: the agent's replies, as long as the run, on the run's clock
    heard, rate = _wav(out / "agent_audio.wav")
    assert rate == 16000
    assert _sound_s(heard, rate) > 2.0
    assert len(heard) / rate == pytest.approx(doc["duration_s"], abs=0.1)
