"""Noise suppression and automatic gain on the microphone (the only importer of ``webrtc_noise_gain``).

WebRTC's audio processing works on 10 ms frames (160 samples at 16 kHz); a
capture block of 4000 frames is exactly 25 of them, so a block is processed
in place and comes out whole with the same length: no audio is held back
between blocks and no latency is added beyond the processing time.

The controller applies it once per captured block, before the gate, the VAD,
the wake-word detector and the agent see the audio. No threads, no I/O.
"""

from __future__ import annotations

from typing import Any

from device.core.audioformat import CAPTURE_RATE_HZ
from device.core.errors import ConfigError

FRAME_SAMPLES = CAPTURE_RATE_HZ // 100  # 10 ms
FRAME_BYTES = FRAME_SAMPLES * 2
INSTALL_HINT = "install the dsp extra: pip install 'voice-appliance[dsp]' (or the wake extra, which includes it)"


def _module() -> Any:
    try:
        import webrtc_noise_gain
    except (ImportError, OSError) as e:
        raise ConfigError(
            f"noise suppression / automatic gain need webrtc-noise-gain, which is not available here ({e}); "
            f"{INSTALL_HINT}, or set audio.noise_suppression = 0 and audio.auto_gain_dbfs = 0",
            "audio.noise_suppression",
        ) from e
    return webrtc_noise_gain


def check_available() -> None:
    """ConfigError (exit 78) when the library is missing."""
    _module()


class NoiseGain:
    """Processes S16LE mono 16 kHz blocks: noise suppression ``0..4``, automatic gain target ``-dBFS`` (0: off)."""

    def __init__(self, noise_suppression: int, auto_gain_dbfs: int) -> None:
        self.noise_suppression = noise_suppression
        self.auto_gain_dbfs = auto_gain_dbfs
        self._processor = _module().AudioProcessor(auto_gain_dbfs, noise_suppression)
        self.frames = 0

    def process(self, pcm: bytes) -> bytes:
        """Return the processed block (same length as ``pcm``; a block of whole 10 ms frames, as capture's are)."""
        whole = len(pcm) - len(pcm) % FRAME_BYTES
        out = bytearray()
        for pos in range(0, whole, FRAME_BYTES):
            out += self._processor.Process10ms(pcm[pos:pos + FRAME_BYTES]).audio
        self.frames += whole // FRAME_BYTES
        return bytes(out) + pcm[whole:]  # a partial last frame (never from capture) passes unprocessed

    def describe(self) -> str:
        return describe(self.noise_suppression, self.auto_gain_dbfs)


def make(noise_suppression: int, auto_gain_dbfs: int) -> NoiseGain | None:
    """A processor, or None when both are off (the audio passes untouched)."""
    if not noise_suppression and not auto_gain_dbfs:
        return None
    return NoiseGain(noise_suppression, auto_gain_dbfs)


def describe(noise_suppression: int, auto_gain_dbfs: int) -> str:
    """One line for ``run --check`` and ``doctor``."""
    if not noise_suppression and not auto_gain_dbfs:
        return "off"
    try:
        check_available()
    except ConfigError as e:
        return f"unavailable: {e}"
    ns = f"noise suppression {noise_suppression}" if noise_suppression else "noise suppression off"
    agc = f"auto gain -{auto_gain_dbfs} dBFS" if auto_gain_dbfs else "auto gain off"
    return f"{ns}, {agc}"
