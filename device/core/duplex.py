"""Full duplex (pure): when the canceller has the echo, the user's voice over the agent's, false barge-ins.

:class:`Convergence` decides when the echo guard may give way (``barge_in = "voice"`` with
the kiosk's canceller: the agent service then judges the user's voice). The device-side
judge below is experimental (``gate.voice_barge_in_ms > 0``): on AEC3's output a leak of the
echo looks too much like double talk (docs/duplex.md has the measurement).

With echo cancellation the microphone path knows, for every 10 ms frame, how
loud the microphone was, how loud the cancelled signal is, and how loud the
speaker's reference was (:class:`FrameLevels`, from
:class:`device.drivers.aec.EchoCanceller`). While the agent speaks,
:class:`VoiceBargeIn` decides when the user started talking over it:

* a frame is **the user's** when the VAD calls the cancelled frame speech, it
  is louder than ``floor_dbfs`` (the canceller's residue is far below), and the
  canceller took less than ``echo_only_db`` off it. Echo alone loses 25 dB and
  more once the canceller has converged (40 to 60 on the bench's room); a voice
  at the echo's level loses 3 to 10 dB, because AEC3 keeps what its model of
  the speaker cannot explain.
* a **barge-in** is ``min_ms`` of such frames within ``window_ms``: long
  enough that a cough, a click or a burst of residual echo does not cut the
  agent off, short enough to stop it within a syllable or two.

:class:`BargeInAudit` counts the false ones: a voice barge-in the service then
heard no words for (no transcript within ``confirm_s``) cut the agent off for
nothing — the failure users hate most, so it is counted and logged.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass

FRAME_S = 0.01
DEFAULT_FLOOR_DBFS = -50.0
DEFAULT_ECHO_ONLY_DB = 18.0
DEFAULT_MIN_MS = 120
DEFAULT_WINDOW_MS = 1000
DEFAULT_CONFIRM_S = 4.0
QUIET_ROOM_DBFS = -60.0  # below this the microphone hears no echo worth cancelling


@dataclass(frozen=True)
class FrameLevels:
    """One 10 ms frame of the microphone path: its end time and three levels in dBFS."""

    t_s: float
    near_dbfs: float  # the microphone
    out_dbfs: float  # after echo cancellation
    ref_dbfs: float  # what the speaker played under it


@dataclass(frozen=True)
class BargeIn:
    """The user talks over the agent: decided at ``t_s``, their voice began at ``onset_s``."""

    t_s: float
    onset_s: float


class VoiceBargeIn:
    """While the agent is audible: the moment the user has been talking over it for ``min_ms``."""

    def __init__(self, *, min_ms: int = DEFAULT_MIN_MS, window_ms: int = DEFAULT_WINDOW_MS,
                 floor_dbfs: float = DEFAULT_FLOOR_DBFS, echo_only_db: float = DEFAULT_ECHO_ONLY_DB) -> None:
        self.min_frames = max(1, round(min_ms / 1000 / FRAME_S))
        self.window_frames = max(self.min_frames, round(window_ms / 1000 / FRAME_S))
        self.floor_dbfs = floor_dbfs
        self.echo_only_db = echo_only_db
        self._recent: collections.deque[tuple[float, bool]] = collections.deque(maxlen=self.window_frames)
        self._count = 0
        self.user_frames = 0  # frames called the user's while the agent was audible (diagnostics)

    def is_user(self, frame: FrameLevels, speech: bool) -> bool:
        """The rule for one frame (``speech``: the VAD's call on the cancelled frame)."""
        if not speech or frame.out_dbfs < self.floor_dbfs:
            return False
        return frame.near_dbfs - frame.out_dbfs < self.echo_only_db

    def feed(self, frames: list[FrameLevels], speech: list[bool]) -> BargeIn | None:
        """Frames heard while the agent was audible; the barge-in they made, or None."""
        for frame, is_speech in zip(frames, speech, strict=True):
            user = self.is_user(frame, is_speech)
            if len(self._recent) == self._recent.maxlen and self._recent[0][1]:
                self._count -= 1
            self._recent.append((frame.t_s, user))
            if user:
                self._count += 1
                self.user_frames += 1
            if self._count >= self.min_frames:
                onset_s = next(t for t, u in self._recent if u) - FRAME_S  # the first voiced frame's start
                self.reset()
                return BargeIn(frame.t_s, onset_s)
        return None

    def reset(self) -> None:
        """The agent went quiet (or was cut off): start counting afresh."""
        self._recent.clear()
        self._count = 0


class Convergence:
    """Whether the canceller has the echo of what plays now: until then its output still carries it.

    AEC3 needs a fraction of a second of the speaker's sound to find the echo's delay. That delay
    is not fixed: the part after ALSA (a sound server's stream, the device's start) can change each
    time the speaker starts from silence -- by 40 ms between replies through PulseAudio on the
    bench -- and for a few hundred milliseconds the echo then leaks through. So at each start
    (:meth:`restart`) the canceller proves itself again: until it takes at least ``reduction_db``
    off the echo (the median over ``frames`` frames in which the speaker played and the microphone
    heard something), the echo guard holds as without echo cancellation, and the user's voice
    does not cut the agent off. Within one stretch of playback it stays converged: a user talking
    over the agent, whose voice the canceller leaves in, must not undo it.
    """

    def __init__(self, reduction_db: float = 15.0, frames: int = 50, quantile: float = 0.2,
                 first_frames: int = 200) -> None:
        self.reduction_db = reduction_db
        self.quantile = quantile
        self._frames = frames
        # A fresh AEC3 holds the echo down for its first half second, then lets it through while it
        # switches to its adaptive filter: the first proof is longer.
        self._recent: collections.deque[float] = collections.deque(maxlen=first_frames)
        self.converged = False
        self.ever_converged = False
        self.converged_at_s: float | None = None

    def restart(self) -> None:
        """The speaker starts from silence: the echo's delay may have moved."""
        if self.ever_converged:
            self._recent = collections.deque(maxlen=self._frames)
        self._recent.clear()
        self.converged, self.converged_at_s = False, None

    def feed(self, frames: list[FrameLevels]) -> bool:
        """The frames of one block; True when this block made it converge."""
        if self.converged:
            return False
        for f in frames:
            if f.ref_dbfs > -50.0:  # the speaker played
                # a microphone that hardly hears it (a quiet room) has no echo to leak: that counts too
                self._recent.append(f.near_dbfs - f.out_dbfs if f.near_dbfs > QUIET_ROOM_DBFS else math.inf)
            if len(self._recent) == self._recent.maxlen and \
                    sorted(self._recent)[int(len(self._recent) * self.quantile)] >= self.reduction_db:
                self.converged, self.ever_converged, self.converged_at_s = True, True, f.t_s
                return True
        return False


class BargeInAudit:
    """Voice barge-ins, and those the service heard no words after (false barge-ins).

    A barge-in is confirmed by the user's words (a transcript); it is false when none came
    within ``confirm_s`` of the last moment the user was heard speaking (a long question
    is transcribed only at its end).
    """

    def __init__(self, confirm_s: float = DEFAULT_CONFIRM_S) -> None:
        self.confirm_s = confirm_s
        self._deadline_s: float | None = None  # when the open barge-ins become false
        self._open = 0
        self.barge_ins = 0
        self.false_barge_ins = 0

    def barged_in(self, t_s: float) -> None:
        self.barge_ins += 1
        self._open += 1
        self.heard_voice(t_s)

    def heard_voice(self, t_s: float) -> None:
        """The user was heard speaking at ``t_s``: their words may still be on the way."""
        if self._open:
            self._deadline_s = max(self._deadline_s or t_s, t_s + self.confirm_s)

    def user_spoke(self) -> None:
        """The service heard the user's words: every open barge-in was real."""
        self._open, self._deadline_s = 0, None

    def due(self, now_s: float) -> int:
        """How many open barge-ins just became false."""
        if not self._open or self._deadline_s is None or now_s < self._deadline_s:
            return 0
        late, self._open, self._deadline_s = self._open, 0, None
        self.false_barge_ins += late
        return late


__all__ = ["BargeIn", "BargeInAudit", "Convergence", "FrameLevels", "VoiceBargeIn"]
