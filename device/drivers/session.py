"""One conversation with the agent: owns the WebSocket (the only module importing ``websocket``).

Two workers per session:

- ``<name>-rx`` gets the URL (public, signed, broker; a prefetched one when
  available), opens the socket, sends the initiation, then reads every frame:
  pings are answered at once from this thread (never queued behind audio),
  and so are MCP tool calls awaiting approval (``tools.mcp_approve``); the
  agent's ``end_call`` tool ends the conversation at once; client tool calls
  go to the :class:`~device.drivers.tools.ToolRegistry`, everything else
  becomes a typed event for ``on_event``. It ends the session and reports one
  :class:`~device.core.protocol.SessionEnded` as the very last event.
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
from device.core.convert import CaptureConverter
from device.core.errors import SessionError, WorkerStuckError
from device.core.protocol import (
    MAX_MESSAGE_BYTES,
    AgentAudio,
    AgentResponsePart,
    AgentToolResponse,
    Connected,
    Interruption,
    InterruptionFilter,
    MalformedMessage,
    McpApproval,
    McpToolCall,
    Outcome,
    Ping,
    RichContent,
    ServerError,
    SessionEnded,
    SessionEvent,
    ToolCall,
    ToolCallFinished,
    ToolCallStarted,
    UnknownEvent,
    UnsupportedFormat,
    classify_end,
    classify_http_status,
    clean_text,
    decode_server_message,
    dynamic_variables_for,
    encode_audio_chunk,
    encode_contextual_update,
    encode_feedback,
    encode_initiation,
    encode_mcp_approval,
    encode_pong,
    encode_tool_result,
    encode_user_activity,
    encode_user_message,
    initiation_message,
    parse_retry_after,
)
from device.drivers.agent_http import AgentHttp, AgentHttpError, SignedUrlSource, check_ca_bundle
from device.drivers.logs import RateLimitedLog
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
# What the service can make a session log is rate-limited: at most one line per kind of line (a kind of
# malformed message, the service's error events, ...) in this interval, and SERVER_LOG_LINES in all.
SERVER_LOG_INTERVAL_S = 30.0
SERVER_LOG_LINES = 50
# Unknown message types counted by name (and logged once each); further ones are counted as "other".
MAX_UNKNOWN_TYPES = 32
# MCP tool call ids remembered as answered (a repeated delivery is not answered twice).
MAX_MCP_ANSWERED = 256
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


class _Receiver(Worker):
    def __init__(self, session: Session, name: str) -> None:
        super().__init__(name)
        self._session = session

    def run(self) -> None:
        self._session._rx_main(self)

    def wake(self) -> None:
        self._session._wake_rx()


class _Sender(Worker):
    def __init__(self, session: Session, name: str) -> None:
        super().__init__(name)
        self._session = session

    def run(self) -> None:
        self._session._tx_main(self)

    def wake(self) -> None:
        self._session._outbox.close()


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
        self._tools = tools
        self._api_key = api_key
        self._on_event = on_event
        self._signed_urls = signed_urls
        self._http = http
        self._own_http = http is None
        self._hostname = hostname or socket.gethostname()
        self.name = name
        self._outbox = _Outbox(int(session.send_backlog_s * CAPTURE_BYTES_PER_S))
        self._rx = _Receiver(self, f"{name}-rx")
        self._tx = _Sender(self, f"{name}-tx")
        self._lock = threading.Lock()
        self._ws: websocket.WebSocket | None = None
        self._handshake_done = False
        self._close_sent = False
        self._close_sent_s: float | None = None
        self._cancel = threading.Event()  # interrupts REST retry backoff on stop
        self._stats_lock = threading.Lock()
        self._wakes = 0
        self._end: SessionEnded | None = None
        self._ended_emitted = False
        self._started_s: float | None = None
        self._filter = InterruptionFilter()
        self._tool_calls: list[ToolCallHandle] = []
        self._tool_lock = threading.RLock()  # starting a tool call vs. cancelling them all before the close frame
        self._server_log = RateLimitedLog(log, SERVER_LOG_INTERVAL_S, max_lines=SERVER_LOG_LINES)
        self._unknown_types: set[str] = set()  # at most MAX_UNKNOWN_TYPES: counted by name, the rest as "other"
        self._input_fmt: AudioFormat | None = None
        self._server_error: ServerError | None = None  # the service's last error event: why it closes
        self._mcp_answered: collections.OrderedDict[str, None] = collections.OrderedDict()  # the latest answered
        self.output_format: AudioFormat | None = None
        self.conversation_id: str | None = None
        self.ping_ms: int | None = None
        self.connected = threading.Event()  # set when the metadata arrived
        self.ended = threading.Event()  # set after SessionEnded was delivered
        self.outcome: SessionEnded | None = None
        self._counts: collections.Counter[str] = collections.Counter()
        self._timing_ms: dict[str, float] = {}
        self._send_latency_max_ms = 0.0
        self._send_latency_last_ms = 0.0

    # -- public API ------------------------------------------------------------------
    def start(self) -> None:
        """Connect in the background; events arrive through ``on_event``."""
        with self._lock:
            if self._end is not None or self._started_s is not None:
                raise SessionError("this session was already started or stopped; create a new Session")
            self._started_s = time.monotonic()
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
        return self._input_fmt

    @property
    def stats(self) -> dict[str, int | float]:
        """Counters and timings (names carry their unit)."""
        with self._stats_lock:
            out: dict[str, int | float] = dict(self._counts)
        for key in (
            "audio_blocks_sent",
            "audio_blocks_dropped",
            "agent_audio_chunks",
            "agent_audio_dropped",
            "messages_received",
            "unknown_events",
            "malformed_messages",
            "pings",
            "tool_calls",
        ):
            out.setdefault(key, 0)
        out["audio_blocks_dropped"] = self._outbox.dropped_blocks
        out["audio_dropped_ms"] = round(self._outbox.dropped_bytes / CAPTURE_BYTES_PER_S * 1000, 1)
        out["control_dropped"] = self._outbox.dropped_control
        out["send_backlog_ms"] = round(self._outbox.backlog_bytes / CAPTURE_BYTES_PER_S * 1000, 1)
        out["send_backlog_max_ms"] = round(self._outbox.max_backlog_bytes / CAPTURE_BYTES_PER_S * 1000, 1)
        out["send_latency_last_ms"] = round(self._send_latency_last_ms, 1)
        out["send_latency_max_ms"] = round(self._send_latency_max_ms, 1)
        out["agent_audio_dropped"] = self._filter.dropped_chunks
        if self.ping_ms is not None:
            out["ping_ms"] = self.ping_ms
        out.update({k: round(v, 1) for k, v in self._timing_ms.items()})
        return out

    def _count(self, key: str) -> int:
        with self._stats_lock:
            self._counts[key] += 1
            return self._counts[key]

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
        self._server_log.flush(self.name)
        log.log(level, "%s ended: %s: %s", self.name, ended.outcome.name, ended.message)
        self._emit(ended)
        with self._lock:
            self._ended_emitted = True
        self.ended.set()

    # -- the receiving thread ---------------------------------------------------------
    def _rx_main(self, worker: Worker) -> None:
        try:
            ws = self._open(worker)
            self._converse(ws, worker)
        except _End as e:
            self._set_end(e.ended)
        except Exception as e:  # a bug: still end cleanly and say so
            log.exception("%s: internal error", self.name)
            self._set_end(
                _End(Outcome.PROTOCOL, f"internal error in the session ({type(e).__name__}); please report it").ended
            )
        finally:
            self._finish()

    def _conversation_url(self, worker: Worker) -> str:
        t0 = time.monotonic()
        http = self._http
        if http is None:
            http = self._http = AgentHttp(self.agent, self._api_key)
        url: str | None = None
        if http.needs_fetch and self._signed_urls is not None:
            url = self._signed_urls.take()
            self._count("prefetch_hits" if url else "prefetch_misses")
        if url is None:
            try:
                url = http.conversation_url(self._cancel)
            except AgentHttpError as e:
                raise _End(e.outcome, e.detail, None, e.retry_after_s) from None
        self._timing_ms["url_ms"] = (time.monotonic() - t0) * 1000
        return url

    def _open(self, worker: Worker) -> websocket.WebSocket:
        url = self._conversation_url(worker)
        if worker.stopping:
            raise _End(Outcome.LOCAL, "the conversation was ended on the device before it started")
        host = _host_of(url)
        secure = url.startswith("wss://")
        sslopt: dict[str, Any] = {"context": _tls_context(self.agent.ca_bundle)} if secure else {}
        ws = websocket.WebSocket(enable_multithread=True, sslopt=sslopt, skip_utf8_validation=False)
        with self._lock:
            self._ws = ws
        t0 = time.monotonic()
        log.info("%s: opening the conversation with %s", self.name, host)
        try:
            ws.connect(
                url,
                timeout=self.agent.connect_timeout_s,
                header=[f"User-Agent: voice-appliance/{device.__version__}"],
                suppress_origin=True,
                redirect_limit=0,
            )
        except _End:
            raise
        except Exception as e:
            if worker.stopping:
                raise _End(Outcome.LOCAL, "the conversation was ended on the device while connecting") from None
            raise _classify_connect_error(e, host, self.agent.connect_timeout_s) from None
        self._timing_ms["handshake_ms"] = (time.monotonic() - t0) * 1000
        _install_frame_cap(ws.frame_buffer, MAX_MESSAGE_BYTES)  # checked in __init__ (check_frame_cap)
        with self._lock:
            self._handshake_done = True
        if worker.stopping:
            raise _End(Outcome.LOCAL, "the conversation was ended on the device", 1000)
        self._send_now(encode_initiation(self._initiation()))
        return ws

    def _initiation(self) -> dict[str, Any]:
        a = self.agent
        return initiation_message(
            prompt=a.prompt,
            first_message=a.first_message,
            language=a.language,
            voice_id=a.voice_id,
            dynamic_variables=dynamic_variables_for(a.kiosk_id, a.location, a.dynamic_variables, self._hostname),
            custom_llm_extra_body=a.custom_llm_extra_body,
            user_id=a.user_id,
            version=device.__version__,
        )

    def _send_now(self, text: str) -> bool:
        """Send one message from any thread (websocket-client serialises senders). False when gone."""
        with self._lock:
            ws = None if self._close_sent else self._ws  # no data frame may follow a close frame
        if ws is None:
            return False
        try:
            ws.send(text)
            return True
        except websocket.WebSocketTimeoutException:
            self._set_end(
                _End(
                    Outcome.NETWORK,
                    f"sending to the service stalled for {self.agent.connect_timeout_s:g} s (network lost?)",
                ).ended
            )
            self._abort_socket()
            return False
        except (OSError, websocket.WebSocketException):
            return False  # the receiving thread sees the end and classifies it

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

    def _check_deadlines(self, metadata_deadline_s: float) -> None:
        now = time.monotonic()
        with self._lock:
            close_sent_s = self._close_sent_s
        if close_sent_s is not None and now - close_sent_s > CLOSE_WAIT_S:
            raise _End(Outcome.LOCAL, "the service did not answer the close frame", 1000)
        if not self.connected.is_set() and now > metadata_deadline_s:
            raise _End(
                Outcome.SERVER_ERROR,
                f"the service accepted the connection but did not start the conversation within "
                f"{self.agent.connect_timeout_s:g} s",
                1000,
            )

    def _converse(self, ws: websocket.WebSocket, worker: Worker) -> None:
        metadata_deadline_s = time.monotonic() + self.agent.connect_timeout_s
        parts: list[bytes] = []
        parts_len = 0
        while True:
            worker.beat()
            # Every pass, not only when idle: a steady stream of pings must not hide a deadline.
            self._check_deadlines(metadata_deadline_s)
            if not self._readable(ws):
                continue
            try:
                frame = ws.recv_frame()
            except _End:
                raise
            except websocket.WebSocketProtocolException as e:
                raise _End(Outcome.PROTOCOL, f"the service broke the WebSocket framing ({e})", 1002) from None
            except (OSError, websocket.WebSocketException) as e:
                if worker.stopping:
                    raise _End(Outcome.LOCAL, "the conversation was ended on the device") from None
                kind = "reset" if isinstance(e, ConnectionResetError) else "lost"
                if self._server_error is not None:  # the service said why before the line dropped
                    raise _End(*classify_end(None, "", self._server_error)) from e
                raise _End(Outcome.NETWORK, f"the connection to the service was {kind} without a close frame") from e
            op = frame.opcode
            if op == websocket.ABNF.OPCODE_PING:
                with contextlib.suppress(OSError, websocket.WebSocketException):
                    ws.pong(frame.data)  # a dead connection shows on the next read, classified there
                continue
            if op == websocket.ABNF.OPCODE_PONG:
                continue
            if op == websocket.ABNF.OPCODE_CLOSE:
                self._on_close_frame(ws, bytes(frame.data))
                return
            if op in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY, websocket.ABNF.OPCODE_CONT):
                data = frame.data if isinstance(frame.data, bytes) else str(frame.data).encode()
                if op != websocket.ABNF.OPCODE_CONT:
                    parts, parts_len = [], 0
                parts.append(data)
                parts_len += len(data)
                if parts_len > MAX_MESSAGE_BYTES:
                    raise _End(
                        Outcome.PROTOCOL,
                        f"the service sent a message over the {MAX_MESSAGE_BYTES // 1048576} MiB limit",
                        1009,
                    )
                if not frame.fin:
                    continue
                message = parts[0] if len(parts) == 1 else b"".join(parts)
                parts, parts_len = [], 0
                self._on_message(message, ws)

    def _on_close_frame(self, ws: websocket.WebSocket, data: bytes) -> None:
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
        outcome, detail = classify_end(code if code is not None else 1005, reason, self._server_error)
        if code is None and self._server_error is None:
            outcome, detail = Outcome.NORMAL, "the service ended the conversation (no close code)"
        raise _End(outcome, detail, code)

    def _on_message(self, raw: bytes, ws: websocket.WebSocket) -> None:
        now = time.monotonic()
        self._count("messages_received")
        try:
            event = decode_server_message(raw, self.output_format, now)
        except UnsupportedFormat as e:
            self._send_close(ws, 1003, "unsupported audio format")
            raise _End(Outcome.PROTOCOL, str(e), 1003) from None
        except MalformedMessage as e:
            self._count("malformed_messages")
            self._count(f"malformed_{e.kind}")
            self._server_log.warning(
                f"malformed:{e.kind}", "%s: ignored a malformed message from the service: %s", self.name, e
            )
            return
        if isinstance(event, Ping):
            self._send_now(encode_pong(event.event_id))  # first, before anything else
            self._count("pings")
            if event.ping_ms is not None:
                self.ping_ms = event.ping_ms
            self._emit(event)
        elif isinstance(event, AgentAudio):
            if self._filter.admit(event.event_id):
                self._count("agent_audio_chunks")
                self._emit(event)
            else:
                log.debug("%s: dropped stale audio of event %d", self.name, event.event_id)
        elif isinstance(event, Interruption):
            self._filter.interrupt(event.event_id)
            self._count("interruptions")
            self._emit(event)
        elif isinstance(event, ToolCall):
            self._on_tool_call(event)
        elif isinstance(event, Connected):
            self._on_connected(event)
        elif isinstance(event, UnknownEvent):
            self._on_unknown(event)
        elif isinstance(event, AgentToolResponse):
            self._count("agent_tool_responses")
            if event.ends_call:  # the agent hung up: end now, cleanly (close 1000), as the JS client does
                raise _End(Outcome.AGENT_ENDED, f"the agent ended the conversation ({event.tool_name} tool)", 1000)
        elif isinstance(event, McpToolCall):
            self._on_mcp_tool_call(event)
        elif isinstance(event, RichContent):
            if self._count("rich_content") == 1:
                log.info(
                    "%s: the agent sent rich content (%s) that this kiosk has no screen for; counted and ignored",
                    self.name,
                    event.component or "no component",
                )
            self._emit(event)
        elif isinstance(event, AgentResponsePart):
            self._count("agent_text_parts")
            self._emit(event)
        elif isinstance(event, ServerError):
            self._count("server_errors")
            self._server_error = event
            self._server_log.warning(
                "server_error",
                "%s: the service reported an error: %s %s %s",
                self.name,
                event.code,
                event.error_type,
                event.message,
            )
            self._emit(event)
        else:
            self._emit(event)

    def _on_unknown(self, event: UnknownEvent) -> None:
        """Count it (a bounded table, so a flood of new types costs no memory) and log each new type once."""
        self._count("unknown_events")
        if event.type in self._unknown_types or len(self._unknown_types) < MAX_UNKNOWN_TYPES:
            if self._count(f"unknown:{event.type}") == 1:
                self._unknown_types.add(event.type)
                self._server_log.info(
                    f"unknown:{event.type}",
                    "%s: ignoring unknown event type %r from the service",
                    self.name,
                    event.type,
                )
            return
        self._count("unknown:other")
        self._server_log.info(
            "unknown:other",
            "%s: ignoring unknown event types from the service; over %d types, they are counted as unknown:other",
            self.name,
            MAX_UNKNOWN_TYPES,
        )

    def _on_connected(self, event: Connected) -> None:
        if self.connected.is_set():
            self._server_log.warning(
                "second_metadata", "%s: a second conversation_initiation_metadata was ignored", self.name
            )
            return
        self.conversation_id = event.conversation_id
        self.output_format = event.output_format
        self._input_fmt = event.input_format
        if self._started_s is not None:
            self._timing_ms["connect_ms"] = (time.monotonic() - self._started_s) * 1000
        log.info(
            "%s: conversation %s started (agent speaks %s, hears %s)",
            self.name,
            event.conversation_id,
            event.output_format.name,
            event.input_format.name,
        )
        self.connected.set()
        self._emit(event)
        self._outbox.open()
        self._tx.start()

    # -- tools ----------------------------------------------------------------------------
    def _on_tool_call(self, call: ToolCall) -> None:
        self._count("tool_calls")
        # Atomic with respect to ending (see _wake_rx): a stop() after ToolCallStarted finds the call registered.
        with self._tool_lock:
            self._emit(ToolCallStarted(call.name, call.call_id))
            handle = self._tools.call(call.name, call.call_id, call.parameters, self._tool_reply)
            with self._lock:
                self._tool_calls = [h for h in self._tool_calls if not h.done]
                self._tool_calls.append(handle)

    def _tool_reply(self, result: ToolResult) -> None:
        if not self._send_now(encode_tool_result(result.call_id, result.result, result.is_error)):
            log.info("%s: the result of tool %s could not be sent: the conversation ended", self.name, result.name)
        self._emit(ToolCallFinished(result.name, result.call_id, result.is_error))

    def _on_mcp_tool_call(self, call: McpToolCall) -> None:
        """Answer an MCP tool call awaiting approval at once: tools.mcp_approve lists the approved ones."""
        self._count("mcp_tool_calls")
        if call.state != "awaiting_approval":
            if call.state == "failure":
                self._server_log.info(
                    f"mcp_failure:{call.tool_name}",
                    "%s: MCP tool %r failed on the service: %s",
                    self.name,
                    call.tool_name,
                    call.error,
                )
            return
        with self._lock:
            if call.call_id in self._mcp_answered:  # answered already; a second answer would contradict it
                return
            self._mcp_answered[call.call_id] = None
            if len(self._mcp_answered) > MAX_MCP_ANSWERED:
                self._mcp_answered.popitem(last=False)
        approved = self._tools.mcp_approves(call.tool_name)
        self._send_now(encode_mcp_approval(call.call_id, approved))
        self._count("mcp_approved" if approved else "mcp_denied")
        if approved:
            self._server_log.info(
                f"mcp_approved:{call.tool_name}",
                "%s: approved MCP tool %r (listed in tools.mcp_approve)",
                self.name,
                call.tool_name,
            )
        else:
            self._server_log.warning(
                f"mcp_denied:{call.tool_name}",
                "%s: denied MCP tool %r: only the tools listed in tools.mcp_approve are approved; "
                "add it there to let the agent run it",
                self.name,
                call.tool_name,
            )
        self._emit(McpApproval(call.tool_name, call.call_id, approved))

    # -- the sending thread -----------------------------------------------------------------
    def _tx_main(self, worker: Worker) -> None:
        fmt = self._input_fmt
        to_agent = CaptureConverter()  # one stream per connection: the resampler keeps its history
        while not worker.stopping:
            worker.beat()
            item = self._outbox.get(1.0)
            if item is None:
                continue
            if isinstance(item, str):
                if not self._send_now(item):
                    return
                continue
            pcm = item.pcm if fmt is None else to_agent.convert(item.pcm, fmt)
            if not self._send_now(encode_audio_chunk(pcm)):
                return
            sent_s = time.monotonic()
            latency_ms = (sent_s - item.captured_at_s) * 1000
            self._send_latency_last_ms = latency_ms
            self._send_latency_max_ms = max(self._send_latency_max_ms, latency_ms)
            self._count("audio_blocks_sent")
            if "first_audio_sent_ms" not in self._timing_ms and self._started_s is not None:
                self._timing_ms["first_audio_sent_ms"] = (sent_s - self._started_s) * 1000

    # -- ending ---------------------------------------------------------------------------------
    def _send_close(self, ws: websocket.WebSocket, code: int, reason: str = "") -> None:
        with self._lock:
            if self._close_sent or not self._handshake_done:
                return
            self._close_sent = True
            self._close_sent_s = time.monotonic()
        with contextlib.suppress(OSError, websocket.WebSocketException, ValueError):
            ws.send_close(code, reason.encode())

    def _wake_rx(self) -> None:
        """First wake: send the close frame (the service answers it); later wakes cut the socket."""
        self._cancel.set()
        if self._http is not None:
            self._http.interrupt()  # a signed-URL request in flight ends now (issue 10, item 11)
        with self._lock:
            self._wakes += 1
            first = self._wakes == 1
            ws = self._ws
            open_ = self._handshake_done and not self._close_sent
        if ws is None:
            return
        if first and open_:
            # A running tool still owes the service its one result: cancel it so that goes out before the close.
            with self._tool_lock:
                self._cancel_tools()
                self._send_close(ws, 1000)
        else:
            self._abort_socket()

    def _cancel_tools(self) -> None:
        """Cancel running tool calls and wait for them (each sends its one, cancelled, result)."""
        with self._lock:
            calls = list(self._tool_calls)
        for handle in calls:
            try:
                handle.cancel(TOOL_CANCEL_WAIT_S)
            except WorkerStuckError:
                log.error("%s: a tool call did not stop", self.name)

    def _abort_socket(self) -> None:
        with self._lock:
            ws = self._ws
        sock = getattr(ws, "sock", None) if ws is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _finish(self) -> None:
        self._outbox.close()
        ws = self._ws
        if ws is not None:
            with self._lock:
                end = self._end
            # A dead network would only stall a close frame; otherwise say goodbye properly.
            if end is None or end.outcome is not Outcome.NETWORK:
                code = end.close_code if end is not None and end.close_code in (1000, 1002, 1003, 1009) else 1000
                self._send_close(ws, code or 1000)
            self._abort_socket()
        try:
            self._tx.stop(self.agent.connect_timeout_s + 2.0)
        except WorkerStuckError:
            log.error("%s: the sending thread did not stop", self.name)
        if ws is not None:
            ws.shutdown()
        self._cancel_tools()
        if self._own_http and self._http is not None:
            self._http.close()
        self._deliver_end()
