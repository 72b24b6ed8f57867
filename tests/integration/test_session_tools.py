"""Client tools end to end: the emulator's agent calls, the device answers exactly once."""

from __future__ import annotations

import importlib
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from test_session_support import (
    WAIT_S,
    Hooks,
    fast_scenario,
    make_session,
    running,
    speak,
    started,
    wait_reply_played,
)

from device.config import ToolsConfig, ToolSpec
from device.emulator.scenario import ToolCall as ScenarioToolCall
from device.emulator.scenario import Turn
from device.protocol import AgentResponse, Outcome, SessionEnded, ToolCallFinished, ToolCallStarted
from device.tools import ToolRegistry


@pytest.fixture
def kiosk_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    name = f"kiosk_tools_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            import threading
            release = threading.Event()

            def room_of(exhibit):
                return {"dinosaurs": "Hall 3"}.get(exhibit, "unknown")

            def broken():
                raise ValueError("the ticket printer is out of paper")

            def slow():
                release.wait(60)
                return "too late"
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    yield module
    module.release.set()
    sys.modules.pop(name, None)


def converse_with_tool(
    tool_name: str, parameters: dict[str, Any], registry: ToolRegistry, tool_timeout_s: float = 5.0
) -> tuple[Any, Any]:
    scenario = fast_scenario(
        timing={"tool_timeout_s": tool_timeout_s},
        agent={"tool_error_reply": "Failed: {result}"},
        turns=(
            Turn(
                transcript="Question.",
                reply="Answer: {result}.",
                tool=ScenarioToolCall(name=tool_name, parameters=parameters),
            ),
        ),
    )
    with running(scenario) as emu:
        session, events = make_session(emu, tools=registry)
        with started(session):
            events.wait_for(AgentResponse)
            wait_reply_played(emu, 0)
            speak(session, "Question.")
            events.wait_for(ToolCallFinished)
            reply = events.wait_for(AgentResponse, lambda e: e.text.startswith(("Answer", "Failed")))
        record = emu.wait_for_conversation_end(timeout_s=WAIT_S)
    assert not record.violations, record.violations
    calls = [c for t in record.turns for c in t.tool_calls]
    assert len(calls) == 1 and calls[0].name == tool_name
    assert [type(e) for e in events.items if isinstance(e, (ToolCallStarted, ToolCallFinished))] == [
        ToolCallStarted,
        ToolCallFinished,
    ]
    assert events.of(ToolCallStarted)[0].call_id == events.of(ToolCallFinished)[0].call_id == calls[0].call_id
    return calls[0], reply


def tools_cfg(*specs: ToolSpec) -> ToolsConfig:
    return ToolsConfig(tool=specs)


def test_a_configured_callable_answers_and_the_agent_uses_the_result(kiosk_tools: ModuleType) -> None:
    registry = ToolRegistry(tools_cfg(ToolSpec(name="room_of", callable=f"{kiosk_tools.__name__}:room_of")), Hooks())
    call, reply = converse_with_tool("room_of", {"exhibit": "dinosaurs"}, registry)
    assert call.result == "Hall 3" and call.is_error is False
    assert reply.text == "Answer: Hall 3."


def test_an_unknown_tool_gets_an_error_result(kiosk_tools: ModuleType) -> None:
    call, reply = converse_with_tool("open_pod_bay_doors", {}, ToolRegistry(ToolsConfig(), Hooks()))
    assert call.is_error is True and "unknown tool 'open_pod_bay_doors'" in call.result
    assert reply.text.startswith("Failed: unknown tool")


def test_an_exception_becomes_an_error_result(kiosk_tools: ModuleType) -> None:
    registry = ToolRegistry(tools_cfg(ToolSpec(name="broken", callable=f"{kiosk_tools.__name__}:broken")), Hooks())
    call, _ = converse_with_tool("broken", {}, registry)
    assert call.is_error is True and "ValueError: the ticket printer is out of paper" in call.result


def test_a_timeout_becomes_an_error_result_before_the_agent_gives_up(kiosk_tools: ModuleType) -> None:
    registry = ToolRegistry(
        tools_cfg(ToolSpec(name="slow", callable=f"{kiosk_tools.__name__}:slow", timeout_s=0.3)), Hooks()
    )
    call, _ = converse_with_tool("slow", {}, registry, tool_timeout_s=10.0)
    assert call.is_error is True and "timed out after 0.3 s" in call.result and not call.timed_out
    kiosk_tools.release.set()
    registry.close()


def test_a_command_tool(tmp_path: Path) -> None:
    code = "import json, sys; p = json.load(sys.stdin); print('Hall', p['hall'])"
    registry = ToolRegistry(tools_cfg(ToolSpec(name="hall", command=(sys.executable, "-c", code))), Hooks())
    call, reply = converse_with_tool("hall", {"hall": 7}, registry)
    assert call.result == "Hall 7" and reply.text == "Answer: Hall 7."


def test_builtin_set_volume_and_end_conversation() -> None:
    hooks = Hooks()
    registry = ToolRegistry(ToolsConfig(), hooks)
    call, _ = converse_with_tool("set_volume", {"percent": 30}, registry)
    assert call.is_error is False and hooks.volumes == [30]
    call, _ = converse_with_tool("end_conversation", {}, registry)
    assert call.is_error is False and hooks.end_requests == 1


def test_ending_the_conversation_while_a_tool_runs_still_answers_the_call_once(kiosk_tools: ModuleType) -> None:
    scenario = fast_scenario(
        timing={"tool_timeout_s": 30.0},
        turns=(Turn(transcript="Question.", reply="Answer: {result}.", tool=ScenarioToolCall(name="slow")),),
    )
    registry = ToolRegistry(
        tools_cfg(ToolSpec(name="slow", callable=f"{kiosk_tools.__name__}:slow", timeout_s=20.0)), Hooks()
    )
    with running(scenario) as emu:
        session, events = make_session(emu, tools=registry)
        with started(session):
            events.wait_for(AgentResponse)
            wait_reply_played(emu, 0)
            speak(session, "Question.")
            events.wait_for(ToolCallStarted)
        # stop() ended the conversation while the tool was still running
        record = emu.wait_for_conversation_end(timeout_s=WAIT_S)
    assert events.ended().outcome is Outcome.LOCAL
    calls = [c for t in record.turns for c in t.tool_calls]
    assert len(calls) == 1
    results = [m for m in record.events if m["direction"] == "to_agent" and m["type"] == "client_tool_result"]
    assert len(results) == 1, "the service got exactly one result, before the close frame"
    assert calls[0].is_error is True and "cancelled" in str(calls[0].result)
    kinds = [type(e) for e in events.items if isinstance(e, (ToolCallStarted, ToolCallFinished, SessionEnded))]
    assert kinds == [ToolCallStarted, ToolCallFinished, SessionEnded]
    assert events.of(ToolCallFinished)[0].is_error
    assert not record.violations, record.violations
