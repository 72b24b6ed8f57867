"""The protocol's messages as the emulator builds them: one function per message type (pure).

Each builder returns the JSON object of one text frame, shaped as the
AsyncAPI document's schema of that type (tests/contract/), keys in the
document's order. They take the fields' values and decide nothing: what a
field says (ids, texts, timings) is the conversation's business.

The agent's messages (server → client) come first; the client's (client →
server) follow, for :class:`~device.emulator.client.ProtocolClient`.
"""

from __future__ import annotations

import base64
from typing import Any

Message = dict[str, Any]

# A text frame cut off mid-message (the malformed_json fault): not JSON at all.
TRUNCATED_AUDIO_FRAME = '{"type": "audio", "audio_event": {"audio_base_64": "AAAA", "event_id": '


def encode_audio(chunk: bytes) -> str:
    """Audio bytes as the base64 text the protocol carries."""
    return base64.b64encode(chunk).decode("ascii")


# -- server → client -------------------------------------------------------------------------


def conversation_initiation_metadata(
    conversation_id: str, agent_output_audio_format: str, user_input_audio_format: str
) -> Message:
    return {
        "type": "conversation_initiation_metadata",
        "conversation_initiation_metadata_event": {
            "conversation_id": conversation_id,
            "agent_output_audio_format": agent_output_audio_format,
            "user_input_audio_format": user_input_audio_format,
        },
    }


def audio(audio_base_64: str, event_id: int, alignment: dict[str, Any] | None = None) -> Message:
    """One chunk of the agent's voice (``audio_base_64`` as sent: faults pass text that is not base64)."""
    event: dict[str, Any] = {"audio_base_64": audio_base_64, "event_id": event_id}
    if alignment is not None:
        event["alignment"] = alignment
    return {"type": "audio", "audio_event": event}


def agent_response(text: str, event_id: int) -> Message:
    return {"type": "agent_response", "agent_response_event": {"agent_response": text, "event_id": event_id}}


def agent_chat_response_part(text: str, part_type: str, event_id: int) -> Message:
    """One part of the streamed reply text (``part_type``: start, delta or stop)."""
    part = {"text": text, "type": part_type, "event_id": event_id}
    return {"type": "agent_chat_response_part", "text_response_part": part}


def agent_response_correction(original: str, corrected: str, event_id: int) -> Message:
    return {
        "type": "agent_response_correction",
        "agent_response_correction_event": {
            "original_agent_response": original,
            "corrected_agent_response": corrected,
            "event_id": event_id,
        },
    }


def user_transcript(transcript: str, event_id: int) -> Message:
    event = {"user_transcript": transcript, "event_id": event_id}
    return {"type": "user_transcript", "user_transcription_event": event}


def tentative_user_transcript(transcript: str, event_id: int) -> Message:
    return {
        "type": "tentative_user_transcript",
        "tentative_user_transcription_event": {"user_transcript": transcript, "event_id": event_id},
    }


def interruption(event_id: int) -> Message:
    return {"type": "interruption", "interruption_event": {"event_id": event_id}}


def ping(event_id: int, ping_ms: int | None) -> Message:
    """``ping_ms``: the last measured round trip (None before the first pong)."""
    return {"type": "ping", "ping_event": {"event_id": event_id, "ping_ms": ping_ms}}


def vad_score(score: float) -> Message:
    return {"type": "vad_score", "vad_score_event": {"vad_score": score}}


def client_tool_call(tool_name: str, tool_call_id: str, parameters: dict[str, Any], event_id: int) -> Message:
    return {
        "type": "client_tool_call",
        "client_tool_call": {
            "tool_name": tool_name,
            "tool_call_id": tool_call_id,
            "parameters": parameters,
            "event_id": event_id,
        },
    }


def error(code: int, message: str, error_type: str) -> Message:
    """The document's error event; its generic ``reason`` is the error type."""
    event = {"code": code, "message": message, "error_type": error_type, "reason": error_type}
    return {"type": "error", "error_event": event}


def agent_tool_response(tool_name: str, tool_call_id: str, tool_type: str, is_error: bool, event_id: int) -> Message:
    """A tool the agent ran on its side (``is_called``: it did run)."""
    event = {
        "tool_name": tool_name,
        "tool_call_id": tool_call_id,
        "tool_type": tool_type,
        "is_error": is_error,
        "is_called": True,
        "event_id": event_id,
    }
    return {"type": "agent_tool_response", "agent_tool_response": event}


def mcp_tool_call(
    *,
    service_id: str,
    tool_call_id: str,
    tool_name: str,
    tool_description: str,
    parameters: dict[str, Any],
    timestamp: str,
    state: str,
    approval_timeout_secs: int | None = None,
    result: list[dict[str, Any]] | None = None,
    error_message: str | None = None,
) -> Message:
    """One MCP tool call event in ``state``; the field its state adds (MCPToolCall* schemas) goes last."""
    call: dict[str, Any] = {
        "service_id": service_id,
        "tool_call_id": tool_call_id,
        "tool_name": tool_name,
        "tool_description": tool_description,
        "parameters": parameters,
        "timestamp": timestamp,
        "state": state,
    }
    if approval_timeout_secs is not None:
        call["approval_timeout_secs"] = approval_timeout_secs
    if result is not None:
        call["result"] = result
    if error_message is not None:
        call["error_message"] = error_message
    return {"type": "mcp_tool_call", "mcp_tool_call": call}


def rich_content(rich_content_id: str, component: str, props: dict[str, Any], event_id: int) -> Message:
    event = {"rich_content_id": rich_content_id, "component": component, "props": props, "event_id": event_id}
    return {"type": "rich_content", "rich_content": event}


def context_usage(event_id: int, model: str, context_tokens: int, context_limit_tokens: int) -> Message:
    event = {
        "event_id": event_id,
        "model": model,
        "context_tokens": context_tokens,
        "context_limit_tokens": context_limit_tokens,
    }
    return {"type": "context_usage", "context_usage_event": event}


def unknown_event(event_type: str, body: dict[str, Any]) -> Message:
    """An event of a type the document does not have, shaped as its events are (``<type>_event``)."""
    return {"type": event_type, f"{event_type}_event": body}


# -- client → server -------------------------------------------------------------------------


def conversation_initiation_client_data(**fields: Any) -> Message:
    return {"type": "conversation_initiation_client_data", **fields}


def user_audio_chunk(chunk: bytes) -> Message:
    """The one message without a ``type``."""
    return {"user_audio_chunk": encode_audio(chunk)}


def pong(event_id: int) -> Message:
    return {"type": "pong", "event_id": event_id}
