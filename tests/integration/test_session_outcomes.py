"""How a conversation ended, decided from the service's error event, through a real local WebSocket.

The emulator (its ``error_event`` fault) and a hand-written server play the
service: they start the conversation, send the AsyncAPI ``error`` event
(``code`` + ``error_type``) and close with that code, as the service does. The
session must classify from those fields, not from the English close reason.
(The controller's part, what the kiosk shows and whether it retries, is in
test_controller_outcomes.py.)
"""

from __future__ import annotations

import json

import pytest
from websockets.sync.server import ServerConnection

from device.core.protocol import ERROR_TYPES, Connected, Outcome, ServerError, SessionEnded
from device.emulator.scenario import ERROR_TYPE_CODES, Fault
from tests.integration.sessionrig import (
    WAIT_S,
    agent_for,
    drain,
    fast_scenario,
    make_session,
    metadata,
    public_agent,
    running,
    scripted,
    started,
)

pytestmark = pytest.mark.realtime

# A reason text that the old English matching misread ("timeout" → "the device sent no audio").
MISLEADING_REASON = "timeout"
DOCUMENTED_CODE = {"max_duration_exceeded": 1000, "unknown_websocket_crash": 1011}


def code_for(error_type: str) -> int:
    if error_type in DOCUMENTED_CODE:
        return DOCUMENTED_CODE[error_type]
    outcome = ERROR_TYPES[error_type]
    return 1008 if outcome is not None and outcome[0] in (
        Outcome.REJECTED, Outcome.AGENT_SETUP, Outcome.MISCONFIGURED, Outcome.MISSING_VARIABLE
    ) else 1002


def error_event(code: int, error_type: str, message: str) -> str:
    return json.dumps({"type": "error", "error_event": {"code": code, "message": message, "error_type": error_type}})


def end_with_error(code: int, error_type: str, message: str, reason: str = MISLEADING_REASON) -> SessionEnded:
    def script(ws: ServerConnection) -> None:
        ws.recv(timeout=WAIT_S)  # the initiation
        ws.send(metadata())
        ws.send(error_event(code, error_type, message))
        ws.close(code, reason)
        drain(ws)

    server, port, thread, _ = scripted(script)
    try:
        session, events = make_session(None, agent=public_agent(port), key=None)
        with started(session):
            events.wait_for(Connected)
            ended = events.ended()
            error = events.wait_for(ServerError)
    finally:
        server.shutdown()
        thread.join(WAIT_S)
    assert error.error_type == error_type and error.code == code
    assert ended.close_code == code
    return ended


@pytest.mark.parametrize("error_type", sorted(ERROR_TYPE_CODES))
def test_the_emulators_error_event_of_every_type_ends_the_session_as_the_table_says(error_type: str) -> None:
    fault = Fault(kind="error_event", error_type=error_type, message="The emulator explains.", reply=0, after_chunks=1)
    with running(fast_scenario(faults=(fault,))) as emu:
        session, events = make_session(emu, agent=agent_for(emu))
        with started(session):
            ended = events.ended()
        record = emu.wait_for_conversation_end(timeout_s=WAIT_S)
    rule = ERROR_TYPES[error_type]
    expected = rule[0] if rule is not None else Outcome.SERVER_ERROR  # unknown: the code (1011) decides
    assert ended.outcome is expected, ended
    assert ended.close_code == ERROR_TYPE_CODES[error_type] == record.close_code
    if rule is not None:
        assert error_type in ended.detail and "The emulator explains." in ended.detail


@pytest.mark.parametrize("error_type", sorted(t for t, rule in ERROR_TYPES.items() if rule is not None))
def test_every_error_type_ends_the_session_as_its_table_says(error_type: str) -> None:
    code = code_for(error_type)
    ended = end_with_error(code, error_type, "The service explains.")
    rule = ERROR_TYPES[error_type]
    assert rule is not None
    assert ended.outcome is rule[0], ended
    assert error_type in ended.detail and "The service explains." in ended.detail


def test_an_llm_timeout_is_a_service_failure_not_missing_audio() -> None:
    ended = end_with_error(1002, "llm_timeout", "LLM response timed out")
    assert ended.outcome is Outcome.SERVER_ERROR
    assert "language model" in ended.message and "audio" not in ended.message


def test_a_safety_violation_is_not_retried() -> None:
    ended = end_with_error(1002, "safety_violation", "Conversation terminated")
    assert ended.outcome is Outcome.SAFETY and not ended.outcome.retryable
    assert "policy" in ended.message


def test_a_missing_dynamic_variable_says_where_to_add_it() -> None:
    ended = end_with_error(1008, "missing_dynamic_variable", "Missing required dynamic variables: {'visitor'}", "")
    assert ended.outcome is Outcome.MISSING_VARIABLE
    assert "[agent.dynamic_variables]" in ended.message and "visitor" in ended.message


def test_max_duration_with_a_bare_close_is_reported_as_max_duration() -> None:
    ended = end_with_error(1000, "max_duration_exceeded", "", "")
    assert ended.outcome is Outcome.MAX_DURATION and "maximum duration" in ended.message


def test_an_untyped_quota_error_still_falls_back_to_the_text() -> None:
    ended = end_with_error(1002, "unknown", "This request exceeds your quota limit.", "")
    assert ended.outcome is Outcome.QUOTA and "credits" in ended.message
