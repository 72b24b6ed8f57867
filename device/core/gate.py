"""The gate between microphone and agent (pure: no threads, no I/O).

Per captured block the gate decides what the agent receives: the block, or
zeros of the same length. It never drops a block inside a conversation, so the
stream stays alive (the server hangs up after about 60 s without audio), and
no microphone sample leaves the device while the gate is closed.

Inputs are time-stamped (``time.monotonic()``), and blocks carry the capture
time of their last sample, so a press, a release, a mute or the end of the
agent's audio that falls inside a block takes effect at the right sample:
the words right after a press are sent, the audio right before it is not.

What opens the gate, by mode:

* ``push_to_talk`` — the button is held;
* ``toggle`` — a press opens, the next press closes;
* ``voice`` — the VAD hears speech (with pre-roll and hang-over);
* ``always_open`` — always, during a conversation;
* ``wake_word`` — closed while idle (the wake-word detector listens, nothing
  is sent); a detection (:meth:`Gate.wake`) opens it from the sample where the
  wake word ended, and during that conversation it works like ``after_wake``
  (``voice`` or ``always_open``).

What closes it whatever the mode: mute, and the echo guard — while the agent's
audio is playing (plus ``echo_tail_ms``) unless barge-in is allowed:
``barge_in = "button"`` lets a press/held button through, ``"voice"`` lets the
user's voice through: with the kiosk's echo canceller (:mod:`device.drivers.aec`)
from the moment the device hears the user over the agent (:meth:`Gate.barged_in`),
with a canceller in hardware always (no guard), ``"none"`` keeps it,
``"wake_word"`` keeps it but a wake word ends it (:meth:`Gate.wake`).
"""

from __future__ import annotations

import math
from array import array
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from device.core.audioformat import CAPTURE_BLOCK_FRAMES, CAPTURE_RATE_HZ
from device.core.config import GateConfig
from device.core.speechfloor import NoiseFloor

BYTES_PER_SAMPLE = 2
VAD_FRAME_MS = 10
VAD_FRAME_SAMPLES = CAPTURE_RATE_HZ * VAD_FRAME_MS // 1000
# A block counts as speech when the VAD marks at least this much of it.
SPEECH_MIN_MS = 90
# Keep this much input history for the time-lines (a block is 250 ms).
HISTORY_S = 5.0
SILENCE_DBFS = -120.0
BLOCK_S = CAPTURE_BLOCK_FRAMES / CAPTURE_RATE_HZ

Ranges = list[tuple[int, int]]  # disjoint, sorted [start, end) sample ranges


class Vad(Protocol):
    """Voice activity detection: whether one ``VAD_FRAME_MS`` frame (S16LE mono at the capture rate) is speech.

    :class:`device.drivers.vad.WebrtcVad` on the kiosk; whoever builds the gate passes it in.
    """

    def is_speech(self, frame: bytes) -> bool: ...


class Timeline:
    """A boolean signal over time: a value plus time-stamped changes."""

    def __init__(self, initial: bool = False) -> None:
        self._base = initial
        self._changes: list[tuple[float, bool]] = []

    def set(self, t_s: float, value: bool) -> None:
        """From ``t_s`` on the signal is ``value`` (later scheduled changes are replaced)."""
        while self._changes and self._changes[-1][0] >= t_s:
            self._changes.pop()
        if self.value_at(t_s) != value:
            self._changes.append((t_s, value))

    def value_at(self, t_s: float) -> bool:
        value = self._base
        for when, v in self._changes:
            if when > t_s:
                break
            value = v
        return value

    @property
    def last(self) -> bool:
        return self._changes[-1][1] if self._changes else self._base

    def ranges(self, start_s: float, end_s: float, n: int) -> Ranges:
        """Sample ranges of an ``n``-sample block spanning [start_s, end_s) where the signal is true."""
        out: Ranges = []
        span = end_s - start_s
        value = self.value_at(start_s)
        pos = 0
        for when, v in self._changes:
            if when <= start_s:
                continue
            if when >= end_s:
                break
            idx = min(n, max(0, math.ceil((when - start_s) / span * n)))
            if value and idx > pos:
                out.append((pos, idx))
            value, pos = v, idx
        if value and pos < n:
            out.append((pos, n))
        return _merge(out)

    def prune(self, before_s: float) -> None:
        while self._changes and self._changes[0][0] < before_s:
            self._base = self._changes.pop(0)[1]


def _merge(ranges: Ranges) -> Ranges:
    out: Ranges = []
    for a, b in sorted(r for r in ranges if r[1] > r[0]):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def subtract(keep: Ranges, remove: Ranges) -> Ranges:
    out: Ranges = []
    for a, b in keep:
        cur = a
        for c, d in remove:
            if d <= cur or c >= b:
                continue
            if c > cur:
                out.append((cur, c))
            cur = max(cur, d)
        if cur < b:
            out.append((cur, b))
    return out


def apply_ranges(pcm: bytes, ranges: Ranges) -> bytes:
    """``pcm`` inside ``ranges`` (in samples), zeros elsewhere; same length."""
    n = len(pcm) // BYTES_PER_SAMPLE
    if ranges == [(0, n)]:
        return pcm
    out = bytearray(len(pcm))
    for a, b in ranges:
        out[a * BYTES_PER_SAMPLE:b * BYTES_PER_SAMPLE] = pcm[a * BYTES_PER_SAMPLE:b * BYTES_PER_SAMPLE]
    return bytes(out)


def level_dbfs(pcm: bytes) -> float:
    """RMS level of S16LE samples in dBFS (-120 for digital silence)."""
    samples = array("h", pcm[: len(pcm) // 2 * 2])
    if not samples:
        return SILENCE_DBFS
    mean_sq = sum(s * s for s in samples) / len(samples)
    if mean_sq <= 0:
        return SILENCE_DBFS
    return max(SILENCE_DBFS, 10 * math.log10(mean_sq / (32768.0 * 32768.0)))


@dataclass(frozen=True)
class Chunk:
    """Audio for the agent: ``pcm`` (possibly zeros) captured up to ``captured_at_s``."""

    pcm: bytes
    captured_at_s: float
    seq: int
    open: bool  # carries microphone samples (fully or in part)


@dataclass(frozen=True)
class GateOutput:
    """What one block became, and what the gate noticed in it."""

    chunks: tuple[Chunk, ...]  # in order; pre-roll first when a voice turn starts
    open: bool  # the block itself carries microphone samples
    speech: bool  # the VAD heard speech in what the guard let through
    level_dbfs: float
    turn_started: bool  # voice/always_open: speech began
    turn_ended: bool  # voice/always_open: speech ended (hang-over elapsed)


class Gate:
    """Decides per block what the agent hears. Owned by the controller thread."""

    def __init__(self, cfg: GateConfig, vad: Vad, echo_cancelled: bool = False) -> None:
        """``vad`` judges speech (made with ``cfg.vad_aggressiveness``); ``echo_cancelled``: the
        microphone's audio passes an echo canceller first (decides ``barge_in = "auto"``)."""
        self.cfg = cfg
        self.barge_in = cfg.barge_in
        # barge_in = "voice" with the kiosk's own canceller: the guard holds until the device hears the
        # user over the agent (barged_in); with a canceller in hardware there is no guard at all.
        self._guard_until_barge_in = echo_cancelled and cfg.voice_barge_in_ms > 0
        self._echo_free = not echo_cancelled  # the canceller has the echo of what plays now (set_echo_free)
        self._vad = vad
        self._talk = Timeline()  # button intent (push_to_talk, toggle)
        self._muted = Timeline()
        self._audible = Timeline()  # agent audio playing, tail included
        self._active = False  # inside a conversation (always_open opens only then)
        self._vad_open_until_s = -math.inf
        self._in_turn = False
        # The mode inside a conversation; wake_word works like its after_wake mode there.
        self._conv_mode = cfg.after_wake if cfg.mode == "wake_word" else cfg.mode
        self._wake_at_s: float | None = None  # a wake word ended here: open from this sample on
        vad_modes = self._conv_mode in ("voice", "always_open")
        preroll_blocks = math.ceil(cfg.preroll_ms / 1000 / BLOCK_S) if vad_modes else 0
        self._preroll: deque[Chunk] = deque(maxlen=preroll_blocks)
        self.blocks = 0
        self.open_blocks = 0
        self._floor = NoiseFloor() if cfg.speech_margin_db > 0 else None

    # -- inputs (all from the controller thread) -----------------------------
    @property
    def talking(self) -> bool:
        """The button intent is open (push_to_talk held, toggle on)."""
        return self._talk.last

    @property
    def muted(self) -> bool:
        return self._muted.last

    @property
    def hands_free(self) -> bool:
        """In a conversation the gate lets the user's voice through without the button (or it is held)."""
        return (self._active and self._conv_mode in ("voice", "always_open")) or self.talking

    def press(self, t_s: float) -> bool | None:
        """A button press; returns True when it opened the talk intent, False when it closed it."""
        if self.cfg.mode == "push_to_talk" or (self.cfg.mode == "toggle" and not self._talk.last):
            return self._set_talk(t_s, True)
        if self.cfg.mode == "toggle":
            # Pressing while the agent speaks is a barge-in: it opens, never closes.
            if self._audible.last and self.barge_in == "button":
                return None
            return self._set_talk(t_s, False)
        return None

    def release(self, t_s: float) -> bool | None:
        if self.cfg.mode == "push_to_talk":
            return self._set_talk(t_s, False)
        return None

    def close_talk(self, t_s: float) -> None:
        """Close the button intent (conversation over)."""
        self._set_talk(t_s, False)

    def _set_talk(self, t_s: float, value: bool) -> bool | None:
        if self._talk.last == value:
            return None
        self._talk.set(t_s, value)
        return value

    def set_muted(self, t_s: float, muted: bool) -> None:
        self._muted.set(t_s, muted)

    def set_active(self, active: bool) -> None:
        """A conversation is running (or being started)."""
        self._active = active
        if not active:
            self._vad_open_until_s = -math.inf
            self._in_turn = False
            self._wake_at_s = None
            self._preroll.clear()

    def wake_word_ended(self, t_s: float) -> None:
        """The wake word ended at ``t_s``: send from there on, as a voice turn (hang-over from ``t_s``).

        With ``barge_in = "wake_word"`` it also ends the echo guard at ``t_s``: the words after the
        wake word are the user's, not the agent's echo.
        """
        self._wake_at_s = t_s
        # Open for a hang-over from the wake word on; the user's turn starts when the VAD hears them
        # (so a wake word nobody follows ends on the idle timeout, not in a wait for an answer).
        self._vad_open_until_s = max(self._vad_open_until_s, t_s + self.cfg.hangover_ms / 1000)
        self._preroll.clear()
        if self.barge_in == "wake_word" and self._audible.value_at(t_s):
            self._audible.set(t_s, False)

    def set_echo_free(self, free: bool) -> None:
        """Whether the kiosk's canceller has the echo of what plays now: until then the guard holds, as
        with ``barge_in = "button"``, and the agent does not hear its own voice leak through."""
        self._echo_free = free

    def barged_in(self, t_s: float) -> None:
        """The user began talking over the agent at ``t_s`` (the device's judgement): the guard ends there."""
        self._audible.set(t_s, False)

    def agent_started(self, t_s: float) -> None:
        """The agent's audio became audible."""
        self._audible.set(t_s, True)

    def agent_stopped(self, t_s: float, flushed: bool = False) -> None:
        """The agent's audio ended: the guard holds for the echo tail, unless it was cut short."""
        tail_s = 0.0 if flushed else self.cfg.echo_tail_ms / 1000
        self._audible.set(t_s + tail_s, False)

    # -- per block ------------------------------------------------------------
    def process(self, pcm: bytes, captured_at_s: float, seq: int = 0) -> GateOutput:
        """Gate one block whose last sample was captured at ``captured_at_s``."""
        n = len(pcm) // BYTES_PER_SAMPLE
        duration_s = n / CAPTURE_RATE_HZ
        start_s = captured_at_s - duration_s
        self.blocks += 1

        blocked = self._muted.ranges(start_s, captured_at_s, n)
        guarded = self.barge_in != "voice" or self._guard_until_barge_in or not self._echo_free
        echo = self._audible.ranges(start_s, captured_at_s, n) if guarded else []
        talk = self._talk.ranges(start_s, captured_at_s, n) if self.cfg.mode in ("push_to_talk", "toggle") else []
        # With barge_in = "button" an explicit press beats the echo guard; everything else waits for it.
        overridden = subtract(echo, talk) if self.barge_in in ("button", "voice") else echo
        guard = _merge(blocked + overridden)
        allowed = subtract([(0, n)], guard)

        wake_cut: Ranges = []
        if self._wake_at_s is not None and self._wake_at_s < captured_at_s:
            # The wake word itself (before the detection point) stays on the device and is not the user's turn.
            cut = min(n, max(0, math.ceil((self._wake_at_s - start_s) / duration_s * n)))
            wake_cut = [(0, cut)]
            allowed = subtract(allowed, wake_cut)
            self._wake_at_s = None
        heard = apply_ranges(pcm, allowed)
        speech = bool(allowed) and self._is_speech(heard, allowed)
        turn_started = turn_ended = False
        if self._conv_mode in ("voice", "always_open") and (self._active or self.cfg.mode != "wake_word"):
            if speech:
                self._vad_open_until_s = captured_at_s + self.cfg.hangover_ms / 1000
                if not self._in_turn:
                    self._in_turn = turn_started = True
            elif self._in_turn and start_s >= self._vad_open_until_s:
                self._in_turn = False
                turn_ended = True

        vad_open = start_s < self._vad_open_until_s
        if self.cfg.mode == "wake_word" and not self._active:
            open_ranges = []  # idle: only the local detector listens
        elif self._conv_mode == "voice":
            open_ranges = allowed if vad_open else []
        elif self._conv_mode == "always_open":
            # Outside a conversation only speech opens it (start_on_speech).
            open_ranges = allowed if self._active or vad_open else []
        else:
            open_ranges = subtract(talk, guard)

        out_pcm = apply_ranges(pcm, open_ranges)
        chunk = Chunk(out_pcm, captured_at_s, seq, bool(open_ranges))
        chunks: tuple[Chunk, ...] = (chunk,)
        if turn_started and self._preroll:
            # Speech started: send what preceded it (only what the guard allowed) first.
            chunks = (*self._preroll, chunk)
            self._preroll.clear()
        elif self._preroll.maxlen:
            if open_ranges:
                self._preroll.clear()
            elif allowed:
                self._preroll.append(Chunk(heard, captured_at_s, seq, True))

        if open_ranges:
            self.open_blocks += 1
        self._prune(start_s - HISTORY_S)
        return GateOutput(chunks, bool(open_ranges), speech, level_dbfs(pcm), turn_started, turn_ended)

    def _is_speech(self, heard: bytes, allowed: Ranges) -> bool:
        frame_bytes = VAD_FRAME_SAMPLES * BYTES_PER_SAMPLE
        need = SPEECH_MIN_MS // VAD_FRAME_MS
        hits = 0
        floor = self._floor
        # With a margin every frame's level is needed (the floor learns from all of them).
        cut = floor.floor_dbfs + self.cfg.speech_margin_db if floor is not None else -math.inf
        levels: list[float] = []
        found = False
        for a, b in allowed:
            first = -(-a // VAD_FRAME_SAMPLES)
            for i in range(first, b // VAD_FRAME_SAMPLES):
                frame = heard[i * frame_bytes:(i + 1) * frame_bytes]
                if len(frame) != frame_bytes:
                    continue
                loud = True
                if floor is not None:
                    level = level_dbfs(frame)
                    levels.append(level)
                    loud = level >= cut
                # The VAD hears every frame it heard before the margin existed: it adapts to what it hears.
                if not found and self._vad.is_speech(frame) and loud:
                    hits += 1
                    found = hits >= need
                if found and floor is None:
                    return True
        if floor is not None:
            floor.add(levels)
        return found

    def _prune(self, before_s: float) -> None:
        for line in (self._talk, self._muted, self._audible):
            line.prune(before_s)

    def reset(self, t_s: float) -> None:
        """Conversation over: close the button intent and forget voice state (mute stays)."""
        self.close_talk(t_s)
        self.set_active(False)
