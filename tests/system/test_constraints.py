"""provisioning/constraints.txt pins every distribution pip may install into a kiosk, inside pyproject's ranges.

No network: reads pyproject.toml, the constraints file and install.sh's Debian package list.
The boot test (test_boot.py) checks the other half: what the installed venv holds is exactly these pins.
"""

from __future__ import annotations

import subprocess

import pytest
from packaging.utils import canonicalize_name

from tests.system import pins
from tests.system.unitfile import REPO


def test_every_line_is_an_exact_pin() -> None:
    assert len(pins.pins()) >= 8


def test_a_range_is_refused_by_the_reader() -> None:  # the check above can fail
    with pytest.raises(ValueError, match="not an exact pin"):
        pins.pins("numpy>=2\n")


@pytest.mark.parametrize("machine", pins.MACHINES)
def test_every_requirement_of_the_kiosk_is_pinned_inside_its_range(machine: str) -> None:
    pinned = pins.pinned_for(machine)
    debian = pins.debian_provided()
    problems = []
    for req in pins.requirements(pins.INSTALLABLE_EXTRAS):
        if req.marker is not None and not req.marker.evaluate(pins.environment(machine)):
            continue
        name = canonicalize_name(req.name)
        if name in debian:
            continue
        if name not in pinned:
            problems.append(f"{req} is not pinned for {machine}")
        elif not req.specifier.contains(pinned[name], prereleases=True):
            problems.append(f"{name}=={pinned[name]} is outside pyproject's {req} on {machine}")
    assert not problems, "\n".join(problems)


def test_what_is_left_to_debian_is_in_install_shs_package_list() -> None:
    debian = pins.debian_provided()
    assert debian == set(pins.DEBIAN_PACKAGE)
    apt = set(subprocess.run([str(REPO / "provisioning" / "install.sh"), "--print-apt-packages"],
                             capture_output=True, text=True, check=True, timeout=30).stdout.split())
    assert {pins.DEBIAN_PACKAGE[n] for n in debian} <= apt
    # ...and none of them is pinned: a pin Debian's version misses would make pip replace it in the venv.
    assert not debian & {p.name for p in pins.pins()}
    base = {canonicalize_name(r.name) for r in pins.requirements(())}
    assert debian <= base


def test_webrtc_noise_gain_is_split_for_32_bit_arm() -> None:
    # 1.2.3 is the last release with an armv7l wheel (pyproject's comment).
    assert pins.pinned_for("armv7l")["webrtc-noise-gain"] == "1.2.3"
    assert pins.pinned_for("aarch64")["webrtc-noise-gain"] != "1.2.3"
