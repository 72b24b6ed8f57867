"""The interruption rule: after ``interruption`` N, audio with id < N is dropped, id >= N plays."""

from __future__ import annotations

import base64
import json
import threading

import pytest
from websockets.sync.server import ServerConnection, serve

from device.core.config import AgentConfig
from device.core.protocol import AgentAudio, AgentResponse, Connected, Interruption, UserTranscript
from tests.integration.sessionrig import WAIT_S, fast_scenario, make_session, running, speak, started

pytestmark = pytest.mark.realtime

LONG_FIRST = "Hello. I am the emulated agent, and I am here to help you with anything you need today."


@pytest.mark.parametrize("reuse", [True, False], ids=["equal_id", "higher_id"])
def test_the_reply_after_an_interruption_plays(reuse: bool) -> None:
    scenario = fast_scenario(
        agent={"first_message": LONG_FIRST, "reuse_event_id_after_interruption": reuse},
        timing={"speed": 4.0},
    )
    with running(scenario) as emu:
        session, events = make_session(emu)
        with started(session):
            first = events.wait_for(AgentAudio)
            speak(session, "What can you do?")  # while the greeting is still playing
            interruption = events.wait_for(Interruption)
            events.wait_for(UserTranscript, lambda e: e.text == "What can you do?")
            events.wait_for(AgentResponse, lambda e: e.text == "I can help.")
            record = emu.wait_until(
                # every chunk sent (reply_last_audio_sent_t_s is set by the first chunk already)
                lambda s: len(s[-1].turns) > 1 and 0 < s[-1].turns[1].chunks_total == s[-1].turns[1].chunks_sent,
                WAIT_S,
                "the second reply to be sent",
            )[-1]
            # the new reply has been sent in full: wait until every chunk of it has arrived
            new_id = record.turns[1].event_id
            n_new = record.turns[1].chunks_sent
            cut = events.items.index(interruption)
            events.wait_count(AgentAudio, n_new, lambda e: e.event_id == new_id and events.items.index(e) > cut)
    assert record.turns[0].interrupted and interruption.event_id == first.event_id
    if reuse:
        assert new_id == interruption.event_id
    else:
        assert new_id is not None and new_id > interruption.event_id
    index = events.items.index(interruption)
    after = [e for e in events.items[index:] if isinstance(e, AgentAudio)]
    assert after and all(e.event_id >= interruption.event_id for e in after)
    assert len([e for e in after if e.event_id == new_id]) == n_new, "every chunk of the new reply plays"
    assert not record.violations, record.violations


def test_stale_audio_below_the_interruption_id_is_dropped_and_the_controller_told_first() -> None:
    def audio(event_id: int, fill: int) -> str:
        pcm = bytes([fill, 0]) * 160
        return json.dumps(
            {"type": "audio", "audio_event": {"audio_base_64": base64.b64encode(pcm).decode(), "event_id": event_id}}
        )

    def script(ws: ServerConnection) -> None:
        ws.recv(timeout=WAIT_S)
        ws.send(json.dumps({
            "type": "conversation_initiation_metadata",
            "conversation_initiation_metadata_event": {
                "conversation_id": "c", "agent_output_audio_format": "pcm_16000",
                "user_input_audio_format": "pcm_16000"},
        }))
        ws.send(audio(5, 1))
        ws.send(json.dumps({"type": "interruption", "interruption_event": {"event_id": 6}}))
        ws.send(audio(5, 2))  # stale: lower id, sent late
        ws.send(audio(6, 3))  # equal: the new reply
        ws.send(audio(4, 4))  # stale
        ws.send(audio(7, 5))  # higher
        ws.send(json.dumps({"type": "agent_response", "agent_response_event": {"agent_response": "done"}}))
        for _ in ws:
            pass

    server = serve(script, "127.0.0.1", 0, compression=None)
    thread = threading.Thread(target=server.serve_forever, name="scripted-server")
    thread.start()
    try:
        agent = AgentConfig(agent_id="a", connection="public", base_url=f"http://127.0.0.1:{server.socket.getsockname()[1]}")
        session, events = make_session(None, agent=agent, key=None)
        with started(session):
            events.wait_for(AgentResponse)
    finally:
        server.shutdown()
        thread.join(WAIT_S)
    seq = [
        ("I", e.event_id) if isinstance(e, Interruption) else ("A", e.event_id, e.audio[0])
        for e in events.items
        if isinstance(e, (AgentAudio, Interruption))
    ]
    assert seq == [("A", 5, 1), ("I", 6), ("A", 6, 3), ("A", 7, 5)]
    assert session.stats["agent_audio_dropped"] == 2
    assert events.of(Connected)
