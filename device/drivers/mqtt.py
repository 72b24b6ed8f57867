"""The fleet channel's broker connection: the only importer of paho-mqtt (docs/fleet.md).

:class:`FleetLink` is a worker (thread ``mqtt``) that owns the client: it connects with
capped, jittered backoff, sets ``offline`` as the retained last will, publishes from a bounded
queue (:class:`device.core.fleet.Outbox`), subscribes to this kiosk's command topics and to
Home Assistant's ``homeassistant/status`` (discovery again when it says ``online``). The
conversation never waits for it: telemetry arrives on the publishers' threads and is only
noted under a lock; every network call runs on this thread, bounded by
``mqtt.connect_timeout_s`` and ``client.loop`` timeouts.

Works with paho-mqtt 1.6.1 (Debian Bookworm's python3-paho-mqtt) and 2.x (callback API
version 2): :func:`_new_client` and the ``*args`` callbacks are the whole shim.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from device import __version__
from device.core import fleet
from device.core.config import MqttConfig
from device.core.errors import DeviceError, ExitCode
from device.core.events import ButtonEvent, Command, MuteEvent
from device.core.gate import level_dbfs
from device.core.retry import backoff_delay_s
from device.drivers.logs import RateLimitedLog
from device.drivers.secrets import Secret
from device.drivers.worker import Worker, WorkerExited

log = logging.getLogger(__name__)

SOURCE = "mqtt"
LOOP_S = 0.05  # one network loop: how late a queued message leaves at most
REJECT_LOG_S = 60.0
LEVEL_EVERY_S = 5.0  # the microphone level of an idle kiosk: one block measured this often (about 1 ms of CPU)
RECHECK_S = 0.5  # while the daemon is starting: how often the state is looked at again
STOP_FLUSH_S = 1.0  # at a clean stop: time for "offline" to reach the broker
MACHINE_ID = Path("/etc/machine-id")


class MqttError(DeviceError):
    """The broker could not be reached or refused the kiosk."""

    exit_code = ExitCode.UNAVAILABLE


def machine_device_id(path: Path = MACHINE_ID) -> str:
    """A stable id from the machine id, hashed (the machine id itself is not published); the host name without one."""
    try:
        raw = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        raw = ""
    if not raw:
        name = "".join(c if c.isalnum() or c in "-_" else "-" for c in socket.gethostname())[:64]
        return name or "kiosk"
    return "va-" + hashlib.sha256(f"voice-appliance:{raw}".encode()).hexdigest()[:12]


def device_id(cfg: MqttConfig) -> str:
    return cfg.device_id or machine_device_id()


def topics_of(cfg: MqttConfig) -> fleet.Topics:
    return fleet.Topics(cfg.topic_prefix, cfg.discovery_prefix, device_id(cfg))


def identity(cfg: MqttConfig) -> fleet.Identity:
    ident = device_id(cfg)
    return fleet.Identity(ident, cfg.device_name or f"Voice kiosk {ident}", __version__)


# -- the compatibility shim (paho 1.6.1 and 2.x) -----------------------------------------------------

def paho_version() -> str:
    import paho.mqtt

    return str(paho.mqtt.__version__)


def _new_client(client_id: str) -> Any:
    import paho.mqtt.client as paho

    api = getattr(paho, "CallbackAPIVersion", None)
    if api is not None:  # 2.x
        return paho.Client(api.VERSION2, client_id=client_id, protocol=paho.MQTTv311, clean_session=True)
    return paho.Client(client_id=client_id, protocol=paho.MQTTv311, clean_session=True)


def _failed(rc: Any) -> bool:
    """A CONNACK / disconnect code that is not success (an int in 1.6.1, a ReasonCode in 2.x)."""
    is_failure = getattr(rc, "is_failure", None)
    if is_failure is not None:
        return bool(is_failure)
    return int(rc) != 0


def _refused_credentials(rc: Any) -> bool:
    """Bad user name or password / not authorised (3.1.1 codes 4, 5; 2.x maps them to 134, 135)."""
    value = getattr(rc, "value", rc)
    return int(value) in (4, 5, 134, 135)


def _connack_text(rc: Any) -> str:
    if hasattr(rc, "getName"):
        return str(rc.getName())
    import paho.mqtt.client as paho

    return str(paho.connack_string(int(rc)))


def _set_connect_timeout(client: Any, timeout_s: float) -> None:
    if isinstance(getattr(type(client), "connect_timeout", None), property):
        client.connect_timeout = timeout_s
    else:  # 1.6.1: no setter; create_connection reads this
        client._connect_timeout = timeout_s


def _configure(
    client: Any, cfg: MqttConfig, topics: fleet.Topics, password: Secret | None, *, will: bool = True
) -> None:
    """Credentials, TLS, the last will (the kiosk's own connection only), limits. MqttError: a file is unusable."""
    if cfg.username:
        client.username_pw_set(cfg.username, password.reveal() if password is not None else None)
    if cfg.use_tls:
        try:
            client.tls_set(
                ca_certs=cfg.ca_file or None,
                certfile=cfg.client_cert_file or None,
                keyfile=cfg.client_key_file or None,
            )
        except (OSError, ssl.SSLError, ValueError) as e:
            raise MqttError(f"mqtt: cannot use the TLS files (ca_file, client certificate): {e}") from None
    if will:
        client.will_set(topics.availability, fleet.OFFLINE, qos=1, retain=True)
    client.max_queued_messages_set(cfg.queue_size)
    _set_connect_timeout(client, cfg.connect_timeout_s)


def connect_error(e: BaseException, cfg: MqttConfig) -> str:
    """One line for a failed connect (no secret: paho's exceptions carry none, and redaction still runs)."""
    where = f"{cfg.host}:{cfg.broker_port}"
    if isinstance(e, ssl.SSLCertVerificationError):
        return (
            f"the broker {where} presented a certificate mqtt.ca_file does not trust ({e.verify_message}); "
            "set ca_file to the CA that signed it"
        )
    if isinstance(e, ssl.SSLError):
        return f"TLS with the broker {where} failed ({e.reason or e}); is it a TLS port? (mqtt.tls, mqtt.port)"
    if isinstance(e, socket.gaierror):
        return f"cannot resolve the broker's name {cfg.host!r}; check mqtt.host and DNS"
    if isinstance(e, ConnectionRefusedError):
        return f"nothing accepts connections at {where}; is the broker running? (mqtt.host, mqtt.port)"
    if isinstance(e, (socket.timeout, TimeoutError)):
        return f"the broker {where} did not answer within {cfg.connect_timeout_s:g} s"
    return f"cannot reach the broker {where}: {getattr(e, 'strerror', None) or e}"


def probe(cfg: MqttConfig, password: Secret | None, timeout_s: float = 5.0) -> str | None:
    """Connect once and disconnect (doctor, run --check): None when the broker accepted, else why not."""
    topics = topics_of(cfg)
    client = _new_client(f"{topics.device_id}-check-{random.randrange(1 << 30):x}")
    result: list[str | None] = []

    def on_connect(*args: Any) -> None:
        rc = args[3]
        result.append(f"the broker refused the connection: {_connack_text(rc)}" if _failed(rc) else None)

    client.on_connect = on_connect
    try:
        _configure(client, cfg, topics, password, will=False)
        client.connect(cfg.host, cfg.broker_port, keepalive=max(5, int(timeout_s) + 1))
    except MqttError as e:
        return str(e)
    except (OSError, ssl.SSLError, ValueError) as e:
        return connect_error(e, cfg)
    deadline = time.monotonic() + timeout_s
    try:
        while not result and time.monotonic() < deadline:
            client.loop(0.1)
        if not result:
            return f"the broker {cfg.host}:{cfg.broker_port} accepted the connection but did not answer CONNECT"
        return result[0]
    finally:
        try:
            client.disconnect()
            client.loop(0.1)
        except Exception:
            pass
        _close_socket(client)


def _close_socket(client: Any) -> None:
    """Close the connection's socket and the wake-up socket pair paho makes in loop() (both versions)."""
    reset = getattr(client, "_reset_sockets", None)
    with contextlib.suppress(Exception):
        if reset is not None:
            reset()
            return
    sock = client.socket()
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()


# -- the worker --------------------------------------------------------------------------------------

class FleetLink(Worker):
    """The kiosk's MQTT connection: state and events out, commands in (thread ``mqtt``)."""

    def __init__(
        self,
        cfg: MqttConfig,
        password: Secret | None,
        *,
        post: Callable[[object], bool],
        status: Callable[[], Mapping[str, Any]],
        set_volume: Callable[[int], None],
        volume: Callable[[], int | None],
        request_reload: Callable[[], None],
        on_exit: Callable[[WorkerExited], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__("mqtt", on_exit)
        self.cfg = cfg
        self._password = password
        self._post = post
        self._status = status
        self._set_volume = set_volume
        self._volume = volume
        self._request_reload = request_reload
        self._clock = clock
        self.topics = topics_of(cfg)
        self.ident = identity(cfg)
        self._lock = threading.Lock()  # guards what the telemetry threads touch: the outbox, the noted state
        self._outbox = fleet.Outbox(cfg.queue_size)
        self._gate = fleet.StateGate(cfg.min_publish_interval_s, cfg.state_interval_s)
        self._state: str | None = None
        self._mic_level: float | None = None
        self._level_at_s = -LEVEL_EVERY_S
        self._recheck_at_s: float | None = None
        self._limit = fleet.RateLimit(cfg.commands_per_minute)
        self._rejects = RateLimitedLog(log, REJECT_LOG_S)
        self._errors = RateLimitedLog(log, max(REJECT_LOG_S, cfg.retry_max_s))
        self._client: Any = None
        self._connected = threading.Event()
        self._connack = False
        self._refused = False
        self.reconnects = 0
        self.connects = 0
        self.commands = 0
        self.rejected = 0

    # -- counters for tests and the status ------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def dropped(self) -> int:
        with self._lock:
            return self._outbox.dropped

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    # -- telemetry (publishers' threads: only note and queue) ---------------------------------------
    def on_telemetry(self, record: Any) -> None:
        kind, data = record.kind, record.data
        if kind == "gate":
            self._mic_level = data.get("level_dbfs")  # a float assignment: no lock needed, no publish
            return
        with self._lock:
            if kind == "state":
                self._state = str(data.get("state", ""))
                self._gate.changed()
            elif kind in ("mute", "error", "session_end"):
                self._gate.changed()
            elif (event := fleet.event_type(kind, data)) is not None:
                self._outbox.put(fleet.event_message(self.topics, event))
            elif kind == "transcript" and self.cfg.publish_transcripts and not data.get("tentative"):
                self._outbox.put(fleet.transcript_message(self.topics, str(data.get("role")), str(data.get("text"))))

    def on_block(self, pcm: bytes, t_s: float) -> None:
        """A microphone block (the capture thread): its level, every LEVEL_EVERY_S, so an idle kiosk reports one."""
        if t_s - self._level_at_s < LEVEL_EVERY_S:
            return
        self._level_at_s = t_s
        self._mic_level = level_dbfs(pcm)

    # -- the thread -----------------------------------------------------------------------------
    def run(self) -> None:
        attempt = 0
        while not self.stopping:
            self.beat()
            try:
                ok = self._session()
            except Exception as e:  # the fleet channel must never end the kiosk: log, back off, try again
                log.debug("mqtt: the connection failed unexpectedly", exc_info=True)
                self._errors.log(
                    logging.ERROR, "unexpected", "mqtt: the connection failed unexpectedly (%s: %s); reconnecting "
                    "with backoff (please report this with the log at --log-level debug)", type(e).__name__, e,
                )
                ok = False
            if self.stopping:
                break
            if ok:
                attempt = 0
            delay = self.cfg.retry_max_s if self._refused else backoff_delay_s(
                attempt, self.cfg.retry_initial_s, self.cfg.retry_max_s
            )
            attempt += 1
            log.debug("mqtt: next connection attempt in %.1f s", delay)
            if self.wait(delay):
                break

    def _session(self) -> bool:
        """One connection from connect to loss; True when it was up (the backoff starts again)."""
        client = _new_client(f"{self.topics.device_id}-{random.randrange(1 << 30):x}")
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client
        self._connack = False
        self._refused = False
        try:
            _configure(client, self.cfg, self.topics, self._password)
            client.connect(self.cfg.host, self.cfg.broker_port, keepalive=self.cfg.keepalive_s)
        except MqttError as e:
            self._errors.log(logging.ERROR, "setup", "%s", e)
            self._refused = True  # a file problem: retrying soon changes nothing
            return False
        except (OSError, ssl.SSLError, ValueError) as e:
            self._errors.warning("connect", "mqtt: %s; retrying with backoff", connect_error(e, self.cfg))
            self._refused = isinstance(e, ssl.SSLCertVerificationError)
            _close_socket(client)
            return False
        was_up = False
        try:
            deadline = self._clock() + self.cfg.connect_timeout_s
            while not self.stopping:
                self.beat()
                rc = client.loop(LOOP_S)
                if self._connack:
                    was_up = True
                if self._refused or (not self._connack and self._clock() >= deadline):
                    if not self._refused:
                        self._errors.warning(
                            "connack", "mqtt: the broker %s:%d accepted the connection but did not answer CONNECT "
                            "within %g s; retrying with backoff", self.cfg.host, self.cfg.broker_port,
                            self.cfg.connect_timeout_s,
                        )
                    break
                if int(rc) != 0 and self._connack:
                    break  # connection lost
                if self._connected.is_set():
                    self._pump(client)
            if self.stopping and self._connected.is_set():
                self._goodbye(client)
        finally:
            self._connected.clear()
            _close_socket(client)
        return was_up

    def _goodbye(self, client: Any) -> None:
        """A clean stop: "offline" (the will only fires on a lost connection), then disconnect."""
        info = client.publish(self.topics.availability, fleet.OFFLINE, qos=1, retain=True)
        end = self._clock() + STOP_FLUSH_S
        while self._clock() < end and not info.is_published():
            client.loop(LOOP_S)
        client.disconnect()
        client.loop(LOOP_S)

    def unblock(self) -> None:
        pass  # every wait is a bounded loop() or the stop Event

    def _pump(self, client: Any) -> None:
        now = self._clock()
        with self._lock:
            if self._recheck_at_s is not None and now >= self._recheck_at_s:
                self._recheck_at_s = None
                self._gate.changed()
            due = self._gate.due(now)
            if due:
                self._gate.sent(now)  # a change noted from here on makes it due again
        if due:
            state = self._state_message()  # outside the lock: the telemetry's publishers never wait on the status
            with self._lock:
                self._outbox.put(state)
        while True:
            with self._lock:
                msg = self._outbox.peek()
            if msg is None:
                return
            info = client.publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain)
            if int(info.rc) != 0:
                return  # paho's own queue is full (the broker is not acknowledging): ours holds the rest
            with self._lock:
                if self._outbox.peek() is msg:
                    self._outbox.take()

    def _state_message(self) -> fleet.Message:
        try:
            status = self._status()
        except Exception:
            log.debug("mqtt: status unavailable", exc_info=True)
            status = {}
        try:
            volume = self._volume()
        except Exception:
            volume = None
        values = fleet.state_values(
            status, state=self._state, volume=volume, mic_level_dbfs=self._mic_level,
            reconnects=self.reconnects, version=__version__,
        )
        # "starting" ends without a telemetry record (the daemon's, not the controller's): look again soon.
        self._recheck_at_s = self._clock() + RECHECK_S if values["state"] == "starting" else None
        return fleet.state_message(self.topics, values)

    def _announce(self) -> None:
        """Availability, discovery and the state, after a (re)connect or Home Assistant's restart."""
        with self._lock:
            self._outbox.put(fleet.Message(self.topics.availability, fleet.ONLINE, retain=True, kind="availability"))
            if self.cfg.discovery:
                for msg in fleet.discovery(self.topics, self.ident, self.cfg.publish_transcripts):
                    self._outbox.put(msg)
            self._gate.changed()

    # -- paho callbacks (this thread, inside loop()) --------------------------------------------------
    def _on_connect(self, *args: Any) -> None:
        client, rc = args[0], args[3]
        self._connack = True
        if _failed(rc):
            self._refused = True
            if _refused_credentials(rc):
                user = self.cfg.username or "(anonymous)"
                self._errors.log(
                    logging.ERROR, "refused",
                    "mqtt: the broker refused user %s (%s); check mqtt.username and the password (next try in %g s)",
                    user, _connack_text(rc), self.cfg.retry_max_s,
                )
            else:
                self._errors.log(
                    logging.ERROR, "refused", "mqtt: the broker refused the connection: %s", _connack_text(rc)
                )
            return
        self.connects += 1
        if self.connects > 1:
            self.reconnects += 1
        log.info("mqtt: connected to %s:%d as %s", self.cfg.host, self.cfg.broker_port, self.topics.device_id)
        client.subscribe([(self.topics.commands, 1), (self.topics.ha_status, 1)])
        self._announce()
        self._connected.set()

    def _on_disconnect(self, *args: Any) -> None:
        if self._connected.is_set() and not self.stopping:
            log.warning("mqtt: lost the broker %s:%d; reconnecting", self.cfg.host, self.cfg.broker_port)
        self._connected.clear()

    def _on_message(self, *args: Any) -> None:
        msg = args[2]
        try:
            self._handle(msg.topic, bytes(msg.payload), bool(msg.retain))
        except Exception:  # a command must never take the connection down
            log.exception("mqtt: handling a message on %s failed", msg.topic)

    def _handle(self, topic: str, payload: bytes, retained: bool) -> None:
        if topic == self.topics.ha_status:
            if payload.strip() == b"online" and self.cfg.discovery:
                log.info("mqtt: Home Assistant is online; publishing the discovery again")
                self._announce()
            return
        name = self.topics.command_name(topic)
        if name is None:
            self._reject("topic", f"not a command topic: {topic[:120]!r}")
            return
        if not self._limit.allow(self._clock()):
            self._reject("rate", f"more than {self.cfg.commands_per_minute} commands a minute; {name} dropped")
            return
        cmd = fleet.parse_command(name, payload, retained)
        if isinstance(cmd, str):
            self._reject(name, cmd)
            return
        self.commands += 1
        self._dispatch(cmd)

    def _reject(self, kind: str, why: str) -> None:
        self.rejected += 1
        self._rejects.warning(kind, "mqtt: command ignored: %s", why)

    def _dispatch(self, cmd: fleet.FleetCommand) -> None:
        """Into the daemon the way the control socket goes (device/drivers/control.py)."""
        now = self._clock()
        name = cmd.name
        if name in ("press", "release"):
            self._posted(name, ButtonEvent(SOURCE, name == "press", now))
        elif name == "mute":
            self._posted(name, MuteEvent(SOURCE, bool(cmd.value), now))
        elif name == "volume":
            assert isinstance(cmd.value, int)
            try:
                self._set_volume(cmd.value)
            except DeviceError as e:
                self._reject("volume", f"volume: {e}")
                return
            with self._lock:
                self._gate.changed()
        elif name == "reload":
            log.info("mqtt: reload requested")
            self._request_reload()
        else:
            ctl_name = "stop" if name == "end" else name
            text = cmd.value if isinstance(cmd.value, str) else ""
            self._posted(name, Command(ctl_name, text, self._reply(name)))

    def _posted(self, name: str, event: object) -> None:
        if not self._post(event):
            self._reject("busy", f"{name}: the daemon is busy; dropped")

    def _reply(self, name: str) -> Callable[[bool, str], None]:
        def reply(ok: bool, text: str) -> None:  # the controller's thread
            if not ok:
                self._rejects.warning(f"answer-{name}", "mqtt: %s: %s", name, text)

        return reply


def removal_messages(cfg: MqttConfig) -> list[fleet.Message]:
    """What removes this kiosk from Home Assistant: empty retained configs, and its retained topics."""
    topics = topics_of(cfg)
    return [
        *fleet.removal(topics),
        fleet.Message(topics.state, "", retain=True, kind="state"),
        fleet.Message(topics.availability, "", retain=True, kind="availability"),
    ]


def publish_once(
    cfg: MqttConfig, password: Secret | None, messages: list[fleet.Message], timeout_s: float = 10.0
) -> None:
    """Connect, publish ``messages`` (QoS 1, waiting for each acknowledgement), disconnect; MqttError on failure."""
    topics = topics_of(cfg)
    client = _new_client(f"{topics.device_id}-admin-{random.randrange(1 << 30):x}")
    state: dict[str, Any] = {}

    def on_connect(*args: Any) -> None:
        state["rc"] = args[3]

    client.on_connect = on_connect
    try:
        _configure(client, cfg, topics, password, will=False)
        client.connect(cfg.host, cfg.broker_port, keepalive=max(5, int(timeout_s)))
    except (OSError, ssl.SSLError, ValueError) as e:
        raise MqttError(f"mqtt: {connect_error(e, cfg)}") from None
    deadline = time.monotonic() + timeout_s
    try:
        while "rc" not in state and time.monotonic() < deadline:
            client.loop(0.1)
        if "rc" not in state:
            raise MqttError(f"mqtt: the broker {cfg.host}:{cfg.broker_port} did not answer CONNECT")
        if _failed(state["rc"]):
            raise MqttError(f"mqtt: the broker refused the connection: {_connack_text(state['rc'])}")
        infos = [client.publish(m.topic, m.payload, qos=1, retain=m.retain) for m in messages]
        while not all(i.is_published() for i in infos) and time.monotonic() < deadline:
            client.loop(0.1)
        if not all(i.is_published() for i in infos):
            raise MqttError("mqtt: the broker did not acknowledge every message in time")
        client.disconnect()
        client.loop(0.1)
    finally:
        _close_socket(client)


def check_lines(cfg: MqttConfig, timeout_s: float = 5.0, *, reach: bool = True) -> list[tuple[str, str]]:
    """doctor's and ``run --check``'s lines: (ok | warn | fail | skip, text) for the settings and the broker."""
    from device.core.errors import CredentialError
    from device.drivers.secrets import load_mqtt_password

    if not cfg.enabled:
        return [("skip", "mqtt: off (mqtt.enabled = false)")]
    topics = topics_of(cfg)
    tls = f"TLS{' (CA ' + cfg.ca_file + ')' if cfg.ca_file else ' (system CAs)'}" if cfg.use_tls else "without TLS"
    who = f"user {cfg.username}" if cfg.username else "anonymous"
    text = (
        f"mqtt: {cfg.host}:{cfg.broker_port} {tls}, {who}, device id {topics.device_id}, "
        f"transcripts {'published' if cfg.publish_transcripts else 'not published'}"
    )
    out = [("warn" if cfg.username and not cfg.use_tls else "ok",
            text + ("; the password crosses the network in clear: set ca_file (TLS)"
                    if cfg.username and not cfg.use_tls else ""))]
    try:
        password = load_mqtt_password(cfg.password_file)
    except CredentialError as e:
        return [*out, ("fail", f"mqtt: {e}")]
    if cfg.username and password is None:
        out.append(("warn", "mqtt: a user name without a password (set mqtt.password_file)"))
    if not reach:
        return out
    try:
        why = probe(cfg, password, timeout_s)
    except Exception as e:  # a check reports, never raises
        why = f"{type(e).__name__}: {e}"
    if why is None:
        out.append(("ok", f"mqtt: the broker accepted the connection as {who}"))
    else:
        out.append(("fail", f"mqtt: {why}"))
    return out
