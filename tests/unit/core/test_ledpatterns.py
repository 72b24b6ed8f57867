"""LED pattern strings, presets and their resolution against the config."""

from __future__ import annotations

from pathlib import Path

import pytest

from device.app.settings import load_settings
from device.core.config import LedOutput, LedsConfig
from device.core.display import STATES
from device.core.errors import ConfigError
from device.core.ledpatterns import OFF, Pattern, parse_color, parse_pattern, preset_patterns, resolve


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("off", OFF),
        ("on", Pattern("on", (1.0, 1.0, 1.0), 0.0)),
        ("blink 0.5", Pattern("blink", (1.0, 1.0, 1.0), 0.5)),
        ("blink", Pattern("blink", (1.0, 1.0, 1.0), 1.0)),
        ("pulse 1.0", Pattern("pulse", (1.0, 1.0, 1.0), 1.0)),
        ("pulse #00ff00 1.0", Pattern("pulse", (0.0, 1.0, 0.0), 1.0)),
        ("#ff0000", Pattern("on", (1.0, 0.0, 0.0), 0.0)),
        ("BLINK red 0.25s", Pattern("blink", (1.0, 0.0, 0.0), 0.25)),
        ("1.5 pulse amber", Pattern("pulse", (1.0, 128 / 255, 0.0), 1.5)),
    ],
)
def test_parse_pattern(text: str, expected: Pattern) -> None:
    assert parse_pattern(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty pattern"),
        ("flash 0.5", "cannot read 'flash'"),
        ("blink 0", "out of range"),
        ("on off", "two modes"),
        ("#12345", "not a colour"),
        ("#ff0000 #00ff00", "two colours"),
        ("on 0.5", "only blink and pulse take a period"),
        ("0.5", "needs blink or pulse"),
    ],
)
def test_bad_patterns_say_how_to_write_them(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment) as err:
        parse_pattern(text, "leds.patterns.idle.status")
    assert err.value.key == "leds.patterns.idle.status"


def test_pattern_round_trips_through_str() -> None:
    for text in ("off", "on #102030", "blink #ff0000 0.25", "pulse #00ffff 1"):
        assert parse_pattern(str(parse_pattern(text))) == parse_pattern(text)


def test_colour_parsing() -> None:
    assert parse_color("#FF8000") == (1.0, 128 / 255, 0.0)
    assert parse_color("cyan") == (0.0, 1.0, 1.0)


def test_rgb_preset_has_a_distinct_look_for_every_state() -> None:
    plan = resolve(LedsConfig(preset="rgb"))
    assert [o.kind for o in plan.outputs] == ["rgbled"]
    looks = {str(plan.for_state(s)["status"]) for s in STATES}
    assert len(looks) == len(STATES)


def test_three_preset_distinct_and_error_differs_from_muted() -> None:
    plan = resolve(LedsConfig(preset="three"))
    assert [o.name for o in plan.outputs] == ["green", "amber", "red"]
    looks = {tuple(str(p) for p in plan.for_state(s).values()) for s in STATES if s != "idle"}
    assert len(looks) == len(STATES) - 1
    assert plan.for_state("error")["red"].mode == "blink" and plan.for_state("muted")["red"].mode == "on"


def test_none_preset_drives_nothing() -> None:
    assert resolve(LedsConfig(preset="none")).outputs == ()


def test_config_patterns_override_the_preset() -> None:
    plan = resolve(LedsConfig(preset="rgb", patterns={"listening": {"status": "pulse #ffffff 2"}}))
    assert plan.for_state("listening")["status"] == Pattern("pulse", (1.0, 1.0, 1.0), 2.0)
    assert plan.for_state("idle")["status"].mode == "on"


def test_custom_outputs_unspecified_states_are_off() -> None:
    cfg = LedsConfig(
        preset="custom",
        output=(LedOutput("mic", "led", (4,)), LedOutput("ring", "pwmled", (12,))),
        patterns={"listening": {"mic": "on"}, "speaking": {"ring": "pulse 0.5"}},
    )
    plan = resolve(cfg)
    assert plan.for_state("listening") == {"mic": Pattern("on"), "ring": OFF}
    assert plan.for_state("idle") == {"mic": OFF, "ring": OFF}


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        ('[leds]\npreset = "custom"\n', "leds.output", "needs at least one"),
        ('[leds.patterns.sleeping]\nstatus = "on"\n', "leds.patterns", "unknown state 'sleeping'"),
        ('[leds.patterns.idle]\nlamp = "on"\n', "leds.patterns.idle.lamp", "no LED output named 'lamp'"),
        ('[leds.patterns.idle]\nstatus = "strobe"\n', "leds.patterns.idle.status", "cannot read 'strobe'"),
        (
            '[leds]\npreset = "custom"\n[[leds.output]]\nname = "a"\nkind = "led"\npins = [1]\n'
            '[[leds.output]]\nname = "a"\nkind = "led"\npins = [2]\n',
            "leds.output.name",
            "unique",
        ),
    ],
)
def test_config_file_errors_name_the_key(tmp_path: Path, text: str, key: str, fragment: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=fragment) as err:
        load_settings(path, environ={})
    assert err.value.key == key


@pytest.mark.parametrize("preset", ["rgb", "three"])
def test_every_preset_gives_every_display_state_a_pattern(preset: str) -> None:
    assert sorted(preset_patterns(preset)) == sorted(STATES)


@pytest.mark.parametrize("preset", ["rgb", "three"])
def test_every_preset_pattern_names_every_output_of_the_preset(preset: str) -> None:
    names = {o.name for o in resolve(LedsConfig(preset=preset)).outputs}  # type: ignore[arg-type]
    assert all(set(per_output) == names for per_output in preset_patterns(preset).values())
