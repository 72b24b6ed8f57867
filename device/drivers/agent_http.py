"""REST side of the agent service: hosts, signed URLs, the token broker.

One GET per signed URL, on the standard library's :mod:`http.client`: the default
kiosk keeps a URL prefetched, so its client is resident at idle, and requests with
its dependencies costs about 6 MiB more for the same fetch (docs/bench.md, "Idle
footprint"). It behaves as requests did here: TLS verification is always on
(``agent.ca_bundle`` names the CA bundle to trust, e.g. a TLS-inspecting proxy's;
without it ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE``, then certifi's bundle);
proxies come from the environment (``HTTPS_PROXY``, ``NO_PROXY``), HTTPS through
a CONNECT tunnel; no redirects are followed.

Every failure becomes an :class:`AgentHttpError` carrying an
:class:`~device.core.protocol.Outcome` and a message that says what to do. Neither
the API key nor a signed URL ever appears in a message or a log line.

:class:`SignedUrlSource` is a worker that keeps one fresh signed URL ready,
so a button press connects without waiting for the REST round trip.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import ipaddress
import json
import logging
import os
import random
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit
from urllib.request import getproxies_environment, proxy_bypass

import device
from device.core.config import AgentConfig
from device.core.errors import SessionError
from device.core.protocol import SOURCE_NAME, Outcome, classify_http_status, parse_retry_after
from device.core.retry import retry_delay_s
from device.drivers.neterrors import NetFailure, classify, describe
from device.drivers.secrets import Secret, redact
from device.drivers.userfiles import MIB, check_file
from device.drivers.worker import Worker, WorkerExited

log = logging.getLogger(__name__)

REGION_HOSTS: dict[str, str] = {
    "global": "api.elevenlabs.io",
    "us": "api.us.elevenlabs.io",
    "eu": "api.eu.residency.elevenlabs.io",
    "in": "api.in.residency.elevenlabs.io",
    "sg": "api.sg.residency.elevenlabs.io",
}
CONVERSATION_PATH = "/v1/convai/conversation"
SIGNED_URL_PATH = "/v1/convai/conversation/get-signed-url"
# A signed URL must be opened within this time after it was issued.
SIGNED_URL_VALIDITY_S = 15 * 60.0
_MAX_BODY_CHARS = 300
# A signed URL is under 2 KB; a reply larger than this is refused unread (it would only cost memory).
MAX_REPLY_BYTES = 64 * 1024
# Connecting (TCP and TLS handshake) cannot be interrupted by a stop, so it gets at most this long;
# waiting for the answer can be interrupted and gets the full agent.http_timeout_s.
MAX_CONNECT_TIMEOUT_S = 5.0
# Debian's whole system store is about 0.2 MiB; a larger "bundle" is some other file.
CA_BUNDLE_MAX_BYTES = 8 * MIB


def check_ca_bundle(path: str) -> None:
    """Refuse (OSError) a CA bundle that is not a regular file of a bundle's size, without opening it.

    The TLS libraries open it themselves, and opening a FIFO waits for a writer: the
    thread (and a stop) would wait with it.
    """
    check_file(path, CA_BUNDLE_MAX_BYTES)


# -- URLs (pure) ----------------------------------------------------------------


@dataclass(frozen=True)
class Endpoints:
    """Where REST calls and the conversation socket go."""

    rest_base: str  # e.g. https://api.eu.residency.elevenlabs.io
    ws_base: str  # e.g. wss://api.eu.residency.elevenlabs.io

    @property
    def host(self) -> str:
        return urlsplit(self.rest_base).netloc


def endpoints_for(agent: AgentConfig) -> Endpoints:
    """The region's hosts, or ``agent.base_url`` (http:// maps to ws://, https:// to wss://)."""
    if agent.base_url:
        parts = urlsplit(agent.base_url.rstrip("/"))
        scheme = parts.scheme.lower()
        secure = scheme in ("https", "wss")
        base_path = parts.path.rstrip("/")
        rest = urlunsplit(("https" if secure else "http", parts.netloc, base_path, "", ""))
        ws = urlunsplit(("wss" if secure else "ws", parts.netloc, base_path, "", ""))
        return Endpoints(rest, ws)
    host = REGION_HOSTS[agent.region]
    return Endpoints(f"https://{host}", f"wss://{host}")


def add_client_params(url: str, version: str = device.__version__) -> str:
    """Append ``source`` and ``version`` to a (signed) conversation URL, keeping it otherwise opaque."""
    parts = urlsplit(url)
    present = {k for k, _ in parse_qsl(parts.query, keep_blank_values=True)}
    extra = [(k, v) for k, v in (("source", SOURCE_NAME), ("version", version)) if k not in present]
    if not extra:
        return url
    query = parts.query + ("&" if parts.query else "") + urlencode(extra)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def plaintext_allowed(signed_url: str, asked_url: str) -> bool:
    """Whether ``signed_url`` may be opened: wss:// always; ws:// only to a loopback host or when
    the REST/broker URL that returned it was itself plain http:// (the operator chose plaintext,
    e.g. an emulator on a laptop)."""
    parts = urlsplit(signed_url)
    if parts.scheme.lower() == "wss":
        return True
    return is_loopback_host(parts.hostname or "") or urlsplit(asked_url).scheme.lower() == "http"


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (a URL's hostname, IPv6 without brackets) is this machine: a loopback address
    (127.0.0.0/8, ::1, ::ffff:127.x.y.z) or the name ``localhost``. A name that merely starts like
    one (127.example.com, localhost.example.com) is whatever its DNS says, so it is not loopback."""
    name = host.lower()
    if name in ("localhost", "localhost."):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def public_conversation_url(endpoints: Endpoints, agent_id: str, version: str = device.__version__) -> str:
    return add_client_params(f"{endpoints.ws_base}{CONVERSATION_PATH}?{urlencode({'agent_id': agent_id})}", version)


def signed_url_request(endpoints: Endpoints, agent_id: str) -> str:
    return f"{endpoints.rest_base}{SIGNED_URL_PATH}?{urlencode({'agent_id': agent_id})}"


def broker_request(broker_url: str, agent_id: str) -> str:
    """The broker URL with ``agent_id`` added unless the operator already put it there."""
    parts = urlsplit(broker_url)
    if "agent_id" in {k for k, _ in parse_qsl(parts.query)} or not agent_id:
        return broker_url
    query = parts.query + ("&" if parts.query else "") + urlencode({"agent_id": agent_id})
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


# -- errors -------------------------------------------------------------------------


class AgentHttpError(SessionError):
    """A REST call failed; ``outcome`` says how, the message what to do."""

    def __init__(
        self,
        outcome: Outcome,
        detail: str,
        *,
        status: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        self.outcome = outcome
        self.detail = redact(detail)
        self.status = status
        self.retry_after_s = retry_after_s
        super().__init__(f"{self.detail}; {outcome.advice}")


def _service_message(body: bytes) -> str:
    """The service's own explanation from an error body (ElevenLabs: {"detail": {"message": …}})."""
    try:
        parsed: Any = json.loads(body)
    except ValueError:
        text = body.decode("utf-8", "replace").strip()
        return redact(" ".join(text.split())[:_MAX_BODY_CHARS]) if text and len(text) < 2000 else ""
    detail = parsed.get("detail", parsed) if isinstance(parsed, dict) else parsed
    if isinstance(detail, dict):
        detail = detail.get("message") or detail.get("status") or detail.get("error") or ""
    if isinstance(detail, list):
        detail = "; ".join(str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail[:3])
    return redact(" ".join(str(detail).split())[:_MAX_BODY_CHARS])


class _ProxyFailure(OSError):
    """Reaching the agent through the environment's proxy failed (the proxy, or its tunnel)."""


class _UnusableCaBundle(OSError):
    """The CA bundle to trust could not be read."""


class _ConnectTimeout(TimeoutError):
    """Connecting (TCP, proxy tunnel, TLS handshake) took longer than its timeout."""


# This module's own failure types, for the shared classifier (device.drivers.neterrors).
_FETCH_FAILURES: dict[type[BaseException], NetFailure] = {
    _ProxyFailure: NetFailure.PROXY,
    _ConnectTimeout: NetFailure.CONNECT_TIMEOUT,
}


def classify_request_error(e: BaseException, what: str, host: str, timeout_s: float) -> AgentHttpError:
    """A failed request → an error naming the failure class (DNS, TLS, proxy, connect, timeout)."""
    kind = classify(e, _FETCH_FAILURES)
    if kind is None:
        return AgentHttpError(Outcome.NETWORK, f"request to {host} failed while {what} ({type(e).__name__})")
    detail = describe(kind, e, host=host, what=what, timeout_s=timeout_s, timeout_key="agent.http_timeout_s")
    return AgentHttpError(Outcome.NETWORK, detail)


# -- the client -------------------------------------------------------------------------


@dataclass(frozen=True)
class SignedUrl:
    """A conversation URL carrying a secret token; never log ``url``."""

    url: str = field(repr=False)
    fetched_at_s: float  # time.monotonic() when it was issued

    def age_s(self, now_s: float | None = None) -> float:
        return (time.monotonic() if now_s is None else now_s) - self.fetched_at_s


def _environment_proxy(url: str) -> str | None:
    """The proxy the environment names for ``url``, or None; requests' rules (select_proxy, no_proxy)."""
    parts = urlsplit(url)
    host = parts.hostname
    if not host or _bypasses_proxy(host, parts.port):
        return None
    proxies = getproxies_environment()
    scheme = parts.scheme.lower()
    for key in (f"{scheme}://{host}", scheme, f"all://{host}", "all"):
        if proxies.get(key):
            return proxies[key]
    return None


def _bypasses_proxy(host: str, port: int | None) -> bool:
    """Whether NO_PROXY exempts ``host``: an address in a listed network, a listed address, a name suffix."""
    entries = [e for e in (os.environ.get("no_proxy") or os.environ.get("NO_PROXY") or "").replace(" ", "").split(",")
               if e]
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for entry in entries:
        if address is not None:
            with contextlib.suppress(ValueError):
                if "/" in entry and address in ipaddress.ip_network(entry, strict=False):
                    return True
            if host == entry:
                return True
        elif host.endswith(entry) or f"{host}:{port}".endswith(entry):
            return True
    try:
        return bool(proxy_bypass(host))
    except (TypeError, socket.gaierror):  # as requests: an exemption that cannot be decided is none
        return False


def _default_ca_bundle() -> str | None:
    """What requests trusted without ``verify``: the environment's bundle, then certifi's (None: the system's)."""
    named = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if named:
        return named
    try:
        import certifi  # requests' dependency: the bundle a kiosk has always verified with
    except ImportError:
        return None
    return str(certifi.where())


def _tls_context(bundle: str | None) -> ssl.SSLContext:
    """Verifying context (hostname and chain) trusting ``bundle`` (a file or, from the environment, a directory)."""
    if bundle and os.path.isdir(bundle):
        context = ssl.create_default_context(capath=bundle)
    else:
        context = ssl.create_default_context(cafile=bundle)
    context.set_alpn_protocols(["http/1.1"])
    return context


def _proxy_authorization(proxy: str) -> dict[str, str]:
    parts = urlsplit(proxy)
    if parts.username is None:
        return {}
    pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
    return {"Proxy-Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}


def _connection(
    url: str, context: ssl.SSLContext | None, timeout_s: float
) -> tuple[http.client.HTTPConnection, str, dict[str, str], bool]:
    """(connection, request target, extra headers, through a proxy) for ``url``, not yet connected."""
    parts = urlsplit(url)
    secure = parts.scheme.lower() == "https"
    host = parts.hostname or ""
    port = parts.port or (443 if secure else 80)
    target = urlunsplit(("", "", parts.path or "/", parts.query, ""))
    proxy = _environment_proxy(url)
    if proxy is None:
        if secure:
            return http.client.HTTPSConnection(host, port, timeout=timeout_s, context=context), target, {}, False
        return http.client.HTTPConnection(host, port, timeout=timeout_s), target, {}, False
    proxy = proxy if "://" in proxy else f"http://{proxy}"
    via = urlsplit(proxy)
    if via.scheme.lower() != "http" or not via.hostname:
        raise _ProxyFailure(f"unsupported proxy scheme {via.scheme!r}; use an http:// proxy")
    auth = _proxy_authorization(proxy)
    if secure:
        tunnel = http.client.HTTPSConnection(via.hostname, via.port or 80, timeout=timeout_s, context=context)
        tunnel.set_tunnel(host, port, headers=auth)
        return tunnel, target, {}, True
    plain = http.client.HTTPConnection(via.hostname, via.port or 80, timeout=timeout_s)
    return plain, urlunsplit((parts.scheme, parts.netloc, parts.path or "/", parts.query, "")), auth, True


def _connect(conn: http.client.HTTPConnection, proxied: bool) -> None:
    """Connect, naming a timeout as a connect timeout and any other non-TLS failure through a proxy as the proxy's."""
    try:
        conn.connect()
    except ssl.SSLError:
        raise
    except TimeoutError as e:
        raise _ConnectTimeout("connecting timed out") from e
    except OSError as e:
        if proxied:
            raise _ProxyFailure("the proxy failed") from e
        raise


def _read_capped(resp: http.client.HTTPResponse, limit: int, deadline: float) -> bytes | None:
    """The reply body, or None when it is longer than ``limit`` bytes (read no further than that)."""
    length = resp.getheader("Content-Length", "") or ""
    if length.isdigit() and int(length) > limit:
        return None
    body = bytearray()
    while chunk := resp.read1(16 * 1024):  # what has arrived, so the deadline is checked as it drips
        body += chunk
        if len(body) > limit:
            return None
        if time.monotonic() > deadline:  # a server dripping bytes must not hold us past the timeout
            raise TimeoutError("the reply body took too long")
    return bytes(body)


def _shutdown(sock: socket.socket) -> None:
    # socket.socket's own shutdown, also for a TLS socket: ssl.SSLSocket.shutdown would drop its
    # TLS state under the thread that is reading it.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class AgentHttp:
    """REST calls to the agent service (or the operator's token broker)."""

    def __init__(
        self,
        agent: AgentConfig,
        api_key: Secret | None,
        *,
        attempts: int = 3,
        retry_initial_s: float = 0.5,
        retry_max_s: float = 8.0,
        rng: random.Random | None = None,
    ) -> None:
        self.agent = agent
        self.endpoints = endpoints_for(agent)
        self._api_key = api_key
        self._attempts = max(1, attempts)
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._rng = rng or random.Random()
        self._sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        self._sockets_lock = threading.Lock()
        self._cancel: threading.Event | None = None  # of the fetch in flight
        self._headers = {"User-Agent": f"{SOURCE_NAME}/{device.__version__}", "Accept": "*/*"}
        self._lock = threading.Lock()  # one request at a time per client
        self.requests_made = 0

    def close(self) -> None:
        """Nothing is kept open between requests (a signed URL is fetched every few minutes at most)."""

    def interrupt(self) -> None:
        """End a request in flight at once (from any thread): set its cancel Event first, then call this.

        Shuts down the client's sockets, so a reply being waited for fails
        immediately instead of after agent.http_timeout_s; the fetch then raises
        "cancelled".
        """
        with self._sockets_lock:
            socks = list(self._sockets)
        for sock in socks:
            _shutdown(sock)

    def _opened(self, sock: socket.socket) -> None:
        with self._sockets_lock:
            self._sockets.add(sock)
            cancel = self._cancel
        if cancel is not None and cancel.is_set():  # interrupt() ran before this socket existed
            _shutdown(sock)

    def __enter__(self) -> AgentHttp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def needs_fetch(self) -> bool:
        return self.agent.connection != "public"

    def public_url(self) -> str:
        return public_conversation_url(self.endpoints, self.agent.agent_id)

    def conversation_url(self, cancel: threading.Event | None = None) -> str:
        """The URL to open now: public, or a freshly fetched signed one."""
        if not self.needs_fetch:
            return self.public_url()
        return self.fetch_signed_url(cancel).url

    def fetch_signed_url(self, cancel: threading.Event | None = None) -> SignedUrl:
        """GET a signed URL (API key or broker); retries 5xx and network errors with backoff."""
        if self.agent.connection == "broker":
            url = broker_request(self.agent.broker_url, self.agent.agent_id)
            host = urlsplit(self.agent.broker_url).netloc
            what = "asking the token broker for a signed URL"
            headers = {"Authorization": f"Bearer {self._api_key.reveal()}"} if self._api_key else {}
        else:
            if self._api_key is None:
                raise AgentHttpError(
                    Outcome.AUTH,
                    "agent.connection = \"signed_url\" needs an API key, and none was found; give it as "
                    "the systemd credential elevenlabs_api_key or in agent.api_key_file (or use "
                    "connection = \"public\" / \"broker\")",
                )
            url = signed_url_request(self.endpoints, self.agent.agent_id)
            host = self.endpoints.host
            what = "fetching a signed URL"
            headers = {"xi-api-key": self._api_key.reveal()}
        cancel = cancel or threading.Event()
        attempt = 0
        while True:
            if cancel.is_set():
                raise AgentHttpError(Outcome.LOCAL, f"{what} was cancelled")
            try:
                return self._fetch_once(url, headers, host, what, cancel)
            except AgentHttpError as e:
                attempt += 1
                retry = e.outcome in (Outcome.SERVER_ERROR, Outcome.NETWORK) and "TLS" not in e.detail
                if not retry or attempt >= self._attempts:
                    raise
                if e.retry_after_s is not None and e.retry_after_s > self._retry_max_s:
                    raise  # longer than this client waits: the caller's own retry (capped) decides
                delay_s = retry_delay_s(
                    attempt - 1, self._retry_initial_s, self._retry_max_s, e.retry_after_s, rng=self._rng
                )
                log.info("%s; retry %d of %d in %.1f s", e.detail, attempt, self._attempts - 1, delay_s)
                if cancel.wait(delay_s):
                    raise AgentHttpError(Outcome.LOCAL, f"{what} was cancelled") from None

    def _fetch_once(
        self, url: str, headers: dict[str, str], host: str, what: str, cancel: threading.Event
    ) -> SignedUrl:
        timeout_s = self.agent.http_timeout_s
        if self.agent.ca_bundle:
            try:
                check_ca_bundle(self.agent.ca_bundle)
            except OSError as e:  # "TLS": not retried, the file will not change by itself
                raise AgentHttpError(
                    Outcome.NETWORK, f"{what} failed: cannot use the TLS CA bundle {self.agent.ca_bundle}: "
                    f"{e.strerror}; set agent.ca_bundle to a PEM file (or leave it empty for the system store)"
                ) from None
        broker = self.agent.connection == "broker"
        connect_timeout_s = min(timeout_s, MAX_CONNECT_TIMEOUT_S)
        with self._lock:
            self.requests_made += 1
            with self._sockets_lock:
                self._cancel = cancel
            try:
                status, reply_headers, raw = self._get(url, headers, connect_timeout_s, timeout_s)
            except (http.client.HTTPException, OSError) as e:
                if cancel.is_set():  # interrupt() cut the socket
                    raise AgentHttpError(Outcome.LOCAL, f"{what} was cancelled") from None
                if isinstance(e, _ConnectTimeout):
                    raise classify_request_error(e, what, host, connect_timeout_s) from None
                if isinstance(e, _UnusableCaBundle):
                    raise AgentHttpError(
                        Outcome.NETWORK, f"{what} failed: {e.strerror or e}; check agent.ca_bundle"
                    ) from None
                raise classify_request_error(e, what, host, timeout_s) from None
            finally:
                with self._sockets_lock:
                    self._cancel = None
        fetched_at_s = time.monotonic()
        source = "the token broker" if broker else host
        if raw is None:
            raise AgentHttpError(
                Outcome.PROTOCOL,
                f"{source} answered HTTP {status} with more than {MAX_REPLY_BYTES // 1024} KiB; "
                "a signed URL is under 2 KB, so the reply was refused unread: check agent.base_url / "
                "agent.broker_url point at the agent service or your token broker",
            )
        if status != 200:
            raise self._status_error(status, reply_headers, raw, host, broker)
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = None
        signed = body.get("signed_url") if isinstance(body, dict) else None
        if not isinstance(signed, str) or not signed.startswith(("ws://", "wss://")):
            raise AgentHttpError(
                Outcome.PROTOCOL,
                f"{source} answered without a usable signed URL; it must return "
                "{\"signed_url\": \"wss://…\"}",
            )
        if not plaintext_allowed(signed, url):
            raise AgentHttpError(
                Outcome.PROTOCOL,
                f"{source} answered with an unencrypted ws:// signed URL; its token would cross the "
                "network in the clear, so it is refused: the URL must start with wss://",
            )
        return SignedUrl(add_client_params(signed), fetched_at_s)

    def _get(
        self, url: str, headers: dict[str, str], connect_timeout_s: float, timeout_s: float
    ) -> tuple[int, http.client.HTTPMessage, bytes | None]:
        """(status, headers, body or None when over MAX_REPLY_BYTES) of one GET on a connection of its own."""
        context = None
        if urlsplit(url).scheme.lower() == "https":
            try:
                context = _tls_context(self.agent.ca_bundle or _default_ca_bundle())
            except ssl.SSLError:
                raise  # not PEM: a TLS failure, as requests reported it
            except OSError as e:  # e.g. an unreadable ca_bundle
                raise _UnusableCaBundle(e.errno, e.strerror) from None
        conn, target, extra, proxied = _connection(url, context, connect_timeout_s)
        try:
            _connect(conn, proxied)
            assert conn.sock is not None  # connected
            self._opened(conn.sock)
            conn.sock.settimeout(timeout_s)  # connecting had its own, shorter timeout
            conn.request("GET", target, headers={**self._headers, **headers, **extra, "Connection": "close"})
            resp = conn.getresponse()
            return resp.status, resp.headers, _read_capped(resp, MAX_REPLY_BYTES, time.monotonic() + timeout_s)
        finally:
            conn.close()

    def _status_error(
        self, status: int, reply_headers: http.client.HTTPMessage, raw: bytes, host: str, broker: bool
    ) -> AgentHttpError:
        outcome = classify_http_status(status)
        said = _service_message(raw)
        said = f" ({said})" if said else ""
        retry_after_s = parse_retry_after(reply_headers.get("Retry-After"), time.time())
        who = f"the token broker {host}" if broker else host
        if outcome is Outcome.AUTH:
            what = "refused this device's token" if broker else "rejected the API key"
            detail = f"{who} {what} (HTTP {status}){said}"
        elif outcome is Outcome.NOT_FOUND:
            detail = f"{who} does not know agent {self.agent.agent_id!r} (HTTP 404){said}"
        elif outcome is Outcome.RATE_LIMITED:
            # The server's own figure, named as such: the device waits at most session.retry_max_s.
            wait = f", Retry-After {retry_after_s:g} s" if retry_after_s is not None else ""
            detail = f"{who} is rate limiting (HTTP 429{wait}){said}"
        elif outcome is Outcome.SERVER_ERROR:
            detail = f"{who} failed (HTTP {status}){said}"
        elif outcome is Outcome.MISCONFIGURED:
            detail = f"{who} refused the request (HTTP {status}){said}"
        else:
            detail = f"{who} answered HTTP {status} unexpectedly{said}"
        return AgentHttpError(outcome, detail, status=status, retry_after_s=retry_after_s)


# -- prefetch ---------------------------------------------------------------------------


class SignedUrlSource(Worker):
    """Keeps one fresh signed URL so a press connects without the REST round trip.

    A URL is handed out at most once (:meth:`take`) and only while it has
    ``margin_s`` of its 15-minute validity left; the worker fetches the next one
    at once and refreshes a waiting one after ``refresh_after_s``. Failures are
    retried with capped, jittered backoff (honouring Retry-After up to ``retry_max_s``).
    """

    def __init__(
        self,
        http: AgentHttp,
        *,
        refresh_after_s: float = 10 * 60.0,
        margin_s: float = 90.0,
        retry_initial_s: float = 1.0,
        retry_max_s: float = 60.0,
        on_exit: Callable[[WorkerExited], None] | None = None,
        name: str = "signed-url",
    ) -> None:
        super().__init__(name, on_exit)
        self._http = http
        self._refresh_after_s = refresh_after_s
        self._max_age_s = SIGNED_URL_VALIDITY_S - margin_s
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._cond = threading.Condition()
        self._url: SignedUrl | None = None
        self._fetching = False
        self._kicked = False
        self._cancel = threading.Event()  # interrupts the client's retry backoff on stop
        self.last_error: AgentHttpError | None = None
        self.hits = 0
        self.misses = 0
        self.fetches = 0
        self.failures = 0
        self._attempts_done = 0

    def unblock(self) -> None:
        self._cancel.set()
        self._http.interrupt()  # a request in flight ends now, not after agent.http_timeout_s
        with self._cond:
            self._kicked = True
            self._cond.notify_all()

    def take(self, wait_s: float = 0.0) -> str | None:
        """A fresh signed URL (consumed), or None; waits up to ``wait_s`` for a fetch in flight."""
        deadline = time.monotonic() + wait_s
        with self._cond:
            while True:
                url = self._url
                if url is not None and url.age_s() < self._max_age_s:
                    self._url = None
                    self.hits += 1
                    self._kicked = True
                    self._cond.notify_all()
                    return url.url
                remaining = deadline - time.monotonic()
                if not self._fetching or remaining <= 0 or self.stopping:
                    self.misses += 1
                    self._kicked = True
                    self._cond.notify_all()
                    return None
                self._cond.wait(remaining)

    @property
    def ready(self) -> bool:
        with self._cond:
            return self._url is not None and self._url.age_s() < self._max_age_s

    def wait_ready(self, timeout_s: float) -> bool:
        """True once a URL is ready (for start-up and tests)."""
        with self._cond:
            return self._cond.wait_for(
                lambda: self.stopping or (self._url is not None and self._url.age_s() < self._max_age_s),
                timeout_s,
            ) and not self.stopping

    def wait_attempts(self, n: int, timeout_s: float) -> bool:
        """True once ``n`` fetches have finished, successful or not (for start-up checks and tests)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._attempts_done >= n, timeout_s)

    def _sleep(self, delay_s: float) -> None:
        """Wait up to delay_s (in slices, beating) unless kicked or stopped."""
        deadline = time.monotonic() + delay_s
        with self._cond:
            while not self._kicked and not self.stopping:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(min(remaining, 5.0))
                self.beat()
            self._kicked = False

    def run(self) -> None:
        attempt = 0
        while not self.stopping:
            self.beat()
            with self._cond:
                current = self._url
            if current is not None and current.age_s() < self._refresh_after_s:
                self._sleep(self._refresh_after_s - current.age_s())
                continue
            with self._cond:
                self._fetching = True
            try:
                self.fetches += 1
                url = self._http.fetch_signed_url(self._cancel)
            except AgentHttpError as e:
                self.failures += 1
                self.last_error = e
                delay_s = retry_delay_s(attempt, self._retry_initial_s, self._retry_max_s, e.retry_after_s)
                attempt += 1
                log.warning("prefetching a signed URL failed: %s (next try in %.1f s)", e, delay_s)
                with self._cond:
                    self._fetching = False
                    self._kicked = False
                    self._attempts_done += 1
                    self._cond.notify_all()
                deadline = time.monotonic() + delay_s
                while not self.wait(min(5.0, max(0.0, deadline - time.monotonic()))):
                    self.beat()
                    if time.monotonic() >= deadline:
                        break
                continue
            attempt = 0
            self.last_error = None
            with self._cond:
                self._url = url
                self._fetching = False
                self._kicked = False
                self._attempts_done += 1
                self._cond.notify_all()
            log.debug("signed URL prefetched")
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        """Stop (a request in flight is interrupted) and close the client."""
        self.stop(self._http.agent.http_timeout_s + 5.0)
        self._http.close()
