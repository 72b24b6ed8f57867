"""The Prometheus textfile after the daemon's real stop shows it stopped, not busy.

A stop in the middle of a conversation used to leave the last state in the
textfile for good (``state="connecting"} 1``), so a fleet dashboard showed a
stopped kiosk as busy.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from device.core.config import SystemdConfig
from tests.integration.daemonrig import WAIT_S, Rig, silence

pytestmark = pytest.mark.realtime


def test_a_stop_in_a_conversation_leaves_the_textfile_saying_stopped(tmp_path: Path) -> None:
    prom = tmp_path / "node" / "voice_appliance.prom"
    prom.parent.mkdir()
    systemd = SystemdConfig(
        status_file=str(tmp_path / "run" / "status.json"), prometheus_textfile=str(prom), control_socket=""
    )
    rig = Rig(tmp_path, silence(20.0), systemd=systemd)
    with rig:
        rig.d.command("start")
        rig.wait_state("listening")
        dog = rig.d.parts.watchdog
        assert dog is not None
        assert dog.wait_rounds(2, WAIT_S)
        text = prom.read_text()
        assert 'voice_appliance_state{state="listening"} 1' in text
    # the daemon's stop, with the conversation still running
    text = prom.read_text()
    assert "voice_appliance_up 0\n" in text
    assert 'voice_appliance_state{state="stopped"} 1' in text
    on = [line for line in text.splitlines() if line.startswith("voice_appliance_state{") and line.endswith(" 1")]
    assert on == ['voice_appliance_state{state="stopped"} 1']
    assert "voice_appliance_conversations_total 1\n" in text  # the last counters stay readable
    assert not (tmp_path / "run" / "status.json").exists()
