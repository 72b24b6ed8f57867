"""The MCP approval policy: tools.mcp_approve lists the approved tools, every other one is denied."""

from __future__ import annotations

from pathlib import Path

import pytest

from device.core.errors import ConfigError
from device.drivers.configfile import load_config
from device.drivers.tools import ToolRegistry

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "config.toml"


def test_by_default_every_mcp_tool_is_denied() -> None:
    registry = ToolRegistry(load_config(None, environ={}).tools)
    assert not registry.mcp_approves("lookup_exhibit")
    assert not registry.mcp_approves("")


def test_the_shipped_example_documents_the_key_and_denies_by_default() -> None:
    assert "mcp_approve" in EXAMPLE.read_text(encoding="utf-8")
    assert load_config(EXAMPLE, environ={}).tools.mcp_approve == ()


def test_listed_tools_are_approved_and_only_they(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[tools]\nmcp_approve = ["lookup_exhibit", "opening_hours"]\n', encoding="utf-8")
    registry = ToolRegistry(load_config(path, environ={}).tools)
    assert registry.mcp_approves("lookup_exhibit")
    assert registry.mcp_approves("opening_hours")
    assert not registry.mcp_approves("open_door")
    assert not registry.mcp_approves("LOOKUP_EXHIBIT")


def test_a_plain_string_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[tools]\nmcp_approve = "lookup_exhibit"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert "mcp_approve" in str(info.value) or info.value.key == "tools.mcp_approve"
