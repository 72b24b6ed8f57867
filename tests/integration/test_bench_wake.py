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


def _clip(path: Path, *, wake: bool) -> Path:
    """0.5 s of silence, the bundled "hey jarvis" (or not), 0.2 s, the bundled question, 0.5 s."""
    from device.bench import fixtures, wavfile

    word, _ = wavfile.read_wav(fixtures.WAKE_WAV)
    question, _ = wavfile.read_wav(fixtures.QUESTION_WAV)
    lead = word + wavfile.silence(fixtures.WAKE_GAP_S) if wake else b""
    wavfile.write_wav(path, wavfile.silence(0.5) + lead + question + wavfile.silence(0.5), 16000)
    return path


# The user speaks first (no greeting over the words after the wake word), the agent answers once.
SCENARIO = """\
name = "wake"
[agent]
first_message = ""
after_last_turn = "cycle"
[timing]
turn_timeout_s = 0
[[turns]]
transcript = "Please turn the volume down, and tell me when the museum opens."
reply = "The museum opens at nine."
"""


def _scenario(tmp_path: Path) -> list[str]:
    path = tmp_path / "scenario.toml"
    path.write_text(SCENARIO)
    return ["--scenario", str(path)]


_OWN_INPUT = ["bench", "--gate", "wake_word", "--card", "file", "--no-progress",
              "--set", "wake.engine=openwakeword", "--set", "wake.model=hey_jarvis"]


def test_a_clip_the_detector_hears_passes_with_its_wake_figures_and_silence_after_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    # The idle timeout outlasts the file card's stale-buffer garbage (it began ~12 s into a run).
    code = main([*_OWN_INPUT, "--input", str(_clip(tmp_path / "in.wav", wake=True)), "--out", str(out),
                 "--set", "session.idle_timeout_s=14", "--max-wait-s", "40", *_scenario(tmp_path)])
    printed = capsys.readouterr().out
    doc = report.load(out / "report.json")
    assert code == 0, printed
    wake = doc["wake"]
    assert wake["started_by_wake"] is True
    assert doc["press_to_first_frame_sent_ms"] == []  # nothing was pressed
    first = wake["detections"][0]
    assert first["started_conversation"] and first["model"] == "hey_jarvis" and first["score"] > 0.5
    assert wake["word_end_s"] == pytest.approx(0.5 + 0.84, abs=0.03)  # the bundled word's speech ends at 0.84 s
    assert wake["detection_delay_ms"] is not None and -300 < wake["detection_delay_ms"] < 1500
    assert wake["false_wakes"] == 0
    assert "wake word: detections" in printed
    assert doc["outcome"]["ended_by"] == "idle_timeout"
    assert [t["role"] for t in doc["transcript"]] == ["user", "agent"]
    # What the agent received after the input ended is silence, never stale buffer contents.
    from device.bench import wavfile

    pcm, _ = wavfile.read_wav(out / "user_audio.wav")
    after = pcm[2 * 16000 * 8 :]  # the input (about 5 s) is over 8 s into the conversation
    assert len(after) > 2 * 16000 * 5
    assert max(wavfile.levels(after, 16000, 0.25)) < -90.0


def test_a_clip_the_detector_misses_fails_and_nothing_is_pressed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code = main([*_OWN_INPUT, "--input", str(_clip(tmp_path / "in.wav", wake=False)), "--out", str(out)])
    printed = capsys.readouterr().out
    doc = report.load(out / "report.json")
    assert code == 1, printed
    assert printed.startswith("FAIL: the wake word was not detected (0 detection(s))"), printed
    assert doc["outcome"]["ended_by"] == "no_wake"
    assert doc["conversations"] == 0
    assert doc["wake"]["detections"] == []
    assert doc["duration_s"] < 30  # it ends soon after the input, not at --max-wait-s


def test_a_conversation_still_open_at_max_wait_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from device.bench import fixtures, wavfile

    # The room keeps talking (the question, looped, after the wake word): nothing ends the conversation.
    talk, _ = wavfile.read_wav(fixtures.QUESTION_WAV)
    room = tmp_path / "room.wav"
    wavfile.write_wav(room, wavfile.silence(2.5) + talk, 16000)
    out = tmp_path / "out"
    code = main([*_OWN_INPUT, "--input", str(_clip(tmp_path / "in.wav", wake=True)), "--out", str(out),
                 "--room-noise", str(room), "--max-wait-s", "6", *_scenario(tmp_path)])
    printed = capsys.readouterr().out
    doc = report.load(out / "report.json")
    assert code == 1, printed
    assert doc["outcome"]["ended_by"] == "max_wait"
    assert "still going at --max-wait-s" in doc["outcome"]["detail"]
    assert doc["input"]["room_noise"] == str(room)
