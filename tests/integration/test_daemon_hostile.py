"""A hostile agent service against the whole daemon: what it sends stays short and clean everywhere.

A hand-written WebSocket server (the cloud's edge) announces a conversation
whose id is 2 MB of text with line breaks and terminal escapes, then reports
an error whose text forges log lines. ``ctl status`` (a second process, over
the real control socket), status.json and the log show short, escaped text.
"""

from __future__ import annotations

import dataclasses
import grp
import json
import logging
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from websockets.sync.server import ServerConnection

from device.core.config import Config, SystemdConfig
from device.core.protocol import MAX_FIELD_CHARS
from tests.integration.daemonrig import WAIT_S, Rig, silence
from tests.integration.sessionrig import scripted

pytestmark = pytest.mark.realtime

ROOT = Path(__file__).resolve().parents[2]
FORGED = "\n<0>forged emergency\r\x1b[2J\x1b]0;title\x07"
HUGE_ID = "conv_" + ("A" * 998 + FORGED) * 2000  # over 2 MB
CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f]")
CTL_ANSWER_LIMIT = 64 * 1024  # what the control socket keeps for one answer (device.drivers.control.MAX_OUTPUT_BYTES)


class ScriptedRig(Rig):
    """The daemon of :class:`Rig`, its agent a scripted server on ``port`` (public connection)."""

    def __init__(self, tmp: Path, port: int, **kw: object) -> None:
        super().__init__(tmp, silence(30.0), **kw)  # type: ignore[arg-type]
        self.port = port

    def config(self) -> Config:
        cfg = super().config()
        agent = dataclasses.replace(cfg.agent, base_url=f"http://127.0.0.1:{self.port}", connection="public")
        return dataclasses.replace(cfg, agent=agent)


def ctl_status(sock: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICE_APPLIANCE_")}
    return subprocess.run(
        [sys.executable, "-m", "device", "ctl", "status", "--socket", str(sock)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=WAIT_S, check=False,
    )


def test_a_two_megabyte_conversation_id_and_a_forging_error_stay_short_and_clean(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    release = threading.Event()

    def script(ws: ServerConnection) -> None:
        ws.recv(timeout=WAIT_S)  # the initiation
        ws.send(json.dumps({
            "type": "conversation_initiation_metadata",
            "conversation_initiation_metadata_event": {
                "conversation_id": HUGE_ID, "agent_output_audio_format": "pcm_16000",
                "user_input_audio_format": "pcm_16000",
            },
        }))
        release.wait(WAIT_S)
        message = "boom" + FORGED * 100
        ws.send(json.dumps({"type": "error", "error_event": {"code": 1011, "message": message, "error_type": FORGED}}))
        ws.close(1011, "internal\x1b[2J error")

    server, port, thread, _ = scripted(script)
    run = tmp_path / "run"
    sock, status_file = run / "control.sock", run / "status.json"
    systemd = SystemdConfig(
        status_file=str(status_file), control_socket=str(sock), control_group=grp.getgrgid(os.getgid()).gr_name
    )
    caplog.set_level(logging.INFO)
    try:
        with ScriptedRig(tmp_path, port, systemd=systemd) as rig:
            rig.d.command("start")
            rig.wait_state("listening")
            dog = rig.d.parts.watchdog
            assert dog is not None
            assert dog.wait_rounds(2, WAIT_S)  # status.json written in the conversation

            answer = ctl_status(sock)
            assert answer.returncode == 0, answer.stderr[-500:]
            status = json.loads(answer.stdout)
            assert status["state"] == "listening"
            assert len(answer.stdout) < CTL_ANSWER_LIMIT
            shown = status["conversation_id"]
            assert shown.startswith("conv_AAA")
            assert len(shown) <= MAX_FIELD_CHARS
            assert not CONTROLS.search(shown)
            on_disk = status_file.read_text()
            assert len(on_disk) < 4096
            assert json.loads(on_disk)["conversation_id"] == shown

            mark = rig.tel.mark()
            release.set()
            ended = rig.tel.wait("session_end", after=mark)
            assert dog.wait_rounds(2, WAIT_S)
            answer = ctl_status(sock)
            assert answer.returncode == 0, answer.stderr[-500:]
            last_error = json.loads(answer.stdout)["last_error"]
            assert last_error, last_error
            assert not CONTROLS.search(last_error), last_error
            assert len(last_error) < 2000, last_error
            assert not CONTROLS.search(str(ended.data["detail"]))
            assert len(status_file.read_text()) < 4096
    finally:
        release.set()
        server.shutdown()
        thread.join(WAIT_S)
    mine = [r.getMessage() for r in caplog.records if r.name.startswith("device.")]
    assert any("conversation conv_AAA" in m for m in mine), mine
    assert any("boom\\n<0>forged emergency" in m for m in mine), mine  # the error, escaped
    long = [m[:200] for m in mine if len(m) > 2000 or CONTROLS.search(m)]
    assert not long, long  # every log line is short and has no control character
