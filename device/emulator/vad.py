"""Turn-taking on the user's audio with webrtcvad (pure: no threads, no I/O).

Audio is cut into 30 ms frames. Speech starts after ``speech_start_ms`` of
consecutive voiced frames and ends after ``end_silence_ms`` without one; a
burst shorter than ``min_speech_ms`` is not a turn. Decisions are made on
audio time (so audio sent faster than real time is judged the same), and
stamped with the receive time of the block that held the deciding frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import webrtcvad

from device.emulator import pcm as pcmlib

FRAME_MS = 30
_VAD_RATES_HZ = (8000, 16000, 32000, 48000)


@dataclass(frozen=True)
class SpeechStarted:
    t_s: float  # receive time of the block that confirmed speech
    audio_pos_s: float  # position in the user's audio where speech began


@dataclass(frozen=True)
class SpeechEnded:
    t_s: float  # receive time of the block that held the last voiced frame
    decided_t_s: float  # receive time of the block that completed the silence
    speech_s: float  # from the first to the last voiced frame
    is_turn: bool  # long enough to count as a user turn


VadEvent = SpeechStarted | SpeechEnded


class TurnDetector:
    """Feed S16LE blocks at ``rate_hz``; get speech start/end events and a voiced fraction."""

    def __init__(
        self,
        rate_hz: int,
        *,
        aggressiveness: int = 2,
        speech_start_ms: int = 120,
        end_silence_ms: int = 700,
        min_speech_ms: int = 200,
    ) -> None:
        self.rate_hz = rate_hz
        # webrtcvad takes 8/16/32/48 kHz only; other protocol rates go through 16 kHz.
        self._vad_hz = rate_hz if rate_hz in _VAD_RATES_HZ else 16000
        self._vad = webrtcvad.Vad(aggressiveness)
        self._frame_bytes = self._vad_hz * FRAME_MS // 1000 * 2
        self._start_frames = max(1, math.ceil(speech_start_ms / FRAME_MS))
        self._end_frames = max(1, math.ceil(end_silence_ms / FRAME_MS))
        self._min_speech_s = min_speech_ms / 1000
        self._pending = b""
        self._frames = 0  # frames judged so far (audio clock)
        self._voiced_run = 0
        self._silent_run = 0
        self._in_speech = False
        self._speech_start_frame = 0
        self._last_voiced_frame = 0
        self._last_voiced_t_s = 0.0
        self._score_voiced = 0
        self._score_frames = 0

    @property
    def in_speech(self) -> bool:
        return self._in_speech

    def speech_so_far_s(self) -> float:
        """Length of the current speech (0 when silent)."""
        if not self._in_speech:
            return 0.0
        return self._span_s(self._last_voiced_frame)

    def feed(self, pcm: bytes, received_t_s: float) -> list[VadEvent]:
        if self._vad_hz != self.rate_hz:
            pcm = pcmlib.resample(pcm, self.rate_hz, self._vad_hz)
        data = self._pending + pcm
        events: list[VadEvent] = []
        n = len(data) // self._frame_bytes
        for i in range(n):
            frame = data[i * self._frame_bytes : (i + 1) * self._frame_bytes]
            self._judge(self._vad.is_speech(frame, self._vad_hz), received_t_s, events)
        self._pending = data[n * self._frame_bytes :]
        return events

    def take_score(self) -> float | None:
        """Voiced fraction of the frames since the last call (None when none came)."""
        if self._score_frames == 0:
            return None
        score = self._score_voiced / self._score_frames
        self._score_voiced = self._score_frames = 0
        return score

    def _judge(self, voiced: bool, t_s: float, events: list[VadEvent]) -> None:
        frame = self._frames
        self._frames += 1
        self._score_frames += 1
        if voiced:
            self._score_voiced += 1
            self._voiced_run += 1
            self._silent_run = 0
            self._last_voiced_frame = frame
            self._last_voiced_t_s = t_s
            if not self._in_speech and self._voiced_run >= self._start_frames:
                self._in_speech = True
                self._speech_start_frame = frame + 1 - self._voiced_run
                events.append(SpeechStarted(t_s, self._speech_start_frame * FRAME_MS / 1000))
        else:
            self._voiced_run = 0
            self._silent_run += 1
            if self._in_speech and self._silent_run >= self._end_frames:
                self._in_speech = False
                speech_s = self._span_s(self._last_voiced_frame)
                events.append(SpeechEnded(self._last_voiced_t_s, t_s, speech_s, speech_s >= self._min_speech_s))

    def _span_s(self, last_frame: int) -> float:
        return (last_frame + 1 - self._speech_start_frame) * FRAME_MS / 1000
