"""The microphone path: blocks in, what the agent gets out (a fake clock, a fake VAD, a fake wake-word engine)."""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field

import pytest

from device.core.config import GateConfig, SessionConfig
from device.core.duplex import FrameLevels
from device.core.events import BlockEvent
from device.core.gate import BLOCK_S, Chunk, Gate
from device.core.machine import Action, Input, Kind, Machine, MachineSettings, State
from device.core.micpath import Heard, HeldAudio, MicPath, Settled, WakeWord

N = 4000  # samples per block
LOUD = 1000  # a sample the fake VAD hears as speech
WAKE = 7  # a sample the fake detector hears as the wake word (too quiet to be speech)
WAKE_ENDS_AT = 2000  # where in its block the wake word ends


def pcm(*parts: tuple[int, int]) -> bytes:
    """Blocks of (value, count) runs."""
    return array("h", [v for value, n in parts for v in [value] * n]).tobytes()


SPEECH = pcm((LOUD, N))
SILENCE = pcm((0, N))
WAKE_THEN_SPEECH = pcm((WAKE, WAKE_ENDS_AT), (LOUD, N - WAKE_ENDS_AT))


def samples(chunk: Chunk) -> list[int]:
    return list(array("h", chunk.pcm))


class LoudVad:
    """Speech is any frame with a sample at or over ``LOUD``."""

    def is_speech(self, frame: bytes) -> bool:
        return max(array("h", frame)) >= LOUD


def make_gate(cfg: GateConfig) -> Gate:
    return Gate(cfg, LoudVad())


@dataclass
class FakeDetection:
    offset_samples: int
    score: float


@dataclass
class FakeModel:
    name: str = "hey_test"


@dataclass
class FakeDetector:
    """Hears the wake word in a block that starts with WAKE samples."""

    info: FakeModel = field(default_factory=FakeModel)
    heard: list[int] = field(default_factory=list)  # the first sample of every block fed
    resets: int = 0
    closed: bool = False

    def process(self, pcm: bytes, captured_at_s: float) -> FakeDetection | None:
        first = array("h", pcm[:2])[0]
        self.heard.append(first)
        return FakeDetection(WAKE_ENDS_AT, 0.9) if first == WAKE else None

    def reset(self) -> None:
        self.resets += 1

    def close(self) -> None:
        self.closed = True


@dataclass
class Recorder:
    """A processor stage that writes down what it saw and adds ``add`` to every sample."""

    name: str
    log: list[str]
    add: int = 0

    def process(self, pcm: bytes) -> bytes:
        self.log.append(self.name)
        return array("h", (s + self.add for s in array("h", pcm))).tobytes()

    def cancel(self, pcm: bytes, captured_at_s: float, seq: int) -> tuple[bytes, list[FrameLevels]]:
        return self.process(pcm), []

    @property
    def stats(self) -> dict[str, float]:
        return {}


class Rig:
    """The controller's part, by hand: feed the machine, settle the path on every change, route the chunks."""

    def __init__(
        self,
        gate: GateConfig,
        session: SessionConfig | None = None,
        detector: FakeDetector | None = None,
        held_max_s: float = 10.0,
        **stages: Recorder,
    ) -> None:
        session = session or SessionConfig()
        self.machine = Machine(MachineSettings(session, gate.barge_in, gate.start_on_speech), 0.0)
        self.mic = MicPath(make_gate(gate), held_max_s, detector=detector, **stages)
        self.seq = 0
        self.sent: list[Chunk] = []
        self.dropped_s = 0.0
        self.words: list[WakeWord] = []
        self.settled: list[Settled] = []
        self.activity = 0

    @property
    def now(self) -> float:
        return self.seq * BLOCK_S  # the start of the next block

    def feed(self, kind: Kind, **event: object) -> list[Action]:
        before = self.machine.state
        actions = self.machine.handle(Input(kind, **event), self.now)  # type: ignore[arg-type]
        if Action.FLUSH in actions:
            self.mic.flushed(self.now)
        if self.machine.state is not before:
            self.settled.append(self.mic.settle(before, self.machine, self.now))
        return actions

    def poll(self, now_s: float) -> None:
        before = self.machine.state
        self.machine.poll(now_s)
        if self.machine.state is not before:
            self.settled.append(self.mic.settle(before, self.machine, now_s))

    def press(self) -> None:
        self.mic.press(self.now)
        self.feed(Kind.PRESS)

    def block(self, audio: bytes = SPEECH) -> Heard | None:
        self.seq += 1
        heard = self.mic.process(BlockEvent(audio, self.seq, self.now), self.machine, self.on_wake_word)
        if heard is None:
            return None
        if heard.gated.turn_started:
            self.feed(Kind.TURN_START)
        route = self.mic.route(heard.gated.chunks, self.machine)
        self.sent += route.send
        self.dropped_s += route.dropped_s
        self.activity += heard.activity
        return heard

    def on_wake_word(self, word: WakeWord) -> None:
        self.words.append(word)
        self.feed(Kind.WAKE_WORD)

    def converse(self) -> None:
        self.press()
        self.feed(Kind.CONNECTED)


PTT = GateConfig(mode="push_to_talk")
OPEN = GateConfig(mode="always_open", barge_in="none", echo_tail_ms=0)
HANDS_FREE = GateConfig(mode="wake_word", after_wake="voice", preroll_ms=0, hangover_ms=500)


# -- what runs ---------------------------------------------------------------------------------------


def test_idle_the_microphone_goes_nowhere_and_is_not_even_processed() -> None:
    log: list[str] = []
    rig = Rig(PTT, noise_gain=Recorder("ns", log))
    assert rig.block() is None
    assert log == [] and rig.sent == []


def test_echo_cancellation_comes_before_noise_suppression() -> None:
    log: list[str] = []
    rig = Rig(PTT, echo_canceller=Recorder("aec", log), noise_gain=Recorder("ns", log, add=1))
    rig.converse()
    rig.block(SPEECH)
    assert log == ["aec", "ns"]
    assert samples(rig.sent[-1])[0] == LOUD + 1  # the agent gets the processed audio


# -- held audio across a retried first connection ------------------------------------------------------


def test_the_presss_audio_is_held_across_a_retried_connection_and_goes_first_to_the_next_attempt() -> None:
    rig = Rig(PTT, SessionConfig(retry_attempts=1, retry_initial_s=0.5, retry_max_s=0.5))
    rig.press()
    rig.block()
    rig.block()
    rig.feed(Kind.FAILED, retryable=True, message="network down")
    assert rig.machine.between_attempts
    rig.block()  # still the user's question, though no session runs
    assert [c.seq for c in rig.mic.held] == [1, 2, 3]
    assert [c.seq for c in rig.sent] == [1, 2]  # the failed attempt got what arrived while it ran
    assert rig.settled[-1].lost_s == 0.0


def test_the_next_attempt_keeps_holding_until_it_connects() -> None:
    rig = Rig(PTT, SessionConfig(retry_attempts=1, retry_initial_s=0.5, retry_max_s=0.5))
    rig.press()
    rig.block()
    rig.feed(Kind.FAILED, retryable=True)
    rig.poll(rig.machine.deadline_s)  # type: ignore[arg-type]  # the retry: connecting again
    assert rig.machine.state is State.CONNECTING
    rig.block()
    assert [c.seq for c in rig.mic.held] == [1, 2]
    rig.feed(Kind.CONNECTED)
    assert rig.mic.held == ()  # delivered: the connected session sends it first
    assert rig.settled[-1].lost_s == 0.0


def test_held_audio_that_no_attempt_delivered_is_counted_as_lost() -> None:
    rig = Rig(PTT)
    rig.press()
    rig.block()
    rig.block()
    rig.feed(Kind.FAILED, retryable=False, message="key rejected")
    assert rig.settled[-1].lost_s == pytest.approx(2 * BLOCK_S)
    assert rig.mic.held == ()


def test_dropped_seconds_are_counted_at_the_bound() -> None:
    rig = Rig(PTT, held_max_s=2 * BLOCK_S)
    rig.press()
    for _ in range(5):
        rig.block()
    assert rig.dropped_s == pytest.approx(3 * BLOCK_S)
    assert [c.seq for c in rig.mic.held] == [4, 5]


def test_held_audio_keeps_every_chunk_in_order_and_counts_only_microphone_audio_when_cleared() -> None:
    held = HeldAudio(max_s=10.0)
    chunks = [chunk(0, open_=False), chunk(1), chunk(2), chunk(3, open_=False)]
    assert [held.add(c) for c in chunks] == [0.0] * 4
    assert held.chunks == tuple(chunks)
    assert held.clear() == pytest.approx(0.5)  # two open chunks; zeros from a closed gate are not speech
    assert len(held) == 0 and held.clear() == 0.0


def test_held_audio_is_bounded_like_the_send_backlog_dropping_the_oldest() -> None:
    held = HeldAudio(max_s=1.0)  # four 250 ms chunks
    dropped = [held.add(chunk(i)) for i in range(6)]
    assert dropped == [0.0, 0.0, 0.0, 0.0, pytest.approx(0.25), pytest.approx(0.25)]
    assert [c.seq for c in held.chunks] == [2, 3, 4, 5]


def chunk(seq: int, open_: bool = True, seconds: float = 0.25) -> Chunk:
    return Chunk(bytes([1, 0]) * int(16000 * seconds), captured_at_s=seq * seconds, seq=seq, open=open_)


# -- the wake word -----------------------------------------------------------------------------------------


def test_idle_speech_without_the_wake_word_is_heard_by_the_detector_only() -> None:
    detector = FakeDetector()
    rig = Rig(HANDS_FREE, detector=detector)
    assert rig.block(SPEECH) is None
    assert detector.heard == [LOUD] and rig.sent == [] and rig.machine.state is State.IDLE


def test_the_wake_word_starts_a_conversation() -> None:
    rig = Rig(HANDS_FREE, detector=FakeDetector())
    rig.block(WAKE_THEN_SPEECH)
    [word] = rig.words
    assert word.starts_conversation and word.model == "hey_test" and word.score == 0.9
    assert word.t_s == pytest.approx(rig.now - (N - WAKE_ENDS_AT) / 16000)  # where in the block it ended
    assert rig.machine.state is State.CONNECTING and rig.machine.display == "woken"


def test_the_words_after_the_wake_word_in_its_block_are_sent_and_the_wake_word_is_not() -> None:
    rig = Rig(HANDS_FREE, detector=FakeDetector())
    rig.block(WAKE_THEN_SPEECH)
    [first] = rig.sent
    assert samples(first) == [0] * WAKE_ENDS_AT + [LOUD] * (N - WAKE_ENDS_AT)
    assert [c.seq for c in rig.mic.held] == [first.seq]  # held too, for a retry of this first connection


def test_a_wake_word_nobody_follows_is_a_false_wake_when_the_conversation_ends() -> None:
    rig = Rig(HANDS_FREE, detector=FakeDetector())
    rig.block(pcm((WAKE, N)))  # the wake word, then nothing
    rig.feed(Kind.CONNECTED)
    rig.block(SILENCE)
    rig.feed(Kind.STOP)
    assert rig.settled[-1].false_wake


def test_a_wake_word_followed_by_a_question_is_no_false_wake() -> None:
    rig = Rig(HANDS_FREE, detector=FakeDetector())
    rig.block(pcm((WAKE, N)))
    rig.feed(Kind.CONNECTED)
    rig.block(SPEECH)
    rig.feed(Kind.STOP)
    assert not rig.settled[-1].false_wake


def test_a_question_the_service_heard_counts_though_the_vad_did_not() -> None:
    rig = Rig(HANDS_FREE, detector=FakeDetector())
    rig.block(pcm((WAKE, N)))
    rig.feed(Kind.CONNECTED)
    rig.mic.user_spoke()
    rig.feed(Kind.STOP)
    assert not rig.settled[-1].false_wake


def test_the_detector_starts_afresh_after_the_conversation() -> None:
    detector = FakeDetector()
    rig = Rig(HANDS_FREE, detector=detector)
    rig.block(WAKE_THEN_SPEECH)
    rig.feed(Kind.STOP)
    assert detector.resets == 1
    rig.block(SILENCE)  # the next block follows on: nothing else to forget
    assert detector.resets == 1


def test_the_detector_forgets_old_audio_when_it_missed_blocks() -> None:
    detector = FakeDetector()
    rig = Rig(HANDS_FREE, detector=detector)
    rig.block(SILENCE)
    rig.seq += 3  # three blocks went elsewhere
    rig.block(SILENCE)
    assert detector.resets == 1


def test_barge_in_by_wake_word_acts_only_while_the_agent_speaks() -> None:
    detector = FakeDetector()
    rig = Rig(GateConfig(mode="wake_word", barge_in="wake_word", preroll_ms=0), detector=detector)
    rig.block(pcm((WAKE, N)))
    rig.feed(Kind.CONNECTED)
    rig.block(pcm((WAKE, N)))  # listening: the detector hears it, nothing happens
    assert len(detector.heard) == 2 and len(rig.words) == 1 and rig.machine.state is State.LISTENING
    rig.feed(Kind.TURN_END)
    rig.feed(Kind.REPLY_STARTED)
    rig.block(WAKE_THEN_SPEECH)
    assert len(rig.words) == 2 and not rig.words[-1].starts_conversation
    assert rig.machine.state is State.LISTENING  # the reply was flushed: the user's turn


def test_without_barge_in_by_wake_word_the_detector_rests_during_the_conversation() -> None:
    detector = FakeDetector()
    rig = Rig(HANDS_FREE, detector=detector)
    rig.block(pcm((WAKE, N)))
    rig.feed(Kind.CONNECTED)
    rig.feed(Kind.TURN_END)
    rig.feed(Kind.REPLY_STARTED)
    rig.block(WAKE_THEN_SPEECH)
    assert len(detector.heard) == 1 and rig.machine.state is State.SPEAKING


def test_the_path_closes_the_detector() -> None:
    detector = FakeDetector()
    MicPath(make_gate(HANDS_FREE), 1.0, detector=detector).close()
    assert detector.closed


# -- the echo guard ------------------------------------------------------------------------------------


def speaking(gate: GateConfig = OPEN, detector: FakeDetector | None = None) -> Rig:
    rig = Rig(gate, detector=detector)
    rig.converse()
    rig.block()
    return rig


def test_while_the_agent_speaks_the_microphone_sends_zeros_and_is_no_activity() -> None:
    rig = speaking()
    rig.mic.reply_audible(rig.now, True)
    heard = rig.block()
    assert heard is not None and not heard.gated.open and not heard.activity
    assert samples(rig.sent[-1]) == [0] * N  # the stream goes on, without the agent's echo


def test_when_the_reply_has_played_out_the_microphone_opens_again() -> None:
    rig = speaking()
    rig.mic.reply_audible(rig.now, True)
    rig.block()
    rig.mic.reply_audible(rig.now, False)
    rig.block()
    assert samples(rig.sent[-1]) == [LOUD] * N


def test_the_guard_follows_everything_the_speaker_plays() -> None:
    rig = speaking()
    rig.mic.reply_audible(rig.now, True)
    rig.mic.earcon_audible(rig.now, "done", True)
    rig.mic.reply_audible(rig.now, False)  # the cue still plays
    rig.block()
    assert not rig.sent[-1].open


def test_a_cue_closes_the_guard_like_the_agents_voice() -> None:
    rig = speaking()
    rig.mic.earcon_audible(rig.now, "listening", True)
    rig.block()
    assert not rig.sent[-1].open


def test_the_cue_answering_a_wake_word_leaves_the_microphone_open() -> None:
    rig = Rig(GateConfig(mode="wake_word", after_wake="always_open", preroll_ms=0), detector=FakeDetector())
    rig.block(pcm((WAKE, N)))
    rig.feed(Kind.CONNECTED)
    rig.mic.earcon_audible(rig.now, "listening", True)  # the user goes on talking over it
    rig.block()
    assert samples(rig.sent[-1]) == [LOUD] * N


def test_a_flush_ends_the_guard_at_once() -> None:
    rig = speaking(GateConfig(mode="always_open", barge_in="none", echo_tail_ms=3000))
    rig.mic.reply_audible(rig.now, True)
    rig.block()
    rig.mic.flushed(rig.now)  # no echo tail: nothing is left to echo
    rig.block()
    assert samples(rig.sent[-1]) == [LOUD] * N


# -- mute ------------------------------------------------------------------------------------------------


def test_muted_the_conversation_gets_zeros() -> None:
    rig = speaking()
    rig.mic.set_muted(rig.now, True)
    rig.block()
    assert samples(rig.sent[-1]) == [0] * N and not rig.sent[-1].open


def test_muted_the_detector_hears_nothing() -> None:
    detector = FakeDetector()
    rig = Rig(HANDS_FREE, detector=detector)
    rig.mic.set_muted(rig.now, True)
    assert rig.block(pcm((WAKE, N))) is None
    assert detector.heard == [] and rig.words == []


def test_unmuted_the_microphone_is_sent_again() -> None:
    rig = speaking()
    rig.mic.set_muted(rig.now, True)
    rig.block()
    rig.mic.set_muted(rig.now, False)
    rig.block()
    assert samples(rig.sent[-1]) == [LOUD] * N
