"""Audio formats of the agent protocol (pure).

``agent_output_audio_format`` / ``user_input_audio_format`` name a format such
as ``pcm_16000`` or ``ulaw_8000``; PCM is signed 16-bit little-endian mono.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from device.core.errors import ProtocolError

Encoding = Literal["pcm", "ulaw"]

PCM_RATES_HZ = (8000, 16000, 22050, 24000, 44100, 48000)
SUPPORTED = (*(f"pcm_{r}" for r in PCM_RATES_HZ), "ulaw_8000")

# What the device captures and sends: 4000-frame blocks of S16_LE mono 16 kHz.
CAPTURE_RATE_HZ = 16000
CAPTURE_BLOCK_FRAMES = 4000
# What playback writes per ALSA call: 62.5 ms whatever the rate.
PLAYBACK_CHUNK_S = 0.0625


@dataclass(frozen=True)
class AudioFormat:
    encoding: Encoding
    rate_hz: int

    @property
    def name(self) -> str:
        return f"{self.encoding}_{self.rate_hz}"

    @property
    def bytes_per_frame(self) -> int:
        return 2 if self.encoding == "pcm" else 1

    @property
    def chunk_frames(self) -> int:
        """Frames in one 62.5 ms playback chunk (1000 at 16 kHz)."""
        return round(self.rate_hz * PLAYBACK_CHUNK_S)

    def duration_s(self, nbytes: int) -> float:
        return nbytes / self.bytes_per_frame / self.rate_hz


PCM_16000 = AudioFormat("pcm", 16000)


def parse_format(name: str) -> AudioFormat:
    """``"pcm_22050"`` → AudioFormat; ProtocolError for anything else."""
    if name not in SUPPORTED:
        raise ProtocolError(
            f"the agent uses audio format {name!r}, which this device cannot play or send; "
            f"set the agent's audio format to one of {', '.join(SUPPORTED)} in the ElevenLabs dashboard"
        )
    enc, _, rate = name.partition("_")
    return AudioFormat("pcm" if enc == "pcm" else "ulaw", int(rate))
