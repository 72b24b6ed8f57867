"""Hands-free kiosks end to end: the daemon on ALSA file devices, the emulator as the agent, a real
wake-word engine (openWakeWord hey_jarvis, which hears espeak-ng voices) and real webrtcvad."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from device.core.config import GateConfig, SessionConfig, WakeConfig
from device.drivers.status import to_json, to_prometheus
from device.emulator.scenario import Turn
from tests import speechgen as g
from tests.integration.daemonrig import WAIT_S, Rig, fast_scenario, is_silent, samples_equal_somewhere, silence, speech

pytestmark = [pytest.mark.realtime, g.needs_tools]

QUESTION = speech("What can you do for me today?")
WAKE_AT_S = 1.5


def wake_word() -> bytes:
    return g.speak("hey jarvis", "en-us")


def rig(tmp_path: Path, pcm: bytes, scenario: object = None, **gate: object) -> Rig:
    r = Rig(
        tmp_path,
        pcm,
        scenario,  # type: ignore[arg-type]
        gate=GateConfig(mode="wake_word", preroll_ms=250, hangover_ms=500, **gate),  # type: ignore[arg-type]
        session=SessionConfig(idle_timeout_s=1.0),
    )
    r.cfg_parts["wake"] = WakeConfig(engine="openwakeword", model="hey_jarvis")
    return r


def counters(r: Rig) -> dict[str, float]:
    """The counters as status.json (and the Prometheus textfile) show them."""
    status = r.d.controller.status  # the snapshot taken at the last state change
    assert "voice_appliance_false_wakes_total " in to_prometheus(status)
    return dict(json.loads(to_json(status))["counters"])


def test_the_wake_word_starts_a_conversation_and_the_question_after_it_arrives_whole(tmp_path: Path) -> None:
    wake = wake_word()
    pcm = silence(WAKE_AT_S) + wake + silence(0.2) + QUESTION + silence(8.0)
    with rig(tmp_path, pcm) as r:
        r.wait_state("woken")  # nobody pressed anything
        r.wait_state("listening")
        r.wait_state("thinking")
        finished = r.tel.wait("reply_finished")
        r.wait_state("idle", after=r.tel.items.index(finished))  # the idle timeout ends it
        record = r.emu.wait_for_conversation_end(timeout_s=WAIT_S)
        [hit] = r.tel.of("wake")
        c = counters(r)
        r.d.stop()
        heard = record.user_audio_pcm
        assert samples_equal_somewhere(QUESTION, heard)  # the question, first words included
        assert record.turns[0].user_transcript == "What can you do?"
        assert not samples_equal_somewhere(wake, heard)  # the wake word itself stayed on the device
        assert is_silent(heard[: heard.find(QUESTION)][: -2 * 16000 // 2])
        assert WAKE_AT_S < hit.t_s - r.tel.of("captured")[0].t_s + 0.25 < WAKE_AT_S + len(wake) / 32000 + 0.5
        assert r.tel.of("button") == []
        assert c["wake_detections"] == 1
        assert c["false_wakes"] == 0
        assert c["conversations"] == 1


def test_speech_without_the_wake_word_starts_nothing(tmp_path: Path) -> None:
    talk = g.speak("when does the museum open on sunday", "en-us") + g.speak("hello jarvis is here", "en-gb")
    pcm = silence(0.5) + talk + QUESTION + silence(1.0)
    with rig(tmp_path, pcm) as r:
        r.wait_captured(len(pcm) / 32000 + 0.5)
        states = r.tel.states()
        c = counters(r)
        r.d.stop()
    assert set(states) == {"idle"}, states
    assert r.emu.conversations_started == 0
    assert c["wake_detections"] == 0


def test_a_wake_word_nobody_follows_counts_as_a_false_wake(tmp_path: Path) -> None:
    pcm = silence(WAKE_AT_S) + wake_word() + silence(8.0)
    with rig(tmp_path, pcm) as r:
        r.wait_state("woken")
        mark = r.tel.mark()
        r.wait_state("idle", after=mark)
        c = counters(r)
        r.d.stop()
    assert c["wake_detections"] == 1
    assert c["false_wakes"] == 1


def test_barge_in_by_wake_word_cuts_the_agent_off(tmp_path: Path) -> None:
    scenario = fast_scenario(Turn(transcript="What can you do?", reply="I can help with many things. " * 12))
    wake = wake_word()
    # The second wake word comes while the long reply plays (it starts about 1 s after the question).
    first = silence(WAKE_AT_S) + wake + silence(0.2) + QUESTION + silence(3.0)
    second_at_s = len(first) / 32000
    pcm = first + wake + silence(0.2) + QUESTION + silence(8.0)
    with rig(tmp_path, pcm, scenario, barge_in="wake_word") as r:
        r.wait_state("speaking")
        flushed = r.tel.wait("flushed")
        interruption = r.tel.wait("interruption", lambda t: t.data.get("local") is True)
        r.wait_state("listening", after=r.tel.items.index(flushed))
        c = counters(r)
        r.d.stop()
    wakes = r.tel.of("wake")
    assert len(wakes) == 2
    # The barge-in was the second wake word, heard where it was said -- not the first one again
    # (the detector once kept the conversation's wake word and fired on it when the agent began to speak).
    at_s = wakes[1].t_s - r.tel.of("captured")[0].t_s + 0.25
    assert second_at_s < at_s < second_at_s + len(wake) / 32000 + 0.5, (at_s, second_at_s)
    assert interruption.data["local"] is True
    assert c["barge_ins"] == 1
    assert c["wake_detections"] == 2
