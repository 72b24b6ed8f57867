"""Benchmarks (run on demand: provisioning/dev.sh bench). Collects bench_*.py and soak.py as well."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.contract.checking import contract_check  # noqa: F401 (autouse: every message against the contract)


def _is_bench(path: Path) -> bool:
    return path.suffix == ".py" and (path.name.startswith("bench_") or path.name == "soak.py")


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    # A file named on the command line is collected by pytest itself.
    if _is_bench(file_path) and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _is_bench(item.path):
            item.add_marker(pytest.mark.bench)
            item.add_marker(pytest.mark.timeout(3600))
