"""The instance lock and the live-socket check that keep a second daemon off a running one's files."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from device.core.config import SystemdConfig
from device.core.errors import AlreadyRunningError, ExitCode
from device.drivers.instance import claim, lock_path


def systemd(tmp_path: Path, **changes: str) -> SystemdConfig:
    base = {"control_socket": str(tmp_path / "c.sock"), "status_file": str(tmp_path / "status.json")}
    return SystemdConfig(**{**base, **changes})  # type: ignore[arg-type]


def test_the_lock_is_held_until_released_and_names_its_holder(tmp_path: Path) -> None:
    cfg = systemd(tmp_path)
    first = claim(cfg)
    try:
        assert first.held
        assert first.path == tmp_path / "c.sock.lock"
        assert stat.S_IMODE(os.stat(tmp_path / "c.sock.lock").st_mode) == 0o600  # nobody else can hold it
        with pytest.raises(AlreadyRunningError) as err:
            claim(cfg)  # another open of the file: flock refuses it, as it would another process
        assert err.value.exit_code == ExitCode.ALREADY_RUNNING
        assert f"another voice-appliance daemon (pid {os.getpid()}) runs" in str(err.value)
        assert str(tmp_path / "c.sock.lock") in str(err.value)
    finally:
        first.release()
    second = claim(cfg)  # a released (or dead holder's) lock is free again
    assert second.held
    second.release()
    second.release()  # idempotent


def test_a_socket_someone_serves_is_refused_even_without_a_lock(tmp_path: Path) -> None:
    cfg = systemd(tmp_path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(cfg.control_socket)
        listener.listen()
        with pytest.raises(AlreadyRunningError, match=rf"\(pid {os.getpid()}\).*\({cfg.control_socket} is taken\)"):
            claim(cfg)
    finally:
        listener.close()
    lock = claim(cfg)  # the refusal let go of the lock it had taken
    try:
        assert lock.held
    finally:
        lock.release()


def test_where_the_lock_lives(tmp_path: Path) -> None:
    assert lock_path(systemd(tmp_path)) == tmp_path / "c.sock.lock"
    assert lock_path(systemd(tmp_path, control_socket="")) == tmp_path / "status.json.lock"
    assert lock_path(systemd(tmp_path, control_socket="", status_file="")) is None
    assert not claim(systemd(tmp_path, control_socket="", status_file="")).held  # nothing shared to protect


def test_an_unwritable_lock_place_does_not_stop_the_kiosk(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    lock = claim(systemd(tmp_path, control_socket="", status_file=str(blocker / "status.json")))
    assert not lock.held
    assert "cannot create the instance lock" in caplog.text
