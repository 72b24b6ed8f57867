"""One conversation with the agent: its transport, the WebSocket (the only module importing ``websocket``).

What the service's messages mean and what to answer is decided by
:class:`device.core.conversation.AgentConversation` (no I/O); this module
feeds it every message and does what it says. Two workers per session:

- ``<name>-rx`` gets the URL (public, signed, broker; a prefetched one when
  available), opens the socket, sends the initiation, then reads every frame:
  WebSocket pings are answered here, each whole message goes to the
  conversation, and what it returns is done at once from this thread — pongs
  and MCP approvals are sent without queueing behind audio, client tool calls
  go to the :class:`~device.drivers.tools.ToolRegistry` (each result goes back
  through the conversation), events go to ``on_event``, and an end (the
  agent's ``end_call`` tool, say) closes the socket. It ends the session and
  reports one :class:`~device.core.protocol.SessionEnded` as the very last event.
- ``<name>-tx`` sends user audio and control messages from a bounded outbox.
  :meth:`Session.send_audio` never blocks: audio captured before the
  conversation is ready is held and sent first; only when more than
  ``session.send_backlog_s`` is waiting is the oldest dropped (and counted).

All state lives in the instance: two sessions in one process never interfere.
Neither the API key nor the signed URL ever reaches a log line or an exception
(websocket-client's trace mode, which would print the URL, is never enabled).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import websocket

import device
from device.core.audioformat import CAPTURE_RATE_HZ, AudioFormat
from device.core.config import AgentConfig, SessionConfig
from device.core.conversation import AgentConversation, Emit, End, Output, RunTool, Send, StartSending
from device.core.convert import CaptureConverter
from device.core.errors import SessionError, WorkerStuckError
from device.core.protocol import (
    MAX_MESSAGE_BYTES,
    Outcome,
    SessionEnded,
    SessionEvent,
    classify_http_status,
    clean_text,
    encode_audio_chunk,
    encode_contextual_update,
    encode_feedback,
    encode_user_activity,
    encode_user_message,
    parse_retry_after,
)
from device.drivers.agent_http import AgentHttp, AgentHttpError, SignedUrlSource, check_ca_bundle
from device.drivers.neterrors import NetFailure, classify, describe
from device.drivers.secrets import Secret, redact
from device.drivers.tools import ToolCallHandle, ToolRegistry, ToolResult
from device.drivers.worker import Worker

log = logging.getLogger(__name__)

CAPTURE_BYTES_PER_S = CAPTURE_RATE_HZ * 2
# How long stop() waits for the service to answer our close frame.
CLOSE_WAIT_S = 2.0
# Socket timeout while waiting for the metadata (the deadline is checked this often).
POLL_S = 0.25
# How long ending a conversation waits for each cancelled tool call to answer.
TOOL_CANCEL_WAIT_S = 2.0
# Control messages waiting to be sent (oldest dropped beyond, with a warning).
MAX_CONTROL_BACKLOG = 1000
# Longest detail kept for the end of a session (it is shown in the log, status.json and ctl status).
MAX_END_DETAIL_CHARS = 1000


class _End(Exception):
    """Ends the receiving loop with an outcome (internal)."""

    def __init__(
        self, outcome: Outcome, detail: str, close_code: int | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(detail)
        # Details quote the service (close reasons, HTTP bodies, library errors): cleaned like its messages.
        self.ended = SessionEnded(outcome, clean_text(redact(detail), MAX_END_DETAIL_CHARS), close_code, retry_after_s)

    @classmethod
    def of(cls, ended: SessionEnded) -> _End:
        """The conversation's verdict, its detail cleaned like every other."""
        return cls(ended.outcome, ended.detail, ended.close_code, ended.retry_after_s)


class _Closed(Exception):
    """The service's close frame arrived (and was answered); the conversation classifies it."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


class _Lost(Exception):
    """The connection ended without a close frame; ``kind`` is "lost" or "reset"."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@dataclass(frozen=True)
class _Audio:
    pcm: bytes
    captured_at_s: float


class _Outbox:
    """What the sender thread sends: control messages first, then audio; never blocks producers."""

    def __init__(self, max_audio_bytes: int) -> None:
        self._cond = threading.Condition()
        self._audio: collections.deque[_Audio] = collections.deque()
        self._control: collections.deque[str] = collections.deque()
        self._audio_bytes = 0
        self._max_audio_bytes = max_audio_bytes
        self._open = False
        self._closed = False
        self.dropped_blocks = 0
        self.dropped_bytes = 0
        self.dropped_control = 0
        self.max_backlog_bytes = 0

    def put_audio(self, pcm: bytes, captured_at_s: float) -> None:
        with self._cond:
            if self._closed:
                return
            self._audio.append(_Audio(pcm, captured_at_s))
            self._audio_bytes += len(pcm)
            while self._audio_bytes > self._max_audio_bytes and len(self._audio) > 1:
                old = self._audio.popleft()
                self._audio_bytes -= len(old.pcm)
                self.dropped_blocks += 1
                self.dropped_bytes += len(old.pcm)
            self.max_backlog_bytes = max(self.max_backlog_bytes, self._audio_bytes)
            self._cond.notify()

    def put_control(self, text: str) -> None:
        with self._cond:
            if self._closed:
                return
            self._control.append(text)
            while len(self._control) > MAX_CONTROL_BACKLOG:
                self._control.popleft()
                self.dropped_control += 1
                if self.dropped_control == 1:
                    log.warning("over %d control messages are waiting; dropping the oldest", MAX_CONTROL_BACKLOG)
            self._cond.notify()

    def open(self) -> None:
        """The conversation is ready: let the sender drain."""
        with self._cond:
            self._open = True
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def get(self, timeout_s: float) -> str | _Audio | None:
        with self._cond:
            self._cond.wait_for(lambda: self._closed or (self._open and (self._control or self._audio)), timeout_s)
            if self._closed or not self._open:
                return None
            if self._control:
                return self._control.popleft()
            if self._audio:
                item = self._audio.popleft()
                self._audio_bytes -= len(item.pcm)
                return item
            return None

    @property
    def backlog_bytes(self) -> int:
        with self._cond:
            return self._audio_bytes

    def stats(self) -> dict[str, int | float]:
        def ms(n_bytes: int) -> float:
            return round(n_bytes / CAPTURE_BYTES_PER_S * 1000, 1)

        return {
            "audio_blocks_dropped": self.dropped_blocks,
            "audio_dropped_ms": ms(self.dropped_bytes),
            "control_dropped": self.dropped_control,
            "send_backlog_ms": ms(self.backlog_bytes),
            "send_backlog_max_ms": ms(self.max_backlog_bytes),
        }


class _Receiver(Worker):
    def __init__(self, session: Session, name: str) -> None:
        super().__init__(name)
        self._session = session

    def run(self) -> None:
        self._session._rx_main(self)

    def unblock(self) -> None:
        self._session._wake_rx()


class _Sender(Worker):
    """Sends the outbox: control messages as they are, capture audio converted to the agent's input format."""

    def __init__(self, name: str, outbox: _Outbox, send: Callable[[str], bool]) -> None:
        super().__init__(name)
        self._outbox = outbox
        self._send = send
        self.input_format: AudioFormat | None = None  # what the agent hears (set before start)
        self.started_s: float | None = None  # when the session started
        self._blocks_sent = 0
        self._latency_last_ms = 0.0
        self._latency_max_ms = 0.0
        self._first_sent_ms: float | None = None

    def run(self) -> None:
        fmt = self.input_format
        to_agent = CaptureConverter()  # one stream per connection: the resampler keeps its history
        while not self.stopping:
            self.beat()
            item = self._outbox.get(1.0)
            if item is None:
                continue
            if isinstance(item, str):
                if not self._send(item):
                    return
                continue
            pcm = item.pcm if fmt is None else to_agent.convert(item.pcm, fmt)
            if not self._send(encode_audio_chunk(pcm)):
                return
            sent_s = time.monotonic()
            self._latency_last_ms = (sent_s - item.captured_at_s) * 1000
            self._latency_max_ms = max(self._latency_max_ms, self._latency_last_ms)
            self._blocks_sent += 1
            if self._first_sent_ms is None and self.started_s is not None:
                self._first_sent_ms = (sent_s - self.started_s) * 1000

    def unblock(self) -> None:
        self._outbox.close()

    def stats(self) -> dict[str, int | float]:
        out: dict[str, int | float] = {
            "audio_blocks_sent": self._blocks_sent,
            "send_latency_last_ms": round(self._latency_last_ms, 1),
            "send_latency_max_ms": round(self._latency_max_ms, 1),
        }
        if self._first_sent_ms is not None:
            out["first_audio_sent_ms"] = round(self._first_sent_ms, 1)
        return out


def _tls_context(ca_bundle: str) -> ssl.SSLContext:
    """Verification and host-name checks always on; ``ca_bundle`` replaces the system store."""
    try:
        if ca_bundle:
            check_ca_bundle(ca_bundle)  # not a FIFO: ssl's open() of one would hold this thread
        return ssl.create_default_context(cafile=ca_bundle or None)
    except (OSError, ssl.SSLError) as e:
        raise _End(
            Outcome.NETWORK, f"cannot load the CA bundle {ca_bundle}: {getattr(e, 'strerror', None) or e}; "
            "check agent.ca_bundle"
        ) from None


# websocket-client's own exception types, for the shared classifier (device.drivers.neterrors).
_WEBSOCKET_FAILURES: dict[type[BaseException], NetFailure] = {
    websocket.WebSocketProxyException: NetFailure.PROXY,
    websocket.WebSocketAddressException: NetFailure.DNS,
    websocket.WebSocketTimeoutException: NetFailure.TIMEOUT,
    websocket.WebSocketConnectionClosedException: NetFailure.FAILED,
}


def _classify_connect_error(e: BaseException, host: str, timeout_s: float) -> _End:
    """An exception from opening the socket → an outcome naming the failure class."""
    if isinstance(e, websocket.WebSocketBadStatusException):
        status = int(getattr(e, "status_code", 0) or 0)
        headers = getattr(e, "resp_headers", None) or {}
        retry = parse_retry_after(
            {str(k).lower(): str(v) for k, v in dict(headers).items()}.get("retry-after"), time.time()
        )
        outcome = classify_http_status(status)
        what = {
            Outcome.AUTH: "refused the signed URL or credentials",
            Outcome.NOT_FOUND: "does not know this agent",
            Outcome.RATE_LIMITED: "is rate limiting",
        }.get(outcome, "refused the conversation socket")
        return _End(outcome, f"{host} {what} (HTTP {status})", None, retry)
    kind = classify(e, _WEBSOCKET_FAILURES)
    if kind is None:
        return _End(Outcome.PROTOCOL, f"{host} did not open a WebSocket ({type(e).__name__})")
    detail = describe(
        kind, e, host=host, what="opening the conversation", timeout_s=timeout_s, timeout_key="agent.connect_timeout_s"
    )
    return _End(Outcome.NETWORK, detail)


def _host_of(url: str) -> str:
    """``host[:port]`` of ``url`` for messages: never its userinfo (``ws://user:TOKEN@host`` carries a secret)."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:  # a malformed port: name the host alone
        port = None
    host = parts.hostname or "the agent service"
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{port}" if port is not None else host


# -- the frame-size cap -------------------------------------------------------------------------
# websocket-client has no option to cap a message's size, and it buffers a frame's whole payload
# before returning it, so a server could make the device hold any amount of memory. The cap hooks
# the one step that reads a frame's length from its header (the private frame_buffer.recv_length,
# the same from Debian's 1.2.3 to PyPI's 1.9) and refuses an oversized frame before its payload is
# read. That step is private, so frame_cap_problem() first proves the hook works on the installed
# release (a probe frame claiming 1 TiB must be refused); when a release changes it, every session
# fails at once with SessionError saying what to install, rather than run without a cap.
FRAME_CAP_TESTED = "websocket-client 1.2.3 (Debian 12's python3-websocket) to 1.9"


class _ProbeExhausted(Exception):
    """The probe frame's bytes are used up: the frame reader wanted the payload (the hook did not fire)."""


def _install_frame_cap(fb: Any, max_bytes: int) -> None:
    """Make ``fb`` (a websocket-client frame_buffer) refuse a frame over ``max_bytes`` from its header."""
    original = fb.recv_length

    def recv_length() -> None:
        original()
        length = getattr(fb, "length", None)
        if isinstance(length, int) and length > max_bytes:
            raise _End(
                Outcome.PROTOCOL,
                f"the service sent a {length / 1048576:.1f} MiB message, over the {max_bytes // 1048576} MiB limit",
                1009,
            )

    fb.recv_length = recv_length


def frame_cap_problem(frame_buffer_class: Any = None) -> str:
    """Why the frame-size cap does not work with ``frame_buffer_class`` (default: the installed one); "" if it does."""
    cls = frame_buffer_class or type(websocket.WebSocket().frame_buffer)
    pending = [bytes([0x82, 0x7F]) + struct.pack("!Q", 1 << 40)]  # a binary frame header claiming 1 TiB

    def recv(n: int) -> bytes:
        if not pending:
            raise _ProbeExhausted
        chunk, rest = pending[0][:n], pending[0][n:]
        pending[:] = [rest] if rest else []
        return chunk

    try:
        fb = cls(recv, True)
        _install_frame_cap(fb, MAX_MESSAGE_BYTES)
        fb.recv_frame()
    except _End:
        return ""
    except Exception as e:
        return f"its frame reader changed ({type(e).__name__}: {e or 'no detail'})"
    return "its frame reader changed (an oversized frame went through)"


_frame_cap_checked: list[str] = []  # the installed library's answer, once per process


def check_frame_cap() -> None:
    """Raise SessionError (with what to install) when the installed websocket-client cannot be capped."""
    if not _frame_cap_checked:
        _frame_cap_checked.append(frame_cap_problem())
    if _frame_cap_checked[0]:
        raise SessionError(
            f"websocket-client {getattr(websocket, '__version__', '?')}: {_frame_cap_checked[0]}, so the device "
            f"cannot limit the size of the service's messages; install a tested release ({FRAME_CAP_TESTED}), "
            "e.g. pip install 'websocket-client>=1.2.3,<1.10', or update the firmware"
        )


class _Socket:
    """The session's WebSocket: opened once, written from any thread, read by the receiver, closed once."""

    def __init__(self, name: str, timeout_s: float, on_stall: Callable[[str], None]) -> None:
        self.name = name
        self._timeout_s = timeout_s  # of the connect, and of each send
        self._on_stall = on_stall
        self._lock = threading.Lock()
        self._ws: websocket.WebSocket | None = None
        self._handshake_done = False
        self._close_sent = False
        self._close_sent_s: float | None = None
        self._parts: list[bytes] = []  # of a fragmented message
        self._parts_len = 0

    @property
    def ws(self) -> websocket.WebSocket | None:
        return self._ws

    @property
    def exists(self) -> bool:
        return self._ws is not None

    @property
    def open(self) -> bool:
        """The handshake is done and no close frame was sent."""
        with self._lock:
            return self._handshake_done and not self._close_sent

    def connect(self, url: str, ca_bundle: str, stopping: Callable[[], bool]) -> float:
        """Open the socket (TLS for wss://, the frame cap on); returns how long the handshake took, in seconds."""
        host = _host_of(url)
        sslopt: dict[str, Any] = {"context": _tls_context(ca_bundle)} if url.startswith("wss://") else {}
        ws = websocket.WebSocket(enable_multithread=True, sslopt=sslopt, skip_utf8_validation=False)
        with self._lock:
            self._ws = ws
        t0 = time.monotonic()
        log.info("%s: opening the conversation with %s", self.name, host)
        try:
            ws.connect(
                url,
                timeout=self._timeout_s,
                header=[f"User-Agent: voice-appliance/{device.__version__}"],
                suppress_origin=True,
                redirect_limit=0,
            )
        except _End:
            raise
        except Exception as e:
            if stopping():
                raise _End(Outcome.LOCAL, "the conversation was ended on the device while connecting") from None
            raise _classify_connect_error(e, host, self._timeout_s) from None
        handshake_s = time.monotonic() - t0
        _install_frame_cap(ws.frame_buffer, MAX_MESSAGE_BYTES)  # checked in Session.__init__ (check_frame_cap)
        with self._lock:
            self._handshake_done = True
        return handshake_s

    def send(self, text: str) -> bool:
        """Send one message from any thread (websocket-client serialises senders). False when gone."""
        with self._lock:
            ws = None if self._close_sent else self._ws  # no data frame may follow a close frame
        if ws is None:
            return False
        try:
            ws.send(text)
            return True
        except websocket.WebSocketTimeoutException:
            self._on_stall(f"sending to the service stalled for {self._timeout_s:g} s (network lost?)")
            self.abort()
            return False
        except (OSError, websocket.WebSocketException):
            return False  # the receiving thread sees the end and classifies it

    def send_close(self, code: int, reason: str = "") -> None:
        """The close frame, once (and only after the handshake)."""
        with self._lock:
            if self._close_sent or not self._handshake_done:
                return
            self._close_sent = True
            self._close_sent_s = time.monotonic()
            ws = self._ws
        with contextlib.suppress(OSError, websocket.WebSocketException, ValueError):
            if ws is not None:
                ws.send_close(code, reason.encode())

    def close_overdue(self, now_s: float) -> bool:
        """Our close frame has waited over CLOSE_WAIT_S for the service's answer."""
        with self._lock:
            return self._close_sent_s is not None and now_s - self._close_sent_s > CLOSE_WAIT_S

    def abort(self) -> None:
        """Cut the connection (wakes a blocked read or send)."""
        sock = getattr(self._ws, "sock", None) if self._ws is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def shutdown(self) -> None:
        if self._ws is not None:
            self._ws.shutdown()

    def receive(self, stopping: Callable[[], bool]) -> bytes | None:
        """A whole data message, when one completes within POLL_S; None otherwise (control frames are answered here).

        Raises _Closed for the service's close frame (answered first), _Lost when the connection broke.
        """
        ws = self._ws
        if ws is None or not self._readable(ws):
            return None
        try:
            frame = ws.recv_frame()
        except _End:
            raise
        except websocket.WebSocketProtocolException as e:
            raise _End(Outcome.PROTOCOL, f"the service broke the WebSocket framing ({e})", 1002) from None
        except (OSError, websocket.WebSocketException) as e:
            if stopping():
                raise _End(Outcome.LOCAL, "the conversation was ended on the device") from None
            raise _Lost("reset" if isinstance(e, ConnectionResetError) else "lost") from e
        op = frame.opcode
        if op == websocket.ABNF.OPCODE_PING:
            with contextlib.suppress(OSError, websocket.WebSocketException):
                ws.pong(frame.data)  # a dead connection shows on the next read, classified there
            return None
        if op == websocket.ABNF.OPCODE_CLOSE:
            self._answer_close(ws, bytes(frame.data))
        if op not in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY, websocket.ABNF.OPCODE_CONT):
            return None
        data = frame.data if isinstance(frame.data, bytes) else str(frame.data).encode()
        if op != websocket.ABNF.OPCODE_CONT:
            self._parts, self._parts_len = [], 0
        self._parts.append(data)
        self._parts_len += len(data)
        if self._parts_len > MAX_MESSAGE_BYTES:
            raise _End(
                Outcome.PROTOCOL, f"the service sent a message over the {MAX_MESSAGE_BYTES // 1048576} MiB limit", 1009
            )
        if not frame.fin:
            return None
        message = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
        self._parts, self._parts_len = [], 0
        return message

    def _answer_close(self, ws: websocket.WebSocket, data: bytes) -> None:
        code: int | None = None
        reason = ""
        if len(data) >= 2:
            code = struct.unpack("!H", data[:2])[0]
            reason = data[2:].decode("utf-8", "replace")
        with self._lock:
            echo = not self._close_sent
            self._close_sent = True
        if echo:  # the service closed first: answer its close frame
            with contextlib.suppress(OSError, websocket.WebSocketException, ValueError):
                ws.send_close(code if code and code not in (1005, 1006, 1015) else 1000)
        raise _Closed(code, reason)

    def _readable(self, ws: websocket.WebSocket) -> bool:
        """Wait up to POLL_S for data (the socket's own timeout stays long: it also bounds sends)."""
        sock = ws.sock
        if sock is None:
            return True  # let recv_frame report the closed socket
        pending = getattr(sock, "pending", None)
        if pending is not None and pending() > 0:  # bytes already decrypted inside the TLS layer
            return True
        try:
            ready, _, _ = select.select([sock], [], [], POLL_S)
        except (OSError, ValueError):
            return True
        return bool(ready)


class Session:
    """One conversation: connect, talk, end. See the module docstring."""

    def __init__(
        self,
        agent: AgentConfig,
        session: SessionConfig,
        tools: ToolRegistry,
        api_key: Secret | None,
        on_event: Callable[[SessionEvent], None],
        signed_urls: SignedUrlSource | None = None,
        *,
        http: AgentHttp | None = None,
        hostname: str | None = None,
        name: str = "session",
    ) -> None:
        check_frame_cap()  # before any thread: a websocket-client that cannot be capped is refused loudly
        self.agent = agent
        self.cfg = session
        self.name = name
        self._tools = tools
        self._api_key = api_key
        self._on_event = on_event
        self._signed_urls = signed_urls
        self._http = http
        self._own_http = http is None
        self._conv = AgentConversation(
            agent,
            approves=tools.mcp_approves,
            hostname=hostname or socket.gethostname(),
            version=device.__version__,
            name=name,
            logger=log,
        )
        self._conv_lock = threading.Lock()  # the receiver, the tool calls' replies and stats() all reach it
        self._outbox = _Outbox(int(session.send_backlog_s * CAPTURE_BYTES_PER_S))
        self._sock = _Socket(name, agent.connect_timeout_s, self._stalled)
        self._rx = _Receiver(self, f"{name}-rx")
        self._tx = _Sender(f"{name}-tx", self._outbox, self._sock.send)
        self._lock = threading.Lock()
        self._cancel = threading.Event()  # interrupts REST retry backoff on stop
        self._wakes = 0
        self._end: SessionEnded | None = None
        self._ended_emitted = False
        self._started_s: float | None = None
        self._tool_calls: list[ToolCallHandle] = []
        self._tool_lock = threading.RLock()  # starting a tool call vs. cancelling them all before the close frame
        self._counts: dict[str, int] = {}  # the transport's own (the URL's prefetch)
        self._timing_ms: dict[str, float] = {}
        self.connected = threading.Event()  # set when the metadata arrived
        self.ended = threading.Event()  # set after SessionEnded was delivered
        self.outcome: SessionEnded | None = None

    # -- public API ------------------------------------------------------------------
    def start(self) -> None:
        """Connect in the background; events arrive through ``on_event``."""
        with self._lock:
            if self._end is not None or self._started_s is not None:
                raise SessionError("this session was already started or stopped; create a new Session")
            self._started_s = self._tx.started_s = time.monotonic()
        self._rx.start()

    def send_audio(self, pcm: bytes, captured_at_s: float) -> None:
        """Queue one capture block (S16LE mono 16 kHz). Never blocks; held until the conversation is ready."""
        self._outbox.put_audio(pcm, captured_at_s)

    def send_contextual_update(self, text: str) -> None:
        self._outbox.put_control(encode_contextual_update(text))

    def send_user_message(self, text: str) -> None:
        self._outbox.put_control(encode_user_message(text))

    def send_user_activity(self) -> None:
        self._outbox.put_control(encode_user_activity())

    def send_feedback(self, event_id: int, like: bool) -> None:
        self._outbox.put_control(encode_feedback(event_id, like))

    def stop(self, timeout_s: float | None = None) -> None:
        """End the conversation (close 1000) and join the session's threads.

        From one of the session's own threads (e.g. inside ``on_event``) it
        only asks, without waiting.
        """
        self._set_end(_End(Outcome.LOCAL, "the conversation was ended on the device", 1000).ended)
        if self._started_s is None:
            self._finish_unstarted()
            return
        limit_s = timeout_s if timeout_s is not None else self.default_stop_timeout_s
        deadline = time.monotonic() + limit_s
        try:
            self._rx.stop(min(CLOSE_WAIT_S, limit_s))
        except WorkerStuckError:
            # The service did not answer the close frame: cut the socket, then wait for the rest.
            self._rx.stop(max(0.1, deadline - time.monotonic()))

    @property
    def default_stop_timeout_s(self) -> float:
        """Long enough for a REST call or socket connect in flight to end (they cannot be interrupted)."""
        return max(self.agent.http_timeout_s, self.agent.connect_timeout_s) + CLOSE_WAIT_S + 3.0

    def close(self) -> None:
        self.stop()

    @property
    def input_format(self) -> AudioFormat | None:
        return self._conv.input_format

    @property
    def output_format(self) -> AudioFormat | None:
        return self._conv.output_format

    @property
    def conversation_id(self) -> str | None:
        return self._conv.conversation_id

    @property
    def ping_ms(self) -> int | None:
        return self._conv.ping_ms

    @property
    def _ws(self) -> websocket.WebSocket | None:
        """The socket, once made (a test cuts the connection under a running session)."""
        return self._sock.ws

    @property
    def stats(self) -> dict[str, int | float]:
        """Counters and timings (names carry their unit)."""
        with self._conv_lock:
            out = self._conv.stats()
        out.update(dict(self._counts))
        out.update(self._tx.stats())
        out.update(self._outbox.stats())
        out.update({k: round(v, 1) for k, v in dict(self._timing_ms).items()})
        return out

    # -- events ---------------------------------------------------------------------
    def _emit(self, event: SessionEvent) -> None:
        if self._ended_emitted:
            log.debug("%s: %s after the session ended, dropped", self.name, type(event).__name__)
            return
        try:
            self._on_event(event)
        except Exception:
            log.exception("%s: the event handler failed on %s", self.name, type(event).__name__)

    def _set_end(self, ended: SessionEnded) -> bool:
        """Record why the session ends; the first reason wins."""
        with self._lock:
            if self._end is not None:
                return False
            self._end = ended
            return True

    def _stalled(self, detail: str) -> None:
        self._set_end(_End(Outcome.NETWORK, detail).ended)

    def _finish_unstarted(self) -> None:
        with self._lock:
            if self._ended_emitted:
                return
        self._outbox.close()
        self._deliver_end()

    def _deliver_end(self) -> None:
        with self._lock:
            ended = self._end or SessionEnded(Outcome.LOCAL, "the session ended", None)
            if self._ended_emitted:
                return
        self.outcome = ended
        level = logging.INFO if ended.outcome in (Outcome.NORMAL, Outcome.AGENT_ENDED, Outcome.LOCAL) else (
            logging.WARNING
        )
        with self._conv_lock:
            self._conv.flush_log()
        log.log(level, "%s ended: %s: %s", self.name, ended.outcome.name, ended.message)
        self._emit(ended)
        with self._lock:
            self._ended_emitted = True
        self.ended.set()

    # -- the conversation -------------------------------------------------------------
    def _feed(self, step: Callable[..., list[Output]], *args: Any) -> None:
        """Run one step of the conversation, then do what it says, in order (outside its lock)."""
        with self._conv_lock:
            outputs = step(*args)
        for out in outputs:
            self._perform(out)

    def _perform(self, out: Output) -> None:
        match out:
            case Send(text=text, tool=tool):
                if not self._sock.send(text) and tool:
                    log.info("%s: the result of tool %s could not be sent: the conversation ended", self.name, tool)
            case Emit(event=event):
                self._emit(event)
            case RunTool():
                self._run_tool(out)
            case StartSending(input_format=fmt):
                if self._started_s is not None:
                    self._timing_ms["connect_ms"] = (time.monotonic() - self._started_s) * 1000
                self.connected.set()
                self._outbox.open()
                self._tx.input_format = fmt
                self._tx.start()
            case End(ended=ended, close_reason=reason):
                self._sock.send_close(ended.close_code or 1000, reason)
                raise _End.of(ended)

    def _run_tool(self, run: RunTool) -> None:
        call = run.call
        # Atomic with respect to ending (see _wake_rx): a stop() after ToolCallStarted finds the call registered.
        with self._tool_lock:
            self._emit(run.started)
            handle = self._tools.call(call.name, call.call_id, call.parameters, self._tool_reply)
            with self._lock:
                self._tool_calls = [h for h in self._tool_calls if not h.done]
                self._tool_calls.append(handle)

    def _tool_reply(self, result: ToolResult) -> None:
        self._feed(self._conv.tool_finished, result.name, result.call_id, result.result, result.is_error)

    # -- the receiving thread ---------------------------------------------------------
    def _rx_main(self, worker: Worker) -> None:
        try:
            self._open(worker)
            self._converse(worker)
        except _End as e:
            self._set_end(e.ended)
        except Exception as e:  # a bug: still end cleanly and say so
            log.exception("%s: internal error", self.name)
            self._set_end(
                _End(Outcome.PROTOCOL, f"internal error in the session ({type(e).__name__}); please report it").ended
            )
        finally:
            self._finish()

    def _conversation_url(self) -> str:
        t0 = time.monotonic()
        http = self._http
        if http is None:
            http = self._http = AgentHttp(self.agent, self._api_key)
        url: str | None = None
        if http.needs_fetch and self._signed_urls is not None:
            url = self._signed_urls.take()
            self._counts["prefetch_hits" if url else "prefetch_misses"] = 1
        if url is None:
            try:
                url = http.conversation_url(self._cancel)
            except AgentHttpError as e:
                raise _End(e.outcome, e.detail, None, e.retry_after_s) from None
        self._timing_ms["url_ms"] = (time.monotonic() - t0) * 1000
        return url

    def _open(self, worker: Worker) -> None:
        url = self._conversation_url()
        if worker.stopping:
            raise _End(Outcome.LOCAL, "the conversation was ended on the device before it started")
        handshake_s = self._sock.connect(url, self.agent.ca_bundle, lambda: worker.stopping)
        self._timing_ms["handshake_ms"] = handshake_s * 1000
        if worker.stopping:
            raise _End(Outcome.LOCAL, "the conversation was ended on the device", 1000)
        self._feed(self._conv.opened, time.monotonic())

    def _converse(self, worker: Worker) -> None:
        while True:
            worker.beat()
            # Every pass, not only when idle: a steady stream of pings must not hide a deadline.
            if self._sock.close_overdue(time.monotonic()):
                raise _End(Outcome.LOCAL, "the service did not answer the close frame", 1000)
            self._feed(self._conv.tick, time.monotonic())
            try:
                message = self._sock.receive(lambda: worker.stopping)
            except _Closed as e:
                with self._conv_lock:
                    ended = self._conv.service_closed(e.code, e.reason)
                raise _End.of(ended) from None
            except _Lost as e:
                with self._conv_lock:
                    ended = self._conv.connection_lost(e.kind)
                raise _End.of(ended) from e.__cause__
            if message is not None:
                self._feed(self._conv.receive, message, time.monotonic())

    # -- ending ---------------------------------------------------------------------------------
    def _wake_rx(self) -> None:
        """First wake: send the close frame (the service answers it); later wakes cut the socket."""
        self._cancel.set()
        if self._http is not None:
            self._http.interrupt()  # a signed-URL request in flight ends now
        with self._lock:
            self._wakes += 1
            first = self._wakes == 1
        if not self._sock.exists:
            return
        if first and self._sock.open:
            # A running tool still owes the service its one result: cancel it so that goes out before the close.
            with self._tool_lock:
                self._cancel_tools()
                self._sock.send_close(1000)
        else:
            self._sock.abort()

    def _cancel_tools(self) -> None:
        """Cancel running tool calls and wait for them (each sends its one, cancelled, result)."""
        with self._lock:
            calls = list(self._tool_calls)
        for handle in calls:
            try:
                handle.cancel(TOOL_CANCEL_WAIT_S)
            except WorkerStuckError:
                log.error("%s: a tool call did not stop", self.name)

    def _finish(self) -> None:
        self._outbox.close()
        if self._sock.exists:
            with self._lock:
                end = self._end
            # A dead network would only stall a close frame; otherwise say goodbye properly.
            if end is None or end.outcome is not Outcome.NETWORK:
                code = end.close_code if end is not None and end.close_code in (1000, 1002, 1003, 1009) else 1000
                self._sock.send_close(code or 1000)
            self._sock.abort()
        try:
            self._tx.stop(self.agent.connect_timeout_s + 2.0)
        except WorkerStuckError:
            log.error("%s: the sending thread did not stop", self.name)
        self._sock.shutdown()
        self._cancel_tools()
        if self._own_http and self._http is not None:
            self._http.close()
        self._deliver_end()
