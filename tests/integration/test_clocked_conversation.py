"""The daemon with both directions through the clocked card (a private PulseAudio): what the user says, the
agent gets; what the agent says, the user hears."""

from __future__ import annotations

import array
import threading
import time
from pathlib import Path

import pytest
from test_daemon_support import WAIT_S, Rig, fast_scenario, speech

from device.bench.clockedcard import ClockedCard
from device.emulator.scenario import Turn

QUESTION = speech("Could you tell me what the weather will be like tomorrow morning, please?")


def nonzero_s(pcm: bytes, rate_hz: int = 16000) -> float:
    """Seconds from the first to the last non-zero sample."""
    a = array.array("h", pcm)
    nz = [i for i, x in enumerate(a) if x]
    return (nz[-1] - nz[0] + 1) / rate_hz if nz else 0.0


def clocked_rig(tmp: Path, card: ClockedCard, **kw: object) -> Rig:
    audio = {"capture_device": card.microphone_device, "playback_device": card.speaker_device,
             "pace_realtime": False, **kw.pop("audio", {})}  # type: ignore[dict-item]
    return Rig(tmp, b"", kw.pop("scenario", None), audio=audio, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("pace_realtime", [False, True], ids=["unpaced", "pace_realtime"])
def test_all_of_the_held_speech_reaches_the_agent(
    tmp_path: Path, clocked_card: ClockedCard, pace_realtime: bool
) -> None:
    """As in the bench demo: the button is held from the start, the user speaks a second later and lets go
    0.3 s after the last word (a scripted person: the release does not wait for the sound server).

    ``audio.pace_realtime`` (meant for clockless file devices, and forced by the bench) used to make a
    clocked microphone fail at its first empty read: reopened again and again, speech lost.
    """
    scenario = fast_scenario(Turn(transcript="The weather?", reply="Sunny."))
    rig = clocked_rig(tmp_path, clocked_card, scenario=scenario, audio={"pace_realtime": pace_realtime})
    with rig:
        rig.button.drive_low()  # pressed as soon as the daemon runs, like the demo's press at 0.4 s
        person = threading.Event()  # never set: its waits are the scripted person's timing
        person.wait(1.0)
        asked_at_s = time.monotonic()
        speaker = clocked_card.play_into_room(QUESTION)
        assert clocked_card.room is not None
        spoke_at_s = clocked_card.room.wait_for_sound(asked_at_s)
        person.wait(spoke_at_s + len(QUESTION) / 2 / 16000 + 0.3 - time.monotonic())  # done speaking
        rig.button.drive_high()
        assert speaker.wait(WAIT_S) == 0
        rig.tel.wait("reply_finished")
        rig.d.command("stop")
        record = rig.emu.wait_for_conversation_end(timeout_s=WAIT_S)
        device_errors = rig.d.capture.stats["device_errors"]
        rig.d.stop()
    heard = record.user_audio_pcm
    print(f"said {nonzero_s(QUESTION):.3f} s, agent got {nonzero_s(heard):.3f} s")
    assert device_errors == 0
    assert nonzero_s(heard) >= nonzero_s(QUESTION) - 0.01  # all of it (PulseAudio may round off a few samples)
