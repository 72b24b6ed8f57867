"""The configuration file: what is wrong with a file is said in one line naming it, the line and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from device.core.errors import ConfigError
from device.drivers.configfile import load_config
from tests.support import cli, make_fifo


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.toml"
    p.write_text(text)
    return p


def test_bad_toml_reports_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[agent]\nagent_id = "a"\nlocation = "unterminated\n')
    with pytest.raises(ConfigError, match=r"line 3") as err:
        load_config(path, environ={})
    assert str(path) in str(err.value)


def test_missing_file_says_how_to_create_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist; copy the example"):
        load_config(tmp_path / "nope.toml", environ={})


def test_a_directory_is_no_config_file(tmp_path: Path) -> None:
    path = tmp_path / "dir.toml"
    path.mkdir()
    with pytest.raises(ConfigError, match="cannot be used: it is a directory, not a regular file"):
        load_config(path, environ={})


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_bytes(b'[agent]\nlocation = "\xff"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path, environ={})


@pytest.mark.realtime
def test_a_deeply_nested_config_exits_78_with_the_reason(tmp_path: Path) -> None:
    path = write(tmp_path, '[agent]\nagent_id = "a"\nconnection = "public"\nx = ' + "[" * 50_000 + "]" * 50_000 + "\n")
    r = cli("run", "--check", "--config", str(path))
    assert r.returncode == 78, r.stderr
    assert f"config file {path} nests arrays or inline tables too deeply" in r.stderr
    assert "internal error" not in r.stderr
    assert len(r.stderr.splitlines()) == 1


@pytest.mark.realtime
def test_a_fifo_as_the_config_file_is_refused_at_once(tmp_path: Path) -> None:
    fifo = make_fifo(tmp_path / "config.toml")
    r = cli("run", "--check", "--config", str(fifo))  # before: open() waited for a writer (cli's timeout)
    assert r.returncode == 78, r.stderr
    assert f"config file {fifo} cannot be used: it is a FIFO (named pipe), not a regular file" in r.stderr


def test_a_config_file_over_1_mib_is_refused_unread(tmp_path: Path) -> None:
    path = write(tmp_path, '[agent]\nagent_id = "a"\n')
    with path.open("r+b") as f:
        f.truncate(2 * 1024 * 1024)  # NUL bytes after the table, as a file gone wrong would hold
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert "it holds 2 MiB, over the 1 MiB limit" in str(err.value)


def test_without_an_environment_the_process_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICE_APPLIANCE_GATE_MODE", "toggle")
    assert load_config(None).gate.mode == "toggle"
