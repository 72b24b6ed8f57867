"""The post-load checks: every setting that needs more than a well-formed value is checked by its owner, at load."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from device.app.settings import check_resources, load_settings
from device.core.config import Config, parse_config
from device.core.errors import ConfigError
from device.drivers import wake


def parsed(overrides: list[str]) -> Config:
    return parse_config({}, {}, overrides)


def test_the_defaults_pass() -> None:
    assert check_resources(Config()) == Config()


def test_echo_cancellation_on_needs_its_library_and_auto_or_off_does_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pywebrtc_audio", None)
    with pytest.raises(ConfigError, match=r"voice-appliance\[aec\]") as e:
        check_resources(parsed(["audio.echo_cancellation=on"]))
    check_resources(parsed(["gate.barge_in=voice"]))  # auto: half duplex, said by doctor, not refused
    assert e.value.key == "audio.echo_cancellation"
    check_resources(parsed(["audio.echo_cancellation=auto"]))
    check_resources(parsed(["audio.echo_cancellation=off"]))


def test_an_led_pattern_for_no_output_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError) as e:
        check_resources(parse_config({"leds": {"patterns": {"idle": {"lamp": "on"}}}}, {}))
    assert e.value.key == "leds.patterns.idle.lamp"


def test_noise_suppression_needs_its_library(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "webrtc_noise_gain", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"voice-appliance\[dsp\]"):
        check_resources(parsed(["audio.noise_suppression=2"]))


def test_without_noise_suppression_or_gain_the_library_is_not_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "webrtc_noise_gain", None)
    check_resources(parsed(["audio.noise_suppression=0", "audio.auto_gain_dbfs=0"]))


def test_the_wake_word_mode_needs_its_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pymicro_wakeword", None)
    with pytest.raises(ConfigError) as e:
        check_resources(parsed(["gate.mode=wake_word"]))
    assert e.value.key == "wake.engine"


def test_the_wake_model_is_checked_only_in_wake_word_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pymicro_wakeword", None)
    check_resources(parsed(["wake.model=hey_siri"]))


def test_the_led_plan_is_checked_before_the_libraries(monkeypatch: pytest.MonkeyPatch) -> None:
    """As when LedsConfig checked itself while the sections were built, before the optional libraries."""
    monkeypatch.setitem(sys.modules, "pymicro_wakeword", None)
    cfg = parse_config({"leds": {"preset": "custom"}, "gate": {"mode": "wake_word"}}, {})
    with pytest.raises(ConfigError) as e:
        check_resources(cfg)
    assert e.value.key == "leds.output"


def test_load_settings_reads_the_file_then_checks(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[leds]\npreset = "custom"\n')
    with pytest.raises(ConfigError, match="needs at least one"):
        load_settings(path, environ={})


def test_an_unforeseen_failure_in_a_check_is_a_config_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def broken(cfg: object) -> None:
        raise ValueError("odd model")

    monkeypatch.setattr(wake, "resolve_model", broken)
    path = tmp_path / "c.toml"
    path.write_text('[gate]\nmode = "wake_word"\n')
    with pytest.raises(ConfigError) as e:
        load_settings(path, environ={})
    assert str(e.value).startswith(f"the configuration ({path} with the environment and --set) could not be loaded")



def test_the_screen_loads_and_off_loopback_it_needs_a_token() -> None:
    assert check_resources(parsed(["screen.enabled=true"])).screen.enabled
    with pytest.raises(ConfigError) as err:
        parsed(["screen.enabled=true", "screen.bind=0.0.0.0"])
    assert err.value.key == "screen.token_file"
