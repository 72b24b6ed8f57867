"""`voice-appliance ctl` as a user who may not read the configuration (the service group's directory)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from tests.support import outsider_python

# ctl with the default configuration moved into a directory only root may enter, as
# /etc/voice-appliance is the service group's on a kiosk.
PROBE = """
import sys
from device.commands import ctl
ctl.DEFAULT_CONFIG_PATH = ctl.DEFAULT_CONFIG_PATH.__class__(sys.argv[1])
from device.cli import main
sys.exit(main(["ctl", "--socket", sys.argv[2], "status"]))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run ctl as another user")
def test_ctl_with_a_socket_works_when_the_default_config_cannot_even_be_looked_at() -> None:
    with tempfile.TemporaryDirectory(prefix="ctl-etc-") as name:
        etc = Path(name) / "voice-appliance"
        etc.mkdir(mode=0o700)
        (etc / "config.toml").write_text("[agent]\n")
        Path(name).chmod(0o755)
        res = outsider_python("-c", PROBE, str(etc / "config.toml"), f"{name}/none.sock")
    assert res.returncode == 69, res.stderr
    assert res.stderr == (
        f"voice-appliance ctl: error: no control socket at {name}/none.sock: is the daemon running? "
        "(systemctl status voice-appliance)\n"
    )
