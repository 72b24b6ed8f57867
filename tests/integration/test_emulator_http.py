"""The emulator's REST endpoints and who may open a conversation socket (real HTTP, real WebSocket)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect
from websockets.typing import Subprotocol

from device.emulator import Emulator, ProtocolClient, Scenario, default_scenario
from device.emulator.scenario import parse_fault_spec

pytestmark = pytest.mark.realtime

KEY = "test-key-123456"
SIGNED = "/v1/convai/conversation/get-signed-url"


def start(scenario: Scenario | None = None) -> Emulator:
    return Emulator(scenario or default_scenario(), api_key=KEY, speech="tone").start()


@pytest.fixture
def emu() -> Iterator[Emulator]:
    e = start()
    try:
        yield e
    finally:
        e.stop()


def get(
    emu: Emulator, path: str, agent_id: str | None = None, key: str | None = KEY, **headers: str
) -> requests.Response:
    h = dict(headers)
    if key is not None:
        h["xi-api-key"] = key
    return requests.get(emu.base_url + path, params={"agent_id": agent_id or emu.agent_id}, headers=h, timeout=5)


def first_message(url: str) -> dict[str, Any]:
    with ProtocolClient(url) as c:
        c.send_init()
        return c.recv_until("conversation_initiation_metadata", 5)


def refused_close(url: str) -> tuple[int | None, str]:
    with ProtocolClient(url) as c:
        with contextlib.suppress(ConnectionClosed):  # the server may have closed already
            c.send_init()
        c.recv_until_closed(5)
        return c.close_code, c.close_reason


def test_signed_url_points_back_at_the_emulator_and_opens_a_conversation(emu: Emulator) -> None:
    r = get(emu, SIGNED)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/json"
    url = r.json()["signed_url"]
    assert url.startswith(f"ws://127.0.0.1:{emu.port}/v1/convai/conversation?agent_id=agent_emulator&")
    assert "conversation_signature=" in url
    meta = first_message(url)["conversation_initiation_metadata_event"]
    assert meta["agent_output_audio_format"] == "pcm_16000"
    assert emu.wait_for_conversation_end(timeout_s=5).conversation_id == meta["conversation_id"]


def test_signed_url_uses_the_host_the_client_asked_for(emu: Emulator) -> None:
    # A kiosk reaches the laptop by its LAN name: the signed URL must point there, not at 127.0.0.1.
    r = get(emu, SIGNED, Host=f"laptop.local:{emu.port}")
    assert r.json()["signed_url"].startswith(f"ws://laptop.local:{emu.port}/v1/convai/conversation?")
    r = get(emu, SIGNED, Host="evil host/")
    assert r.json()["signed_url"].startswith(f"ws://127.0.0.1:{emu.port}/")


@pytest.mark.parametrize(
    ("key", "status", "detail"),
    [
        ("wrong-key", 401, "invalid_api_key"),
        (None, 401, "needs_authorization"),
    ],
)
def test_bad_keys_get_401(emu: Emulator, key: str | None, status: int, detail: str) -> None:
    r = get(emu, SIGNED, key=key)
    assert r.status_code == status
    assert r.json()["detail"]["status"] == detail
    assert KEY not in r.text


def test_unknown_agent_gets_404(emu: Emulator) -> None:
    r = get(emu, SIGNED, agent_id="agent_nobody")
    assert r.status_code == 404
    assert r.json()["detail"]["status"] == "agent_not_found"
    assert get(emu, "/v1/elsewhere").status_code == 404


def test_token_endpoint(emu: Emulator) -> None:
    r = get(emu, "/v1/convai/conversation/token")
    assert r.status_code == 200
    assert len(r.json()["token"]) > 20
    assert get(emu, "/v1/convai/conversation/token", key="nope").status_code == 401
    assert [(q["path"], q["status"]) for q in emu.http_requests] == [
        ("/v1/convai/conversation/token", 200),
        ("/v1/convai/conversation/token", 401),
    ]


def test_rate_limited_then_served() -> None:
    emu = start(
        default_scenario().with_changes(
            faults=(parse_fault_spec("signed_url_error:status=429,retry_after_s=3,count=2"),)
        )
    )
    try:
        first, second, third = (get(emu, SIGNED) for _ in range(3))
        assert first.status_code == second.status_code == 429
        assert first.headers["Retry-After"] == "3"
        assert third.status_code == 200
        assert "signed_url" in third.json()
    finally:
        emu.stop()


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_on_demand(status: int) -> None:
    emu = start(default_scenario().with_changes(faults=(parse_fault_spec(f"signed_url_error:status={status}"),)))
    try:
        for _ in range(2):  # count = 0: every request
            r = get(emu, SIGNED)
            assert r.status_code == status
            assert ("Retry-After" in r.headers) == (status == 503)
    finally:
        emu.stop()


def test_a_public_agent_needs_no_signature() -> None:
    emu = start(default_scenario().with_changes(agent={"public": True}))
    try:
        assert first_message(emu.public_url())["type"] == "conversation_initiation_metadata"
    finally:
        emu.stop()


@pytest.mark.parametrize("how", ["missing", "tampered", "expired", "other_agent"])
def test_a_private_agent_refuses_bad_signatures_with_1008(emu: Emulator, how: str) -> None:
    url = {
        "missing": emu.public_url(),
        "tampered": emu.signed_url()[:-3] + "abc",
        "expired": emu.signed_url(ttl_s=-1),
        "other_agent": emu.signed_url().replace("agent_emulator", "agent_other"),
    }[how]
    code, reason = refused_close(url)
    assert code == 1008
    assert reason
    assert emu.conversations == []  # refused before any conversation began
    assert emu.refusals[0]["code"] == 1008


def test_expiry_only_matters_when_opening() -> None:
    emu = start(default_scenario().with_changes(timing={"signed_url_ttl_s": 0.5}))
    try:
        url = emu.signed_url()
        with ProtocolClient(url) as c:
            c.send_init()
            c.recv_until("conversation_initiation_metadata", 5)
            c.recv(0.7)  # the URL expires meanwhile; the running session is unaffected
            c.send({"type": "user_activity"})
            assert c.recv_until("audio", 5)["audio_event"]["event_id"] == 1
    finally:
        emu.stop()


def test_refusal_by_http_status_when_the_scenario_says_so() -> None:
    emu = start(default_scenario().with_changes(agent={"auth_refusal": "http"}))
    try:
        with pytest.raises(InvalidStatus) as err:
            ProtocolClient(emu.public_url())
        assert err.value.response.status_code == 403
        with pytest.raises(InvalidStatus) as err:
            ProtocolClient(emu.signed_url("agent_other"))
        assert err.value.response.status_code == 404
        assert json.loads(err.value.response.body)["detail"]["message"]
    finally:
        emu.stop()


def test_refused_upgrade_then_accepted() -> None:
    emu = start(default_scenario().with_changes(faults=(parse_fault_spec("refuse_upgrade:status=503,count=1"),)))
    try:
        with pytest.raises(InvalidStatus) as err:
            ProtocolClient(emu.signed_url())
        assert err.value.response.status_code == 503
        assert first_message(emu.signed_url())["type"] == "conversation_initiation_metadata"
        assert [r["how"] for r in emu.refusals] == ["http"]
    finally:
        emu.stop()


# -- subprotocols: what browsers and the official JS client request ------------------------


def open_with(url: str, *subprotocols: str) -> tuple[str | None, dict[str, Any]]:
    """Connect offering ``subprotocols``; the selected one and the first server message."""
    offered = [Subprotocol(s) for s in subprotocols] or None
    with connect(url, subprotocols=offered, open_timeout=5, close_timeout=2) as ws:
        ws.send(json.dumps({"type": "conversation_initiation_client_data"}))
        first = json.loads(ws.recv(timeout=5))
        return ws.subprotocol, first


def test_the_convai_subprotocol_is_selected_when_requested(emu: Emulator) -> None:
    selected, first = open_with(emu.signed_url(), "convai")
    assert selected == "convai"
    assert first["type"] == "conversation_initiation_metadata"
    selected, first = open_with(emu.signed_url())  # the device asks for none: none is selected
    assert selected is None
    assert first["type"] == "conversation_initiation_metadata"


def test_a_conversation_token_as_bearer_subprotocol_admits_a_private_agent(emu: Emulator) -> None:
    token = get(emu, "/v1/convai/conversation/token").json()["token"]
    selected, first = open_with(emu.public_url(), "convai", f"bearer.{token}")
    assert selected == "convai"
    assert first["type"] == "conversation_initiation_metadata"  # the token is never echoed


@pytest.mark.parametrize("bearer", ["bearer.1.0~0000", "bearer.made-up"])
def test_a_bad_bearer_token_is_refused(emu: Emulator, bearer: str) -> None:
    with connect(emu.public_url(), subprotocols=[Subprotocol("convai"), Subprotocol(bearer)], open_timeout=5) as ws:
        with contextlib.suppress(ConnectionClosed):
            ws.send(json.dumps({"type": "conversation_initiation_client_data"}))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1008
