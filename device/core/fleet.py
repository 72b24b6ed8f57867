"""The fleet channel's logic (pure): topics, Home Assistant discovery, state values, commands, limits.

:mod:`device.drivers.mqtt` owns the broker connection and calls into this module; nothing
here touches a socket, a thread or a clock (times are passed in). docs/fleet.md describes
the topics a fleet sees::

    PREFIX/ID/availability      online / offline (retained; offline is the last will)
    PREFIX/ID/state             JSON: state, muted, volume, last_error, counters… (retained)
    PREFIX/ID/event             JSON {"event_type": press | release | long_press | wake_word}
    PREFIX/ID/transcript        JSON {"role", "text"} (only with mqtt.publish_transcripts)
    PREFIX/ID/cmd/NAME          commands: start, end, press, release, mute, volume, context, message, reload
    DISCOVERY/COMPONENT/ID/OBJECT/config    Home Assistant discovery (retained)
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ONLINE = "online"
OFFLINE = "offline"
ORIGIN_URL = "https://github.com/voice-appliance/voice-appliance"
MAX_TEXT_BYTES = 4000  # a context or message command (the control socket's line is 4096 bytes)
MAX_TRANSCRIPT_CHARS = 1000
EVENT_TYPES = ("press", "release", "long_press", "wake_word")
STATES = ("starting", "idle", "connecting", "listening", "thinking", "speaking", "error", "muted", "stopped")

# Command name → what its payload must be ("" = anything: a Home Assistant button sends "PRESS").
COMMANDS: Mapping[str, str] = {
    "start": "",
    "end": "",
    "press": "",
    "release": "",
    "reload": "",
    "mute": "ON or OFF",
    "volume": "a whole number from 0 to 100",
    "context": f"text of 1 to {MAX_TEXT_BYTES} bytes",
    "message": f"text of 1 to {MAX_TEXT_BYTES} bytes",
}


@dataclass(frozen=True)
class Topics:
    """Every topic of one kiosk."""

    topic_prefix: str
    discovery_prefix: str
    device_id: str

    @property
    def base(self) -> str:
        return f"{self.topic_prefix}/{self.device_id}"

    @property
    def availability(self) -> str:
        return f"{self.base}/availability"

    @property
    def state(self) -> str:
        return f"{self.base}/state"

    @property
    def event(self) -> str:
        return f"{self.base}/event"

    @property
    def transcript(self) -> str:
        return f"{self.base}/transcript"

    def command(self, name: str) -> str:
        return f"{self.base}/cmd/{name}"

    @property
    def commands(self) -> str:
        """The subscription that takes every command (and only this kiosk's)."""
        return f"{self.base}/cmd/+"

    @property
    def ha_status(self) -> str:
        return f"{self.discovery_prefix}/status"

    def config(self, component: str, object_id: str) -> str:
        return f"{self.discovery_prefix}/{component}/{self.device_id}/{object_id}/config"

    def command_name(self, topic: str) -> str | None:
        """The command a topic names; None when it is no command topic of this kiosk."""
        head = f"{self.base}/cmd/"
        if not topic.startswith(head):
            return None
        name = topic[len(head):]
        return name if name in COMMANDS else None


@dataclass(frozen=True)
class Message:
    """One publish: ``kind`` says how the outbound queue treats it ("state": only the latest counts)."""

    topic: str
    payload: str
    retain: bool = False
    qos: int = 1
    kind: str = "event"


# -- Home Assistant discovery ------------------------------------------------------------------------

@dataclass(frozen=True)
class Entity:
    """One Home Assistant entity of the kiosk."""

    component: str
    object_id: str
    name: str
    extra: Mapping[str, Any] = field(default_factory=dict)


def entities(publish_transcripts: bool) -> tuple[Entity, ...]:
    """The kiosk's entities (``~`` in a topic is the kiosk's base topic, Home Assistant's abbreviation)."""

    def sensor(object_id: str, name: str, template: str, **extra: Any) -> Entity:
        return Entity("sensor", object_id, name, {"stat_t": "~/state", "val_tpl": template, **extra})

    def button(object_id: str, name: str, command: str, icon: str) -> Entity:
        return Entity("button", object_id, name, {"cmd_t": f"~/cmd/{command}", "icon": icon})

    diagnostic = {"ent_cat": "diagnostic"}
    out = [
        sensor("state", "State", "{{ value_json.state }}", dev_cla="enum", ops=list(STATES), icon="mdi:account-voice"),
        sensor("last_error", "Last error", "{{ value_json.last_error }}", icon="mdi:alert-circle-outline",
               **diagnostic),
        sensor("conversations", "Conversations", "{{ value_json.conversations }}", stat_cla="total_increasing",
               icon="mdi:forum"),
        sensor("audio_dropped", "Audio dropped", "{{ value_json.audio_dropped_s }}", unit_of_meas="s",
               dev_cla="duration", stat_cla="total_increasing", **diagnostic),
        sensor("reconnects", "Broker reconnects", "{{ value_json.reconnects }}", stat_cla="total_increasing",
               **diagnostic),
        sensor("wake_detections", "Wake words", "{{ value_json.wake_detections }}", stat_cla="total_increasing"),
        sensor("false_wakes", "False wakes", "{{ value_json.false_wakes }}", stat_cla="total_increasing",
               **diagnostic),
        sensor("mic_level", "Microphone level", "{{ value_json.mic_level_dbfs }}", unit_of_meas="dBFS",
               stat_cla="measurement", icon="mdi:microphone", **diagnostic),
        sensor("uptime", "Uptime", "{{ value_json.uptime_s }}", unit_of_meas="s", dev_cla="duration",
               **diagnostic),
        sensor("version", "Version", "{{ value_json.version }}", **diagnostic),
        Entity("binary_sensor", "conversation", "In conversation", {
            "stat_t": "~/state", "val_tpl": "{{ 'ON' if value_json.in_conversation else 'OFF' }}",
            "icon": "mdi:account-voice"}),
        Entity("binary_sensor", "problem", "Problem", {
            "stat_t": "~/state", "val_tpl": "{{ 'ON' if value_json.last_error else 'OFF' }}", "dev_cla": "problem"}),
        Entity("number", "volume", "Volume", {
            "stat_t": "~/state", "val_tpl": "{{ value_json.volume }}", "cmd_t": "~/cmd/volume",
            "min": 0, "max": 100, "step": 1, "unit_of_meas": "%", "mode": "slider", "icon": "mdi:volume-high"}),
        Entity("switch", "mute", "Mute", {
            "stat_t": "~/state", "val_tpl": "{{ 'ON' if value_json.muted else 'OFF' }}", "cmd_t": "~/cmd/mute",
            "pl_on": "ON", "pl_off": "OFF", "icon": "mdi:microphone-off"}),
        button("start", "Start conversation", "start", "mdi:play"),
        button("end", "End conversation", "end", "mdi:stop"),
        button("press", "Talk button press", "press", "mdi:gesture-tap-button"),
        button("release", "Talk button release", "release", "mdi:gesture-tap"),
        Entity("button", "reload", "Reload configuration", {
            "cmd_t": "~/cmd/reload", "ent_cat": "config", "icon": "mdi:reload"}),
        Entity("event", "activity", "Button and wake word", {
            "stat_t": "~/event", "evt_typ": list(EVENT_TYPES), "icon": "mdi:gesture-tap"}),
        Entity("text", "context", "Context for the agent", {
            "cmd_t": "~/cmd/context", "max": 255, "mode": "text", "icon": "mdi:text-box-outline"}),
        Entity("text", "message", "Typed message", {
            "cmd_t": "~/cmd/message", "max": 255, "mode": "text", "icon": "mdi:message-text-outline"}),
    ]
    if publish_transcripts:
        out.append(Entity("sensor", "transcript", "Last words", {
            "stat_t": "~/transcript", "val_tpl": "{{ value_json.role }}: {{ value_json.text[:240] }}",
            "icon": "mdi:text"}))
    return tuple(out)


@dataclass(frozen=True)
class Identity:
    """What the discovery says about the device."""

    device_id: str
    name: str
    version: str
    model: str = "voice-appliance kiosk"


def discovery(topics: Topics, ident: Identity, publish_transcripts: bool) -> list[Message]:
    """The retained config of every entity (one device, unique ids from the device id)."""
    device = {
        "ids": [f"voice_appliance_{ident.device_id}"],
        "name": ident.name,
        "mf": "voice-appliance",
        "mdl": ident.model,
        "sw": ident.version,
    }
    origin = {"name": "voice-appliance", "sw": ident.version, "url": ORIGIN_URL}
    out = []
    for e in entities(publish_transcripts):
        payload = {
            "~": topics.base,
            "name": e.name,
            "uniq_id": f"voice_appliance_{ident.device_id}_{e.object_id}",
            "obj_id": f"{ident.device_id}_{e.object_id}",
            "avty_t": "~/availability",
            "pl_avail": ONLINE,
            "pl_not_avail": OFFLINE,
            "dev": device,
            "o": origin,
            **e.extra,
        }
        out.append(Message(topics.config(e.component, e.object_id), _json(payload), retain=True, kind="discovery"))
    return out


def removal(topics: Topics, publish_transcripts: bool = True) -> list[Message]:
    """Empty retained configs: Home Assistant removes the entities (and the device with the last one)."""
    return [
        Message(topics.config(e.component, e.object_id), "", retain=True, kind="discovery")
        for e in entities(publish_transcripts)
    ]


# -- state → published values ---------------------------------------------------------------------------

IN_CONVERSATION = frozenset({"connecting", "listening", "thinking", "speaking"})


def state_values(
    status: Mapping[str, Any],
    *,
    state: str | None,
    volume: int | None,
    mic_level_dbfs: float | None,
    reconnects: int,
    version: str,
) -> dict[str, Any]:
    """The state topic's JSON object from the daemon's status (``state``: the telemetry's, fresher)."""
    counters = status.get("counters", {}) if isinstance(status.get("counters"), Mapping) else {}
    shown = state or str(status.get("state", "unknown"))
    level = None if mic_level_dbfs is None or not math.isfinite(mic_level_dbfs) else round(mic_level_dbfs, 1)
    return {
        "state": shown,
        "in_conversation": shown in IN_CONVERSATION,
        "muted": bool(status.get("muted", False)),
        "volume": volume,
        "last_error": str(status.get("last_error", ""))[:255],
        "conversations": int(counters.get("conversations", 0)),
        "audio_dropped_s": float(counters.get("audio_dropped_s", 0.0)),
        "wake_detections": int(counters.get("wake_detections", 0)),
        "false_wakes": int(counters.get("false_wakes", 0)),
        "reconnects": reconnects,
        "mic_level_dbfs": level,
        "uptime_s": float(counters.get("uptime_s", 0.0)),
        "version": version,
    }


def state_message(topics: Topics, values: Mapping[str, Any]) -> Message:
    return Message(topics.state, _json(values), retain=True, kind="state")


def event_message(topics: Topics, event_type: str) -> Message:
    return Message(topics.event, _json({"event_type": event_type}), qos=0)


def transcript_message(topics: Topics, role: str, text: str) -> Message:
    return Message(topics.transcript, _json({"role": role, "text": text[:MAX_TRANSCRIPT_CHARS]}), qos=0)


def event_type(kind: str, data: Mapping[str, Any]) -> str | None:
    """The event entity's type for a telemetry record; None when it is none."""
    if kind == "wake":
        return "wake_word"
    if kind == "button":
        action = data.get("action")
        return action if action in EVENT_TYPES else None
    return None


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# -- commands ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FleetCommand:
    """A valid command: ``value`` is the bool of mute, the int of volume, the text of context/message."""

    name: str
    value: bool | int | str | None = None


def parse_command(name: str, payload: bytes, retained: bool = False) -> FleetCommand | str:
    """The command, or the reason it is refused (never an exception)."""
    if name not in COMMANDS:
        return f"unknown command {name[:40]!r}; the commands are {', '.join(COMMANDS)}"
    if retained:
        # A retained command would run again at every reconnect.
        return f"{name}: retained commands are ignored; publish it without the retain flag"
    if len(payload) > MAX_TEXT_BYTES:
        return f"{name}: payload of {len(payload)} bytes is over {MAX_TEXT_BYTES}"
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return f"{name}: the payload is not UTF-8 text"
    if name == "mute":
        word = text.strip().upper()
        if word in ("ON", "OFF"):
            return FleetCommand(name, word == "ON")
        return f"mute: payload must be ON or OFF, not {text[:20]!r}"
    if name == "volume":
        try:
            number = float(text.strip())
        except ValueError:
            return f"volume: payload must be {COMMANDS['volume']}, not {text[:20]!r}"
        if not math.isfinite(number) or number != int(number) or not 0 <= number <= 100:
            return f"volume: payload must be {COMMANDS['volume']}, not {text[:20]!r}"
        return FleetCommand(name, int(number))
    if name in ("context", "message"):
        # One line, like the control socket's: line breaks become spaces.
        line = " ".join(text.splitlines()).strip()
        if not line:
            return f"{name}: the payload is empty; send the text"
        if any(not c.isprintable() for c in line):
            return f"{name}: the text holds control characters"
        return FleetCommand(name, line)
    return FleetCommand(name)


class RateLimit:
    """A token bucket: ``per_minute`` commands a minute, bursts of up to ``burst``."""

    def __init__(self, per_minute: int, burst: int | None = None) -> None:
        self._rate_per_s = per_minute / 60.0
        self._burst = float(burst if burst is not None else max(1, min(per_minute, 10)))
        self._tokens = self._burst
        self._t_s: float | None = None
        self.refused = 0

    def allow(self, now_s: float) -> bool:
        if self._t_s is not None:
            self._tokens = min(self._burst, self._tokens + (now_s - self._t_s) * self._rate_per_s)
        self._t_s = now_s
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        self.refused += 1
        return False


# -- the outbound queue --------------------------------------------------------------------------------

class Outbox:
    """Messages waiting for the broker, bounded.

    A "state" or "discovery" message replaces the one for its topic still waiting (only the latest
    counts); when the queue is full the oldest state-like message goes first, then the oldest event.
    ``dropped`` counts what was lost (replaced ones are not lost: their news is in the newer one).
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: deque[Message] = deque()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, msg: Message) -> None:
        if msg.kind != "event":
            for i, old in enumerate(self._items):
                if old.topic == msg.topic:
                    del self._items[i]
                    break
        if len(self._items) >= self.size:
            victim = next((i for i, m in enumerate(self._items) if m.kind == "state"), None)
            if victim is None:
                victim = next((i for i, m in enumerate(self._items) if m.kind == "event"), 0)
            del self._items[victim]
            self.dropped += 1
        self._items.append(msg)

    def take(self) -> Message | None:
        return self._items.popleft() if self._items else None

    def peek(self) -> Message | None:
        return self._items[0] if self._items else None

    def clear(self) -> None:
        self._items.clear()


class StateGate:
    """When to publish the state: a change goes out at once unless one went out less than
    ``min_interval_s`` ago (then when that has passed: merged, the latest wins); the counters at
    least every ``every_s``."""

    def __init__(self, min_interval_s: float, every_s: float) -> None:
        self.min_interval_s = min_interval_s
        self.every_s = every_s
        self._last_s: float | None = None
        self._dirty = True

    def changed(self) -> None:
        self._dirty = True

    def due(self, now_s: float) -> bool:
        if self._last_s is None:
            return True
        if self._dirty:
            return now_s - self._last_s >= self.min_interval_s
        return now_s - self._last_s >= self.every_s

    def sent(self, now_s: float) -> None:
        self._last_s = now_s
        self._dirty = False
