"""Noise suppression and automatic gain (device/drivers/dsp.py) on real speech and noise."""

from __future__ import annotations

import sys

import pytest

from device.app.settings import load_settings
from device.core.errors import ConfigError
from device.drivers import dsp
from tests import speechgen as g
from tests.support import needs

pytestmark = g.needs_tools

QUESTION = "when does the museum open on sunday"
LEAD_S = 1.0  # noise alone before the speech


def _noisy(snr_db: float) -> tuple[bytes, slice, slice]:
    speech = g.silence(LEAD_S) + g.speak(QUESTION) + g.silence(LEAD_S)
    noisy = g.mix(speech, g.noise("whitenoise", 10.0), snr_db)
    # Measure the noise alone after the suppressor's first half second of adaptation.
    noise_only = slice(int(0.5 * g.RATE_HZ) * 2, int(LEAD_S * g.RATE_HZ) * 2)
    spoken = slice(int(LEAD_S * g.RATE_HZ) * 2, len(speech) - int(LEAD_S * g.RATE_HZ) * 2)
    return noisy, noise_only, spoken


def _run(proc: dsp.NoiseGain, pcm: bytes) -> bytes:
    out = []
    for block in g.blocks(pcm):
        processed = proc.process(block)
        assert len(processed) == len(block)  # a block comes out whole: nothing held back
        out.append(processed)
    return b"".join(out)[: len(pcm)]


def test_off_is_no_processor_at_all() -> None:
    assert dsp.make(0, 0) is None


@pytest.mark.realtime
@needs("webrtc_noise_gain", "dsp")
def test_suppression_lowers_noise_far_more_than_speech_so_snr_improves() -> None:
    noisy, noise_only, spoken = _noisy(5.0)
    out = _run(dsp.NoiseGain(3, 0), noisy)
    noise_drop_db = g.db(g.rms(noisy[noise_only]) / g.rms(out[noise_only]))
    speech_drop_db = g.db(g.rms(noisy[spoken]) / g.rms(out[spoken]))
    # Measured here (white noise, 5 dB SNR, level 3): noise -17 dB, speech region -2.4 dB.
    assert noise_drop_db >= 10.0
    assert noise_drop_db - speech_drop_db >= 6.0


@needs("webrtc_noise_gain", "dsp")
def test_a_stronger_level_suppresses_more() -> None:
    noisy, noise_only, _ = _noisy(5.0)
    drops = [g.db(g.rms(noisy[noise_only]) / g.rms(_run(dsp.NoiseGain(level, 0), noisy)[noise_only]))
             for level in (1, 4)]
    assert drops[1] > drops[0] + 6.0  # measured: 6 dB at level 1, 20 dB at level 4


@pytest.mark.realtime
@needs("webrtc_noise_gain", "dsp")
def test_automatic_gain_raises_quiet_speech() -> None:
    quiet = g.scale(g.speak(QUESTION + ", and where can I buy a ticket"), -24.0)
    proc = dsp.NoiseGain(0, 3)
    _run(proc, quiet)  # the gain adapts over the first sentence
    out = _run(proc, quiet)
    assert g.db(g.rms(out) / g.rms(quiet)) >= 6.0  # measured: +12 dB (-45 to -33 dBFS)


def test_settings_without_the_library_are_a_config_error_that_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "webrtc_noise_gain", None)  # import fails as if not installed
    with pytest.raises(ConfigError) as e:
        load_settings(environ={}, overrides=["audio.noise_suppression=2"])
    assert "voice-appliance[dsp]" in str(e.value)
    assert "audio.noise_suppression = 0" in str(e.value)
    with pytest.raises(ConfigError):
        load_settings(environ={}, overrides=["audio.auto_gain_dbfs=10"])
    load_settings(environ={}, overrides=["audio.noise_suppression=0"])  # off needs nothing
    assert dsp.describe(2, 0).startswith("unavailable")


@pytest.mark.parametrize(
    ("key", "value"), [("noise_suppression", 5), ("noise_suppression", -1), ("auto_gain_dbfs", 32)]
)
def test_out_of_range_values_are_refused(key: str, value: int) -> None:
    with pytest.raises(ConfigError, match=f"audio.{key}"):
        load_settings(environ={}, overrides=[f"audio.{key}={value}"])
