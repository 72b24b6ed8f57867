"""The kiosk's package: ``device/`` without the tools, as provisioning/install.sh installs it.

A copy of the package without the tool packages must import every module and
run, and the tool commands must say how to get the tools (exit 69), never
"internal error" or a bare ModuleNotFoundError.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from device.commands.common import TOOL_PACKAGES

pytestmark = pytest.mark.realtime

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "config.toml"


@pytest.fixture(scope="module")
def kiosk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding ``device/`` minus the tool packages (what a default install.sh puts on a kiosk)."""
    where = tmp_path_factory.mktemp("kiosk")
    tools = {ROOT.joinpath(*name.split(".")) for name in TOOL_PACKAGES}
    shutil.copytree(ROOT / "device", where / "device",
                    ignore=lambda d, names: [n for n in names if Path(d, n) in tools or n == "__pycache__"])
    return where


# The copy comes first on sys.path (the child's cwd), and an editable install's finder, which would
# otherwise find device.emulator in the checkout beside the copied package, is taken out.
PRELUDE = (
    "import sys; sys.path.insert(0, '.'); "
    "sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, '__module__', '').startswith('__editable__')]\n"
)


def python(kiosk: Path, code: str, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VOICE_APPLIANCE_", "ELEVENLABS_", "PYTHONPATH"))}
    env.pop("CREDENTIALS_DIRECTORY", None)
    return subprocess.run([sys.executable, "-c", PRELUDE + code, *argv], cwd=kiosk, env=env, capture_output=True,
                          text=True, timeout=60, check=False)


def voice_appliance(kiosk: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return python(kiosk, "import runpy; runpy.run_module('device', run_name='__main__', alter_sys=True)", *argv)


def test_the_copy_really_lacks_the_tools(kiosk: Path) -> None:
    probe = "import device, importlib.util as u; print(device.__file__); print([u.find_spec(n) for n in %r])"
    r = python(kiosk, probe % (TOOL_PACKAGES,))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [str(kiosk / "device" / "__init__.py"), str([None] * len(TOOL_PACKAGES))]


def test_every_firmware_module_imports_without_the_tools(kiosk: Path) -> None:
    code = (
        "import importlib, pkgutil, device\n"
        "names = [m.name for m in pkgutil.walk_packages(device.__path__, 'device.') if m.name != 'device.__main__']\n"
        "for n in names: importlib.import_module(n)\n"
        "print(len(names))\n"
    )
    r = python(kiosk, code)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) > 40  # the walk saw the firmware, not an empty tree


def test_the_firmware_runs_its_config_check_without_the_tools(kiosk: Path, tmp_path: Path) -> None:
    key = tmp_path / "api_key"
    key.write_text("sk_kiosk_test_0123456789abcdef\n")
    key.chmod(0o600)
    r = voice_appliance(kiosk, "run", "--check", "--config", str(EXAMPLE),
               "--set", f"agent.api_key_file={key}", "--set", "agent.agent_id=agent_kiosk")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].endswith(" OK")


@pytest.mark.parametrize("argv", [("emulator", "--port", "0"), ("bench", "--fast"), ("bench", "--schema")])
def test_tool_commands_on_a_kiosk_exit_69_naming_the_install_flag(kiosk: Path, argv: tuple[str, ...]) -> None:
    r = voice_appliance(kiosk, *argv)
    assert r.returncode == 69, r.stderr
    assert "internal error" not in r.stderr
    assert "Traceback" not in r.stderr
    assert "not installed on this kiosk" in r.stderr
    assert "install.sh --with-tools" in r.stderr
