"""What building the daemon's parts imports: each configuration loads only the libraries it uses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

# A fresh interpreter: this one has imported everything the tests use.
BUILD = r"""
import json, sys
from device.app.daemon import Daemon
from device.core.config import AgentConfig, Config, SystemdConfig
from device.drivers.gpio import mock_factory

cfg = Config(
    agent=AgentConfig(agent_id="agent_x", connection=sys.argv[1]),
    systemd=SystemdConfig(status_file="", control_socket=""),
)
daemon = Daemon(cfg, None, pin_factory=mock_factory())
daemon._build()
loaded = sorted(sys.modules)
daemon._stop_parts()
print(json.dumps(loaded))
"""


def modules_after_build(connection: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", BUILD, connection], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    return set(json.loads(out.stdout.splitlines()[-1]))


def top_level(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


def test_a_public_agent_loads_no_http_client_until_a_conversation() -> None:
    loaded = top_level(modules_after_build("public"))
    assert not loaded & {"requests", "urllib3"}


def test_an_agent_with_signed_urls_loads_the_http_client_for_its_prefetch() -> None:
    loaded = modules_after_build("signed_url")
    assert "device.drivers.agent_http" in loaded
    assert "http.client" in loaded


def test_the_prefetch_client_is_the_standard_librarys_not_requests() -> None:
    """requests and what it loads (urllib3, charset_normalizer, idna) cost 6 MiB at idle (docs/bench.md)."""
    loaded = top_level(modules_after_build("signed_url"))
    assert not loaded & {"requests", "urllib3", "charset_normalizer", "chardet", "idna"}


@pytest.mark.parametrize("connection", ["public", "signed_url"])
def test_no_socket_library_and_no_tool_is_loaded_before_a_conversation(connection: str) -> None:
    loaded = modules_after_build(connection)
    assert "websocket" not in top_level(loaded)
    assert not {m for m in loaded if m.startswith(("device.emulator", "device.bench", "device.drivers.session"))}
