"""The client's messages read and checked, one function per message type."""

from __future__ import annotations

from device.emulator import inbound
from device.emulator.inbound import INIT_TYPE, Problem, ToolResult


def rules(problems: list[Problem]) -> list[str]:
    return [p.rule for p in problems]


def test_a_plain_initiation_breaks_no_rule() -> None:
    msg = {"type": INIT_TYPE, "dynamic_variables": {"kiosk": "hall", "n": 1}, "user_id": "visitor"}
    assert inbound.initiation_problems(msg, unknown_fields=True) == []


def test_unknown_initiation_fields_break_a_rule_only_when_strict() -> None:
    msg = {"type": INIT_TYPE, "extra": 1}
    assert rules(inbound.initiation_problems(msg, unknown_fields=True)) == ["unknown_field"]
    assert inbound.initiation_problems(msg, unknown_fields=False) == []


def test_initiation_fields_of_the_wrong_type_are_named() -> None:
    msg = {"type": INIT_TYPE, "source_info": [], "dynamic_variables": {"a": [1]}, "user_id": 7}
    details = [p.detail for p in inbound.initiation_problems(msg, unknown_fields=False)]
    assert "source_info" in details[0] and "'a'" in details[1] and "user_id" in details[2]


def test_overrides_are_named_as_in_allowed_overrides() -> None:
    msg = {"conversation_config_override": {"agent": {"prompt": {"prompt": "Be brief"}, "first_message": "Hi"}}}
    assert inbound.overrides(msg) == {"prompt": "Be brief", "first_message": "Hi"}


def test_an_unknown_override_path_is_dotted() -> None:
    assert inbound.overrides({"conversation_config_override": {"tts": {"speed": 1.2}}}) == {"tts.speed": 1.2}


def test_a_pong_names_its_ping() -> None:
    assert inbound.pong_event_id({"type": "pong", "event_id": 4}) == (4, [])


def test_a_pong_without_an_integer_id_names_none() -> None:
    assert inbound.pong_event_id({"type": "pong", "event_id": True}) == (
        None,
        [Problem("pong_bad_event_id", "pong event_id must be the ping's integer, got True")],
    )


def test_a_tool_result_is_read() -> None:
    msg = {"type": "client_tool_result", "tool_call_id": "t1", "result": "ok", "is_error": False}
    assert inbound.tool_result(msg) == (ToolResult("t1", "ok", False), [])


def test_a_tool_result_that_is_not_text_is_its_json() -> None:
    got, problems = inbound.tool_result({"tool_call_id": "t1", "result": {"a": 1}, "is_error": 0})
    assert got == ToolResult("t1", '{"a": 1}', False) and rules(problems) == ["tool_result_bad_field"] * 2


def test_a_tool_result_without_a_call_id_is_unusable() -> None:
    got, problems = inbound.tool_result({"result": "ok"})
    assert got is None and rules(problems) == ["tool_result_bad_field"]


def test_a_contextual_update_needs_text() -> None:
    assert rules(inbound.contextual_update_problems({"context_id": 3})) == ["bad_field", "bad_field"]


def test_a_user_message_types_its_text() -> None:
    assert inbound.user_message_text({"text": "Hello"}) == ("Hello", [])


def test_a_user_message_whose_text_is_not_text_types_nothing() -> None:
    text, problems = inbound.user_message_text({"text": 5})
    assert text is None and rules(problems) == ["bad_field"]


def test_a_multimodal_message_types_its_user_message() -> None:
    msg = {"text": {"type": "user_message", "text": "Hi"}, "file": {"type": "file_input", "file_id": "f"}}
    assert inbound.multimodal_message_text(msg) == ("Hi", [])


def test_a_multimodal_message_with_a_bad_file_still_types_its_text() -> None:
    text, problems = inbound.multimodal_message_text({"text": {"type": "user_message", "text": "Hi"}, "file": 1})
    assert text == "Hi" and rules(problems) == ["bad_field"]


def test_feedback_must_name_a_reply_and_a_score() -> None:
    assert inbound.feedback_problems({"event_id": 2, "score": "like"}, {2}) == []
    assert rules(inbound.feedback_problems({"event_id": 3, "score": "meh"}, {2})) == ["bad_field", "bad_field"]


def test_an_mcp_approval_is_read() -> None:
    assert inbound.mcp_approval({"tool_call_id": "m1", "is_approved": False}) == (("m1", False), [])


def test_an_mcp_approval_without_a_boolean_is_unusable() -> None:
    got, problems = inbound.mcp_approval({"tool_call_id": "m1", "is_approved": "yes"})
    assert got is None and rules(problems) == ["bad_field"]


def test_audio_at_real_time_breaks_no_rule() -> None:
    rate = inbound.AudioRate("pcm_16000", 1.5, 1.0)
    assert [rate.feed(t * 0.25, 0.25) for t in range(40)] == [[]] * 40


def test_audio_much_faster_than_real_time_breaks_the_rule_once() -> None:
    rate = inbound.AudioRate("pcm_16000", 1.5, 1.0)
    found = [p.rule for t in range(40) for p in rate.feed(t * 0.01, 0.25)]
    assert found == ["audio_rate"]


def test_without_a_factor_any_pace_is_allowed() -> None:
    rate = inbound.AudioRate("pcm_16000", 0, 1.0)
    assert [rate.feed(0.0, 10.0) for _ in range(3)] == [[]] * 3
