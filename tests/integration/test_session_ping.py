"""Pings are answered at once from the receiving thread, whatever else is going on."""

from __future__ import annotations

import importlib
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from device.core.config import ToolsConfig, ToolSpec
from device.core.protocol import AgentAudio, AgentResponse, Ping, ToolCallFinished, ToolCallStarted
from device.drivers.tools import ToolRegistry
from device.emulator.scenario import ToolCall as ScenarioToolCall
from device.emulator.scenario import Turn
from tests.integration.sessionrig import (
    WAIT_S,
    Hooks,
    fast_scenario,
    make_session,
    messages_to_agent,
    running,
    silence,
    speak,
    started,
    wait_reply_played,
)

pytestmark = pytest.mark.realtime

LONG = "This is a long answer with many words so that the audio keeps streaming for a good while longer."


def test_every_ping_is_answered_while_audio_streams_both_ways() -> None:
    scenario = fast_scenario(
        agent={"first_message": LONG},
        timing={"ping_interval_s": 0.05, "pong_timeout_s": 10.0, "speed": 2.0},
        turns=(Turn(transcript="Tell me more.", reply=LONG),),
    )
    with running(scenario) as emu:
        session, events = make_session(emu)
        with started(session):
            events.wait_for(AgentAudio)
            silence(session, 10.0)  # a 10 s backlog of user audio pours out while pings arrive
            wait_reply_played(emu, 0)
            speak(session, "Tell me more.")
            events.wait_for(AgentResponse, lambda e: e.text == LONG and len(events.of(AgentResponse)) > 1)
            events.wait_count(AgentAudio, 20)
            pings = events.wait_count(Ping, 10)
            emu.wait_until(
                lambda s: len(messages_to_agent(s[-1], "pong")) >= len(pings), WAIT_S, "the pongs to arrive"
            )
        record = emu.wait_for_conversation_end(timeout_s=WAIT_S)
    assert not record.violations, record.violations  # no pong missing or with a wrong id
    pongs = [m["event_id"] for m in messages_to_agent(record, "pong")]
    device_pings = [p.event_id for p in events.of(Ping)]
    # A ping that reaches the device while it closes may go unanswered; every earlier one may not.
    assert len(pongs) >= len(pings), "every ping seen before the stop got its pong"
    assert pongs == device_pings[: len(pongs)], "one pong per ping, same ids, same order"
    assert len(record.ping_rtts_ms) >= len(pings)
    reported = [p.ping_ms for p in events.of(Ping) if p.ping_ms is not None]
    assert reported and session.ping_ms == reported[-1] and session.stats["ping_ms"] == reported[-1]


@pytest.fixture
def sleepy_tool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"sleepy_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            import threading
            def nap():
                threading.Event().wait(3.0)  # a slow tool: 3 s, well within its timeout
                return "rested"
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module(name)
    yield f"{name}:nap"
    sys.modules.pop(name, None)


def test_pings_are_answered_while_a_slow_tool_runs(sleepy_tool: str) -> None:
    scenario = fast_scenario(
        timing={"ping_interval_s": 0.1, "pong_timeout_s": 2.0, "tool_timeout_s": 20.0},
        turns=(Turn(transcript="Nap.", reply="Result {result}.", tool=ScenarioToolCall(name="nap")),),
    )
    registry = ToolRegistry(ToolsConfig(tool=(ToolSpec(name="nap", callable=sleepy_tool, timeout_s=10.0),)), Hooks())
    with running(scenario) as emu:
        session, events = make_session(emu, tools=registry)
        with started(session):
            events.wait_for(AgentResponse)
            wait_reply_played(emu, 0)
            speak(session, "Nap.")
            finished = events.wait_for(ToolCallFinished)
            started_at = events.items.index(events.of(ToolCallStarted)[0])
            during = [e for e in events.items[started_at : events.items.index(finished)] if isinstance(e, Ping)]
            events.wait_for(AgentResponse, lambda e: e.text == "Result rested.")
        record = emu.wait_for_conversation_end(timeout_s=WAIT_S)
    assert not finished.is_error
    assert len(during) >= 10, "pings kept coming (and being answered) during the 3 s tool call"
    assert not record.violations, record.violations
