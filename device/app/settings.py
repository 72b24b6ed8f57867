"""The configuration a program runs with: the file parsed, then what needs more than the values checked.

:func:`device.drivers.configfile.load_config` gives well-formed values. Some
settings are only usable if something else holds: the LED outputs and patterns
fit together, the optional library a setting needs is installed, the wake-word
model exists. Each module that owns such a thing checks it; :func:`check_resources`
asks them all, at load, so a setting that cannot work fails there (``run``,
``run --check``, a reload, ``doctor``, ``check``, the bench) with what to fix,
not later in a worker.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from device.core import ledpatterns
from device.core.config import Config, failures_as_config_errors
from device.drivers import aec, dsp, wake
from device.drivers.configfile import load_config


def check_resources(cfg: Config) -> Config:
    """``cfg`` when every owner accepts it; else the owner's ConfigError naming the key and the fix."""
    ledpatterns.resolve(cfg.leds)
    # Optional libraries: a setting that needs one fails here, on load, with what to install.
    if cfg.audio.noise_suppression or cfg.audio.auto_gain_dbfs:
        dsp.check_available()
    if cfg.gate.mode == "wake_word":
        wake.resolve_model(cfg.wake)
    aec.will_run(cfg.audio.echo_cancellation, cfg.gate.barge_in)  # "on" without the library: refused here
    return cfg


def load_settings(
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Sequence[str] = (),
) -> Config:
    """:func:`~device.drivers.configfile.load_config`, then :func:`check_resources`.

    Every failure is a :class:`~device.core.errors.DeviceError` (a ConfigError unless an
    optional library says otherwise).
    """
    cfg = load_config(path, environ, overrides)
    with failures_as_config_errors(path):
        return check_resources(cfg)
