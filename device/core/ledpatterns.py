"""LED patterns per appliance state (pure: parsing, presets, resolution).

A pattern string describes what one output shows::

    off | on | blink PERIOD_S | pulse PERIOD_S      (mode, optional period)
    #rrggbb | red | green | …                     (colour, optional)

in any order, e.g. ``"on"``, ``"blink 0.5"``, ``"pulse #00ff00 1.0"``,
``"#ff8000"`` (a colour alone means on). A plain LED shows any non-black
colour as on and a pulse as a blink; a PWM LED shows a colour as its
brightest channel. :mod:`device.drivers.gpio` turns patterns into gpiozero calls.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from device.core.config import LedOutput, LedsConfig
from device.core.display import STATES  # the states an LED pattern can be given for
from device.core.errors import ConfigError

Mode = Literal["off", "on", "blink", "pulse"]
Rgb = tuple[float, float, float]

DEFAULT_PERIOD_S = {"blink": 1.0, "pulse": 2.0}
MIN_PERIOD_S = 0.05
MAX_PERIOD_S = 60.0

NAMED_COLOURS: Mapping[str, str] = {
    "white": "#ffffff",
    "red": "#ff0000",
    "green": "#00ff00",
    "blue": "#0000ff",
    "yellow": "#ffff00",
    "amber": "#ff8000",
    "orange": "#ff8000",
    "cyan": "#00ffff",
    "magenta": "#ff00ff",
    "purple": "#8000ff",
}

_HEX = re.compile(r"^#([0-9a-fA-F]{6})$")


@dataclass(frozen=True)
class Pattern:
    """What one output shows: a mode, a colour (0..1 per channel) and a period."""

    mode: Mode = "off"
    color: Rgb = (1.0, 1.0, 1.0)
    period_s: float = 0.0

    @property
    def lit(self) -> bool:
        return self.mode != "off" and max(self.color) > 0

    def __str__(self) -> str:
        hexcol = "#" + "".join(f"{round(c * 255):02x}" for c in self.color)
        if self.mode in ("blink", "pulse"):
            return f"{self.mode} {hexcol} {self.period_s:g}"
        return self.mode if self.mode == "off" else f"on {hexcol}"


OFF = Pattern()


def parse_color(text: str, key: str = "leds.patterns") -> Rgb:
    """``"#ff8000"`` or a colour name → (r, g, b) in 0..1."""
    word = NAMED_COLOURS.get(text.lower(), text)
    m = _HEX.match(word)
    if not m:
        raise ConfigError(
            f"{text!r} is not a colour; write #rrggbb (e.g. #ff8000) or one of {', '.join(NAMED_COLOURS)}",
            key,
        )
    value = int(m.group(1), 16)
    return ((value >> 16 & 0xFF) / 255, (value >> 8 & 0xFF) / 255, (value & 0xFF) / 255)


def parse_pattern(text: str, key: str = "leds.patterns") -> Pattern:
    """Parse one pattern string; ConfigError naming ``key`` when it is malformed."""
    mode: Mode | None = None
    color: Rgb | None = None
    period: float | None = None
    for token in text.split():
        low = token.lower()
        if low in ("off", "on", "blink", "pulse"):
            if mode is not None:
                raise ConfigError(f"{text!r} names two modes; write one of off, on, blink, pulse", key)
            mode = low  # type: ignore[assignment]
        elif low.startswith("#") or low in NAMED_COLOURS:
            if color is not None:
                raise ConfigError(f"{text!r} names two colours; write one #rrggbb", key)
            color = parse_color(low, key)
        else:
            try:
                period = float(low.removesuffix("s"))
            except ValueError:
                raise ConfigError(
                    f"{text!r}: cannot read {token!r}; write e.g. \"off\", \"on\", \"blink 0.5\", "
                    "\"pulse #00ff00 1.0\" or \"#ff8000\"",
                    key,
                ) from None
            if not MIN_PERIOD_S <= period <= MAX_PERIOD_S:
                raise ConfigError(
                    f"{text!r}: period {period:g} s is out of range; choose {MIN_PERIOD_S} to {MAX_PERIOD_S:g} s",
                    key,
                )
    if mode is None:
        if color is None:
            if period is not None:
                raise ConfigError(f"{text!r}: a period needs blink or pulse, e.g. \"blink {period:g}\"", key)
            raise ConfigError("empty pattern; write off, on, blink PERIOD_S, pulse PERIOD_S or #rrggbb", key)
        mode = "on"
    if period is not None and mode not in ("blink", "pulse"):
        raise ConfigError(f"{text!r}: only blink and pulse take a period", key)
    if mode in ("blink", "pulse") and period is None:
        period = DEFAULT_PERIOD_S[mode]
    if mode == "off":
        return OFF
    return Pattern(mode, color or (1.0, 1.0, 1.0), period or 0.0)


# -- presets -------------------------------------------------------------------

# One RGB LED (common anode/cathode set by active_high) named "status".
RGB_PATTERNS: Mapping[str, Mapping[str, str]] = {
    "idle": {"status": "#000033"},
    "woken": {"status": "on #ffffff"},
    "connecting": {"status": "blink #0000ff 0.5"},
    "listening": {"status": "on #00ff00"},
    "thinking": {"status": "pulse #00ffff 1.0"},
    "speaking": {"status": "on #0000ff"},
    "error": {"status": "blink #ff0000 0.25"},
    "muted": {"status": "on #ff0000"},
}

# Three single LEDs: green = the microphone is yours, amber = the agent is busy,
# red = something needs attention (error blinks, muted is steady).
THREE_PATTERNS: Mapping[str, Mapping[str, str]] = {
    "idle": {"green": "off", "amber": "off", "red": "off"},
    "woken": {"green": "blink 0.25", "amber": "off", "red": "off"},
    "connecting": {"green": "off", "amber": "blink 0.5", "red": "off"},
    "listening": {"green": "on", "amber": "off", "red": "off"},
    "thinking": {"green": "off", "amber": "pulse 1.0", "red": "off"},
    "speaking": {"green": "off", "amber": "on", "red": "off"},
    "error": {"green": "off", "amber": "off", "red": "blink 0.25"},
    "muted": {"green": "off", "amber": "off", "red": "on"},
}

RGB_PINS = (5, 6, 13)
THREE_PINS = {"green": 5, "amber": 6, "red": 13}


def preset_outputs(preset: str) -> tuple[LedOutput, ...]:
    """The outputs a preset drives (default BCM pins; override with preset = custom)."""
    if preset == "rgb":
        return (LedOutput("status", "rgbled", RGB_PINS, True),)
    if preset == "three":
        return tuple(LedOutput(name, "led", (pin,), True) for name, pin in THREE_PINS.items())
    return ()


def preset_patterns(preset: str) -> Mapping[str, Mapping[str, str]]:
    return {"rgb": RGB_PATTERNS, "three": THREE_PATTERNS}.get(preset, {})


@dataclass(frozen=True)
class LedPlan:
    """The outputs to drive and, per state, the pattern of every output."""

    outputs: tuple[LedOutput, ...]
    patterns: Mapping[str, Mapping[str, Pattern]]

    def for_state(self, state: str) -> Mapping[str, Pattern]:
        return self.patterns.get(state, {})


def resolve(cfg: LedsConfig) -> LedPlan:
    """Outputs and patterns from the config: preset defaults, then the config's patterns.

    With ``preset = "custom"`` the outputs are the configured ``[[leds.output]]``
    tables; with ``rgb``/``three`` they are the preset's, unless outputs are
    listed too (then those replace the preset's pins but keep its patterns).
    An output without a pattern for some state is off in that state.
    """
    outputs = tuple(cfg.output) or preset_outputs(cfg.preset)
    if cfg.preset == "none":
        outputs = ()
    names = [o.name for o in outputs]
    if len(set(names)) != len(names):
        raise ConfigError(f"LED output names must be unique, got {names}; rename one", "leds.output.name")
    if cfg.preset == "custom" and not outputs:
        raise ConfigError(
            "preset = \"custom\" needs at least one [[leds.output]] table; or choose preset rgb, three or none",
            "leds.output",
        )
    texts: dict[str, dict[str, str]] = {s: dict(preset_patterns(cfg.preset).get(s, {})) for s in STATES}
    for state, per_output in cfg.patterns.items():
        if state not in STATES:
            raise ConfigError(f"unknown state {state!r}; patterns exist for {', '.join(STATES)}", "leds.patterns")
        for name, text in per_output.items():
            if name not in names:
                raise ConfigError(
                    f"no LED output named {name!r}; outputs: {', '.join(names) or 'none'}",
                    f"leds.patterns.{state}.{name}",
                )
            texts[state][name] = text
    patterns = {
        state: {
            name: parse_pattern(texts[state].get(name, "off"), f"leds.patterns.{state}.{name}") for name in names
        }
        for state in STATES
    }
    return LedPlan(outputs, patterns)
