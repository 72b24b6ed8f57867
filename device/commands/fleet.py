"""``voice-appliance fleet``: the fleet channel (MQTT, Home Assistant discovery) from the command line.

::

    voice-appliance fleet                      this kiosk's device id and topics (no network)
    voice-appliance fleet --check              connect to the broker once and say how it went
    voice-appliance fleet --remove-discovery   take the kiosk out of Home Assistant (uninstall.sh runs it)
"""

from __future__ import annotations

import argparse
import json
import sys

from device.commands.common import add_set_option, load_from_args
from device.core.errors import ExitCode


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_set_option(parser)
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--check", action="store_true", help="connect to the broker once (settings, password, TLS)")
    action.add_argument(
        "--remove-discovery",
        action="store_true",
        help="publish empty retained discovery configs (Home Assistant removes the device) and clear the "
        "retained state and availability",
    )
    action.add_argument("--print-discovery", action="store_true", help="print the discovery configs as JSON lines")
    parser.add_argument(
        "--if-enabled",
        action="store_true",
        help="do nothing (exit 0) when mqtt.enabled is false (for scripts such as uninstall.sh)",
    )


def run(args: argparse.Namespace) -> int:
    from device.drivers import mqtt
    from device.drivers.secrets import load_mqtt_password

    cfg = load_from_args(args).mqtt
    if not cfg.enabled:
        if args.if_enabled:
            return 0
        if args.check or args.remove_discovery:
            print("voice-appliance fleet: error: mqtt.enabled is false in the configuration; nothing to reach",
                  file=sys.stderr)
            return int(ExitCode.CONFIG)
    topics = mqtt.topics_of(cfg)
    if args.print_discovery:
        from device.core import fleet

        for m in fleet.discovery(topics, mqtt.identity(cfg), cfg.publish_transcripts):
            print(json.dumps({"topic": m.topic, "payload": json.loads(m.payload)}))
        return 0
    if not (args.check or args.remove_discovery):
        print(f"device id: {topics.device_id}")
        print(f"broker: {cfg.host or '(none)'}:{cfg.broker_port} {'TLS' if cfg.use_tls else 'without TLS'}"
              f"{' as ' + cfg.username if cfg.username else ''}")
        print(f"availability: {topics.availability}")
        print(f"state: {topics.state}")
        print(f"events: {topics.event}")
        print(f"commands: {topics.commands}")
        print(f"discovery: {topics.config('+', '+')}")
        return 0
    password = load_mqtt_password(cfg.password_file)
    if args.check:
        why = mqtt.probe(cfg, password)
        if why is not None:
            print(f"mqtt: {why}")
            return int(ExitCode.UNAVAILABLE)
        print(f"mqtt: the broker {cfg.host}:{cfg.broker_port} accepted {cfg.username or 'an anonymous client'}")
        return 0
    messages = mqtt.removal_messages(cfg)
    mqtt.publish_once(cfg, password, messages)
    print(f"mqtt: removed {topics.device_id} from the discovery ({len(messages)} empty retained messages)")
    return 0
