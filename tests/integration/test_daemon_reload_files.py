"""The daemon process reloaded (SIGHUP) with a hostile edit: refused with one line, still serving, SIGTERM stops it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from device.core.config import Config
from device.drivers import filedevices
from device.drivers.configfile import load_config
from device.drivers.control import request
from device.drivers.secrets import Secret
from device.emulator.server import Emulator
from tests.integration.daemonrig import WAIT_S, NotifySocket, fast_scenario, serve_with_operator, silence, write_config
from tests.support import make_fifo

pytestmark = pytest.mark.realtime

ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def daemon_process(tmp_path: Path, notify: NotifySocket, config: Path) -> Iterator[subprocess.Popen[str]]:
    """``voice-appliance run`` as the unit starts it; its log goes to tmp_path/daemon.log (a pipe could fill)."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("VOICE_APPLIANCE_", "ELEVENLABS_"))},
        **filedevices.alsa_env(tmp_path / "alsa" / filedevices.CONFIG_NAME),
        "NOTIFY_SOCKET": notify.path,
    }
    env.pop("CREDENTIALS_DIRECTORY", None)
    with (tmp_path / "daemon.log").open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "device", "run", "--config", str(config), "--mock-gpio"],
            env=env, cwd=ROOT, stdout=log, stderr=log, text=True,
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(WAIT_S)


def _deep_toml(good: str, tmp_path: Path) -> str:
    return "deep = " + "[" * 50_000 + "]" * 50_000 + "\n" + good


def _fifo_key(good: str, tmp_path: Path) -> str:
    fifo = make_fifo(tmp_path / "fifo_key")
    return good.replace(f'api_key_file = "{tmp_path / "api_key"}"', f'api_key_file = "{fifo}"')


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (_deep_toml, "nests arrays or inline tables too deeply"),  # before: RecursionError, exit 70
        (_fifo_key, "it is a FIFO (named pipe), not a regular file"),  # before: the main loop waited for a writer
    ],
    ids=["deep-toml", "fifo-key-file"],
)
def test_a_hostile_reload_is_refused_and_the_kiosk_keeps_running(
    tmp_path: Path, notify: NotifySocket, edit: Callable[[str, Path], str], reason: str
) -> None:
    emu = Emulator(fast_scenario(), speech="tone").start()
    try:
        config = write_config(tmp_path, emu, silence(60.0))
        sock = str(tmp_path / "run" / "control.sock")
        with daemon_process(tmp_path, notify, config) as proc:
            notify.wait_for("READY=1")
            config.write_text(edit(config.read_text(), tmp_path))
            proc.send_signal(signal.SIGHUP)
            assert reason in notify.wait_for("STATUS=reload refused")
            ok, text = request(sock, "status")  # still serving, with the old configuration
            assert ok, text
            assert json.loads(text)["state"] == "idle", text
            proc.send_signal(signal.SIGTERM)
            notify.wait_for("STOPPING=1")
            code = proc.wait(WAIT_S)
        log = (tmp_path / "daemon.log").read_text()
        assert code == 0, log
        refused = [line for line in log.splitlines() if "reload refused, keeping the running configuration" in line]
        assert len(refused) == 1, log
        assert reason in refused[0], log
        assert "Traceback" not in log
    finally:
        emu.stop()


def test_a_bug_in_loading_the_new_configuration_refuses_the_reload(
    tmp_path: Path, notify: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the loader raises (here a bug's RuntimeError), the running configuration stays."""
    emu = Emulator(fast_scenario(), speech="tone").start()
    try:
        path = write_config(tmp_path, emu, silence(60.0))
        cfg = load_config(path, environ={})
        monkeypatch.setenv("NOTIFY_SOCKET", notify.path)

        def broken_loader() -> tuple[Config, Secret | None]:
            raise RuntimeError("a bug in the loader")

        def operator() -> None:
            notify.wait_for("READY=1")
            os.kill(os.getpid(), signal.SIGHUP)
            assert "RuntimeError: a bug in the loader" in notify.wait_for("STATUS=reload refused")
            ok, text = request(cfg.systemd.control_socket, "status")
            assert ok, text
            assert json.loads(text)["state"] == "idle", text

        assert serve_with_operator(cfg, Secret("emulator-key", "test"), broken_loader, operator) == 0
    finally:
        emu.stop()
