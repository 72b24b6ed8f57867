"""Helpers shared by subcommands."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from device.config import DEFAULT_CONFIG_PATH, Config, load_config


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
    return load_config(config_path(args), overrides=getattr(args, "overrides", []))
