"""The pure protocol module: decoding, encoding, the interruption rule, outcomes."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import math
import re
import types

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from device.core.audioformat import PCM_16000, AudioFormat
from device.core.protocol import (
    ERROR_TYPES,
    MAX_FIELD_CHARS,
    MAX_MESSAGE_BYTES,
    MAX_TEXT_CHARS,
    AgentAudio,
    AgentResponse,
    AgentResponseCorrection,
    AgentResponsePart,
    AgentToolResponse,
    Connected,
    Interruption,
    InterruptionFilter,
    MalformedMessage,
    McpToolCall,
    Outcome,
    Ping,
    RichContent,
    ServerError,
    SessionEnded,
    TentativeAgentResponse,
    ToolCall,
    UnknownEvent,
    UnsupportedFormat,
    UserTranscript,
    VadScore,
    classify_close,
    classify_end,
    classify_http_status,
    clean_text,
    decode_server_message,
    dynamic_variables_for,
    encode_audio_chunk,
    encode_contextual_update,
    encode_feedback,
    encode_mcp_approval,
    encode_pong,
    encode_tool_result,
    encode_user_activity,
    encode_user_message,
    initiation_message,
    parse_retry_after,
)
from tests.support import examples

# The machine is shared: no deadlines, no speed health checks.
RELAXED = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=examples(150))

PCM_22050 = AudioFormat("pcm", 22050)
ULAW_8000 = AudioFormat("ulaw", 8000)


def dec(msg: object, fmt: AudioFormat | None = PCM_16000) -> object:
    return decode_server_message(json.dumps(msg), fmt, 12.5)


def audio_msg(audio: bytes, event_id: int = 3) -> dict[str, object]:
    return {
        "type": "audio",
        "audio_event": {"audio_base_64": base64.b64encode(audio).decode(), "event_id": event_id},
    }


# -- decoding every server event --------------------------------------------------


def test_metadata_becomes_connected_with_parsed_formats() -> None:
    ev = dec(
        {
            "type": "conversation_initiation_metadata",
            "conversation_initiation_metadata_event": {
                "conversation_id": "conv_1",
                "agent_output_audio_format": "pcm_22050",
                "user_input_audio_format": "ulaw_8000",
            },
        }
    )
    assert ev == Connected("conv_1", PCM_22050, ULAW_8000)


def test_unsupported_announced_format_is_a_clear_error() -> None:
    with pytest.raises(UnsupportedFormat, match="pcm_16000") as info:
        dec(
            {
                "type": "conversation_initiation_metadata",
                "conversation_initiation_metadata_event": {
                    "conversation_id": "c",
                    "agent_output_audio_format": "mp3_44100_128",
                    "user_input_audio_format": "pcm_16000",
                },
            }
        )
    assert "mp3_44100_128" in str(info.value)
    assert "dashboard" in str(info.value)


def test_audio_is_decoded_with_its_id_format_and_time() -> None:
    pcm = bytes(range(200))
    ev = dec(audio_msg(pcm, 7), PCM_22050)
    assert ev == AgentAudio(pcm, 7, PCM_22050, 12.5)


def test_ulaw_audio_may_have_an_odd_length_pcm_may_not() -> None:
    assert isinstance(dec(audio_msg(b"\x01\x02\x03"), ULAW_8000), AgentAudio)
    with pytest.raises(MalformedMessage) as info:
        dec(audio_msg(b"\x01\x02\x03"), PCM_16000)
    assert info.value.kind == "odd_length_audio"


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        ("{not json", "bad_json"),
        ("[1, 2]", "bad_json"),
        ('{"audio_event": {}}', "missing_type"),
        ('{"type": "audio"}', "missing_field"),
        ('{"type": "audio", "audio_event": {"audio_base_64": "AAAA"}}', "missing_field"),
        ('{"type": "audio", "audio_event": {"audio_base_64": "!!notbase64", "event_id": 1}}', "bad_base64"),
        ('{"type": "ping", "ping_event": {"ping_ms": 3}}', "missing_field"),
        ('{"type": "interruption", "interruption_event": {"event_id": "x"}}', "missing_field"),
        ('{"type": "agent_response", "agent_response_event": {"agent_response": 5}}', "missing_field"),
        ('{"type": "vad_score", "vad_score_event": {"vad_score": "high"}}', "missing_field"),
        ('{"type": "mcp_tool_call", "mcp_tool_call": {}}', "missing_field"),
        ('{"type": "mcp_tool_call", "mcp_tool_call": {"tool_call_id": "m", "tool_name": "t"}}', "missing_field"),
        ('{"type": "agent_tool_response", "agent_tool_response": {"tool_name": 3}}', "missing_field"),
        ('{"type": "client_tool_call", "client_tool_call": {"tool_name": "t"}}', "missing_field"),
        (
            '{"type": "client_tool_call", "client_tool_call": '
            '{"tool_name": "t", "tool_call_id": "1", "parameters": [1]}}',
            "missing_field",
        ),
    ],
)
def test_malformed_messages_are_classified(raw: str, kind: str) -> None:
    with pytest.raises(MalformedMessage) as info:
        decode_server_message(raw, PCM_16000, 0.0)
    assert info.value.kind == kind


def test_audio_before_metadata_is_malformed() -> None:
    with pytest.raises(MalformedMessage) as info:
        dec(audio_msg(b"\0\0"), None)
    assert info.value.kind == "audio_before_metadata"


def test_oversized_message_is_rejected_without_parsing() -> None:
    with pytest.raises(MalformedMessage) as info:
        decode_server_message(b" " * (MAX_MESSAGE_BYTES + 1), PCM_16000, 0.0)
    assert info.value.kind == "too_large"


def test_message_just_under_the_limit_is_accepted() -> None:
    pcm = b"\x01\x00" * ((MAX_MESSAGE_BYTES * 3 // 4 - 200) // 2)
    raw = json.dumps(audio_msg(pcm))
    assert len(raw) <= MAX_MESSAGE_BYTES
    ev = decode_server_message(raw, PCM_16000, 0.0)
    assert isinstance(ev, AgentAudio)
    assert len(ev.audio) == len(pcm)


@pytest.mark.parametrize(
    ("msg", "event"),
    [
        ({"type": "ping", "ping_event": {"event_id": 4, "ping_ms": 37}}, Ping(37, 4)),
        ({"type": "ping", "ping_event": {"event_id": 4, "ping_ms": None}}, Ping(None, 4)),
        ({"type": "interruption", "interruption_event": {"event_id": 9}}, Interruption(9)),
        ({"type": "agent_response", "agent_response_event": {"agent_response": "Hi"}}, AgentResponse("Hi")),
        (
            {
                "type": "agent_response_correction",
                "agent_response_correction_event": {
                    "original_agent_response": "Hello there, how",
                    "corrected_agent_response": "Hello there",
                },
            },
            AgentResponseCorrection("Hello there", "Hello there, how"),
        ),
        (
            {"type": "agent_response_correction", "correction_event": {"corrected_response": "Hel"}},
            AgentResponseCorrection("Hel", ""),
        ),
        (
            {"type": "agent_chat_response_part", "text_response_part": {"text": "He", "type": "delta"}},
            AgentResponsePart("He", "delta"),
        ),
        (
            {"type": "user_transcript", "user_transcription_event": {"user_transcript": "hello"}},
            UserTranscript("hello", False),
        ),
        (
            {
                "type": "tentative_user_transcript",
                "tentative_user_transcription_event": {"user_transcript": "hel"},
            },
            UserTranscript("hel", True),
        ),
        ({"type": "vad_score", "vad_score_event": {"vad_score": 0.75}}, VadScore(0.75)),
        (
            {
                "type": "client_tool_call",
                "client_tool_call": {"tool_name": "set_volume", "tool_call_id": "c1", "parameters": {"percent": 5}},
            },
            ToolCall("set_volume", "c1", {"percent": 5}),
        ),
        (
            {
                "type": "internal_tentative_agent_response",
                "tentative_agent_response_internal_event": {"tentative_agent_response": "Let me"},
            },
            TentativeAgentResponse("Let me"),
        ),
        (
            {"type": "error", "error_event": {"code": 1002, "message": "no audio", "error_type": "timeout"}},
            ServerError(1002, "no audio", "timeout"),
        ),
        ({"type": "context_usage", "context_usage_event": {}}, UnknownEvent("context_usage")),
        (
            {
                "type": "agent_tool_response",
                "agent_tool_response": {
                    "tool_name": "end_call", "tool_call_id": "t1", "tool_type": "system", "is_error": False,
                    "is_called": True, "event_id": 4,
                },
            },
            AgentToolResponse("end_call", "t1", "system", False),
        ),
        (
            {
                "type": "agent_tool_response_full_payload",
                "agent_tool_response_full_payload": {
                    "tool_name": "end_call", "tool_call_id": "t2", "tool_type": "system", "is_error": False,
                    "is_called": True, "event_id": 4, "full_tool_result": "{}",
                },
            },
            AgentToolResponse("end_call", "t2", "system", False),
        ),
        (
            {
                "type": "mcp_tool_call",
                "mcp_tool_call": {
                    "service_id": "svc", "tool_call_id": "m1", "tool_name": "lookup", "parameters": {},
                    "timestamp": "2026-11-29T21:00:00Z", "state": "awaiting_approval", "approval_timeout_secs": 300,
                },
            },
            McpToolCall("m1", "lookup", "awaiting_approval", "svc", 300),
        ),
        (
            {
                "type": "mcp_tool_call",
                "mcp_tool_call": {
                    "service_id": "svc", "tool_call_id": "m1", "tool_name": "lookup", "parameters": {},
                    "timestamp": "2026-11-29T21:00:00Z", "state": "failure", "error_message": "Rejected",
                },
            },
            McpToolCall("m1", "lookup", "failure", "svc", None, "Rejected"),
        ),
        (
            {
                "type": "rich_content",
                "rich_content": {"rich_content_id": "rc1", "component": "item_card", "props": {}, "event_id": 2},
            },
            RichContent("rc1", "item_card"),
        ),
    ],
)
def test_every_server_event_becomes_a_typed_event(msg: dict[str, object], event: object) -> None:
    assert dec(msg) == event


@RELAXED
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_anything_but_protocol_errors(data: bytes) -> None:
    with contextlib.suppress(MalformedMessage, UnsupportedFormat):
        decode_server_message(data, PCM_16000, 0.0)


@RELAXED
@given(
    st.dictionaries(
        st.sampled_from(["type", "audio_event", "ping_event", "interruption_event", "error_event"]),
        st.one_of(
            st.none(),
            st.integers(),
            st.text(max_size=5),
            st.sampled_from(["audio", "ping", "interruption", "error"]),
            st.dictionaries(
                st.sampled_from(["event_id", "audio_base_64", "ping_ms", "code"]),
                st.one_of(st.none(), st.integers(), st.text(max_size=8), st.booleans()),
            ),
        ),
    )
)
def test_arbitrary_shapes_never_crash_the_decoder(msg: dict[str, object]) -> None:
    with contextlib.suppress(MalformedMessage, UnsupportedFormat):
        decode_server_message(json.dumps(msg), PCM_16000, 0.0)


# -- hostile shapes: nothing but MalformedMessage/UnsupportedFormat may escape -------------

DEEP = 100_000


@pytest.mark.parametrize(
    "raw",
    [
        "[" * DEEP + "]" * DEEP,
        '{"a":' * DEEP + "1" + "}" * DEEP,
        '{"type": "ping", "ping_event": {"event_id": 1, "x": ' + "[" * DEEP + "]" * DEEP + "}}",
    ],
    ids=["list", "object", "inside-a-ping"],
)
def test_deeply_nested_json_is_malformed_not_a_crash(raw: str) -> None:
    with pytest.raises(MalformedMessage) as info:
        decode_server_message(raw, PCM_16000, 0.0)
    assert info.value.kind == "too_deep"
    assert "nested" in str(info.value)


def nested(depth: int) -> object:
    value: object = "x"
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("field", ["message", "error_type", "reason"])
def test_error_event_fields_that_are_not_strings_are_not_rendered(field: str) -> None:
    # repr() of a structure nested just under the parser's limit would overflow the stack
    deep = "[" * 900 + "]" * 900
    raw = f'{{"type": "error", "error_event": {{"code": 1002, "{field}": {deep}}}}}'
    ev = decode_server_message(raw, PCM_16000, 0.0)
    assert isinstance(ev, ServerError)
    assert ev.code == 1002
    assert "[" not in ev.message + ev.error_type


@pytest.mark.parametrize("event_id", ["²", "9" * 5000, "١٢"])
def test_odd_digit_strings_as_ids_are_malformed_or_read(event_id: str) -> None:
    raw = json.dumps({"type": "interruption", "interruption_event": {"event_id": event_id}})
    try:
        ev = decode_server_message(raw, PCM_16000, 0.0)
    except MalformedMessage as e:
        assert e.kind == "missing_field"
    else:
        assert isinstance(ev, Interruption)
        assert ev.event_id == int(event_id)


JSON_LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12),
    st.sampled_from(["²", "9" * 4400, "pcm_16000", "awaiting_approval", "end_call", "system"]),
)
JSON_VALUES = st.recursive(
    JSON_LEAVES, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)
# Each server type with its wrapper (as the document names it), so fuzzing reaches the field checks.
TYPED_WRAPPERS = [
    ("audio", "audio_event"), ("ping", "ping_event"), ("interruption", "interruption_event"),
    ("conversation_initiation_metadata", "conversation_initiation_metadata_event"),
    ("agent_response", "agent_response_event"), ("agent_response_correction", "agent_response_correction_event"),
    ("agent_response_correction", "correction_event"), ("agent_chat_response_part", "text_response_part"),
    ("user_transcript", "user_transcription_event"),
    ("tentative_user_transcript", "tentative_user_transcription_event"), ("vad_score", "vad_score_event"),
    ("client_tool_call", "client_tool_call"),
    ("internal_tentative_agent_response", "tentative_agent_response_internal_event"), ("error", "error_event"),
    ("agent_tool_response", "agent_tool_response"),
    ("agent_tool_response_full_payload", "agent_tool_response_full_payload"), ("mcp_tool_call", "mcp_tool_call"),
    ("rich_content", "rich_content"), ("context_usage", "context_usage_event"),
]
FIELDS = [
    "event_id", "audio_base_64", "ping_ms", "conversation_id", "agent_output_audio_format",
    "user_input_audio_format", "agent_response", "original_agent_response", "corrected_agent_response",
    "corrected_response", "text", "type", "user_transcript", "vad_score", "tool_name", "tool_call_id",
    "parameters", "tentative_agent_response", "code", "message", "error_type", "reason", "tool_type",
    "is_error", "is_called", "service_id", "state", "approval_timeout_secs", "rich_content_id", "component",
    "props", "timestamp",
]


# Scalars that have broken decoders: non-ASCII digits, integers over Python's 4300-digit limit, NaN.
NASTY = st.sampled_from(["²", "١٢", "9" * 4400, float("nan"), float("inf"), -1, 2**70, "", True])


@pytest.mark.parametrize("typed", TYPED_WRAPPERS, ids=[f"{k}.{w}" for k, w in TYPED_WRAPPERS])
@settings(RELAXED, max_examples=examples(50))
@given(
    fields=st.fixed_dictionaries({}, optional={f: NASTY | JSON_VALUES for f in FIELDS}),
    extra=st.dictionaries(st.sampled_from(["type", *(w for _, w in TYPED_WRAPPERS)]), JSON_VALUES, max_size=2),
)
def test_fuzzed_server_messages_never_raise_anything_else(
    typed: tuple[str, str], fields: dict[str, object], extra: dict[str, object]
) -> None:
    kind, wrapper = typed
    msg = {"type": kind, wrapper: fields, **extra}
    for fmt in (PCM_16000, None):
        with contextlib.suppress(MalformedMessage, UnsupportedFormat):
            decode_server_message(json.dumps(msg), fmt, 0.0)


# -- every string from the service leaves the parser short and without control characters ----------

CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
HOSTILE = "\n<0>forged\r\x1b[2J\x1b]0;t\x07\x9b\u2028\ud800"
HOSTILE_TEXT = st.one_of(
    st.text(st.characters(codec=None), max_size=20), st.just(HOSTILE), st.just("x" * 300 + HOSTILE * 3000)
)
TEXT_FIELDS = {"agent_response", "corrected_agent_response", "corrected_response", "original_agent_response",
               "text", "user_transcript", "tentative_agent_response"}


def strings_of(event: object) -> dict[str, str]:
    return {f.name: v for f in dataclasses.fields(event) if isinstance(v := getattr(event, f.name), str)}  # type: ignore[arg-type]


def test_clean_text_escapes_controls_and_marks_a_cut() -> None:
    assert clean_text("conv_1") == "conv_1"
    assert clean_text("a\nb\x1b[31m") == "a\\nb\\x1b[31m"
    assert clean_text("x" * 201) == "x" * 199 + "…"
    assert len(clean_text("\x1b" * 1000)) == MAX_FIELD_CHARS


@settings(RELAXED, max_examples=examples(40))
@pytest.mark.parametrize("typed", TYPED_WRAPPERS, ids=[f"{k}.{w}" for k, w in TYPED_WRAPPERS])
@given(fields=st.fixed_dictionaries({}, optional={f: HOSTILE_TEXT for f in FIELDS}), etype=HOSTILE_TEXT)
def test_every_string_from_the_service_is_short_and_has_no_control_character(
    typed: tuple[str, str], fields: dict[str, object], etype: str
) -> None:
    kind, wrapper = typed
    fields.update(agent_output_audio_format="pcm_16000", user_input_audio_format="pcm_16000")
    msg = {"type": kind if kind != "context_usage" else etype, wrapper: fields}
    try:
        event = decode_server_message(json.dumps(msg), PCM_16000, 0.0)
    except MalformedMessage:
        return
    for name, value in strings_of(event).items():
        assert not CONTROLS.search(value), (name, value)
        limit = MAX_TEXT_CHARS if name in TEXT_FIELDS or name in ("text", "original") else MAX_FIELD_CHARS
        assert len(value) <= limit, (name, len(value))


def test_a_two_megabyte_conversation_id_is_cut_and_escaped() -> None:
    huge = "conv_" + ("A" * 1000 + HOSTILE) * 2000
    ev = dec({
        "type": "conversation_initiation_metadata",
        "conversation_initiation_metadata_event": {
            "conversation_id": huge, "agent_output_audio_format": "pcm_16000", "user_input_audio_format": "pcm_16000",
        },
    })
    assert isinstance(ev, Connected)
    assert len(ev.conversation_id) == MAX_FIELD_CHARS
    assert ev.conversation_id.startswith("conv_AAA")
    assert ev.conversation_id.endswith("…")


def test_the_error_events_text_is_escaped_not_dropped() -> None:
    ev = dec({"type": "error", "error_event": {"code": 1011, "message": "boom" + HOSTILE, "error_type": "x\ny"}})
    assert ev == ServerError(1011, "boom\\n<0>forged\\r\\x1b[2J\\x1b]0;t\\x07\\x9b\\u2028\\ud800", "x\\ny")


def test_a_transcript_keeps_its_text_with_controls_escaped() -> None:
    ev = dec({"type": "agent_response", "agent_response_event": {"agent_response": "Steps:\n1. \x1b[1mgo\x1b[0m"}})
    assert ev == AgentResponse("Steps:\\n1. \\x1b[1mgo\\x1b[0m")
    long = dec({"type": "user_transcript", "user_transcription_event": {"user_transcript": "w " * 20_000}})
    assert isinstance(long, UserTranscript)
    assert len(long.text) == MAX_TEXT_CHARS
    assert long.text.endswith("…")


def test_an_unusable_format_name_of_megabytes_makes_a_short_error() -> None:
    for name in ("x" * 2_000_000 + HOSTILE, ["pcm_16000"] * 200_000):
        with pytest.raises(UnsupportedFormat) as info:
            dec({
                "type": "conversation_initiation_metadata",
                "conversation_initiation_metadata_event": {
                    "conversation_id": "c", "agent_output_audio_format": name, "user_input_audio_format": "pcm_16000",
                },
            })
        assert len(str(info.value)) < 600, str(info.value)[:300]
        assert not CONTROLS.search(str(info.value)), str(info.value)[:300]


def test_a_close_reason_is_escaped_in_the_detail() -> None:
    _, detail = classify_close(1011, "bad\x1b[2Jthing")
    assert "\x1b" not in detail
    assert "bad\\x1b[2Jthing" in detail


# -- encoding ---------------------------------------------------------------------


def test_initiation_without_overrides_sends_an_empty_override_and_source_info() -> None:
    msg = initiation_message(version="1.2.3")
    assert msg == {
        "type": "conversation_initiation_client_data",
        "conversation_config_override": {},
        "source_info": {"source": "voice-appliance", "version": "1.2.3"},
    }


def test_initiation_carries_every_configured_field() -> None:
    extra = types.MappingProxyType({"temperature": 0.2, "tags": ("a", "b"), "nested": types.MappingProxyType({"x": 1})})
    msg = initiation_message(
        prompt="You are a guide.",
        first_message="Welcome!",
        language="de",
        voice_id="voice123",
        dynamic_variables={"kiosk_id": "k1", "floor": 2, "open": True},
        custom_llm_extra_body=extra,
        user_id="visitor-7",
        version="0.1.0",
    )
    json.dumps(msg)  # all plain data
    assert msg["conversation_config_override"] == {
        "agent": {"prompt": {"prompt": "You are a guide."}, "first_message": "Welcome!", "language": "de"},
        "tts": {"voice_id": "voice123"},
    }
    assert msg["custom_llm_extra_body"] == {"temperature": 0.2, "tags": ["a", "b"], "nested": {"x": 1}}
    assert msg["dynamic_variables"] == {"kiosk_id": "k1", "floor": 2, "open": True}
    assert msg["user_id"] == "visitor-7"


def test_dynamic_variable_values_must_be_scalars() -> None:
    with pytest.raises(ValueError, match="floor"):
        initiation_message(dynamic_variables={"floor": [1, 2]})


def test_builtin_dynamic_variables_default_to_the_hostname() -> None:
    assert dynamic_variables_for("", "", {}, "kiosk-7") == {"kiosk_id": "kiosk-7"}
    assert dynamic_variables_for("lobby-1", "Front desk", {"floor": 2}, "h") == {
        "kiosk_id": "lobby-1",
        "location": "Front desk",
        "floor": 2,
    }
    assert dynamic_variables_for("a", "", {"kiosk_id": "b"}, "h")["kiosk_id"] == "b"


def test_client_messages() -> None:
    assert json.loads(encode_audio_chunk(b"\x01\x02")) == {"user_audio_chunk": "AQI="}
    assert json.loads(encode_pong(17)) == {"type": "pong", "event_id": 17}
    assert json.loads(encode_tool_result("c1", "done", False)) == {
        "type": "client_tool_result",
        "tool_call_id": "c1",
        "result": "done",
        "is_error": False,
    }
    assert json.loads(encode_contextual_update("door opened")) == {"type": "contextual_update", "text": "door opened"}
    assert json.loads(encode_user_message("hi")) == {"type": "user_message", "text": "hi"}
    assert json.loads(encode_user_activity()) == {"type": "user_activity"}
    assert json.loads(encode_feedback(5, like=False)) == {"type": "feedback", "event_id": 5, "score": "dislike"}
    assert json.loads(encode_mcp_approval("m1", False)) == {
        "type": "mcp_tool_approval_result", "tool_call_id": "m1", "is_approved": False,
    }


@pytest.mark.parametrize("bad", [-1, True, "3"])
def test_feedback_rejects_bad_ids(bad: object) -> None:
    with pytest.raises(ValueError, match="event_id"):
        encode_feedback(bad, like=True)  # type: ignore[arg-type]


def test_text_messages_need_text() -> None:
    with pytest.raises(ValueError, match="contextual_update"):
        encode_contextual_update("  ")
    with pytest.raises(ValueError, match="user_message"):
        encode_user_message("")


# -- interruption rule ----------------------------------------------------------------


def test_interruption_drops_lower_ids_and_keeps_equal_and_higher() -> None:
    f = InterruptionFilter()
    assert f.admit(1)
    assert f.admit(5)
    f.interrupt(5)
    assert not f.admit(4)
    assert f.admit(5), "the new reply may reuse the interruption's id (the SDK's <= bug)"
    assert f.admit(6)
    assert f.dropped_chunks == 1


def test_an_older_interruption_does_not_lower_the_floor() -> None:
    f = InterruptionFilter()
    f.interrupt(8)
    f.interrupt(3)
    assert not f.admit(7)


@RELAXED
@given(st.lists(st.integers(0, 50), max_size=20), st.integers(0, 50), st.integers(0, 60))
def test_interruption_rule_property(before: list[int], n: int, later: int) -> None:
    f = InterruptionFilter()
    for i in before:
        f.admit(i)
    f.interrupt(n)
    assert f.admit(later) == (later >= n)


# -- outcomes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "reason", "outcome"),
    [
        (1000, "", Outcome.NORMAL),
        (1000, "Conversation ended by agent (end_call)", Outcome.AGENT_ENDED),
        (1000, "Maximum duration reached", Outcome.MAX_DURATION),
        (1000, "Maximum conversation duration reached", Outcome.MAX_DURATION),
        (1002, "This request exceeds your quota limit.", Outcome.QUOTA),
        (1002, "transport_receive_timeout", Outcome.NETWORK),
        (1008, "Override for field 'prompt' is not allowed by config.", Outcome.MISCONFIGURED),
        (1008, "Invalid conversation signature", Outcome.AUTH),
        (1008, "Authentication failed", Outcome.AUTH),
        (1008, "The conversation signature is expired", Outcome.AUTH),
        (1008, "Agent 'agent_x' not found", Outcome.NOT_FOUND),
        (1011, "internal error", Outcome.SERVER_ERROR),
        (1001, "going away", Outcome.SERVER_ERROR),
        (1009, "", Outcome.PROTOCOL),
        (None, "", Outcome.NETWORK),
        (4000, "custom", Outcome.SERVER_ERROR),
    ],
)
def test_close_codes_become_distinct_outcomes(code: int | None, reason: str, outcome: Outcome) -> None:
    got, detail = classify_close(code, reason)
    assert got is outcome
    if reason:
        assert reason.split()[0] in detail


def test_close_reason_in_detail_is_bounded_and_single_line() -> None:
    _, detail = classify_close(1011, "bad\nthing " * 200)
    assert "\n" not in detail
    assert len(detail) < 300


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (401, Outcome.AUTH),
        (403, Outcome.AUTH),
        (404, Outcome.NOT_FOUND),
        (429, Outcome.RATE_LIMITED),
        (400, Outcome.MISCONFIGURED),
        (500, Outcome.SERVER_ERROR),
        (503, Outcome.SERVER_ERROR),
        (302, Outcome.PROTOCOL),
    ],
)
def test_http_statuses(status: int, outcome: Outcome) -> None:
    assert classify_http_status(status) is outcome


def test_every_outcome_has_advice_and_only_transient_ones_retry() -> None:
    assert {o for o in Outcome if o.retryable} == {Outcome.RATE_LIMITED, Outcome.SERVER_ERROR, Outcome.NETWORK}
    for o in Outcome:
        assert o.advice
        assert o.advice[0].islower()
    assert len({o.advice for o in Outcome}) == len(Outcome)
    ended = SessionEnded(Outcome.QUOTA, "the service closed the conversation (1002)", 1002)
    assert ended.message.startswith("the service closed")
    assert "credits" in ended.message


def test_retry_after() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 2.5 ") == 2.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now_epoch_s=1445412480.0) == pytest.approx(10.0)


@pytest.mark.parametrize(
    "value",
    ["inf", "Infinity", "-inf", "nan", "NaN", "-5", "-0.5", "+5", "1e3", "1_000", "9" * 400, "", " ", "5 s",
     "٣", "0x10", "Wed, 99 Oct 2015 07:28:10 GMT"],
)
def test_an_unusable_retry_after_counts_as_absent(value: str) -> None:
    """Absent, not 0 or for ever: the caller then backs off as it would without the header."""
    assert parse_retry_after(value, now_epoch_s=1445412480.0) is None


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("Sun, 06 Nov 1994 08:49:47 GMT", 10.0),  # IMF-fixdate
        ("Sunday, 06-Nov-94 08:49:47 GMT", 10.0),  # the obsolete RFC 850 form
        ("Sun Nov  6 08:49:47 1994", 10.0),  # asctime: no zone, and HTTP dates are UTC
        ("Sun, 06 Nov 1994 08:49:27 GMT", 0.0),  # in the past: now
        ("Fri, 31 Dec 9999 23:59:59 GMT", 253402300799.0 - 784111777.0),  # far off, but a finite figure
    ],
)
def test_retry_after_dates(value: str, seconds: float) -> None:
    assert parse_retry_after(value, now_epoch_s=784111777.0) == pytest.approx(seconds)
    assert parse_retry_after(value) is None  # a date means nothing without the time now


@given(st.text(max_size=40), st.floats(min_value=0, max_value=4e9))
def test_retry_after_is_none_or_a_finite_delay(value: str, now_epoch_s: float) -> None:
    seconds = parse_retry_after(value, now_epoch_s)
    assert seconds is None or (math.isfinite(seconds) and seconds >= 0)


@given(st.integers(min_value=0, max_value=10**30))
def test_retry_after_reads_every_whole_number_of_seconds(seconds: int) -> None:
    assert parse_retry_after(str(seconds)) == float(seconds)


# -- outcomes from the error event's machine-readable fields ---------------------------------

# The ErrorType enum of the AsyncAPI document (elevenlabs/packages 2a9057e), with the close code
# each value is documented with (None: the document names none).
DOCUMENT_ERROR_TYPES: dict[str, int | None] = {
    "unknown": None, "invalid_message": 1008, "telephony_agent_error": 1008, "mcp_tool_error": 1008,
    "mcp_https_error": 1008, "value_error": 1008, "missing_fields": 1008, "override_error": 1008,
    "missing_dynamic_variable_transfer": 1008, "missing_dynamic_variable": 1008, "websocket_disconnect": None,
    "safety_violation": 1002, "llm_timeout": 1002, "transport_receive_timeout": 1002, "asyncio_timeout": 1002,
    "http_exception": 1002, "max_duration_exceeded": 1000, "llm_error": 1002, "custom_llm_error": 1002,
    "cascade_brain_error": 1002, "asr_transcription_error": 1002, "vad_error": 1002,
    "turn_probability_error": 1002, "tts_cascade_error": 1002, "redis_timeout_error": 1002,
    "unknown_websocket_crash": 1011,
}
# What each one means to the kiosk (docs/conversations.md's table says the same).
EXPECTED: dict[str, Outcome] = {
    "invalid_message": Outcome.REJECTED, "value_error": Outcome.REJECTED, "missing_fields": Outcome.REJECTED,
    "telephony_agent_error": Outcome.AGENT_SETUP, "mcp_tool_error": Outcome.AGENT_SETUP,
    "mcp_https_error": Outcome.AGENT_SETUP, "override_error": Outcome.MISCONFIGURED,
    "missing_dynamic_variable": Outcome.MISSING_VARIABLE, "missing_dynamic_variable_transfer": Outcome.MISSING_VARIABLE,
    "websocket_disconnect": Outcome.NETWORK, "transport_receive_timeout": Outcome.NETWORK,
    "safety_violation": Outcome.SAFETY, "max_duration_exceeded": Outcome.MAX_DURATION,
    **{
        t: Outcome.SERVER_ERROR
        for t in (
            "llm_timeout", "asyncio_timeout", "http_exception", "llm_error", "custom_llm_error", "cascade_brain_error",
            "asr_transcription_error", "vad_error", "turn_probability_error", "tts_cascade_error",
            "redis_timeout_error", "unknown_websocket_crash",
        )
    },
}


def test_every_documented_error_type_is_classified_on_purpose() -> None:
    assert set(ERROR_TYPES) == set(DOCUMENT_ERROR_TYPES)
    assert set(EXPECTED) == set(DOCUMENT_ERROR_TYPES) - {"unknown"}


@pytest.mark.parametrize("error_type", sorted(EXPECTED))
def test_error_type_decides_the_outcome(error_type: str) -> None:
    code = DOCUMENT_ERROR_TYPES[error_type] or 1011
    # A reason text that would mislead the old English matching ("timeout", "token", "quota" …) must not matter.
    for reason in ("", "receive timeout: token expired, check quota"):
        outcome, detail = classify_end(code, reason, ServerError(code, "Something went wrong.", error_type))
        assert outcome is EXPECTED[error_type], (reason, outcome)
        assert error_type in detail
        assert f"close {code}" in detail
        assert "Something went wrong." in detail


def test_error_type_decides_even_when_the_line_drops_before_the_close_frame() -> None:
    outcome, detail = classify_end(None, "", ServerError(1002, "", "llm_timeout"))
    assert outcome is Outcome.SERVER_ERROR
    assert "no close frame" in detail


def test_an_llm_timeout_is_not_reported_as_missing_audio() -> None:
    ended = SessionEnded(*classify_end(1002, "timeout", ServerError(1002, "LLM timed out", "llm_timeout")), 1002)
    assert ended.outcome is Outcome.SERVER_ERROR
    assert "language model" in ended.message
    assert "audio" not in ended.message


def test_a_safety_violation_is_not_retried_and_says_why() -> None:
    ended = SessionEnded(*classify_end(1002, "", ServerError(1002, "", "safety_violation")), 1002)
    assert ended.outcome is Outcome.SAFETY
    assert not ended.outcome.retryable
    assert "policy" in ended.message


def test_a_missing_dynamic_variable_gets_advice_about_dynamic_variables() -> None:
    said = "Missing required dynamic variables in first message: {'visitor_name'}"
    err = ServerError(1008, said, "missing_dynamic_variable")
    ended = SessionEnded(*classify_end(1008, "", err), 1008)
    assert ended.outcome is Outcome.MISSING_VARIABLE
    assert not ended.outcome.retryable
    assert "[agent.dynamic_variables]" in ended.message
    assert "visitor_name" in ended.message


def test_max_duration_is_reported_as_such_without_any_reason_text() -> None:
    ended = SessionEnded(*classify_end(1000, "", ServerError(1000, "", "max_duration_exceeded")), 1000)
    assert ended.outcome is Outcome.MAX_DURATION
    assert "maximum duration" in ended.message


@pytest.mark.parametrize("error_type", ["unknown", "", "a_type_added_next_year"])
def test_without_a_usable_error_type_the_code_and_then_the_text_decide(error_type: str) -> None:
    quota = ServerError(1002, "This request exceeds your quota limit.", error_type)
    assert classify_end(1002, "", quota)[0] is Outcome.QUOTA  # the text: quota has no error_type of its own
    assert classify_end(1011, "", ServerError(1011, "", error_type))[0] is Outcome.SERVER_ERROR
    assert classify_end(1008, "Invalid signature", ServerError(1008, "", error_type))[0] is Outcome.AUTH
    assert classify_end(None, "", ServerError(1002, "quota exceeded", error_type))[0] is Outcome.QUOTA
    assert classify_end(1000, "", None)[0] is Outcome.NORMAL


def test_no_advice_promises_an_automatic_retry() -> None:
    # Retries happen only while connecting, and the controller says so itself ("trying again in N s");
    # the same advice also ends conversations that broke off, which are never reopened on their own.
    for o in Outcome:
        assert "tries again" not in o.advice, o
        assert "try again with" not in o.advice, o
