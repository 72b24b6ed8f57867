"""REST side of the agent service: hosts, signed URLs, the token broker.

The only module that imports ``requests``. TLS verification is always on
(``agent.ca_bundle`` may name an extra CA bundle, e.g. for a TLS-inspecting
proxy); proxies come from the environment (``HTTPS_PROXY``, ``NO_PROXY``).

Every failure becomes an :class:`AgentHttpError` carrying an
:class:`~device.core.protocol.Outcome` and a message that says what to do. Neither
the API key nor a signed URL ever appears in a message or a log line.

:class:`SignedUrlSource` is a worker that keeps one fresh signed URL ready,
so a button press connects without waiting for the REST round trip.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import random
import socket
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter

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


# requests' own exception types, for the shared classifier (device.drivers.neterrors).
_REQUESTS_FAILURES: dict[type[BaseException], NetFailure] = {
    requests.exceptions.SSLError: NetFailure.TLS,
    requests.exceptions.ProxyError: NetFailure.PROXY,
    requests.exceptions.ConnectTimeout: NetFailure.CONNECT_TIMEOUT,
    requests.exceptions.Timeout: NetFailure.TIMEOUT,
}


def classify_request_error(e: requests.RequestException, what: str, host: str, timeout_s: float) -> AgentHttpError:
    """A requests exception → an error naming the failure class (DNS, TLS, proxy, connect, timeout)."""
    kind = classify(e, _REQUESTS_FAILURES)
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


class _TrackingAdapter(HTTPAdapter):
    """Records every socket it connects, so :meth:`AgentHttp.interrupt` can cut a request in flight."""

    def __init__(self, opened: Callable[[socket.socket], None]) -> None:
        self._opened = opened  # set before HTTPAdapter.__init__, which builds the pool manager
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self._track(self.poolmanager)

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> urllib3.PoolManager:
        manager: urllib3.PoolManager = super().proxy_manager_for(proxy, **kwargs)
        self._track(manager)
        return manager

    def _track(self, manager: urllib3.PoolManager) -> None:
        opened = self._opened

        class TrackedHTTP(urllib3.connection.HTTPConnection):
            def connect(self) -> None:
                super().connect()
                opened(self.sock)

        class TrackedHTTPS(urllib3.connection.HTTPSConnection):
            def connect(self) -> None:
                super().connect()
                opened(self.sock)

        class HTTPPool(urllib3.HTTPConnectionPool):
            ConnectionCls = TrackedHTTP

        class HTTPSPool(urllib3.HTTPSConnectionPool):
            ConnectionCls = TrackedHTTPS

        # A copy: urllib3 shares its default mapping between all managers.
        manager.pool_classes_by_scheme = {"http": HTTPPool, "https": HTTPSPool}


def _read_capped(resp: requests.Response, limit: int, deadline: float) -> bytes | None:
    """The reply body, or None when it is longer than ``limit`` bytes (read no further than that)."""
    length = resp.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > limit:
        return None
    body = bytearray()
    for chunk in resp.iter_content(16 * 1024):
        body += chunk
        if len(body) > limit:
            return None
        if time.monotonic() > deadline:  # a server dripping bytes must not hold us past the timeout
            raise requests.exceptions.ReadTimeout("the reply body took too long")
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
        self._http = requests.Session()
        self._sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        self._sockets_lock = threading.Lock()
        self._cancel: threading.Event | None = None  # of the fetch in flight
        adapter = _TrackingAdapter(self._opened)
        self._http.mount("http://", adapter)
        self._http.mount("https://", adapter)
        # Proxies and REQUESTS_CA_BUNDLE from the environment; verification can never be turned off.
        self._http.trust_env = True
        self._http.headers["User-Agent"] = f"{SOURCE_NAME}/{device.__version__}"
        self._lock = threading.Lock()  # one request at a time per client
        self.requests_made = 0

    def close(self) -> None:
        self._http.close()

    def interrupt(self) -> None:
        """End a request in flight at once (from any thread): set its cancel Event first, then call this.

        Shuts down the client's sockets, so a reply being waited for fails
        immediately instead of after agent.http_timeout_s; the fetch then raises
        "cancelled". Pooled idle connections are reopened by the next request.
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
        verify: bool | str = self.agent.ca_bundle or True
        if self.agent.ca_bundle:
            try:
                check_ca_bundle(self.agent.ca_bundle)
            except OSError as e:  # "TLS": not retried, the file will not change by itself
                raise AgentHttpError(
                    Outcome.NETWORK, f"{what} failed: cannot use the TLS CA bundle {self.agent.ca_bundle}: "
                    f"{e.strerror}; set agent.ca_bundle to a PEM file (or leave it empty for the system store)"
                ) from None
        broker = self.agent.connection == "broker"
        with self._lock:
            self.requests_made += 1
            with self._sockets_lock:
                self._cancel = cancel
            try:
                resp = self._http.get(
                    url,
                    headers=headers,
                    timeout=(min(timeout_s, MAX_CONNECT_TIMEOUT_S), timeout_s),
                    verify=verify,
                    allow_redirects=False,
                    stream=True,  # so an oversized reply is refused, not read into memory
                )
                with resp:
                    raw = _read_capped(resp, MAX_REPLY_BYTES, time.monotonic() + timeout_s)
            except (requests.RequestException, OSError) as e:
                if cancel.is_set():  # interrupt() cut the socket
                    raise AgentHttpError(Outcome.LOCAL, f"{what} was cancelled") from None
                if isinstance(e, requests.exceptions.ConnectTimeout):
                    raise classify_request_error(e, what, host, min(timeout_s, MAX_CONNECT_TIMEOUT_S)) from None
                if isinstance(e, requests.RequestException):
                    raise classify_request_error(e, what, host, timeout_s) from None
                raise AgentHttpError(  # e.g. an unreadable ca_bundle
                    Outcome.NETWORK, f"{what} failed: {e.strerror or e}; check agent.ca_bundle"
                ) from None
            finally:
                with self._sockets_lock:
                    self._cancel = None
        fetched_at_s = time.monotonic()
        source = "the token broker" if broker else host
        if raw is None:
            raise AgentHttpError(
                Outcome.PROTOCOL,
                f"{source} answered HTTP {resp.status_code} with more than {MAX_REPLY_BYTES // 1024} KiB; "
                "a signed URL is under 2 KB, so the reply was refused unread: check agent.base_url / "
                "agent.broker_url point at the agent service or your token broker",
            )
        if resp.status_code != 200:
            raise self._status_error(resp, raw, host, broker)
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

    def _status_error(self, resp: requests.Response, raw: bytes, host: str, broker: bool) -> AgentHttpError:
        status = resp.status_code
        outcome = classify_http_status(status)
        said = _service_message(raw)
        said = f" ({said})" if said else ""
        retry_after_s = parse_retry_after(resp.headers.get("Retry-After"), time.time())
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

    def wake(self) -> None:
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
