"""The emulator's messages against the official AsyncAPI document (tests/contract/).

Every scenario in examples/scenarios/ and every fault kind that is meant to
produce valid messages is driven through a real Conversation (fake clock,
real speech, a client that answers pings, tools and MCP approvals); the
autouse ``contract_check`` validates every message both ways. The validator
itself is shown to fail on broken messages.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from device.drivers.agent_http import REGION_HOSTS
from device.emulator import pcm as pcmlib
from device.emulator.conversation import Close, Conversation, Send
from device.emulator.recording import ConversationRecord
from device.emulator.scenario import (
    CLIENT_EVENTS,
    ERROR_TYPE_CODES,
    FAULT_PARAMS,
    MCP_STATES,
    REPLY_FAULTS,
    Scenario,
    default_scenario,
    load_scenario,
    parse_fault_spec,
)
from device.emulator.speech import Synthesizer
from tests.contract import checking
from tests.contract.checking import ContractLog
from tests.contract.validator import DOCUMENT, FROM_AGENT, TO_AGENT, Contract, contract, translate
from tests.support import cases

contract_check = checking.contract_check  # autouse: every message of every test here is validated
SCENARIOS = sorted((Path(__file__).parents[3] / "examples" / "scenarios").glob("*.toml"))
# Faults whose messages break the contract on purpose, or that send nothing over the socket.
BREAKING = {"malformed_json", "bad_base64", "drop"}
STEP_S = 0.25  # one 4000-frame block of 16 kHz audio


class Clock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def drive(scenario: Scenario, index: int, speech_16k: bytes, synth: Synthesizer, *, turns: int = 3) -> list[Any]:
    """One conversation as a well-behaved client holds it: speaks over replies, answers everything."""
    clock = Clock()
    agent = scenario.agent
    record = ConversationRecord(
        f"conv_{index:016x}", agent.agent_id, index, clock(), agent.input_format, agent.output_format
    )
    conv = Conversation(scenario, record, render=synth.render, clock=clock, seed=index)
    actions: list[Any] = list(conv.open())

    def send(msg: dict[str, Any]) -> None:
        actions.extend(conv.receive(json.dumps(msg)))

    def answer(since: int) -> None:
        for a in actions[since:]:
            if not isinstance(a, Send):
                continue
            m = a.message
            if m["type"] == "ping":
                send({"type": "pong", "event_id": m["ping_event"]["event_id"]})
            elif m["type"] == "client_tool_call":
                call = m["client_tool_call"]
                send(
                    {
                        "type": "client_tool_result",
                        "tool_call_id": call["tool_call_id"],
                        "result": "ok",
                        "is_error": False,
                    }
                )
            elif m["type"] == "mcp_tool_call" and m["mcp_tool_call"]["state"] == "awaiting_approval":
                call_id = m["mcp_tool_call"]["tool_call_id"]
                send({"type": "mcp_tool_approval_result", "tool_call_id": call_id, "is_approved": True})

    fmt = agent.input
    speech = pcmlib.encode(speech_16k, 16000, fmt)
    silence = pcmlib.encode(bytes(8000), 16000, fmt)
    block = len(silence)
    send({"type": "conversation_initiation_client_data", "dynamic_variables": {"kiosk": "hall"}})
    script = [silence] * 4
    for _ in range(turns):
        script += [speech[i : i + block] for i in range(0, len(speech), block)] + [silence] * 12
    for chunk in script:
        if conv.closed:
            break
        seen = len(actions)
        send({"user_audio_chunk": base64.b64encode(chunk).decode()})
        clock.now_s += STEP_S
        actions.extend(conv.tick())
        answer(seen)
    return actions


@pytest.fixture(scope="module")
def synth() -> Synthesizer:
    return Synthesizer("tone")


def opt_in_everything(scenario: Scenario) -> Scenario:
    """Every optional event type the emulator can send, and alignment."""
    return scenario.with_changes(agent={"client_events": CLIENT_EVENTS, "alignment": True})


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
@pytest.mark.parametrize("index", cases(5))
def test_every_example_scenario_speaks_the_contract(
    path: Path, index: int, user_speech_16k: bytes, synth: Synthesizer, contract_check: ContractLog
) -> None:
    scenario = load_scenario(path)
    sent = 0
    for sc in (scenario, opt_in_everything(scenario)):
        actions = drive(sc, index, user_speech_16k, synth)
        sent += sum(isinstance(a, Send) and a.conforms for a in actions)
        closes = [a for a in actions if isinstance(a, Close)]
        assert all(c.code in (1000, 1002, 1008, 1011) for c in closes), closes
    # Every message was seen by the validator (the autouse check fails the test on a violation).
    assert sum(contract_check.counts[FROM_AGENT].values()) == sent and contract_check.counts[TO_AGENT]


FAULT_SPECS = [
    *(f"error_event:reply=1,after_chunks=1,error_type={t}" for t in ERROR_TYPE_CODES),
    "error_event:reply=0,after_chunks=1,error_type=llm_error,then_close=false",
    "agent_tool_response:reply=1,after_chunks=1",
    "agent_tool_response:reply=0,after_chunks=2,tool_name=lookup,tool_type=webhook,is_error=true",
    *(f"mcp_tool_call:reply=0,after_chunks=1,state={s}" for s in MCP_STATES),
    "rich_content:reply=0,after_chunks=1",
    "unknown_event:reply=0,after_chunks=1",  # context_usage: a real event of the document
    "odd_length_audio:reply=0,after_chunks=1",
    "oversized_frame:reply=0,after_chunks=1,size_bytes=4096",
    "close:reply=1,after_chunks=1",
    "quota",
    "slow_metadata:delay_s=1",
    "missing_metadata",
]


@pytest.mark.parametrize("spec", FAULT_SPECS)
def test_every_fault_meant_to_be_valid_speaks_the_contract(
    spec: str, user_speech_16k: bytes, synth: Synthesizer, contract_check: ContractLog
) -> None:
    scenario = opt_in_everything(default_scenario()).with_changes(faults=(parse_fault_spec(spec),))
    actions = drive(scenario, 0, user_speech_16k, synth, turns=2)
    sent = sum(isinstance(a, Send) for a in actions)
    assert sum(contract_check.counts[FROM_AGENT].values()) == sent and contract_check.counts[TO_AGENT]


def test_the_fault_list_covers_every_kind() -> None:
    listed = {spec.partition(":")[0] for spec in FAULT_SPECS}
    http_only = {"refuse_upgrade", "signed_url_error"}  # HTTP answers, no message
    assert listed | BREAKING | http_only == set(FAULT_PARAMS)
    assert set(REPLY_FAULTS) <= set(FAULT_PARAMS)


@pytest.mark.parametrize("spec", ["bad_base64:reply=0,after_chunks=1", "unknown_event:reply=0,event_type=made_up"])
def test_faults_that_break_the_contract_are_caught_when_checked(
    spec: str, user_speech_16k: bytes, synth: Synthesizer
) -> None:
    scenario = default_scenario().with_changes(faults=(parse_fault_spec(spec),))
    actions = drive(scenario, 0, user_speech_16k, synth, turns=1)
    broken = [a for a in actions if isinstance(a, Send) and not a.conforms]
    assert broken and all(contract().problems(FROM_AGENT, a.message) for a in broken)


# -- the validator can fail --------------------------------------------------------


@pytest.mark.parametrize(
    ("direction", "message", "expected"),
    [
        (FROM_AGENT, {"type": "user_transcript", "user_transcription_event": {"user_transcript": "hi"}}, "event_id"),
        (FROM_AGENT, {"type": "agent_response", "agent_response_event": {"agent_response": "hi"}}, "event_id"),
        (FROM_AGENT, {"type": "audio", "audio_event": {"audio_base_64": "@@", "event_id": 1}}, "base64"),
        (FROM_AGENT, {"type": "audio", "audio_event": {"audio_base_64": "AAAA", "event_id": "1"}}, "integer"),
        (FROM_AGENT, {"type": "error", "error_event": {"code": 1001}}, "1001"),
        (FROM_AGENT, {"type": "error", "error_event": {"code": 1002, "error_type": "quota"}}, "error_type"),
        (FROM_AGENT, {"type": "ping", "ping_event": {"event_id": 1, "ping_ms": 1.5}}, "ping_ms"),
        (FROM_AGENT, {"type": "vad_score", "vad_score_event": {"vad_score": 2}}, "maximum"),
        (FROM_AGENT, {"type": "made_up", "made_up_event": {}}, "not a server"),
        (FROM_AGENT, {"type": "mcp_tool_call", "mcp_tool_call": {"state": "awaiting_approval"}}, "mcp_tool_call"),
        (TO_AGENT, {"type": "pong"}, "event_id"),
        (TO_AGENT, {"type": "pong", "event_id": "3"}, "integer"),
        (
            TO_AGENT,
            {"type": "client_tool_result", "tool_call_id": "t", "result": {"a": 1}, "is_error": False},
            "string",
        ),
        (TO_AGENT, {"type": "client_tool_result", "tool_call_id": "t", "result": "ok"}, "is_error"),
        (TO_AGENT, {"type": "feedback", "event_id": 1, "score": "meh"}, "score"),
        (TO_AGENT, {"type": "contextual_update"}, "text"),
        (TO_AGENT, {"type": "conversation_initiation_client_data", "user_id": 7}, "user_id"),
        (TO_AGENT, {"type": "conversation_initiation_client_data", "source_info": {"source": 1}}, "source"),
        (
            TO_AGENT,
            {
                "type": "conversation_initiation_client_data",
                "conversation_config_override": {"agent": {"language": "xx"}},
            },
            "language",
        ),
        (TO_AGENT, {"type": "user_audio"}, "not a client"),
        (TO_AGENT, {"user_audio_chunk": "not base64!"}, "base64"),
        (TO_AGENT, ["not", "an", "object"], "object"),
    ],
)
def test_the_validator_fails_on_broken_messages(direction: str, message: Any, expected: str) -> None:
    problems = contract().problems(direction, message)
    assert problems and any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    ("direction", "message"),
    [
        (TO_AGENT, {"type": "feedback", "event_id": 1, "score": None}),
        (TO_AGENT, {"type": "user_message", "text": None}),
        (TO_AGENT, {"type": "multimodal_message", "text": None, "file": {"type": "file_input", "file_id": "f"}}),
        (TO_AGENT, {"type": "mcp_tool_approval_result", "tool_call_id": "t", "is_approved": False}),
        (
            TO_AGENT,
            {
                "type": "conversation_initiation_client_data",
                "conversation_config_override": {
                    "agent": {"prompt": {"prompt": None}, "first_message": None, "language": "no"},
                    "tts": {"voice_id": None, "speed": 1.2},
                    "conversation": {"text_only": True, "client_events": ["audio", "vad_score"]},
                },
                "dynamic_variables": {"s": "x", "i": 1, "f": 1.5, "b": True},
                "user_id": None,
                "source_info": {"source": "voice-appliance", "version": None},
                "tool_mock_config": {"mocking_strategy": "none"},
            },
        ),
        (FROM_AGENT, {"type": "ping", "ping_event": {"event_id": 1, "ping_ms": None}}),
        (FROM_AGENT, {"type": "error", "error_event": {"code": 1000, "error_type": None}}),
    ],
)
def test_the_validator_accepts_what_the_document_allows(direction: str, message: Any) -> None:
    assert contract().problems(direction, message) == []


def test_nullable_becomes_a_type_union_and_refs_point_into_defs() -> None:
    schemas: dict[str, Any] = {"X": {"type": "object"}}
    assert translate({"type": "string", "nullable": True}, schemas) == {"type": ["string", "null"]}
    assert translate({"type": "string", "enum": ["a"], "nullable": True}, schemas) == {
        "type": ["string", "null"],
        "enum": ["a", None],
    }
    assert translate({"$ref": "#/components/schemas/X", "nullable": True}, schemas) == {
        "anyOf": [{"$ref": "#/$defs/X"}, {"type": "null"}]
    }


def test_the_document_is_the_copy_the_readme_names() -> None:
    """Edits to the vendored file (or an update without its README) are caught."""
    c = Contract()
    assert c.version == "2.6.0"
    readme = (DOCUMENT.parent / "README.md").read_text(encoding="utf-8")
    recorded = re.search(r"sha256 of the copy: ([0-9a-f]{64})", readme)
    assert recorded is not None and hashlib.sha256(DOCUMENT.read_bytes()).hexdigest() == recorded.group(1)
    assert (DOCUMENT.parent / "LICENSE").read_text(encoding="utf-8").startswith("MIT License")


# -- residency: the device's hosts against the document's servers --------------------------------

# The document's servers and the device region that must reach each.
SERVER_REGIONS = {"production": "global", "eu-residency": "eu", "in-residency": "in"}
# Not conversation hosts of the device: LiveKit (WebRTC, unused) and the document's local dev server.
NOT_DEVICE_SERVERS = {"webrtc", "development"}
# Device regions the document does not list (from the ElevenLabs docs, see `agent.region` in docs/configuration.md).
UNDOCUMENTED_REGIONS = {"us", "sg"}


def test_the_device_hosts_match_the_documents_servers() -> None:
    servers = contract().servers
    assert set(servers) == set(SERVER_REGIONS) | NOT_DEVICE_SERVERS, "the document's servers changed: review"
    for server, region in SERVER_REGIONS.items():
        url = urlsplit(servers[server])
        assert url.scheme == "wss" and REGION_HOSTS[region] == url.hostname, (server, region)
    assert set(REGION_HOSTS) - set(SERVER_REGIONS.values()) == UNDOCUMENTED_REGIONS


def test_huge_alignment_is_still_checked_item_by_item() -> None:
    log = ContractLog()
    n = 100_000
    good = {"chars": ["a"] * n, "char_start_times_ms": list(range(n)), "char_durations_ms": [1] * n}
    log(FROM_AGENT, {"type": "audio", "audio_event": {"audio_base_64": "AAAA", "event_id": 1, "alignment": good}}, True)
    assert log.problems == [] and log.counts[FROM_AGENT] == {"audio": 1}
    bad = {**good, "char_durations_ms": [1] * (n - 1) + ["1"]}
    log(FROM_AGENT, {"type": "audio", "audio_event": {"audio_base_64": "AAAA", "event_id": 1, "alignment": bad}}, True)
    assert len(log.problems) == 1 and "char_durations_ms" in log.problems[0]
