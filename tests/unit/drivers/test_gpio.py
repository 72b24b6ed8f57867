"""Button, mute switch and LEDs over gpiozero's mock pins (the edge of the world is the pin)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from device.core.config import ButtonConfig, LedOutput, LedsConfig
from device.drivers.gpio import Gpio, mock_factory


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, bool]] = []

    def button(self, active: bool, t_s: float) -> None:
        self.events.append(("button", active))

    def mute(self, active: bool, t_s: float) -> None:
        self.events.append(("mute", active))


@pytest.fixture
def factory() -> Iterator[Any]:
    f = mock_factory()
    yield f
    f.reset()


def make(factory: Any, button: ButtonConfig | None = None, leds: LedsConfig | None = None) -> tuple[Gpio, Recorder]:
    rec = Recorder()
    g = Gpio(button or ButtonConfig(), leds or LedsConfig(), rec.button, rec.mute, pin_factory=factory)
    g.open()
    return g, rec


def eventually(check: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return check()


def test_button_to_ground_press_and_release(factory: Any) -> None:
    g, rec = make(factory, ButtonConfig(pin=17, pull_up=True, bounce_ms=20))
    try:
        pin = factory.pin(17)
        assert pin.pull == "up"
        assert pin.bounce == pytest.approx(0.02)
        pin.drive_low()
        pin.drive_high()
        assert rec.events == [("button", True), ("button", False)]
    finally:
        g.close()


def test_button_to_3v3_with_pull_down(factory: Any) -> None:
    g, rec = make(factory, ButtonConfig(pin=22, pull_up=False, bounce_ms=0))
    try:
        pin = factory.pin(22)
        assert pin.pull == "down"
        assert pin.bounce is None
        pin.drive_high()
        assert rec.events == [("button", True)]
    finally:
        g.close()


def test_external_resistor_no_internal_pull(factory: Any) -> None:
    g, rec = make(factory, ButtonConfig(pin=23, pull_up=True, external_pull=True))
    try:
        pin = factory.pin(23)
        assert pin.pull == "floating"
        pin.drive_high()
        rec.events.clear()
        pin.drive_low()  # pull_up=true still says: pressed reads low
        assert rec.events == [("button", True)]
    finally:
        g.close()


def test_mute_switch_reports_changes_and_its_position_at_start(factory: Any) -> None:
    # A switch with its own resistor (mock pins with an internal pull would reset the level).
    factory.pin(27).drive_low()  # switched to mute before the daemon starts
    g, rec = make(factory, ButtonConfig(pin=17, mute_pin=27, external_pull=True))
    try:
        assert rec.events == [("mute", True)]
        factory.pin(27).drive_high()
        assert rec.events[-1] == ("mute", False)
    finally:
        g.close()


def test_no_button_configured(factory: Any) -> None:
    g, _ = make(factory, ButtonConfig(pin=None))
    try:
        assert g.button is None
        assert g.unavailable == []
    finally:
        g.close()


def test_rgb_preset_shows_each_state_in_colour(factory: Any) -> None:
    g, _ = make(factory, leds=LedsConfig(preset="rgb"))
    r, gr, b = (factory.pin(p) for p in (5, 6, 13))
    try:
        g.show("listening")
        assert (r.state, gr.state, b.state) == (0, 1, 0)
        g.show("muted")
        assert (r.state, gr.state, b.state) == (1, 0, 0)
        g.show("idle")
        assert (r.state, gr.state) == (0, 0)
        assert b.state == pytest.approx(0x33 / 255)
        g.show("error")  # blink: red toggles on and off, the others stay dark
        assert eventually(lambda: {s.state for s in r.states[-4:]} >= {0, 1})
        assert gr.state == 0
        assert b.state == 0
        g.show("speaking")
        assert (r.state, gr.state, b.state) == (0, 0, 1)
    finally:
        g.close()
    assert (r.state, gr.state, b.state) == (0, 0, 0)  # closing leaves the LED dark


@pytest.mark.realtime
def test_three_leds_preset(factory: Any) -> None:
    g, _ = make(factory, leds=LedsConfig(preset="three"))
    green, amber, red = (factory.pin(p) for p in (5, 6, 13))
    try:
        g.show("listening")
        assert (green.state, amber.state, red.state) == (True, False, False)
        g.show("speaking")
        assert (green.state, amber.state, red.state) == (False, True, False)
        g.show("thinking")  # a plain LED cannot pulse: it blinks
        assert eventually(lambda: len(amber.states) >= 5)
        g.show("muted")
        assert (green.state, amber.state, red.state) == (False, False, True)
    finally:
        g.close()


def test_custom_pwm_led_brightness_and_active_low(factory: Any) -> None:
    leds = LedsConfig(
        preset="custom",
        output=(LedOutput("ring", "pwmled", (12,), True), LedOutput("mic", "led", (16,), False)),
        patterns={"listening": {"ring": "#808080", "mic": "on"}, "thinking": {"ring": "pulse 0.2"}},
    )
    g, _ = make(factory, leds=leds)
    ring, mic = factory.pin(12), factory.pin(16)
    try:
        g.show("listening")
        assert ring.state == pytest.approx(128 / 255)
        assert mic.state == 0  # active low: lit means the pin is low
        g.show("thinking")
        assert eventually(lambda: len({round(s.state, 2) for s in ring.states[-20:]}) > 3)  # it fades
        assert mic.state == 1  # off
    finally:
        g.close()


def test_pin_conflict_is_a_warning_not_a_crash(factory: Any, caplog: pytest.LogCaptureFixture) -> None:
    leds = LedsConfig(preset="custom", output=(LedOutput("a", "led", (17,)),))  # same pin as the button
    g, _ = make(factory, ButtonConfig(pin=17), leds)
    try:
        assert g.button is not None
        assert "a" not in g.leds
        assert any("LED a (BCM 17" in u for u in g.unavailable)
        assert "GPIO unavailable" in caplog.text
        assert "ctl press" in caplog.text
        g.show("listening")  # nothing to drive, nothing breaks
    finally:
        g.close()


def test_no_gpio_on_this_machine_is_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from gpiozero import Device

    monkeypatch.setattr(Device, "pin_factory", None)
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "no_such_factory")
    g = Gpio(ButtonConfig(mute_pin=27), LedsConfig(), lambda a, t: None, lambda a, t: None)
    g.open()
    try:
        assert g.button is None
        assert g.leds == {}
        assert len(g.unavailable) == 3  # button, mute switch, RGB LED
        assert "GPIO unavailable for button" in caplog.text
        g.show("idle")
    finally:
        g.close()
