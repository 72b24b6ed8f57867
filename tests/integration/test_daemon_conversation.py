"""End to end: the daemon in this process, ALSA file devices, mock pins, the emulator as the agent."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from device.core.config import ButtonConfig, GateConfig, SessionConfig
from device.emulator.scenario import Fault, Turn
from tests.integration.daemonrig import (
    BLOCK_S,
    CHUNK_FRAMES,
    MUTE_PIN,
    RED,
    WAIT_S,
    Rig,
    fast_scenario,
    is_silent,
    samples_equal_somewhere,
    silence,
    speech,
)

pytestmark = pytest.mark.realtime

QUESTION = speech("What can you do for me today?")
LEAD_S = 1.25  # speech starts here in the input file
PRESS_S = 1.0  # the press comes a little before it


def input_with(*parts: bytes) -> bytes:
    return b"".join(parts)


def seconds(pcm: bytes) -> float:
    return len(pcm) / 2 / 16000


def assert_device_shows_the_transcript(rig: Rig, said: str) -> None:
    """The device passed the service's final transcript of the user on (telemetry: status, ctl events, timeline)."""
    shown = rig.tel.wait("transcript", lambda r: r.data["role"] == "user" and not r.data["tentative"])
    assert said
    assert shown.data["text"] == said


def test_push_to_talk_conversation_and_the_first_words_reach_the_agent(tmp_path: Path) -> None:
    # The agent takes a second to answer the connection: whatever is said meanwhile is held and sent first.
    scenario = fast_scenario(
        Turn(transcript="What can you do?", reply="I can help."),
        faults=(Fault(kind="slow_metadata", conversation=0, delay_s=1.0),),
    )
    end_s = LEAD_S + seconds(QUESTION)
    with Rig(tmp_path, input_with(silence(LEAD_S), QUESTION, silence(6.0)), scenario) as rig:
        rig.press_at(PRESS_S)
        rig.wait_state("connecting")
        rig.release_at(end_s + BLOCK_S)
        rig.wait_state("thinking")
        rig.wait_state("speaking")
        finished = rig.tel.wait("reply_finished")
        rig.wait_state("listening", after=rig.tel.items.index(finished))
        rig.d.command("stop")
        rig.wait_state("idle", after=rig.tel.items.index(finished))
        record = rig.emu.wait_for_conversation_end(timeout_s=WAIT_S)
        status = json.loads((tmp_path / "status.json").read_text()) if (tmp_path / "status.json").exists() else {}
        rig.d.stop()

        assert record.violations == []
        assert record.close_code == 1000
        assert record.closed_by == "client"
        heard = record.user_audio_pcm
        assert samples_equal_somewhere(QUESTION, heard)  # every sample of the question, first words included
        assert_device_shows_the_transcript(rig, record.turns[0].user_transcript)
        # nothing from before the press was sent: the audio starts with zeros, then the question
        assert is_silent(heard[: heard.find(QUESTION)])
        reply_frames = finished.data["frames"]
        assert reply_frames == pytest.approx(record.turns[0].reply_audio_s * 16000, abs=1)
        assert len(rig.output()) >= 2 * reply_frames  # the reply reached the speaker in full
        assert rig.tel.states()[:5] == ["idle", "connecting", "listening", "thinking", "speaking"]
        assert not status or status["counters"]["conversations"] == 1


def test_toggle_mode_and_a_long_press_ends_the_conversation(tmp_path: Path) -> None:
    end_s = LEAD_S + seconds(QUESTION)
    with Rig(tmp_path, input_with(silence(LEAD_S), QUESTION, silence(8.0)), gate=GateConfig(mode="toggle")) as rig:
        rig.press_at(PRESS_S)
        rig.button.drive_high()  # a short press: the gate stays open
        rig.wait_state("listening")
        rig.wait_captured(end_s + BLOCK_S)
        rig.button.drive_low()  # second press: the user is done
        rig.button.drive_high()
        rig.wait_state("thinking")
        finished = rig.tel.wait("reply_finished")
        mark = rig.tel.mark()
        rig.button.drive_low()  # hold: a long press ends the conversation
        rig.tel.wait("button", lambda r: r.data["action"] == "long_press", after=mark)
        rig.wait_state("idle", after=mark)
        rig.button.drive_high()
        record = rig.emu.wait_for_conversation_end(timeout_s=WAIT_S)
        assert finished.data["frames"] > 0
        assert record.closed_by == "client"
        assert record.close_code == 1000
        assert record.violations == []
        assert samples_equal_somewhere(QUESTION, record.user_audio_pcm)
        # after the second press the gate closed: only zeros followed the question
        heard = record.user_audio_pcm
        after = heard[heard.find(QUESTION) + len(QUESTION) + 2 * 16000 :]
        assert after
        assert is_silent(after)


def test_voice_mode_starts_on_speech_and_the_idle_timeout_ends_it(tmp_path: Path) -> None:
    gate = GateConfig(mode="voice", start_on_speech=True, preroll_ms=250, hangover_ms=500)
    session = SessionConfig(idle_timeout_s=1.0)
    with Rig(tmp_path, input_with(silence(LEAD_S), QUESTION, silence(8.0)), gate=gate, session=session) as rig:
        rig.wait_state("connecting")  # nobody pressed anything
        rig.wait_state("thinking")  # the hang-over ran out: the user's turn is over
        finished = rig.tel.wait("reply_finished")
        mark = rig.tel.items.index(finished)
        rig.wait_state("idle", after=mark)  # nobody spoke for idle_timeout_s after the reply
        record = rig.emu.wait_for_conversation_end(timeout_s=WAIT_S)
        assert rig.tel.of("button") == []
        assert samples_equal_somewhere(QUESTION, record.user_audio_pcm)
        assert_device_shows_the_transcript(rig, record.turns[0].user_transcript)
        assert record.closed_by == "client"
        assert record.violations == []


def test_voice_mode_after_a_press_hears_the_user_once_the_listening_cue_is_over(tmp_path: Path) -> None:
    question_at_s = 2.5  # the cue plays at about 1 s; the user answers it
    gate = GateConfig(mode="voice", preroll_ms=250, hangover_ms=500)
    pcm = input_with(silence(question_at_s), QUESTION, silence(6.0))
    with Rig(tmp_path, pcm, gate=gate, audio={"earcons": True}) as rig:
        rig.press_at(PRESS_S)
        rig.button.drive_high()
        cue = rig.tel.wait("earcon", lambda r: r.data["phase"] == "finished")
        rig.wait_state("thinking")  # the gate opened on speech and closed after the hang-over
        rig.tel.wait("reply_finished")
        rig.d.command("stop")
        record = rig.emu.wait_for_conversation_end(timeout_s=WAIT_S)
        assert cue.data["name"] == "listening"
        assert samples_equal_somewhere(QUESTION, record.user_audio_pcm)
        assert_device_shows_the_transcript(rig, record.turns[0].user_transcript)


def test_a_press_while_the_agent_speaks_cuts_it_off_and_the_next_reply_plays(tmp_path: Path) -> None:
    long_reply = " ".join(["This is a very long answer that goes on and on about the exhibition."] * 4)
    scenario = fast_scenario(
        Turn(transcript="Tell me everything.", reply=long_reply),
        Turn(transcript="Stop, what time is it?", reply="It is noon."),
    )
    second = speech("Stop, what time is it?")
    a_end = LEAD_S + seconds(QUESTION)
    b_start = a_end + 3.0  # the long reply is playing by then
    pcm = input_with(silence(LEAD_S), QUESTION, silence(b_start - a_end), second, silence(8.0))
    with Rig(tmp_path, pcm, scenario) as rig:
        rig.press_at(PRESS_S)
        rig.release_at(a_end + BLOCK_S)
        rig.wait_state("speaking")
        first_reply = rig.tel.wait("reply_started")
        rig.press_at(b_start - BLOCK_S)  # barge in, and say the next question while holding
        cut = rig.tel.wait("interruption", lambda r: r.data["local"])
        flushed = rig.tel.wait("flushed")
        rig.release_at(b_start + seconds(second) + BLOCK_S)
        next_reply = rig.tel.wait("reply_started", lambda r: r.data["reply_id"] != first_reply.data["reply_id"])
        finished = rig.tel.wait("reply_finished", lambda r: r.data["reply_id"] == next_reply.data["reply_id"])
        record = rig.emu.wait_until(lambda c: len(c[0].turns) >= 2 and c[0].turns[1].reply_audio_s > 0)[0]

        assert cut.t_s >= first_reply.t_s
        assert flushed.data["frames_after"] <= CHUNK_FRAMES  # at most one chunk of the old reply after the press
        assert record.turns[0].interrupted
        assert finished.data["frames"] == pytest.approx(record.turns[1].reply_audio_s * 16000, abs=1)
        states = rig.tel.states()
        assert states.index("speaking") < len(states) - 1 - states[::-1].index("listening")
        # the reply that was cut never finished playing
        assert not any(r.data["reply_id"] == first_reply.data["reply_id"] for r in rig.tel.of("reply_finished"))


def test_a_closed_gate_sends_only_zeros_and_keeps_the_stream_alive(tmp_path: Path) -> None:
    talk = input_with(silence(0.5), *(speech(f"I keep talking, sentence {i}.") for i in range(2)), silence(2.0))
    with Rig(tmp_path, talk) as rig:
        rig.d.command("start")  # a conversation, but nobody holds the button
        rig.wait_state("listening")
        rig.wait_captured(seconds(talk) - 1.0)
        rig.d.command("stop")
        record = rig.emu.wait_for_conversation_end(timeout_s=WAIT_S)
        assert record.violations == []
        heard = record.user_audio_pcm
        assert len(heard) >= 2 * 16000 * 2  # seconds of stream arrived ...
        assert is_silent(heard)  # ... all of it zeros


def test_mute_switch_and_command_force_zeros_and_show_muted(tmp_path: Path) -> None:
    talk = input_with(silence(LEAD_S), QUESTION, speech("and more words while muted"), silence(6.0))
    button = ButtonConfig(pin=17, mute_pin=MUTE_PIN, external_pull=True, bounce_ms=0, long_press_s=0.5)
    with Rig(tmp_path, talk, button=button) as rig:
        switch = rig.factory.pin(MUTE_PIN)
        switch.drive_high()  # switch open: not muted
        rig.d.mute(True, source="ctl")
        rig.wait_state("muted")
        mark = rig.tel.mark()
        rig.button.drive_low()  # a press while muted is refused
        rig.button.drive_high()
        rig.d.mute(False, source="ctl")
        rig.wait_state("idle", after=mark)
        assert "connecting" not in rig.tel.states()

        rig.press_at(PRESS_S)  # a conversation; the user holds the button and talks ...
        rig.wait_state("listening")
        switch.drive_low()  # ... but the mute switch is closed first
        rig.wait_state("muted", after=mark)
        rig.wait_captured(LEAD_S + seconds(QUESTION) + 1.0)
        rig.button.drive_high()
        rig.d.command("stop")
        record = rig.emu.wait_for_conversation_end(timeout_s=WAIT_S)
        heard = record.user_audio_pcm
        # what was captured after the switch closed is zeros: the question never reached the agent
        assert not samples_equal_somewhere(QUESTION[: 2 * 4000], heard)
        assert heard
        assert is_silent(heard[-2 * 16000 :])
        assert rig.factory.pin(RED).state == 1  # muted shows steady red


def test_network_drop_shows_the_error_and_the_next_press_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    scenario = fast_scenario(
        agent={"first_message": "Hello there, welcome to the museum, how can I help you today?"},
        faults=(Fault(kind="drop", conversation=0, reply=0, after_chunks=1),),
    )
    caplog.set_level(logging.ERROR, logger="device.app.controller")
    with Rig(tmp_path, input_with(silence(20.0)), scenario, session=SessionConfig(error_hold_s=30)) as rig:
        rig.button.drive_low()
        rig.button.drive_high()
        rig.wait_state("error")
        red = rig.factory.pin(RED)
        # the error pattern: red blinks
        rig.tel.wait("led", lambda r: r.data["state"] == "error")
        assert any("network" in r.getMessage() and "check the network" in r.getMessage() for r in caplog.records)
        mark = rig.tel.mark()
        rig.button.drive_low()  # the next press tries again at once
        rig.button.drive_high()
        rig.wait_state("listening", after=mark)
        conversations = rig.emu.wait_until(lambda c: len(c) == 2)
        assert conversations[0].closed_by in ("drop", "network")
        assert len({s.state for s in red.states}) >= 2  # it blinked
        rig.d.command("stop")
        second = rig.emu.wait_for_conversation_end(index=1, timeout_s=WAIT_S)
        assert second.violations == []
        assert second.closed_by == "client"
