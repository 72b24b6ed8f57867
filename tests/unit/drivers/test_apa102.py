"""APA102 LEDs over a fake SPI device (the edge of the world is the SPI transfer)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from device.core.config import ButtonConfig, ConfigError, LedOutput, LedsConfig
from device.core.ledpatterns import parse_pattern
from device.drivers import apa102
from device.drivers.configfile import load_config
from device.drivers.gpio import Gpio


class FakeSpi:
    """The spidev interface: records every transfer."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.closed = False
        self._cond = threading.Condition()

    def xfer2(self, data: list[int]) -> list[int]:
        with self._cond:
            self.frames.append(bytes(data))
            self._cond.notify_all()
        return [0] * len(data)

    def close(self) -> None:
        self.closed = True

    def wait_for(self, predicate: Any, timeout_s: float = 10.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: bool(self.frames) and predicate(self.frames[-1]), timeout_s)


def led_frames(frame: bytes, count: int) -> list[tuple[int, int, int, int]]:
    assert frame[:4] == bytes(4), "start frame"
    body = frame[4 : 4 + 4 * count]
    assert frame[4 + 4 * count :] == bytes(max(4, (count + 15) // 16)), "end frame"
    return [tuple(body[i : i + 4]) for i in range(0, len(body), 4)]  # type: ignore[misc]


def test_encode_start_led_and_end_frames() -> None:
    data = apa102.encode([(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 0.2)], brightness=8)
    assert data == bytes([0, 0, 0, 0, 0xE8, 0, 0, 255, 0xE8, 0, 255, 0, 0xE8, 51, 0, 0, 0, 0, 0, 0])
    assert len(apa102.encode([(0, 0, 0)] * 100, 31)) == 4 + 400 + 7  # one end byte per 16 LEDs
    with pytest.raises(ValueError):
        apa102.encode([(0, 0, 0)], 32)
    assert (apa102.brightness_level(25), apa102.brightness_level(100), apa102.brightness_level(1)) == (8, 31, 1)


def test_blink_and_pulse_levels() -> None:
    blink = parse_pattern("blink red 1.0")
    pulse = parse_pattern("pulse 2.0")
    assert [apa102.level_at(blink, t) for t in (0.0, 0.4, 0.6, 1.1)] == [1.0, 1.0, 0.0, 1.0]
    assert apa102.level_at(pulse, 0.0) == pytest.approx(0.0)
    assert apa102.level_at(pulse, 1.0) == pytest.approx(1.0)
    assert apa102.level_at(parse_pattern("off"), 0.5) == 0.0


NO_BUTTON = ButtonConfig(pin=None)


def chain_config(**kw: Any) -> LedsConfig:
    return LedsConfig(preset="rgb", output=(LedOutput(name="status", kind="apa102", **kw),))


def test_states_show_the_rgb_presets_colours_on_every_led() -> None:
    spi = FakeSpi()
    opened: list[tuple[int, int, int]] = []

    def factory(bus: int, device: int, speed_hz: int) -> FakeSpi:
        opened.append((bus, device, speed_hz))
        return spi

    now = [0.0]
    g = Gpio(NO_BUTTON, chain_config(count=3, brightness_percent=25),
             lambda *_: None, spi_factory=factory, clock=lambda: now[0])
    g.open()
    try:
        assert opened == [(0, 1, 8_000_000)]
        assert g.unavailable == []
        g.show("muted")
        assert led_frames(spi.frames[-1], 3) == [(0xE8, 0, 0, 255)] * 3  # red: B, G, R
        g.show("idle")
        assert led_frames(spi.frames[-1], 3) == [(0xE8, 0x33, 0, 0)] * 3  # dim blue #000033
        g.show("error")  # blink red 0.25 s: lit at first, dark in its second half, animated by the chain's thread
        assert led_frames(spi.frames[-1], 3) == [(0xE8, 0, 0, 255)] * 3
        now[0] = 0.2
        assert spi.wait_for(lambda f: led_frames(f, 3) == [(0xE8, 0, 0, 0)] * 3)
        now[0] = 0.26
        assert spi.wait_for(lambda f: led_frames(f, 3) == [(0xE8, 0, 0, 255)] * 3)
    finally:
        g.close()
    assert spi.closed
    assert led_frames(spi.frames[-1], 3) == [(0xE8, 0, 0, 0)] * 3  # dark after close
    assert not [t for t in threading.enumerate() if t.name == "leds-status"]


def test_four_mic_hat_chain_of_twelve_at_full_brightness() -> None:
    spi = FakeSpi()
    g = Gpio(NO_BUTTON, chain_config(count=12, brightness_percent=100),
             lambda *_: None, spi_factory=lambda *_: spi)
    g.open()
    try:
        g.show("listening")
        assert led_frames(spi.frames[-1], 12) == [(0xFF, 0, 255, 0)] * 12
    finally:
        g.close()


def test_missing_spi_is_a_warning_not_a_crash() -> None:
    def no_spi(bus: int, device: int, speed_hz: int) -> Any:
        raise OSError(2, "No such file or directory")

    g = Gpio(NO_BUTTON, chain_config(), lambda *_: None, spi_factory=no_spi)
    g.open()
    try:
        assert len(g.unavailable) == 1
        assert "LED status (SPI 0.1" in g.unavailable[0]
        g.show("idle")  # nothing to drive: no error
    finally:
        g.close()


def test_real_opener_explains_spi_setup() -> None:
    g = Gpio(NO_BUTTON, chain_config(spi_bus=5, spi_device=3), lambda *_: None)
    g.open()
    try:
        (reason,) = g.unavailable
        assert "SPI 5.3" in reason
        assert "spidev is not installed" in reason or "enable SPI" in reason
    finally:
        g.close()


def test_config_validation_of_the_chain() -> None:
    cfg = load_config(None, environ={}, overrides=[])
    assert cfg.leds.output == ()
    ok = LedOutput(name="px", kind="apa102")  # no pins needed
    assert (ok.count, ok.spi_bus, ok.spi_device, ok.brightness_percent) == (3, 0, 1, 25)
    from device.core.config import build_section

    for bad in ({"count": 0}, {"brightness_percent": 101}, {"spi_device": 4}, {"kind": "apa103"}):
        with pytest.raises(ConfigError) as e:
            build_section(LedOutput, {"name": "px", "kind": "apa102", **bad}, "leds.output")
        assert next(iter(bad)) in str(e.value) or "apa102" in str(e.value)
