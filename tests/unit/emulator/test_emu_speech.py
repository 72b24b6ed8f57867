"""The agent's voice: espeak-ng, and the speech-like fallback when it is missing."""

from __future__ import annotations

import logging
import shutil

import pytest
import webrtcvad

from device.core.audioformat import parse_format
from device.core.errors import UnavailableError
from device.emulator import pcm
from device.emulator.speech import Synthesizer, speechlike_pcm

TEXT = "Welcome to the museum. The new wing opens at ten, and the cafe is on the left."
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


def voiced_fraction(audio: bytes, rate_hz: int = 16000) -> float:
    vad = webrtcvad.Vad(2)
    frame = rate_hz * 30 // 1000 * 2
    frames = [audio[i : i + frame] for i in range(0, len(audio) - frame + 1, frame)]
    return sum(vad.is_speech(f, rate_hz) for f in frames) / len(frames)


def longest_silence_s(audio: bytes, rate_hz: int = 16000) -> float:
    frame = rate_hz // 100 * 2
    run = best = 0
    for i in range(0, len(audio) - frame + 1, frame):
        run = run + 1 if pcm.peak(audio[i : i + frame]) < 200 else 0
        best = max(best, run)
    return best / 100


def test_speechlike_is_deterministic_and_depends_on_the_text() -> None:
    assert speechlike_pcm(TEXT) == speechlike_pcm(TEXT)
    assert speechlike_pcm(TEXT) != speechlike_pcm(TEXT + " Enjoy!")


def test_speechlike_sounds_like_speech_to_a_vad_and_pauses_at_full_stops() -> None:
    audio = speechlike_pcm(TEXT)
    assert voiced_fraction(audio) > 0.6
    assert longest_silence_s(audio) >= 0.25  # the pause after "museum."


def test_speechlike_length_follows_the_words_and_the_rate() -> None:
    one = len(speechlike_pcm("Hello there.")) / 32000
    many = len(speechlike_pcm(TEXT)) / 32000
    slow = len(speechlike_pcm(TEXT, words_per_minute=100)) / 32000
    assert 0.4 < one < 2.0
    # 16 words at 175 wpm take about 5.5 s when spoken.
    assert 3.5 < many < 8.0
    assert slow > many * 1.4


@pytest.mark.parametrize(
    "name", ["pcm_8000", "pcm_16000", "pcm_22050", "pcm_24000", "pcm_44100", "pcm_48000", "ulaw_8000"]
)
def test_render_in_every_protocol_format(tone_synth: Synthesizer, name: str) -> None:
    fmt = parse_format(name)
    audio = tone_synth.render(TEXT, fmt)
    reference_s = len(tone_synth.pcm(TEXT, 16000)) / 32000
    assert fmt.duration_s(len(audio)) == pytest.approx(reference_s, abs=0.01)
    decoded = pcm.to_pcm(audio, fmt)
    assert pcm.peak(decoded) > 3000


def test_tone_backend_is_used_when_espeak_is_missing(caplog: pytest.LogCaptureFixture) -> None:
    synth = Synthesizer("auto", espeak_path="")
    assert synth.backend == "tone"
    assert synth.pcm(TEXT, 16000) == speechlike_pcm(TEXT)


def test_a_broken_espeak_falls_back_to_the_tone_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    synth = Synthesizer("auto", espeak_path="/nonexistent/espeak-ng")
    with caplog.at_level(logging.WARNING, logger="device.emulator.speech"):
        first = synth.pcm(TEXT, 16000)
        synth.pcm("Something else.", 16000)
    assert first == speechlike_pcm(TEXT)
    assert len([r for r in caplog.records if "espeak-ng failed" in r.getMessage()]) == 1


def test_forcing_espeak_without_it_is_a_clear_error() -> None:
    with pytest.raises(UnavailableError, match="apt install espeak-ng"):
        Synthesizer("espeak", espeak_path="")


def test_forced_espeak_that_fails_raises() -> None:
    synth = Synthesizer("espeak", espeak_path="/nonexistent/espeak-ng")
    with pytest.raises(UnavailableError, match="espeak-ng failed"):
        synth.pcm(TEXT, 16000)


def test_results_are_cached(tone_synth: Synthesizer) -> None:
    assert tone_synth.pcm(TEXT, 24000) is tone_synth.pcm(TEXT, 24000)


@pytest.mark.realtime
@needs_espeak
def test_espeak_speaks_the_text() -> None:
    synth = Synthesizer("auto")
    assert synth.backend == "espeak"
    audio = synth.pcm(TEXT, 16000)
    assert audio != speechlike_pcm(TEXT)
    assert 3.0 < len(audio) / 32000 < 9.0
    assert voiced_fraction(audio) > 0.5
    # A different voice/rate gives different audio.
    assert Synthesizer("espeak", words_per_minute=260).pcm(TEXT, 16000) != audio
