"""Noise suppression on the real path: ALSA file microphone -> controller (NS/AGC once) -> gate -> the agent."""

from __future__ import annotations

from pathlib import Path

import pytest

from device.core.config import GateConfig, SessionConfig
from tests import speechgen as g
from tests.integration.daemonrig import WAIT_S, Rig, samples_equal_somewhere

pytestmark = [pytest.mark.realtime, g.needs_tools]

NOISE_S = 2.0


def noisy_input() -> tuple[bytes, bytes]:
    """Noise alone, then a question in the same noise at 5 dB SNR, then noise; and the noise level reference."""
    question = g.speak("when does the museum open on sunday", "en-us")
    clean = g.silence(NOISE_S) + question + g.silence(3.0)
    return g.mix(clean, g.noise("whitenoise", 10.0), 5.0), question


def received(tmp_path: Path, pcm: bytes, **audio: int) -> bytes:
    gate = GateConfig(mode="always_open")
    with Rig(tmp_path, pcm, gate=gate, session=SessionConfig(idle_timeout_s=30.0), audio=audio) as r:
        r.d.command("start")
        r.wait_state("listening")
        r.wait_captured(len(pcm) / 32000)
        r.d.command("stop")
        record = r.emu.wait_for_conversation_end(timeout_s=WAIT_S)
        r.d.stop()
    return record.user_audio_pcm


def first_sent(pcm: bytes) -> int:
    """Byte offset of the first microphone sample the agent got (zeros before the conversation)."""
    return next(i for i in range(0, len(pcm), 2) if pcm[i:i + 2] != b"\0\0")


def noise_rms(pcm: bytes) -> float:
    """0.5 to 1.0 s after sending began: noise alone, the suppressor has adapted by then."""
    start = first_sent(pcm)
    return g.rms(pcm[start + 16000:start + 32000])


def test_with_suppression_the_agent_hears_less_noise(tmp_path: Path) -> None:
    pcm, _ = noisy_input()
    lead = int(NOISE_S * 16000) * 2
    off = received(tmp_path / "off", pcm)
    # Off: the agent gets the microphone's samples unchanged (a long run of them, noise and question).
    assert samples_equal_somewhere(pcm[lead - 16000:lead + 48000], off)
    began = pcm.find(off[first_sent(off):first_sent(off) + 64])
    assert began >= 0
    assert began + 32000 <= lead  # the measured stretch is noise alone
    on = received(tmp_path / "on", pcm, noise_suppression=3)
    assert not samples_equal_somewhere(pcm[lead - 16000:lead + 48000], on)
    # The same kind of stretch, heard by the agent without and with suppression: measured about -17 dB.
    assert g.db(noise_rms(off) / noise_rms(on)) >= 10.0
