"""Voice activity detection on the microphone (the kiosk's only importer of ``webrtcvad``).

webrtcvad judges one frame of 10, 20 or 30 ms of S16LE mono audio at a time.
:class:`WebrtcVad` fixes the rate to the capture rate, so its callers (the
gate, ``voice-appliance check vad``) pass frames only. C code, no threads, no I/O.
"""

from __future__ import annotations

from device.core.audioformat import CAPTURE_RATE_HZ


class WebrtcVad:
    """``is_speech(frame)`` for S16LE mono frames at ``rate_hz``; ``aggressiveness`` 0 (least) to 3 (most)."""

    def __init__(self, aggressiveness: int, rate_hz: int = CAPTURE_RATE_HZ) -> None:
        import webrtcvad  # on use, as the gate did: importing the controller does not load the C extension

        self.rate_hz = rate_hz
        self._vad = webrtcvad.Vad(aggressiveness)

    def is_speech(self, frame: bytes) -> bool:
        return bool(self._vad.is_speech(frame, self.rate_hz))
