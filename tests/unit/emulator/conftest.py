"""Fixtures for the emulator's unit tests: real speech, a settable clock."""

from __future__ import annotations

import pytest

from device.emulator.speech import Synthesizer

USER_SENTENCE = "Could you tell me what is on show in the museum today?"


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, start_s: float = 1000.0) -> None:
        self.now_s = start_s

    def __call__(self) -> float:
        return self.now_s

    def advance(self, delta_s: float) -> float:
        self.now_s += delta_s
        return self.now_s


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def user_speech_16k() -> bytes:
    """A spoken sentence (espeak-ng when installed), S16LE 16 kHz, ~3 s."""
    return Synthesizer("auto").pcm(USER_SENTENCE, 16000)


@pytest.fixture(scope="session")
def tone_synth() -> Synthesizer:
    """Fast deterministic agent voice for state-machine tests."""
    return Synthesizer("tone")
