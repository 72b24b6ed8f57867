"""Scenario files: the shipped examples load, mistakes are named with their fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from device.core.errors import ConfigError, ExitCode
from device.emulator.scenario import (
    FAULT_PARAMS,
    Scenario,
    default_scenario,
    describe_format,
    load_scenario,
    parse_fault_spec,
)

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "scenarios"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "s.toml"
    p.write_text(text, encoding="utf-8")
    return p


def test_default_scenario_has_a_tool_call_and_a_goodbye() -> None:
    s = default_scenario()
    assert s.agent.first_message
    assert any(t.tool is not None and "{result}" in t.reply for t in s.turns)
    assert s.turns[-1].end_call


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_examples_load(path: Path) -> None:
    s = load_scenario(path)
    assert s.name == path.stem
    assert s.turns


def test_the_shipped_examples_cover_tools_interruption_and_faults() -> None:
    names = {p.stem for p in EXAMPLES.glob("*.toml")}
    assert {"demo", "interruption", "faults"} <= names
    demo = load_scenario(EXAMPLES / "demo.toml")
    assert demo.turns == default_scenario().turns and demo.agent == default_scenario().agent
    assert load_scenario(EXAMPLES / "interruption.toml").agent.reuse_event_id_after_interruption
    kinds = {f.kind for f in load_scenario(EXAMPLES / "faults.toml").faults}
    assert {"close", "drop", "quota", "malformed_json", "oversized_frame", "signed_url_error"} <= kinds


def test_a_full_scenario(tmp_path: Path) -> None:
    s = load_scenario(
        write(
            tmp_path,
            """
name = "mine"
[agent]
agent_id = "agent_x"
public = true
output_format = "pcm_44100"
input_format = "ulaw_8000"
allowed_overrides = ["prompt"]
[timing]
speed = 10
turn_timeout_s = 0
[[turns]]
reply = "Hi."
[[turns]]
transcript = "Volume up"
reply = "Done: {result}"
end_call = true
[turns.tool]
name = "set_volume"
parameters = { percent = 90 }
[[faults]]
kind = "close"
reply = 1
code = 1000
""",
        )
    )
    assert s.name == "mine"
    assert s.agent.output.rate_hz == 44100 and s.agent.input.encoding == "ulaw"
    assert s.timing.speed == 10.0 and s.timing.turn_timeout_s == 0
    assert s.turns[1].tool is not None and dict(s.turns[1].tool.parameters) == {"percent": 90}
    assert s.faults[0].code == 1000 and s.faults[0].reply == 1


@pytest.mark.parametrize(
    ("text", "key", "hint"),
    [
        ("[agnet]\nagent_id='x'", "agnet", "did you mean 'agent'"),
        ("[agent]\nfirst_mesage='x'", "agent.first_mesage", "did you mean 'first_message'"),
        ("[agent]\noutput_format='pcm_11025'", "agent.output_format", "pcm_16000"),
        ("[agent]\nallowed_overrides=['tts']", "agent.allowed_overrides", "voice_id"),
        ("[agent]\nagent_id='a b'", "agent.agent_id", "without spaces"),
        ("[timing]\nspeed='fast'", "timing.speed", "a number"),
        ("[timing]\nspeed=0", "timing.speed", "out of range"),
        ("[timing]\nchunk_min_ms=900\nchunk_max_ms=100", "timing.chunk_min_ms", "chunk_max_ms"),
        ("[[turns]]\nreply='a'\n[[turns]]\ntranscript='b'", "turns[1].reply", "non-empty reply"),
        ("[[turns]]\nreply='a'\n[turns.tool]\nparameters={}", "turns[0].tool.name", "needs a name"),
        ("[[faults]]\nkind='explode'", "faults[0].kind", "choose from"),
        ("[[faults]]\nkind='cloze'", "faults[0].kind", "did you mean 'close'"),
        ("[[faults]]\nkind='quota'\nreply=2", "faults[0].reply", "its keys are: conversation"),
        ("[[faults]]\nkind='close'\ncode=99", "faults[0].code", "1000…4999"),
    ],
)
def test_mistakes_name_the_key_and_the_fix(tmp_path: Path, text: str, key: str, hint: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_scenario(write(tmp_path, text))
    message = str(err.value)
    assert key in message and hint in message and "s.toml" in message
    assert err.value.exit_code == ExitCode.CONFIG


def test_syntax_errors_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_scenario(write(tmp_path, "[agent\n"))
    with pytest.raises(ConfigError, match="does not exist; see examples/scenarios"):
        load_scenario(tmp_path / "nope.toml")


def test_fault_specs_from_the_command_line() -> None:
    f = parse_fault_spec("close:reply=1,code=1011,after_chunks=3")
    assert (f.kind, f.reply, f.code, f.after_chunks) == ("close", 1, 1011, 3)
    f = parse_fault_spec("signed_url_error:status=429,retry_after_s=2.5,count=2")
    assert (f.status, f.retry_after_s, f.count) == (429, 2.5, 2)
    assert parse_fault_spec("close:reason=going away").reason == "going away"
    assert parse_fault_spec("quota").kind == "quota"
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_fault_spec("close:reply")
    with pytest.raises(ConfigError, match="takes no 'status'"):
        parse_fault_spec("drop:status=500")


def test_with_changes_validates_and_keeps_the_rest() -> None:
    s = default_scenario().with_changes(timing={"speed": 50}, agent={"public": True})
    assert s.timing.speed == 50 and s.agent.public and s.turns == default_scenario().turns
    with pytest.raises(ConfigError, match=r"timing\.speed"):
        default_scenario().with_changes(timing={"speed": -1})
    assert isinstance(s, Scenario)


def test_fault_applies_to_its_conversation() -> None:
    f = parse_fault_spec("quota:conversation=2")
    assert f.applies_to(2) and not f.applies_to(0)
    assert parse_fault_spec("quota").applies_to(7)


def test_the_format_description_lists_every_key_and_fault() -> None:
    text = describe_format()
    for key in (
        "agent_id",
        "output_format",
        "allowed_overrides",
        "reuse_event_id_after_interruption",
        "end_of_turn_silence_ms",
        "speed",
        "inactivity_timeout_s",
        "audio_rate_factor",
        "transcript",
        "end_call",
        "parameters",
        "after_chunks",
        "retry_after_s",
    ):
        assert key in text, key
    for kind in FAULT_PARAMS:
        assert kind in text
