"""APA102 ("DotStar") RGB LEDs on SPI, as on the ReSpeaker 2-Mic (3 LEDs) and 4-Mic (12 LEDs) HATs.

The only module that imports ``spidev`` (the ``apa102`` extra). A chain is
written as one SPI transfer: a start frame of four zero bytes, then per LED
``0xE0 | brightness`` (5 bits), blue, green, red, then an end frame of zero
bytes (at least four, and one per 16 LEDs so the data reaches the last LED;
zeros rather than 0xFF so an SK9822 clone is not given a stray white frame).

:class:`Apa102Strip` shows one :class:`~device.core.ledpatterns.Pattern` on every
LED of the chain. ``on`` is written once; ``blink`` and ``pulse`` are
animated by its own thread (named, non-daemon, stopped by :meth:`close`), as
gpiozero animates its LEDs.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from device.core.errors import DeviceError
from device.core.ledpatterns import OFF, Pattern, Rgb

log = logging.getLogger(__name__)

MAX_BRIGHTNESS = 31
FRAME_S = 1 / 30  # animation step of blink and pulse
SPI_SPEED_HZ = 8_000_000
SpiFactory = Callable[[int, int, int], Any]  # (bus, device, speed_hz) → an object with xfer2() and close()


def brightness_level(percent: int) -> int:
    """1..100 % → the 5-bit global brightness (at least 1: 0 would be dark)."""
    return max(1, min(MAX_BRIGHTNESS, round(MAX_BRIGHTNESS * percent / 100)))


def encode(colors: Sequence[Rgb], brightness: int) -> bytes:
    """One SPI transfer that sets every LED: start frame, LED frames (0xE0|brightness, B, G, R), end frame."""
    if not 0 <= brightness <= MAX_BRIGHTNESS:
        raise ValueError(f"brightness {brightness} is outside 0..{MAX_BRIGHTNESS}")
    out = bytearray(4)
    for r, g, b in colors:
        out += bytes((0xE0 | brightness, _byte(b), _byte(g), _byte(r)))
    out += bytes(max(4, (len(colors) + 15) // 16))
    return bytes(out)


def _byte(value: float) -> int:
    return max(0, min(255, round(value * 255)))


def level_at(p: Pattern, t_s: float) -> float:
    """How lit a pattern is ``t_s`` after it started: 0..1 (blink: half on; pulse: a smooth fade in and out)."""
    if not p.lit:
        return 0.0
    if p.mode == "on" or p.period_s <= 0:
        return 1.0
    phase = (t_s % p.period_s) / p.period_s
    if p.mode == "blink":
        return 1.0 if phase < 0.5 else 0.0
    return 0.5 - 0.5 * math.cos(2 * math.pi * phase)


def open_spidev(bus: int, device: int, speed_hz: int) -> Any:
    """The real SPI device (``/dev/spidevBUS.DEVICE``)."""
    try:
        import spidev
    except ImportError:
        raise DeviceError(
            "spidev is not installed: install the apa102 extra into the venv "
            "(sudo /opt/voice-appliance/bin/pip install spidev)"
        ) from None
    dev = spidev.SpiDev()
    try:
        dev.open(bus, device)
    except OSError as e:
        raise DeviceError(
            f"/dev/spidev{bus}.{device}: {e.strerror or e}; enable SPI (sudo raspi-config nonint do_spi 0, "
            "or dtparam=spi=on in config.txt, then reboot) and add the service user to the spi group"
        ) from None
    dev.max_speed_hz = speed_hz
    dev.mode = 0
    return dev


class Apa102Strip:
    """A chain of ``count`` APA102 LEDs showing one pattern; owns its SPI device and animation thread."""

    def __init__(
        self,
        spi: Any,
        count: int,
        brightness_percent: int,
        *,
        name: str = "apa102",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._spi = spi
        self.count = count
        self.brightness = brightness_level(brightness_percent)
        self._clock = clock
        self._lock = threading.Lock()
        self._pattern = OFF
        self._since = clock()
        self._stop = threading.Event()
        self._changed = threading.Event()
        self._closed = False
        self._write(0.0, OFF.color)
        self._thread = threading.Thread(target=self._run, name=f"leds-{name}")
        self._thread.start()

    def show(self, p: Pattern) -> None:
        with self._lock:
            self._pattern = p
            self._since = self._clock()
        self._write(level_at(p, 0.0), p.color)
        self._changed.set()

    def off(self) -> None:
        self.show(OFF)

    def close(self) -> None:
        """Stop the animation, switch every LED off and release the SPI device (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._changed.set()
        self._thread.join(timeout=5)
        if self._thread.is_alive():
            raise DeviceError(f"LED thread {self._thread.name} did not stop")
        try:
            self._write(0.0, OFF.color)
        finally:
            self._spi.close()

    def _write(self, level: float, color: Rgb) -> None:
        rgb = (color[0] * level, color[1] * level, color[2] * level)
        data = list(encode([rgb] * self.count, self.brightness))
        with self._lock:
            self._spi.xfer2(data)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                with self._lock:
                    p, since = self._pattern, self._since
                if p.lit and p.mode in ("blink", "pulse"):
                    self._write(level_at(p, self._clock() - since), p.color)
                    self._stop.wait(FRAME_S)
                else:
                    self._changed.wait()
                    self._changed.clear()
        except Exception:  # a failing LED must not take anything down; the state shows on the next change
            log.warning("LED chain stopped animating", exc_info=True)
