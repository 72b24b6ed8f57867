"""The MQTT driver's pieces that need no broker: the device id, the password file, the shim, messages, telemetry."""

from __future__ import annotations

import json
import os
import ssl
import types
from pathlib import Path
from typing import Any

import pytest

from device.app.telemetry import Telemetry
from device.core.config import MqttConfig
from device.core.errors import CredentialError
from device.drivers import mqtt
from device.drivers.secrets import MQTT_CREDENTIAL_NAME, load_mqtt_password


def test_the_device_id_is_the_machine_id_hashed_and_stable(tmp_path: Path) -> None:
    machine = tmp_path / "machine-id"
    machine.write_text("0123456789abcdef0123456789abcdef\n")
    first = mqtt.machine_device_id(machine)
    assert first == mqtt.machine_device_id(machine)
    assert first.startswith("va-") and "0123456789abcdef" not in first
    machine.write_text("fedcba9876543210fedcba9876543210\n")
    assert mqtt.machine_device_id(machine) != first


def test_without_a_machine_id_the_host_name_is_used(tmp_path: Path) -> None:
    got = mqtt.machine_device_id(tmp_path / "missing")
    assert got and all(c.isalnum() or c in "-_" for c in got)


def test_an_explicit_device_id_wins() -> None:
    assert mqtt.device_id(MqttConfig(device_id="lobby-1")) == "lobby-1"
    assert mqtt.topics_of(MqttConfig(device_id="lobby-1", topic_prefix="museum/kiosks")).state == (
        "museum/kiosks/lobby-1/state"
    )


def test_the_password_comes_from_a_root_only_file_or_the_credential(tmp_path: Path) -> None:
    f = tmp_path / "pw"
    f.write_text("s3cret-broker-pw\n")
    os.chmod(f, 0o600)
    secret = load_mqtt_password(str(f), environ={})
    assert secret is not None and secret.reveal() == "s3cret-broker-pw"
    assert "s3cret" not in repr(secret)
    os.chmod(f, 0o644)
    with pytest.raises(CredentialError, match="readable by others"):
        load_mqtt_password(str(f), environ={})
    with pytest.raises(CredentialError, match=r"cannot read mqtt\.password_file"):
        load_mqtt_password(str(tmp_path / "missing"), environ={})
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / MQTT_CREDENTIAL_NAME).write_text("from-the-credential\n")
    got = load_mqtt_password(str(f), environ={"CREDENTIALS_DIRECTORY": str(creds)})
    assert got is not None and got.reveal() == "from-the-credential"
    assert load_mqtt_password("", environ={}) is None
    os.chmod(f, 0o600)
    (creds / MQTT_CREDENTIAL_NAME).write_text("\n")  # the SetCredential= fallback of a unit: no credential
    got = load_mqtt_password(str(f), environ={"CREDENTIALS_DIRECTORY": str(creds)})
    assert got is not None and got.reveal() == "s3cret-broker-pw"


class FakeReasonCode:
    """What paho 2.x passes: a ReasonCode with is_failure, value and getName()."""

    def __init__(self, value: int, name: str) -> None:
        self.value, self.is_failure, self._name = value, value >= 128, name

    def getName(self) -> str:
        return self._name


def test_the_shim_reads_connack_codes_of_both_versions() -> None:
    assert not mqtt._failed(0) and mqtt._failed(5)
    assert mqtt._refused_credentials(5) and mqtt._refused_credentials(4) and not mqtt._refused_credentials(3)
    assert mqtt._failed(FakeReasonCode(135, "Not authorized"))
    assert not mqtt._failed(FakeReasonCode(0, "Success"))
    assert mqtt._refused_credentials(FakeReasonCode(134, "Bad user name or password"))
    assert mqtt._connack_text(FakeReasonCode(135, "Not authorized")) == "Not authorized"


def test_connect_errors_say_what_to_fix() -> None:
    cfg = MqttConfig(host="broker.lan", port=8883, ca_file="/ca.pem")
    cert = ssl.SSLCertVerificationError(1, "certificate verify failed")
    cert.verify_message = "self-signed certificate"
    assert "set ca_file to the CA that signed it" in mqtt.connect_error(cert, cfg)
    assert "is the broker running" in mqtt.connect_error(ConnectionRefusedError(111, "refused"), cfg)
    assert "did not answer within" in mqtt.connect_error(TimeoutError(), cfg)
    import socket

    assert "check mqtt.host" in mqtt.connect_error(socket.gaierror(-2, "Name or service not known"), cfg)


def link(**changes: Any) -> mqtt.FleetLink:
    cfg = MqttConfig(device_id="lobby-1", **changes)
    return mqtt.FleetLink(cfg, None, post=lambda e: True, status=dict, set_volume=lambda v: None,
                          volume=lambda: None, request_reload=lambda: None)


def record(kind: str, **data: Any) -> Telemetry:
    return Telemetry(0.0, kind, types.MappingProxyType(data))  # type: ignore[arg-type]


def queued(lk: mqtt.FleetLink) -> list[Any]:
    return list(lk._outbox._items)


def test_telemetry_is_noted_and_queued_not_sent() -> None:
    lk = link()
    lk.on_telemetry(record("state", state="speaking"))
    lk.on_telemetry(record("button", action="press", source="gpio"))
    lk.on_telemetry(record("wake", model="okay_nabu", score=0.9))
    lk.on_telemetry(record("transcript", role="user", text="my secret", tentative=False))
    lk.on_telemetry(record("gate", level_dbfs=-33.3, open=True, seq=1, speech=True))
    events = [json.loads(m.payload)["event_type"] for m in queued(lk)]
    assert events == ["press", "wake_word"]  # no transcript: publish_transcripts is off
    assert lk._state == "speaking" and lk._mic_level == -33.3
    assert not lk.alive  # nothing ran: the thread is only started by start()


def test_transcripts_are_queued_when_asked_for_and_tentative_ones_never() -> None:
    lk = link(publish_transcripts=True)
    lk.on_telemetry(record("transcript", role="user", text="half", tentative=True))
    lk.on_telemetry(record("transcript", role="agent", text="Hello there", correction=False))
    assert [json.loads(m.payload) for m in queued(lk)] == [{"role": "agent", "text": "Hello there"}]


def test_an_idle_kiosk_measures_its_microphone_now_and_then() -> None:
    lk = link()
    loud = (b"\x00\x40" * 4000)  # 16384: -6 dBFS
    lk.on_block(loud, 10.0)
    assert lk._mic_level == pytest.approx(-6.02, abs=0.01)
    lk.on_block(bytes(8000), 11.0)  # within LEVEL_EVERY_S: not measured again
    assert lk._mic_level == pytest.approx(-6.02, abs=0.01)
    lk.on_block(bytes(8000), 10.0 + mqtt.LEVEL_EVERY_S)
    assert lk._mic_level == -120.0


def test_removal_clears_discovery_state_and_availability() -> None:
    msgs = mqtt.removal_messages(MqttConfig(device_id="lobby-1"))
    topics = {m.topic for m in msgs}
    assert "voice-appliance/lobby-1/state" in topics and "voice-appliance/lobby-1/availability" in topics
    assert all(m.payload == "" and m.retain for m in msgs)


def test_check_lines_when_off_and_a_bad_password_file(tmp_path: Path) -> None:
    assert mqtt.check_lines(MqttConfig()) == [("skip", "mqtt: off (mqtt.enabled = false)")]
    f = tmp_path / "pw"
    f.write_text("pw-123456\n")
    os.chmod(f, 0o644)
    cfg = MqttConfig(enabled=True, host="127.0.0.1", username="u", password_file=str(f), device_id="k")
    lines = mqtt.check_lines(cfg, reach=False)
    assert lines[0][0] == "warn" and "in clear" in lines[0][1]  # a password without TLS
    assert lines[-1][0] == "fail" and "readable by others" in lines[-1][1]
    assert "pw-123456" not in repr(lines)
