"""The official JS client (@elevenlabs/client, in Node) as a second, independent peer of the emulator.

provisioning/dev.sh installs the pinned client into .cache/jsclient; the
scripted conversation is tests/contract/jsclient/peer.mjs. What both sides
send is validated against the AsyncAPI document by the autouse
``contract_check``, so this also checks the official client against the
official document.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from device.drivers.agent_http import REGION_HOSTS
from device.emulator import Emulator, Scenario, default_scenario
from device.emulator.scenario import ToolCall, Turn
from device.emulator.speech import Synthesizer
from tests.contract.checking import ContractLog
from tests.contract.validator import FROM_AGENT, TO_AGENT

ROOT = Path(__file__).resolve().parents[2]
JS_DIR = ROOT / ".cache" / "jsclient"
PEER = ROOT / "tests" / "contract" / "jsclient" / "peer.mjs"
WAIT_S = 60.0

pytestmark = [
    pytest.mark.realtime,
    pytest.mark.skipif(
        shutil.which("node") is None or not (JS_DIR / "node_modules" / "@elevenlabs" / "client").is_dir(),
        reason="the official JS client is not installed: run provisioning/dev.sh setup (needs Node.js >= 18 and npm)",
    ),
]


def run_peer(config: dict[str, Any]) -> tuple[int, list[dict[str, Any]], str]:
    proc = subprocess.run(
        ["node", str(PEER), json.dumps(config)],
        env={**os.environ, "JSCLIENT_DIR": str(JS_DIR)},
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
    )
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc.returncode, events, proc.stderr


def shown(events: list[dict[str, Any]], stderr: str) -> str:
    """What the client saw, pings left out, for a failure message."""
    return "\n".join(json.dumps(e) for e in events if e["event"] != "ping") + "\nstderr: " + stderr[-2000:]


def of(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == kind]


def scenario(**agent: Any) -> Scenario:
    return default_scenario().with_changes(
        agent={"first_message": "Hello from the emulator.", **agent},
        # The official client listens for messages only once it has handled the metadata and loses
        # what arrives with it (@elevenlabs/client 1.25.0, WebSocketConnection.create): the service
        # takes its synthesis time before the first message; so does this agent.
        timing={
            "speed": 20.0,
            "response_delay_ms": 100,
            "first_message_delay_ms": 300,
            "turn_timeout_s": 0.0,
            "ping_interval_s": 0.3,
        },
        turns=(
            Turn(transcript="What can you do?", reply="I can answer questions."),
            Turn(transcript="How is the kiosk?", reply="The kiosk says {result}.", tool=ToolCall(name="device_status")),
        ),
    )


def test_a_text_only_conversation(contract_check: ContractLog) -> None:
    sc = scenario(allowed_overrides=("text_only",))
    with Emulator(sc, speech="tone") as emu:
        rc, events, stderr = run_peer(
            {
                "url": emu.signed_url(),
                "mode": "text",
                "messages": ["What can you do?", "How is the kiosk?"],
                "replies": ["I can answer questions.", "The kiosk says all systems go."],
                "client_tools": {"device_status": "all systems go"},
                "linger_ms": 700,
                "timeout_ms": 40000,
            }
        )
        record = emu.wait_for_conversation_end(timeout_s=WAIT_S)
    assert rc == 0, shown(events, stderr)
    assert [e["conversation_id"] for e in of(events, "connect")] == [record.conversation_id]
    said = [e["message"] for e in of(events, "message") if e["source"] == "ai"]
    replies = ["I can answer questions.", "The kiosk says all systems go."]
    # The greeting too, unless this machine stalled the client past the first message's delay (the race above).
    assert said in (["Hello from the emulator.", *replies], replies), said
    assert of(events, "tool") == [{"event": "tool", "name": "device_status", "parameters": {}}]
    pings = of(events, "ping")
    assert len(pings) >= 2
    assert len(record.ping_rtts_ms) >= len(pings) - 1  # answered (the last may cross the close)
    init = record.initiation or {}
    assert init["conversation_config_override"]["conversation"] == {"text_only": True}
    assert init["source_info"]["source"] == "js_sdk"
    assert [t.user_transcript for t in record.turns if t.user_transcript] == ["What can you do?", "How is the kiosk?"]
    assert (record.close_code, record.closed_by) == (1000, "client")
    assert not record.violations
    assert contract_check.counts[FROM_AGENT].get("audio", 0) == 0  # text only
    for type_ in ("user_message", "contextual_update", "user_activity", "pong", "client_tool_result", "feedback"):
        assert contract_check.counts[TO_AGENT].get(type_, 0) > 0, type_


def test_a_voice_conversation_with_alignment(
    contract_check: ContractLog, tmp_path: Path, user_speech_16k_js: bytes
) -> None:
    pcm = tmp_path / "speech.raw"
    pcm.write_bytes(bytes(16000) + user_speech_16k_js + bytes(64000))  # 0.5 s, the question, 2 s of silence
    sc = scenario(alignment=True).with_changes(strict={"audio_rate_factor": 1.5})
    with Emulator(sc, speech="tone") as emu:
        rc, events, stderr = run_peer(
            {
                "url": emu.signed_url(),
                "mode": "voice",
                "pcm_path": str(pcm),
                "until_reply": "I can answer questions.",
                "linger_ms": 300,
                "timeout_ms": 40000,
            }
        )
        record = emu.wait_for_conversation_end(timeout_s=WAIT_S)
    assert rc == 0, shown(events, stderr)
    done = of(events, "done")[0]
    said = [e["message"] for e in of(events, "message") if e["source"] == "ai"]
    assert said[-1] == "I can answer questions."
    assert set(said) <= {"Hello from the emulator.", said[-1]}
    heard = [e["message"] for e in of(events, "message") if e["source"] == "user"]
    assert heard[:1] == ["What can you do?"]
    sent_audio = sum(e["bytes"] for e in record.events if e["type"] == "audio" and e["direction"] == "from_agent")
    assert done["speaker_bytes"] == done["audio_bytes"] > 0
    assert done["audio_bytes"] <= sent_audio
    assert done["mic_bytes"] > 0
    assert len(record.user_audio_pcm) > len(user_speech_16k_js)
    assert record.ping_rtts_ms
    assert (record.close_code, record.closed_by) == (1000, "client")
    assert not record.violations, record.violations
    assert contract_check.counts[TO_AGENT].get("user_audio_chunk", 0) > 10


@pytest.fixture(scope="module")
def user_speech_16k_js() -> bytes:
    return Synthesizer("auto").pcm("What can you do for me today?", 16000)


def test_the_device_hosts_match_the_js_clients_locations() -> None:
    """The SDK's server locations (its getOriginForLocation) reach the same hosts as the device's regions."""
    script = (
        "import { createRequire } from 'node:module'; import { pathToFileURL } from 'node:url';"
        "const r = createRequire(process.env.JSCLIENT_DIR + '/package.json');"
        "const m = await import(pathToFileURL(r.resolve('@elevenlabs/client/internal')).href);"
        "const out = {}; for (const l of ['global', 'eu-residency', 'in-residency', 'us'])"
        " out[l] = m.getOriginForLocation(l); console.log(JSON.stringify(out));"
    )
    proc = subprocess.run(
        ["node", "--input-type=module", "-e", script],
        env={**os.environ, "JSCLIENT_DIR": str(JS_DIR)},
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=True,
    )
    origins = json.loads(proc.stdout)
    for location, region in {"global": "global", "eu-residency": "eu", "in-residency": "in"}.items():
        assert origins[location] == f"wss://{REGION_HOSTS[region]}", location
    # The SDK's "us" location is the global host; the device's "us" region is the US-only host.
    assert origins["us"] == "wss://api.elevenlabs.io"
    assert REGION_HOSTS["us"] == "api.us.elevenlabs.io"
