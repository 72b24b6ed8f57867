"""``voice-appliance bench``: the real daemon against an agent over loopback audio files."""

from __future__ import annotations

import argparse
import sys
import typing
from pathlib import Path

from device.commands.common import add_set_option
from device.core.config import GateMode
from device.core.errors import ExitCode

EPILOG = """\
With no options: the bundled demo. A spoken question with the button held,
a tool call, a barge-in while the agent answers, and the agent hanging up;
against the built-in emulator. Results go into --out: agent_audio.wav (what
the speaker played: heard on the clocked card, written on the file card),
user_audio.wav (what the agent received), report.json and timeline.svg/.png.
Exit status 0 when the conversation succeeded and the emulator saw no
protocol violation, 1 otherwise.

Timeline file (--timeline), times in seconds from the start:
  [[step]]
  at_s = 0.4
  action = "press"        # press, release, click, hold (for_s = …), mute, unmute,
                          # ctl (command = "context …"), end
With --gate wake_word, --input and no --timeline nothing is pressed: the run
passes only if the wake word started the conversation (report.json: wake).
A run still going at --max-wait-s, or where the agent never answered the
user, fails.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("--input", metavar="WAV", type=Path,
                        help="what the microphone hears: any PCM WAV (converted to 16 kHz mono); default: the demo")
    parser.add_argument("--timeline", metavar="FILE", type=Path,
                        help="button presses, mute and control commands at given times (TOML, see below); "
                             "default: the demo's, or the button held while --input plays")
    parser.add_argument("--scenario", metavar="FILE", type=Path,
                        help="emulator scenario (see `voice-appliance emulator --help`); default: the demo's")
    parser.add_argument("--agent-url", metavar="URL",
                        help="talk to this agent server (REST base URL) instead of the built-in emulator; "
                             "the agent id comes from the config (--set agent.agent_id=…)")
    parser.add_argument("--api-key-file", metavar="FILE",
                        help="with --agent-url: file holding the API key (mode 600) for signed-URL mode")
    parser.add_argument("--gate", metavar="MODE", choices=typing.get_args(GateMode),
                        help="gate mode: " + ", ".join(typing.get_args(GateMode)) + " (default: from the config)")
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument("--realtime", dest="realtime", action="store_true", default=True,
                      help="the emulated agent thinks and streams like the service (default)")
    pace.add_argument("--fast", dest="realtime", action="store_false",
                      help="the emulated agent answers at once and streams as fast as it can; microphone and "
                           "speaker stay paced to real time (the agent and the echo guard depend on it)")
    parser.add_argument("--card", choices=("clocked", "file"),
                        help="the sound card: clocked (a private PulseAudio that plays and records in real time: "
                             "figures are what was heard) or file (ALSA file devices: what was written); default: "
                             "clocked when pulseaudio is installed, otherwise file")
    parser.add_argument("--room-noise", metavar="WAV", type=Path,
                        help="what the room sounds like: a WAV looped under --input and after it (default: "
                             "silence after the input)")
    parser.add_argument("--out", metavar="DIR", type=Path, default=Path("bench-out"),
                        help="output folder (default: ./bench-out)")
    parser.add_argument("--max-wait-s", type=float, default=90.0, metavar="S",
                        help="give up this long after the last timeline step (or the input's end) if the conversation "
                             "goes on: a failure (default 90)")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress display (the summary is still printed)")
    parser.add_argument("--schema", action="store_true",
                        help="print the JSON schema of report.json and exit")
    add_set_option(parser)


def run(args: argparse.Namespace) -> int:
    from device.commands.common import require_tools

    require_tools("bench")
    from device.bench.runner import BenchOptions, quiet_device_logs
    from device.bench.runner import run as run_bench

    if args.schema:
        import json

        from device.bench.report import SCHEMA

        print(json.dumps(SCHEMA, indent=2, ensure_ascii=False))
        return ExitCode.OK
    if args.scenario is not None and args.agent_url:
        print("voice-appliance bench: --scenario is for the built-in emulator; drop it with --agent-url",
              file=sys.stderr)
        return ExitCode.USAGE
    if args.api_key_file and not args.agent_url:
        print("voice-appliance bench: --api-key-file is for --agent-url (the built-in emulator makes its own key)",
              file=sys.stderr)
        return ExitCode.USAGE
    if not args.agent_url:  # the built-in emulator serves over websockets
        from device.commands.common import require_extra

        require_extra("websockets", "bench", "bench")
    opts = BenchOptions(
        out_dir=args.out,
        input_wav=args.input,
        timeline=args.timeline,
        scenario=args.scenario,
        agent_url=args.agent_url,
        api_key_file=args.api_key_file,
        gate_mode=args.gate,
        realtime=args.realtime,
        config_path=Path(args.config) if args.config else None,
        overrides=tuple(args.overrides),
        max_tail_s=args.max_wait_s,
        progress=sys.stderr if args.progress else None,
        card=args.card,
        room_noise=args.room_noise,
    )
    with quiet_device_logs():
        result = run_bench(opts)
    print(result.summary)
    arts = result.report["artefacts"]
    files = [name for name in (arts["agent_audio_wav"], arts["user_audio_wav"], "report.json",
                               arts["timeline_svg"], arts["timeline_png"]) if name]
    print(f"written to {result.out_dir}/: " + ", ".join(files))
    return result.exit_code
