"""Fixtures for the emulator's unit tests: real speech, a fast agent voice, an empty outbox."""

from __future__ import annotations

import pytest

from device.emulator.outbox import Outbox
from device.emulator.recording import ConversationRecord
from device.emulator.speech import Synthesizer

USER_SENTENCE = "Could you tell me what is on show in the museum today?"


@pytest.fixture(scope="session")
def user_speech_16k() -> bytes:
    """A spoken sentence (espeak-ng when installed), S16LE 16 kHz, ~3 s."""
    return Synthesizer("auto").pcm(USER_SENTENCE, 16000)


@pytest.fixture(scope="session")
def tone_synth() -> Synthesizer:
    """Fast deterministic agent voice for state-machine tests."""
    return Synthesizer("tone")


@pytest.fixture
def out() -> Outbox:
    """The outbox of a fresh conversation's record."""
    return Outbox(ConversationRecord("conv_0123456789abcdef", "agent_emulator", 0, 0.0, "pcm_16000", "pcm_16000"))
