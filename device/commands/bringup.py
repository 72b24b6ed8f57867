"""Bring-up checks, the pure parts: microphone levels, test tones, VAD strips, button presses, verdicts.

:mod:`device.commands.check` does the I/O (ALSA, GPIO, the terminal) and
hands the audio and the button's edges to the functions here, so every verdict
and every line the user reads is computed from plain data and tested directly.
Audio is S16_LE mono at :data:`~device.core.audioformat.CAPTURE_RATE_HZ`.
"""

from __future__ import annotations

import itertools
import math
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Verdict = Literal["PASS", "WARN", "FAIL"]

FULL_SCALE = 32768.0
SILENCE_DBFS = -120.0
CLIP_SAMPLE = 32700  # |sample| at or above this counts as clipped (a codec rarely reaches 32767 exactly)
METER_FLOOR_DBFS = -60.0
BLOCK_MS = 100  # level blocks: the meter's update interval and the noise-floor resolution
# Loud speech at arm's length should peak its 100 ms blocks around here: enough for the VAD,
# 14 dB of headroom before clipping.
TARGET_SPEECH_DBFS = -20.0
QUIET_SPEECH_DBFS = -40.0  # the loudest blocks below this: the VAD misses soft speech
NOISY_FLOOR_DBFS = -45.0  # a quiet room's floor above this: fans, hum, a bad cable
DC_OFFSET_LIMIT = 0.02  # fraction of full scale
CLIPPED_LIMIT = 0.001  # fraction of samples
DEAD_DBFS = -90.0  # nothing louder than this in a whole recording: a dead or muted input


@dataclass(frozen=True)
class Result:
    """One verdict line: which part, how it went, what was seen, what to do."""

    part: str
    verdict: Verdict
    detail: str
    fix: str = ""


def dbfs(value: float) -> float:
    """An amplitude in 0..1 of full scale as dBFS (:data:`SILENCE_DBFS` for zero)."""
    if value <= 0:
        return SILENCE_DBFS
    return max(SILENCE_DBFS, 20 * math.log10(value))


def _samples(pcm: bytes) -> array[int]:
    return array("h", pcm[: len(pcm) // 2 * 2])


@dataclass(frozen=True)
class BlockLevel:
    """One block's RMS and peak (dBFS) and how many samples clipped."""

    rms_dbfs: float
    peak_dbfs: float
    clipped: int
    samples: int


def block_level(pcm: bytes) -> BlockLevel:
    s = _samples(pcm)
    if not s:
        return BlockLevel(SILENCE_DBFS, SILENCE_DBFS, 0, 0)
    mean_sq = sum(v * v for v in s) / len(s)
    peak = max(abs(min(s)), abs(max(s)))
    clipped = sum(1 for v in s if v >= CLIP_SAMPLE or v <= -CLIP_SAMPLE)
    return BlockLevel(dbfs(math.sqrt(mean_sq) / FULL_SCALE), dbfs(peak / FULL_SCALE), clipped, len(s))


@dataclass(frozen=True)
class MicStats:
    """Levels of a recording, from its 100 ms blocks."""

    seconds: float
    rms_dbfs: float  # whole recording
    peak_dbfs: float
    clipped_fraction: float
    dc_offset: float  # mean sample, fraction of full scale (signed)
    noise_floor_dbfs: float  # the 10th percentile block: the room when nobody speaks
    loud_dbfs: float  # the 95th percentile block: speech, if anyone spoke


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return SILENCE_DBFS
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


def analyse(pcm: bytes, rate_hz: int, block_ms: int = BLOCK_MS) -> MicStats:
    """Levels, clipping, DC offset and noise floor of a mono S16_LE recording."""
    s = _samples(pcm)
    n = len(s)
    if n == 0:
        return MicStats(0.0, SILENCE_DBFS, SILENCE_DBFS, 0.0, 0.0, SILENCE_DBFS, SILENCE_DBFS)
    block = max(1, rate_hz * block_ms // 1000)
    levels = sorted(block_level(pcm[i * 2 : (i + block) * 2]).rms_dbfs for i in range(0, n, block))
    whole = block_level(pcm)
    return MicStats(
        seconds=n / rate_hz,
        rms_dbfs=whole.rms_dbfs,
        peak_dbfs=whole.peak_dbfs,
        clipped_fraction=whole.clipped / n,
        dc_offset=sum(s) / n / FULL_SCALE,
        noise_floor_dbfs=_percentile(levels, 0.10),
        loud_dbfs=_percentile(levels, 0.95),
    )


def suggest_gain_db(stats: MicStats) -> float:
    """dB to add to the capture gain (negative: lower it), rounded to 1 dB; 0 when it is fine."""
    if stats.clipped_fraction > CLIPPED_LIMIT:
        return float(min(-6, math.floor(TARGET_SPEECH_DBFS - stats.loud_dbfs)))
    if stats.loud_dbfs < QUIET_SPEECH_DBFS:
        raise_db = TARGET_SPEECH_DBFS - stats.loud_dbfs
        headroom = -1.0 - stats.peak_dbfs  # never suggest a gain that makes the loudest sample clip
        return float(max(0, math.floor(min(raise_db, headroom))))
    return 0.0


def mic_verdicts(stats: MicStats, gain_hint: str) -> list[Result]:
    """What the recording says about the microphone; ``gain_hint`` names where its gain is set."""
    out: list[Result] = []
    if stats.seconds == 0:
        return [Result("mic", "FAIL", "no audio was captured", "check audio.capture_device (arecord -l)")]
    if stats.peak_dbfs < DEAD_DBFS:
        return [Result(
            "mic", "FAIL",
            f"silence: the loudest sample is {stats.peak_dbfs:.0f} dBFS in {stats.seconds:.1f} s",
            f"the input is muted, unplugged or the wrong card/channel: {gain_hint} (Capture switch on), "
            "check audio.capture_device, and for a 2-mic HAT audio.stereo_mode",
        )]
    gain = suggest_gain_db(stats)
    if stats.clipped_fraction > CLIPPED_LIMIT:
        out.append(Result(
            "mic", "FAIL",
            f"clipping: {100 * stats.clipped_fraction:.2f} % of samples at full scale "
            f"(peak {stats.peak_dbfs:.1f} dBFS)",
            f"lower the capture gain by about {-gain:.0f} dB: {gain_hint}",
        ))
    if abs(stats.dc_offset) > DC_OFFSET_LIMIT:
        out.append(Result(
            "mic", "WARN", f"DC offset {100 * stats.dc_offset:+.1f} % of full scale",
            "a faulty or badly biased microphone input; the VAD tolerates it, but try another microphone",
        ))
    if stats.noise_floor_dbfs > NOISY_FLOOR_DBFS:
        out.append(Result(
            "mic", "WARN", f"noise floor {stats.noise_floor_dbfs:.0f} dBFS (want below {NOISY_FLOOR_DBFS:.0f})",
            "a noisy room, hum or too much gain: the voice gate may open on noise "
            "(raise gate.vad_aggressiveness, or lower the gain)",
        ))
    if stats.loud_dbfs < QUIET_SPEECH_DBFS:
        out.append(Result(
            "mic", "WARN", f"quiet: speech reached {stats.loud_dbfs:.0f} dBFS (want about {TARGET_SPEECH_DBFS:.0f})",
            f"speak during the test; if you did, raise the capture gain by about {gain:.0f} dB: {gain_hint}",
        ))
    if not any(r.verdict == "FAIL" for r in out) and stats.loud_dbfs >= QUIET_SPEECH_DBFS:
        out.append(Result(
            "mic", "PASS",
            f"usable for the VAD: speech {stats.loud_dbfs:.0f} dBFS, floor {stats.noise_floor_dbfs:.0f} dBFS, "
            f"peak {stats.peak_dbfs:.1f} dBFS",
        ))
    return out


def describe(stats: MicStats) -> str:
    """One line with every figure."""
    return (
        f"{stats.seconds:.1f} s: level {stats.rms_dbfs:.1f} dBFS, peak {stats.peak_dbfs:.1f} dBFS, "
        f"clipped {100 * stats.clipped_fraction:.2f} %, DC {100 * stats.dc_offset:+.2f} %, "
        f"noise floor {stats.noise_floor_dbfs:.1f} dBFS, speech {stats.loud_dbfs:.1f} dBFS"
    )


def meter(level: BlockLevel, width: int = 30) -> str:
    """``[#########·········] -23.4 dBFS peak -12.0`` with a clip mark."""
    fill = (level.rms_dbfs - METER_FLOOR_DBFS) / -METER_FLOOR_DBFS
    n = max(0, min(width, round(fill * width)))
    clip = " CLIP" if level.clipped else ""
    return f"[{'#' * n}{'.' * (width - n)}] {level.rms_dbfs:6.1f} dBFS  peak {level.peak_dbfs:6.1f}{clip}"


# -- tones -----------------------------------------------------------------------


def tone(freq_hz: float, duration_s: float, rate_hz: int, level_dbfs: float = -12.0, fade_ms: int = 10) -> bytes:
    """A sine of ``level_dbfs`` peak, faded in and out (no clicks)."""
    n = int(duration_s * rate_hz)
    amp = FULL_SCALE * 10 ** (level_dbfs / 20)
    fade = max(1, rate_hz * fade_ms // 1000)
    out = array("h", bytes(2 * n))
    for i in range(n):
        env = min(1.0, i / fade, (n - 1 - i) / fade)
        out[i] = max(-32768, min(32767, round(amp * env * math.sin(2 * math.pi * freq_hz * i / rate_hz))))
    return out.tobytes()


def dominant_frequency_hz(pcm: bytes, rate_hz: int) -> float:
    """A sine's frequency from its zero crossings (what the speaker test played)."""
    s = _samples(pcm)
    crossings = sum(1 for a, b in itertools.pairwise(s) if (a < 0) != (b < 0))
    return crossings / 2 / (len(s) / rate_hz) if len(s) > 1 else 0.0


# -- VAD ---------------------------------------------------------------------------


def vad_strip(decisions: Sequence[bool]) -> str:
    """Frames as ``#`` (speech) and ``.`` (not)."""
    return "".join("#" if d else "." for d in decisions)


@dataclass(frozen=True)
class VadSummary:
    aggressiveness: int
    frames: int
    speech_frames: int

    @property
    def fraction(self) -> float:
        return self.speech_frames / self.frames if self.frames else 0.0


def vad_advice(summaries: Sequence[VadSummary], configured: int) -> Result:
    """Which aggressiveness suits this room, from frames heard with each."""
    by = {s.aggressiveness: s for s in summaries}
    mine = by.get(configured)
    if mine is None or mine.frames == 0:
        return Result("vad", "FAIL", "no audio reached the VAD", "check audio.capture_device")
    table = ", ".join(f"{s.aggressiveness}: {100 * s.fraction:.0f} %" for s in summaries)
    detail = f"speech frames per aggressiveness ({table}); configured {configured}"
    if mine.speech_frames == 0:
        return Result(
            "vad", "WARN", detail,
            "nothing counted as speech: speak during the test; if you did, lower gate.vad_aggressiveness "
            "or raise the capture gain (check mic)",
        )
    return Result("vad", "PASS", detail)


# -- button ------------------------------------------------------------------------


@dataclass
class PressTracker:
    """Turns debounced edges into lines: press, release after N s (short or long)."""

    long_press_s: float
    what: str = "button"
    _pressed_at: float | None = None
    _long_reported: bool = False
    presses: int = 0
    long_presses: int = 0

    def edge(self, active: bool, t_s: float) -> str:
        if active:
            self._pressed_at = t_s
            self._long_reported = False
            self.presses += 1
            return f"{self.what}: pressed"
        if self._pressed_at is None:
            return f"{self.what}: released (was held when the check started)"
        held = t_s - self._pressed_at
        self._pressed_at = None
        kind = "long press" if held >= self.long_press_s else "short press"
        if held >= self.long_press_s and not self._long_reported:
            self.long_presses += 1
        return f"{self.what}: released after {held:.2f} s ({kind})"

    def tick(self, t_s: float) -> str | None:
        """A line the moment a held press becomes a long press."""
        if self._pressed_at is not None and not self._long_reported and t_s - self._pressed_at >= self.long_press_s:
            self._long_reported = True
            self.long_presses += 1
            return f"{self.what}: long press ({self.long_press_s:g} s held)"
        return None


def switch_line(active: bool) -> str:
    return "mute switch: " + ("on (muted)" if active else "off")


# -- wake word ---------------------------------------------------------------------


def utterance_peaks(scores: Sequence[float], step_s: float, floor: float = 0.05, gap_s: float = 0.5) -> list[float]:
    """The highest score of each stretch over ``floor`` (stretches closer than ``gap_s`` join)."""
    peaks: list[float] = []
    last_i: int | None = None
    gap = max(1, round(gap_s / step_s))
    for i, s in enumerate(scores):
        if s <= floor:
            continue
        if last_i is None or i - last_i > gap:
            peaks.append(s)
        else:
            peaks[-1] = max(peaks[-1], s)
        last_i = i
    return peaks


def wake_advice(word_peaks: Sequence[float], other_peak: float, cutoff: float, said: int) -> Result:
    """How the wake word scored here against the cutoff, and a ``wake.threshold`` for this room.

    ``word_peaks``: the best score of each utterance while the user said the wake word ``said``
    times; ``other_peak``: the best score while they talked normally.
    """
    heard = sum(p > cutoff for p in word_peaks)
    scores = ", ".join(f"{p:.2f}" for p in sorted(word_peaks, reverse=True)) or "none"
    margin = (min(word_peaks) - cutoff) if word_peaks else -cutoff
    detail = (f"{heard} of {said} wake words over the cutoff {cutoff:g} (scores {scores}; lowest margin "
              f"{margin:+.2f}); ordinary speech peaked at {other_peak:.2f}"
              + (" — it would have woken the kiosk" if other_peak > cutoff else ""))
    best = sorted(word_peaks, reverse=True)[:said]
    if len(best) < said or not best:
        return Result("wake", "FAIL" if not best else "WARN", detail,
                      "say the wake word clearly, about 1 s apart, during the first part; check mic for the level")
    low = min(best)
    if low <= other_peak:
        return Result("wake", "WARN", detail,
                      "your ordinary speech scores as high as the wake word here: choose another wake word "
                      "(wake.model) or move the microphone nearer")
    proposal = round(min(0.99, max(0.05, (low + other_peak) / 2)), 2)
    verdict: Verdict = "PASS" if heard == said and other_peak <= cutoff else "WARN"
    return Result("wake", verdict, detail + f"; proposed wake.threshold = {proposal:g}",
                  "" if verdict == "PASS" else f"set wake.threshold = {proposal:g} for this room and voice")
