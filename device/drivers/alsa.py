"""ALSA through pyalsaaudio (>= 0.10): the only module of the firmware that imports it.

PCMs are opened non-blocking; the workers wait in poll() on the PCM's
descriptors plus their own eventfd (:mod:`device.drivers.waker`), so a stop or a
flush never waits for a period to finish. Every pyalsaaudio error becomes an
:class:`~device.core.errors.AudioError` whose message says what to do.

pyalsaaudio quirks this module relies on (0.10/0.11, read from its source and
tried): ``read()``/``write()`` return ``-EPIPE`` after an xrun and have already
called ``snd_pcm_prepare()``; ``-EAGAIN`` comes back as 0; ``close()`` of a
playback PCM *drains* it, so we always ``drop()`` first.
"""

from __future__ import annotations

import contextlib
import errno
import logging
from collections.abc import Sequence
from typing import Any

import alsaaudio

from device.core.errors import AudioError
from device.drivers.waker import PollFd

log = logging.getLogger(__name__)

_S16_LE = alsaaudio.PCM_FORMAT_S16_LE


def _hint(role: str, device: str, error: Exception, rate_hz: int, channels: int) -> str:
    text = str(error)
    lister = "arecord -L" if role == "microphone" else "aplay -L"
    key = "audio.capture_device" if role == "microphone" else "audio.playback_device"
    if "No such file" in text or "No such device" in text or "Unknown PCM" in text:
        what = (
            f"not found (is it plugged in and its driver loaded? list devices with "
            f"`{lister}` and set {key})"
        )
    elif "busy" in text:
        what = (
            "busy: another program is using it; stop that program or use a shared "
            "device such as 'default' (dmix/dsnoop)"
        )
    elif "Invalid argument" in text:
        what = (
            f"does not take S16_LE {rate_hz} Hz with {channels} channel(s); use a "
            f"'plughw:CARD=…,DEV=0' or 'default' device so ALSA converts"
        )
    else:
        what = f"failed; check {key} and the device (`{lister}`)"
    return f"{role} {device!r}: {text}: {what}"


class AlsaCapture:
    """A capture PCM: S16_LE, non-blocking, ``periods`` periods of ``period_frames``."""

    def __init__(self, device: str, rate_hz: int, channels: int, period_frames: int, periods: int) -> None:
        self.device = device
        self.channels = channels
        try:
            self._pcm = alsaaudio.PCM(
                alsaaudio.PCM_CAPTURE,
                alsaaudio.PCM_NONBLOCK,
                device=device,
                rate=rate_hz,
                channels=channels,
                format=_S16_LE,
                periodsize=period_frames,
                periods=periods,
            )
        except alsaaudio.ALSAAudioError as e:
            raise AudioError(_hint("microphone", device, e, rate_hz, channels)) from e
        _check_setup(self._pcm, "microphone", device, rate_hz, channels)
        self._fds = [(fd, mask) for fd, mask in self._pcm.polldescriptors()]

    def read(self) -> bytes | None:
        try:
            n, data = self._pcm.read()
        except alsaaudio.ALSAAudioError as e:
            raise AudioError(f"microphone {self.device!r} stopped delivering audio: {e}") from e
        if n == -errno.EPIPE:
            return None
        return bytes(data)

    def pollfds(self) -> Sequence[PollFd]:
        return self._fds

    def readable(self, ready: Sequence[PollFd]) -> bool:
        if not ready:
            return False
        try:
            return bool(self._pcm.polldescriptors_revents(list(ready)))
        except alsaaudio.ALSAAudioError as e:
            raise AudioError(f"microphone {self.device!r} failed: {e}") from e

    def close(self) -> None:
        try:
            self._pcm.close()
        except alsaaudio.ALSAAudioError:
            log.debug("closing microphone %s failed", self.device, exc_info=True)


class AlsaPlayback:
    """A playback PCM: S16_LE mono at ``rate_hz``, non-blocking."""

    clocked = True

    def __init__(self, device: str, rate_hz: int, period_frames: int, periods: int) -> None:
        self.device = device
        try:
            self._pcm = alsaaudio.PCM(
                alsaaudio.PCM_PLAYBACK,
                alsaaudio.PCM_NONBLOCK,
                device=device,
                rate=rate_hz,
                channels=1,
                format=_S16_LE,
                periodsize=period_frames,
                periods=periods,
            )
        except alsaaudio.ALSAAudioError as e:
            raise AudioError(_hint("speaker", device, e, rate_hz, 1)) from e
        info = _check_setup(self._pcm, "speaker", device, rate_hz, 1)
        self.rate_hz = rate_hz
        self.period_frames = int(info.get("period_size", period_frames))
        self.buffer_frames = int(info.get("buffer_size", period_frames * periods))
        self._fds = [(fd, mask) for fd, mask in self._pcm.polldescriptors()]

    def write(self, data: bytes) -> int:
        try:
            n = self._pcm.write(data)
        except alsaaudio.ALSAAudioError as e:
            raise AudioError(f"speaker {self.device!r} stopped taking audio: {e}") from e
        if n == -errno.EPIPE:
            return -1
        return int(n)

    def delay_frames(self) -> int:
        try:
            avail = int(self._pcm.avail())
        except alsaaudio.ALSAAudioError as e:
            raise AudioError(f"speaker {self.device!r} failed: {e}") from e
        if avail < 0:  # -EPIPE: it ran dry (xrun), nothing left to play
            return 0
        return max(0, self.buffer_frames - avail)

    def pollfds(self) -> Sequence[PollFd]:
        return self._fds

    def writable(self, ready: Sequence[PollFd]) -> bool:
        if not ready:
            return False
        try:
            return bool(self._pcm.polldescriptors_revents(list(ready)))
        except alsaaudio.ALSAAudioError as e:
            raise AudioError(f"speaker {self.device!r} failed: {e}") from e

    def seconds_until_room(self, frames: int) -> float:
        return 0.0

    def drop(self) -> None:
        try:
            self._pcm.drop()
        except alsaaudio.ALSAAudioError as e:
            raise AudioError(f"speaker {self.device!r} failed to stop: {e}") from e

    def close(self) -> None:
        # pyalsaaudio's close() drains playback; dropping first makes it return at once
        with contextlib.suppress(alsaaudio.ALSAAudioError):
            self._pcm.drop()
        try:
            self._pcm.close()
        except alsaaudio.ALSAAudioError:
            log.debug("closing speaker %s failed", self.device, exc_info=True)


def _check_setup(pcm: alsaaudio.PCM, role: str, device: str, rate_hz: int, channels: int) -> dict[str, Any]:
    """pyalsaaudio accepts whatever ALSA chose; refuse a device that changed our format."""
    try:
        info: dict[str, Any] = pcm.info()
    except alsaaudio.ALSAAudioError as e:
        pcm.close()
        raise AudioError(f"{role} {device!r}: cannot read its setup: {e}") from e
    got = (info.get("rate"), info.get("channels"), info.get("format_name"))
    if got != (rate_hz, channels, "S16_LE"):
        with contextlib.suppress(alsaaudio.ALSAAudioError):
            pcm.drop()
        pcm.close()
        raise AudioError(
            f"{role} {device!r} opened as {got[2]} {got[0]} Hz {got[1]} channel(s) instead of "
            f"S16_LE {rate_hz} Hz {channels} channel(s); use a 'plughw:CARD=…,DEV=0' or "
            f"'default' device so ALSA converts"
        )
    return info


class AlsaMixer:
    """One simple mixer control (e.g. 'PCM', 'Speaker') for hardware volume and mute."""

    def __init__(self, card: str, control: str) -> None:
        self.card = card
        self.control = control
        try:
            self._mixer = alsaaudio.Mixer(control=control, device=card)
        except alsaaudio.ALSAAudioError as e:
            raise AudioError(
                f"mixer control {control!r} on {card!r}: {e}; list the controls with "
                f"`amixer -D {card} scontrols` and set audio.mixer_control (empty: software volume)"
            ) from e

    def set_volume(self, percent: int) -> None:
        try:
            self._mixer.setvolume(int(percent))
        except alsaaudio.ALSAAudioError as e:
            raise AudioError(f"mixer control {self.control!r}: cannot set volume: {e}") from e

    def set_mute(self, muted: bool) -> bool:
        try:
            self._mixer.setmute(1 if muted else 0)
        except alsaaudio.ALSAAudioError:
            return False  # no playback switch on this control
        return True

    def close(self) -> None:
        with contextlib.suppress(alsaaudio.ALSAAudioError):
            self._mixer.close()


class AlsaBackend:
    """The real ALSA backend of :class:`~device.drivers.capture.Capture` and :class:`~device.drivers.playback.Playback`.
    """

    def open_capture(
        self, device: str, rate_hz: int, channels: int, period_frames: int, periods: int
    ) -> AlsaCapture:
        return AlsaCapture(device, rate_hz, channels, period_frames, periods)

    def open_playback(self, device: str, rate_hz: int, period_frames: int, periods: int) -> AlsaPlayback:
        return AlsaPlayback(device, rate_hz, period_frames, periods)

    def open_mixer(self, card: str, control: str) -> AlsaMixer:
        return AlsaMixer(card, control)


def list_devices(capture: bool) -> list[str]:
    """PCM names ALSA knows (``arecord -L`` / ``aplay -L``), for diagnostics."""
    try:
        return list(alsaaudio.pcms(alsaaudio.PCM_CAPTURE if capture else alsaaudio.PCM_PLAYBACK))
    except alsaaudio.ALSAAudioError as e:
        raise AudioError(f"cannot list ALSA devices: {e}") from e
