"""REST client: region URLs, failure classes, retries, TLS, proxies, the prefetch cache.

The emulator covers the service's own answers (tests/integration). The tiny
local HTTP(S) server here is the edge of the world for what the emulator cannot
express: scripted sequences of answers, TLS with a private CA, a proxy, a
server that accepts and never answers.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from device.core.config import AgentConfig
from device.core.protocol import Outcome
from device.drivers.agent_http import (
    REGION_HOSTS,
    AgentHttp,
    AgentHttpError,
    SignedUrlSource,
    add_client_params,
    broker_request,
    endpoints_for,
    is_loopback_host,
    plaintext_allowed,
    public_conversation_url,
    signed_url_request,
)
from device.drivers.secrets import Secret
from tests.support import ConnectProxy, LocalHttp, QuietHandler, free_port, make_fifo, read_http_head, unless_blocked_on

KEY = "sk_unit_test_key_0123456789"
WAIT_S = 30.0


# -- pure URLs -----------------------------------------------------------------------


@pytest.mark.parametrize("region", sorted(REGION_HOSTS))
def test_each_region_has_its_rest_and_socket_urls(region: str) -> None:
    ep = endpoints_for(AgentConfig(agent_id="agent_x", region=region))  # type: ignore[arg-type]
    host = REGION_HOSTS[region]
    assert ep.rest_base == f"https://{host}"
    assert ep.ws_base == f"wss://{host}"
    assert signed_url_request(ep, "agent_x") == (
        f"https://{host}/v1/convai/conversation/get-signed-url?agent_id=agent_x"
    )
    url = public_conversation_url(ep, "agent_x", version="9.9")
    assert url == f"wss://{host}/v1/convai/conversation?agent_id=agent_x&source=voice-appliance&version=9.9"


def test_region_hosts_match_the_protocol_reference() -> None:
    assert REGION_HOSTS == {
        "global": "api.elevenlabs.io",
        "us": "api.us.elevenlabs.io",
        "eu": "api.eu.residency.elevenlabs.io",
        "in": "api.in.residency.elevenlabs.io",
        "sg": "api.sg.residency.elevenlabs.io",
    }


@pytest.mark.parametrize(
    ("base_url", "rest", "ws"),
    [
        ("http://127.0.0.1:8765", "http://127.0.0.1:8765", "ws://127.0.0.1:8765"),
        ("http://127.0.0.1:8765/", "http://127.0.0.1:8765", "ws://127.0.0.1:8765"),
        ("https://agents.example.com/proxy/", "https://agents.example.com/proxy", "wss://agents.example.com/proxy"),
        ("wss://agents.example.com", "https://agents.example.com", "wss://agents.example.com"),
    ],
)
def test_explicit_base_url_wins_over_the_region(base_url: str, rest: str, ws: str) -> None:
    ep = endpoints_for(AgentConfig(agent_id="a", region="eu", base_url=base_url))
    assert (ep.rest_base, ep.ws_base) == (rest, ws)


def test_signed_url_stays_opaque_and_gets_source_and_version_once() -> None:
    signed = "wss://h/v1/convai/conversation?agent_id=a&token=T0K3N&zeta=1"
    out = add_client_params(signed, version="1.0")
    assert out == signed + "&source=voice-appliance&version=1.0"
    assert add_client_params(out, version="2.0") == out


def test_broker_request_adds_the_agent_id_unless_present() -> None:
    assert broker_request("https://b.example/s?device=k1", "agent_x") == "https://b.example/s?device=k1&agent_id=agent_x"
    assert broker_request("https://b.example/s?agent_id=y", "agent_x") == "https://b.example/s?agent_id=y"


# -- a scripted local server ------------------------------------------------------------


@dataclass
class Answer:
    status: int = 200
    body: Any = field(default_factory=lambda: {"signed_url": "ws://127.0.0.1:1/v1/convai/conversation?agent_id=a&token=SIGNED_TOKEN_1"})
    headers: dict[str, str] = field(default_factory=dict)


class Script:
    def __init__(self) -> None:
        self.answers: list[Answer] = []
        self.default = Answer()
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.cond = threading.Condition()

    def next(self, path: str, headers: dict[str, str]) -> Answer:
        with self.cond:
            self.requests.append((path, headers))
            self.cond.notify_all()
            return self.answers.pop(0) if self.answers else self.default


class Server(LocalHttp):
    def __init__(self, tls: tuple[Path, Path] | None = None) -> None:
        script = self.script = Script()

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                answer = script.next(self.path, {k.lower(): v for k, v in self.headers.items()})
                body = answer.body if isinstance(answer.body, bytes) else json.dumps(answer.body).encode()
                self.send_body(answer.status, body, answer.headers)

        super().__init__(Handler, "test-http", tls)


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


def agent(port: int, **kw: Any) -> AgentConfig:
    return AgentConfig(agent_id="agent_x", base_url=f"http://127.0.0.1:{port}", http_timeout_s=5.0, **kw)


def client(cfg: AgentConfig, key: str | None = KEY, **kw: Any) -> AgentHttp:
    kw.setdefault("retry_initial_s", 0.01)
    kw.setdefault("retry_max_s", 0.05)
    return AgentHttp(cfg, Secret(key, "test") if key else None, **kw)


# -- answers ------------------------------------------------------------------------------


def test_signed_url_is_fetched_with_the_key_header(server: Server) -> None:
    with client(agent(server.port)) as http:
        signed = http.fetch_signed_url()
    assert "token=SIGNED_TOKEN_1" in signed.url
    assert signed.url.endswith("&source=voice-appliance&version=0.2.0")
    path, headers = server.script.requests[0]
    assert path == "/v1/convai/conversation/get-signed-url?agent_id=agent_x"
    assert headers["xi-api-key"] == KEY
    assert "SIGNED_TOKEN_1" not in repr(signed)


def test_signed_url_mode_without_a_key_says_where_to_put_it(server: Server) -> None:
    with client(agent(server.port), key=None) as http, pytest.raises(AgentHttpError) as info:
        http.fetch_signed_url()
    assert info.value.outcome is Outcome.AUTH
    assert "elevenlabs_api_key" in str(info.value)
    assert server.script.requests == []


def test_public_mode_needs_no_request(server: Server) -> None:
    with client(agent(server.port, connection="public"), key=None) as http:
        url = http.conversation_url()
    assert url.startswith(f"ws://127.0.0.1:{server.port}/v1/convai/conversation?agent_id=agent_x&source=")
    assert server.script.requests == []


def test_broker_gets_the_device_token_as_bearer_and_no_api_key(server: Server) -> None:
    cfg = agent(server.port, connection="broker", broker_url=f"http://127.0.0.1:{server.port}/kiosk/url?device=k7")
    with client(cfg, key="device_token_abcdef") as http:
        http.fetch_signed_url()
    path, headers = server.script.requests[0]
    assert path == "/kiosk/url?device=k7&agent_id=agent_x"
    assert headers["authorization"] == "Bearer device_token_abcdef"
    assert "xi-api-key" not in headers


@pytest.mark.parametrize(
    "body",
    [b"<html>hello</html>", {"url": "wss://x"}, {"signed_url": "https://not-a-socket"}, {"signed_url": 5}],
)
def test_an_answer_without_a_signed_url_is_a_protocol_error(server: Server, body: Any) -> None:
    server.script.default = Answer(200, body)
    with client(agent(server.port)) as http, pytest.raises(AgentHttpError) as info:
        http.fetch_signed_url()
    assert info.value.outcome is Outcome.PROTOCOL
    assert '{"signed_url"' in str(info.value)


@pytest.mark.parametrize(
    ("status", "outcome", "words"),
    [
        (401, Outcome.AUTH, "rejected the API key"),
        (403, Outcome.AUTH, "rejected the API key"),
        (404, Outcome.NOT_FOUND, "does not know agent 'agent_x'"),
        (400, Outcome.MISCONFIGURED, "refused the request"),
    ],
)
def test_client_errors_are_classified_and_not_retried(
    server: Server, status: int, outcome: Outcome, words: str
) -> None:
    server.script.default = Answer(status, {"detail": {"status": "x", "message": f"the key {KEY} is invalid"}})
    with client(agent(server.port)) as http, pytest.raises(AgentHttpError) as info:
        http.fetch_signed_url()
    assert info.value.outcome is outcome
    assert info.value.status == status
    assert words in str(info.value)
    assert "the key <redacted> is invalid" in str(info.value)
    assert KEY not in str(info.value)
    assert len(server.script.requests) == 1


def test_rate_limit_reports_retry_after_without_retrying(server: Server) -> None:
    server.script.default = Answer(429, {"detail": "too many"}, {"Retry-After": "17"})
    with client(agent(server.port)) as http, pytest.raises(AgentHttpError) as info:
        http.fetch_signed_url()
    assert info.value.outcome is Outcome.RATE_LIMITED
    assert info.value.retry_after_s == 17.0
    assert "(HTTP 429, Retry-After 17 s)" in str(info.value)
    assert len(server.script.requests) == 1


def test_server_errors_are_retried_then_succeed(server: Server) -> None:
    server.script.answers = [Answer(503, b"busy"), Answer(500, {"detail": "oops"})]
    with client(agent(server.port), attempts=3) as http:
        signed = http.fetch_signed_url()
    assert "SIGNED_TOKEN_1" in signed.url
    assert len(server.script.requests) == 3


def test_server_errors_give_up_after_the_attempts(server: Server) -> None:
    server.script.default = Answer(502, b"bad gateway")
    with client(agent(server.port), attempts=2) as http, pytest.raises(AgentHttpError) as info:
        http.fetch_signed_url()
    assert info.value.outcome is Outcome.SERVER_ERROR
    assert "HTTP 502" in str(info.value)
    assert len(server.script.requests) == 2


def test_a_retry_after_longer_than_the_cap_is_not_waited_for(server: Server) -> None:
    server.script.default = Answer(503, b"", {"Retry-After": "3600"})
    with client(agent(server.port), attempts=3) as http, pytest.raises(AgentHttpError) as info:
        http.fetch_signed_url()
    assert info.value.retry_after_s == 3600.0
    assert len(server.script.requests) == 1


@pytest.mark.parametrize("retry_after", ["inf", "nan", "-5"])
def test_an_unusable_retry_after_on_a_server_error_gets_the_normal_backoff(server: Server, retry_after: str) -> None:
    server.script.answers = [Answer(503, b"busy", {"Retry-After": retry_after})]
    with client(agent(server.port), attempts=2) as http:
        assert "SIGNED_TOKEN_1" in http.fetch_signed_url().url
    assert len(server.script.requests) == 2


def test_retry_backoff_is_cancellable(server: Server) -> None:
    server.script.default = Answer(503, b"")
    cancel = threading.Event()

    def cancel_after_the_first_request() -> None:
        with server.script.cond:
            server.script.cond.wait_for(lambda: server.script.requests, WAIT_S)
        cancel.set()

    canceller = threading.Thread(target=cancel_after_the_first_request, name="test-cancel")
    canceller.start()
    http = client(agent(server.port), attempts=5, retry_initial_s=60, retry_max_s=60)
    try:
        with http, pytest.raises(AgentHttpError) as info:
            http.fetch_signed_url(cancel)
    finally:
        canceller.join(WAIT_S)
    assert info.value.outcome is Outcome.LOCAL
    assert len(server.script.requests) == 1


def test_a_fetch_cancelled_before_it_starts_asks_nothing(server: Server) -> None:
    cancel = threading.Event()
    cancel.set()
    with client(agent(server.port)) as http, pytest.raises(AgentHttpError) as info:
        http.fetch_signed_url(cancel)
    assert info.value.outcome is Outcome.LOCAL
    assert server.script.requests == []


# -- network failure classes --------------------------------------------------------------------


def test_dns_failure() -> None:
    cfg = AgentConfig(agent_id="a", base_url="https://kiosk-test.invalid", http_timeout_s=5.0)
    with client(cfg, attempts=1) as http, pytest.raises(AgentHttpError) as info:
        http.fetch_signed_url()
    assert info.value.outcome is Outcome.NETWORK
    assert "cannot resolve kiosk-test.invalid (DNS)" in str(info.value)


def test_connection_refused_is_retried_then_reported() -> None:
    with client(agent(free_port()), attempts=2) as http, pytest.raises(AgentHttpError) as info:
        http.fetch_signed_url()
    assert info.value.outcome is Outcome.NETWORK
    assert "refused" in str(info.value)
    assert http.requests_made == 2


@pytest.mark.realtime
def test_a_server_that_never_answers_times_out() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)  # accepted by the kernel, never answered
        cfg = AgentConfig(agent_id="a", base_url=f"http://127.0.0.1:{listener.getsockname()[1]}", http_timeout_s=0.5)
        with client(cfg, attempts=1) as http, pytest.raises(AgentHttpError) as info:
            http.fetch_signed_url()
    assert info.value.outcome is Outcome.NETWORK
    assert "did not answer within 0.5 s" in str(info.value)
    assert "agent.http_timeout_s" in str(info.value)


def test_tls_verification_is_always_on(cert: tuple[Path, Path]) -> None:
    srv = Server(tls=cert)
    try:
        cfg = AgentConfig(agent_id="a", base_url=f"https://127.0.0.1:{srv.port}", http_timeout_s=5.0)
        with client(cfg, attempts=3) as http, pytest.raises(AgentHttpError) as info:
            http.fetch_signed_url()
    finally:
        srv.close()
    assert info.value.outcome is Outcome.NETWORK
    assert "TLS check of 127.0.0.1" in str(info.value)
    assert "agent.ca_bundle" in str(info.value)
    assert http.requests_made == 1, "a certificate failure is not retried"


def test_ca_bundle_lets_a_private_ca_through(cert: tuple[Path, Path]) -> None:
    srv = Server(tls=cert)
    try:
        cfg = AgentConfig(
            agent_id="a", base_url=f"https://127.0.0.1:{srv.port}", http_timeout_s=5.0, ca_bundle=str(cert[0])
        )
        with client(cfg) as http:
            assert "SIGNED_TOKEN_1" in http.fetch_signed_url().url
    finally:
        srv.close()


@pytest.mark.parametrize(
    "host", ["agent.example.com", "127.attacker.example", "127.0.0.1.nip.io", "localhost.attacker.example"]
)
def test_an_https_endpoint_may_not_hand_out_a_plaintext_signed_url(cert: tuple[Path, Path], host: str) -> None:
    srv = Server(tls=cert)
    srv.script.default = Answer(body={"signed_url": f"ws://{host}/v1/convai/conversation?token=SIGNED_TOKEN_2"})
    try:
        cfg = AgentConfig(
            agent_id="a", base_url=f"https://127.0.0.1:{srv.port}", http_timeout_s=5.0, ca_bundle=str(cert[0])
        )
        with client(cfg) as http, pytest.raises(AgentHttpError) as info:
            http.fetch_signed_url()
    finally:
        srv.close()
    assert info.value.outcome is Outcome.PROTOCOL
    assert "wss://" in str(info.value)
    assert "SIGNED_TOKEN_2" not in str(info.value)


@pytest.mark.parametrize(
    ("signed", "asked", "allowed"),
    [
        ("wss://api.elevenlabs.io/v1/x?t=1", "https://api.elevenlabs.io/v1/y", True),
        ("ws://api.elevenlabs.io/v1/x?t=1", "https://api.elevenlabs.io/v1/y", False),
        ("ws://127.0.0.1:8765/v1/x?t=1", "https://broker.example.com/s", True),
        ("ws://localhost:8765/v1/x?t=1", "https://broker.example.com/s", True),
        ("ws://192.168.1.20:8765/v1/x?t=1", "http://192.168.1.20:8765/v1/y", True),  # chosen plaintext
        ("ws://192.168.1.20:8765/v1/x?t=1", "https://broker.example.com/s", False),
        ("ws://127.attacker.example/v1/x?t=1", "https://broker.example.com/s", False),
        ("ws://[::1]:8765/v1/x?t=1", "https://broker.example.com/s", True),
    ],
)
def test_plaintext_signed_urls_only_where_plaintext_was_chosen(signed: str, asked: str, allowed: bool) -> None:
    assert plaintext_allowed(signed, asked) is allowed


LOOPBACK = ["127.0.0.1", "127.1.2.3", "127.255.255.254", "::1", "0:0:0:0:0:0:0:1", "::ffff:127.0.0.1",
            "localhost", "LocalHost", "localhost."]
NOT_LOOPBACK = ["127.attacker.example", "127.0.0.1.nip.io", "localhost.attacker.example", "127.0.0.1.", "127.1",
                "0x7f000001", "2130706433", "128.0.0.1", "10.0.0.1", "::2", "::ffff:10.0.0.1", "fe80::1",
                "0.0.0.0", "::", "localhost..", "xlocalhost", "", "api.elevenlabs.io"]


@pytest.mark.parametrize("host", LOOPBACK)
def test_loopback_hosts(host: str) -> None:
    assert is_loopback_host(host)
    bracketed = f"[{host}]" if ":" in host else host
    assert plaintext_allowed(f"ws://{bracketed}:8765/v1/x?token=T", "https://broker.example.com/s")


@pytest.mark.parametrize("host", NOT_LOOPBACK)
def test_names_and_addresses_that_only_look_like_loopback_are_not(host: str) -> None:
    """A name is whatever its DNS says (127.0.0.1.nip.io resolves anywhere it likes)."""
    assert not is_loopback_host(host)
    if host:
        bracketed = f"[{host}]" if ":" in host else host
        assert not plaintext_allowed(f"ws://{bracketed}:8765/v1/x?token=T", "https://broker.example.com/s")


def test_unreadable_ca_bundle_names_the_setting(tmp_path: Path) -> None:
    cfg = AgentConfig(agent_id="a", base_url="https://127.0.0.1:1", ca_bundle=str(tmp_path / "missing.pem"))
    with client(cfg, attempts=1) as http, pytest.raises(AgentHttpError) as info:
        http.fetch_signed_url()
    assert "agent.ca_bundle" in str(info.value)


def test_a_fifo_as_ca_bundle_is_refused_not_waited_on(tmp_path: Path, cert: tuple[Path, Path]) -> None:
    srv = Server(tls=cert)  # a real TLS server: the bundle is opened once the connection stands
    fifo = make_fifo(tmp_path / "ca.pem")
    try:
        cfg = AgentConfig(agent_id="a", base_url=f"https://127.0.0.1:{srv.port}", http_timeout_s=5.0,
                          ca_bundle=str(fifo))

        def fetch() -> AgentHttpError:
            with client(cfg, attempts=3) as http, pytest.raises(AgentHttpError) as info:
                http.fetch_signed_url()
            return info.value

        error = unless_blocked_on(fifo, fetch)
    finally:
        srv.close()
    assert error.outcome is Outcome.NETWORK
    assert f"cannot use the TLS CA bundle {fifo}: it is a FIFO (named pipe), not a regular file" in str(error)
    assert "set agent.ca_bundle to a PEM file" in str(error)


def test_proxy_from_the_environment_is_used(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("NO_PROXY", "no_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{server.port}")
    # The agent host does not exist: only the proxy (our server) can answer.
    cfg = AgentConfig(agent_id="agent_x", base_url="http://agents.kiosk-test.invalid", http_timeout_s=5.0)
    with client(cfg, attempts=1) as http:
        http.fetch_signed_url()
    path, headers = server.script.requests[0]
    assert path == "http://agents.kiosk-test.invalid/v1/convai/conversation/get-signed-url?agent_id=agent_x"
    assert headers["xi-api-key"] == KEY


PROXY_VARS = ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy", "https_proxy", "HTTPS_PROXY", "ALL_PROXY",
              "all_proxy")


def test_https_goes_through_the_environments_connect_proxy_with_a_private_ca(
    cert: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    srv, proxy = Server(tls=cert), ConnectProxy()
    try:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        cfg = AgentConfig(
            agent_id="a", base_url=f"https://127.0.0.1:{srv.port}", http_timeout_s=5.0, ca_bundle=str(cert[0])
        )
        with client(cfg, attempts=1) as http:
            assert "SIGNED_TOKEN_1" in http.fetch_signed_url().url
    finally:
        proxy.close()
        srv.close()
    assert proxy.targets == [f"CONNECT 127.0.0.1:{srv.port}"]


@pytest.mark.parametrize("exempt", ["127.0.0.1", "127.0.0.0/8"])
def test_no_proxy_exempts_an_address_or_its_network(
    server: Server, monkeypatch: pytest.MonkeyPatch, exempt: str
) -> None:
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{free_port()}")  # nothing listens: only a bypass works
    monkeypatch.setenv("NO_PROXY", f"other.example, {exempt}")
    with client(agent(server.port), attempts=1) as http:
        assert "SIGNED_TOKEN_1" in http.fetch_signed_url().url


def test_a_proxy_that_cannot_be_reached_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{free_port()}")
    cfg = AgentConfig(agent_id="a", base_url="https://agents.kiosk-test.invalid", http_timeout_s=5.0)
    with client(cfg, attempts=1) as http, pytest.raises(AgentHttpError) as info:
        http.fetch_signed_url()
    assert info.value.outcome is Outcome.NETWORK
    assert "the HTTP(S) proxy failed while fetching a signed URL" in str(info.value)


# -- prefetch ---------------------------------------------------------------------------------


def test_prefetch_keeps_one_url_ready_and_hands_each_out_once(server: Server) -> None:
    tokens = iter(range(1, 100))

    def next_answer() -> None:
        server.script.answers.append(
            Answer(200, {"signed_url": f"ws://127.0.0.1:1/c?agent_id=a&token=T{next(tokens)}"})
        )

    for _ in range(5):
        next_answer()
    source = SignedUrlSource(client(agent(server.port)))
    source.start()
    try:
        assert source.wait_ready(WAIT_S)
        first = source.take()
        assert first is not None
        assert "token=T1" in first
        assert source.wait_ready(WAIT_S), "taking one fetches the next"
        second = source.take()
        assert second is not None
        assert "token=T2" in second
        assert source.hits == 2
    finally:
        source.close()
    assert not source.alive


def test_prefetch_refreshes_a_waiting_url(server: Server) -> None:
    source = SignedUrlSource(client(agent(server.port)), refresh_after_s=0.0)
    source.start()
    try:
        with server.script.cond:
            assert server.script.cond.wait_for(lambda: len(server.script.requests) >= 3, WAIT_S)
    finally:
        source.close()


def test_prefetch_failure_leaves_a_miss_and_the_error(server: Server) -> None:
    server.script.default = Answer(401, {"detail": {"message": "invalid api key"}})
    source = SignedUrlSource(client(agent(server.port)), retry_initial_s=30, retry_max_s=30)
    source.start()
    try:
        assert source.wait_attempts(1, WAIT_S)
        assert source.take(wait_s=WAIT_S) is None
        assert source.last_error is not None
        assert source.last_error.outcome is Outcome.AUTH
        assert "rejected the API key" in str(source.last_error)
    finally:
        source.close()
    assert source.misses == 1, "the failure backoff (30 s) holds the next try"
    assert source.failures == 1, "the failure backoff (30 s) holds the next try"


HOSTILE_RETRY_AFTER = [
    (429, "inf"),
    (429, "nan"),
    (429, "-5"),
    (429, "3600"),
    (429, "Fri, 31 Dec 9999 23:59:59 GMT"),
    (503, "inf"),
]


@pytest.mark.realtime
@pytest.mark.parametrize(("status", "retry_after"), HOSTILE_RETRY_AFTER)
def test_the_prefetcher_tries_again_within_retry_max_s_whatever_retry_after_says(
    server: Server, status: int, retry_after: str, caplog: pytest.LogCaptureFixture
) -> None:
    server.script.answers = [Answer(status, {"detail": "slow down"}, {"Retry-After": retry_after})]
    caplog.set_level(logging.INFO, logger="device.drivers.agent_http")
    source = SignedUrlSource(client(agent(server.port), attempts=1), retry_initial_s=0.05, retry_max_s=1.0)
    source.start()
    try:
        assert source.wait_ready(WAIT_S), "the prefetcher stopped trying"
    finally:
        source.close()
    assert len(server.script.requests) == 2
    assert source.failures == 1
    lines = [r.getMessage() for r in caplog.records if "prefetching a signed URL failed" in r.getMessage()]
    assert len(lines) == 1
    assert not re.search(r"\b(inf|nan)\b", lines[0])
    waited = re.search(r"next try in ([0-9.]+) s", lines[0])
    assert waited is not None
    assert float(waited.group(1)) <= 1.0


def test_an_expired_url_is_never_handed_out(server: Server) -> None:
    # refresh later than validity: the cached URL ages past the margin and is refused.
    source = SignedUrlSource(client(agent(server.port)), refresh_after_s=3600.0, margin_s=15 * 60.0)
    source.start()
    try:
        assert source.wait_attempts(1, WAIT_S)
        assert source.last_error is None, "the fetch itself worked"
        assert source.take() is None
    finally:
        source.close()


def test_query_of_requests_carries_only_the_agent_id(server: Server) -> None:
    with client(agent(server.port)) as http:
        http.fetch_signed_url()
    path, _ = server.script.requests[0]
    assert parse_qs(urlsplit(path).query) == {"agent_id": ["agent_x"]}


# -- a stop interrupts a request in flight; the reply size is capped ------------------------------------


class RawServer:
    """Accepts one connection, reads the request, then hangs (until closed) or sends ``reply``."""

    def __init__(self, reply: bytes | None = None, body_bytes: int = 0, tls: tuple[Path, Path] | None = None) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.listener.settimeout(WAIT_S)
        self.port = self.listener.getsockname()[1]
        self.reply = reply
        self.body_bytes = body_bytes
        self.tls = tls
        self.asked = threading.Event()  # the request has arrived: the client now waits for the answer
        self.release = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self._serve, name="test-raw-http")
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            if self.tls is not None:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                ctx.load_cert_chain(str(self.tls[0]), str(self.tls[1]))
                conn = ctx.wrap_socket(conn, server_side=True)
            conn.settimeout(WAIT_S)
            if read_http_head(conn) is None:
                return
            self.asked.set()
            if self.reply is None:
                self.release.wait(WAIT_S)
                return
            try:
                conn.sendall(self.reply)
                block = b" " * 65536
                while self.sent < self.body_bytes and not self.release.is_set():
                    conn.sendall(block)
                    self.sent += len(block)
            except OSError:
                pass  # the client hung up: what a size cap does

    def close(self) -> None:
        self.release.set()
        self.listener.close()
        self.thread.join(WAIT_S)


def _fetch_in_thread(http: AgentHttp, cancel: threading.Event) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            http.fetch_signed_url(cancel)
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=run, name="test-fetch")
    t.start()
    return t, errors


@pytest.mark.parametrize("tls", [False, True])
def test_a_stop_interrupts_a_request_waiting_for_its_answer(tls: bool, cert: tuple[Path, Path]) -> None:
    srv = RawServer(tls=cert if tls else None)
    scheme = "https" if tls else "http"
    cfg = AgentConfig(
        agent_id="a", base_url=f"{scheme}://127.0.0.1:{srv.port}", http_timeout_s=120.0, ca_bundle=str(cert[0])
    )
    http = client(cfg, attempts=1)
    cancel = threading.Event()
    try:
        t, errors = _fetch_in_thread(http, cancel)
        assert srv.asked.wait(WAIT_S)
        cancel.set()
        http.interrupt()
        t.join(WAIT_S)  # far less than the 120 s the answer could otherwise be waited for
        assert not t.is_alive()
    finally:
        srv.close()
        http.close()
    assert len(errors) == 1
    assert isinstance(errors[0], AgentHttpError)
    assert errors[0].outcome is Outcome.LOCAL
    assert "cancelled" in str(errors[0])


def test_closing_the_prefetcher_interrupts_its_request_in_flight() -> None:
    srv = RawServer()
    http = client(AgentConfig(agent_id="a", base_url=f"http://127.0.0.1:{srv.port}", http_timeout_s=120.0))
    src = SignedUrlSource(http)
    try:
        src.start()
        assert srv.asked.wait(WAIT_S)
        src.stop(WAIT_S)  # raises WorkerStuckError if the request holds the thread
        assert not src.alive
        assert src.last_error is not None
        assert "cancelled" in str(src.last_error)
    finally:
        src.close()
        srv.close()


@pytest.mark.parametrize("content_length", [True, False])
def test_an_oversized_reply_is_refused_without_reading_it(content_length: bool) -> None:
    size = 60 * 1024 * 1024
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    head += f"Content-Length: {size}\r\n\r\n".encode() if content_length else b"Connection: close\r\n\r\n"
    srv = RawServer(reply=head + b'{"signed_url": "ws://127.0.0.1:1/?token=T", "pad": "', body_bytes=size)
    try:
        cfg = AgentConfig(agent_id="a", base_url=f"http://127.0.0.1:{srv.port}", http_timeout_s=30.0)
        with client(cfg, attempts=1) as http, pytest.raises(AgentHttpError) as info:
            http.fetch_signed_url()
    finally:
        srv.close()
    assert info.value.outcome is Outcome.PROTOCOL
    assert "more than 64 KiB" in str(info.value)
    assert "refused" in str(info.value)
    assert srv.sent < size  # the client stopped reading; the server could not send it all


def test_the_largest_accepted_reply_still_works(server: Server) -> None:
    signed = "ws://127.0.0.1:1/v1/convai/conversation?agent_id=a&token=BIG"
    body = {"signed_url": signed, "pad": ""}
    body["pad"] = "x" * (64 * 1024 - len(json.dumps(body)))  # exactly 64 KiB
    assert len(json.dumps(body)) == 64 * 1024
    server.script.default = Answer(body=body)
    with client(agent(server.port)) as http:
        assert "token=BIG" in http.fetch_signed_url().url
