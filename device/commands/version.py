"""``voice-appliance version``."""

from __future__ import annotations

import argparse
import platform

from device import __version__


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", "-v", action="store_true", help="also print library versions")


def run(args: argparse.Namespace) -> int:
    print(f"voice-appliance {__version__}")
    if args.verbose:
        from importlib import metadata

        print(f"python {platform.python_version()}")
        for dist in ("pyalsaaudio", "websocket-client", "requests", "gpiozero", "webrtcvad-wheels", "systemd-python",
                     "paho-mqtt"):
            try:
                print(f"{dist} {metadata.version(dist)}")
            except metadata.PackageNotFoundError:
                print(f"{dist} (not installed as a distribution)")
    return 0
