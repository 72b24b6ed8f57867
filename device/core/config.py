"""Configuration: frozen dataclasses per owner, validated on load.

Precedence: defaults < TOML file < environment (``VOICE_APPLIANCE_SECTION_KEY``)
< command line (``--set section.key=value``). Every invalid value raises a
:class:`~device.core.errors.ConfigError` that names the key and the fix; the CLI
turns it into exit code 78 so systemd does not restart-loop.

Each field documents its unit in its name (``_s``, ``_ms``, ``_hz``) and its
meaning in ``metadata["help"]``; ``metadata`` may also carry ``min``/``max``.
Allowed string values are expressed with ``Literal`` types.

Pure: :func:`parse_config` turns what a TOML file held, the environment and the
``--set`` overrides into a :class:`Config`. Reading the file is
:mod:`device.drivers.configfile`'s; settings that need a library or a file (the
wake-word model, the dsp library) and the LED plan are checked after parsing by
the module that owns them (:mod:`device.app.settings` runs those checks).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import ipaddress
import math
import re
import tomllib
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

from device.core.errors import ConfigError, DeviceError

DEFAULT_CONFIG_PATH = Path("/etc/voice-appliance/config.toml")
ENV_PREFIX = "VOICE_APPLIANCE_"
MAX_NESTING = 32  # levels of tables and arrays in a free-form value (custom_llm_extra_body)

Region = Literal["global", "us", "eu", "in", "sg"]
ConnectionMode = Literal["public", "signed_url", "broker"]
GateMode = Literal["push_to_talk", "toggle", "voice", "always_open", "wake_word"]
BargeIn = Literal["none", "button", "voice", "wake_word"]
EchoCancellation = Literal["auto", "on", "off"]
AfterWake = Literal["voice", "always_open"]
WakeEngine = Literal["microwakeword", "openwakeword"]
WakeVerify = Literal["openwakeword", "off"]
StereoMode = Literal["mix", "left", "right"]
LedKind = Literal["led", "pwmled", "rgbled", "apa102"]
LedPreset = Literal["rgb", "three", "none", "custom"]
Scalar = str | int | float | bool


def _f(default: Any, help: str, **meta: Any) -> Any:
    """A dataclass field with documentation and optional bounds."""
    if isinstance(default, (dict, list)):
        raise TypeError("use an immutable default")
    return field(default=default, metadata={"help": help, **meta})


def _empty_map() -> Mapping[str, Any]:
    return types.MappingProxyType({})


@dataclass(frozen=True)
class AgentConfig:
    """Which agent to talk to and how to reach it."""

    agent_id: str = _f("", "ElevenLabs agent id (required), e.g. agent_01abc…")
    connection: ConnectionMode = _f(
        "signed_url",
        "public: agent id only; signed_url: fetch a signed URL with the API key; "
        "broker: ask broker_url for a signed URL so no API key lives on the device",
    )
    region: Region = _f("global", "service region: global, us, eu, in, sg")
    base_url: str = _f(
        "", "explicit REST base URL instead of the region (e.g. http://127.0.0.1:8765 for the emulator)"
    )
    broker_url: str = _f(
        "",
        "HTTPS endpoint returning {\"signed_url\": …} (connection = broker); the device sends its broker "
        "token (the credential, in place of an API key) as Authorization: Bearer, and agent_id",
    )
    api_key_file: str = _f(
        "", "root-only file holding the API key (when no systemd credential is given)"
    )
    ca_bundle: str = _f("", "CA bundle file for TLS verification (empty: system store)")
    prefetch_signed_url: bool = _f(True, "keep one fresh signed URL ready so a press connects at once")
    prompt: str = _f("", "override of the agent's system prompt (empty: agent default)")
    first_message: str = _f("", "override of the agent's first message (empty: agent default)")
    language: str = _f("", "override of the agent's language, e.g. en (empty: agent default)")
    voice_id: str = _f("", "override of the TTS voice (empty: agent default)")
    user_id: str = _f("", "user_id sent with each conversation (empty: none)")
    kiosk_id: str = _f("", "this kiosk's id, sent as dynamic variable kiosk_id (empty: hostname)")
    location: str = _f("", "this kiosk's location, sent as dynamic variable location")
    dynamic_variables: Mapping[str, Scalar] = field(
        default_factory=_empty_map,
        metadata={"help": "extra dynamic variables (string, number or boolean values)"},
    )
    custom_llm_extra_body: Mapping[str, Any] = field(
        default_factory=_empty_map,
        metadata={"help": "custom_llm_extra_body passed to a custom LLM"},
    )
    http_timeout_s: float = _f(10.0, "timeout of each REST request", min=0.5, max=120)
    connect_timeout_s: float = _f(
        10.0,
        "timeout for opening the conversation socket, for the agent's first answer, and for a stalled send",
        min=0.5,
        max=120,
    )

    def __post_init__(self) -> None:
        if self.connection == "broker" and not self.broker_url:
            raise ConfigError(
                "connection = \"broker\" needs a broker URL; set agent.broker_url", "agent.broker_url"
            )
        for key in ("base_url", "broker_url"):
            value = getattr(self, key)
            if value and not re.match(r"^(https?|wss?)://[^/\s]+", value):
                raise ConfigError(
                    f"{value!r} is not an http(s):// URL; write e.g. https://example.com",
                    f"agent.{key}",
                )


@dataclass(frozen=True)
class AudioConfig:
    """ALSA devices, buffering and volume."""

    capture_device: str = _f("default", "ALSA PCM name of the microphone, e.g. plughw:CARD=seeed2micvoicec,DEV=0")
    playback_device: str = _f("default", "ALSA PCM name of the speaker")
    capture_channels: int = _f(1, "channels the microphone delivers (2 for stereo-only HATs)", min=1, max=2)
    stereo_mode: StereoMode = _f("mix", "with 2 channels: mix, left or right")
    ring_s: float = _f(180.0, "seconds of agent audio the playback ring holds", min=5, max=1800)
    prebuffer_ms: int = _f(125, "agent audio buffered before a reply starts playing", min=0, max=2000)
    mixer_control: str = _f("", "ALSA mixer control for volume, e.g. PCM (empty: software gain)")
    mixer_card: str = _f("default", "ALSA mixer device holding mixer_control")
    volume_percent: int = _f(80, "initial output volume", min=0, max=100)
    earcons: bool = _f(True, "play short cues for listening, done and error")
    earcon_listening: str = _f("", "WAV file for the listening cue (empty: bundled)")
    earcon_done: str = _f("", "WAV file for the done cue (empty: bundled)")
    earcon_error: str = _f("", "WAV file for the error cue (empty: bundled)")
    pace_realtime: bool = _f(False, "pace clockless devices (ALSA type file) to real time")
    reopen_max_s: float = _f(10.0, "longest wait between attempts to reopen a missing device", min=0.1, max=300)
    noise_suppression: int = _f(
        0, "webrtc noise suppression on the microphone, 0 (off) to 4 (strongest); needs the dsp extra", min=0, max=4
    )
    auto_gain_dbfs: int = _f(
        0, "webrtc automatic gain: target level in -dBFS, 1 to 31 (0: off); needs the dsp extra", min=0, max=31
    )
    echo_cancellation: EchoCancellation = _f(
        "auto",
        "take the speaker's sound out of the microphone (WebRTC AEC3; needs the aec extra): auto (on when "
        "installed and gate.barge_in = voice), on (refuse to start without it), off",
    )


@dataclass(frozen=True)
class GateConfig:
    """What the agent hears: the gate between microphone and socket."""

    mode: GateMode = _f(
        "push_to_talk",
        "push_to_talk, toggle, voice, always_open, or wake_word (a wake word starts a conversation; see [wake])",
    )
    vad_aggressiveness: int = _f(2, "webrtcvad aggressiveness, 0 (least) to 3 (most)", min=0, max=3)
    preroll_ms: int = _f(500, "audio kept from before speech starts (voice mode)", min=0, max=2000)
    hangover_ms: int = _f(750, "audio still sent after speech stops (voice mode)", min=0, max=5000)
    speech_margin_db: float = _f(
        9.0, "voice gate: a frame is speech only this far above the room's level between words (a low "
        "percentile of the last 4 s): in babble, which webrtcvad calls speech, the gate still closes; 0: off",
        min=0, max=40,
    )
    barge_in: BargeIn = _f(
        "button",
        "how the user may interrupt the agent: none, button, voice (talking over it; with the kiosk's echo "
        "cancellation the device judges it -- experimental, see docs/duplex.md), or wake_word (saying the "
        "wake word cuts the agent off; gate.mode = wake_word)",
    )
    voice_barge_in_ms: int = _f(
        0, "barge_in = voice with the kiosk's echo cancellation: 0 lets the agent service judge (it hears the "
        "cancelled microphone); more makes the device judge: this much of the user's voice over the agent's "
        "within a second cuts the agent off (experimental: docs/duplex.md)", min=0, max=1000,
    )
    echo_tail_ms: int = _f(300, "microphone stays closed this long after agent audio ends", min=0, max=3000)
    start_on_speech: bool = _f(False, "start a conversation when speech is heard while idle")
    after_wake: AfterWake = _f(
        "voice",
        "wake_word mode: how the gate works during the conversation the wake word started: voice or always_open",
    )

    def __post_init__(self) -> None:
        if self.barge_in == "wake_word" and self.mode != "wake_word":
            raise ConfigError(
                "barge_in = \"wake_word\" needs the wake-word detector; set gate.mode = \"wake_word\" "
                "or choose another barge_in",
                "gate.barge_in",
            )


@dataclass(frozen=True)
class WakeConfig:
    """The wake-word detector (gate.mode = "wake_word"); needs the wake extra."""

    engine: WakeEngine = _f("microwakeword", "microwakeword (small, default) or openwakeword")
    model: str = _f(
        "hey_jarvis",
        "a bundled model (okay_nabu, hey_jarvis, alexa, hey_mycroft; openwakeword also hey_rhasspy) or the "
        "path to your own: microwakeword the model's .json (next to its .tflite), openwakeword the .tflite",
    )
    threshold: float = _f(
        0.0, "score (0..1) that counts as the wake word; 0: the shipped default, measured for a public kiosk "
        "(docs/hands-free.md; otherwise the model's own cutoff, openwakeword 0.5)",
        min=0, max=1,
    )
    refractory_s: float = _f(2.0, "after a detection, ignore the wake word this long", min=0, max=60)
    verify: WakeVerify = _f(
        "openwakeword",
        "confirm each microwakeword detection with openwakeword's model of the same word on the last 2 s of "
        "audio (CPU only when the word is heard; cuts false wakes from words that sound alike), or off",
    )
    verify_threshold: float = _f(
        0.0, "openwakeword score (0..1) that confirms a detection; 0: the shipped default (docs/hands-free.md)",
        min=0, max=1,
    )


@dataclass(frozen=True)
class ButtonConfig:
    """The push button and the optional mute switch (BCM pin numbers)."""

    pin: int | None = _f(17, "BCM pin of the button (omit or set -1 to disable)", min=-1, max=53)
    pull_up: bool = _f(True, "button connects the pin to ground (internal pull-up); false: to 3.3 V (pull-down)")
    external_pull: bool = _f(
        False, "the board has its own pull resistor: no internal pull; pull_up still says which level is pressed"
    )
    bounce_ms: int = _f(20, "debounce time", min=0, max=1000)
    long_press_s: float = _f(
        2.0, "holding this long ends the conversation (not in push_to_talk mode, where holding is talking)",
        min=0.3, max=30,
    )
    mute_pin: int | None = _f(None, "BCM pin of a mute switch, closed = muted (omit to disable)", min=-1, max=53)


@dataclass(frozen=True)
class LedOutput:
    """One LED output: a plain LED, a PWM LED, or an RGB LED (3 pins)."""

    name: str = _f("status", "name used in leds.patterns")
    kind: LedKind = _f("rgbled", "led, pwmled, rgbled, or apa102 (an SPI chain of RGB LEDs, e.g. ReSpeaker HATs)")
    pins: tuple[int, ...] = _f((5, 6, 13), "BCM pins (three for rgbled: red, green, blue; unused by apa102)")
    active_high: bool = _f(True, "LED lights when the pin is high")
    # -- apa102 (field kit) ------------------------------------------------------------
    count: int = _f(3, "apa102: LEDs in the chain (ReSpeaker 2-Mic HAT 3, 4-Mic HAT 12)", min=1, max=1024)
    spi_bus: int = _f(0, "apa102: SPI bus (/dev/spidevBUS.DEVICE)", min=0, max=6)
    spi_device: int = _f(1, "apa102: SPI chip select (ReSpeaker HATs: 1)", min=0, max=3)
    brightness_percent: int = _f(25, "apa102: global brightness (5 bits; 100 is dazzling)", min=1, max=100)

    def __post_init__(self) -> None:
        if self.kind == "apa102":
            return  # an SPI device, no GPIO pins
        want = 3 if self.kind == "rgbled" else 1
        if len(self.pins) != want:
            raise ConfigError(
                f"a {self.kind} takes {want} pin(s), got {len(self.pins)}; list {want} BCM pin number(s)",
                "leds.output.pins",
            )


@dataclass(frozen=True)
class LedsConfig:
    """Status LEDs: outputs and a pattern per state (see docs/hardware.md for the table)."""

    preset: LedPreset = _f("rgb", "rgb (one RGB LED), three (three LEDs), none, or custom")
    output: tuple[LedOutput, ...] = _f((), "LED outputs ([[leds.output]] tables; preset custom)")
    patterns: Mapping[str, Mapping[str, str]] = field(
        default_factory=_empty_map,
        metadata={"help": "per state, per output: off, on, blink PERIOD_S, pulse PERIOD_S, with an optional #rrggbb"},
    )
    # The outputs and patterns are checked together by device.core.ledpatterns.resolve, after parsing.


@dataclass(frozen=True)
class SessionConfig:
    """Conversation lifecycle and its timeouts."""

    idle_timeout_s: float = _f(
        20.0, "end the conversation when nobody speaks this long after the agent", min=1, max=3600
    )
    max_duration_s: float = _f(600.0, "longest conversation", min=10, max=86400)
    connecting_timeout_s: float = _f(20.0, "give up connecting after this long", min=1, max=300)
    thinking_timeout_s: float = _f(30.0, "longest wait for the agent to answer", min=1, max=600)
    retry_initial_s: float = _f(1.0, "first automatic retry delay", min=0.1, max=600)
    retry_max_s: float = _f(60.0, "longest automatic retry delay", min=0.1, max=3600)
    send_backlog_s: float = _f(10.0, "audio held for the socket before the oldest is dropped", min=1, max=120)
    error_hold_s: float = _f(5.0, "the error state shows this long before idle", min=0, max=600)
    retry_attempts: int = _f(
        3, "automatic reconnects after a failed connection attempt (0: only the next press retries)", min=0, max=20
    )
    speaking_timeout_s: float = _f(
        180.0, "longest single reply; afterwards the device stops it and listens again", min=5, max=3600
    )


@dataclass(frozen=True)
class ToolSpec:
    """A client tool the agent may call: a Python callable or a fixed argv command."""

    name: str = _f("", "tool name as configured in the agent")
    callable: str = _f("", "module:function called with the parameters as keyword arguments")
    command: tuple[str, ...] = _f((), "argv run without a shell; parameters arrive as JSON on stdin")
    timeout_s: float = _f(0.0, "the call fails after this long (0: tools.timeout_s)", min=0, max=600)

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("every [[tools.tool]] needs a name", "tools.tool.name")
        if bool(self.callable) == bool(self.command):
            raise ConfigError(
                f"tool {self.name!r} needs exactly one of callable = \"module:function\" or command = [argv…]",
                "tools.tool",
            )
        if self.callable and not re.match(r"^[\w.]+:[\w]+$", self.callable):
            raise ConfigError(
                f"{self.callable!r} is not module:function, e.g. mypkg.tools:lookup", "tools.tool.callable"
            )


@dataclass(frozen=True)
class ToolsConfig:
    """Client tools: built-in device tools and configured ones."""

    builtin: tuple[str, ...] = _f(
        ("set_volume", "device_status", "end_conversation"), "built-in device tools the agent may call"
    )
    timeout_s: float = _f(10.0, "default timeout of a tool call", min=0.1, max=600)
    max_concurrent_calls: int = _f(
        4, "tool calls running at once (each a thread, most a process); more are answered with an error at once",
        min=1, max=64,
    )
    tool: tuple[ToolSpec, ...] = _f((), "configured tools ([[tools.tool]] tables)")
    mcp_approve: tuple[str, ...] = _f(
        (),
        "MCP tools (names) approved at once when the agent asks for approval; every other MCP tool "
        "call awaiting approval is denied at once (with a log line)",
    )

    def __post_init__(self) -> None:
        known = {"set_volume", "device_status", "end_conversation"}
        for name in self.builtin:
            if name not in known:
                raise ConfigError(
                    f"unknown built-in tool {name!r}; choose from {', '.join(sorted(known))}",
                    "tools.builtin",
                )


@dataclass(frozen=True)
class SystemdConfig:
    """Service integration: watchdog, status, control socket."""

    watchdog: bool = _f(True, "send WATCHDOG=1 while every worker is healthy (when the unit sets WatchdogSec)")
    status_file: str = _f("/run/voice-appliance/status.json", "state and counters as JSON (empty: off)")
    prometheus_textfile: str = _f("", "node-exporter textfile to write metrics to (empty: off)")
    control_socket: str = _f("/run/voice-appliance/control.sock", "local control socket (empty: off)")
    control_group: str = _f("voice-appliance", "group allowed to use the control socket")
    worker_stall_s: float = _f(
        20.0,
        "a worker silent this long counts as stuck: watchdog pings stop so systemd restarts the service "
        "(at least 1.25 × audio.reopen_max_s + 2 s is used; keep it below the unit's WatchdogSec)",
        min=0.1, max=600,
    )


@dataclass(frozen=True)
class ScreenConfig:
    """The kiosk's screen: a local web page with the state and live captions (docs/screen.md)."""

    enabled: bool = _f(
        False, "serve the screen page and its live captions at http://bind:port/ (docs/screen.md)"
    )
    bind: str = _f(
        "127.0.0.1",
        "address the screen server listens on; anything but 127.0.0.1 / ::1 / localhost needs token_file "
        "(and is logged as a warning: the captions are the visitors' words)",
    )
    port: int = _f(8790, "TCP port of the screen server", min=1, max=65535)
    token_file: str = _f(
        "",
        "root-only file holding the token a remote browser must present (?token=… or Authorization: Bearer); "
        "required when bind is not loopback (a systemd credential voice_appliance_screen_token wins)",
    )
    talk_button: bool = _f(False, "show an on-screen talk button (touch screens): start, press, release, end")
    keep_history: bool = _f(
        False, "keep the conversation's captions on screen after it ends (off: cleared when it ends, for privacy)"
    )
    max_clients: int = _f(4, "browsers connected at once; more are refused", min=1, max=64)

    def __post_init__(self) -> None:
        if not self.bind.strip() or any(c.isspace() for c in self.bind):
            raise ConfigError(f"{self.bind!r} is not an address; write e.g. 127.0.0.1", "screen.bind")
        if self.enabled and not self.loopback and not self.token_file:
            raise ConfigError(
                f"screen.bind = {self.bind!r} lets other machines read the captions; set screen.token_file "
                "to a root-only file holding a token (or bind 127.0.0.1)",
                "screen.token_file",
            )

    @property
    def loopback(self) -> bool:
        """Only this machine can connect (127.0.0.0/8, ::1, localhost)."""
        if self.bind == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.bind.strip("[]")).is_loopback
        except ValueError:  # a host name: it may resolve to anything
            return False


MQTT_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _check_topic_prefix(value: str, key: str) -> None:
    """An MQTT topic prefix the kiosk can publish under: levels of plain characters, no wildcards."""
    if not value or value.startswith("/") or value.endswith("/") or "//" in value:
        raise ConfigError(
            f"{value!r} is not a topic prefix; write levels without empty ones, e.g. voice-appliance", key
        )
    if any(c in value for c in "+#\x00") or any(c.isspace() for c in value) or len(value) > 128:
        raise ConfigError(
            f"{value!r} cannot be a topic prefix (no +, #, blanks or NUL; at most 128 characters)", key
        )


@dataclass(frozen=True)
class MqttConfig:
    """The fleet channel: MQTT with Home Assistant discovery (docs/fleet.md). Off by default."""

    enabled: bool = _f(False, "connect to the MQTT broker, publish state and accept commands")
    host: str = _f("", "broker host name or address (required when enabled)")
    port: int = _f(0, "broker TCP port (0: 8883 with TLS, 1883 without)", min=0, max=65535)
    tls: Literal["auto", "on", "off"] = _f(
        "auto", "TLS to the broker: auto (on when ca_file or a client certificate is given), on, off"
    )
    ca_file: str = _f("", "CA certificate(s) that sign the broker's certificate (PEM); empty: the system's CAs")
    client_cert_file: str = _f("", "client certificate (PEM) when the broker asks for one")
    client_key_file: str = _f("", "the client certificate's key (root-only file)")
    username: str = _f("", "user name on the broker (empty: anonymous)")
    password_file: str = _f(
        "",
        "root-only file holding the broker password (a systemd credential voice_appliance_mqtt_password wins); "
        "never put the password in this file",
    )
    device_id: str = _f(
        "", "this kiosk's id in topics and unique ids (letters, digits, _ and -; empty: derived from the machine id)"
    )
    device_name: str = _f("", "the device's name in Home Assistant (empty: Voice kiosk DEVICE_ID)")
    topic_prefix: str = _f("voice-appliance", "topics are TOPIC_PREFIX/DEVICE_ID/…")
    discovery: bool = _f(True, "publish Home Assistant discovery configs")
    discovery_prefix: str = _f("homeassistant", "Home Assistant's discovery prefix")
    publish_transcripts: bool = _f(
        False,
        "publish what visitors say and the agent's replies (off: a kiosk in a public place must not broadcast them)",
    )
    keepalive_s: int = _f(15, "MQTT keep-alive; the broker declares the kiosk offline after 1.5 × this", min=5, max=600)
    connect_timeout_s: float = _f(4.0, "TCP connect, TLS handshake and CONNACK wait", min=0.5, max=30)
    retry_initial_s: float = _f(1.0, "first reconnect delay (doubles, jittered)", min=0.1, max=60)
    retry_max_s: float = _f(60.0, "longest reconnect delay (also after a refused password)", min=1, max=3600)
    state_interval_s: float = _f(30.0, "republish the counters at least this often", min=1, max=3600)
    min_publish_interval_s: float = _f(
        0.1, "state publishes closer together than this are merged (the latest wins)", min=0, max=60
    )
    commands_per_minute: int = _f(120, "commands accepted per minute; more are dropped (logged once)", min=1, max=6000)
    queue_size: int = _f(256, "outgoing messages held while the broker is slow or away (oldest state dropped first)",
                         min=16, max=100000)

    def __post_init__(self) -> None:
        if self.enabled and not self.host.strip():
            raise ConfigError(
                "mqtt.enabled = true needs the broker: set host, e.g. host = \"broker.local\"", "mqtt.host"
            )
        if any(c.isspace() for c in self.host):
            raise ConfigError(f"{self.host!r} is not a host name; write e.g. broker.local", "mqtt.host")
        if self.device_id and not MQTT_NAME_RE.match(self.device_id):
            raise ConfigError(
                f"{self.device_id!r} cannot be a device id; use 1 to 64 letters, digits, _ or -", "mqtt.device_id"
            )
        _check_topic_prefix(self.topic_prefix, "mqtt.topic_prefix")
        _check_topic_prefix(self.discovery_prefix, "mqtt.discovery_prefix")
        if bool(self.client_cert_file) != bool(self.client_key_file):
            raise ConfigError(
                "a client certificate needs both client_cert_file and client_key_file", "mqtt.client_key_file"
            )
        if self.tls == "off" and (self.ca_file or self.client_cert_file):
            raise ConfigError(
                "tls = \"off\" with ca_file or a client certificate: remove them or turn tls on", "mqtt.tls"
            )
        if self.password_file and not self.username:
            raise ConfigError("a password without a user name: set mqtt.username", "mqtt.username")

    @property
    def use_tls(self) -> bool:
        return bool(self.ca_file or self.client_cert_file) if self.tls == "auto" else self.tls == "on"

    @property
    def broker_port(self) -> int:
        return self.port or (8883 if self.use_tls else 1883)


@dataclass(frozen=True)
class Config:
    """The whole configuration."""

    agent: AgentConfig = field(default_factory=AgentConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    wake: WakeConfig = field(default_factory=WakeConfig)
    button: ButtonConfig = field(default_factory=ButtonConfig)
    leds: LedsConfig = field(default_factory=LedsConfig)
    session: SessionConfig = field(default_factory=SessionConfig)
    tools: ToolsConfig = field(default_factory=ToolsConfig)
    systemd: SystemdConfig = field(default_factory=SystemdConfig)
    screen: ScreenConfig = field(default_factory=ScreenConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)

    def require_agent(self) -> Config:
        """Check what the daemon needs beyond well-formed values."""
        if not self.agent.agent_id:
            raise ConfigError(
                "no agent id; set agent_id in the [agent] section (find it in the "
                "ElevenLabs dashboard under Agents)",
                "agent.agent_id",
            )
        return self


SECTIONS: dict[str, type] = typing.get_type_hints(Config)


# -- conversion and validation ------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is str:
        return "a string"
    if tp is bool:
        return "true or false"
    if tp is int:
        return "a whole number"
    if tp is float:
        return "a number"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0])}s"
    if origin in (Mapping, dict):
        return "a table"
    if dataclasses.is_dataclass(tp):
        return "a table"
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    return str(tp)


def _convert(value: Any, tp: Any, key: str, meta: Mapping[str, Any]) -> Any:
    origin = typing.get_origin(tp)
    if tp == Scalar:
        if isinstance(value, (str, int, float, bool)):
            return _freeze(value, key)
    elif origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and (value is None or value == -1):
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(value, inner, key, meta)
    if tp is Any:
        return _freeze(value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            _check_range(value, key, meta)
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            _check_range(float(value), key, meta)
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"{value!r} is not allowed{hint}; use one of {', '.join(repr(c) for c in choices)}", key
        )
    elif origin is tuple:
        if isinstance(value, (list, tuple)):
            (inner,) = typing.get_args(tp)[:1]
            return tuple(_convert(v, inner, f"{key}[{i}]", {}) for i, v in enumerate(value))
    elif origin in (Mapping, dict):
        if isinstance(value, Mapping):
            _kt, vt = typing.get_args(tp)
            return types.MappingProxyType(
                {str(k): _convert(v, vt, f"{key}.{k}", {}) for k, v in value.items()}
            )
    elif dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
        return build_section(typing.cast(type, tp), value, key)
    raise ConfigError(
        f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}; write it as {_type_name(tp)}",
        key,
    )


def _freeze(value: Any, key: str, depth: int = 0) -> Any:
    if isinstance(value, (Mapping, list)) and depth >= MAX_NESTING:
        # Dotted table headers nest without limit in TOML; deeper than this is a mistake, not a payload.
        raise ConfigError(f"nests tables or arrays more than {MAX_NESTING} levels deep; flatten it", key)
    if isinstance(value, Mapping):
        return types.MappingProxyType({str(k): _freeze(v, f"{key}.{k}", depth + 1) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v, f"{key}[{i}]", depth + 1) for i, v in enumerate(value))
    if isinstance(value, float) and not math.isfinite(value):  # JSON to the agent has no nan or inf
        raise ConfigError(f"{value} cannot be sent to the agent (JSON has no nan or inf); write a number", key)
    return value


def _check_range(value: float, key: str, meta: Mapping[str, Any]) -> None:
    lo, hi = meta.get("min"), meta.get("max")
    # nan compares false with every bound and inf passes an open one: both would slip through as
    # "never time out" (idle_timeout_s = nan listens forever). Only a key that documents them may
    # take them (metadata nonfinite=True; none does today).
    if not math.isfinite(value) and not meta.get("nonfinite"):
        span = f"from {lo} to {hi}" if lo is not None and hi is not None else "that is a finite number"
        raise ConfigError(f"{value} is not a number this setting can use; choose a value {span}", key)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(f"{value} is out of range; choose a value from {lo} to {hi}", key)


def build_section(cls: type, values: Mapping[str, Any], prefix: str) -> Any:
    """Build one frozen dataclass from a mapping, rejecting unknown keys."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in fields:
            close = difflib.get_close_matches(name, list(fields), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                f"unknown key; {hint}valid keys here: {', '.join(fields)}", key
            )
        kwargs[name] = _convert(value, hints[name], key, fields[name].metadata)
    return cls(**kwargs)


def _parse_text(text: str, tp: Any, key: str) -> Any:
    """Parse an environment or command-line string into a TOML-like value."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if text.strip().lower() in ("", "none"):
            return None
        tp, origin = inner[0], typing.get_origin(inner[0])
    if tp is str or origin is Literal:
        return text
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        if tp in (int, float, bool):
            raise ConfigError(
                f"{text!r} is not {_type_name(tp)}; write it as {_type_name(tp)}", key
            ) from None
        return text


def _apply_override(data: dict[str, Any], dotted: str, text: str, source: str) -> None:
    section, _, name = dotted.partition(".")
    if section not in SECTIONS or not name:
        close = difflib.get_close_matches(section, list(SECTIONS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"{source}: unknown section{hint}; write section.key with a section from "
            f"{', '.join(SECTIONS)}",
            dotted,
        )
    hints = typing.get_type_hints(SECTIONS[section])
    if name not in hints:
        close = difflib.get_close_matches(name, list(hints), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"{source}: unknown key; {hint}valid keys: {', '.join(hints)}", dotted)
    data.setdefault(section, {})[name] = _parse_text(text, hints[name], dotted)


def env_overrides(environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """``VOICE_APPLIANCE_AGENT_AGENT_ID=x`` → ``("agent.agent_id", "x")``."""
    out = []
    for var, text in environ.items():
        if not var.startswith(ENV_PREFIX) or var in _NON_CONFIG_ENV or var.startswith(_TEST_ENV_PREFIX):
            continue
        rest = var[len(ENV_PREFIX):].lower()
        for section in SECTIONS:
            if rest.startswith(section + "_"):
                out.append((f"{section}.{rest[len(section) + 1:]}", text))
                break
        else:
            raise ConfigError(
                f"environment variable {var} names no config section; use "
                f"{ENV_PREFIX}SECTION_KEY with a section from {', '.join(SECTIONS)}"
            )
    return out


# Environment variables with the prefix that are not configuration keys.
_NON_CONFIG_ENV = {"VOICE_APPLIANCE_CONFIG", "VOICE_APPLIANCE_LOG_LEVEL", "VOICE_APPLIANCE_EMULATOR_API_KEY"}
# Reserved for the test suite's own settings (e.g. VOICE_APPLIANCE_TEST_CACHE).
_TEST_ENV_PREFIX = "VOICE_APPLIANCE_TEST_"


@contextlib.contextmanager
def failures_as_config_errors(path: Path | None) -> Iterator[None]:
    """Turn any failure inside into a :class:`~device.core.errors.ConfigError` (a DeviceError passes as it is).

    A value no check foresaw must not end the process as an internal error, at start
    (exit 70, restarted in a loop) or on reload. ``path`` names the file in the message.
    """
    try:
        yield
    except (DeviceError, MemoryError):
        raise
    except Exception as e:
        where = f"the configuration ({path} with the environment and --set)" if path else "the configuration"
        raise ConfigError(
            f"{where} could not be loaded ({type(e).__name__}: {e}); fix the value it names, then check "
            "it with: voice-appliance run --check"
        ) from e


def parse_config(
    data: Mapping[str, Any],
    environ: Mapping[str, str],
    overrides: Sequence[str] = (),
    path: Path | None = None,
) -> Config:
    """Defaults < ``data`` (a TOML file's tables) < ``environ`` < ``section.key=value`` overrides.

    ``path`` is the file ``data`` came from, for the messages. Every failure is a
    :class:`~device.core.errors.DeviceError` (see :func:`failures_as_config_errors`).
    """
    with failures_as_config_errors(path):
        # A copy, tables included: the overrides are merged into it.
        tables = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
        return _parse_config(tables, environ, overrides, path)


def _parse_config(
    data: dict[str, Any], environ: Mapping[str, str], overrides: Sequence[str], path: Path | None
) -> Config:
    for section, value in data.items():
        if section not in SECTIONS:
            close = difflib.get_close_matches(section, list(SECTIONS), n=1)
            hint = f"did you mean [{close[0]}]? " if close else ""
            raise ConfigError(
                f"unknown section in {path}; {hint}valid sections: {', '.join(SECTIONS)}", section
            )
        if not isinstance(value, dict):
            raise ConfigError(f"expected a [{section}] table in {path}, got a plain value", section)
    for dotted, text in env_overrides(environ):
        _apply_override(data, dotted, text, "environment")
    for item in overrides:
        dotted, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: write --set section.key=value")
        _apply_override(data, dotted.strip(), text.strip(), "--set")
    sections = {name: build_section(cls, data.get(name, {}), name) for name, cls in SECTIONS.items()}
    return Config(**sections)


def config_to_dict(cfg: Any) -> Any:
    """Plain data for printing (secrets are never part of the config)."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, Mapping):
        return {k: config_to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, tuple):
        return [config_to_dict(v) for v in cfg]
    return cfg
