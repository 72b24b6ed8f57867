"""The microphone path with the kiosk's echo canceller: the guard while it learns, and voice barge-ins."""

from __future__ import annotations

from array import array

from device.core.config import GateConfig
from device.core.duplex import FrameLevels
from device.core.gate import BLOCK_S, Gate
from device.core.machine import Kind, State
from device.core.micpath import MicPath
from tests.unit.core.test_micpath import LOUD, SPEECH, LoudVad, N, Rig, samples

ECHO = (-30.0, -80.0, -25.0)  # near, out, ref: the canceller takes the echo off
DOUBLE_TALK = (-24.0, -28.0, -25.0)  # the user over the agent: the voice stays
FRAMES = N // 160


class FakeCanceller:
    """Passes the audio through and reports the levels the test sets, per 10 ms frame."""

    def __init__(self) -> None:
        self.levels: list[tuple[float, float, float]] = [ECHO] * FRAMES
        self.seqs: list[int] = []

    def cancel(self, pcm: bytes, captured_at_s: float, seq: int) -> tuple[bytes, list[FrameLevels]]:
        self.seqs.append(seq)
        start = captured_at_s - BLOCK_S
        return pcm, [FrameLevels(start + (i + 1) * 0.01, *lv) for i, lv in enumerate(self.levels)]

    @property
    def stats(self) -> dict[str, float]:
        return {}


def duplex_rig(voice_barge_in_ms: int) -> tuple[Rig, FakeCanceller]:
    cfg = GateConfig(mode="always_open", barge_in="voice", echo_tail_ms=0, voice_barge_in_ms=voice_barge_in_ms)
    rig = Rig(cfg)
    canceller = FakeCanceller()
    rig.mic = MicPath(Gate(cfg, LoudVad(), echo_cancelled=True), 10.0, echo_canceller=canceller,
                      double_talk_vad=LoudVad())
    rig.converse()
    rig.feed(Kind.REPLY_STARTED)
    assert rig.machine.state is State.SPEAKING
    rig.mic.reply_audible(rig.now, True)
    return rig, canceller


def test_the_canceller_sees_every_block_and_comes_before_the_gate() -> None:
    rig, canceller = duplex_rig(0)
    rig.block()
    rig.block()
    assert canceller.seqs == [rig.seq - 1, rig.seq]


def test_while_the_canceller_learns_the_echo_guard_holds_then_the_agent_hears_the_room() -> None:
    rig, _ = duplex_rig(0)
    for _ in range(7):  # a fresh canceller proves itself for 2 s of the speaker's sound (200 frames)
        rig.block(SPEECH)
        assert set(samples(rig.sent[-1])) == {0}, "the agent heard its own voice while the canceller learnt"
    rig.block(SPEECH)  # its last 25 frames complete the proof
    assert samples(rig.sent[-1]) == [LOUD] * N  # converged: the agent's VAD judges the cancelled microphone


def test_the_guard_comes_back_when_the_speaker_starts_again_and_needs_a_shorter_proof() -> None:
    rig, _ = duplex_rig(0)
    for _ in range(9):
        rig.block(SPEECH)
    rig.mic.reply_audible(rig.now, False)
    rig.mic.reply_audible(rig.now, True)  # a new stretch: the echo's delay may have moved
    rig.block(SPEECH)
    assert set(samples(rig.sent[-1])) == {0}
    rig.block(SPEECH)  # 50 frames of proof
    rig.block(SPEECH)
    assert samples(rig.sent[-1]) == [LOUD] * N


def test_with_the_device_judging_the_users_voice_cuts_the_agent_off_from_its_first_syllable() -> None:
    rig, canceller = duplex_rig(120)
    for _ in range(9):
        heard = rig.block(SPEECH)
        assert heard is not None and heard.voice_barge_in_s is None
        assert set(samples(rig.sent[-1])) == {0}  # the device judges: the guard holds until it does
    canceller.levels = [ECHO] * (FRAMES - 6) + [DOUBLE_TALK] * 6  # the user begins 60 ms before the end
    heard = rig.block(SPEECH)
    assert heard is not None and heard.voice_barge_in_s is None  # 60 ms: not yet
    sent_before = len(rig.sent)
    canceller.levels = [DOUBLE_TALK] * FRAMES
    heard = rig.block(SPEECH)
    assert heard is not None and heard.voice_barge_in_s is not None
    new = rig.sent[sent_before:]
    assert [c.seq for c in new] == [rig.seq - 1, rig.seq]  # the previous block again, from the onset
    replay = samples(new[0])
    assert replay[: N - 6 * 160] == [0] * (N - 6 * 160) and replay[N - 6 * 160 :] == [LOUD] * (6 * 160)
    assert samples(new[1]) == [LOUD] * N
    assert rig.mic.audit.barge_ins == 1


def test_a_voice_barge_in_nobody_confirms_is_counted_false() -> None:
    rig, canceller = duplex_rig(120)
    for _ in range(9):
        rig.block(SPEECH)
    canceller.levels = [DOUBLE_TALK] * FRAMES
    heard = rig.block(SPEECH)
    assert heard is not None and heard.voice_barge_in_s is not None
    t = heard.voice_barge_in_s
    assert rig.mic.false_barge_ins(t + 1.0) == 0
    assert rig.mic.false_barge_ins(t + 10.0) == 1


def test_in_push_to_talk_the_voice_never_cuts_the_agent_off() -> None:
    cfg = GateConfig(mode="push_to_talk", barge_in="voice", voice_barge_in_ms=120)
    rig = Rig(cfg)
    canceller = FakeCanceller()
    rig.mic = MicPath(Gate(cfg, LoudVad(), echo_cancelled=True), 10.0, echo_canceller=canceller,
                      double_talk_vad=LoudVad())
    rig.converse()
    rig.mic.release(rig.now)
    rig.feed(Kind.REPLY_STARTED)
    rig.mic.reply_audible(rig.now, True)
    for _ in range(9):
        rig.block(SPEECH)
    canceller.levels = [DOUBLE_TALK] * FRAMES
    heard = rig.block(SPEECH)
    assert heard is not None and heard.voice_barge_in_s is None  # someone talking near a push-to-talk kiosk
    assert array("h", rig.sent[-1].pcm).count(0) == N
