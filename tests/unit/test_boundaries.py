"""The package's boundaries, as executable rules (docs/ARCHITECTURE.md explains them).

Each rule reads the import statements of every module under ``device/`` (with ``ast``, nothing is
imported) and names the modules that break it. What is pure is where a module lives: everything under
``device/core/``. Every rule is also run against a planted violation, so none of them can pass
vacuously, and every rule's name must appear in the architecture page, so the page cannot drift from
what is enforced.
"""

from __future__ import annotations

import ast
import functools
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "ARCHITECTURE.md"


@dataclass(frozen=True)
class Imp:
    """One imported module name; ``lazy`` when the import sits inside a function.

    ``names`` are what ``from name import ...`` takes from it (empty for ``import name``).
    """

    name: str
    lazy: bool
    names: tuple[str, ...] = ()


Tree = Mapping[str, tuple[Imp, ...]]  # module name ("device.core.gate") → what it imports
Sources = Mapping[str, str]  # module name → its text


def module_name(rel: Path) -> str:
    parts = list(rel.with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def _parse(source: str) -> ast.Module:
    """One parse per text in a run: a dozen rules and their planted variants read the same tree."""
    return ast.parse(source)


@functools.cache
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
                found.append(Imp(base, inner, tuple(a.name for a in child.names)))
                found.extend(Imp(f"{base}.{a.name}", inner) for a in child.names)
            visit(child, inner)

    visit(_parse(source), False)
    return tuple(found)


@functools.cache
def _read_tree(root: Path) -> Mapping[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text() for p in (root / "device").rglob("*.py")}


def load_sources(root: Path = ROOT, planted: Mapping[str, str] | None = None) -> dict[str, str]:
    """The real package's module texts, plus ``planted`` ones (path relative to the repository → source)."""
    texts = dict(_read_tree(root))
    texts.update(planted or {})
    return {rel: text for rel, text in texts.items()}


def tree_of(texts: Mapping[str, str]) -> dict[str, tuple[Imp, ...]]:
    return {
        module_name(Path(rel)): imports_of(text, module_name(Path(rel)), rel.endswith("__init__.py"))
        for rel, text in texts.items()
    }


def load_tree(root: Path = ROOT, planted: Mapping[str, str] | None = None) -> dict[str, tuple[Imp, ...]]:
    return tree_of(load_sources(root, planted))


def uses(imp: str, target: str) -> bool:
    return imp == target or imp.startswith(target + ".")


def under(module: str, package: str) -> bool:
    return uses(module, package)


def top(name: str) -> str:
    return name.split(".")[0]


# -- the rules ------------------------------------------------------------------------------------

# A library from outside the standard library has exactly one owner: that module translates its
# exceptions into DeviceError, holds its threads and handles, and is the one place a test swaps out.
# Firmware owners live in device/drivers/; the tools' own libraries in the tool that needs them.
OWNERS: Mapping[str, frozenset[str]] = {
    "alsaaudio": frozenset({"device.drivers.alsa"}),
    "gpiozero": frozenset({"device.drivers.gpio"}),
    "spidev": frozenset({"device.drivers.apa102"}),
    "websocket": frozenset({"device.drivers.session"}),
    "requests": frozenset({"device.drivers.agent_http"}),
    "urllib3": frozenset({"device.drivers.agent_http"}),
    # The CA bundle the signed-URL fetch trusts by default (requests' dependency, as requests trusted it).
    "certifi": frozenset({"device.drivers.agent_http"}),
    "systemd": frozenset({"device.drivers.logs"}),
    # webrtcvad is C code with its own frame rules; the kiosk's VAD (given to the gate) and the emulator's wrap it.
    "webrtcvad": frozenset({"device.drivers.vad", "device.emulator.vad"}),
    # The hands-free engines (optional extras): one wrapper each, so an engine can be swapped or absent.
    "pymicro_wakeword": frozenset({"device.drivers.wake"}),
    "pyopen_wakeword": frozenset({"device.drivers.wake"}),
    "webrtc_noise_gain": frozenset({"device.drivers.dsp"}),
    "pywebrtc_audio": frozenset({"device.drivers.aec"}),
    # numpy: the echo canceller's arrays; the bench's echoing room.
    "numpy": frozenset({"device.drivers.aec", "device.bench.room"}),
    # The fleet channel (the [mqtt] extra): one client, one thread.
    "paho": frozenset({"device.drivers.mqtt"}),
    # The emulator's server library is a [bench] extra: a kiosk must run without it.
    "websockets": frozenset({"device.emulator.server", "device.emulator.client"}),
}
TOOL_PACKAGES = ("device.emulator", "device.bench")


def one_owner(tree: Tree) -> list[str]:
    """Each outside library is imported by its owners only; an unlisted one has no owner yet."""
    out = []
    for mod, imps in tree.items():
        for imp in imps:
            lib = top(imp.name)
            if lib == "device" or lib in sys.stdlib_module_names or lib == "__future__":
                continue
            owners = OWNERS.get(lib)
            if owners is None:
                out.append(f"{mod} imports {lib}, which has no owner in OWNERS")
            elif mod not in owners:
                out.append(f"{mod} imports {lib} (only {', '.join(sorted(owners))} may)")
    return sorted(set(out))


def owners_at_the_edge(owners: Mapping[str, frozenset[str]] = OWNERS) -> list[str]:
    """A firmware module that owns a library is a driver."""
    return [
        f"{mod} owns {lib} but is not under device.drivers"
        for lib, mods in owners.items()
        for mod in sorted(mods)
        if not under(mod, "device.drivers") and not any(under(mod, t) for t in TOOL_PACKAGES)
    ]


# The tools (emulator, bench) are reached only through their commands, so the kiosk's own code runs
# without them and a change to a tool cannot change what a kiosk does.
TOOLS: Mapping[str, tuple[str, ...]] = {
    "device.emulator": ("device.commands", "device.emulator", "device.bench"),
    "device.bench": ("device.commands", "device.bench"),
}


def tools_apart(tree: Tree) -> list[str]:
    return [
        f"{mod} imports {tool} (only {', '.join(allowed)} may)"
        for mod, imps in tree.items()
        for tool, allowed in TOOLS.items()
        if not any(under(mod, a) for a in allowed) and any(uses(i.name, tool) for i in imps)
    ]


# The core is pure logic: the standard library minus threads, sockets, processes, signals and the
# file system's writers, and other core modules -- also inside a function. It is tested directly, in
# milliseconds, and its time comes in as an argument.
CORE = "device.core"
NOT_IN_CORE = (
    "threading", "_thread", "queue", "socket", "ssl", "select", "selectors", "subprocess", "multiprocessing",
    "asyncio", "signal", "concurrent", "http", "urllib.request", "tempfile", "shutil",
)


def core_is_pure(tree: Tree) -> list[str]:
    out = []
    for mod, imps in tree.items():
        if not under(mod, CORE):
            continue
        for imp in imps:
            name = imp.name
            if top(name) == "device":
                if not under(name, CORE):
                    out.append(f"{mod} imports {name} (the core imports only the core)")
            elif top(name) == "__future__":
                continue
            elif top(name) not in sys.stdlib_module_names:
                out.append(f"{mod} imports {name} (a library: only a driver may)")
            elif any(uses(name, banned) for banned in NOT_IN_CORE):
                out.append(f"{mod} imports {name} (threads, sockets, processes: not in the core)")
    return sorted(set(out))


# Layers: the core below the drivers below the app below the commands.
LAYERS: Mapping[str, tuple[str, ...]] = {
    "device.drivers": ("device.app", "device.commands"),
    "device.app": ("device.commands",),
}


def layers_hold(tree: Tree) -> list[str]:
    return sorted({
        f"{mod} imports {imp.name} ({layer} may not reach {above})"
        for mod, imps in tree.items()
        for layer, forbidden in LAYERS.items()
        if under(mod, layer)
        for imp in imps
        for above in forbidden
        if uses(imp.name, above)
    })


def _depends(imp: Imp, tree: Tree) -> bool:
    """Whether ``imp`` uses the module's own names: ``from pkg import submodule`` only loads the submodule."""
    return not imp.names or any(f"{imp.name}.{n}" not in tree for n in imp.names)


def _graph(tree: Tree) -> dict[str, set[str]]:
    """Module → the device modules it imports (lazy ones too: a cycle is a cycle when the function runs)."""
    return {
        mod: {i.name for i in imps if i.name in tree and i.name != mod and _depends(i, tree)}
        for mod, imps in tree.items()
    }


def _cycles(graph: Mapping[str, set[str]]) -> Iterator[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        yield sorted(component)
            elif child not in index:
                index[child] = low[child] = counter
                counter += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])


def no_cycles(tree: Tree) -> list[str]:
    return [f"import cycle: {' -> '.join(c)}" for c in _cycles(_graph(tree))]


# No class in the firmware so large that it hides its parts (the tools are exempt).
MAX_CLASS_LINES = 350


def small_classes(texts: Sources) -> list[str]:
    out = []
    for rel, text in texts.items():
        mod = module_name(Path(rel))
        if any(under(mod, t) for t in TOOL_PACKAGES):
            continue
        for node in ast.walk(_parse(text)):
            if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_CLASS_LINES:
                    out.append(f"{mod}.{node.name} is {lines} lines (at most {MAX_CLASS_LINES})")
    return out


@dataclass(frozen=True)
class Rule:
    name: str
    check: Callable[[Mapping[str, str]], list[str]]  # module texts by path → complaints
    plant: Mapping[str, str]  # a violation: repository path → module text
    expect: str  # part of the complaint it must raise


def on_tree(check: Callable[[Tree], list[str]]) -> Callable[[Mapping[str, str]], list[str]]:
    return lambda texts: check(tree_of(texts))


RULES = (
    Rule("one-owner-per-library", on_tree(one_owner),
         {"device/bench/pins.py": "from gpiozero.pins.mock import MockFactory\n"},
         "device.bench.pins imports gpiozero"),
    Rule("tools-apart", on_tree(tools_apart),
         {"device/app/telemetry_extra.py": "from device.emulator import Emulator\n"}, "device.app.telemetry_extra"),
    Rule("core-is-pure", on_tree(core_is_pure),
         {"device/core/levels.py": "def f():\n    import threading\n"}, "device.core.levels imports threading"),
    Rule("layers", on_tree(layers_hold),
         {"device/drivers/lights.py": "from device.app import controller\n"},
         "device.drivers.lights imports device.app"),
    Rule("no-import-cycles", on_tree(no_cycles),
         {"device/core/a.py": "from device.core import b\n",
          "device/core/b.py": "def f():\n    import device.core.a\n"},
         "import cycle: device.core.a -> device.core.b"),
    Rule("small-classes", small_classes,
         {"device/app/big.py": "class Big:\n" + "    x = 1\n" * MAX_CLASS_LINES}, "device.app.big.Big is 351 lines"),
)


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_the_tree_keeps_the_rule(rule: Rule) -> None:
    assert sorted(rule.check(load_sources())) == []


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_a_planted_violation_breaks_the_rule(rule: Rule) -> None:
    complaints = rule.check(load_sources(planted=rule.plant))
    assert any(rule.expect in c for c in complaints), complaints


def test_every_library_owner_is_a_driver() -> None:
    assert owners_at_the_edge() == []


def test_an_owner_outside_the_drivers_is_named() -> None:
    assert owners_at_the_edge({"spidev": frozenset({"device.app.leds"})}) == [
        "device.app.leds owns spidev but is not under device.drivers"
    ]


def test_a_library_nobody_owns_is_named() -> None:
    planted = {"device/drivers/yamlish.py": "import yaml\n"}
    assert "device.drivers.yamlish imports yaml, which has no owner in OWNERS" in one_owner(load_tree(planted=planted))


def test_a_lazy_import_still_counts_for_ownership() -> None:
    planted = {"device/drivers/tools_x.py": "def f():\n    import requests.adapters\n"}
    assert [c for c in one_owner(load_tree(planted=planted)) if "tools_x" in c] == [
        "device.drivers.tools_x imports requests (only device.drivers.agent_http may)"
    ]


def test_relative_imports_are_resolved() -> None:
    assert imports_of("from ..emulator import server\n", "device.bench.runner") == (
        Imp("device.emulator", False, ("server",)), Imp("device.emulator.server", False)
    )


def test_the_core_may_not_reach_a_driver_even_inside_a_function() -> None:
    planted = {"device/core/gate.py": "def send():\n    from device.drivers import session\n"}
    assert [c for c in core_is_pure(load_tree(planted=planted)) if c.startswith("device.core.gate ")] == [
        "device.core.gate imports device.drivers (the core imports only the core)",
        "device.core.gate imports device.drivers.session (the core imports only the core)",
    ]


def test_a_native_library_in_the_core_is_named() -> None:
    planted = {"device/core/gate.py": "def vad():\n    import webrtcvad\n"}
    assert [c for c in core_is_pure(load_tree(planted=planted)) if c.startswith("device.core.gate ")] == [
        "device.core.gate imports webrtcvad (a library: only a driver may)"
    ]


def test_type_checking_imports_do_not_count() -> None:
    text = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from device.drivers.session import Session\n"
    assert imports_of(text, "device.core.gate") == (
        Imp("typing", False, ("TYPE_CHECKING",)), Imp("typing.TYPE_CHECKING", False))


def test_a_module_importing_itself_through_its_package_is_no_cycle() -> None:
    assert no_cycles({"device.core.a": (Imp("device.core", False), Imp("device.core.a", False)),
                      "device.core": ()}) == []


def test_a_submodule_taken_from_its_package_does_not_depend_on_the_package() -> None:
    # device.emu's __init__ re-exports device.emu.a; device.emu.a takes its sibling b through the package.
    tree = tree_of({"device/emu/__init__.py": "from device.emu.a import A\n",
                    "device/emu/a.py": "from device.emu import b\n",
                    "device/emu/b.py": ""})
    assert no_cycles(tree) == []


def test_a_name_taken_from_a_package_depends_on_it() -> None:
    tree = tree_of({"device/emu/__init__.py": "from device.emu.a import A\n",
                    "device/emu/a.py": "from device.emu import B\n",
                    "device/emu/b.py": ""})
    assert no_cycles(tree) == ["import cycle: device.emu -> device.emu.a"]


def _names(rules: Iterable[Rule]) -> list[str]:
    return [r.name for r in rules]


def test_the_architecture_page_names_every_rule_and_library() -> None:
    page = PAGE.read_text()
    assert [n for n in _names(RULES) if f"`{n}`" not in page] == []
    assert [lib for lib in OWNERS if f"`{lib}`" not in page] == []


def test_no_file_points_at_documents_outside_the_repository() -> None:
    # The project's documents are its README and docs/; a path outside the repository dangles for a reader.
    outside = "shared/" + "docs"  # split, so this file does not match itself
    hits = [
        p.relative_to(ROOT).as_posix()
        for top_dir in ("device", "tests", "provisioning", "systemd", "docs")
        for p in (ROOT / top_dir).rglob("*")
        if p.is_file() and p.suffix in (".py", ".sh", ".md", ".toml", ".service") and outside in p.read_text()
    ]
    assert hits == []
