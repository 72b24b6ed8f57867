"""``voice-appliance run``: the kiosk daemon."""

from __future__ import annotations

import argparse
import json
from typing import Any

from device.commands.common import add_set_option, config_path, load_from_args
from device.core.config import Config, config_to_dict
from device.drivers import aec
from device.drivers.screen import summary as screen_summary
from device.drivers.secrets import Secret, is_plainly_a_path, load_api_key
from device.drivers.wake import hands_free_summary


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
        from device.core.errors import CredentialError

        raise CredentialError(
            "connection = \"signed_url\" needs an API key and none was found: put it in "
            "/etc/voice-appliance/api_key (sudo install -m 600 /dev/null /etc/voice-appliance/api_key "
            "&& sudoedit /etc/voice-appliance/api_key; the unit loads it with LoadCredential=), or set "
            "agent.api_key_file, or switch to connection = \"broker\" or \"public\""
        )
    return cfg, key


def check_warnings(cfg: Config, path: str) -> list[str]:
    """What --check passes but the kiosk will trip over (doctor says the same)."""
    from device.commands.doctor import EXAMPLE_AGENT_ID

    out = []
    if cfg.agent.agent_id == EXAMPLE_AGENT_ID:
        out.append(
            f"agent.agent_id is still the example's placeholder ({EXAMPLE_AGENT_ID}): the agent server will "
            f"refuse it; set agent_id in [agent] of {path} (ElevenLabs dashboard → Agents)"
        )
    if cfg.agent.api_key_file and not is_plainly_a_path(cfg.agent.api_key_file):
        out.append(
            "agent.api_key_file does not look like a file path (its value is not shown: it may be the API key "
            "itself); put the key in a root-only file and set api_key_file to that file's path"
        )
    return out


def printable(cfg: Config) -> dict[str, Any]:
    """The config as JSON data, minus anything that may be a secret pasted in the wrong place."""
    data: dict[str, Any] = config_to_dict(cfg)
    value = cfg.agent.api_key_file
    if value and not is_plainly_a_path(value):
        data["agent"]["api_key_file"] = "<redacted: not a file path, it may be the key>"
    return data


def run(args: argparse.Namespace) -> int:
    cfg, key = _load(args)
    if args.check:
        path = str(config_path(args))
        warnings = check_warnings(cfg, path)
        print(f"config: {path} " + (f"valid, {len(warnings)} warning(s)" if warnings else "OK"))
        for w in warnings:
            print(f"warning: {w}")
        print(f"api key: {'from ' + key.source if key else 'none (not needed for ' + cfg.agent.connection + ')'}")
        print(hands_free_summary(cfg))
        print(f"echo cancellation: {aec.describe(cfg.audio.echo_cancellation, cfg.gate.barge_in)}")
        print(screen_summary(cfg.screen))
        if cfg.mqtt.enabled:  # the settings and the broker, one line each (the kiosk runs without the broker)
            from device.drivers.mqtt import check_lines
            from device.drivers.secrets import load_mqtt_password

            load_mqtt_password(cfg.mqtt.password_file)  # the daemon refuses to start without it: so does --check

            for level, text in check_lines(cfg.mqtt):
                print(f"{'warning: ' if level != 'ok' else ''}{text}")
        print(json.dumps(printable(cfg), indent=2, sort_keys=False))
        return 0
    from device.app.daemon import serve

    pin_factory = None
    if args.mock_gpio:
        from device.drivers.gpio import mock_factory

        pin_factory = mock_factory()
    return serve(cfg, key, lambda: _load(args), pin_factory=pin_factory, hard_exit=True)
