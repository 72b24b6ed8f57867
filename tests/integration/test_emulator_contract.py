"""The device's messages, through the real session and emulator, against the AsyncAPI document.

The autouse ``contract_check`` (tests/contract/checking.py) validates every
message of every integration test; this test makes sure one conversation
sends every kind of message the device has, with every override and dynamic
variables of every type, and that each kind was seen and conformed.
"""

from __future__ import annotations

from typing import Any

import pytest

from device.core.config import ToolsConfig
from device.core.protocol import AgentAudio, AgentResponse, ToolCallFinished
from device.drivers.tools import ToolRegistry
from device.emulator.scenario import ToolCall, Turn
from tests.contract.checking import ContractLog
from tests.contract.validator import FROM_AGENT, TO_AGENT
from tests.integration.sessionrig import (
    WAIT_S,
    Hooks,
    agent_for,
    fast_scenario,
    make_session,
    running,
    speak,
    started,
    wait_reply_played,
)

pytestmark = pytest.mark.realtime


def test_every_device_message_conforms(contract_check: ContractLog) -> None:
    scenario = fast_scenario(
        agent={"allowed_overrides": ("prompt", "first_message", "language", "voice_id"), "first_message": "Hi."},
        timing={"ping_interval_s": 0.3, "pong_timeout_s": 5.0},
        turns=(
            Turn(transcript="Status?", reply="It says {result}.", tool=ToolCall(name="device_status")),
            Turn(transcript="Doors?", reply="Opened.", tool=ToolCall(name="open_pod_bay_doors")),
            Turn(transcript="Thanks.", reply="You are welcome."),
        ),
    )
    variables: dict[str, Any] = {"hall": "east", "floor": 3, "ratio": 0.5, "open": True}
    with running(scenario) as emu:
        agent = agent_for(
            emu,
            prompt="Be brief.",
            first_message="Welcome to the museum.",
            language="en",
            voice_id="voice_123",
            user_id="visitor-7",
            kiosk_id="kiosk-1",
            location="Hall 3",
            dynamic_variables=variables,
            custom_llm_extra_body={"temperature": 0.2, "tags": ["a", "b"]},
        )
        session, events = make_session(emu, agent=agent, tools=ToolRegistry(ToolsConfig(), Hooks()))
        with started(session):
            first = events.wait_for(AgentResponse)
            wait_reply_played(emu, 0)
            session.send_contextual_update("The visitor stands at the dinosaur exhibit.")
            session.send_user_activity()
            speak(session, "Status?")
            events.wait_for(ToolCallFinished)
            events.wait_for(AgentResponse, lambda e: e.text.startswith("It says"))
            wait_reply_played(emu, 1)
            speak(session, "Doors?")  # an unknown tool: an error result
            events.wait_for(ToolCallFinished, lambda e: e.is_error)
            events.wait_for(AgentResponse, lambda e: e.text.startswith("Sorry"))
            wait_reply_played(emu, 2)
            session.send_user_message("Thanks.")
            events.wait_for(AgentResponse, lambda e: e.text.startswith("You are"))
            record = emu.conversations[-1]
            reply_id = next(t.event_id for t in record.turns if t.event_id is not None)
            session.send_feedback(reply_id, True)
            session.send_feedback(reply_id, False)
            emu.wait_until(
                lambda snaps: len([e for e in snaps[-1].events if e["type"] == "feedback"]) == 2, WAIT_S, "feedback"
            )
        record = emu.wait_for_conversation_end(timeout_s=WAIT_S)
    assert first.text == "Welcome to the museum."
    init = record.initiation or {}
    assert init["conversation_config_override"] == {
        "agent": {"prompt": {"prompt": "Be brief."}, "first_message": "Welcome to the museum.", "language": "en"},
        "tts": {"voice_id": "voice_123"},
    }
    assert {k: type(v) for k, v in init["dynamic_variables"].items()}.items() >= {
        "hall": str,
        "floor": int,
        "ratio": float,
        "open": bool,
    }.items()
    results = [c for t in record.turns for c in t.tool_calls]
    assert [c.is_error for c in results] == [False, True]
    sent = contract_check.counts[TO_AGENT]
    for type_ in (
        "conversation_initiation_client_data",
        "user_audio_chunk",
        "pong",
        "client_tool_result",
        "contextual_update",
        "user_activity",
        "user_message",
        "feedback",
    ):
        assert sent.get(type_, 0) > 0, f"the device sent no {type_}"
    assert contract_check.counts[FROM_AGENT].get("client_tool_call") == 2
    assert not contract_check.problems, (contract_check.report(), record.violations)
    assert not record.violations, (contract_check.report(), record.violations)


def test_the_device_accepts_alignment_on_every_audio_event_at_full_rate(contract_check: ContractLog) -> None:
    """The service may send alignment (chars, start times, durations) with every chunk: nothing is lost."""
    long_reply = "This reply is long enough to need many chunks, each of them carrying its alignment data. " * 3
    scenario = fast_scenario(
        agent={"alignment": True, "first_message": long_reply},
        timing={"speed": 1000.0, "chunk_min_ms": 20, "chunk_max_ms": 80},  # as fast as the emulator sends
    )
    with running(scenario) as emu:
        session, events = make_session(emu)
        with started(session):
            events.wait_for(AgentResponse)
            wait_reply_played(emu, 0)
            record = emu.conversations[-1]
            stats = session.stats
    sent = [e for e in record.events if e["type"] == "audio" and e["direction"] == "from_agent"]
    received = events.of(AgentAudio)
    assert len(sent) > 50
    assert len(received) == len(sent)
    assert sum(len(a.audio) for a in received) == sum(e["bytes"] for e in sent)
    assert stats["malformed_messages"] == stats["unknown_events"] == stats["agent_audio_dropped"] == 0, stats
    assert contract_check.counts[FROM_AGENT]["audio"] == len(sent)
    assert not contract_check.problems
