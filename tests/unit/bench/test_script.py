"""The --timeline file: steps in time order, clear errors for mistakes."""

from __future__ import annotations

from pathlib import Path

import pytest

from device.bench import script
from device.bench.fixtures import DEMO_TIMELINE
from device.core.errors import ConfigError


def _load(tmp_path: Path, text: str) -> tuple[script.Step, ...]:
    path = tmp_path / "t.toml"
    path.write_text(text)
    return script.load_steps(path)


def test_steps_come_out_in_time_order_with_click_and_hold_expanded(tmp_path: Path) -> None:
    steps = _load(
        tmp_path,
        """
        [[step]]
        at_s = 5
        action = "hold"
        for_s = 2.5
        [[step]]
        at_s = 1
        action = "click"
        [[step]]
        at_s = 3
        action = "ctl"
        command = "  context The visitor is at the door  "
        [[step]]
        at_s = 9
        action = "end"
        """,
    )
    assert steps == (
        script.Step(1.0, "press"),
        script.Step(1.0 + script.CLICK_S, "release"),
        script.Step(3.0, "ctl", "context The visitor is at the door"),
        script.Step(5.0, "press"),
        script.Step(7.5, "release"),
        script.Step(9.0, "end"),
    )
    assert script.last_at_s(steps) == 9.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[step]]\nat_s = 1\naction = "prss"', r"step\[0\].action: .*'prss' \(did you mean 'press'\?\)"),
        ('[[step]]\nat_s = -1\naction = "press"', r"step\[0\].at_s: expected a number of seconds >= 0"),
        ('[[step]]\naction = "press"', r"step\[0\]: .*every step needs at_s and action"),
        ('[[step]]\nat_s = 1\naction = "hold"', r"step\[0\].for_s: .*needs for_s"),
        ('[[step]]\nat_s = 1\naction = "ctl"', r"step\[0\].command: .*needs command"),
        ('[[step]]\nat_s = 1\naction = "press"\nfor_s = 2', r"step\[0\].for_s: .*a press step takes no for_s"),
        ('[[step]]\nat_s = 1\naction = "press"\nwhen = 2', r"step\[0\].when: .*unknown key"),
        ('[[steps]]\nat_s = 1', r"step: .*unknown section\(s\) steps"),
        ("[[step]\n", r"not valid TOML"),
    ],
)
def test_mistakes_name_the_step_and_the_fix(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _load(tmp_path, text)


def test_a_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        script.load_steps(tmp_path / "nope.toml")


def test_the_demo_timeline_loads() -> None:
    steps = script.load_steps(DEMO_TIMELINE)
    assert [s.action for s in steps] == ["press", "release", "press", "release"]
