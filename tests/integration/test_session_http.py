"""Connection modes and every HTTP / network failure class, seen from the session.

The emulator is the service; the token broker (the operator's HTTPS endpoint)
is a small local HTTP server that itself asks the emulator — the edge of the
world. Network failures use real sockets: a closed port, a listener that never
answers, a name under .invalid, a TLS server with a private certificate.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from websockets.sync.server import ServerConnection, serve

from device.core.config import AgentConfig
from device.core.protocol import Connected, Outcome
from device.drivers.agent_http import AgentHttp, SignedUrlSource
from device.drivers.secrets import Secret
from device.emulator.scenario import Fault
from tests.integration.sessionrig import EMULATOR_KEY, WAIT_S, agent_for, fast_scenario, make_session, running, started
from tests.support import ConnectProxy, LocalHttp, QuietHandler, free_port, make_fifo, unless_blocked_on

pytestmark = pytest.mark.realtime


def quick_http(agent: AgentConfig, key: str | None) -> AgentHttp:
    """The session's REST client with short backoff, so failing tests stay fast."""
    return AgentHttp(agent, Secret(key, "test") if key else None, retry_initial_s=0.01, retry_max_s=0.05)


def end_of(agent: AgentConfig, key: str | None = EMULATOR_KEY) -> Any:
    session, events = make_session(None, agent=agent, key=key, http=quick_http(agent, key))
    with started(session):
        return events.ended()


# -- modes -------------------------------------------------------------------------------


def test_signed_url_mode_fetches_then_connects() -> None:
    with running() as emu:
        session, events = make_session(emu)
        with started(session):
            events.wait_for(Connected)
        assert [(r["path"], r["status"]) for r in emu.http_requests] == [
            ("/v1/convai/conversation/get-signed-url", 200)
        ]
    stats = session.stats
    assert stats["url_ms"] <= stats["connect_ms"]


def test_prefetched_signed_url_skips_the_rest_call() -> None:
    with running() as emu:
        agent = agent_for(emu)
        source = SignedUrlSource(AgentHttp(agent, Secret(EMULATOR_KEY, "test")))
        source.start()
        try:
            assert source.wait_ready(WAIT_S)
            before = len(emu.http_requests)
            session, events = make_session(emu, agent=agent, signed_urls=source)
            with started(session):
                events.wait_for(Connected)
            assert session.stats["prefetch_hits"] == 1
            assert source.wait_ready(WAIT_S), "the cache refilled itself for the next press"
            assert len(emu.http_requests) == before + 1  # the refill only, not the session
        finally:
            source.close()


def test_a_prefetch_miss_falls_back_to_fetching() -> None:
    fault = Fault(kind="signed_url_error", status=503, count=2, retry_after_s=0.01)
    with running(fast_scenario(faults=(fault,))) as emu:
        agent = agent_for(emu)
        source = SignedUrlSource(AgentHttp(agent, Secret(EMULATOR_KEY, "t"), attempts=1), retry_initial_s=60)
        source.start()
        try:
            assert source.wait_attempts(1, WAIT_S) and not source.ready
            session, events = make_session(emu, agent=agent, signed_urls=source, http=quick_http(agent, EMULATOR_KEY))
            with started(session):
                events.wait_for(Connected)
        finally:
            source.close()
    assert session.stats["prefetch_misses"] == 1


# -- the token broker --------------------------------------------------------------------


class Broker(LocalHttp):
    """The operator's endpoint: checks the device token, asks the service with the real key."""

    def __init__(self, emulator_base: str, device_token: str) -> None:
        self.calls: list[dict[str, Any]] = []
        outer = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                outer.calls.append({"path": self.path, "auth": self.headers.get("Authorization")})
                if self.headers.get("Authorization") != f"Bearer {device_token}":
                    self._answer(401, {"error": "unknown device"})
                    return
                resp = requests.get(
                    f"{emulator_base}/v1/convai/conversation/get-signed-url",
                    params={"agent_id": query["agent_id"][0]},
                    headers={"xi-api-key": EMULATOR_KEY},
                    timeout=WAIT_S,
                )
                self._answer(resp.status_code, resp.json())

            def _answer(self, status: int, body: Any) -> None:
                self.send_body(status, json.dumps(body).encode(), {"Content-Type": "application/json"})

        super().__init__(Handler, "broker")
        self.url = f"http://127.0.0.1:{self.port}/kiosk/signed-url?device=lobby-1"


@pytest.fixture
def emulator_and_broker() -> Iterator[tuple[Any, Broker]]:
    with running() as emu:
        broker = Broker(emu.base_url, "device-token-lobby-1")
        try:
            yield emu, broker
        finally:
            broker.close()


def test_broker_mode_needs_no_api_key_on_the_device(emulator_and_broker: tuple[Any, Broker]) -> None:
    emu, broker = emulator_and_broker
    agent = agent_for(emu, connection="broker", broker_url=broker.url)
    session, events = make_session(emu, agent=agent, key="device-token-lobby-1")
    with started(session):
        events.wait_for(Connected)
    record = emu.wait_for_conversation_end(timeout_s=WAIT_S)
    assert broker.calls == [
        {"path": "/kiosk/signed-url?device=lobby-1&agent_id=agent_emulator", "auth": "Bearer device-token-lobby-1"}
    ]
    assert not record.violations


def test_broker_refusing_the_device(emulator_and_broker: tuple[Any, Broker]) -> None:
    emu, broker = emulator_and_broker
    agent = agent_for(emu, connection="broker", broker_url=broker.url)
    ended = end_of(agent, key="stolen-token-xyz")
    assert ended.outcome is Outcome.AUTH
    assert "token broker" in ended.detail and "refused this device's token (HTTP 401)" in ended.detail
    assert emu.conversations == []


def test_broker_that_is_down(emulator_and_broker: tuple[Any, Broker]) -> None:
    emu, _ = emulator_and_broker
    agent = agent_for(emu, connection="broker", broker_url=f"http://127.0.0.1:{free_port()}/signed-url")
    ended = end_of(agent, key="device-token-lobby-1")
    assert ended.outcome is Outcome.NETWORK and "refused" in ended.detail


# -- network failure classes ------------------------------------------------------------------


@pytest.mark.parametrize("connection", ["signed_url", "public"])
def test_dns_failure(connection: str) -> None:
    agent = AgentConfig(agent_id="a", connection=connection, base_url="http://agents.kiosk-test.invalid")  # type: ignore[arg-type]
    ended = end_of(agent)
    assert ended.outcome is Outcome.NETWORK and "cannot resolve agents.kiosk-test.invalid (DNS)" in ended.detail


@pytest.mark.parametrize("connection", ["signed_url", "public"])
def test_connection_refused(connection: str) -> None:
    agent = AgentConfig(agent_id="a", connection=connection, base_url=f"http://127.0.0.1:{free_port()}")  # type: ignore[arg-type]
    ended = end_of(agent)
    assert ended.outcome is Outcome.NETWORK and "refused" in ended.detail and ended.outcome.retryable


@pytest.mark.parametrize("connection", ["signed_url", "public"])
def test_a_server_that_never_answers(connection: str) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        agent = AgentConfig(
            agent_id="a",
            connection=connection,  # type: ignore[arg-type]
            base_url=f"http://127.0.0.1:{listener.getsockname()[1]}",
            http_timeout_s=0.5,
            connect_timeout_s=0.5,
        )
        ended = end_of(agent)
    assert ended.outcome is Outcome.NETWORK
    assert "0.5 s" in ended.detail


@pytest.fixture
def tls_agent_server(cert: tuple[Path, Path]) -> Iterator[int]:
    """A wss:// server with a private certificate that starts a conversation."""

    def handler(ws: ServerConnection) -> None:
        ws.recv(timeout=WAIT_S)
        ws.send(json.dumps({
            "type": "conversation_initiation_metadata",
            "conversation_initiation_metadata_event": {
                "conversation_id": "tls-1", "agent_output_audio_format": "pcm_16000",
                "user_input_audio_format": "pcm_16000"},
        }))
        for _ in ws:
            pass

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    server = serve(handler, "127.0.0.1", 0, ssl=ctx, compression=None)
    thread = threading.Thread(target=server.serve_forever, name="tls-server")
    thread.start()
    try:
        yield server.socket.getsockname()[1]
    finally:
        server.shutdown()
        thread.join(WAIT_S)


def test_tls_verification_is_always_on_for_the_socket(tls_agent_server: int) -> None:
    agent = AgentConfig(agent_id="a", connection="public", base_url=f"https://127.0.0.1:{tls_agent_server}")
    ended = end_of(agent, key=None)
    assert ended.outcome is Outcome.NETWORK and "TLS check of 127.0.0.1" in ended.detail
    assert "agent.ca_bundle" in ended.detail


def test_tls_verification_for_the_rest_call(tls_agent_server: int) -> None:
    agent = AgentConfig(agent_id="a", base_url=f"https://127.0.0.1:{tls_agent_server}")
    ended = end_of(agent)
    assert ended.outcome is Outcome.NETWORK and "TLS check of 127.0.0.1" in ended.detail


def test_ca_bundle_admits_a_private_ca(tls_agent_server: int, cert: tuple[Path, Path]) -> None:
    agent = AgentConfig(
        agent_id="a", connection="public", base_url=f"https://127.0.0.1:{tls_agent_server}", ca_bundle=str(cert[0])
    )
    session, events = make_session(None, agent=agent, key=None)
    with started(session):
        assert events.wait_for(Connected).conversation_id == "tls-1"


def test_the_socket_goes_through_the_environments_proxy_with_a_private_ca(
    tls_agent_server: int, cert: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """systemd/drop-ins/proxy.conf: HTTPS_PROXY for the socket, agent.ca_bundle for a TLS-inspecting proxy's CA."""
    proxy = ConnectProxy()
    try:
        for name in ("NO_PROXY", "no_proxy", "https_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        agent = AgentConfig(
            agent_id="a", connection="public", base_url=f"https://127.0.0.1:{tls_agent_server}",
            ca_bundle=str(cert[0]),
        )
        session, events = make_session(None, agent=agent, key=None)
        with started(session):
            assert events.wait_for(Connected).conversation_id == "tls-1"
    finally:
        proxy.close()
    assert proxy.targets == [f"CONNECT 127.0.0.1:{tls_agent_server}"]


def test_missing_ca_bundle_file(tmp_path: Path, tls_agent_server: int) -> None:
    agent = AgentConfig(
        agent_id="a", connection="public", base_url=f"https://127.0.0.1:{tls_agent_server}",
        ca_bundle=str(tmp_path / "nope.pem"),
    )
    ended = end_of(agent, key=None)
    assert ended.outcome is Outcome.NETWORK and "agent.ca_bundle" in ended.detail


def test_a_fifo_as_ca_bundle_ends_the_attempt_instead_of_holding_the_socket_thread(
    tmp_path: Path, tls_agent_server: int
) -> None:
    fifo = make_fifo(tmp_path / "ca.pem")
    agent = AgentConfig(
        agent_id="a", connection="public", base_url=f"https://127.0.0.1:{tls_agent_server}", ca_bundle=str(fifo)
    )
    ended = unless_blocked_on(fifo, lambda: end_of(agent, key=None))
    assert ended.outcome is Outcome.NETWORK and "agent.ca_bundle" in ended.detail
    assert "FIFO (named pipe), not a regular file" in ended.detail


def test_stop_while_fetching_ends_locally() -> None:
    with socket.socket() as listener:  # accepts, never answers: the fetch hangs until stopped
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        agent = AgentConfig(agent_id="a", base_url=f"http://127.0.0.1:{listener.getsockname()[1]}", http_timeout_s=2.0)
        session, events = make_session(None, agent=agent, http=quick_http(agent, EMULATOR_KEY))
        session.start()
        session.stop()
        ended = events.ended()
    assert ended.outcome is Outcome.LOCAL


def test_stop_interrupts_a_signed_url_request_waiting_for_its_answer() -> None:
    """Even with the longest http_timeout_s, a stop does not wait for the answer."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.settimeout(WAIT_S)
        agent = AgentConfig(agent_id="a", base_url=f"http://127.0.0.1:{listener.getsockname()[1]}", http_timeout_s=120)
        session, events = make_session(None, agent=agent, http=quick_http(agent, EMULATOR_KEY))
        session.start()
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(WAIT_S)
            request = b""
            while b"\r\n\r\n" not in request:  # the whole request is in: the session waits for the answer
                chunk = conn.recv(4096)
                assert chunk, "the session hung up before sending its request"
                request += chunk
            session.stop(WAIT_S)  # raises WorkerStuckError if the request still holds the thread
            ended = events.ended()
    assert ended.outcome is Outcome.LOCAL
    assert request.startswith(b"GET /v1/convai/conversation/get-signed-url")
