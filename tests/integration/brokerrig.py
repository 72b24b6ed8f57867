"""A private Mosquitto per test, run as a fleet would run it (no tests here).

TLS with a generated certificate, a password file, an ACL (a kiosk may only write its own
topics), persistence off, 127.0.0.1 on a free port. :class:`Watcher` is a plain paho client
(the library the kiosk uses, but not the kiosk's code) that plays Home Assistant: it reads
everything and can publish commands.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from device.core.config import MqttConfig
from tests.support import Collector, free_port, self_signed_cert

WAIT_S = 20.0
KIOSK_USER, KIOSK_PASSWORD = "kiosk-1", "k1-s3cret-pw"
HA_USER, HA_PASSWORD = "homeassistant", "ha-s3cret-pw"
OTHER_USER, OTHER_PASSWORD = "kiosk-2", "k2-s3cret-pw"

ACL = """\
user homeassistant
topic readwrite #

pattern readwrite voice-appliance/%u/#
pattern write homeassistant/+/%u/#
pattern read homeassistant/status
"""


def require_mosquitto() -> None:
    if shutil.which("mosquitto") is None or shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto mosquitto-clients)")


@dataclass
class Broker:
    """One mosquitto process; ``restart()`` keeps its port and files."""

    directory: Path
    tls: bool = True
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def ca_file(self) -> Path:
        return self.directory / "server.crt"

    def write_files(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.tls and not self.ca_file.exists():
            self_signed_cert(self.directory)
        pw = self.directory / "passwd"
        pw.unlink(missing_ok=True)
        for i, (user, password) in enumerate(
            ((KIOSK_USER, KIOSK_PASSWORD), (HA_USER, HA_PASSWORD), (OTHER_USER, OTHER_PASSWORD))
        ):
            args = ["mosquitto_passwd", "-b"] + (["-c"] if i == 0 else []) + [str(pw), user, password]
            subprocess.run(args, check=True, capture_output=True, timeout=30)
        os.chmod(pw, 0o600)
        (self.directory / "acl").write_text(ACL)
        os.chmod(self.directory / "acl", 0o600)
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous false",
            f"password_file {pw}",
            f"acl_file {self.directory / 'acl'}",
            "persistence false",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # or it drops to `mosquitto` and cannot read the root-only files
        if self.tls:
            lines += [f"cafile {self.ca_file}", f"certfile {self.ca_file}", f"keyfile {self.directory / 'server.key'}"]
        (self.directory / "mosquitto.conf").write_text("\n".join(lines) + "\n")

    def start(self) -> Broker:
        require_mosquitto()
        self.write_files()
        self._spawn()
        return self

    def _spawn(self) -> None:
        log = open(self.directory / "mosquitto.log", "ab")  # noqa: SIM115 (the process holds it)
        self.proc = subprocess.Popen(
            ["mosquitto", "-c", str(self.directory / "mosquitto.conf")], stdout=log, stderr=log
        )
        log.close()
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"mosquitto exited: {(self.directory / 'mosquitto.log').read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.02)
        raise AssertionError("mosquitto did not listen in time")

    def kill(self) -> None:
        """SIGKILL: the broker dies as a crash or a power cut would take it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        self.kill()
        self._spawn()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def log_text(self) -> str:
        try:
            return (self.directory / "mosquitto.log").read_text()
        except OSError:
            return ""

    def kiosk_config(self, password_file: Path | None = None, **changes: Any) -> MqttConfig:
        """The [mqtt] section of a kiosk on this broker (device id = the kiosk's user, as the ACL expects)."""
        values: dict[str, Any] = {
            "enabled": True,
            "host": "127.0.0.1",
            "port": self.port,
            "ca_file": str(self.ca_file) if self.tls else "",
            "username": KIOSK_USER,
            "password_file": str(password_file) if password_file else "",
            "device_id": KIOSK_USER,
            "retry_initial_s": 0.2,
            "retry_max_s": 2.0,
            "keepalive_s": 5,
            "connect_timeout_s": 2.0,
        }
        values.update(changes)
        return MqttConfig(**values)


def password_file(directory: Path, password: str = KIOSK_PASSWORD) -> Path:
    path = directory / "mqtt_password"
    path.write_text(password + "\n")
    os.chmod(path, 0o600)
    return path


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    t_s: float

    def json(self) -> Any:
        return json.loads(self.payload)


class Watcher(Collector[Received]):
    """Home Assistant's side: a paho client as user homeassistant, subscribed to everything."""

    def __init__(self, broker: Broker, user: str = HA_USER, password: str = HA_PASSWORD,
                 subscribe: str = "#") -> None:
        super().__init__(WAIT_S)
        import paho.mqtt.client as paho

        self.broker = broker
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"watcher-{time.monotonic_ns()}")
        self.client.username_pw_set(user, password)
        if broker.tls:
            self.client.tls_set(ca_certs=str(broker.ca_file))
        self.subscribed = threading.Event()
        self.client.on_connect = lambda c, *_: c.subscribe(subscribe, qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = lambda c, u, m: self(Received(m.topic, bytes(m.payload), bool(m.retain),
                                                               time.monotonic()))

    def __enter__(self) -> Watcher:
        self.client.connect("127.0.0.1", self.broker.port, keepalive=10)
        self.client.loop_start()
        assert self.subscribed.wait(WAIT_S), "the watcher could not subscribe"
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def publish(self, topic: str, payload: str | bytes, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(WAIT_S)

    def on(self, topic: str, after: int = 0) -> list[Received]:
        return self.matching(lambda r: r.topic == topic, after)

    def wait_for(self, topic: str, pred: Callable[[Received], bool] = lambda r: True, after: int = 0,
                 timeout_s: float = WAIT_S) -> Received:
        return self.wait_first(lambda r: r.topic == topic and pred(r), timeout_s, after,
                               lambda: f"nothing matching on {topic}")

    def last_state(self, after: int = 0) -> dict[str, Any] | None:
        got = [r for r in self.items[after:] if r.topic.endswith("/state") and r.payload]
        return got[-1].json() if got else None
