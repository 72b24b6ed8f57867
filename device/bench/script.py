"""The ``--timeline`` file: what the person at the kiosk does, and when (pure).

A small TOML file of steps, times in seconds from the start of the run::

    [[step]]
    at_s = 0.4
    action = "press"          # press the button (and keep it down)

    [[step]]
    at_s = 5.3
    action = "release"

    [[step]]
    at_s = 20
    action = "hold"           # press, and release after for_s (>= button.long_press_s: a long press)
    for_s = 2.5

    [[step]]
    at_s = 24
    action = "ctl"            # a control command, as `voice-appliance ctl` would send it
    command = "context The visitor is standing at the entrance."

Actions: press, release, click (press + release after ``for_s``, default
0.15 s), hold (same, ``for_s`` required), mute, unmute, ctl (``command``),
end (stop the run here, even if a conversation is still going).
Without an ``end`` step, the run ends when the last conversation has ended
after the last step.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from device.core.errors import ConfigError
from device.drivers.configfile import read_toml

Action = Literal["press", "release", "mute", "unmute", "ctl", "end"]
ACTIONS = ("press", "release", "click", "hold", "mute", "unmute", "ctl", "end")
_KEYS = {"at_s", "action", "for_s", "command"}
CLICK_S = 0.15


@dataclass(frozen=True)
class Step:
    """One thing done at ``at_s`` (click and hold are expanded into press + release)."""

    at_s: float
    action: Action
    command: str = ""

    def describe(self) -> str:
        return f"{self.action} {self.command}".strip()


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"expected a number of seconds >= 0, got {value!r}", key)
    return float(value)


def steps_from_mapping(data: Mapping[str, Any], source: str = "timeline") -> tuple[Step, ...]:
    """Validate parsed TOML and expand it into time-ordered steps."""
    extra = set(data) - {"step"}
    if extra:
        raise ConfigError(f"{source}: unknown section(s) {', '.join(sorted(extra))}; write [[step]] tables", "step")
    raw = data.get("step", [])
    if not isinstance(raw, list):
        raise ConfigError(f"{source}: write each step as a [[step]] table", "step")
    steps: list[Step] = []
    for i, item in enumerate(raw):
        key = f"step[{i}]"
        if not isinstance(item, Mapping):
            raise ConfigError(f"{source}: write each step as a [[step]] table", key)
        for name in item:
            if name not in _KEYS:
                close = difflib.get_close_matches(name, sorted(_KEYS), n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise ConfigError(f"{source}: unknown key; {hint}keys are {', '.join(sorted(_KEYS))}",
                                  f"{key}.{name}")
        if "at_s" not in item or "action" not in item:
            raise ConfigError(f"{source}: every step needs at_s and action", key)
        at_s = _number(item["at_s"], f"{key}.at_s")
        action = item["action"]
        if action not in ACTIONS:
            close = difflib.get_close_matches(str(action), ACTIONS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{source}: unknown action {action!r}{hint}; choose from {', '.join(ACTIONS)}",
                              f"{key}.action")
        if action == "ctl":
            command = item.get("command")
            if not isinstance(command, str) or not command.strip():
                raise ConfigError(f"{source}: a ctl step needs command = \"…\" (e.g. \"mute\")", f"{key}.command")
            steps.append(Step(at_s, "ctl", command.strip()))
        elif action in ("click", "hold"):
            if action == "hold" and "for_s" not in item:
                raise ConfigError(f"{source}: a hold step needs for_s (how long the button is held)", f"{key}.for_s")
            held = _number(item.get("for_s", CLICK_S), f"{key}.for_s")
            steps.append(Step(at_s, "press"))
            steps.append(Step(at_s + held, "release"))
        else:
            for name in ("for_s", "command"):
                if name in item:
                    raise ConfigError(f"{source}: a {action} step takes no {name}", f"{key}.{name}")
            steps.append(Step(at_s, action))
    return tuple(sorted(steps, key=lambda s: s.at_s))


def load_steps(path: Path) -> tuple[Step, ...]:
    """Read a timeline file; errors name the file, the step and the fix."""
    data = read_toml(path, "timeline file", "see `voice-appliance bench --help` for the format")
    return steps_from_mapping(data, str(path))


def last_at_s(steps: Sequence[Step]) -> float:
    return max((s.at_s for s in steps), default=0.0)
