"""`run --check` and the optional-extra commands as a user meets them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.support import cli

pytestmark = pytest.mark.realtime

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "config.toml"
KEY = "sk_test_0123456789abcdef0123"
PASTED = "sk_pasted_fedcba9876543210fedcba"


def key_file(tmp_path: Path) -> Path:
    key = tmp_path / "api_key"
    key.write_text(KEY)
    key.chmod(0o600)
    return key


def test_placeholder_agent_id_is_a_warning(tmp_path: Path) -> None:
    r = cli("run", "--check", "--config", str(EXAMPLE), "--set", f"agent.api_key_file={key_file(tmp_path)}")
    assert r.returncode == 0, r.stderr
    assert "warning: agent.agent_id is still the example's placeholder" in r.stdout
    assert "set agent_id in [agent]" in r.stdout
    assert "OK" not in r.stdout.splitlines()[0]


def test_a_real_agent_id_is_plainly_ok(tmp_path: Path) -> None:
    r = cli("run", "--check", "--config", str(EXAMPLE), "--set", f"agent.api_key_file={key_file(tmp_path)}",
            "--set", "agent.agent_id=agent_real")
    assert r.returncode == 0
    assert r.stdout.splitlines()[0].endswith(" OK")
    assert "warning" not in r.stdout


def test_a_key_pasted_into_api_key_file_is_never_printed(tmp_path: Path) -> None:
    """With the systemd credential present the file setting is not read, so --check printed it verbatim."""
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "elevenlabs_api_key").write_text(KEY + "\n")
    r = cli("run", "--check", "--config", str(EXAMPLE), "--set", f"agent.api_key_file={PASTED}",
            env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert r.returncode == 0, r.stderr
    assert PASTED not in r.stdout + r.stderr
    assert KEY not in r.stdout + r.stderr
    assert '"api_key_file": "<redacted: not a file path' in r.stdout
    assert "agent.api_key_file does not look like a file path" in r.stdout


def test_a_real_key_file_path_is_still_shown(tmp_path: Path) -> None:
    key = key_file(tmp_path)
    r = cli("run", "--check", "--config", str(EXAMPLE), "--set", f"agent.api_key_file={key}")
    assert f'"api_key_file": "{key}"' in r.stdout


def test_emulator_and_bench_without_the_bench_extra_exit_69_with_advice(tmp_path: Path) -> None:
    blocker = tmp_path / "block" / "websockets"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'websockets'\", name='websockets')\n")
    env = {"PYTHONPATH": str(tmp_path / "block")}
    for argv in (("emulator", "--port", "0"), ("bench", "--fast")):
        r = cli(*argv, env=env)
        assert r.returncode == 69, (argv, r.stderr)
        assert "internal error" not in r.stderr
        assert "needs the optional 'bench' extra" in r.stderr
        # The venv's own pip and the extra's requirement (with its version where the metadata has it).
        assert f"{sys.prefix}/bin/pip install " in r.stderr
        assert "websockets" in r.stderr.split("pip install ", 1)[1]
