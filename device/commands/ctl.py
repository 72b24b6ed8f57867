"""``voice-appliance ctl``: drive a running daemon through its control socket."""

from __future__ import annotations

import argparse
import json
import os
import sys

from device.core.config import DEFAULT_CONFIG_PATH, SystemdConfig

ACTIONS = ("start", "stop", "press", "release", "mute", "unmute", "context", "message", "status")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        choices=ACTIONS,
        help="start/stop a conversation; press/release the button; mute/unmute the microphone; "
        "context TEXT (background for the agent); message TEXT (typed user words); status (JSON)",
    )
    parser.add_argument("text", nargs="*", help="the text for context and message")
    parser.add_argument(
        "--socket",
        metavar="PATH",
        default=None,
        help="control socket (default: systemd.control_socket of the configuration)",
    )


def _target(args: argparse.Namespace) -> tuple[str, str | None]:
    """The control socket and the group allowed to use it (None: the configuration cannot be read)."""
    from device.commands.common import load_from_args
    from device.core.errors import DeviceError

    explicit = args.config or os.environ.get("VOICE_APPLIANCE_CONFIG")
    if not explicit and not _default_config_exists():  # no config on this machine: the defaults
        defaults = SystemdConfig()
        return str(args.socket or defaults.control_socket), defaults.control_group
    if args.socket:
        try:  # only for the advice on a permission error: --socket works without a readable config
            return str(args.socket), load_from_args(args).systemd.control_group
        except (DeviceError, OSError):
            return str(args.socket), None
    systemd = load_from_args(args).systemd
    if not systemd.control_socket:
        from device.drivers.control import ControlError

        raise ControlError("the control socket is turned off (systemd.control_socket = \"\") in the configuration")
    return systemd.control_socket, systemd.control_group


def _default_config_exists() -> bool:
    """Whether the default configuration file is there; one in a directory this user may not enter counts."""
    try:
        return DEFAULT_CONFIG_PATH.exists()
    except OSError:  # PermissionError: /etc/voice-appliance is the service group's
        return True


def run(args: argparse.Namespace) -> int:
    from device.drivers.control import request

    # One request is one line: text from a file (ctl context "$(cat notes.txt)") has its line breaks as spaces.
    text = " ".join(" ".join(args.text).splitlines()).strip()
    if args.action in ("context", "message") and not text:
        example = f'ctl {args.action} "The shop closes at 6"'
        print(f"voice-appliance ctl: error: {args.action} needs text, e.g. {example}", file=sys.stderr)
        return 2
    if args.action not in ("context", "message") and text:
        print(f"voice-appliance ctl: error: {args.action} takes no text", file=sys.stderr)
        return 2
    path, group = _target(args)
    ok, answer = request(path, f"{args.action} {text}".strip(), group=group)
    if not ok:
        print(f"voice-appliance ctl: error: {answer}", file=sys.stderr)
        return 1
    if args.action == "status":
        print(json.dumps(json.loads(answer), indent=2))
    elif answer:
        print(answer)
    return 0
