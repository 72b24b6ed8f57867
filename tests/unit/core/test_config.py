"""Configuration loading: every error class names the key and the fix."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from device.core.config import DEFAULT_CONFIG_PATH, SECTIONS, Config, LedOutput, ToolSpec, parse_config
from device.core.errors import ConfigError, ExitCode
from device.drivers.configfile import load_config
from tests.support import cli

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "config.toml"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.toml"
    p.write_text(text)
    return p


def test_shipped_example_loads_and_names_an_agent() -> None:
    cfg = load_config(EXAMPLE, environ={})
    assert cfg.require_agent().agent.agent_id.startswith("agent_")
    assert cfg.gate.mode == "push_to_talk"
    assert cfg.tools.builtin == ("set_volume", "device_status", "end_conversation")


def test_defaults_without_a_file() -> None:
    cfg = load_config(None, environ={})
    assert cfg == Config()
    assert Path("/etc/voice-appliance/config.toml") == DEFAULT_CONFIG_PATH


def test_config_error_exit_code_is_78() -> None:
    assert ConfigError("x").exit_code == ExitCode.CONFIG == 78


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        ('[agent]\nagent_id = "a"\nregon = "us"\n', "agent.regon", "did you mean 'region'"),
        ('[agnet]\nagent_id = "a"\n', "agnet", "did you mean [agent]"),
        ('[audio]\nvolume_percent = "loud"\n', "audio.volume_percent", "expected a whole number"),
        ("[audio]\nvolume_percent = 150\n", "audio.volume_percent", "from 0 to 100"),
        ('[gate]\nmode = "push-to-talk"\n', "gate.mode", "did you mean 'push_to_talk'"),
        ("[gate]\nvad_aggressiveness = 1.5\n", "gate.vad_aggressiveness", "whole number"),
        ("[button]\npull_up = 1\n", "button.pull_up", "true or false"),
        ('[agent]\nconnection = "broker"\n', "agent.broker_url", "set agent.broker_url"),
        ('[agent]\nbase_url = "127.0.0.1:80"\n', "agent.base_url", "http(s)://"),
        ('[tools]\nbuiltin = ["reboot"]\n', "tools.builtin", "unknown built-in tool"),
        ("[tools]\nmax_concurrent_calls = 0\n", "tools.max_concurrent_calls", "from 1 to 64"),
        ('[tools]\nmax_concurrent_calls = "many"\n', "tools.max_concurrent_calls", "whole number"),
        ('[[tools.tool]]\nname = "x"\n', "tools.tool", "exactly one of"),
        ('[[tools.tool]]\nname = "x"\ncallable = "nocolon"\n', "tools.tool.callable", "module:function"),
        ('[[leds.output]]\nkind = "rgbled"\npins = [1]\n', "leds.output.pins", "takes 3 pin"),
        ('agent = 3\n', "agent", "expected a [agent] table"),
    ],
)
def test_invalid_values_name_key_and_fix(tmp_path: Path, text: str, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), environ={})
    assert err.value.key == key
    assert fragment in str(err.value)


def test_missing_agent_id_is_required_by_the_daemon() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, environ={}).require_agent()
    assert err.value.key == "agent.agent_id"


def test_precedence_defaults_file_env_cli(tmp_path: Path) -> None:
    path = write(tmp_path, '[agent]\nagent_id = "from_file"\nlocation = "file"\n[audio]\nvolume_percent = 10\n')
    env = {"VOICE_APPLIANCE_AGENT_LOCATION": "env", "VOICE_APPLIANCE_AUDIO_VOLUME_PERCENT": "20"}
    cfg = load_config(path, environ=env, overrides=["audio.volume_percent=30"])
    assert cfg.agent.agent_id == "from_file"  # file over default
    assert cfg.agent.location == "env"  # env over file
    assert cfg.audio.volume_percent == 30  # command line over env
    assert cfg.audio.ring_s == 180.0  # default stays


def test_environment_values_are_typed_and_validated() -> None:
    cfg = load_config(None, environ={"VOICE_APPLIANCE_BUTTON_PIN": "none", "VOICE_APPLIANCE_GATE_MODE": "toggle"})
    assert cfg.button.pin is None
    assert cfg.gate.mode == "toggle"
    with pytest.raises(ConfigError) as err:
        load_config(None, environ={"VOICE_APPLIANCE_SESSION_MAX_DURATION_S": "long"})
    assert err.value.key == "session.max_duration_s"


def test_unknown_environment_and_override_keys() -> None:
    with pytest.raises(ConfigError, match="names no config section"):
        load_config(None, environ={"VOICE_APPLIANCE_NOPE_X": "1"})
    with pytest.raises(ConfigError, match="did you mean 'mode'"):
        load_config(None, environ={}, overrides=["gate.mdoe=voice"])
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        load_config(None, environ={}, overrides=["gate.mode"])


def test_nested_tables_and_maps_are_frozen(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[agent.dynamic_variables]\nfloor = 2\nopen = true\n'
        '[[tools.tool]]\nname = "door"\ncommand = ["/bin/true", "--x"]\n',
    )
    cfg = load_config(path, environ={})
    assert dict(cfg.agent.dynamic_variables) == {"floor": 2, "open": True}
    assert cfg.tools.tool[0].command == ("/bin/true", "--x")
    with pytest.raises(TypeError):
        cfg.agent.dynamic_variables["floor"] = 3  # type: ignore[index]


def test_other_voice_appliance_variables_are_not_config_keys() -> None:
    env = {
        "VOICE_APPLIANCE_CONFIG": "/x.toml",
        "VOICE_APPLIANCE_LOG_LEVEL": "debug",
        "VOICE_APPLIANCE_EMULATOR_API_KEY": "k",  # read by `voice-appliance emulator`
        "VOICE_APPLIANCE_TEST_CACHE": "/var/cache/x",  # the boot test's debootstrap cache
    }
    assert load_config(None, environ=env) == Config()


# -- nan and inf: no setting takes them ----------------------------------------------------------------

# The smallest valid [[section.key]] table of each nested kind, so only the float under test is wrong.
_NESTED_BASE = {ToolSpec: 'name = "x"\ncommand = ["/bin/true"]\n', LedOutput: ""}


def _float_keys() -> list[tuple[str, str]]:
    """Every float key of the schema: (the key as errors name it, its TOML table up to ``name =``)."""
    out = []
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if tp is float:
                out.append((f"{section}.{f.name}", f"[{section}]\n{f.name}"))
            elif typing.get_origin(tp) is tuple and dataclasses.is_dataclass(typing.get_args(tp)[0]):
                inner = typing.get_args(tp)[0]
                assert inner in _NESTED_BASE, f"add a minimal {inner.__name__} table to _NESTED_BASE"
                for g in dataclasses.fields(inner):
                    if typing.get_type_hints(inner)[g.name] is float:
                        table = f"[[{section}.{f.name}]]\n{_NESTED_BASE[inner]}{g.name}"
                        out.append((f"{section}.{f.name}[0].{g.name}", table))
    return out


FLOAT_KEYS = _float_keys()


def test_the_schema_walk_finds_the_float_keys() -> None:
    keys = {k for k, _ in FLOAT_KEYS}
    assert {"session.idle_timeout_s", "session.connecting_timeout_s", "systemd.worker_stall_s",
            "tools.tool[0].timeout_s", "agent.http_timeout_s"} <= keys
    assert len(keys) >= 15


@pytest.mark.parametrize("literal", ["nan", "inf", "-inf", "+inf"])
@pytest.mark.parametrize(("key", "table"), FLOAT_KEYS, ids=[k for k, _ in FLOAT_KEYS])
def test_nan_and_inf_are_config_errors_for_every_float_key(tmp_path: Path, key: str, table: str, literal: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, f"{table} = {literal}\n"), environ={})
    assert err.value.key == key
    assert str(err.value).startswith(f"{key}: {literal.lstrip('+')} ") and "choose a value from" in str(err.value)
    assert err.value.exit_code == ExitCode.CONFIG


@pytest.mark.parametrize("literal", ["nan", "inf"])
def test_nan_from_the_environment_and_the_command_line(literal: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, environ={"VOICE_APPLIANCE_SESSION_IDLE_TIMEOUT_S": literal})
    assert err.value.key == "session.idle_timeout_s"
    with pytest.raises(ConfigError) as err:
        load_config(None, environ={}, overrides=[f"systemd.worker_stall_s={literal}"])
    assert err.value.key == "systemd.worker_stall_s"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[agent.dynamic_variables]\nfloor = nan\n", "agent.dynamic_variables.floor"),
        ("[agent.custom_llm_extra_body]\ntemperature = inf\n", "agent.custom_llm_extra_body.temperature"),
        ("[agent.custom_llm_extra_body]\nw = [1.0, -inf]\n", "agent.custom_llm_extra_body.w[1]"),
    ],
)
def test_nan_and_inf_never_reach_the_agent_as_json(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), environ={})
    assert err.value.key == key and "JSON has no nan or inf" in str(err.value)


@pytest.mark.realtime
def test_nan_makes_the_daemon_exit_78_naming_the_key() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VOICE_APPLIANCE_", "ELEVENLABS_"))}
    r = subprocess.run(
        [sys.executable, "-m", "device", "run", "--check", "--config", str(EXAMPLE),
         "--set", "agent.connection=public", "--set", "session.idle_timeout_s=nan"],
        capture_output=True, text=True, env=env, timeout=60, cwd=ROOT,
    )
    assert r.returncode == 78, r.stdout + r.stderr
    assert "session.idle_timeout_s: nan" in r.stderr and "choose a value from 1 to 3600" in r.stderr


# -- hostile files: the daemon must refuse them with one line, at start (78) and on reload ----------


@pytest.mark.realtime
def test_deeply_nested_tables_in_a_free_form_value_are_refused(tmp_path: Path) -> None:
    """Dotted table headers nest without recursion in the TOML parser, so the depth is checked on load."""
    header = "[agent.custom_llm_extra_body." + ".".join(["a"] * 50_000) + "]"
    path = write(tmp_path, f'[agent]\nagent_id = "a"\nconnection = "public"\n{header}\nb = 1\n')
    r = cli("run", "--check", "--config", str(path))
    assert r.returncode == 78, r.stderr
    assert "nests tables or arrays more than 32 levels deep; flatten it" in r.stderr
    assert "internal error" not in r.stderr
    deep_enough = "[agent.custom_llm_extra_body." + ".".join(["a"] * 31) + "]\nb = 1\n"
    assert load_config(write(tmp_path, deep_enough), environ={}).agent.custom_llm_extra_body["a"]


def test_any_failure_while_loading_is_a_config_error() -> None:
    """A value no check foresaw (here one the TOML parser overflows on) is exit 78, not an internal error."""
    env = {"VOICE_APPLIANCE_AGENT_CUSTOM_LLM_EXTRA_BODY": "[" * 20_000 + "]" * 20_000}
    with pytest.raises(ConfigError) as err:
        load_config(None, environ=env)
    assert "the configuration could not be loaded (RecursionError" in str(err.value)
    assert "voice-appliance run --check" in str(err.value)


# -- parse_config: the pure part (no file, no process environment) ---------------------------------


def test_parse_config_takes_the_tables_a_file_held() -> None:
    assert parse_config({"gate": {"mode": "toggle"}}, {}).gate.mode == "toggle"


def test_parse_config_reads_only_the_environment_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICE_APPLIANCE_GATE_MODE", "toggle")
    assert parse_config({}, {}).gate.mode == "push_to_talk"


def test_parse_config_leaves_the_callers_tables_as_they_were() -> None:
    data = {"gate": {"mode": "voice"}}
    parse_config(data, {"VOICE_APPLIANCE_GATE_MODE": "toggle"}, ["gate.preroll_ms=100"])
    assert data == {"gate": {"mode": "voice"}}


def test_parse_config_names_the_file_an_unknown_section_came_from() -> None:
    with pytest.raises(ConfigError, match=r"unknown section in /etc/x\.toml"):
        parse_config({"agnet": {}}, {}, path=Path("/etc/x.toml"))


def test_parse_config_turns_an_unforeseen_failure_into_a_config_error() -> None:
    with pytest.raises(ConfigError, match="the configuration could not be loaded"):
        parse_config({}, {"VOICE_APPLIANCE_AGENT_CUSTOM_LLM_EXTRA_BODY": "[" * 20_000 + "]" * 20_000})


def test_well_formed_values_are_a_config_whatever_the_engines_say() -> None:
    """The wake model and the LED plan are their owners' checks (device.app.settings), not the parser's."""
    cfg = parse_config({"gate": {"mode": "wake_word"}, "wake": {"model": "hey_siri"}}, {})
    assert cfg.wake.model == "hey_siri"
