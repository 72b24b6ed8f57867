"""``voice-appliance doctor``."""

from __future__ import annotations

import argparse

from device.errors import UnavailableError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise UnavailableError("`doctor` is not part of this build yet")
