"""``voice-appliance run``: the kiosk daemon."""

from __future__ import annotations

import argparse
import json

from device.commands.common import add_set_option, config_path, load_from_args
from device.config import Config, config_to_dict
from device.secrets import Secret, load_api_key
from device.wake import hands_free_summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_set_option(parser)
    parser.add_argument(
        "--check",
        action="store_true",
        help="validate the configuration and credentials, print what would run, and exit",
    )
    parser.add_argument(
        "--mock-gpio",
        action="store_true",
        help="use gpiozero's mock pins (a laptop, a bench): no button or LEDs, drive it with `ctl`",
    )


def _load(args: argparse.Namespace) -> tuple[Config, Secret | None]:
    cfg = load_from_args(args).require_agent()
    key = load_api_key(cfg.agent.api_key_file)
    if cfg.agent.connection == "signed_url" and key is None:
        from device.errors import CredentialError

        raise CredentialError(
            "connection = \"signed_url\" needs an API key and none was found: put it in "
            "/etc/voice-appliance/api_key (sudo install -m 600 /dev/null /etc/voice-appliance/api_key "
            "&& sudoedit /etc/voice-appliance/api_key; the unit loads it with LoadCredential=), or set "
            "agent.api_key_file, or switch to connection = \"broker\" or \"public\""
        )
    return cfg, key


def run(args: argparse.Namespace) -> int:
    cfg, key = _load(args)
    if args.check:
        print(f"config: {config_path(args)} OK")
        print(f"api key: {'from ' + key.source if key else 'none (not needed for ' + cfg.agent.connection + ')'}")
        print(hands_free_summary(cfg))
        print(json.dumps(config_to_dict(cfg), indent=2, sort_keys=False))
        return 0
    from device.daemon import serve

    pin_factory = None
    if args.mock_gpio:
        from device.gpio import mock_factory

        pin_factory = mock_factory()
    return serve(cfg, key, lambda: _load(args), pin_factory=pin_factory)
