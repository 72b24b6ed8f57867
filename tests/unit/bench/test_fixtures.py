"""The bundled demo's input: real speech where the timeline holds the button."""

from __future__ import annotations

import webrtcvad

from device.bench import fixtures, script
from device.core.audioformat import CAPTURE_RATE_HZ

FRAME = 480  # 30 ms at 16 kHz, one webrtcvad frame


def _voiced_s(pcm: bytes) -> list[float]:
    vad = webrtcvad.Vad(2)
    out = []
    for i in range(0, len(pcm) - 2 * FRAME + 1, 2 * FRAME):
        if vad.is_speech(pcm[i : i + 2 * FRAME], CAPTURE_RATE_HZ):
            out.append(i / 2 / CAPTURE_RATE_HZ)
    return out


def test_the_speech_fixtures_are_real_speech_at_16_khz() -> None:
    for path in (fixtures.QUESTION_WAV, fixtures.BARGE_IN_WAV):
        pcm, info = fixtures.wavfile.read_wav(path)
        assert (info.rate_hz, info.channels, info.sample_bits) == (16000, 1, 16)
        assert len(_voiced_s(pcm)) * 0.03 > 0.5 * info.duration_s, path


def test_speech_in_the_demo_input_falls_inside_the_button_presses() -> None:
    demo = fixtures.demo_input()
    steps = script.load_steps(fixtures.DEMO_TIMELINE)
    held = [(a.at_s, b.at_s) for a, b in zip(steps[::2], steps[1::2], strict=True)]
    voiced = _voiced_s(demo.pcm)
    assert voiced, "no speech in the demo input"
    outside = [t for t in voiced if not any(a <= t <= b for a, b in held)]
    assert outside == []
    # both utterances are there, each inside its own press
    assert any(held[0][0] <= t <= held[0][1] for t in voiced)
    assert any(held[1][0] <= t <= held[1][1] for t in voiced)
    assert demo.duration_s > held[-1][1]
