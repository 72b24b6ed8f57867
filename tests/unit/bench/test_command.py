"""``voice-appliance bench`` options (the runs themselves are in tests/integration/test_bench.py)."""

from __future__ import annotations

import pytest

from device.cli import main


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--agent-url", "http://127.0.0.1:9", "--scenario", "x.toml"], "--scenario is for the built-in emulator"),
        (["--api-key-file", "k"], "--api-key-file is for --agent-url"),
    ],
)
def test_contradictory_options_are_refused(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", *argv]) == 2
    assert message in capsys.readouterr().err


def test_help_documents_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in ("--input", "--timeline", "--scenario", "--agent-url", "--api-key-file", "--gate",
                   "--realtime", "--fast", "--out", "--set", "[[step]]"):
        assert option in text


def test_realtime_and_fast_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--realtime", "--fast"])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_the_schema_is_printed_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from device.bench import report

    assert main(["bench", "--schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["properties"]["schema_version"]["const"] == report.SCHEMA_VERSION
