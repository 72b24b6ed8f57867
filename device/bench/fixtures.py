"""The bundled demo: real spoken input, a button timeline and an agent scenario.

The speech is committed as small WAV files (espeak-ng + sox, see
:func:`regenerate_speech`) so the demo runs on a machine without espeak.
:func:`demo_input` places the two utterances on the run's time line to match
``demo_timeline.toml``: the question while the button is held at the start,
and the barge-in while the agent is still answering.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from device.bench import wavfile
from device.core.audioformat import CAPTURE_RATE_HZ
from device.core.errors import UnavailableError

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "bench"
QUESTION_WAV = DATA_DIR / "question.wav"
BARGE_IN_WAV = DATA_DIR / "barge_in.wav"
DEMO_TIMELINE = DATA_DIR / "demo_timeline.toml"
DEMO_SCENARIO = DATA_DIR / "demo_scenario.toml"
# `bench --gate wake_word`: the wake word before each utterance, no button (openWakeWord hey_jarvis hears it).
WAKE_WAV = DATA_DIR / "wake_hey_jarvis.wav"
DEMO_WAKE_TIMELINE = DATA_DIR / "demo_wake_timeline.toml"
WAKE_GAP_S = 0.2  # between the wake word and the words after it

# What each fixture says, and how it was made (kept for regenerate_speech).
SPEECH = {
    QUESTION_WAV.name: ("Please turn the volume down, and tell me when the museum opens.", 165),
    BARGE_IN_WAV.name: ("Sorry, is there a cafe?", 170),
    WAKE_WAV.name: ("Hey Jarvis", 160),
}

# Where the demo's utterances start on the run's time line (see demo_timeline.toml).
QUESTION_AT_S = 0.8
BARGE_IN_AT_S = 10.3
TAIL_S = 2.0


@dataclass(frozen=True)
class DemoInput:
    pcm: bytes  # S16_LE mono 16 kHz
    question_span_s: tuple[float, float]
    barge_in_span_s: tuple[float, float]

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / 2 / CAPTURE_RATE_HZ


def demo_input(wake: bool = False) -> DemoInput:
    """The demo's microphone audio: silence, the question, silence, the barge-in, silence.

    ``wake``: each utterance is preceded by the wake word, which ends ``WAKE_GAP_S`` before it
    (the question starts that much later; the barge-in stays where the button demo has it).
    """
    question, _ = wavfile.read_wav(QUESTION_WAV)
    barge_in, _ = wavfile.read_wav(BARGE_IN_WAV)
    if wake:
        word, _ = wavfile.read_wav(WAKE_WAV)
        lead = word + wavfile.silence(WAKE_GAP_S)
        lead_s = len(lead) / 2 / CAPTURE_RATE_HZ
        spoken = demo_input()
        q_at, b_at = QUESTION_AT_S + lead_s, BARGE_IN_AT_S
        pcm = (
            wavfile.silence(QUESTION_AT_S) + lead + question
            + wavfile.silence(b_at - lead_s - q_at - len(question) / 2 / CAPTURE_RATE_HZ)
            + lead + barge_in + wavfile.silence(TAIL_S)
        )
        q_len = spoken.question_span_s[1] - spoken.question_span_s[0]
        b_len = spoken.barge_in_span_s[1] - spoken.barge_in_span_s[0]
        return DemoInput(pcm, (q_at, q_at + q_len), (b_at, b_at + b_len))
    q_s = len(question) / 2 / CAPTURE_RATE_HZ
    b_s = len(barge_in) / 2 / CAPTURE_RATE_HZ
    gap_s = BARGE_IN_AT_S - QUESTION_AT_S - q_s
    if gap_s < 0:  # pragma: no cover - only if the fixtures are replaced by longer ones
        raise ValueError("the question fixture is too long for the demo timeline")
    pcm = (
        wavfile.silence(QUESTION_AT_S)
        + question
        + wavfile.silence(gap_s)
        + barge_in
        + wavfile.silence(TAIL_S)
    )
    return DemoInput(pcm, (QUESTION_AT_S, QUESTION_AT_S + q_s), (BARGE_IN_AT_S, BARGE_IN_AT_S + b_s))


def regenerate_speech(dest: Path = DATA_DIR) -> list[Path]:
    """Re-make the speech fixtures with espeak-ng and sox (developers only)."""
    espeak, sox = shutil.which("espeak-ng"), shutil.which("sox")
    if espeak is None or sox is None:
        raise UnavailableError(
            "regenerating the speech fixtures needs espeak-ng and sox: apt-get install espeak-ng sox"
        )
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (text, wpm) in SPEECH.items():
            raw = Path(tmp) / name
            subprocess.run([espeak, "-v", "en-us", "-s", str(wpm), "-w", str(raw), text], check=True)
            target = dest / name
            subprocess.run([sox, str(raw), "-r", str(CAPTURE_RATE_HZ), "-c", "1", "-b", "16", str(target),
                            "norm", "-3"], check=True)
            out.append(target)
    return out
