"""Helpers shared by subcommands."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from device.app.settings import load_settings
from device.core.config import DEFAULT_CONFIG_PATH, Config


def add_set_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value (repeatable), e.g. --set gate.mode=toggle",
    )


def config_path(args: argparse.Namespace) -> Path:
    return Path(args.config or os.environ.get("VOICE_APPLIANCE_CONFIG") or DEFAULT_CONFIG_PATH)


def load_from_args(args: argparse.Namespace) -> Config:
    return load_settings(config_path(args), overrides=getattr(args, "overrides", []))


# The packages provisioning/install.sh leaves out of a kiosk unless --with-tools.
TOOL_PACKAGES = ("device.emulator", "device.bench")


def require_tools(command: str) -> None:
    """Raise UnavailableError (exit 69) when this install has no emulator and bench packages.

    A kiosk installed by provisioning/install.sh carries the firmware only: the
    tools (device/emulator, device/bench, a third of the package) are left out
    unless it ran with --with-tools.
    """
    from importlib.util import find_spec

    from device.core.errors import UnavailableError

    missing = [name for name in TOOL_PACKAGES if find_spec(name) is None]
    if missing:
        raise UnavailableError(
            f"`voice-appliance {command}` is one of the tools, which are not installed on this kiosk "
            f"({' and '.join(missing)} missing: install.sh leaves the tools out); reinstall with them: "
            "sudo provisioning/install.sh --with-tools (from the clone it was installed from), "
            "or run the tools on a development machine: provisioning/dev.sh demo"
        )


def require_extra(module: str, extra: str, command: str) -> None:
    """Import ``module`` or raise UnavailableError (exit 69) saying how to install ``extra`` into this venv.

    An installed kiosk has the runtime dependencies only; ``emulator`` and
    ``bench`` need the ``bench`` extra. The advice names the venv's own pip and
    the extra's requirements (the package itself is not on PyPI).
    """
    import importlib
    import re
    import sys
    from importlib import metadata

    from device.core.errors import UnavailableError

    try:
        importlib.import_module(module)
    except ImportError as e:
        try:
            marker = re.compile(rf"""extra\s*==\s*['"]{re.escape(extra)}['"]""")  # any quoting a build writes
            reqs = [
                r.split(";", 1)[0].strip() for r in metadata.requires("voice-appliance") or [] if marker.search(r)
            ]
        except metadata.PackageNotFoundError:
            reqs = []
        wanted = " ".join(f"'{r}'" for r in reqs) or module
        pip = Path(sys.prefix) / "bin" / "pip"
        raise UnavailableError(
            f"`voice-appliance {command}` needs the optional '{extra}' extra, which is not installed here ({e}); "
            f"install it into this venv: sudo {pip} install {wanted} (from a source checkout: "
            f"{pip} install -e '.[{extra}]')"
        ) from None
