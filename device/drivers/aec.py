"""Echo cancellation on the microphone (the only importer of ``pywebrtc_audio`` and of numpy in the firmware).

WebRTC's AEC3 (``pywebrtc-audio``, the ``aec`` extra) takes the speaker's
sound out of the microphone's. Two halves, on two threads:

- :class:`EchoTap` is handed to playback: every piece written to ALSA, cues
  included, with when it will be heard (write time plus the device's delay),
  and every flush. It converts to the capture rate and keeps the last seconds
  in a :class:`device.core.echoref.EchoReference` (under its own lock: the
  playback thread writes, the controller's reads).
- :class:`EchoCanceller` is the microphone path's first stage, on the
  controller's thread: for each captured block it takes the reference under
  the block from the tap and runs both through AEC3 in 10 ms frames (a block
  of 4000 samples is 25 of them: nothing is held back between blocks). It
  reports, per 10 ms frame, the levels the duplex rules need
  (:mod:`device.core.duplex`), and for the status the echo it takes off and the
  echo's delay.

The reference is aligned to what ALSA will play; the room and the
microphone's own buffering come after that, and AEC3's delay estimator finds
them (measured on the bench's echoing room through PulseAudio: 100 to 190 ms).
"""

from __future__ import annotations

import collections
import logging
import math
import threading
from typing import Any

from device.core.audioformat import CAPTURE_RATE_HZ
from device.core.duplex import FrameLevels
from device.core.echoref import CaptureClock, EchoDelay, EchoReference
from device.core.errors import ConfigError
from device.drivers.logs import RateLimitedLog

log = logging.getLogger(__name__)

FRAME_SAMPLES = CAPTURE_RATE_HZ // 100  # 10 ms
LOG_EVERY_S = 10.0
INSTALL_HINT = "install the aec extra: pip install 'voice-appliance[aec]' (install.sh --extras aec)"
# What AEC3 needs here: 64-bit Linux (the wheels are x86_64 and aarch64).
PLATFORMS = "64-bit Linux (x86_64, aarch64)"


def _module() -> Any:
    try:
        import pywebrtc_audio
    except (ImportError, OSError) as e:
        raise ConfigError(
            f"echo cancellation needs pywebrtc-audio, which is not available here ({e}); {INSTALL_HINT} "
            f"(wheels exist for {PLATFORMS}), or set audio.echo_cancellation = \"off\"",
            "audio.echo_cancellation",
        ) from e
    return pywebrtc_audio


def _numpy() -> Any:
    import numpy  # pywebrtc-audio depends on it

    return numpy


def available() -> str | None:
    """None when echo cancellation can run here; otherwise why not (one line)."""
    try:
        _module()
    except ConfigError as e:
        return str(e)
    return None


def library_version() -> str:
    try:
        from importlib.metadata import version

        return version("pywebrtc-audio")
    except Exception:  # a version string is cosmetic
        return "unknown"


class EchoTap:
    """What the speaker plays, for the canceller (thread-safe; playback writes, the controller reads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ref = EchoReference()
        self._np = _numpy()
        self._log = RateLimitedLog(log, LOG_EVERY_S)

    def played(self, heard_at_s: float, pcm: bytes, rate_hz: int) -> None:
        """``pcm`` (S16_LE mono at ``rate_hz``, as written to ALSA) is heard from ``heard_at_s`` on.

        Never raises: the canceller's reference must not stop the speaker.
        """
        try:
            if rate_hz != CAPTURE_RATE_HZ:
                pcm = self._resample(pcm, rate_hz)
            with self._lock:
                self._ref.played(heard_at_s, pcm)
        except Exception as e:
            self._log.log(logging.ERROR, "tap", "echo cancellation's reference failed (%r); playback goes on", e)

    def flushed(self, at_s: float) -> None:
        with self._lock:
            self._ref.flushed(at_s)

    def span(self, end_s: float, samples: int) -> bytes:
        with self._lock:
            return self._ref.span(end_s, samples).pcm

    def _resample(self, pcm: bytes, rate_hz: int) -> bytes:
        # Linear interpolation is enough for a reference: AEC3 works below 8 kHz of it and adapts
        # to the speaker's response anyway; the streamed pieces are long (62.5 ms) next to a sample.
        np = self._np
        x = np.frombuffer(pcm[: len(pcm) - len(pcm) % 2], dtype="<i2").astype(np.float32)
        n = round(len(x) * CAPTURE_RATE_HZ / rate_hz)
        if n == 0 or len(x) == 0:
            return b""
        pos = np.arange(n, dtype=np.float64) * (rate_hz / CAPTURE_RATE_HZ)
        y = np.interp(pos, np.arange(len(x)), x)
        return bytes(np.clip(np.round(y), -32768, 32767).astype("<i2").tobytes())


class EchoCanceller:
    """AEC3 on S16_LE mono 16 kHz blocks, against the tap's reference."""

    def __init__(self, tap: EchoTap) -> None:
        self._lib = _module()
        self._np = _numpy()
        self.tap = tap
        self._proc = self._lib.AudioProcessor(sample_rate=CAPTURE_RATE_HZ, echo_cancellation=True)
        self.clock = CaptureClock()
        self.delay = EchoDelay()
        self._reductions: collections.deque[float] = collections.deque(maxlen=500)  # echo frames, dB taken off

    def cancel(self, pcm: bytes, captured_at_s: float, seq: int) -> tuple[bytes, list[FrameLevels]]:
        """Block ``seq`` without the speaker's echo (same length), and each 10 ms frame's levels."""
        np = self._np
        n = len(pcm) // 2
        whole = n - n % FRAME_SAMPLES
        if whole == 0:
            return pcm, []
        ended_s = self.clock.place(seq, n, captured_at_s)
        ref_pcm = self.tap.span(ended_s, n)
        near = np.frombuffer(pcm, dtype="<i2", count=whole)
        far = np.frombuffer(ref_pcm, dtype="<i2", count=whole)
        out = self._proc.process(near, far)
        levels = _frame_levels(np, near, out, far, captured_at_s - n / CAPTURE_RATE_HZ)  # on the gate's clock
        self._reductions.extend(f.near_dbfs - f.out_dbfs for f in levels if f.ref_dbfs > -50.0 and f.near_dbfs > -60.0)
        if self.delay.feed([f.near_dbfs for f in levels], [f.ref_dbfs for f in levels]):
            log.info("echo delay now %.0f ms after ALSA's (match %.2f)", self.delay.delay_s * 1000,
                     self.delay.correlation)
        return bytes(out.astype("<i2").tobytes()) + pcm[whole * 2:], levels

    @property
    def echo_reduction_db(self) -> float:
        """The median of what the canceller took off the last 5 s of frames that carried echo (0: none yet)."""
        if not self._reductions:
            return 0.0
        return float(sorted(self._reductions)[len(self._reductions) // 2])

    @property
    def stats(self) -> dict[str, float]:
        return {"echo_reduction_db": round(self.echo_reduction_db, 1),
                "echo_delay_ms": round(self.delay.delay_s * 1000)}


def _frame_levels(np: Any, near: Any, out: Any, far: Any, start_s: float) -> list[FrameLevels]:
    frames = len(near) // FRAME_SAMPLES

    def db(x: Any) -> Any:
        e = np.mean(x.reshape(frames, FRAME_SAMPLES).astype(np.float64) ** 2, axis=1)
        return 10 * np.log10(e + 1e-3) - 20 * math.log10(32768)

    n_db, o_db, f_db = db(near), db(out), db(far)
    step = FRAME_SAMPLES / CAPTURE_RATE_HZ
    return [
        FrameLevels(start_s + (i + 1) * step, float(n_db[i]), float(o_db[i]), float(f_db[i]))
        for i in range(frames)
    ]


def will_run(cfg_value: str, barge_in: str) -> bool:
    """Whether ``audio.echo_cancellation`` runs here; ConfigError (exit 78) for "on" without the library.

    "auto" runs it for ``gate.barge_in = "voice"`` only: with any other barge-in the echo guard keeps
    the agent's voice out anyway, and AEC3 would take a user who talks over the agent out too -- the
    wake word said over a reply, for one (measured: the bench's hands-free demo then never barged in).
    """
    if cfg_value == "off":
        return False
    if cfg_value == "on":
        _module()
        return True
    return barge_in == "voice" and available() is None


def make(cfg_value: str, barge_in: str) -> tuple[EchoTap, EchoCanceller] | None:
    """The tap and the canceller the settings ask for, or None (see :func:`will_run`)."""
    if not will_run(cfg_value, barge_in):
        return None
    tap = EchoTap()
    return tap, EchoCanceller(tap)


def describe(cfg_value: str, barge_in: str) -> str:
    """One line for ``run --check`` and ``doctor``: whether the kiosk can hold a full-duplex conversation."""
    if cfg_value == "off":
        return "off (audio.echo_cancellation = \"off\"): half duplex, the microphone closes while the agent speaks"
    if cfg_value == "auto" and barge_in != "voice":
        return f"off (auto: only for gate.barge_in = \"voice\", here {barge_in!r}): half duplex"
    reason = available()
    if reason is None:
        duplex = ("full duplex (gate.barge_in = \"voice\")" if barge_in == "voice"
                  else f"half duplex: gate.barge_in = {barge_in!r}")
        return f"on (WebRTC AEC3, pywebrtc-audio {library_version()}): {duplex}"
    if cfg_value == "auto":
        return f"not available here, so half duplex: {INSTALL_HINT} (wheels exist for {PLATFORMS})"
    return f"unavailable: {reason}"


__all__ = ["EchoCanceller", "EchoTap", "available", "describe", "make", "will_run"]
