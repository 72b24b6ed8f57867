"""The telemetry kinds: the list is what the code publishes, and the bench reads only kinds in it."""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

from device.app import telemetry
from device.app.telemetry import KINDS

DEVICE = Path(__file__).resolve().parents[3] / "device"
BENCH = DEVICE / "bench"
# Its publish calls are the MQTT client's (topics, not telemetry kinds); it subscribes to the telemetry only.
NOT_TELEMETRY = {DEVICE / "drivers" / "mqtt.py"}


def _trees(paths: list[Path]) -> list[tuple[Path, ast.AST]]:
    return [(p, ast.parse(p.read_text(), str(p))) for p in paths]


@functools.cache
def _publish_calls() -> tuple[tuple[str, ast.Call], ...]:
    found = []
    for path, tree in _trees(sorted(p for p in DEVICE.rglob("*.py") if p not in NOT_TELEMETRY)):
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "publish":
                found.append((f"{path.relative_to(DEVICE)}:{node.lineno}", node))
    return tuple(found)  # cached: shared by every test, so not to be changed by one


def _constant_str(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def published_kinds() -> set[str]:
    return {k for _, call in _publish_calls() if call.args and (k := _constant_str(call.args[0])) is not None}


def kinds_read_by_the_bench() -> dict[str, set[str]]:
    """Kinds each bench module compares a record's ``.kind`` with, or selects with ``_times(events, kind)``."""
    out: dict[str, set[str]] = {}
    for path, tree in _trees(sorted(BENCH.glob("*.py"))):
        read: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare) and isinstance(node.left, ast.Attribute) and node.left.attr == "kind":
                for comp in node.comparators:
                    elements = comp.elts if isinstance(comp, (ast.Tuple, ast.List, ast.Set)) else [comp]
                    read |= {k for e in elements if (k := _constant_str(e)) is not None}
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "_times":
                read |= {k for a in node.args[1:2] if (k := _constant_str(a)) is not None}
        if read:
            out[path.name] = read
    return out


def test_every_publish_names_its_kind_literally() -> None:
    # What the scan below cannot see (a kind in a variable) would escape the check.
    assert [where for where, call in _publish_calls() if not call.args or _constant_str(call.args[0]) is None] == []


def test_the_kinds_are_exactly_those_published() -> None:
    assert published_kinds() == KINDS


def test_the_bench_reads_only_published_kinds() -> None:
    read = kinds_read_by_the_bench()
    assert "analysis.py" in read  # the scan sees the analysis at all
    assert {name: kinds - KINDS for name, kinds in read.items() if kinds - KINDS} == {}


def test_the_module_docs_table_lists_every_kind() -> None:
    table = re.findall(r"^([a-z_]+) {2,}\S", telemetry.__doc__ or "", re.MULTILINE)
    assert sorted(table) == sorted(KINDS)
