"""Wake-word evaluation material that is not one synthesizer: positives, near misses, babble (cached).

Ten voices from three synthesizers (espeak-ng, Debian's flite, festival with its kal, ked and
slt voices), each utterance at several speeds and pitches (sox ``tempo``/``pitch``), then
placed in a condition: clean, quiet (-40 dBFS), loud (-6 dBFS peak), reverberant (a synthetic
room response, RT60 about 0.5 s), pink noise at 10 dB SNR, and four-talker babble (a mix of
four synthesized talkers) at 20, 10 and 5 dB SNR. Negatives: ordinary kiosk sentences, and
near misses built to sound like each wake word ("a Lexus", "hey Travis") inside sentences.

Everything synthesized is cached as WAV files under ``$VOICE_APPLIANCE_TEST_CACHE/wake-material``
(default /var/cache/voice-appliance-test, as the boot test's debootstrap cache), keyed by what made
it, so a second run synthesizes nothing. Audio here is float32 numpy at 16 kHz mono.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RATE_HZ = 16000
CACHE = Path(os.environ.get("VOICE_APPLIANCE_TEST_CACHE", "/var/cache/voice-appliance-test")) / "wake-material"
TOOLS = ("espeak-ng", "flite", "text2wave", "sox")


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None]


@dataclass(frozen=True)
class Voice:
    synth: str  # espeak, flite, festival
    name: str

    def __str__(self) -> str:
        return f"{self.synth}:{self.name}"


VOICES = (
    Voice("espeak", "en-us"), Voice("espeak", "en-gb+f3"), Voice("espeak", "en-us+m7"),
    Voice("flite", "kal16"), Voice("flite", "awb"), Voice("flite", "rms"), Voice("flite", "slt"),
    Voice("festival", "kal_diphone"), Voice("festival", "ked_diphone"), Voice("festival", "cmu_us_slt_arctic_hts"),
)
# (tempo, pitch in cents): how fast and how high each positive is said.
VARIANTS = ((1.0, 0), (0.85, -200), (1.2, 250))

PHRASE = {"okay_nabu": "okay nabu", "hey_jarvis": "hey jarvis", "alexa": "alexa", "hey_mycroft": "hey mycroft",
          "hey_rhasspy": "hey rhasspy"}
# Phrases built to sound like each wake word (said inside a carrier sentence).
NEAR_MISSES = {
    "hey_jarvis": ("hey travis", "hey jarrod", "hey davis", "hey charlie", "hey service", "a jar of this"),
    "alexa": ("a lexus", "a lexicon", "a lexer", "alexis", "elixir", "electra"),
    "okay_nabu": ("okay now boo", "okay I knew", "okay nah bro", "okay new boot", "okay nobody", "okay maybe"),
    "hey_mycroft": ("hey microsoft", "hey minecraft", "my craft", "hey my cross", "hey mike", "hey aircraft"),
    "hey_rhasspy": ("hey raspy", "hey rhapsody", "hey jasper", "hey rusty", "hey crispy", "hey rasp"),
}
CARRIERS = ("{} is parked outside", "I think {} said so", "did you see {} today")
SENTENCES = (
    "when does the museum open on sunday",
    "where can I buy a ticket for the exhibition",
    "is there a cafe on the second floor",
    "how long does the guided tour take",
    "can I bring my dog inside the building",
    "what time does the last bus leave",
    "I would like to see the dinosaurs please",
    "hello there, is anybody working here today",
    "thank you very much, that was helpful",
    "are children allowed in without an adult",
    "hey there, which way is the exit",
    "could you tell me about the special offers",
)
CONDITIONS = ("clean", "quiet", "loud", "reverb", "pink_10db", "babble_20db", "babble_10db", "babble_5db")


# -- synthesis (cached) ---------------------------------------------------------------------------------------


def _read(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        raw = w.readframes(w.getnframes())
    return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0


def _write(path: Path, x: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with wave.open(str(tmp), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE_HZ)
        w.writeframes(to_pcm(x))
    tmp.replace(path)


def to_pcm(x: np.ndarray) -> bytes:
    return (np.clip(x, -1.0, 32767 / 32768) * 32768.0).astype("<i2").tobytes()


def _synth(voice: Voice, text: str, out: Path) -> None:
    if voice.synth == "espeak":
        cmd = ["espeak-ng", "-v", voice.name, "-s", "160", "-w", str(out), text]
        subprocess.run(cmd, check=True, capture_output=True)
    elif voice.synth == "flite":
        subprocess.run(["flite", "-voice", voice.name, "-t", text, "-o", str(out)], check=True, capture_output=True)
    else:
        subprocess.run(["text2wave", "-eval", f"(voice_{voice.name})", "-o", str(out)], input=text.encode(),
                       check=True, capture_output=True)


@functools.lru_cache(maxsize=4096)
def speak(voice: Voice, text: str, tempo: float = 1.0, pitch_cents: int = 0) -> np.ndarray:
    """``text`` said by ``voice`` at ``tempo`` and ``pitch_cents``, 16 kHz, peak-normalized to -3 dBFS."""
    key = hashlib.sha1(f"{voice}|{text}|{tempo}|{pitch_cents}".encode()).hexdigest()[:16]
    path = CACHE / "speech" / f"{key}.wav"
    if not path.exists():
        with tempfile.TemporaryDirectory() as d:
            raw = Path(d) / "raw.wav"
            _synth(voice, text, raw)
            effects = ["tempo", "-s", str(tempo)] if tempo != 1.0 else []
            effects += ["pitch", str(pitch_cents)] if pitch_cents else []
            done = Path(d) / "out.wav"
            subprocess.run(["sox", str(raw), "-r", str(RATE_HZ), "-c", "1", "-b", "16", str(done), *effects,
                            "norm", "-3"], check=True, capture_output=True)
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(done), path)
    return _read(path)


# -- conditions ---------------------------------------------------------------------------------------------------


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


def pink(n: int, seed: int) -> np.ndarray:
    """Pink noise (1/f power), unit RMS."""
    rng = np.random.default_rng(seed)
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    x = np.fft.irfft(spec / np.sqrt(f), n).astype(np.float32)
    return x / max(rms(x), 1e-9)


@functools.lru_cache(maxsize=2)
def babble(seconds: float = 60.0) -> np.ndarray:
    """Four talkers at once (different synthesizers and sentences), unit RMS; cached."""
    path = CACHE / f"babble_{seconds:g}s.wav"
    if not path.exists():
        n = int(seconds * RATE_HZ)
        total = np.zeros(n, dtype=np.float32)
        talkers = (VOICES[0], VOICES[4], VOICES[6], VOICES[7])
        for k, voice in enumerate(talkers):
            parts: list[np.ndarray] = []
            i = 0
            while sum(len(p) for p in parts) < n + k * 7000:
                s = speak(voice, SENTENCES[(k * 5 + i) % len(SENTENCES)])
                parts += [s / max(rms(s), 1e-9), np.zeros(int(0.15 * RATE_HZ), np.float32)]
                i += 1
            total += np.concatenate(parts)[k * 7000 : k * 7000 + n]
        _write(path, 0.1 * total / max(rms(total), 1e-9))
    x = _read(path)
    return x / max(rms(x), 1e-9)


@functools.lru_cache(maxsize=1)
def room_response() -> np.ndarray:
    """A synthetic room: direct path, an early reflection, an exponentially decaying tail (RT60 ~0.5 s)."""
    rng = np.random.default_rng(7)
    n = int(0.5 * RATE_HZ)
    t = np.arange(n) / RATE_HZ
    h = rng.standard_normal(n).astype(np.float32) * np.exp(-6.9 * t / 0.5).astype(np.float32) * 0.25
    h[:80] = 0.0
    h[0] = 1.0
    h[int(0.012 * RATE_HZ)] += 0.5
    return h


def _convolve(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    n = len(x) + len(h) - 1
    size = 1 << (n - 1).bit_length()
    y = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(h, size), size)[:n]
    return y.astype(np.float32)


def _speech_rms(x: np.ndarray) -> float:
    loud = x[np.abs(x) > 0.01]
    return rms(loud) if len(loud) else rms(x)


def _noise_at(x: np.ndarray, noise: np.ndarray, snr_db: float, offset: int) -> np.ndarray:
    """``noise`` (looped from ``offset``) at ``snr_db`` below the speech's RMS (its loud part)."""
    level = _speech_rms(x)
    idx = (offset + np.arange(len(x))) % len(noise)
    return noise[idx] * level / (10 ** (snr_db / 20))


def condition(x: np.ndarray, name: str, seed: int = 0) -> np.ndarray:
    """``x`` (speech with its silences) as heard in condition ``name``."""
    if name == "clean":
        return x
    if name == "quiet":  # the speech's loud part at -40 dBFS RMS: a visitor a few metres away
        return x * (10 ** (-40 / 20) / max(_speech_rms(x), 1e-9))
    if name == "loud":
        return x * (10 ** (-6 / 20) / max(float(np.max(np.abs(x))), 1e-9))
    if name == "reverb":
        y = _convolve(x, room_response())[: len(x)]
        return y * (float(np.max(np.abs(x))) / max(float(np.max(np.abs(y))), 1e-9))
    kind, _, snr = name.partition("_")
    snr_db = float(snr.removesuffix("db"))
    noise = pink(20 * RATE_HZ, 11) if kind == "pink" else babble()
    return x + _noise_at(x, noise, snr_db, offset=(seed * 7919) % len(noise))


# -- the sets -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Clip:
    """One positive: the wake word said by ``voice`` in ``cond``; it ends at ``word_end_s``."""

    model: str
    voice: Voice
    variant: tuple[float, int]
    cond: str
    audio: np.ndarray
    word_end_s: float


LEAD_S, TAIL_S = 0.5, 1.0


def positives(model: str, conditions: tuple[str, ...] = CONDITIONS, voices: tuple[Voice, ...] = VOICES,
              variants: tuple[tuple[float, int], ...] = VARIANTS) -> Iterator[Clip]:
    """Each voice x variant x condition: 0.5 s of silence, the wake word, 1 s of silence."""
    for vi, voice in enumerate(voices):
        for ki, (tempo, pitch) in enumerate(variants):
            word = speak(voice, PHRASE[model], tempo, pitch)
            x = np.concatenate([np.zeros(int(LEAD_S * RATE_HZ), np.float32), word,
                                np.zeros(int(TAIL_S * RATE_HZ), np.float32)])
            for ci, cond in enumerate(conditions):
                yield Clip(model, voice, (tempo, pitch), cond, condition(x, cond, seed=vi * 31 + ki * 7 + ci),
                           LEAD_S + len(word) / RATE_HZ)


def negatives(kind: str, models: tuple[str, ...] = tuple(PHRASE), voices: tuple[Voice, ...] = VOICES,
              noisy: tuple[str, ...] = ("clean", "pink_10db", "babble_10db")) -> np.ndarray:
    """One stream of negative speech: ``ordinary`` sentences or ``near_miss`` phrases (for ``models``),
    each said by the voices in turn, cycling through the ``noisy`` conditions, with 0.3 s pauses."""
    if kind == "ordinary":
        texts = list(SENTENCES)
    else:
        texts = [CARRIERS[i % len(CARRIERS)].format(p) for m in models for i, p in enumerate(NEAR_MISSES[m])]
        texts += [p for m in models for p in NEAR_MISSES[m]]  # and alone, as a short remark
    parts: list[np.ndarray] = []
    gap = np.zeros(int(0.3 * RATE_HZ), np.float32)
    for i, text in enumerate(texts):
        for j, voice in enumerate(voices):
            if kind != "ordinary" and (i + j) % 2:  # near misses: every other voice (each voice still heard)
                continue
            x = np.concatenate([gap, speak(voice, text), gap])
            parts.append(condition(x, noisy[(i + j // 2) % len(noisy)], seed=i * 13 + j))
    return np.concatenate(parts)
