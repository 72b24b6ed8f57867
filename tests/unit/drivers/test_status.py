"""Status JSON, Prometheus textfile and the STATUS= line; atomic writes; telemetry fan-out."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from device.app.telemetry import Telemetry, TelemetryBus
from device.drivers.status import METRICS, Status, StatusFiles, status_line, to_json, to_prometheus, write_atomic

ST = Status(
    state="listening",
    muted=False,
    conversation_id="conv_123",
    last_error="",
    state_for_s=3.25,
    gate_mode="push_to_talk",
    counters={"conversations": 2, "errors": 1, "xruns": 3, "ping_ms": 42.0, "uptime_s": 10.0},
)


def test_status_json_has_state_and_counters() -> None:
    doc = json.loads(to_json(ST, now_epoch_s=0.0))
    assert doc["version"] == 1
    assert doc["updated_at"] == "1970-01-01T00:00:00Z"
    assert doc["state"] == "listening"
    assert doc["conversation_id"] == "conv_123"
    assert doc["counters"]["conversations"] == 2
    assert doc["counters"]["xruns"] == 3
    assert doc["counters"]["ping_ms"] == 42.0
    assert set(doc["counters"]) == set(METRICS)  # every counter present, zero when unknown
    assert doc["counters"]["barge_ins"] == 0


def test_prometheus_textfile_is_well_formed() -> None:
    text = to_prometheus(ST)
    sample = re.compile(r'^[a-z_]+(\{state="[a-z]+"\})? -?[0-9.e+]+$')
    for line in text.splitlines():
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or sample.match(line), line
    assert 'voice_appliance_state{state="listening"} 1' in text
    assert 'voice_appliance_state{state="idle"} 0' in text
    assert 'voice_appliance_state{state="stopped"} 0' in text
    assert "voice_appliance_up 1\n" in text
    assert "voice_appliance_conversations_total 2" in text
    assert "# TYPE voice_appliance_conversations_total counter" in text
    assert "voice_appliance_ping_ms 42" in text


def test_prometheus_values_are_exact() -> None:
    """Values are written in full: ``:g`` would write 1234567 as 1.23457e+06 and 2592001.5 s as 2.592e+06."""
    st = Status(counters={"blocks_sent": 1234567, "uptime_s": 2592001.5, "ping_ms": 0.1, "errors": 10**15})
    text = to_prometheus(st)
    assert "voice_appliance_blocks_sent_total 1234567\n" in text
    assert "voice_appliance_uptime_s 2592001.5\n" in text
    assert "voice_appliance_ping_ms 0.1\n" in text
    assert "voice_appliance_errors_total 1000000000000000\n" in text
    assert "voice_appliance_conversations_total 0\n" in text  # absent: zero
    values = {line.split(" ")[0]: line.split(" ")[1] for line in text.splitlines() if not line.startswith("#")}
    assert float(values["voice_appliance_uptime_s"]) == 2592001.5  # round-trips exactly
    assert to_prometheus(Status(counters={"ping_ms": float("nan")})).count("voice_appliance_ping_ms NaN\n") == 1


def test_a_clean_stop_leaves_the_textfile_saying_stopped(tmp_path: Path) -> None:
    prom = tmp_path / "node.prom"
    files = StatusFiles(str(tmp_path / "status.json"), str(prom))
    files.write(Status(state="connecting", muted=True, counters={"conversations": 7}))
    assert 'voice_appliance_state{state="connecting"} 1' in prom.read_text()
    files.remove()
    text = prom.read_text()
    assert "voice_appliance_up 0\n" in text
    assert 'voice_appliance_state{state="stopped"} 1' in text
    assert 'voice_appliance_state{state="connecting"} 0' in text
    on = [line for line in text.splitlines() if line.startswith("voice_appliance_state{") and line.endswith(" 1")]
    assert on == ['voice_appliance_state{state="stopped"} 1']
    assert "voice_appliance_muted 0\n" in text
    assert "voice_appliance_conversations_total 7\n" in text  # the last counters stay readable
    assert not (tmp_path / "status.json").exists()


def test_a_stop_leaves_files_another_process_put_in_place_of_ours(tmp_path: Path) -> None:
    status, prom = tmp_path / "status.json", tmp_path / "node.prom"
    files = StatusFiles(str(status), str(prom))
    files.write(ST)
    theirs = StatusFiles(str(status), str(prom))  # another writer, e.g. a daemon that did not see this one
    theirs.write(Status(state="speaking"))
    before = {p: p.read_text() for p in (status, prom)}
    files.remove()
    assert {p: p.read_text() for p in (status, prom)} == before
    theirs.remove()  # its own files it does remove
    assert not status.exists()
    assert "voice_appliance_up 0\n" in prom.read_text()

def test_status_line_says_state_conversation_and_last_error() -> None:
    assert status_line(ST) == "listening, conversation conv_123, ping 42 ms, 2 conversations"
    line = status_line(Status(state="error", last_error="key rejected; check the API key", muted=True))
    assert line == "error (muted), 0 conversations, last error: key rejected; check the API key"


def test_write_atomic_replaces_in_one_rename(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    path.write_text("old")
    inode_before = path.stat().st_ino
    write_atomic(path, "new")
    assert path.read_text() == "new"
    assert path.stat().st_ino != inode_before
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    assert os.listdir(tmp_path) == ["status.json"]  # no temporary file left behind


def test_status_files_write_both_and_survive_an_unwritable_path(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = StatusFiles(str(tmp_path / "run" / "status.json"), str(tmp_path / "node.prom"))
    files.write(ST)
    assert json.loads((tmp_path / "run" / "status.json").read_text())["state"] == "listening"
    assert "voice_appliance_errors_total 1" in (tmp_path / "node.prom").read_text()
    files.remove()
    assert not (tmp_path / "run" / "status.json").exists()

    blocker = tmp_path / "file"
    blocker.write_text("")
    bad = StatusFiles(str(blocker / "status.json"))
    bad.write(ST)
    bad.write(ST)
    warnings = [r for r in caplog.records if "cannot write" in r.getMessage()]
    assert len(warnings) == 1  # said once, not on every write


def test_telemetry_bus_fans_out_and_survives_a_bad_subscriber() -> None:
    bus = TelemetryBus()
    assert not bus.active
    bus.publish("state", state="idle")  # nobody listens: nothing happens
    got: list[Telemetry] = []

    def bad(_: Telemetry) -> None:
        raise RuntimeError("subscriber bug")

    bus.subscribe(bad)
    unsubscribe = bus.subscribe(got.append)
    bus.publish("button", t_s=5.0, action="press", source="gpio")
    assert [(r.t_s, r.kind, dict(r.data)) for r in got] == [(5.0, "button", {"action": "press", "source": "gpio"})]
    assert isinstance(got[0], Telemetry)
    bus.publish("xrun", None, kind="underrun")  # a data key may be called "kind"
    assert got[-1].kind == "xrun"
    assert got[-1].data["kind"] == "underrun"
    got.clear()
    unsubscribe()
    bus.publish("button", action="release")
    assert got == []


def test_the_prometheus_state_gauge_shows_starting_while_the_microphone_is_not_heard_yet() -> None:
    text = to_prometheus(Status(state="starting"))
    assert 'voice_appliance_state{state="starting"} 1\n' in text


def test_only_the_current_state_is_one_in_the_gauge() -> None:
    text = to_prometheus(Status(state="starting"))
    ones = [line for line in text.splitlines() if line.startswith("voice_appliance_state{") and line.endswith(" 1")]
    assert ones == ['voice_appliance_state{state="starting"} 1']
