"""The kiosk's screen server: one page and a live stream of what it shows (docs/screen.md).

One thread (``screen``) owns the listening TCP socket, every browser's connection and the
:class:`~device.core.captions.Captions` model. Telemetry reaches it through a bounded queue
that the subscriber callback only appends to (the publishers are the conversation's threads:
they must never wait for a browser). The thread feeds the model, wakes when the next word is
due to be heard, and sends each changed view to every browser as a Server-Sent Event::

    GET  /          the page (device/data/screen/index.html)
    GET  /events    text/event-stream: the current view at once, then one message per change
    POST /talk      body start | press | release | end (only with screen.talk_button; else 403)

Each event is ``{"view": …, "server_s": …, "talk": …}``: ``server_s`` is this process's monotonic
clock when the message was made (tests line it up with when the words were heard).

A browser that reads too slowly never holds anything up: its connection keeps at most the one
message being sent plus the newest view (views are whole, so skipping one loses nothing), and a
browser that takes nothing for :data:`WRITE_STALL_S` is dropped (counted, logged once a minute).
At most ``screen.max_clients`` event streams at once; more are answered 503. With a token
configured every request must carry it (``?token=`` or ``Authorization: Bearer``); it is compared
in constant time and never logged, nor is any request's URL.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import hmac
import json
import logging
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from device.core.captions import KINDS_USED, Captions
from device.core.config import ScreenConfig
from device.core.errors import DeviceError, ExitCode
from device.core.events import ButtonEvent, Command
from device.drivers.secrets import Secret
from device.drivers.worker import Worker, WorkerExited

log = logging.getLogger(__name__)

SOURCE = "screen"  # the button events' source (the controller tells it from the physical button)
TALK_ACTIONS = ("start", "press", "release", "end")
MAX_QUEUED_RECORDS = 4096  # telemetry waiting for the thread (a few seconds of a busy conversation)
MAX_REQUEST_BYTES = 8192  # request line and headers
MAX_BODY_BYTES = 256
SEND_BUFFER_BYTES = 64 * 1024  # the kernel's share of a browser's backlog
MAX_OUTPUT_BYTES = 256 * 1024  # ours (one view is at most ~30 KB)
REQUEST_TIMEOUT_S = 10.0  # a connection that has not sent its whole request by then is closed
WRITE_STALL_S = 5.0  # an event stream that takes nothing of its pending data for this long is dropped
KEEPALIVE_S = 15.0  # a comment line on idle streams, so a dead browser shows up as a failed write
RETRY_MS = 1000  # how soon a browser reconnects after the stream ended (a daemon restart)
POLL_S = 0.5
DROP_LOG_EVERY_S = 60.0
LISTEN_BACKLOG = 16
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-store\r\n"
    b"X-Content-Type-Options: nosniff\r\nConnection: keep-alive\r\n\r\n"
    + f"retry: {RETRY_MS}\n\n".encode()
)


class ScreenError(DeviceError):
    """The screen server could not be set up."""

    exit_code = ExitCode.UNAVAILABLE


class Record(Protocol):
    """A telemetry record (:class:`device.app.telemetry.Telemetry`), as far as the screen reads it."""

    @property
    def t_s(self) -> float: ...
    @property
    def kind(self) -> str: ...
    @property
    def data(self) -> Mapping[str, Any]: ...


Subscribe = Callable[[Callable[[Record], None]], Callable[[], None]]  # TelemetryBus.subscribe


def summary(cfg: ScreenConfig) -> str:
    """One line for ``run --check`` and ``doctor``: where the screen is served and what it allows."""
    if not cfg.enabled:
        return "screen: off"
    host = cfg.bind if ":" not in cfg.bind else f"[{cfg.bind}]"
    what = "talk button on" if cfg.talk_button else "read-only"
    reach = "this machine only" if cfg.loopback else "other machines too, token required"
    history = ", history kept" if cfg.keep_history else ""
    return f"screen: http://{host}:{cfg.port}/ ({what}, {reach}, up to {cfg.max_clients} browsers{history})"


def load_page() -> bytes:
    """The page, from the package's data."""
    return (resources.files("device") / "data" / "screen" / "index.html").read_bytes()


@dataclass(eq=False)
class _Conn:
    """One browser connection: a request being read, or an event stream being written."""

    sock: socket.socket
    opened_s: float
    last_progress_s: float
    inbuf: bytearray = field(default_factory=bytearray)
    outbuf: bytearray = field(default_factory=bytearray)
    stream: bool = False  # an event stream (else one request, one answer, closed)
    closing: bool = False  # close once outbuf is out
    stale: bool = False  # a newer view is waiting until outbuf is out
    events: int = 0  # what it is registered for in the selector


@dataclass
class ScreenCounts:
    """What the server counts (read by the tests; written only by its thread)."""

    messages_sent: int = 0
    clients_dropped: int = 0  # event streams closed for not reading
    refused: int = 0  # event streams answered 503 (max_clients) and connections beyond the limit
    records_dropped: int = 0  # telemetry the thread did not take in time (the view may then be off)
    _logged: int = 0
    _log_s: float = -DROP_LOG_EVERY_S

    def dropped(self, why: str, now_s: float) -> None:
        """A browser was dropped: counted, and logged at most once a minute (one that loops must not flood)."""
        self.clients_dropped += 1
        if now_s - self._log_s >= DROP_LOG_EVERY_S:
            log.warning(
                "screen: dropped %d browser connection(s) since the last report, the latest because %s",
                self.clients_dropped - self._logged,
                why,
            )
            self._log_s = now_s
            self._logged = self.clients_dropped


@dataclass(frozen=True)
class _Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


class ScreenServer(Worker):
    """Serves the screen page and its event stream on its own thread (see the module's docstring)."""

    def __init__(
        self,
        cfg: ScreenConfig,
        token: Secret | None,
        subscribe: Subscribe,
        post: Callable[[object], bool],
        *,
        port: int | None = None,
        page: bytes | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_exit: Callable[[WorkerExited], None] | None = None,
    ) -> None:
        super().__init__("screen", on_exit)
        self.cfg = cfg
        self._token = token.reveal().encode("utf-8") if token is not None else None
        self._subscribe = subscribe
        self._post = post
        self._port = cfg.port if port is None else port
        self._page = page if page is not None else load_page()
        self._clock = clock
        self._records: collections.deque[Record] = collections.deque()
        self._captions = Captions(keep_history=cfg.keep_history)
        self._listener: socket.socket | None = None
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._conns: list[_Conn] = []
        self._unsubscribe: Callable[[], None] | None = None
        self._closed = False
        self._wake_lock = threading.Lock()  # guards _closed against a publisher's wake-up
        self._last_message = b""
        self.counts = ScreenCounts()

    # -- lifetime ------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        """The port it listens on (the one the system chose when asked for 0)."""
        if self._listener is None:
            return self._port
        return int(self._listener.getsockname()[1])

    @property
    def url(self) -> str:
        host = self.cfg.bind if ":" not in self.cfg.bind else f"[{self.cfg.bind}]"
        return f"http://{host}:{self.port}/"

    def bind(self) -> None:
        """Listen on screen.bind:port (ScreenError when it cannot)."""
        self._listener = listen(self.cfg, self._port)

    def start(self) -> None:
        if self._listener is None:
            self.bind()
        self._unsubscribe = self._subscribe(self._on_telemetry)
        super().start()
        log.info("screen: serving %s", self.url)

    def unblock(self) -> None:
        self._wake()

    def close(self) -> None:
        """Stop serving and release the socket and every connection (idempotent)."""
        self.stop()
        if not self.alive:
            self._close_all()

    def _close_all(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        with self._wake_lock:
            if self._closed:
                return
            self._closed = True
        for c in self._conns:
            c.sock.close()
        self._conns.clear()
        self._selector.close()
        if self._listener is not None:
            self._listener.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- telemetry (publishers' threads: append and wake, nothing else) ------------------------
    def _on_telemetry(self, record: Record) -> None:
        if record.kind not in KINDS_USED:
            return
        if len(self._records) >= MAX_QUEUED_RECORDS:
            self.counts.records_dropped += 1
            if self.counts.records_dropped == 1:  # once: the thread is stuck or starved, the view may lag
                log.warning("screen: its thread is not keeping up; telemetry for the screen is being dropped")
            return
        self._records.append(record)
        self._wake()

    def _wake(self) -> None:
        with self._wake_lock:
            if self._closed:
                return  # the pipe is gone; its number may belong to someone else
            with contextlib.suppress(OSError):  # full: a wake-up is pending anyway
                os.write(self._wake_w, b"x")

    # -- the thread ----------------------------------------------------------------------------
    def run(self) -> None:
        assert self._listener is not None
        try:
            self._selector.register(self._listener, selectors.EVENT_READ)
            self._selector.register(self._wake_r, selectors.EVENT_READ)
            self._last_message = self._message()
            while not self.stopping:
                self.beat()
                self._serve_once()
        finally:
            self._close_all()

    def _serve_once(self) -> None:
        now = self._clock()
        changed = self._take_records()
        changed = self._captions.tick(now) or changed
        if changed:
            self._broadcast()
        timeout_s = POLL_S
        due = self._captions.next_due_s(now)
        if due is not None:
            timeout_s = min(timeout_s, due)
        for key, mask in self._selector.select(max(0.0, timeout_s)):
            obj = key.fileobj
            if obj == self._wake_r:
                with contextlib.suppress(OSError):
                    os.read(self._wake_r, 4096)
            elif obj is self._listener:
                self._accept()
            else:
                conn: _Conn = key.data
                if conn not in self._conns:
                    continue
                if mask & selectors.EVENT_WRITE:
                    self._write(conn)
                if mask & selectors.EVENT_READ and conn in self._conns:
                    self._read(conn)
        self._expire(self._clock())

    def _take_records(self) -> bool:
        changed = False
        while self._records:
            record = self._records.popleft()
            changed = self._captions.feed(record.kind, record.t_s, record.data) or changed
        return changed

    def _message(self) -> bytes:
        payload = {"view": self._captions.view(), "server_s": self._clock(), "talk": self.cfg.talk_button}
        return b"data: " + json.dumps(payload, separators=(",", ":")).encode("utf-8") + b"\n\n"

    def _broadcast(self) -> None:
        self._last_message = self._message()
        for conn in list(self._conns):
            if conn.stream:
                self._queue_view(conn)

    def _queue_view(self, conn: _Conn) -> None:
        if conn.outbuf:
            conn.stale = True  # sent when what is pending is out: only the newest view matters
            return
        conn.outbuf += self._last_message
        self.counts.messages_sent += 1
        self._write(conn)

    # -- connections ---------------------------------------------------------------------------
    def _accept(self) -> None:
        assert self._listener is not None
        for _ in range(LISTEN_BACKLOG):
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return  # none left
            if len(self._conns) >= 2 * self.cfg.max_clients + 4:  # requests in flight besides the streams
                self.counts.refused += 1
                sock.close()
                continue
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
            now = self._clock()
            conn = _Conn(sock, now, now)
            self._conns.append(conn)
            self._register(conn)

    def _register(self, conn: _Conn) -> None:
        events = selectors.EVENT_WRITE if conn.outbuf else 0
        if not conn.closing and (conn.stream or not conn.outbuf):
            events |= selectors.EVENT_READ  # a stream's reads only notice that it went away
        if events == conn.events:
            return
        if conn.events == 0:
            self._selector.register(conn.sock, events, conn)
        elif events == 0:
            self._selector.unregister(conn.sock)
        else:
            self._selector.modify(conn.sock, events, conn)
        conn.events = events

    def _drop(self, conn: _Conn, why: str | None = None) -> None:
        if conn not in self._conns:
            return
        self._conns.remove(conn)
        if conn.events:
            self._selector.unregister(conn.sock)
            conn.events = 0
        conn.sock.close()
        if why is not None:
            self.counts.dropped(why, self._clock())

    def _write(self, conn: _Conn) -> None:
        while conn.outbuf:
            try:
                sent = conn.sock.send(conn.outbuf)
            except BlockingIOError:
                break
            except OSError:
                self._drop(conn)
                return
            del conn.outbuf[:sent]
            conn.last_progress_s = self._clock()
            if not conn.outbuf and conn.stale:
                conn.stale = False
                conn.outbuf += self._last_message
                self.counts.messages_sent += 1
        if not conn.outbuf and conn.closing:
            self._drop(conn)
            return
        if len(conn.outbuf) > MAX_OUTPUT_BYTES:
            self._drop(conn, f"more than {MAX_OUTPUT_BYTES} bytes were waiting for it")
            return
        self._register(conn)

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            self._drop(conn)
            return
        if not data:
            self._drop(conn)  # the browser went away (or sent its request and shut down: nothing to answer)
            return
        if conn.stream:
            return  # nothing is expected from a stream; whatever comes is ignored
        conn.inbuf += data
        request = self._parse(conn)
        if request is not None:
            self._answer(conn, request)

    def _expire(self, now: float) -> None:
        for conn in list(self._conns):
            if conn.stream:
                if conn.outbuf and now - conn.last_progress_s >= WRITE_STALL_S:
                    self._drop(conn, f"it read nothing for {WRITE_STALL_S:.0f} s")
                elif not conn.outbuf and now - conn.last_progress_s >= KEEPALIVE_S:
                    conn.outbuf += b": keepalive\n\n"
                    self._write(conn)
            elif now - conn.opened_s >= REQUEST_TIMEOUT_S:
                self._drop(conn)

    # -- HTTP ----------------------------------------------------------------------------------
    def _parse(self, conn: _Conn) -> _Request | None:
        """The request once it is complete; None while more is to come (or it was answered with an error)."""
        parsed = parse_request(bytes(conn.inbuf))
        if isinstance(parsed, tuple):
            self._respond(conn, parsed[0], "text/plain", parsed[1])
            return None
        return parsed

    def _answer(self, conn: _Conn, req: _Request) -> None:
        if not host_allowed(self.cfg, req.headers.get("host", "")):
            self._respond(conn, 421, "text/plain", b"this screen answers only to its own address\n")
            return
        if not authorized(req, self._token):
            self._respond(conn, 401, "text/plain", b"a token is needed: open the page with ?token=...\n")
            return
        if req.path in ("/", "/index.html"):
            if req.method != "GET":
                self._respond(conn, 405, "text/plain", b"GET only\n")
                return
            self._respond(conn, 200, "text/html; charset=utf-8", self._page)
        elif req.path == "/events":
            if req.method != "GET":
                self._respond(conn, 405, "text/plain", b"GET only\n")
                return
            self._open_stream(conn)
        elif req.path == "/talk":
            self._talk(conn, req)
        else:
            self._respond(conn, 404, "text/plain", b"not found\n")

    def _open_stream(self, conn: _Conn) -> None:
        streams = sum(1 for c in self._conns if c.stream)
        if streams >= self.cfg.max_clients:
            self.counts.refused += 1
            self._respond(conn, 503, "text/plain", b"too many screens are connected (screen.max_clients)\n")
            return
        conn.stream = True
        conn.inbuf.clear()
        conn.outbuf += STREAM_HEAD + self._last_message  # a page opened mid-conversation shows where it is at once
        self.counts.messages_sent += 1
        self._write(conn)

    def _talk(self, conn: _Conn, req: _Request) -> None:
        if req.method != "POST":
            self._respond(conn, 405, "text/plain", b"POST only\n")
            return
        if not self.cfg.talk_button:
            self._respond(conn, 403, "text/plain", b"the talk button is off (screen.talk_button)\n")
            return
        origin = req.headers.get("origin")
        if origin is not None and urlsplit(origin).netloc != req.headers.get("host", ""):
            self._respond(conn, 403, "text/plain", b"only the screen's own page may talk\n")
            return
        action = talk_action(req.body)
        if action not in TALK_ACTIONS:
            self._respond(conn, 400, "text/plain", b"say one of: start, press, release, end\n")
            return
        if self._post(talk_event(action, self._clock())):
            self._respond(conn, 204, "", b"")
        else:
            self._respond(conn, 503, "text/plain", b"busy: try again\n")

    def _respond(self, conn: _Conn, status: int, content_type: str, body: bytes) -> None:
        conn.inbuf.clear()
        conn.closing = True
        conn.outbuf += response(status, content_type, body)
        self._write(conn)


def listen(cfg: ScreenConfig, port: int) -> socket.socket:
    """A non-blocking listening socket on screen.bind:port (ScreenError when it cannot be had)."""
    try:
        infos = socket.getaddrinfo(cfg.bind.strip("[]"), port, type=socket.SOCK_STREAM)
        sock = socket.create_server((infos[0][4][0], port), family=infos[0][0], backlog=LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError as e:
        raise ScreenError(
            f"cannot serve the screen on {cfg.bind}:{port}: {e.strerror or e}; is another program "
            "using that port? set screen.port (or screen.enabled = false)"
        ) from None
    if not cfg.loopback:
        log.warning(
            "screen: serving on %s:%d, reachable from other machines; the captions are the visitors' words "
            "(every request must carry the token)",
            cfg.bind,
            sock.getsockname()[1],
        )
    return sock


def parse_request(buf: bytes) -> _Request | tuple[int, bytes] | None:
    """A complete request, (status, message) for a bad one, or None while more is to come."""
    head, sep, rest = buf.partition(b"\r\n\r\n")
    if len(head) > MAX_REQUEST_BYTES:
        return 431, b"request too large\n"
    if not sep:
        return None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return 400, b"bad request\n"
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        length = -1
    if length < 0 or length > MAX_BODY_BYTES:
        return 413, b"body too large\n"
    if len(rest) < length:
        return None
    target = urlsplit(parts[1])
    return _Request(parts[0], target.path, parse_qs(target.query), headers, rest[:length])


def host_allowed(cfg: ScreenConfig, host: str) -> bool:
    """On loopback, only loopback names: another site's page cannot reach it through a rebound DNS name."""
    if not cfg.loopback:
        return True
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return name.strip("[]") in LOOPBACK_HOSTS


def authorized(req: _Request, token: bytes | None) -> bool:
    """The request carries the token (constant-time compare), or none is configured."""
    if token is None:
        return True
    given = ""
    auth = req.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    elif req.query.get("token"):
        given = req.query["token"][0]
    # Digests of both: equal lengths, so not even the token's length shows in the time taken.
    return hmac.compare_digest(hashlib.sha256(given.encode("utf-8")).digest(), hashlib.sha256(token).digest())


def talk_event(action: str, now_s: float) -> object:
    """What the controller gets for a talk action: the on-screen button, or start / stop like ``ctl``."""
    if action in ("press", "release"):
        return ButtonEvent(SOURCE, action == "press", now_s)
    return Command("start" if action == "start" else "stop")


def response(status: int, content_type: str, body: bytes) -> bytes:
    """A whole HTTP response (the connection closes after it)."""
    head = f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\nContent-Length: {len(body)}\r\nCache-Control: no-store\r\n"
    if content_type:
        head += f"Content-Type: {content_type}\r\nX-Content-Type-Options: nosniff\r\n"
    if content_type.startswith("text/html"):
        head += (
            "Content-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; "
            "style-src 'unsafe-inline'; connect-src 'self'; img-src data:\r\n"
        )
    return (head + "Connection: close\r\n\r\n").encode("latin-1") + body


def talk_action(body: bytes) -> str:
    """The action a /talk body names: ``press`` or ``{"action": "press"}``."""
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text
    if isinstance(data, dict):
        return str(data.get("action", ""))
    return data if isinstance(data, str) else ""


_REASONS = {
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    421: "Misdirected Request",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}
