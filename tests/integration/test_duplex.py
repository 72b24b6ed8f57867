"""Full duplex on the clocked card with an echoing room: the kiosk hears the user over its own voice.

The room (device.bench.room) feeds what the speaker plays back into the microphone, delayed, clipped
and reverberant, 6 dB under the speaker; the agent (the emulator, speaking with espeak-ng) starts a
long reply as soon as the conversation opens, and the user asks a question over it, at the echo's
level. The control case (echo cancellation off) shows the room is real: the kiosk's own echo makes
the agent interrupt itself before the user has said anything.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from device.bench.clockedcard import ClockedCard
from device.bench.room import EchoRoom
from device.core.config import GateConfig
from device.emulator.scenario import Turn
from device.emulator.server import Emulator
from tests.integration.daemonrig import WAIT_S, Rig, fast_scenario
from tests.speechgen import db, rms, scale, speak

pytestmark = pytest.mark.realtime

LONG_REPLY = (
    "Welcome to the museum. The exhibition on the second floor shows paintings from the eighteenth "
    "century, and the sculpture garden behind the main hall is open until sunset. The cafe on the ground "
    "floor serves lunch until three, and the gift shop is next to the exit."
)
QUESTION_TEXT = "Excuse me, where is the nearest exit?"
ANSWER = "The nearest exit is behind you, on the left."
# echo 6 dB under the speaker; the agent's voice (espeak-ng at the emulator's level) reaches the microphone
# at about -30 dBFS, and the user speaks at -26 dBFS: about the echo's level, as in the issue
ECHO_DB = -6.0


def duplex_rig(tmp: Path, card: ClockedCard, echo_cancellation: str, barge_in: str = "voice") -> Rig:
    scenario = fast_scenario(
        Turn(transcript=QUESTION_TEXT, reply=ANSWER),
        agent={"first_message": LONG_REPLY + " " + LONG_REPLY, "words_per_minute": 160},
    )
    audio = {"capture_device": card.microphone_device, "playback_device": card.speaker_device,
             "pace_realtime": False, "echo_cancellation": echo_cancellation}
    rig = Rig(tmp, b"", scenario, gate=GateConfig(mode="always_open", barge_in=barge_in), audio=audio)
    rig.emu = Emulator(scenario, speech="espeak")  # a voice, not tones: the echo is speech, as in a hall
    return rig


def question_at(level_dbfs: float) -> bytes:
    q = speak(QUESTION_TEXT, "en-gb", 165)
    return scale(q, level_dbfs - db(rms(q) / 32768))


def test_echo_cancellation_takes_the_speakers_echo_out_of_the_microphone(
    tmp_path: Path, clocked_card: ClockedCard
) -> None:
    """The canceller learns the room while the agent speaks: its reduction and the echo's delay reach the status."""
    with EchoRoom(clocked_card, echo_db=ECHO_DB), duplex_rig(tmp_path, clocked_card, "on", "button") as rig:
        rig.d.command("start")
        speaking = rig.wait_state("speaking")
        time.sleep(7.0)
        counters = rig.d.status().counters
        rig.d.command("stop")
        interrupted = [r for r in rig.tel.of("interruption") if r.t_s > speaking.t_s]
    print(f"after 7 s of the agent's reply: echo reduced by {counters['echo_reduction_db']} dB (median), "
          f"echo delay {counters['echo_delay_ms']} ms after ALSA's")
    assert counters["echo_reduction_db"] >= 20.0
    assert interrupted == []  # the echo guard (barge_in = button) kept the agent from hearing itself


def test_with_echo_cancellation_the_user_talks_over_the_agent_and_is_heard(
    tmp_path: Path, clocked_card: ClockedCard
) -> None:
    """The issue's case: barge_in = voice, a user at the echo's level 4 s into a long reply. The agent
    (whose VAD interrupts it when it hears the user) hears the question and not its own voice."""
    with EchoRoom(clocked_card, echo_db=ECHO_DB), duplex_rig(tmp_path, clocked_card, "on", "voice") as rig:
        rig.d.command("start")
        speaking = rig.wait_state("speaking")
        time.sleep(4.0)  # the agent is well into its reply
        said_at_s = clocked_card.say_in_room(question_at(-26.0))
        first = rig.tel.wait("interruption")
        rig.tel.wait("transcript", lambda r: r.data.get("role") == "agent" and r.data.get("text") == ANSWER)
        rig.d.command("stop")
        record = rig.emu.wait_for_conversation_end(timeout_s=WAIT_S)
        counters = rig.d.status().counters
    print(f"user began {said_at_s - speaking.t_s:.2f} s into the reply; the agent was interrupted "
          f"{first.t_s - said_at_s:+.2f} s from then; echo reduced {counters['echo_reduction_db']} dB, "
          f"delay {counters['echo_delay_ms']} ms; interruptions {counters['interruptions']}, "
          f"false barge-ins {counters['false_barge_ins']}")
    assert first.t_s > said_at_s, "the agent interrupted itself before the user said anything"
    assert first.t_s - said_at_s < 3.0
    assert QUESTION_TEXT in [t.user_transcript for t in record.turns if t.trigger == "speech"]


def test_without_echo_cancellation_the_echo_makes_the_agent_interrupt_itself(
    tmp_path: Path, clocked_card: ClockedCard
) -> None:
    """The control case: the same room with the canceller off (barge_in = voice, as a user would try)."""
    with EchoRoom(clocked_card, echo_db=ECHO_DB), duplex_rig(tmp_path, clocked_card, "off") as rig:
        rig.d.command("start")
        speaking = rig.wait_state("speaking")
        first = rig.tel.wait("interruption", timeout_s=WAIT_S)
        rig.d.command("stop")
    print(f"interrupted {first.t_s - speaking.t_s:.2f} s into the reply with nobody talking")
    assert first.data.get("local") is False  # the service heard the kiosk's own voice as the user's
    assert first.t_s - speaking.t_s < 10.0
