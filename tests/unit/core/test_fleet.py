"""The fleet channel's pure logic: topics, discovery payloads, state values, commands, limits, the outbox."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device.core import fleet
from device.core.config import MqttConfig, parse_config
from device.core.errors import ConfigError
from tests.support import examples

TOPICS = fleet.Topics("voice-appliance", "homeassistant", "lobby-1")
IDENT = fleet.Identity("lobby-1", "Lobby kiosk", "9.9.9")

# Home Assistant's MQTT discovery: the keys each component cannot do without (abbreviated names).
REQUIRED = {
    "sensor": {"stat_t"},
    "binary_sensor": {"stat_t"},
    "number": {"cmd_t"},
    "switch": {"cmd_t"},
    "button": {"cmd_t"},
    "event": {"stat_t", "evt_typ"},
    "text": {"cmd_t"},
}


def configs(publish_transcripts: bool = False) -> dict[str, dict[str, Any]]:
    return {m.topic: json.loads(m.payload) for m in fleet.discovery(TOPICS, IDENT, publish_transcripts)}


def test_topics_are_under_the_kiosk_and_the_discovery_prefix() -> None:
    assert TOPICS.availability == "voice-appliance/lobby-1/availability"
    assert TOPICS.state == "voice-appliance/lobby-1/state"
    assert TOPICS.commands == "voice-appliance/lobby-1/cmd/+"
    assert TOPICS.config("switch", "mute") == "homeassistant/switch/lobby-1/mute/config"
    assert TOPICS.command_name("voice-appliance/lobby-1/cmd/volume") == "volume"
    assert TOPICS.command_name("voice-appliance/lobby-2/cmd/volume") is None  # another kiosk's
    assert TOPICS.command_name("voice-appliance/lobby-1/cmd/format") is None
    assert TOPICS.command_name("voice-appliance/lobby-1/state") is None


def test_every_discovery_config_has_what_home_assistant_requires() -> None:
    for topic, payload in configs(True).items():
        component = topic.split("/")[1]
        assert REQUIRED[component] <= payload.keys(), topic
        assert payload["uniq_id"].startswith("voice_appliance_lobby-1_")
        assert payload["avty_t"] == "~/availability" and payload["~"] == TOPICS.base
        assert (payload["pl_avail"], payload["pl_not_avail"]) == ("online", "offline")
        assert payload["dev"]["ids"] == ["voice_appliance_lobby-1"]
        assert payload["o"]["name"] == "voice-appliance" and payload["o"]["sw"] == "9.9.9"
        for key in ("stat_t", "cmd_t"):
            if key in payload:  # every topic is one of this kiosk's, and a command topic one it accepts
                assert payload[key].startswith("~/")
        if "cmd_t" in payload:
            assert TOPICS.command_name(payload["cmd_t"].replace("~", TOPICS.base)) is not None


def test_unique_ids_are_unique_and_stable() -> None:
    ids = [p["uniq_id"] for p in configs(True).values()]
    assert len(ids) == len(set(ids))
    assert ids == [p["uniq_id"] for p in configs(True).values()]


def test_the_entities_the_issue_asks_for_are_there() -> None:
    components = {tuple(t.split("/")[1:4:2]) for t in configs()}
    for wanted in [("sensor", "state"), ("sensor", "last_error"), ("sensor", "conversations"),
                   ("sensor", "audio_dropped"), ("sensor", "reconnects"), ("sensor", "wake_detections"),
                   ("sensor", "false_wakes"), ("sensor", "mic_level"), ("sensor", "uptime"), ("sensor", "version"),
                   ("number", "volume"), ("switch", "mute"), ("button", "start"), ("button", "end"),
                   ("event", "activity"), ("text", "context"), ("binary_sensor", "problem")]:
        assert wanted in components


def test_transcripts_have_no_entity_unless_asked_for() -> None:
    assert not any("transcript" in t for t in configs(False))
    assert any("transcript" in t for t in configs(True))


def test_removal_empties_every_config_retained() -> None:
    removed = fleet.removal(TOPICS)
    assert {m.topic for m in removed} == set(configs(True))
    assert all(m.payload == "" and m.retain for m in removed)


def test_state_values_from_the_status() -> None:
    status = {"state": "idle", "muted": True, "last_error": "speaker: gone",
              "counters": {"conversations": 4, "audio_dropped_s": 1.5, "wake_detections": 2, "false_wakes": 1,
                           "uptime_s": 12.0}}
    v = fleet.state_values(status, state="speaking", volume=40, mic_level_dbfs=-42.26, reconnects=3, version="1")
    assert v["state"] == "speaking" and v["in_conversation"] is True  # the telemetry's state is the fresher
    assert v["muted"] is True and v["volume"] == 40 and v["last_error"] == "speaker: gone"
    assert (v["conversations"], v["audio_dropped_s"], v["wake_detections"], v["false_wakes"]) == (4, 1.5, 2, 1)
    assert v["mic_level_dbfs"] == -42.3 and v["reconnects"] == 3 and v["uptime_s"] == 12.0
    quiet = fleet.state_values({}, state=None, volume=None, mic_level_dbfs=float("-inf"), reconnects=0, version="1")
    assert quiet["state"] == "unknown" and quiet["mic_level_dbfs"] is None and quiet["in_conversation"] is False
    json.dumps(quiet, allow_nan=False)  # what Home Assistant parses


def test_state_values_of_a_status_without_counters_do_not_fail() -> None:
    v = fleet.state_values({"counters": "nonsense"}, state="idle", volume=None, mic_level_dbfs=None,
                           reconnects=0, version="1")
    assert v["conversations"] == 0


@pytest.mark.parametrize(
    ("name", "payload", "want"),
    [
        ("start", b"PRESS", fleet.FleetCommand("start")),
        ("end", b"", fleet.FleetCommand("end")),
        ("press", b"", fleet.FleetCommand("press")),
        ("release", b"x", fleet.FleetCommand("release")),
        ("reload", b"PRESS", fleet.FleetCommand("reload")),
        ("mute", b"ON", fleet.FleetCommand("mute", True)),
        ("mute", b" off\n", fleet.FleetCommand("mute", False)),
        ("volume", b"0", fleet.FleetCommand("volume", 0)),
        ("volume", b"100", fleet.FleetCommand("volume", 100)),
        ("volume", b"35.0", fleet.FleetCommand("volume", 35)),  # Home Assistant's number sends floats
        ("context", b"Visitor scanned ticket 4711", fleet.FleetCommand("context", "Visitor scanned ticket 4711")),
        ("message", "Où sont\nles toilettes ?".encode(), fleet.FleetCommand("message", "Où sont les toilettes ?")),
    ],
)
def test_valid_commands(name: str, payload: bytes, want: fleet.FleetCommand) -> None:
    assert fleet.parse_command(name, payload) == want


@pytest.mark.parametrize(
    ("name", "payload", "why"),
    [
        ("mute", b"maybe", "ON or OFF"),
        ("mute", b"", "ON or OFF"),
        ("volume", b"101", "0 to 100"),
        ("volume", b"-1", "0 to 100"),
        ("volume", b"50.5", "whole number"),
        ("volume", b"nan", "whole number"),
        ("volume", b"inf", "whole number"),
        ("volume", b"loud", "whole number"),
        ("context", b"   ", "empty"),
        ("message", b"\xff\xfe", "not UTF-8"),
        ("message", b"a\x1bb", "control characters"),
        ("context", b"x" * (fleet.MAX_TEXT_BYTES + 1), "over"),
        ("format", b"", "unknown command"),
    ],
)
def test_bad_commands_give_a_reason(name: str, payload: bytes, why: str) -> None:
    got = fleet.parse_command(name, payload)
    assert isinstance(got, str) and why in got


def test_a_retained_command_is_refused() -> None:
    got = fleet.parse_command("start", b"PRESS", retained=True)
    assert isinstance(got, str) and "retained" in got


@settings(max_examples=examples(200))
@given(st.sampled_from([*sorted(fleet.COMMANDS), "x", ""]), st.binary(max_size=5000), st.booleans())
def test_no_payload_raises(name: str, payload: bytes, retained: bool) -> None:
    got = fleet.parse_command(name, payload, retained)
    assert isinstance(got, (str, fleet.FleetCommand))
    if isinstance(got, fleet.FleetCommand) and got.name == "volume":
        assert isinstance(got.value, int) and 0 <= got.value <= 100


def test_the_rate_limit_allows_a_burst_then_the_rate() -> None:
    limit = fleet.RateLimit(60, burst=3)  # one a second
    assert [limit.allow(0.0) for _ in range(4)] == [True, True, True, False]
    assert not limit.allow(0.5)
    assert limit.allow(1.5)
    assert limit.refused == 2
    assert [limit.allow(100.0) for _ in range(4)] == [True, True, True, False]  # refilled, never over the burst


def msg(topic: str, kind: str = "state", payload: str = "") -> fleet.Message:
    return fleet.Message(topic, payload, kind=kind)


def test_the_outbox_keeps_only_the_latest_state_of_a_topic() -> None:
    box = fleet.Outbox(4)
    box.put(msg("s", payload="1"))
    box.put(msg("e", kind="event"))
    box.put(msg("s", payload="2"))
    assert len(box) == 2 and box.dropped == 0
    assert [box.take(), box.take(), box.take()] == [msg("e", kind="event"), msg("s", payload="2"), None]


def test_a_full_outbox_drops_the_oldest_state_first_and_counts() -> None:
    box = fleet.Outbox(3)
    box.put(msg("e1", kind="event"))
    box.put(msg("s1"))
    box.put(msg("e2", kind="event"))
    box.put(msg("e3", kind="event"))  # full: s1 goes, not the older event
    assert [m.topic for m in box._items] == ["e1", "e2", "e3"] and box.dropped == 1
    box.put(msg("e4", kind="event"))  # no state left: the oldest event goes
    assert [m.topic for m in box._items] == ["e2", "e3", "e4"] and box.dropped == 2


def test_a_full_outbox_of_discovery_keeps_it_over_events() -> None:
    box = fleet.Outbox(2)
    box.put(msg("d1", kind="discovery"))
    box.put(msg("e1", kind="event"))
    box.put(msg("d2", kind="discovery"))
    assert [m.topic for m in box._items] == ["d1", "d2"] and box.dropped == 1


@settings(max_examples=examples(100))
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.sampled_from(["state", "event"])), max_size=60))
def test_the_outbox_never_grows_past_its_size(puts: list[tuple[str, str]]) -> None:
    box = fleet.Outbox(3)
    for topic, kind in puts:
        box.put(msg(topic, kind))
        assert len(box) <= 3


def test_the_state_gate_merges_quick_changes_and_repeats_the_counters() -> None:
    gate = fleet.StateGate(min_interval_s=0.1, every_s=30.0)
    assert gate.due(0.0)
    gate.sent(0.0)
    gate.changed()
    assert not gate.due(0.05)  # too soon: merged with what comes next
    assert gate.due(0.1)
    gate.sent(0.1)
    assert not gate.due(10.0)
    assert gate.due(30.1)  # the counters, unprompted


def test_event_types_from_the_telemetry() -> None:
    assert fleet.event_type("wake", {"model": "okay_nabu"}) == "wake_word"
    assert fleet.event_type("button", {"action": "long_press"}) == "long_press"
    assert fleet.event_type("button", {"action": "wiggle"}) is None
    assert fleet.event_type("state", {}) is None


def test_the_mqtt_section_is_off_by_default_and_validated() -> None:
    assert MqttConfig().enabled is False
    cfg = parse_config({"mqtt": {"enabled": True, "host": "broker.local", "ca_file": "/etc/ca.pem"}}, {}).mqtt
    assert cfg.use_tls and cfg.broker_port == 8883
    assert parse_config({"mqtt": {"host": "b"}}, {}).mqtt.broker_port == 1883
    assert parse_config({"mqtt": {"host": "b", "tls": "on"}}, {}).mqtt.broker_port == 8883


@pytest.mark.parametrize(
    ("values", "key", "words"),
    [
        ({"enabled": True}, "mqtt.host", "needs the broker"),
        ({"device_id": "lobby/1"}, "mqtt.device_id", "letters, digits"),
        ({"topic_prefix": "kiosks/+"}, "mqtt.topic_prefix", "no +"),
        ({"topic_prefix": "/kiosks"}, "mqtt.topic_prefix", "not a topic prefix"),
        ({"discovery_prefix": ""}, "mqtt.discovery_prefix", "not a topic prefix"),
        ({"client_cert_file": "/c.pem"}, "mqtt.client_key_file", "both"),
        ({"tls": "off", "ca_file": "/ca.pem"}, "mqtt.tls", "turn tls on"),
        ({"password_file": "/p"}, "mqtt.username", "user name"),
        ({"tls": "yes"}, "mqtt.tls", "not allowed"),
        ({"keepalive_s": 1}, "mqtt.keepalive_s", "out of range"),
        ({"password": "hunter2"}, "mqtt.password", "unknown key"),  # never in the config
    ],
)
def test_bad_mqtt_settings_name_the_key(values: dict[str, Any], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"mqtt": values}, {})
    assert info.value.key == key
    assert words in str(info.value)
