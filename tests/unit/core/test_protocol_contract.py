"""protocol.py against the official AsyncAPI document (vendored in tests/contract/)."""

from __future__ import annotations

import json
import types

import pytest

from device.core.protocol import (
    ERROR_TYPES,
    encode_audio_chunk,
    encode_contextual_update,
    encode_feedback,
    encode_initiation,
    encode_mcp_approval,
    encode_pong,
    encode_tool_result,
    encode_user_activity,
    encode_user_message,
    initiation_message,
)
from tests.contract.validator import TO_AGENT, contract, load_document


def test_the_outcome_table_covers_exactly_the_documents_error_types() -> None:
    enum = load_document()["components"]["schemas"]["ErrorType"]["enum"]
    assert sorted(ERROR_TYPES) == sorted(enum)


def test_the_close_codes_the_document_lists_are_all_classified() -> None:
    codes = load_document()["components"]["schemas"]["WebSocketCloseCode"]["enum"]
    assert sorted(codes) == [1000, 1002, 1008, 1011]


INITIATIONS = {
    "bare": initiation_message(version="1.2.3"),
    "no version": initiation_message(),
    "everything": initiation_message(
        prompt="You are a guide.",
        first_message="Welcome!",
        language="de",
        voice_id="voice123",
        dynamic_variables={"kiosk_id": "k1", "floor": 2, "ratio": 0.5, "open": True},
        custom_llm_extra_body=types.MappingProxyType({"temperature": 0.2, "tags": ("a", "b")}),
        user_id="visitor-7",
        version="0.1.0",
    ),
}


@pytest.mark.parametrize("name", sorted(INITIATIONS))
def test_initiation_messages_conform_and_carry_source_info(name: str) -> None:
    msg = json.loads(encode_initiation(INITIATIONS[name]))
    assert contract().problems(TO_AGENT, msg) == []
    info = msg["source_info"]
    assert info["source"] == "voice-appliance"
    assert all(isinstance(v, str) and v for v in info.values())  # an empty version is left out, not ""


def test_source_info_version_is_the_firmware_version() -> None:
    assert initiation_message(version="0.4.0")["source_info"] == {"source": "voice-appliance", "version": "0.4.0"}
    assert initiation_message()["source_info"] == {"source": "voice-appliance"}


@pytest.mark.parametrize(
    "text",
    [
        encode_audio_chunk(b"\x01\x00\x02\x00"),
        encode_pong(17),
        encode_tool_result("c1", "done", False),
        encode_tool_result("c2", "tool x timed out after 10 s", True),
        encode_contextual_update("door opened"),
        encode_user_message("hi"),
        encode_user_activity(),
        encode_feedback(5, like=True),
        encode_mcp_approval("mcp_1", True),
        encode_mcp_approval("mcp_2", False),
    ],
)
def test_every_client_message_conforms(text: str) -> None:
    assert contract().problems(TO_AGENT, json.loads(text)) == []


def test_the_validator_would_catch_a_broken_approval() -> None:
    broken = {"type": "mcp_tool_approval_result", "tool_call_id": "m", "is_approved": "yes"}
    assert contract().problems(TO_AGENT, broken)
