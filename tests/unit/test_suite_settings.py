"""Suite-wide settings: no wall-clock limits, and the tiers (``realtime``, ``system``) the fast run leaves out."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from tests import conftest
from tests.support import cases, examples

TESTS = Path(__file__).resolve().parents[1]


def test_hypothesis_has_no_deadline_on_slow_machines() -> None:
    # Hypothesis fails an example slower than 200 ms by default: under qemu (the ARM check)
    # or on a loaded 2-core machine, building one GainTable takes longer than that.
    assert settings.default.deadline is None
    assert HealthCheck.too_slow in settings.default.suppress_health_check


def test_the_fast_profile_has_no_deadline_either() -> None:
    fast = settings.get_profile("fast")
    assert fast.deadline is None
    assert HealthCheck.too_slow in fast.suppress_health_check


def test_the_fast_profile_draws_a_quarter_of_the_examples() -> None:
    assert settings.get_profile("fast").max_examples == 25


@pytest.mark.parametrize("markexpr", ["not realtime and not system", "not realtime", "system and not realtime"])
def test_a_run_without_the_realtime_tests_is_the_fast_tier(markexpr: str) -> None:
    assert conftest._leaves_out_realtime(markexpr)


@pytest.mark.parametrize("markexpr", ["", "not system", "realtime", "realtime or system", "not (realtime"])
def test_a_run_with_the_realtime_tests_keeps_every_example(markexpr: str) -> None:
    assert not conftest._leaves_out_realtime(markexpr)


def test_a_property_count_follows_the_profile() -> None:
    assert examples(100) == settings.default.max_examples


def test_a_case_count_follows_the_profile() -> None:
    assert len(cases(100)) == settings.default.max_examples


def test_a_case_count_never_drops_to_nothing() -> None:
    assert len(cases(1)) == 1


def test_a_property_count_never_drops_below_ten() -> None:
    assert examples(1) == 10


class _Item:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.markers: list[Any] = []

    def add_marker(self, marker: Any) -> None:
        self.markers.append(marker)


def test_every_test_under_tests_system_is_marked_system() -> None:
    item = _Item(TESTS / "system" / "test_new.py")
    conftest.pytest_collection_modifyitems([item])  # type: ignore[list-item]
    assert [m.name for m in item.markers] == ["system"]


def test_a_test_elsewhere_is_not_marked_system() -> None:
    item = _Item(TESTS / "unit" / "test_suite_settings.py")
    conftest.pytest_collection_modifyitems([item])  # type: ignore[list-item]
    assert item.markers == []


def _module_marks(path: Path) -> str:
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in node.targets):
            return ast.unparse(node.value)
    return ""


@pytest.mark.parametrize("path", sorted((TESTS / "integration").glob("test_*.py")), ids=lambda p: p.name)
def test_every_integration_module_is_realtime(path: Path) -> None:
    """Real ALSA devices, sound servers, daemons and sockets: none of it belongs in the fast tier."""
    assert "pytest.mark.realtime" in _module_marks(path)


def test_support_modules_are_not_collected_as_tests() -> None:
    support = [p.name for p in (TESTS / "integration").glob("*.py") if "support" in p.name or "rig" in p.name]
    assert support
    assert [name for name in support if name.startswith("test_")] == []


