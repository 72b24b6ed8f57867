"""provisioning/constraints.txt read as pip reads it, for the tests (no I/O beyond reading)."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.system.unitfile import REPO

CONSTRAINTS = REPO / "provisioning" / "constraints.txt"
PYPROJECT = REPO / "pyproject.toml"
# The extras install.sh may install: --extras (kiosk) and --with-tools (bench).
KIOSK_EXTRAS = ("wake", "dsp", "apa102", "mqtt")
INSTALLABLE_EXTRAS = (*KIOSK_EXTRAS, "bench")
# Debian's package for each distribution install.sh takes from Debian instead of pinning it.
DEBIAN_PACKAGE = {
    "requests": "python3-requests",
    "websocket-client": "python3-websocket",
    "gpiozero": "python3-gpiozero",
    "systemd-python": "python3-systemd",
}
# The machines a kiosk runs on (platform_machine), with what else a marker may ask.
MACHINES = ("x86_64", "aarch64", "armv7l")


def environment(machine: str) -> dict[str, str]:
    """A Debian Bookworm python3 (3.11, Linux) on ``machine``, for marker evaluation."""
    return {
        "platform_machine": machine, "sys_platform": "linux", "os_name": "posix", "platform_system": "Linux",
        "python_version": "3.11", "python_full_version": "3.11.2", "implementation_name": "cpython",
        "platform_python_implementation": "CPython", "extra": "",
    }


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    marker: Marker | None

    def applies(self, machine: str) -> bool:
        return self.marker is None or self.marker.evaluate(environment(machine))


def pins(text: str | None = None) -> list[Pin]:
    """Every requirement line of the constraints file; ValueError for one that is not an exact pin."""
    out = []
    for raw in (CONSTRAINTS.read_text() if text is None else text).splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        if len(specs) != 1 or specs[0].operator != "==" or "*" in specs[0].version:
            raise ValueError(f"not an exact pin (name==version): {raw!r}")
        out.append(Pin(canonicalize_name(req.name), specs[0].version, req.marker))
    return out


def debian_provided(text: str | None = None) -> set[str]:
    """The names the file's ``# debian-provided:`` line leaves to Debian's packages."""
    m = re.search(r"^# debian-provided:(.*)$", CONSTRAINTS.read_text() if text is None else text, re.M)
    return {canonicalize_name(n) for n in m.group(1).split()} if m else set()


def pinned_for(machine: str) -> dict[str, str]:
    """name → version that applies on ``machine``; ValueError when two pins apply to one name."""
    out: dict[str, str] = {}
    for p in pins():
        if p.applies(machine):
            if p.name in out:
                raise ValueError(f"two pins of {p.name} apply on {machine}")
            out[p.name] = p.version
    return out


def requirements(extras: tuple[str, ...]) -> list[Requirement]:
    """pyproject's dependencies plus ``extras`` (self-references such as voice-appliance[dsp] expanded)."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    optional = project["optional-dependencies"]
    out = [Requirement(r) for r in project["dependencies"]]
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for r in map(Requirement, optional[extra]):
            if canonicalize_name(r.name) == canonicalize_name(project["name"]):
                todo.extend(r.extras)
            else:
                out.append(r)
    return out
