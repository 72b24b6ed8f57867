"""The microphone path (pure): a captured block in; what the agent gets, what is held, what was heard.

Every block that is used passes these stages once, in order:

1. **echo cancellation** (``echo_canceller``, an :class:`EchoCanceller`;
   :class:`device.drivers.aec.EchoCanceller`): the speaker's sound taken out of
   the microphone's, against what playback handed ALSA. It sits first so that
   every later stage hears the room rather than the agent. With
   ``barge_in = "voice"`` the echo guard gives way once the canceller has the
   echo of what plays (:class:`device.core.duplex.Convergence`) and the agent
   service judges; with ``gate.voice_barge_in_ms`` the device judges instead
   (:class:`device.core.duplex.VoiceBargeIn`, experimental).
2. **noise suppression / automatic gain** (``noise_gain``, a :class:`Processor`;
   the engine's wrapper is :class:`device.drivers.dsp.NoiseGain`).
3. **the wake-word detector** (``detector``, a :class:`WakeWordDetector`;
   :class:`device.drivers.wake.WakeDetector`), in ``gate.mode = "wake_word"``.
4. **the gate** (:class:`device.core.gate.Gate`): what the agent hears, the
   user's turns, the echo guard while the speaker plays.
5. **held audio** (:class:`HeldAudio`): until a connection attempt succeeds, a
   copy of what was sent, for the automatic retry of that attempt.

The engines are injected, so this module imports none of them. The machine's
state is read from a :class:`MachineView` (the :class:`device.core.machine.Machine`
itself). A wake word changes that state inside a block — the words after it
belong to the conversation it starts — so :meth:`MicPath.process` hands the
detection to its caller (who feeds the machine) before it gates the rest of
the block; and because the user's first words can start a conversation too,
:meth:`MicPath.route` decides what is sent and held after the caller has fed
the turn's start to the machine.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from device.core.audioformat import CAPTURE_RATE_HZ
from device.core.duplex import BargeIn, BargeInAudit, Convergence, FrameLevels, VoiceBargeIn
from device.core.events import BlockEvent
from device.core.gate import VAD_FRAME_SAMPLES, Chunk, Gate, GateOutput, Vad
from device.core.machine import CONVERSATION, State

# The cue that answers a wake word: the user goes on talking over it ("hey jarvis, when does ..."),
# so it does not close the echo guard.
WAKE_CUE = "listening"


class Processor(Protocol):
    """A stage that rewrites a block (same length): noise suppression, gain."""

    def process(self, pcm: bytes) -> bytes: ...


class EchoCanceller(Protocol):
    """What the path needs of :class:`device.drivers.aec.EchoCanceller`."""

    def cancel(self, pcm: bytes, captured_at_s: float, seq: int) -> tuple[bytes, list[FrameLevels]]: ...
    @property
    def stats(self) -> dict[str, float]:
        """For the status: echo_reduction_db, echo_delay_ms."""
        ...


class Detection(Protocol):
    """The wake word ended ``offset_samples`` into the block."""

    @property
    def offset_samples(self) -> int: ...
    @property
    def score(self) -> float: ...


class ModelInfo(Protocol):
    @property
    def name(self) -> str: ...


class WakeWordDetector(Protocol):
    """What the path needs of :class:`device.drivers.wake.WakeDetector`."""

    @property
    def info(self) -> ModelInfo: ...
    def process(self, pcm: bytes, captured_at_s: float) -> Detection | None: ...
    def reset(self) -> None: ...
    def close(self) -> None: ...


class MachineView(Protocol):
    """What the path reads of :class:`device.core.machine.Machine`."""

    @property
    def state(self) -> State: ...
    @property
    def between_attempts(self) -> bool: ...


@dataclass(frozen=True)
class WakeWord:
    """The wake word was heard, and it acts: it starts a conversation or barges in."""

    t_s: float  # where it ended (the user's words start there)
    score: float
    model: str
    starts_conversation: bool  # heard while idle (else: while the agent speaks)


@dataclass(frozen=True)
class Heard:
    """What the gate made of one block."""

    gated: GateOutput
    activity: bool  # the user is speaking (keeps the idle timeout from firing)
    voice_barge_in_s: float | None = None  # the user talked over the agent: when the rule was met


@dataclass(frozen=True)
class Route:
    """Where a block's chunks go: to the session, and the microphone seconds the held copy dropped."""

    send: tuple[Chunk, ...]
    dropped_s: float


@dataclass(frozen=True)
class Settled:
    """What a change of state did to the path."""

    lost_s: float  # the user's speech no connection attempt delivered (every one failed, or given up)
    false_wake: bool  # the conversation a wake word started ended without a word from the user


class HeldAudio:
    """What the gate produced since the press, until a connection attempt succeeds (pure).

    A session holds the audio captured before its socket opens, but a session
    whose attempt fails takes it along. This copy lets an automatic retry hand
    the whole question to the next session. Bounded like the session's send
    backlog (``session.send_backlog_s``): beyond it the oldest is dropped.
    Amounts are seconds of microphone audio (chunks the gate let through).
    """

    def __init__(self, max_s: float) -> None:
        self._max_bytes = int(max_s * CAPTURE_RATE_HZ) * 2
        self._chunks: collections.deque[Chunk] = collections.deque()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._chunks)

    @property
    def chunks(self) -> tuple[Chunk, ...]:
        return tuple(self._chunks)

    def add(self, chunk: Chunk) -> float:
        """Keep ``chunk``; returns the microphone seconds dropped to stay within the bound."""
        self._chunks.append(chunk)
        self._bytes += len(chunk.pcm)
        dropped_s = 0.0
        while self._bytes > self._max_bytes and len(self._chunks) > 1:
            dropped_s += self._pop()
        return dropped_s

    def clear(self) -> float:
        """Forget everything (delivered, or given up); returns the microphone seconds in it."""
        dropped_s = 0.0
        while self._chunks:
            dropped_s += self._pop()
        return dropped_s

    def _pop(self) -> float:
        old = self._chunks.popleft()
        self._bytes -= len(old.pcm)
        return len(old.pcm) / 2 / CAPTURE_RATE_HZ if old.open else 0.0


class MicPath:
    """Blocks from the microphone to the agent; owned by the controller thread (no locking).

    ``held_max_s`` bounds the held copy like the session's send backlog
    (``session.send_backlog_s``).
    """

    def __init__(
        self,
        gate: Gate,
        held_max_s: float,
        *,
        noise_gain: Processor | None = None,
        detector: WakeWordDetector | None = None,
        echo_canceller: EchoCanceller | None = None,
        double_talk_vad: Vad | None = None,
    ) -> None:
        """``double_talk_vad`` (a VAD of its own, not the gate's) judges the cancelled audio while the
        agent speaks, for the device-side voice barge-in (``gate.voice_barge_in_ms > 0``)."""
        self.gate = gate
        self.detector = detector
        self.echo_canceller = echo_canceller
        self._stages = tuple(p for p in (noise_gain,) if p is not None)
        self._voice: VoiceBargeIn | None = None
        self._double_talk_vad = double_talk_vad
        if (echo_canceller is not None and double_talk_vad is not None and gate.barge_in == "voice"
                and gate.cfg.voice_barge_in_ms > 0):
            self._voice = VoiceBargeIn(min_ms=gate.cfg.voice_barge_in_ms)
        self.convergence: Convergence | None = None
        if echo_canceller is not None:
            self.convergence = Convergence()
        self.audit = BargeInAudit()
        self._previous: Chunk | None = None  # the last block as the agent would have heard it unguarded
        self._held = HeldAudio(held_max_s)
        self._playing: set[str] = set()  # what the speaker plays now: "reply", "earcon"
        self._detector_seq: int | None = None  # the last block the detector heard
        self._wake_word_seq: int | None = None  # the block this conversation's wake word ended in
        self._question_heard = False  # the user spoke after that wake word

    @property
    def held(self) -> tuple[Chunk, ...]:
        """The audio held for the next connection attempt (an earlier one failed): it goes first."""
        return self._held.chunks

    # -- per block ---------------------------------------------------------------------------------
    def process(
        self, block: BlockEvent, machine: MachineView, on_wake_word: Callable[[WakeWord], None]
    ) -> Heard | None:
        """Run one block through the stages; None when it goes nowhere.

        ``on_wake_word`` is called when a wake word acts; it feeds the machine, and the rest of the
        block is gated in the state that left.
        """
        state = machine.state
        listening_idle = state is State.IDLE and self.gate.cfg.start_on_speech
        attempting = state in CONVERSATION or machine.between_attempts
        detector_hears = self._detector_hears(state)
        if not attempting and not listening_idle and not self.gate.talking and not detector_hears:
            return None  # nothing runs and nothing could start: the microphone goes nowhere
        pcm = block.pcm
        levels: list[FrameLevels] = []
        if self.echo_canceller is not None:
            pcm, levels = self.echo_canceller.cancel(pcm, block.captured_at_s, block.seq)
            if self.convergence is not None and self.convergence.feed(levels):
                self.gate.set_echo_free(True)  # from this block on, the echo guard may give way
        cancelled = pcm
        for stage in self._stages:
            pcm = stage.process(pcm)
        if detector_hears:
            word = self._listen(pcm, block, machine)
            if word is not None:
                on_wake_word(word)
                if machine.state in CONVERSATION:
                    if word.starts_conversation:
                        self._wake_word_seq, self._question_heard = block.seq, False
                    self.gate.wake_word_ended(word.t_s)
            elif machine.state is State.IDLE:
                return None  # idle, no wake word: nothing leaves the device
        barge_in = self._voice_over_agent(cancelled, levels, machine)
        if barge_in is not None:
            self.gate.barged_in(barge_in.onset_s)  # the user's words from their first syllable on
        out = self.gate.process(pcm, block.captured_at_s, block.seq)
        if barge_in is not None:
            out = self._with_onset(out, barge_in.onset_s, block)
        self._previous = Chunk(pcm, block.captured_at_s, block.seq, True)
        if out.speech and self._wake_word_seq is not None and block.seq > self._wake_word_seq:
            self._question_heard = True
        if out.speech:
            self.audit.heard_voice(block.captured_at_s)
        barge_in_s = barge_in.t_s if barge_in is not None else None
        return Heard(out, out.speech or (out.open and self.gate.talking), barge_in_s)

    def _voice_over_agent(self, cancelled: bytes, levels: list[FrameLevels], machine: MachineView) -> BargeIn | None:
        """With voice barge-in: the user has been talking over the agent long enough (else None).

        Only while a reply plays, the canceller has converged on it, and the gate listens without
        the button (push to talk: the button is the way in).
        """
        voice, vad, conv = self._voice, self._double_talk_vad, self.convergence
        if voice is None or vad is None or conv is None:
            return None
        if (machine.state is not State.SPEAKING or "reply" not in self._playing or not conv.converged
                or not self.gate.hands_free):
            voice.reset()
            return None
        frame = VAD_FRAME_SAMPLES * 2
        speech = [vad.is_speech(cancelled[i * frame : (i + 1) * frame]) for i in range(len(levels))]
        barge_in = voice.feed(levels, speech)
        if barge_in is not None:
            self.audit.barged_in(barge_in.t_s)
        return barge_in

    def _with_onset(self, out: GateOutput, onset_s: float, block: BlockEvent) -> GateOutput:
        """The user's first words may lie in the previous block, which the guard kept from the agent:
        send them again, from the onset on, before this block."""
        prev = self._previous
        if prev is None or prev.seq != block.seq - 1 or onset_s >= prev.captured_at_s:
            return out
        n = len(prev.pcm) // 2
        start_s = prev.captured_at_s - n / CAPTURE_RATE_HZ
        first = max(0, min(n, round((onset_s - start_s) * CAPTURE_RATE_HZ)))
        pcm = bytes(2 * first) + prev.pcm[2 * first :]
        return dataclasses.replace(out, chunks=(Chunk(pcm, prev.captured_at_s, prev.seq, True), *out.chunks))

    def route(self, chunks: tuple[Chunk, ...], machine: MachineView) -> Route:
        """Hold ``chunks`` until a connection attempt succeeds; send them while a conversation runs."""
        dropped_s = 0.0
        if machine.state is State.CONNECTING or machine.between_attempts:
            for chunk in chunks:
                dropped_s += self._held.add(chunk)
        return Route(chunks if machine.state in CONVERSATION else (), dropped_s)

    def _detector_hears(self, state: State) -> bool:
        """The detector hears this block: idle (to start), and with barge-in by wake word the whole
        conversation (it acts only while the agent speaks, but keeps hearing so that it is not deaf
        while its model's context -- over a second of audio -- fills again)."""
        if self.detector is None or self.gate.muted:
            return False
        return state is State.IDLE or (state in CONVERSATION and self.gate.barge_in == "wake_word")

    def _listen(self, pcm: bytes, block: BlockEvent, machine: MachineView) -> WakeWord | None:
        assert self.detector is not None
        if self._detector_seq is not None and block.seq != self._detector_seq + 1:
            # The detector did not hear the blocks in between (a conversation, mute): what it still
            # holds is old audio -- e.g. the wake word that started this conversation -- not the room now.
            self.detector.reset()
        self._detector_seq = block.seq
        detection = self.detector.process(pcm, block.captured_at_s)
        if detection is None or machine.state not in (State.IDLE, State.SPEAKING):
            return None
        n = len(pcm) // 2
        t_s = block.captured_at_s - (n - detection.offset_samples) / CAPTURE_RATE_HZ
        return WakeWord(t_s, detection.score, self.detector.info.name, machine.state is State.IDLE)

    # -- the rest of the world ---------------------------------------------------------------------
    def settle(self, before: State, machine: MachineView, now_s: float) -> Settled:
        """The machine left ``before``: the held audio was delivered, still waits or is lost; out of
        the conversation the gate closes and the detector starts afresh."""
        state = machine.state
        running = state in CONVERSATION or machine.between_attempts
        lost_s = 0.0
        if state is State.LISTENING and before is State.CONNECTING:
            self._held.clear()  # the connected session holds it now and sends it first
        elif state is not State.CONNECTING and not machine.between_attempts:
            lost_s = self._held.clear()  # every attempt failed (or the press was given up)
        false_wake = False
        if not running:
            false_wake = self._wake_word_seq is not None and not self._question_heard
            self._wake_word_seq = None
            if self.detector is not None:
                self.detector.reset()
        if running:
            # Between automatic attempts the press goes on: a held button keeps the gate open.
            self.gate.set_active(True)
        else:
            self.gate.reset(now_s)
        return Settled(lost_s, false_wake)

    def user_spoke(self) -> None:
        """The service heard the user say something (a final transcript): a wake word led to a question,
        a voice barge-in was the user's."""
        self._question_heard = True
        self.audit.user_spoke()

    def false_barge_ins(self, now_s: float) -> int:
        """Voice barge-ins that just turned out false: the service heard no words after them."""
        return self.audit.due(now_s)

    def press(self, t_s: float) -> bool | None:
        """The logical button went down; True when it opened the talk intent, False when it closed it."""
        return self.gate.press(t_s)

    def release(self, t_s: float) -> bool | None:
        return self.gate.release(t_s)

    def set_muted(self, t_s: float, muted: bool) -> None:
        self.gate.set_muted(t_s, muted)

    def reply_audible(self, t_s: float, playing: bool) -> None:
        """The agent's reply became audible, or played out."""
        self._audible(t_s, "reply", playing)

    def earcon_audible(self, t_s: float, name: str, playing: bool) -> None:
        """A cue began or ended: it is kept out of the microphone like the agent's voice -- except the
        cue that answers a wake word."""
        if not (self.detector is not None and name == WAKE_CUE):
            self._audible(t_s, "earcon", playing)

    def flushed(self, t_s: float) -> None:
        """The speaker's queue was dropped (replies and queued cues alike): the echo guard ends now."""
        self._playing.clear()
        self.gate.agent_stopped(t_s, flushed=True)

    def _audible(self, t_s: float, source: str, playing: bool) -> None:
        """The echo guard follows the union of what plays."""
        was = bool(self._playing)
        if playing:
            self._playing.add(source)
        else:
            self._playing.discard(source)
        if self._playing and not was:
            self.gate.agent_started(t_s)
            if self.convergence is not None:  # the echo's delay may have moved: prove the canceller again
                self.convergence.restart()
                self.gate.set_echo_free(False)
        elif was and not self._playing:
            self.gate.agent_stopped(t_s)

    def close(self) -> None:
        if self.detector is not None:
            self.detector.close()
