"""The daemon with the screen on file devices (no browser): a screen that cannot serve never stops the kiosk."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest

from device.core.config import ScreenConfig
from tests.integration.daemonrig import Rig
from tests.support import free_port

pytestmark = pytest.mark.realtime


def test_an_unsafe_token_file_leaves_the_kiosk_running_without_the_screen(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token = tmp_path / "screen_token"
    token.write_text("a-screen-token-value\n")
    token.chmod(0o644)
    rig = Rig(tmp_path, b"")
    rig.cfg_parts["screen"] = ScreenConfig(enabled=True, bind="0.0.0.0", port=free_port(), token_file=str(token))
    with rig:
        rig.wait_state("idle")
        assert rig.d.parts.screen is None
        with pytest.raises(OSError):  # nothing listens: no screen without its token
            socket.create_connection(("127.0.0.1", rig.cfg_parts["screen"].port), timeout=5).close()
    assert "running without the screen" in caplog.text
    assert "a-screen-token-value" not in caplog.text


def test_a_port_in_use_leaves_the_kiosk_running_without_the_screen(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        rig = Rig(tmp_path, b"")
        rig.cfg_parts["screen"] = ScreenConfig(enabled=True, port=taken.getsockname()[1])
        with rig:
            rig.wait_state("idle")
            assert rig.d.parts.screen is None
    assert "screen.port" in caplog.text
