"""The package's boundaries, as executable rules (docs/ARCHITECTURE.md explains them).

Each rule reads the import statements of every module under ``device/`` (with
``ast``, nothing is imported) and names the modules that break it. Every rule
is also run against a planted violation, so none of them can pass vacuously,
and every rule's name must appear in the architecture page, so the page cannot
drift from what is enforced.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "ARCHITECTURE.md"


@dataclass(frozen=True)
class Imp:
    """One imported module name; ``lazy`` when the import sits inside a function."""

    name: str
    lazy: bool


Tree = Mapping[str, tuple[Imp, ...]]  # module name ("device.core.gate") → what it imports


def module_name(rel: Path) -> str:
    parts = list(rel.with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(source: str, module: str, is_package: bool = False) -> tuple[Imp, ...]:
    """Every module ``source`` imports (``from a import b`` counts as ``a`` and ``a.b``)."""
    found: list[Imp] = []
    package = module if is_package else module.rpartition(".")[0]

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue  # for the type checker only: never runs
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend(Imp(a.name, inner) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                found.append(Imp(base, inner))
                found.extend(Imp(f"{base}.{a.name}", inner) for a in child.names)
            visit(child, inner)

    visit(ast.parse(source), False)
    return tuple(found)


def load_tree(root: Path = ROOT, planted: Mapping[str, str] | None = None) -> dict[str, tuple[Imp, ...]]:
    """The real package, plus ``planted`` module texts (path relative to the repository → source)."""
    sources = {p.relative_to(root).as_posix(): p.read_text() for p in (root / "device").rglob("*.py")}
    sources.update(planted or {})
    return {
        module_name(Path(rel)): imports_of(text, module_name(Path(rel)), rel.endswith("__init__.py"))
        for rel, text in sources.items()
    }


def uses(imp: str, target: str) -> bool:
    return imp == target or imp.startswith(target + ".")


def under(module: str, package: str) -> bool:
    return uses(module, package)


# -- the rules ------------------------------------------------------------------------------------

# A library that touches hardware or the network has exactly one owner: that module translates its
# exceptions into DeviceError, holds its threads and handles, and is the one place a test swaps out.
OWNERS: Mapping[str, frozenset[str]] = {
    "alsaaudio": frozenset({"device.drivers.alsa"}),
    "gpiozero": frozenset({"device.drivers.gpio"}),
    "websocket": frozenset({"device.drivers.session"}),
    "requests": frozenset({"device.drivers.agent_http"}),
    "urllib3": frozenset({"device.drivers.agent_http"}),
    # webrtcvad is C code with its own frame rules; the kiosk's VAD (given to the gate) and the emulator's wrap it.
    "webrtcvad": frozenset({"device.drivers.vad", "device.emulator.vad"}),
    # The hands-free stages (may not exist yet): one wrapper each, so an engine can be swapped or absent.
    "pymicro_wakeword": frozenset({"device.drivers.wake"}),
    "pyopen_wakeword": frozenset({"device.drivers.wake"}),
    "webrtc_noise_gain": frozenset({"device.drivers.dsp"}),
    # The emulator's server library is a [bench] extra: a kiosk must run without it.
    "websockets": frozenset({"device.emulator.server", "device.emulator.client"}),
}

# The tools (emulator, bench) are reached only through their commands, so the kiosk's own code runs
# without them and a change to a tool cannot change what a kiosk does.
TOOLS: Mapping[str, tuple[str, ...]] = {
    "device.emulator": ("device.commands", "device.emulator", "device.bench"),
    "device.bench": ("device.commands", "device.bench"),
}

# Pure logic has no threads of its own and no I/O, so it is tested directly and fast; importing it
# (also through a package's __init__) must not pull in a module that owns hardware or the network.
PURE = (
    "device.core.protocol", "device.core.gate", "device.app.controller", "device.core.ringbuffer", "device.core.config",
)
IO_MODULES = (
    "alsaaudio", "gpiozero", "websocket", "websockets", "requests", "urllib3", "socket", "ssl", "select",
    "subprocess", "device.drivers.alsa", "device.drivers.capture", "device.drivers.playback", "device.drivers.gpio",
    "device.drivers.session", "device.drivers.agent_http", "device.drivers.control", "device.drivers.notify",
    "device.app.daemon",
)
# Native engines a pure module may wrap, imported inside the function that needs them only.
LAZY_ONLY = ("webrtcvad", "pymicro_wakeword", "pyopen_wakeword", "webrtc_noise_gain")


def one_owner(tree: Tree) -> list[str]:
    return [
        f"{mod} imports {lib} (only {', '.join(sorted(owners))} may)"
        for mod, imps in tree.items()
        for lib, owners in OWNERS.items()
        if mod not in owners and any(uses(i.name, lib) for i in imps)
    ]


def tools_apart(tree: Tree) -> list[str]:
    return [
        f"{mod} imports {tool} (only {', '.join(allowed)} may)"
        for mod, imps in tree.items()
        for tool, allowed in TOOLS.items()
        if not any(under(mod, a) for a in allowed) and any(uses(i.name, tool) for i in imps)
    ]


def reach(tree: Tree, start: str) -> dict[str, str]:
    """Every module importing ``start`` loads (with the packages above it) → the module that imported it.

    Only module-level imports load at once; an import inside a function loads when that runs.
    """
    parents = [".".join(start.split(".")[:n]) for n in range(1, start.count(".") + 1)]
    seen: dict[str, str] = dict.fromkeys(parents, start)  # importing a.b.c runs a/__init__ and a/b/__init__
    todo = [start, *parents]
    while todo:
        mod = todo.pop()
        for imp in tree.get(mod, ()):
            if imp.lazy:
                continue
            parts = imp.name.split(".")
            for n in range(1, len(parts) + 1):
                name = ".".join(parts[:n])
                if name not in seen and name != start:
                    seen[name] = mod
                    todo.append(name)
    return seen


def pure_stays_pure(tree: Tree) -> list[str]:
    out: list[str] = []
    for mod in PURE:
        loaded = reach(tree, mod)
        out += [f"{mod} loads {io} (through {loaded[io]})" for io in IO_MODULES if io in loaded]
        out += [f"{mod} imports {io}" for i in tree.get(mod, ()) for io in IO_MODULES
                if uses(i.name, io) and io not in loaded]  # not even inside a function
        out += [f"{mod} imports {lib} at module level" for i in tree.get(mod, ()) for lib in LAZY_ONLY
                if uses(i.name, lib) and not i.lazy]
    return out


@dataclass(frozen=True)
class Rule:
    name: str
    check: Callable[[Tree], list[str]]
    plant: Mapping[str, str]  # a violation: repository path → module text
    expect: str  # part of the complaint it must raise


RULES = (
    Rule("one-owner-per-library", one_owner,
         {"device/bench/pins.py": "from gpiozero.pins.mock import MockFactory\n"}, "device.bench.pins"),
    Rule("tools-apart", tools_apart,
         {"device/telemetry_extra.py": "from device.emulator import Emulator\n"}, "device.telemetry_extra"),
    Rule("pure-stays-pure", pure_stays_pure,
         {"device/levels.py": "import socket\n", "device/core/ringbuffer.py": "from device import levels\n"},
         "device.core.ringbuffer loads socket (through device.levels)"),
)


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_the_tree_keeps_the_rule(rule: Rule) -> None:
    assert rule.check(load_tree()) == []


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_a_planted_violation_breaks_the_rule(rule: Rule) -> None:
    complaints = rule.check(load_tree(planted=rule.plant))
    assert complaints, f"{rule.name} did not notice {dict(rule.plant)}"
    assert any(rule.expect in c for c in complaints), complaints


def test_a_lazy_import_still_counts_for_ownership() -> None:
    planted = {"device/tools_x.py": "def f():\n    import requests.adapters\n"}
    assert [c for c in one_owner(load_tree(planted=planted)) if "tools_x" in c] == [
        "device.tools_x imports requests (only device.drivers.agent_http may)"
    ]


def test_relative_imports_are_resolved() -> None:
    assert imports_of("from ..emulator import server\n", "device.bench.runner") == (
        Imp("device.emulator", False), Imp("device.emulator.server", False)
    )


def test_a_pure_module_may_not_name_io_even_inside_a_function() -> None:
    planted = {
        "device/core/gate.py": (
            "def vad():\n    import webrtcvad\n\ndef send():\n    from device.drivers import session\n"
        )
    }
    assert pure_stays_pure(load_tree(planted=planted)) == ["device.core.gate imports device.drivers.session"]


def test_a_native_engine_in_a_pure_module_is_imported_on_use_only() -> None:
    planted = {"device/core/gate.py": "import webrtcvad\n"}
    assert pure_stays_pure(load_tree(planted=planted)) == ["device.core.gate imports webrtcvad at module level"]


def test_type_checking_imports_do_not_count() -> None:
    text = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from device.drivers.session import Session\n"
    assert imports_of(text, "device.core.gate") == (Imp("typing", False), Imp("typing.TYPE_CHECKING", False))


def test_a_pure_module_may_not_reach_io_through_a_package() -> None:
    planted = {"device/core/__init__.py": "from device.drivers.capture import Capture\n"}
    assert "device.core.ringbuffer loads device.drivers.capture (through device.core)" in pure_stays_pure(
        load_tree(planted=planted)
    )


def _names(rules: Iterable[Rule]) -> list[str]:
    return [r.name for r in rules]


def test_the_architecture_page_names_every_rule_library_and_pure_module() -> None:
    page = PAGE.read_text()
    assert [n for n in _names(RULES) if f"`{n}`" not in page] == []
    assert [lib for lib in OWNERS if f"`{lib}`" not in page] == []
    assert [m for m in PURE if f"`{m}`" not in page] == []


def test_no_file_points_at_documents_outside_the_repository() -> None:
    # The project's documents are its README and docs/; a path outside the repository dangles for a reader.
    outside = "shared/" + "docs"  # split, so this file does not match itself
    hits = [
        p.relative_to(ROOT).as_posix()
        for top in ("device", "tests", "provisioning", "systemd", "docs")
        for p in (ROOT / top).rglob("*")
        if p.is_file() and p.suffix in (".py", ".sh", ".md", ".toml", ".service") and outside in p.read_text()
    ]
    assert hits == []
