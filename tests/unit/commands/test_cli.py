"""The command line as a user meets it: help, config errors, credential errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from device.cli import SUBCOMMANDS, build_parser, main
from tests.support import cli

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "config.toml"
KEY = "sk_test_0123456789abcdef0123"




@pytest.mark.realtime
def test_top_level_help_lists_every_subcommand() -> None:
    r = cli("--help")
    assert r.returncode == 0
    for name in SUBCOMMANDS:
        assert name in r.stdout


@pytest.mark.parametrize("name", list(SUBCOMMANDS))
def test_each_subcommand_has_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([name, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert f"voice-appliance {name}" in out
    assert "--log-level" in out


@pytest.mark.realtime
def test_no_subcommand_prints_usage_and_exits_2() -> None:
    r = cli()
    assert r.returncode == 2
    assert "usage:" in r.stderr


@pytest.mark.realtime
def test_version() -> None:
    r = cli("version")
    assert r.returncode == 0
    assert r.stdout.startswith("voice-appliance ")


@pytest.mark.realtime
def test_bad_config_exits_78_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[agent]\nagent_id = "a"\n[gate]\nmode = "shout"\n')
    r = cli("run", "--config", str(bad))
    assert r.returncode == 78
    assert "gate.mode" in r.stderr
    assert "use one of" in r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.realtime
def test_missing_config_file_exits_78(tmp_path: Path) -> None:
    r = cli("run", "--config", str(tmp_path / "absent.toml"))
    assert r.returncode == 78
    assert "copy the example" in r.stderr


@pytest.mark.realtime
def test_group_readable_key_file_refused_with_the_fix(tmp_path: Path) -> None:
    key = tmp_path / "api_key"
    key.write_text(KEY)
    key.chmod(0o640)
    r = cli("run", "--check", "--config", str(EXAMPLE), "--set", f"agent.api_key_file={key}")
    assert r.returncode == 77
    assert f"sudo chmod 600 {key}" in r.stderr
    assert KEY not in r.stdout + r.stderr


@pytest.mark.realtime
def test_check_validates_and_prints_without_the_key(tmp_path: Path) -> None:
    key = tmp_path / "api_key"
    key.write_text(KEY)
    key.chmod(0o600)
    r = cli("run", "--check", "--config", str(EXAMPLE), "--set", f"agent.api_key_file={key}")
    assert r.returncode == 0, r.stderr
    assert "valid, 1 warning(s)" in r.stdout
    assert '"agent_id": "agent_0123456789abcdef"' in r.stdout
    assert KEY not in r.stdout + r.stderr


@pytest.mark.realtime
def test_check_needs_a_key_for_signed_urls() -> None:
    r = cli("run", "--check", "--config", str(EXAMPLE))
    assert r.returncode == 77
    assert "/etc/voice-appliance/api_key" in r.stderr


@pytest.mark.realtime
def test_config_from_environment_variable(tmp_path: Path) -> None:
    r = cli("run", "--check", env={"VOICE_APPLIANCE_CONFIG": str(tmp_path / "x.toml")})
    assert r.returncode == 78
    assert str(tmp_path / "x.toml") in r.stderr


def test_internal_errors_are_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import device.commands.version as version

    def boom(args: object) -> int:
        raise ZeroDivisionError(f"oops {KEY}")

    monkeypatch.setattr(version, "run", boom)
    import logging

    root = logging.getLogger()
    saved = list(root.handlers), root.level
    try:
        from device.drivers.secrets import register_secret

        register_secret(KEY)
        assert main(["version"]) == 70
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    err = capsys.readouterr().err
    assert "internal error: ZeroDivisionError" in err
    assert KEY not in err


@pytest.mark.realtime
def test_a_reader_that_went_away_is_not_an_internal_error() -> None:
    # `voice-appliance bench --schema | head -1`: the reader closes the pipe before the output is written.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        res = subprocess.run(
            [sys.executable, "-m", "device", "bench", "--schema"],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60,
        )
    finally:
        os.close(write_end)
    assert res.returncode == 141, res.stderr  # 128 + SIGPIPE, as a shell reports a command that SIGPIPE ended
    assert res.stderr == ""
