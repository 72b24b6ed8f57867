"""The pure protocol module: decoding, encoding, the interruption rule, outcomes."""

from __future__ import annotations

import base64
import contextlib
import json
import types

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from device.audioformat import PCM_16000, AudioFormat
from device.protocol import (
    MAX_MESSAGE_BYTES,
    AgentAudio,
    AgentResponse,
    AgentResponseCorrection,
    AgentResponsePart,
    Connected,
    Interruption,
    InterruptionFilter,
    MalformedMessage,
    Outcome,
    Ping,
    ServerError,
    SessionEnded,
    TentativeAgentResponse,
    ToolCall,
    UnknownEvent,
    UnsupportedFormat,
    UserTranscript,
    VadScore,
    classify_close,
    classify_http_status,
    decode_server_message,
    dynamic_variables_for,
    encode_audio_chunk,
    encode_contextual_update,
    encode_feedback,
    encode_pong,
    encode_tool_result,
    encode_user_activity,
    encode_user_message,
    initiation_message,
    parse_retry_after,
)

# The machine is shared: no deadlines, no speed health checks.
RELAXED = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=150)

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
    assert isinstance(ev, AgentAudio) and len(ev.audio) == len(pcm)


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
        ({"type": "mcp_tool_call", "mcp_tool_call": {}}, UnknownEvent("mcp_tool_call")),
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
    assert f.admit(1) and f.admit(5)
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
    assert "\n" not in detail and len(detail) < 300


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
        assert o.advice and o.advice[0].islower()
    assert len({o.advice for o in Outcome}) == len(Outcome)
    ended = SessionEnded(Outcome.QUOTA, "the service closed the conversation (1002)", 1002)
    assert ended.message.startswith("the service closed") and "credits" in ended.message


def test_retry_after() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now_epoch_s=1445412480.0) == pytest.approx(10.0)
