"""The configuration reference page is generated from the config dataclasses and kept in step with them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from device.core import configref
from device.core.config import SECTIONS

PAGE = Path(__file__).resolve().parents[3] / "docs" / "configuration.md"


def test_the_committed_page_is_what_the_dataclasses_render() -> None:
    assert PAGE.read_text() == configref.render(), (
        "docs/configuration.md is stale: run `python -m device.core.configref > docs/configuration.md`"
    )


def test_every_key_of_every_section_has_a_row() -> None:
    page = configref.render()
    for name, cls in SECTIONS.items():
        section = page.split(f"## `[{name}]`", 1)[1].split("\n## ", 1)[0]
        for f in dataclasses.fields(cls):
            assert f"| `{f.name}` |" in section, f"{name}.{f.name}"


def test_a_row_carries_the_default_the_bounds_and_the_help() -> None:
    row = next(line for line in configref.render().splitlines() if line.startswith("| `retry_max_s` |"))
    assert row == "| `retry_max_s` | a number | `60.0` | 0.1 … 3600 | longest automatic retry delay |"


def test_array_of_tables_are_documented_key_by_key() -> None:
    page = configref.render()
    assert "### `[[leds.output]]`" in page
    assert "| `spi_bus` | a whole number | `0` | 0 … 6 |" in page.split("### `[[leds.output]]`", 1)[1]
