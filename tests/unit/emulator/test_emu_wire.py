"""Each message builder against the vendored AsyncAPI document (tests/contract/)."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from typing import Any

import pytest

from device.emulator import wire
from tests.contract.validator import FROM_AGENT, TO_AGENT, contract

ALIGNMENT = {"chars": ["h", "i"], "char_start_times_ms": [0, 40], "char_durations_ms": [40, 40]}


def mcp(state: str, **extra: Any) -> wire.Message:
    return wire.mcp_tool_call(
        service_id="mcp_emulated",
        tool_call_id="mcp_01234567_001",
        tool_name="lookup",
        tool_description="Emulated MCP tool lookup",
        parameters={"query": "emulated"},
        timestamp="2026-12-01T10:00:00.000000+00:00",
        state=state,
        **extra,
    )


# builder name → (direction, a call of it with typical values)
CASES: dict[str, tuple[str, Callable[[], wire.Message]]] = {
    "conversation_initiation_metadata": (
        FROM_AGENT,
        lambda: wire.conversation_initiation_metadata("conv_0123", "pcm_16000", "pcm_16000"),
    ),
    "audio": (FROM_AGENT, lambda: wire.audio(wire.encode_audio(b"\x00\x01"), 3, ALIGNMENT)),
    "agent_response": (FROM_AGENT, lambda: wire.agent_response("Hello there.", 3)),
    "agent_chat_response_part": (FROM_AGENT, lambda: wire.agent_chat_response_part(" there", "delta", 3)),
    "agent_response_correction": (
        FROM_AGENT,
        lambda: wire.agent_response_correction("Hello there.", "Hello", 3),
    ),
    "user_transcript": (FROM_AGENT, lambda: wire.user_transcript("What is on today?", 4)),
    "tentative_user_transcript": (FROM_AGENT, lambda: wire.tentative_user_transcript("What is", 4)),
    "interruption": (FROM_AGENT, lambda: wire.interruption(3)),
    "ping": (FROM_AGENT, lambda: wire.ping(5, 12)),
    "vad_score": (FROM_AGENT, lambda: wire.vad_score(0.75)),
    "client_tool_call": (
        FROM_AGENT,
        lambda: wire.client_tool_call("device_status", "toolu_01234567_001", {"verbose": True}, 4),
    ),
    "error": (FROM_AGENT, lambda: wire.error(1002, "No user audio received for 20 s", "transport_receive_timeout")),
    "agent_tool_response": (
        FROM_AGENT,
        lambda: wire.agent_tool_response("end_call", "toolu_agent_001", "system", False, 3),
    ),
    "mcp_tool_call": (FROM_AGENT, lambda: mcp("awaiting_approval", approval_timeout_secs=300)),
    "rich_content": (
        FROM_AGENT,
        lambda: wire.rich_content("rc_3_1", "item_card", {"title": "Emulated card", "text": "Hi"}, 3),
    ),
    "context_usage": (FROM_AGENT, lambda: wire.context_usage(3, "emulated-llm", 1234, 128000)),
    "conversation_initiation_client_data": (
        TO_AGENT,
        lambda: wire.conversation_initiation_client_data(dynamic_variables={"kiosk": "hall"}, user_id="visitor"),
    ),
    "user_audio_chunk": (TO_AGENT, lambda: wire.user_audio_chunk(bytes(320))),
    "pong": (TO_AGENT, lambda: wire.pong(5)),
}
NOT_MESSAGES = {"encode_audio", "unknown_event"}  # a field encoder; a type the document does not have


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_builder_makes_a_message_the_document_accepts(name: str) -> None:
    direction, build = CASES[name]
    message = build()
    assert contract().problems(direction, message) == []
    assert contract().message_type(direction, message) == name


def test_every_builder_is_checked_against_the_document() -> None:
    builders = {n for n, f in inspect.getmembers(wire, inspect.isfunction) if f.__module__ == wire.__name__}
    assert builders - NOT_MESSAGES == set(CASES)


@pytest.mark.parametrize(
    ("state", "extra"),
    [
        ("loading", {}),
        ("awaiting_approval", {"approval_timeout_secs": 60}),
        ("success", {"result": [{"type": "text", "text": "lookup: done"}]}),
        ("failure", {"error_message": "Rejected by the user"}),
    ],
)
def test_an_mcp_tool_call_in_each_state_is_what_the_document_allows(state: str, extra: dict[str, Any]) -> None:
    assert contract().problems(FROM_AGENT, mcp(state, **extra)) == []


def test_an_audio_chunk_without_alignment_has_no_alignment_key() -> None:
    assert wire.audio("AAAA", 1) == {"type": "audio", "audio_event": {"audio_base_64": "AAAA", "event_id": 1}}


def test_an_error_event_lists_its_keys_in_the_documents_order() -> None:
    text = json.dumps(wire.error(1008, "Override not allowed", "override_error"))
    assert text == (
        '{"type": "error", "error_event": {"code": 1008, "message": "Override not allowed", '
        '"error_type": "override_error", "reason": "override_error"}}'
    )


def test_an_unknown_event_is_refused_by_the_document() -> None:
    message = wire.unknown_event("made_up", {"emulated": True})
    assert message == {"type": "made_up", "made_up_event": {"emulated": True}}
    assert contract().problems(FROM_AGENT, message)


def test_the_truncated_frame_is_not_json() -> None:
    with pytest.raises(ValueError):
        json.loads(wire.TRUNCATED_AUDIO_FRAME)
