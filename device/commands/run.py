"""``voice-appliance run``: the kiosk daemon."""

from __future__ import annotations

import argparse
import json

from device.commands.common import add_set_option, config_path, load_from_args
from device.config import config_to_dict
from device.errors import UnavailableError
from device.secrets import load_api_key


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_set_option(parser)
    parser.add_argument(
        "--check",
        action="store_true",
        help="validate the configuration and credentials, print what would run, and exit",
    )


def run(args: argparse.Namespace) -> int:
    cfg = load_from_args(args).require_agent()
    key = load_api_key(cfg.agent.api_key_file)
    if cfg.agent.connection == "signed_url" and key is None:
        from device.errors import CredentialError

        raise CredentialError(
            "connection = \"signed_url\" needs an API key: use systemd LoadCredential= "
            "(see systemd/voice-appliance.service) or agent.api_key_file, or switch to "
            "connection = \"broker\" or \"public\""
        )
    if args.check:
        print(f"config: {config_path(args)} OK")
        print(f"api key: {'from ' + key.source if key else 'none (not needed for ' + cfg.agent.connection + ')'}")
        print(json.dumps(config_to_dict(cfg), indent=2, sort_keys=False))
        return 0
    raise UnavailableError("the daemon is not part of this build yet; use `run --check` to validate a config")
