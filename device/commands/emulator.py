"""``voice-appliance emulator``: serve a local ElevenAgents-compatible agent."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from device.core.errors import ConfigError, ExitCode

DEFAULT_PORT = 8765
DEFAULT_API_KEY = "emulator-key"
API_KEY_ENV = "VOICE_APPLIANCE_EMULATOR_API_KEY"
KEEP_IN_MEMORY = 50  # conversations whose records (with audio) stay in memory; --record-dir keeps all

EPILOG = """\
Point a kiosk at it (in /etc/voice-appliance/config.toml):
  [agent]
  agent_id = "agent_emulator"          # or the scenario's / --agent-id
  base_url = "http://LAPTOP-IP:8765"   # run the emulator with --host 0.0.0.0
  connection = "signed_url"            # or "public" with --public
and give the kiosk the emulator's API key (default "emulator-key") the usual way.

Faults (--fault KIND[:KEY=VALUE,...], repeatable; --list-faults for all):
  close:reply=1,after_chunks=2,code=1011   drop:reply=0   quota   slow_metadata:delay_s=3
  signed_url_error:status=429,retry_after_s=5,count=2   refuse_upgrade:status=503,count=1

Exit status: 0 when no client broke the protocol, 1 when any did (each violation is listed).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    g = parser.add_argument_group("server")
    g.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1; 0.0.0.0 lets kiosks on the network in)",
    )
    g.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"TCP port for HTTP and WebSocket (default: {DEFAULT_PORT}; 0 picks a free one and prints it)",
    )
    g.add_argument(
        "--port-file",
        type=Path,
        metavar="PATH",
        help="write the port number to this file once listening (useful with --port 0)",
    )
    g.add_argument(
        "--api-key-file",
        type=Path,
        metavar="PATH",
        help=f"file holding the API key clients must send as xi-api-key (default: ${API_KEY_ENV}, "
        f"else {DEFAULT_API_KEY!r})",
    )
    g.add_argument(
        "--record-dir",
        type=Path,
        metavar="DIR",
        help="write each conversation's event log (JSON) and received user audio (WAV) here",
    )
    g.add_argument(
        "--max-conversations",
        type=int,
        default=0,
        metavar="N",
        help="exit after N conversations have ended (default: 0, run until Ctrl-C/SIGTERM)",
    )
    g.add_argument(
        "--speech",
        choices=("auto", "espeak", "tone"),
        default="auto",
        help="agent voice: espeak-ng, a built-in speech-like tone, or auto (espeak-ng when installed)",
    )

    s = parser.add_argument_group("scenario (command-line values override the scenario file)")
    s.add_argument(
        "--scenario",
        type=Path,
        metavar="PATH",
        help="scenario TOML (default: the built-in demo; see examples/scenarios/)",
    )
    s.add_argument(
        "--describe-scenario",
        action="store_true",
        help="print the scenario format (every key, default and meaning) and exit",
    )
    s.add_argument("--list-faults", action="store_true", help="print the fault kinds and their keys and exit")
    s.add_argument("--agent-id", help="agent id clients must use (default: agent_emulator)")
    pub = s.add_mutually_exclusive_group()
    pub.add_argument(
        "--public",
        dest="public",
        action="store_true",
        default=None,
        help="public agent: connect with the agent id alone",
    )
    pub.add_argument(
        "--private", dest="public", action="store_false", help="private agent: a signed URL is required (the default)"
    )
    s.add_argument(
        "--output-format",
        metavar="FORMAT",
        help="agent_output_audio_format: pcm_8000|16000|22050|24000|44100|48000 or ulaw_8000",
    )
    s.add_argument("--input-format", metavar="FORMAT", help="user_input_audio_format (same choices)")
    s.add_argument("--first-message", metavar="TEXT", help="what the agent says first ('' to wait for the user)")
    s.add_argument(
        "--speed",
        type=float,
        metavar="FACTOR",
        help="send agent audio this many times faster than real time (default: 4)",
    )
    s.add_argument("--response-delay-ms", type=int, metavar="MS", help="thinking time before a reply (default: 300)")
    s.add_argument("--end-of-turn-ms", type=int, metavar="MS", help="user silence that ends a turn (default: 700)")
    s.add_argument("--ping-interval-s", type=float, metavar="S", help="ping interval (default: 5; 0: no pings)")
    s.add_argument(
        "--init-timeout-s",
        type=float,
        metavar="S",
        help="wait for conversation_initiation_client_data this long (default: 10)",
    )
    s.add_argument(
        "--inactivity-timeout-s",
        type=float,
        metavar="S",
        help="close 1002 after this long without user audio (default: 60; 0: never)",
    )
    s.add_argument(
        "--max-duration-s", type=float, metavar="S", help="close 1000 after this long (default: 600; 0: never)"
    )
    s.add_argument(
        "--turn-timeout-s",
        type=float,
        metavar="S",
        help="re-prompt after this long of user silence (default: 7; 0: never)",
    )
    s.add_argument(
        "--tool-timeout-s",
        type=float,
        metavar="S",
        help="a client tool result later than this is spoken as a failure (default: 5)",
    )
    s.add_argument(
        "--signed-url-ttl-s", type=float, metavar="S", help="signed URLs must be opened within this (default: 900)"
    )
    s.add_argument(
        "--audio-rate-factor",
        type=float,
        metavar="F",
        help="user audio faster than F × real time is a violation (default: 1.5; 0: off)",
    )
    s.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="KIND[:KEY=VALUE,...]",
        help="inject a fault (repeatable), e.g. close:reply=1,code=1011; see --list-faults",
    )


def _scenario_from_args(args: argparse.Namespace) -> Any:
    from device.emulator.scenario import default_scenario, load_scenario, parse_fault_spec

    scenario = load_scenario(args.scenario) if args.scenario else default_scenario()
    agent: dict[str, Any] = {}
    timing: dict[str, Any] = {}
    strict: dict[str, Any] = {}
    for name, section, key in (
        ("agent_id", agent, "agent_id"),
        ("public", agent, "public"),
        ("output_format", agent, "output_format"),
        ("input_format", agent, "input_format"),
        ("first_message", agent, "first_message"),
        ("speed", timing, "speed"),
        ("response_delay_ms", timing, "response_delay_ms"),
        ("end_of_turn_ms", timing, "end_of_turn_silence_ms"),
        ("ping_interval_s", timing, "ping_interval_s"),
        ("init_timeout_s", timing, "init_timeout_s"),
        ("inactivity_timeout_s", timing, "inactivity_timeout_s"),
        ("max_duration_s", timing, "max_duration_s"),
        ("turn_timeout_s", timing, "turn_timeout_s"),
        ("tool_timeout_s", timing, "tool_timeout_s"),
        ("signed_url_ttl_s", timing, "signed_url_ttl_s"),
        ("audio_rate_factor", strict, "audio_rate_factor"),
    ):
        value = getattr(args, name)
        if value is not None:
            section[key] = value
    faults = tuple(parse_fault_spec(spec) for spec in args.fault)
    changes: dict[str, Any] = {"agent": agent, "timing": timing, "strict": strict}
    if faults:
        changes["faults"] = scenario.faults + faults
    return scenario.with_changes(**changes)


def _api_key(args: argparse.Namespace) -> tuple[str, str]:
    if args.api_key_file:
        try:
            key = args.api_key_file.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ConfigError(f"cannot read {args.api_key_file}: {e.strerror}", "--api-key-file") from None
        if not key or any(c.isspace() for c in key):
            raise ConfigError(f"{args.api_key_file} must hold the key alone on one line", "--api-key-file")
        return key, f"from {args.api_key_file}"
    if os.environ.get(API_KEY_ENV):
        return os.environ[API_KEY_ENV].strip(), f"from ${API_KEY_ENV}"
    return DEFAULT_API_KEY, f"the default {DEFAULT_API_KEY!r}"


def run(args: argparse.Namespace) -> int:
    from device.commands.common import require_tools

    require_tools("emulator")
    from device.emulator.scenario import FAULT_HELP, FAULT_PARAMS, describe_format

    if args.describe_scenario:
        print(describe_format())
        return 0
    if args.list_faults:
        for kind, params in FAULT_PARAMS.items():
            print(f"{kind:<17} keys: {', '.join(params) or '-'}\n{'':<17} {FAULT_HELP[kind]}")
        return 0
    if args.max_conversations < 0:
        raise ConfigError("must be 0 or more", "--max-conversations")
    scenario = _scenario_from_args(args)
    key, key_source = _api_key(args)

    from device.commands.common import require_extra

    require_extra("websockets", "bench", "emulator")
    from device.drivers.secrets import register_secret
    from device.emulator.server import Emulator

    if key != DEFAULT_API_KEY:
        register_secret(key)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
    emu = Emulator(
        scenario,
        host=args.host,
        port=args.port,
        api_key=key,
        record_dir=args.record_dir,
        speech=args.speech,
        keep_conversations=KEEP_IN_MEMORY,
        render_replies=True,
    )
    emu.start()
    try:
        agent = scenario.agent
        print(f"emulator: listening on {emu.base_url} (WebSocket {emu.ws_base_url}/v1/convai/conversation)")
        print(
            f"agent: {agent.agent_id} ({'public' if agent.public else 'private: signed URL required'}), "
            f"output {agent.output_format}, input {agent.input_format}, speech {emu.synthesizer.backend}, "
            f"scenario {scenario.name!r}; API key {key_source}"
        )
        if scenario.faults:
            print("faults: " + "; ".join(f.kind for f in scenario.faults))
        sys.stdout.flush()
        if args.port_file:
            args.port_file.write_text(f"{emu.port}\n", encoding="utf-8")
        try:
            while not stop.wait(0.2):
                if args.max_conversations and emu.conversations_ended >= args.max_conversations:
                    break
        except KeyboardInterrupt:
            pass
    finally:
        emu.stop()
    return _report(emu)


def _report(emu: Any) -> int:
    records = emu.conversations
    print(
        f"emulator: {emu.conversations_started} conversation(s)"
        + (f" (the last {len(records)} listed)" if len(records) < emu.conversations_started else "")
    )
    for r in records:
        interrupted = sum(1 for t in r.turns if t.interrupted)
        print(
            f"  #{r.index} {r.conversation_id}: {len(r.turns)} turn(s), {interrupted} interrupted, "
            f"closed {r.close_code} {r.close_reason!r} by {r.closed_by or '?'}, {len(r.violations)} violation(s)"
            + (f"; recorded in {r.events_path}" if r.events_path else "")
        )
    violations = emu.violations
    if violations:
        print(f"emulator: {len(violations)} protocol violation(s) by clients:")
        for v in violations:
            print(f"  {v}")
        return int(ExitCode.FAILURE)
    print("emulator: no protocol violations")
    return int(ExitCode.OK)
