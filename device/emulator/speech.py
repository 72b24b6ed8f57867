"""The agent's voice: espeak-ng when installed, else a deterministic speech-like signal.

Replies are synthesised once per (text, rate) and cached, then encoded into
the agent's output format (PCM at any protocol rate, or μ-law).
"""

from __future__ import annotations

import logging
import math
import random
import re
import shutil
import subprocess
import threading
import zlib
from array import array
from collections import OrderedDict
from typing import Literal

from device.core.audioformat import AudioFormat
from device.core.errors import UnavailableError
from device.emulator import pcm as pcmlib

log = logging.getLogger(__name__)

Backend = Literal["auto", "espeak", "tone"]
BACKENDS: tuple[Backend, ...] = ("auto", "espeak", "tone")

_TONE_RATE_HZ = 16000
CACHE_ENTRIES = 64

# Rough vowel formants (F1, F2, F3 in Hz) the fallback cycles through.
_VOWELS = ((730, 1090, 2440), (270, 2290, 3010), (530, 1840, 2480), (570, 840, 2410), (300, 870, 2240))


def speechlike_pcm(text: str, rate_hz: int = _TONE_RATE_HZ, words_per_minute: int = 175) -> bytes:
    """A deterministic voiced signal with the rhythm of ``text`` spoken aloud.

    Syllables are glottal-pulse trains shaped by vowel formants with a falling
    pitch, separated by word and punctuation pauses, so a VAD hears speech and
    the length matches what a voice would take. Same text → same samples.
    """
    rng = random.Random(zlib.crc32(text.encode("utf-8")))
    words = re.findall(r"[\w']+|[.,;:!?]", text) or ["…"]
    word_s = 60.0 / max(60, words_per_minute)
    out = array("h")
    f0 = 135.0
    for token in words:
        if token in ".!?;:":
            out.extend([0] * int(0.28 * rate_hz))
            f0 = 135.0
            continue
        if token == ",":
            out.extend([0] * int(0.15 * rate_hz))
            continue
        syllables = max(1, len(re.findall(r"[aeiouy]+", token.lower())))
        syl_s = max(0.09, 0.8 * word_s / syllables)
        for _ in range(syllables):
            formants = _VOWELS[rng.randrange(len(_VOWELS))]
            out.extend(_syllable(f0, formants, syl_s, rate_hz))
            f0 = max(95.0, f0 * rng.uniform(0.95, 1.0))
        out.extend([0] * int(0.2 * word_s * rate_hz))
    return out.tobytes()


def _syllable(f0_hz: float, formants: tuple[int, int, int], dur_s: float, rate_hz: int) -> array[int]:
    period = max(2, round(rate_hz / f0_hz))
    # One pitch period as a sum of harmonics weighted by their nearness to a formant.
    cycle = [0.0] * period
    harmonic = 1
    while harmonic * f0_hz < min(4000.0, rate_hz / 2 - 100):
        freq = harmonic * f0_hz
        gain = sum(1.0 / (1.0 + ((freq - f) / 90.0) ** 2) for f in formants) / harmonic**0.5
        step = 2 * math.pi * harmonic / period
        for i in range(period):
            cycle[i] += gain * math.sin(step * i)
        harmonic += 1
    scale = 1.0 / (max(abs(v) for v in cycle) or 1.0)
    n = int(dur_s * rate_hz)
    attack = max(1, int(0.02 * rate_hz))
    out = array("h", bytes(2 * n))
    for i in range(n):
        env = min(1.0, i / attack, (n - i) / attack)
        out[i] = int(9000 * env * scale * cycle[i % period])
    return out


class Synthesizer:
    """Text → agent audio in a protocol format, cached; safe to share between threads."""

    def __init__(
        self,
        backend: Backend = "auto",
        voice: str = "en-us",
        words_per_minute: int = 175,
        espeak_path: str | None = None,
        timeout_s: float = 20.0,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown speech backend {backend!r}")
        self.voice = voice
        self.words_per_minute = words_per_minute
        self.timeout_s = timeout_s
        self._espeak = espeak_path if espeak_path is not None else shutil.which("espeak-ng")
        if backend == "espeak" and not self._espeak:
            raise UnavailableError(
                "speech backend 'espeak' needs espeak-ng, which is not installed: "
                "sudo apt install espeak-ng, or choose the 'tone' backend"
            )
        self.backend: Literal["espeak", "tone"] = "espeak" if backend != "tone" and self._espeak else "tone"
        self._strict = backend == "espeak"
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._warned = False

    def pcm(self, text: str, rate_hz: int) -> bytes:
        """S16LE mono at ``rate_hz`` saying ``text``."""
        key = (text, rate_hz)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        audio = self._make(text, rate_hz)
        with self._lock:
            self._cache[key] = audio
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return audio

    def render(self, text: str, fmt: AudioFormat) -> bytes:
        """Audio saying ``text``, encoded as ``fmt`` for an ``audio`` event."""
        raw = self.pcm(text, fmt.rate_hz)
        return pcmlib.ulaw_encode(raw) if fmt.encoding == "ulaw" else raw

    def _make(self, text: str, rate_hz: int) -> bytes:
        if self.backend == "espeak":
            try:
                pcm, src_hz = self._espeak_pcm(text)
                return pcmlib.resample(pcm, src_hz, rate_hz)
            except (OSError, subprocess.SubprocessError, ValueError) as e:
                if self._strict:
                    raise UnavailableError(f"espeak-ng failed: {e}; check `espeak-ng --version`") from e
                if not self._warned:
                    self._warned = True
                    log.warning("espeak-ng failed (%s); speaking with the built-in tone voice", e)
        return pcmlib.resample(speechlike_pcm(text, _TONE_RATE_HZ, self.words_per_minute), _TONE_RATE_HZ, rate_hz)

    def _espeak_pcm(self, text: str) -> tuple[bytes, int]:
        assert self._espeak is not None
        # Text goes through stdin, so a reply starting with "-" is never an option.
        proc = subprocess.run(
            [self._espeak, "--stdout", "-v", self.voice, "-s", str(self.words_per_minute), "--stdin"],
            input=text.encode("utf-8"),
            capture_output=True,
            timeout=self.timeout_s,
            check=False,
        )
        if proc.returncode != 0:
            detail = proc.stderr.decode("utf-8", "replace").strip()[:200]
            raise ValueError(f"exit status {proc.returncode}: {detail}")
        return pcmlib.parse_wav(proc.stdout)
