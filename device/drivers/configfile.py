"""The configuration file: read it, then parse it with :func:`device.core.config.parse_config`.

The TOML reading is shared by the other files the tools take in the same
format (the emulator's scenarios, the bench's timelines): every failure names
the file, the line and the fix. :func:`load_config` gives the well-formed
values only; :func:`device.app.settings.load_settings` also checks what needs a
library or a file, and is what a program that uses the configuration calls.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from device.core.config import Config, failures_as_config_errors, parse_config
from device.core.errors import ConfigError
from device.drivers.userfiles import MIB, UnsuitableFile, read_file, size_text

CONFIG_MAX_BYTES = 1 * MIB  # the example with every comment is 8 KiB


def read_toml(
    path: Path,
    what: str = "config file",
    missing_hint: str = "copy the example: sudo install -D -m 644 examples/config.toml {path}",
) -> dict[str, Any]:
    """Read a TOML file; errors name the file (as ``what``), the line and the fix.

    ``missing_hint`` (with ``{path}``) says what to do when the file is absent. Only a
    regular file of at most ``CONFIG_MAX_BYTES`` is read (a FIFO would block the reload).
    """
    try:
        raw = read_file(path, CONFIG_MAX_BYTES)
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist; {missing_hint.format(path=path)}") from None
    except UnsuitableFile as e:
        raise ConfigError(
            f"{what} {path} cannot be used: {e.strerror}; it must be a plain TOML text file "
            f"(at most {size_text(CONFIG_MAX_BYTES)})"
        ) from None
    except OSError as e:
        raise ConfigError(
            f"cannot read {what} {path}: {e.strerror}; check its permissions "
            f"(the service user must be able to read it)"
        ) from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{what} {path} is not valid TOML: {e}; fix the syntax at that line") from None
    except RecursionError:  # tomllib parses nested arrays and inline tables recursively
        raise ConfigError(
            f"{what} {path} nests arrays or inline tables too deeply to read; no setting needs more than a "
            "few levels: remove the extra brackets"
        ) from None


def load_config(
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Sequence[str] = (),
) -> Config:
    """Load defaults < file < environment (``os.environ`` unless given) < ``section.key=value`` overrides.

    Every failure is a :class:`~device.core.errors.DeviceError`, a ConfigError unless
    something more specific says otherwise.
    """
    with failures_as_config_errors(path):
        data = read_toml(path) if path is not None else {}
        return parse_config(data, os.environ if environ is None else environ, overrides, path)
