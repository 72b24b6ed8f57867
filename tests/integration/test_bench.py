"""``voice-appliance bench`` end to end: the real daemon, ALSA file devices, mock pins, the emulator."""

from __future__ import annotations

import json
import socket
import threading
import wave
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import webrtcvad

from device.bench import report
from device.cli import main

pytestmark = pytest.mark.realtime

pytest.importorskip("websockets", reason="the emulator needs the bench extra (websockets)")


def _wav(path: Path) -> tuple[bytes, int]:
    with wave.open(str(path), "rb") as w:
        return w.readframes(w.getnframes()), w.getframerate()


def _voiced_s(pcm: bytes, rate_hz: int) -> float:
    vad = webrtcvad.Vad(2)
    step = 2 * rate_hz * 30 // 1000
    frames = [pcm[i : i + step] for i in range(0, len(pcm) - step + 1, step)]
    return 0.03 * sum(1 for f in frames if vad.is_speech(f, rate_hz))


def test_the_demo_in_fast_mode_writes_all_four_artefacts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = main(["bench", "--fast", "--no-progress", "--out", str(out)])
    printed = capsys.readouterr().out
    doc = json.loads((out / "report.json").read_text())
    assert report.validate(doc) == []
    assert code == 0, printed
    assert doc["outcome"]["ok"]
    assert doc["outcome"]["ended_by"] == "agent_ended"
    assert printed.startswith("PASS")

    # what the agent received: the question and the barge-in, nothing while the button was up
    user_pcm, rate = _wav(out / "user_audio.wav")
    assert _voiced_s(user_pcm, rate) > 3.0
    # what the user heard: the agent's speech
    agent_pcm, rate = _wav(out / "agent_audio.wav")
    assert rate == 16000
    assert _voiced_s(agent_pcm, rate) > 2.0
    ET.parse(out / "timeline.svg")

    # the demo's story, as measured
    assert [c["name"] for c in doc["tool_calls"]] == ["set_volume"]
    assert not any(c["is_error"] for c in doc["tool_calls"])
    assert len(doc["turns"]) == 2
    assert doc["turns"][0]["interrupted"] is True
    assert all(t["first_agent_audio_written_s"] is not None for t in doc["turns"])
    assert all(t["latency_ms"] is not None and t["latency_ms"] > 0 for t in doc["turns"])
    assert any(i["source"] == "local" for i in doc["interruptions"])
    assert doc["press_to_first_frame_sent_ms"]
    assert doc["protocol_violations"] == []
    assert [t["role"] for t in doc["transcript"]].count("user") == 2


def test_a_conversation_cut_by_the_agent_fails_the_run(tmp_path: Path) -> None:
    scenario = tmp_path / "broken.toml"
    scenario.write_text(
        'name = "broken"\n[agent]\nfirst_message = ""\n'
        '[[turns]]\nreply = "This answer will not finish, the server breaks down in the middle of it."\n'
        '[[faults]]\nkind = "close"\nreply = 0\nafter_chunks = 2\ncode = 1011\nreason = "Internal error"\n'
    )
    out = tmp_path / "out"
    code = main(["bench", "--fast", "--no-progress", "--scenario", str(scenario), "--out", str(out)])
    doc = report.load(out / "report.json")
    assert code == 1
    assert doc["outcome"]["ok"] is False
    assert doc["outcome"]["exit_code"] == 1
    assert doc["outcome"]["ended_by"] not in ("agent_ended", "normal", "local")


def test_an_agent_url_nobody_listens_on_fails_the_run(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out"
    timeline = tmp_path / "t.toml"
    timeline.write_text('[[step]]\nat_s = 0.2\naction = "click"\n')
    code = main([
        "bench", "--fast", "--no-progress", "--out", str(out), "--timeline", str(timeline),
        "--agent-url", f"http://127.0.0.1:{port}", "--set", "agent.agent_id=agent_nobody",
        "--set", "agent.connection=public", "--max-wait-s", "30",
    ])
    doc = report.load(out / "report.json")
    assert code == 1
    assert doc["outcome"]["ok"] is False
    assert doc["agent"]["kind"] == "external"
    assert doc["artefacts"]["user_audio_wav"] is None
    assert (out / "agent_audio.wav").exists()
    assert (out / "timeline.svg").exists()


def test_a_private_agent_without_a_key_is_refused_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ELEVENLABS_API_KEY", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    code = main(["bench", "--agent-url", "http://127.0.0.1:9", "--set", "agent.agent_id=agent_x",
                 "--out", str(tmp_path / "out")])
    assert code == 77
    assert "give --api-key-file FILE" in capsys.readouterr().err
    assert not (tmp_path / "out" / "report.json").exists()


def test_the_file_card_timeline_counts_from_the_microphones_first_sample(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # On a slow CPU (the ARM check runs the bench under qemu) the capture worker opens the file
    # microphone seconds after the daemon starts, and the file is read from its start only then. A
    # timeline counted from the daemon's start pressed before the question was read: the agent got
    # half of the first question and none of the barge-in. Here the microphone opens 2.5 s late.
    from device.drivers.capture import Capture

    opened = Capture._open

    def slow_open(self: Capture) -> bool:
        threading.Event().wait(2.5)
        return opened(self)

    monkeypatch.setattr(Capture, "_open", slow_open)
    out = tmp_path / "out"
    code = main(["bench", "--card", "file", "--fast", "--no-progress", "--out", str(out)])
    printed = capsys.readouterr().out
    doc = json.loads((out / "report.json").read_text())
    assert code == 0, printed
    assert doc["outcome"]["ended_by"] == "agent_ended", printed
    assert [t["role"] for t in doc["transcript"]].count("user") == 2  # the barge-in question reached the agent
    user_pcm, rate = _wav(out / "user_audio.wav")
    assert _voiced_s(user_pcm, rate) > 3.0
