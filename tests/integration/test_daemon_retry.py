"""A retried first connection keeps the user's question: the daemon, file ALSA devices, mock pins, emulator faults.

The user holds the button and speaks at once; the first connection attempt
fails (the service refuses the upgrade, or rate-limits the signed URL) and the
daemon retries while the button is still held. The agent must hear the whole
question, measured in the emulator's recording, not just "a turn happened".
"""

from __future__ import annotations

import json
import logging
import re
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import webrtcvad

from device.bench import fixtures, wavfile
from device.core.config import Config, GateConfig, SessionConfig
from device.emulator.scenario import Fault, Turn
from tests.integration.daemonrig import (
    BLOCK_S,
    RATE_HZ,
    WAIT_S,
    Rig,
    fast_scenario,
    samples_equal_somewhere,
    silence,
    speech,
)
from tests.support import LocalHttp, QuietHandler

pytestmark = pytest.mark.realtime

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "scenarios"
PRESS_S = 1.0
LEAD_S = 1.25  # the question starts here in the input file


def question() -> bytes:
    pcm, _ = wavfile.read_wav(fixtures.QUESTION_WAV)  # 4.15 s of espeak-ng speech at 16 kHz
    return pcm


def seconds(pcm: bytes) -> float:
    return len(pcm) / 2 / RATE_HZ


def voiced_s(pcm: bytes) -> float:
    """Seconds webrtcvad hears as speech (30 ms frames)."""
    vad = webrtcvad.Vad(2)
    step = 2 * RATE_HZ * 30 // 1000
    return 0.03 * sum(1 for i in range(0, len(pcm) - step + 1, step) if vad.is_speech(pcm[i : i + step], RATE_HZ))


def nonzero_s(pcm: bytes) -> float:
    """Seconds of microphone audio received: 10 ms frames that are not the closed gate's zeros."""
    step = 2 * RATE_HZ // 100
    return 0.01 * sum(1 for i in range(0, len(pcm), step) if any(pcm[i : i + step]))


def ask_while_the_first_connection_fails(tmp_path: Path, faults: tuple[Fault, ...], **agent: object) -> tuple[Any, ...]:
    q = question()
    scenario = fast_scenario(Turn(transcript="When does the museum open?", reply="At nine."), faults=faults)
    session = SessionConfig(retry_initial_s=0.5, retry_max_s=1.0)
    with Rig(tmp_path, silence(LEAD_S) + q + silence(8.0), scenario, session=session, agent=dict(agent)) as rig:
        rig.press_at(PRESS_S)
        rig.wait_state("error")  # the first attempt failed while the button is held ...
        rig.wait_state("listening")  # ... and a retry connected, still within the press
        rig.release_at(LEAD_S + seconds(q) + BLOCK_S)
        # the stream goes on with zeros after the release: wait until it holds more than the whole press
        rig.emu.wait_until(lambda c: bool(c) and seconds(c[-1].user_audio_pcm) > seconds(q) + 1.0, timeout_s=WAIT_S)
        if nonzero_s(rig.emu.conversations[-1].user_audio_pcm) > 0:  # a lost question gets no reply: no waiting
            rig.tel.wait("reply_finished")
        rig.d.command("stop")
        record = rig.emu.wait_for_conversation_end(timeout_s=WAIT_S)
        status = json.loads((tmp_path / "status.json").read_text())
        states = rig.tel.states()
    return q, record, status, states


@pytest.mark.parametrize(
    ("faults", "agent"),
    [
        ((Fault(kind="refuse_upgrade", status=503, count=1),), {}),
        ((Fault(kind="signed_url_error", status=429, retry_after_s=1, count=2),), {"prefetch_signed_url": False}),
    ],
    ids=["refused-upgrade-503", "signed-url-429-twice"],
)
def test_the_agent_hears_the_whole_question_when_the_first_connection_is_retried(
    tmp_path: Path, faults: tuple[Fault, ...], agent: dict[str, object]
) -> None:
    q, record, status, states = ask_while_the_first_connection_fails(tmp_path, faults, **agent)
    heard = record.user_audio_pcm
    assert record.violations == []
    assert "error" in states[: states.index("listening")]  # the retry really happened
    # every sample of the question arrived, and as much speech as was held reached the agent
    assert nonzero_s(heard) == pytest.approx(seconds(q), abs=BLOCK_S + 0.01)
    assert voiced_s(heard) == pytest.approx(voiced_s(q), abs=0.1)
    assert samples_equal_somewhere(q, heard)
    assert record.turns
    assert record.turns[0].reply_audio_s > 0  # and the agent answered it
    assert status["counters"]["audio_dropped_s"] == 0


def test_when_every_attempt_fails_the_user_hears_the_error_once_and_the_lost_speech_is_counted(
    tmp_path: Path,
) -> None:
    q = question()
    scenario = fast_scenario(faults=(Fault(kind="refuse_upgrade", status=503, count=0),))  # always refused
    session = SessionConfig(retry_attempts=2, retry_initial_s=0.25, retry_max_s=0.5, error_hold_s=1.0)
    with Rig(tmp_path, silence(LEAD_S) + q + silence(8.0), scenario, session=session, audio={"earcons": True}) as rig:
        rig.press_at(PRESS_S)
        pressed = rig.tel.mark()
        rig.wait_state("idle", after=pressed)  # three attempts failed, the error showed, then idle
        idle_at = rig.tel.mark()
        rig.release_at(LEAD_S + seconds(q) + BLOCK_S)
        status = json.loads((tmp_path / "status.json").read_text())
        items = rig.tel.items[pressed:idle_at]
        states = [str(r.data["state"]) for r in items if r.kind == "state"]
        cues = [r.data["name"] for r in rig.tel.of("earcon") if r.data["phase"] == "started"]
        # what the gate let through from the press until the last attempt failed: the speech that was lost
        last_error = max(i for i, r in enumerate(items) if r.kind == "state" and r.data["state"] == "error")
        held_open_s = BLOCK_S * sum(1 for r in items[:last_error] if r.kind == "gate" and r.data["open"])

    assert states == ["connecting", "error", "connecting", "error", "connecting", "error", "idle"]
    assert cues == ["error"]  # once, when the device gave up; not over the user's words at each retry
    assert rig.emu.conversations == []  # no conversation ever opened
    assert held_open_s > 0
    assert status["counters"]["audio_dropped_s"] == pytest.approx(held_open_s)
    assert status["counters"]["errors"] == 3


def test_the_bench_faults_scenario_keeps_the_question(tmp_path: Path) -> None:
    # examples/scenarios/faults.toml rate-limits the first two signed-URL requests (Retry-After 3 s):
    # the press's connection is retried after the bundled question is over, and it must still arrive.
    from device.cli import main

    out = tmp_path / "bench"
    main(["bench", "--scenario", str(EXAMPLES / "faults.toml"), "--no-progress", "--out", str(out)])
    doc = json.loads((out / "report.json").read_text())
    user_pcm, info = wavfile.read_wav(out / "user_audio.wav")
    assert info.rate_hz == RATE_HZ
    assert doc["press_to_first_frame_sent_ms"]
    assert doc["press_to_first_frame_sent_ms"][0] > 1000  # it was retried
    assert samples_equal_somewhere(question(), user_pcm)  # every sample of the question reached the agent
    users = [t["text"] for t in doc["transcript"] if t["role"] == "user"]
    assert users[:2] == ["Hello?", "Still there?"]  # the question and the barge-in were both heard


def test_voice_mode_speech_between_attempts_is_gated_held_and_heard(tmp_path: Path) -> None:
    # No button held: between the attempts the voice gate itself must keep working.
    q = speech("What are the opening hours of the museum today?")
    scenario = fast_scenario(faults=(Fault(kind="refuse_upgrade", status=503, count=1),))
    gate = GateConfig(mode="voice", preroll_ms=250, hangover_ms=500)
    session = SessionConfig(retry_initial_s=0.5, retry_max_s=1.0)
    with Rig(tmp_path, silence(LEAD_S) + q + silence(8.0), scenario, gate=gate, session=session) as rig:
        rig.press_at(PRESS_S)
        rig.button.drive_high()  # a click starts the conversation; the voice gate decides what is heard
        rig.wait_state("error")
        rig.wait_state("listening")
        rig.wait_state("thinking")  # the hang-over ran out after the question
        record = rig.emu.wait_until(lambda c: bool(c) and bool(c[-1].turns), WAIT_S, "a user turn")[-1]
        heard = record.user_audio_pcm
    assert samples_equal_somewhere(q, heard)
    assert record.turns[0].user_transcript


class RateLimitedOnce(LocalHttp):
    """get-signed-url that answers the first request 429 with ``retry_after``, then with the emulator's signed URL."""

    def __init__(self, retry_after: str, mint: Any) -> None:
        self.requests = 0
        self.cond = threading.Condition()
        outer = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                with outer.cond:
                    outer.requests += 1
                    n = outer.requests
                    outer.cond.notify_all()
                if n == 1:
                    body = json.dumps({"detail": {"status": "rate_limited", "message": "slow down"}}).encode()
                    self.send_body(429, body, {"Retry-After": retry_after})
                else:
                    self.send_body(200, json.dumps({"signed_url": mint()}).encode())

        super().__init__(Handler, "test-rate-limit")


class RateLimitedRig(Rig):
    """The rig with get-signed-url served by a :class:`RateLimitedOnce` in front of the emulator."""

    def __init__(self, tmp: Path, retry_after: str, **kw: Any) -> None:
        super().__init__(tmp, silence(20.0), **kw)
        self.rest = RateLimitedOnce(retry_after, lambda: self.emu.signed_url())

    def config(self) -> Config:
        cfg = super().config()
        return replace(cfg, agent=replace(cfg.agent, base_url=f"http://127.0.0.1:{self.rest.port}"))

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            self.rest.close()


@pytest.mark.parametrize("retry_after", ["inf", "nan", "-5", "3600", "Fri, 31 Dec 9999 23:59:59 GMT"])
def test_a_rate_limited_connection_is_retried_within_retry_max_s_whatever_retry_after_says(
    tmp_path: Path, retry_after: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="device.app.controller")
    session = SessionConfig(retry_initial_s=0.2, retry_max_s=1.0)
    with RateLimitedRig(tmp_path, retry_after, session=session, agent={"prefetch_signed_url": False}) as rig:
        rig.press_at(PRESS_S)
        rig.wait_state("error")  # the signed URL was refused with the hostile Retry-After ...
        rig.wait_state("listening")  # ... and the retry came, and connected (an hour's wait would time out here)
        rig.button.drive_high()
        rig.d.command("stop")
    assert rig.rest.requests == 2
    errors = [r.getMessage() for r in caplog.records if "rate limiting" in r.getMessage()]
    assert len(errors) == 1, errors
    assert not re.search(r"\b(inf|nan)\b", errors[0]), errors
    waited = re.search(r"\(trying again in ([0-9.]+) s\)", errors[0])
    assert waited is not None, errors[0]
    assert float(waited.group(1)) <= 1.0, errors[0]
