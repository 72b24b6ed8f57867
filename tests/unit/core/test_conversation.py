"""The agent conversation without I/O: messages in (with their receive time) → events and messages to send."""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

import pytest

from device.core.audioformat import parse_format
from device.core.config import AgentConfig
from device.core.conversation import (
    MAX_MCP_ANSWERED,
    MAX_UNKNOWN_TYPES,
    SERVER_LOG_INTERVAL_S,
    AgentConversation,
    Emit,
    End,
    Output,
    RunTool,
    Send,
    StartSending,
)
from device.core.protocol import (
    AgentAudio,
    AgentResponse,
    AgentResponseCorrection,
    AgentResponsePart,
    Connected,
    Interruption,
    McpApproval,
    Outcome,
    Ping,
    RichContent,
    ServerError,
    TentativeAgentResponse,
    ToolCall,
    ToolCallFinished,
    ToolCallStarted,
    UserTranscript,
    VadScore,
)

T0 = 1000.0  # the fake clock: every input gets its time from the test
LOGGER = "test.conversation"


def conversation(approve: tuple[str, ...] = (), **agent: Any) -> AgentConversation:
    agent.setdefault("agent_id", "agent_1")
    agent.setdefault("connect_timeout_s", 5.0)
    return AgentConversation(
        AgentConfig(**agent),
        approves=lambda name: name in approve,
        hostname="kiosk-7",
        version="9.9",
        logger=logging.getLogger(LOGGER),
    )


def msg(kind: str, **fields: Any) -> str:
    return json.dumps({"type": kind, **fields})


def metadata(conversation_id: str = "conv_1", out: str = "pcm_16000", into: str = "pcm_16000") -> str:
    return msg(
        "conversation_initiation_metadata",
        conversation_initiation_metadata_event={
            "conversation_id": conversation_id,
            "agent_output_audio_format": out,
            "user_input_audio_format": into,
        },
    )


def audio(event_id: int, fill: int = 1) -> str:
    pcm = bytes([fill, 0]) * 160
    return msg("audio", audio_event={"audio_base_64": base64.b64encode(pcm).decode(), "event_id": event_id})


def ping(event_id: int, ping_ms: int | None = None) -> str:
    return msg("ping", ping_event={"event_id": event_id, "ping_ms": ping_ms})


def tool_call(call_id: str = "call_1", name: str = "room_of") -> str:
    return msg("client_tool_call", client_tool_call={"tool_name": name, "tool_call_id": call_id, "parameters": {}})


def mcp(call_id: str = "m1", name: str = "lookup", state: str = "awaiting_approval", **extra: Any) -> str:
    return msg("mcp_tool_call", mcp_tool_call={"tool_call_id": call_id, "tool_name": name, "state": state, **extra})


def agent_tool(name: str) -> str:
    return msg(
        "agent_tool_response", agent_tool_response={"tool_name": name, "tool_call_id": "t", "tool_type": "system"}
    )


def running(**kw: Any) -> AgentConversation:
    """Opened, the metadata received."""
    conv = conversation(**kw)
    conv.opened(T0)
    conv.receive(metadata(), T0 + 0.1)
    return conv


def sent(outputs: list[Output]) -> list[dict[str, Any]]:
    return [json.loads(o.text) for o in outputs if isinstance(o, Send)]


def events(outputs: list[Output]) -> list[object]:
    return [o.event for o in outputs if isinstance(o, Emit)]


# -- every server event type ---------------------------------------------------------------------

PUBLISHED = [
    (msg("agent_response", agent_response_event={"agent_response": "Hi."}), AgentResponse("Hi.")),
    (
        msg("agent_response_correction", agent_response_correction_event={
            "original_agent_response": "Hi there.", "corrected_agent_response": "Hi."}),
        AgentResponseCorrection("Hi.", "Hi there."),
    ),
    (
        msg("agent_chat_response_part", text_response_part={"text": "Hi", "type": "delta"}),
        AgentResponsePart("Hi", "delta"),
    ),
    (msg("user_transcript", user_transcription_event={"user_transcript": "Hello"}), UserTranscript("Hello")),
    (
        msg("tentative_user_transcript", tentative_user_transcription_event={"user_transcript": "Hel"}),
        UserTranscript("Hel", True),
    ),
    (
        msg("internal_tentative_agent_response",
            tentative_agent_response_internal_event={"tentative_agent_response": "Hm"}),
        TentativeAgentResponse("Hm"),
    ),
    (msg("vad_score", vad_score_event={"vad_score": 0.5}), VadScore(0.5)),
    (msg("interruption", interruption_event={"event_id": 3}), Interruption(3)),
    (msg("rich_content", rich_content={"rich_content_id": "r", "component": "card"}), RichContent("r", "card")),
    (msg("error", error_event={"code": 1011, "message": "boom", "error_type": "llm_error"}),
     ServerError(1011, "boom", "llm_error")),
]


@pytest.mark.parametrize(("message", "event"), PUBLISHED, ids=[type(e).__name__ for _, e in PUBLISHED])
def test_an_event_for_the_controller_is_published_and_nothing_is_sent(message: str, event: object) -> None:
    assert running().receive(message, T0 + 1) == [Emit(event)]  # type: ignore[arg-type]


def test_agent_audio_is_published_with_its_receive_time_in_the_announced_format() -> None:
    [out] = running().receive(audio(1), T0 + 2)
    assert isinstance(out, Emit) and isinstance(out.event, AgentAudio)
    assert out.event.received_at_s == T0 + 2 and out.event.fmt == parse_format("pcm_16000")


def test_a_message_may_arrive_as_bytes() -> None:
    assert sent(running().receive(ping(4).encode(), T0 + 1)) == [{"type": "pong", "event_id": 4}]


@pytest.mark.parametrize(
    ("message", "counter"),
    [
        (msg("agent_chat_response_part", text_response_part={"text": "a"}), "agent_text_parts"),
        (msg("rich_content", rich_content={}), "rich_content"),
        (msg("error", error_event={"message": "x"}), "server_errors"),
        (msg("interruption", interruption_event={"event_id": 1}), "interruptions"),
        (audio(1), "agent_audio_chunks"),
        (ping(1), "pings"),
        (tool_call(), "tool_calls"),
        (mcp(state="loading"), "mcp_tool_calls"),
        (agent_tool("transfer_to_number"), "agent_tool_responses"),
        (msg("brand_new_type"), "unknown_events"),
    ],
)
def test_each_kind_of_message_is_counted(message: str, counter: str) -> None:
    conv = running()
    conv.receive(message, T0 + 1)
    assert conv.stats()[counter] == 1


def test_every_message_is_counted_as_received_even_a_malformed_one() -> None:
    conv = running()
    conv.receive("{not json", T0 + 1)
    assert conv.stats()["messages_received"] == 2  # the metadata, then this


def test_the_stats_start_with_the_counters_status_reads() -> None:
    stats = conversation().stats()
    assert {k: stats[k] for k in ("messages_received", "pings", "tool_calls", "agent_audio_dropped")} == dict.fromkeys(
        ("messages_received", "pings", "tool_calls", "agent_audio_dropped"), 0
    )
    assert "ping_ms" not in stats


# -- the initiation and the metadata --------------------------------------------------------------


def test_opening_sends_the_initiation_with_the_kiosk_and_the_firmware() -> None:
    [init] = sent(conversation(location="Hall 3").opened(T0))
    assert init["type"] == "conversation_initiation_client_data"
    assert init["dynamic_variables"] == {"kiosk_id": "kiosk-7", "location": "Hall 3"}
    assert init["source_info"] == {"source": "voice-appliance", "version": "9.9"}


def test_the_metadata_publishes_connected_then_starts_the_users_audio() -> None:
    conv = conversation()
    conv.opened(T0)
    out = conv.receive(metadata("conv_9", out="pcm_22050", into="ulaw_8000"), T0 + 0.5)
    connected = Connected("conv_9", parse_format("pcm_22050"), parse_format("ulaw_8000"))
    assert out == [Emit(connected), StartSending(parse_format("ulaw_8000"))]
    assert conv.connected and conv.conversation_id == "conv_9"
    assert conv.output_format == parse_format("pcm_22050") and conv.input_format == parse_format("ulaw_8000")


def test_a_second_metadata_is_ignored_and_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    conv = running()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert conv.receive(metadata("conv_other", out="pcm_44100"), T0 + 1) == []
    assert conv.conversation_id == "conv_1" and conv.output_format == parse_format("pcm_16000")
    assert ["a second conversation_initiation_metadata was ignored" in r.getMessage() for r in caplog.records] == [True]


def test_an_unsupported_format_ends_the_conversation_with_close_1003() -> None:
    conv = conversation()
    conv.opened(T0)
    [end] = conv.receive(metadata(out="mp3_44100_128"), T0 + 1)
    assert isinstance(end, End) and end.close_reason == "unsupported audio format"
    assert end.ended.outcome is Outcome.PROTOCOL and end.ended.close_code == 1003
    assert "mp3_44100_128" in end.ended.detail and not conv.connected


def test_audio_before_the_metadata_is_malformed() -> None:
    conv = conversation()
    assert conv.receive(audio(1), T0) == []
    assert conv.stats()["malformed_audio_before_metadata"] == 1


def test_the_metadata_is_due_within_the_connect_timeout() -> None:
    conv = conversation(connect_timeout_s=5.0)
    conv.opened(T0)
    assert conv.tick(T0 + 5.0) == []
    [end] = conv.tick(T0 + 5.01)
    assert isinstance(end, End) and end.ended.outcome is Outcome.SERVER_ERROR and end.ended.close_code == 1000
    assert "did not start the conversation within 5 s" in end.ended.detail
    assert conv.tick(T0 + 6) == [], "said once"


def test_no_deadline_once_the_conversation_runs_or_before_the_socket_opened() -> None:
    assert running().tick(T0 + 60) == []
    assert conversation().tick(T0 + 60) == []


# -- pings ---------------------------------------------------------------------------------------


def test_a_ping_is_answered_first_with_its_id_then_published() -> None:
    out = running().receive(ping(7, 42), T0 + 1)
    assert sent(out) == [{"type": "pong", "event_id": 7}]
    assert isinstance(out[0], Send) and out[1] == Emit(Ping(42, 7))


def test_the_last_ping_estimate_is_kept() -> None:
    conv = running()
    conv.receive(ping(1, 30), T0 + 1)
    conv.receive(ping(2, None), T0 + 2)
    assert conv.ping_ms == 30 and conv.stats()["ping_ms"] == 30


# -- the interruption rule -----------------------------------------------------------------------


def test_audio_below_the_interruption_id_is_dropped_and_counted() -> None:
    conv = running()
    seq = [audio(5), msg("interruption", interruption_event={"event_id": 6}), audio(5), audio(6), audio(4), audio(7)]
    published = [e for m in seq for e in events(conv.receive(m, T0 + 1))]
    kept = [(type(e).__name__, e.event_id) for e in published if isinstance(e, (AgentAudio, Interruption))]
    assert kept == [("AgentAudio", 5), ("Interruption", 6), ("AgentAudio", 6), ("AgentAudio", 7)]
    assert conv.stats()["agent_audio_dropped"] == 2 and conv.stats()["agent_audio_chunks"] == 3


def test_a_lower_interruption_id_does_not_lower_the_floor() -> None:
    conv = running()
    conv.receive(msg("interruption", interruption_event={"event_id": 6}), T0 + 1)
    conv.receive(msg("interruption", interruption_event={"event_id": 2}), T0 + 2)
    assert conv.receive(audio(5), T0 + 3) == []


# -- the agent's own tools -----------------------------------------------------------------------


def test_the_end_call_tool_ends_the_conversation_cleanly() -> None:
    [end] = running().receive(agent_tool("end_call"), T0 + 1)
    assert isinstance(end, End) and end.ended.outcome is Outcome.AGENT_ENDED and end.ended.close_code == 1000
    assert "end_call" in end.ended.detail and end.close_reason == ""


def test_another_agent_tool_changes_nothing() -> None:
    assert running().receive(agent_tool("transfer_to_number"), T0 + 1) == []


# -- MCP approvals --------------------------------------------------------------------------------


@pytest.mark.parametrize(("approve", "approved"), [((), False), (("lookup",), True), (("other",), False)])
def test_an_mcp_call_awaiting_approval_is_answered_at_once_by_the_policy(
    approve: tuple[str, ...], approved: bool
) -> None:
    conv = running(approve=approve)
    out = conv.receive(mcp(), T0 + 1)
    assert sent(out) == [{"type": "mcp_tool_approval_result", "tool_call_id": "m1", "is_approved": approved}]
    assert events(out) == [McpApproval("lookup", "m1", approved)]
    assert conv.stats()["mcp_approved" if approved else "mcp_denied"] == 1


def test_a_repeated_mcp_call_is_answered_once() -> None:
    conv = running()
    conv.receive(mcp(), T0 + 1)
    assert conv.receive(mcp(), T0 + 2) == []


def test_the_answered_mcp_calls_are_remembered_in_a_bounded_table() -> None:
    conv = running()
    for i in range(MAX_MCP_ANSWERED + 1):
        conv.receive(mcp(f"m{i}"), T0 + 1)
    assert sent(conv.receive(mcp("m0"), T0 + 2)), "the oldest was forgotten: answered again"
    assert conv.receive(mcp(f"m{MAX_MCP_ANSWERED}"), T0 + 2) == []


@pytest.mark.parametrize("state", ["loading", "success", "failure"])
def test_mcp_states_without_approval_need_no_answer(state: str) -> None:
    assert running().receive(mcp(state=state), T0 + 1) == []


def test_an_mcp_failure_is_logged_with_the_services_error(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=LOGGER):
        running().receive(mcp(state="failure", error_message="server down"), T0 + 1)
    assert [r.getMessage() for r in caplog.records if "failed on the service" in r.getMessage()] == [
        "session: MCP tool 'lookup' failed on the service: server down"
    ]


# -- client tool calls ----------------------------------------------------------------------------


def test_a_client_tool_call_is_handed_out_to_run() -> None:
    [run] = running().receive(tool_call("c1", "room_of"), T0 + 1)
    assert run == RunTool(ToolCall("room_of", "c1", {}))
    assert run.started == ToolCallStarted("room_of", "c1")


def test_a_tool_result_is_sent_once_and_published() -> None:
    conv = running()
    conv.receive(tool_call("c1"), T0 + 1)
    out = conv.tool_finished("room_of", "c1", "Hall 3", False)
    assert sent(out) == [{"type": "client_tool_result", "tool_call_id": "c1", "result": "Hall 3", "is_error": False}]
    assert events(out) == [ToolCallFinished("room_of", "c1", False)]
    assert conv.open_tool_calls == 0


def test_a_second_result_of_one_call_is_not_sent() -> None:
    conv = running()
    conv.receive(tool_call("c1"), T0 + 1)
    conv.tool_finished("room_of", "c1", "Hall 3", False)
    assert conv.tool_finished("room_of", "c1", "again", False) == []


def test_a_result_nobody_asked_for_is_not_sent() -> None:
    assert running().tool_finished("room_of", "never_called", "x", False) == []


def test_an_unknown_tool_gets_its_one_error_result() -> None:
    conv = running()
    conv.receive(tool_call("c1", "open_pod_bay_doors"), T0 + 1)  # the registry answers an unknown tool at once
    results = sent(conv.tool_finished("open_pod_bay_doors", "c1", "unknown tool 'open_pod_bay_doors'", True))
    assert [(r["tool_call_id"], r["is_error"]) for r in results] == [("c1", True)]


def test_a_call_running_when_the_conversation_ends_still_gets_its_one_result() -> None:
    conv = running()
    conv.receive(tool_call("c1"), T0 + 1)
    [end] = conv.receive(agent_tool("end_call"), T0 + 2)
    assert isinstance(end, End) and conv.open_tool_calls == 1
    assert len(sent(conv.tool_finished("room_of", "c1", "cancelled", True))) == 1  # the cancelled call's answer
    assert conv.tool_finished("room_of", "c1", "cancelled", True) == []


def test_two_calls_with_one_id_get_two_results() -> None:
    conv = running()
    conv.receive(tool_call("c1"), T0 + 1)
    conv.receive(tool_call("c1"), T0 + 2)
    assert [len(sent(conv.tool_finished("room_of", "c1", "r", False))) for _ in range(3)] == [1, 1, 0]


# -- what the service gets counted and logged -----------------------------------------------------


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("{not json", "bad_json"),
        ("[1, 2]", "bad_json"),
        ('{"no": "type"}', "missing_type"),
        (msg("ping"), "missing_field"),
        (msg("audio", audio_event={"audio_base_64": "@@@", "event_id": 1}), "bad_base64"),
        (msg("audio", audio_event={"audio_base_64": base64.b64encode(b"abc").decode(), "event_id": 1}),
         "odd_length_audio"),
        ("[" * 100_000 + "]" * 100_000, "too_deep"),
    ],
)
def test_a_malformed_message_is_counted_by_kind_and_ignored(message: str, kind: str) -> None:
    conv = running()
    assert conv.receive(message, T0 + 1) == []
    stats = conv.stats()
    assert stats[f"malformed_{kind}"] == 1 and stats["malformed_messages"] == 1


def test_malformed_messages_are_logged_once_per_kind_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    conv = running()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for _ in range(10):
            conv.receive("{not json", T0 + 1)
            conv.receive(msg("ping"), T0 + 1)
        conv.receive("{not json", T0 + 1 + SERVER_LOG_INTERVAL_S)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert lines[-1].endswith("(9 more like it since the last report)")


def test_unknown_types_are_counted_in_a_bounded_table_and_each_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    conv = running()
    extra = 100
    with caplog.at_level(logging.INFO, logger=LOGGER):
        for i in range(MAX_UNKNOWN_TYPES + extra):
            conv.receive(msg(f"new_type_{i}"), T0 + 1)
        conv.receive(msg("new_type_0"), T0 + 2)  # a known unknown: counted by name
    stats = conv.stats()
    assert len([k for k in stats if k.startswith("unknown:")]) == MAX_UNKNOWN_TYPES + 1
    assert stats["unknown:other"] == extra and stats["unknown:new_type_0"] == 2
    assert stats["unknown_events"] == MAX_UNKNOWN_TYPES + extra + 1
    named = [r for r in caplog.records if "unknown event type '" in r.getMessage()]
    assert len(named) == MAX_UNKNOWN_TYPES
    assert len([r for r in caplog.records if "unknown:other" in r.getMessage()]) == 1  # the rest held back


def test_what_is_held_back_is_reported_when_the_conversation_ends(caplog: pytest.LogCaptureFixture) -> None:
    conv = running()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        for _ in range(5):
            conv.receive("{not json", T0 + 1)
        conv.flush_log()
    assert caplog.records[-1].getMessage() == (
        "session: 4 log lines were held back by the rate limit (malformed:bad_json ×4)"
    )


def test_rich_content_is_logged_the_first_time_only(caplog: pytest.LogCaptureFixture) -> None:
    conv = running()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        for _ in range(3):
            conv.receive(msg("rich_content", rich_content={"component": "item_card"}), T0 + 1)
    assert ["rich content (item_card)" in r.getMessage() for r in caplog.records] == [True]


# -- how it ended ---------------------------------------------------------------------------------


def test_a_close_after_an_error_event_is_classified_by_the_error_type() -> None:
    conv = running()
    conv.receive(msg("error", error_event={"code": 1008, "message": "no", "error_type": "override_error"}), T0 + 1)
    ended = conv.service_closed(1008, "Policy violation")
    assert ended.outcome is Outcome.MISCONFIGURED and ended.close_code == 1008


def test_a_close_frame_without_a_code_is_a_normal_end() -> None:
    ended = running().service_closed(None, "")
    assert ended.outcome is Outcome.NORMAL and "no close code" in ended.detail and ended.close_code is None


def test_a_close_by_code_and_reason() -> None:
    assert running().service_closed(1011, "Internal error").outcome is Outcome.SERVER_ERROR


def test_a_lost_connection_is_a_network_failure() -> None:
    ended = running().connection_lost("reset")
    assert ended.outcome is Outcome.NETWORK
    assert ended.detail == "the connection to the service was reset without a close frame"


def test_a_lost_connection_after_an_error_event_says_what_the_service_said() -> None:
    conv = running()
    error = {"code": 1002, "message": "quiet", "error_type": "transport_receive_timeout"}
    conv.receive(msg("error", error_event=error), T0)
    ended = conv.connection_lost("lost")
    assert ended.outcome is Outcome.NETWORK and "transport_receive_timeout" in ended.detail and ended.close_code is None
