"""In CI (.ci/run sets VOICE_APPLIANCE_TEST_FAIL_ON_SKIP=1) a skipped test fails the run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FAIL_ON_SKIP_ENV

pytestmark = pytest.mark.realtime

ROOT = Path(__file__).resolve().parents[2]


def _run(tmp_path: Path, flag: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_planted.py").write_text(
        "import pytest\n\n"
        "def test_needs_a_tool() -> None:\n"
        "    pytest.skip('the tool is not installed')\n\n"
        "@pytest.mark.xfail(reason='known')\n"
        "def test_known_bug() -> None:\n"
        "    assert False\n"
    )
    env = {k: v for k, v in os.environ.items() if k != FAIL_ON_SKIP_ENV}
    if flag is not None:
        env[FAIL_ON_SKIP_ENV] = flag
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest",
         "--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path / "test_planted.py")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )


def test_a_skip_fails_when_ci_asks(tmp_path: Path) -> None:
    res = _run(tmp_path, "1")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "1 failed, 1 xfailed" in res.stdout
    assert "makes a skip a failure: Skipped: the tool is not installed" in res.stdout


def test_a_skip_stays_a_skip_on_a_developer_machine(tmp_path: Path) -> None:
    res = _run(tmp_path, None)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 skipped, 1 xfailed" in res.stdout
