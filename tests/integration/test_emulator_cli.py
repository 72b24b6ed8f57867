"""``voice-appliance emulator`` as a user runs it: options, start-up, the report and exit status."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from device.cli import build_parser
from device.emulator import Emulator, ProtocolClient

pytestmark = pytest.mark.realtime

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "scenarios"
QUICK = [
    "--speech",
    "tone",
    "--speed",
    "20",
    "--ping-interval-s",
    "0",
    "--turn-timeout-s",
    "0",
    "--response-delay-ms",
    "50",
]


def emulator_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser: argparse.ArgumentParser = sub.choices["emulator"]
    return parser


def test_help_documents_every_option() -> None:
    parser = emulator_parser()
    text = parser.format_help()
    for action in parser._actions:
        for option in action.option_strings:
            assert option in text, option
        assert action.help, f"{action.option_strings} has no help"
    for needed in (
        "--port",
        "--host",
        "--scenario",
        "--fault",
        "--record-dir",
        "--speed",
        "--end-of-turn-ms",
        "--ping-interval-s",
        "--inactivity-timeout-s",
        "--max-duration-s",
        "--turn-timeout-s",
        "--output-format",
        "--public",
        "base_url",
    ):
        assert needed in text, needed


def run_cli(*args: str, timeout_s: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "device", "emulator", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def test_describe_scenario_and_list_faults() -> None:
    described = run_cli("--describe-scenario")
    assert described.returncode == 0
    assert "[timing]" in described.stdout
    assert "end_of_turn_silence_ms" in described.stdout
    faults = run_cli("--list-faults")
    assert faults.returncode == 0
    for kind in ("close", "drop", "quota", "oversized_frame", "refuse_upgrade", "signed_url_error"):
        assert kind in faults.stdout


def test_a_bad_scenario_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[timing]\nspeeed = 3\n")
    r = run_cli("--scenario", str(bad))
    assert r.returncode == 78
    assert "timing.speeed" in r.stderr
    assert "did you mean 'speed'" in r.stderr
    r = run_cli("--fault", "explode")
    assert r.returncode == 78
    assert "unknown fault kind" in r.stderr


def test_a_port_in_use_says_what_to_do() -> None:
    with Emulator(speech="tone") as emu:
        r = run_cli("--port", str(emu.port), *QUICK)
    assert r.returncode == 69
    assert "choose another --port" in r.stderr


@contextmanager
def running(tmp_path: Path, *args: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    port_file = tmp_path / "port"
    env = {**os.environ, "VOICE_APPLIANCE_EMULATOR_API_KEY": "cli-test-key"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "device", "emulator", "--port", "0", "--port-file", str(port_file), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 20
        while not (port_file.exists() and port_file.read_text().strip()):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the emulator did not start"
            time.sleep(0.05)
        yield proc, int(port_file.read_text())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def signed_url(port: int, key: str = "cli-test-key") -> str:
    r = requests.get(
        f"http://127.0.0.1:{port}/v1/convai/conversation/get-signed-url",
        params={"agent_id": "agent_emulator"},
        headers={"xi-api-key": key},
        timeout=5,
    )
    r.raise_for_status()
    return str(r.json()["signed_url"])


def test_a_clean_run_exits_0_after_the_conversations(tmp_path: Path) -> None:
    rec = tmp_path / "rec"
    with running(
        tmp_path,
        "--max-conversations",
        "1",
        "--record-dir",
        str(rec),
        "--scenario",
        str(EXAMPLES / "demo.toml"),
        *QUICK,
    ) as (proc, port):
        with ProtocolClient(signed_url(port)) as c:
            c.send_init()
            c.recv_until("agent_response")
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert f"listening on http://127.0.0.1:{port}" in out
    assert "API key from $VOICE_APPLIANCE_EMULATOR_API_KEY" in out
    assert "cli-test-key" not in out + err
    assert "1 conversation(s)" in out
    assert "no protocol violations" in out
    assert len(list(rec.glob("*.events.json"))) == 1
    assert len(list(rec.glob("*.user.wav"))) == 1


def test_violations_are_listed_and_make_the_exit_status_1(tmp_path: Path) -> None:
    with running(tmp_path, "--max-conversations", "1", *QUICK) as (proc, port):
        with ProtocolClient(signed_url(port)) as c:
            c.send_init()
            c.send({"type": "pong", "event_id": 4242})
            c.send_raw("{oops")
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 1
    assert "2 protocol violation(s)" in out
    assert "pong_unknown_event_id" in out
    assert "invalid_json" in out


def test_faults_from_the_command_line_and_sigterm(tmp_path: Path) -> None:
    with running(tmp_path, "--fault", "close:reply=0,after_chunks=1,code=1011", "--public", *QUICK) as (proc, port):
        with ProtocolClient(f"ws://127.0.0.1:{port}/v1/convai/conversation?agent_id=agent_emulator") as c:
            c.send_init()
            c.recv_until_closed(5)
            assert c.close_code == 1011
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert "faults: close" in out
    assert "closed 1011" in out


@pytest.mark.parametrize("key_source", ["file", "default"])
def test_the_api_key_clients_must_send(tmp_path: Path, key_source: str) -> None:
    args = ["--max-conversations", "1", *QUICK]
    key = "emulator-key"
    if key_source == "file":
        key_file = tmp_path / "key"
        key_file.write_text("from-a-file-123\n")
        args += ["--api-key-file", str(key_file)]
        key = "from-a-file-123"
    port_file = tmp_path / "port"
    env = {k: v for k, v in os.environ.items() if k != "VOICE_APPLIANCE_EMULATOR_API_KEY"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "device", "emulator", "--port", "0", "--port-file", str(port_file), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 20
        while not (port_file.exists() and port_file.read_text().strip()):
            assert time.monotonic() < deadline
            assert proc.poll() is None
            time.sleep(0.05)
        port = int(port_file.read_text())
        wrong = requests.get(
            f"http://127.0.0.1:{port}/v1/convai/conversation/get-signed-url",
            params={"agent_id": "agent_emulator"},
            headers={"xi-api-key": "nope"},
            timeout=5,
        )
        assert wrong.status_code == 401
        with ProtocolClient(signed_url(port, key)) as c:
            c.send_init()
            c.recv_until("conversation_initiation_metadata")
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0
        if key_source == "file":
            assert key not in out + err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
