"""GPIO: the button, the optional mute switch and the status LEDs (the only gpiozero importer).

Devices are built over a gpiozero pin factory: the real one on a Raspberry Pi,
``MockFactory(pin_class=MockPWMPin)`` on a laptop and in tests. Any device
that cannot be opened (no GPIO on this machine, pin busy, no permission) is a
warning, never a crash: the kiosk still runs, driven through the control
socket. Callbacks arrive on gpiozero's threads and only post events.

Long presses are not detected here but in the controller
(:class:`device.core.machine.ButtonTracker`), so the physical button and the
on-screen one behave exactly alike.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from device.core.config import ButtonConfig, LedOutput, LedsConfig
from device.core.ledpatterns import OFF, LedPlan, Pattern, resolve

log = logging.getLogger(__name__)

InputCallback = Callable[[bool, float], None]  # (active, time.monotonic())


def mock_factory() -> Any:
    """gpiozero's mock pins with PWM, for laptops, benches and tests."""
    from gpiozero.pins.mock import MockFactory, MockPWMPin

    return MockFactory(pin_class=MockPWMPin)


class Gpio:
    """Owns the button, mute switch and LED devices."""

    def __init__(
        self,
        button: ButtonConfig,
        leds: LedsConfig,
        on_button: InputCallback,
        on_mute: InputCallback | None = None,
        *,
        pin_factory: Any = None,
        clock: Callable[[], float] = time.monotonic,
        spi_factory: Callable[[int, int, int], Any] | None = None,
    ) -> None:
        self.button_cfg = button
        self.plan: LedPlan = resolve(leds)
        self._on_button = on_button
        self._on_mute = on_mute
        self._factory = pin_factory
        self._spi_factory = spi_factory  # None: the real /dev/spidev (device.drivers.apa102.open_spidev)
        self._clock = clock
        self.button: Any = None
        self.mute_switch: Any = None
        self.leds: dict[str, Any] = {}
        self._outputs: dict[str, LedOutput] = {}
        self.unavailable: list[str] = []  # what could not be opened, for status and doctor
        self.state = ""
        self._closed = False

    # -- lifetime ------------------------------------------------------------------------------
    def open(self) -> None:
        """Open every configured device; each failure is one warning."""
        cfg = self.button_cfg
        if cfg.pin is not None:
            self.button = self._input(cfg.pin, "button", self._on_button)
        if cfg.mute_pin is not None and self._on_mute is not None:
            self.mute_switch = self._input(cfg.mute_pin, "mute switch", self._on_mute)
            if self.mute_switch is not None and self.mute_switch.is_pressed:
                self._on_mute(True, self._clock())  # already switched to mute at start
        for out in self.plan.outputs:
            led = self._output(out)
            if led is not None:
                self.leds[out.name] = led
                self._outputs[out.name] = out
        if self.unavailable:
            log.warning(
                "GPIO unavailable for %s; the kiosk runs without them (use `voice-appliance ctl press` / "
                "`release`, and check the pins, the user's gpio group, or GPIOZERO_PIN_FACTORY)",
                ", ".join(self.unavailable),
            )

    def close(self) -> None:
        """Switch the LEDs off and release every pin (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for dev in [*self.leds.values(), self.button, self.mute_switch]:
            if dev is None:
                continue
            try:
                dev.close()
            except Exception:
                log.debug("closing a GPIO device failed", exc_info=True)
        self.leds.clear()
        self.button = self.mute_switch = None

    # -- LEDs ------------------------------------------------------------------------------------
    def show(self, state: str) -> None:
        """Show a state's patterns on every LED."""
        self.state = state
        patterns: Mapping[str, Pattern] = self.plan.for_state(state)
        for name, led in self.leds.items():
            try:
                _apply(led, self._outputs[name].kind, patterns.get(name, OFF))
            except Exception as e:  # a failing LED must not take the controller down
                log.warning("LED %s: cannot show %s (%s)", name, state, e)

    # -- internals ----------------------------------------------------------------------------------
    def _input(self, pin: int, what: str, callback: InputCallback) -> Any:
        cfg = self.button_cfg
        try:
            from gpiozero import Button

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # gpiozero's factory fall-back chatter: one warning below says it
                dev = Button(
                    pin,
                    pull_up=None if cfg.external_pull else cfg.pull_up,
                    active_state=(not cfg.pull_up) if cfg.external_pull else None,
                    bounce_time=cfg.bounce_ms / 1000 if cfg.bounce_ms else None,
                    pin_factory=self._factory,
                )
        except Exception as e:
            self.unavailable.append(f"{what} (BCM {pin}: {_reason(e)})")
            return None
        dev.when_pressed = lambda: callback(True, self._clock())
        dev.when_released = lambda: callback(False, self._clock())
        return dev

    def _output(self, out: LedOutput) -> Any:
        if out.kind == "apa102":
            return self._apa102(out)
        try:
            import gpiozero

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if out.kind == "rgbled":
                    return gpiozero.RGBLED(
                        *out.pins, active_high=out.active_high, pwm=True, pin_factory=self._factory
                    )
                cls = gpiozero.PWMLED if out.kind == "pwmled" else gpiozero.LED
                return cls(out.pins[0], active_high=out.active_high, pin_factory=self._factory)
        except Exception as e:
            pins = ", ".join(str(p) for p in out.pins)
            self.unavailable.append(f"LED {out.name} (BCM {pins}: {_reason(e)})")
            return None


    def _apa102(self, out: LedOutput) -> Any:
        from device.drivers import apa102  # the spidev importer; only when a chain is configured

        opener = self._spi_factory or apa102.open_spidev
        try:
            spi = opener(out.spi_bus, out.spi_device, apa102.SPI_SPEED_HZ)
        except Exception as e:
            self.unavailable.append(f"LED {out.name} (SPI {out.spi_bus}.{out.spi_device}: {_reason(e)})")
            return None
        return apa102.Apa102Strip(spi, out.count, out.brightness_percent, name=out.name, clock=self._clock)


def _reason(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    if type(e).__name__ == "BadPinFactory":
        return "no GPIO on this machine"
    return text


def _apply(led: Any, kind: str, p: Pattern) -> None:
    half_s = p.period_s / 2
    if kind == "apa102":
        led.show(p)  # the chain animates blink and pulse itself
    elif not p.lit:
        led.off()
    elif kind == "rgbled":
        if p.mode == "on":
            led.color = p.color
        elif p.mode == "blink":
            led.blink(on_time=half_s, off_time=half_s, on_color=p.color, off_color=(0, 0, 0))
        else:
            led.pulse(fade_in_time=half_s, fade_out_time=half_s, on_color=p.color, off_color=(0, 0, 0))
    elif kind == "pwmled":
        if p.mode == "on":
            led.value = max(p.color)  # a single colour LED shows the colour's brightness
        elif p.mode == "blink":
            led.blink(on_time=half_s, off_time=half_s)
        else:
            led.pulse(fade_in_time=half_s, fade_out_time=half_s)
    elif p.mode == "on":
        led.on()
    else:  # a plain LED cannot fade: a pulse is a blink
        led.blink(on_time=half_s, off_time=half_s)
