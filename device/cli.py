"""Command-line entry point: ``voice-appliance SUBCOMMAND``."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
from collections.abc import Sequence

from device import __version__
from device.core.errors import DeviceError, ExitCode
from device.drivers.logs import LEVELS, setup_logging

log = logging.getLogger(__name__)

SUBCOMMANDS = {
    "run": "run the kiosk daemon (what the systemd unit starts)",
    "bench": "hold a conversation over loopback audio files against the emulator and report",
    "emulator": "serve a local ElevenAgents-compatible agent for benches, tests and kiosks",
    "doctor": "check audio devices, GPIO, credentials and the network, and say what to fix",
    "check": "bring up the hardware: microphone, speaker, LEDs, button, VAD and the sound card, with verdicts",
    "ctl": "control a running daemon through its local socket",
    "fleet": "the fleet channel (MQTT): topics, a broker check, removing the kiosk from Home Assistant",
    "version": "print the version",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="voice-appliance",
        description="Firmware for a Raspberry Pi kiosk that talks with an ElevenLabs agent.",
    )
    parser.add_argument("--version", action="version", version=f"voice-appliance {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="PATH",
        default=None,
        help="configuration file (default: $VOICE_APPLIANCE_CONFIG or /etc/voice-appliance/config.toml)",
    )
    common.add_argument(
        "--log-level",
        choices=LEVELS,
        default=os.environ.get("VOICE_APPLIANCE_LOG_LEVEL", "info"),
        help="log verbosity (default: info)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in SUBCOMMANDS.items():
        module = importlib.import_module(f"device.commands.{name}")
        p = sub.add_parser(name, help=help_text, description=help_text, parents=[common])
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return ExitCode.USAGE
    setup_logging(args.log_level)
    prog = f"voice-appliance {args.command}"
    try:
        code = int(args._module.run(args))
        sys.stdout.flush()  # here, so that a reader that went away is seen below and not at exit
        return code
    except DeviceError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return int(e.exit_code)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `voice-appliance … | head` closed the pipe: not a bug. Point stdout at /dev/null so the
        # interpreter's final flush does not raise again, and exit as a shell does on SIGPIPE.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 128 + signal.SIGPIPE
    except Exception as e:  # a bug: one line for the user, details at debug level
        log.debug("unhandled exception", exc_info=True)
        from device.drivers.secrets import redact

        print(
            f"{prog}: internal error: {redact(type(e).__name__ + ': ' + str(e))}; "
            "run again with --log-level debug and report it",
            file=sys.stderr,
        )
        return ExitCode.SOFTWARE
