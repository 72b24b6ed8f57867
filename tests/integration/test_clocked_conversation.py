"""The daemon with both directions through the clocked card (a private PulseAudio): what the user says, the
agent gets; what the agent says, the user hears."""

from __future__ import annotations

import array
import json
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from device.bench import clockedcard
from device.bench.clockedcard import ClockedCard
from device.core.config import SystemdConfig
from device.drivers.control import ControlError, request
from device.emulator.scenario import Turn
from tests.integration.daemonrig import WAIT_S, Rig, fast_scenario, speech

pytestmark = pytest.mark.realtime

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


@pytest.fixture
def slow_starting_card(alsa_dir: Path) -> Iterator[ClockedCard]:
    """A sound server that delivers a new capture's first period after ~1.9 s (no low-latency client on the room)."""
    reason = clockedcard.available()
    if reason is not None:
        pytest.skip(f"no clocked card: {reason}")
    with tempfile.TemporaryDirectory(prefix="va-card-") as directory:
        card = ClockedCard.start(Path(directory), listen_to_room=False)
        try:
            yield card
        finally:
            card.stop()


def test_a_press_right_after_ready_loses_no_words_on_a_slow_starting_sound_server(
    tmp_path: Path, slow_starting_card: ClockedCard
) -> None:
    """Someone presses as soon as the daemon is ready, talks at once and lets go 0.3 s after the
    last word (all on the wall clock): the agent gets every word.

    Until a capture runs, this sound server does not run the room either (an idle server suspends its
    devices; a real one loses what is said meanwhile, this one plays it late): ready before the
    microphone's first block, the words came ~2 s late and the release cut the last second off.
    """
    card = slow_starting_card
    scenario = fast_scenario(Turn(transcript="The weather?", reply="Sunny."))
    with clocked_rig(tmp_path, card, scenario=scenario) as rig:  # READY=1 has been sent when this returns
        ready_s = time.monotonic()
        rig.button.drive_low()
        speaker = card.play_into_room(QUESTION)
        person = threading.Event()  # never set: its wait is the scripted person's timing
        person.wait(ready_s + len(QUESTION) / 2 / 16000 + 0.3 - time.monotonic())
        rig.button.drive_high()
        assert speaker.wait(WAIT_S) == 0
        rig.tel.wait("reply_finished")
        rig.d.command("stop")
        record = rig.emu.wait_for_conversation_end(timeout_s=WAIT_S)
    heard = record.user_audio_pcm
    print(f"said {nonzero_s(QUESTION):.3f} s, agent got {nonzero_s(heard):.3f} s")
    assert nonzero_s(heard) >= nonzero_s(QUESTION) - 0.01


def test_ctl_says_starting_until_the_microphone_delivers(tmp_path: Path, slow_starting_card: ClockedCard) -> None:
    """A touchscreen polling `ctl status` is not told "idle" (press to talk) before the daemon can hear."""
    sock = str(tmp_path / "control.sock")
    systemd = SystemdConfig(status_file="", control_socket=sock, control_group="", watchdog=False)
    rig = clocked_rig(tmp_path, slow_starting_card, systemd=systemd)
    answers: list[tuple[str, bool]] = []  # (state, the microphone had delivered before the answer came)
    started = threading.Event()

    def touchscreen() -> None:
        pause = threading.Event()  # never set: the pause between polls
        while not started.is_set():
            try:
                ok, text = request(sock, "status")
                assert ok, text
            except ControlError:  # not listening yet
                pause.wait(0.02)
                continue
            answers.append((str(json.loads(text)["state"]), bool(rig.tel.of("captured"))))
            pause.wait(0.05)

    poller = threading.Thread(target=touchscreen, name="test-touchscreen")
    poller.start()
    try:
        with rig:
            started.set()
            poller.join(WAIT_S)
            assert json.loads(request(sock, "status")[1])["state"] == "idle"
    finally:
        started.set()
        poller.join(WAIT_S)
    assert ("starting", False) in answers  # asked while the microphone had not delivered yet
    assert [a for a in answers if a[0] != "starting" and not a[1]] == []  # never "idle" before that
