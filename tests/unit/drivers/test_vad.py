"""The kiosk's VAD: real webrtcvad, fed frames at the capture rate."""

from __future__ import annotations

from device.core.gate import VAD_FRAME_SAMPLES
from device.drivers.vad import WebrtcVad
from device.emulator.speech import speechlike_pcm

FRAME_BYTES = VAD_FRAME_SAMPLES * 2


def frames(pcm: bytes) -> list[bytes]:
    return [pcm[i:i + FRAME_BYTES] for i in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES)]


def test_silence_is_no_speech() -> None:
    vad = WebrtcVad(2)
    assert not any(vad.is_speech(f) for f in frames(bytes(FRAME_BYTES * 50)))


def test_speech_at_the_capture_rate_is_heard() -> None:
    vad = WebrtcVad(2)
    assert sum(vad.is_speech(f) for f in frames(speechlike_pcm("hello there, how are you", 16000))) > 20

