"""report.json: the schema accepts what the bench writes and rejects what it must not."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from device.bench import report


def valid_doc() -> dict[str, Any]:
    return {
        "schema_version": report.SCHEMA_VERSION,
        "tool_version": "0.1.0",
        "started_at": "2025-01-01T00:00:00Z",
        "machine": {"platform": "Linux-x86_64", "python": "3.11.2", "cpus": 2},
        "mode": "fast",
        "card": "clocked",
        "gate_mode": "push_to_talk",
        "input": {"path": "question.wav", "rate_hz": 16000, "channels": 1, "duration_s": 4.2},
        "agent": {"kind": "emulator", "url": "http://127.0.0.1:5000", "scenario": "demo"},
        "outcome": {"ok": True, "ended_by": "local", "detail": "conversation completed", "exit_code": 0},
        "duration_s": 19.5,
        "conversations": 1,
        "turns": [
            {
                "index": 0,
                "user_speech_end_s": None,
                "first_agent_audio_received_s": 0.9,
                "first_agent_audio_written_s": 1.05,
                "first_agent_audio_heard_s": 1.08,
                "latency_ms": None,
                "written_latency_ms": None,
                "device_share_ms": None,
                "interrupted": False,
                "user_text": None,
                "agent_text": "Hello",
            },
            {
                "index": 1,
                "user_speech_end_s": 5.5,
                "first_agent_audio_received_s": 6.4,
                "first_agent_audio_written_s": 6.55,
                "first_agent_audio_heard_s": 6.58,
                "latency_ms": 1080.0,
                "written_latency_ms": 1050.0,
                "device_share_ms": 155.0,
                "interrupted": True,
                "user_text": "Please turn the volume down",
                "agent_text": "Done.",
            },
        ],
        "interruptions": [{"at_s": 9.7, "source": "agent", "event_id": 3, "old_audio_ms_after": 0.0,
                           "old_audio_written_ms_after": 180.0}],
        "press_to_first_frame_sent_ms": [340.0],
        "block_capture_to_wire_ms": report.stats([4.0, 5.0, 30.0]),
        "reply_received_to_written_ms": report.stats([150.0]),
        "xruns": {"capture_overruns": 0, "playback_underruns": 1},
        "ping_ms": report.stats([20, 21]),
        "cpu_s": {"process": 3.2, "device": 1.1, "per_conversation_minute": 3.4},
        "peak_rss_mb": 61.5,
        "protocol_violations": [],
        "tool_calls": [{"at_s": 5.9, "name": "set_volume", "is_error": False}],
        "transcript": [{"at_s": 5.7, "role": "user", "text": "Please turn the volume down", "cut": False}],
        "wake": None,
        "artefacts": {
            "agent_audio_wav": "agent_audio.wav",
            "user_audio_wav": "user_audio.wav",
            "timeline_svg": "timeline.svg",
            "timeline_png": None,
        },
    }


def test_a_complete_report_is_valid_and_round_trips(tmp_path: Path) -> None:
    doc = valid_doc()
    assert report.validate(doc) == []
    path = tmp_path / "report.json"
    report.write(doc, path)
    assert report.load(path) == doc


@pytest.mark.parametrize(
    ("mutate", "complaint"),
    [
        (lambda d: d.pop("outcome"), "report.outcome: missing"),
        (lambda d: d.update(schema_version=1), f"report.schema_version: must be {report.SCHEMA_VERSION}"),
        (lambda d: d.update(card="usb"), "report.card: must be one of"),
        (lambda d: d.update(mode="slow"), "report.mode: must be one of"),
        (lambda d: d["turns"][1].update(latency_ms="fast"), "report.turns[1].latency_ms: expected number or null"),
        (lambda d: d["xruns"].update(capture_overruns=-1), "report.xruns.capture_overruns: -1 is below"),
        (lambda d: d["xruns"].update(capture_overruns=1.5), "report.xruns.capture_overruns: expected integer"),
        (lambda d: d["outcome"].update(ok="yes"), "report.outcome.ok: expected boolean"),
        (lambda d: d.update(surprise=1), "report.surprise: unknown field"),
        (lambda d: d["interruptions"][0].update(source="cloud"), "report.interruptions[0].source: must be one of"),
        (lambda d: d.update(peak_rss_mb=float("nan")), "report.peak_rss_mb: expected number"),
        (lambda d: d["ping_ms"].pop("p99"), "report.ping_ms.p99: missing"),
        (lambda d: d.update(press_to_first_frame_sent_ms=[True]), "report.press_to_first_frame_sent_ms[0]"),
    ],
)
def test_each_kind_of_mistake_is_named(mutate: Any, complaint: str) -> None:
    doc = copy.deepcopy(valid_doc())
    mutate(doc)
    errors = report.validate(doc)
    assert any(e.startswith(complaint) for e in errors), errors
    with pytest.raises(report.ReportError, match="invalid bench report"):
        report.check(doc)


def test_an_invalid_report_is_not_written(tmp_path: Path) -> None:
    doc = valid_doc()
    del doc["cpu_s"]
    with pytest.raises(report.ReportError, match="cpu_s: missing"):
        report.write(doc, tmp_path / "report.json")
    assert not (tmp_path / "report.json").exists()


def test_loading_a_report_of_another_version_says_so(tmp_path: Path) -> None:
    doc = valid_doc()
    doc["schema_version"] = 99
    path = tmp_path / "report.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(report.ReportError, match=f"schema_version 99; this version reads {report.SCHEMA_VERSION}"):
        report.load(path)


def test_the_schema_documents_every_field() -> None:
    rows = report.schema_table()
    names = {r[0] for r in rows}
    assert {"schema_version", "turns[].device_share_ms", "interruptions[].old_audio_ms_after", "cpu_s.process"} <= names
    assert [name for name, _t, desc in rows if not desc] == []


def test_percentiles_use_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert report.percentile(values, 50) == 50.0
    assert report.percentile(values, 99) == 99.0
    assert report.percentile([7.0], 99) == 7.0
    assert report.percentile([], 50) is None
    assert report.stats([]) == {"count": 0, "p50": None, "p99": None, "max": None}


def test_the_summary_tells_pass_or_fail_and_the_figures() -> None:
    doc = valid_doc()
    text = report.summary(doc)
    assert text.startswith("PASS: conversation completed")
    assert "1050 ms" in text
    assert "155 ms" in text
    assert "interruption (agent) at 9.70 s: 0 ms of the old reply" in text
    assert "protocol violations: 0" in text
    doc["outcome"] = {"ok": False, "ended_by": "network", "detail": "the connection dropped", "exit_code": 1}
    doc["protocol_violations"] = [{"conversation_id": "c1", "rule": "pong_id", "detail": "pong for unknown ping 7"}]
    text = report.summary(doc)
    assert text.startswith("FAIL: the connection dropped")
    assert "pong_id: pong for unknown ping 7" in text
