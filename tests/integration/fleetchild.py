"""A kiosk's fleet link alone in a process, for the tests that kill it or run it on another paho (no tests here).

``python -m tests.integration.fleetchild CONFIG_JSON``: runs :class:`FleetLink` with the
``[mqtt]`` values in CONFIG_JSON, prints ``paho VERSION``, ``connected`` once connected, and
one line per command it hands on (``post ...``, ``volume N``, ``reload``); stops on SIGTERM.
"""

from __future__ import annotations

import json
import signal
import sys
import threading

from device.core.config import MqttConfig
from device.drivers.mqtt import FleetLink, paho_version
from device.drivers.secrets import load_mqtt_password


def main() -> int:
    cfg = MqttConfig(**json.loads(sys.argv[1]))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def say(line: str) -> None:
        print(line, flush=True)

    def post(event: object) -> bool:
        say(f"post {type(event).__name__} {getattr(event, 'name', '')}{getattr(event, 'muted', '')}".strip())
        return True

    link = FleetLink(
        cfg,
        load_mqtt_password(cfg.password_file),
        post=post,
        status=lambda: {"state": "idle", "counters": {"conversations": 7}},
        set_volume=lambda v: say(f"volume {v}"),
        volume=lambda: 55,
        request_reload=lambda: say("reload"),
    )
    say(f"paho {paho_version()}")
    link.start()
    if link.wait_connected(20):
        say("connected")
    stop.wait(60)
    link.stop()
    say("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
