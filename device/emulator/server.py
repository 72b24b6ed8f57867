"""The emulator's server: HTTP and WebSocket on one port (owns the listening socket).

Built on ``websockets``' threaded server: one accept thread, one thread per
connection (each drives one :class:`~device.emulator.conversation.Conversation`).
Plain HTTP GETs (signed URL, token) are answered from ``process_request`` on
the same port. :meth:`Emulator.stop` closes every conversation, joins every
thread and releases the port.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http
import itertools
import json
import logging
import re
import secrets
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from email.utils import formatdate
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.sync.server import Server, ServerConnection, serve
from websockets.typing import Subprotocol

from device.core.errors import UnavailableError
from device.drivers.worker import Worker
from device.emulator.conversation import CLOSE_INTERNAL, Conversation
from device.emulator.outbox import Action, Close, Drop, Send, SendRaw
from device.emulator.recording import ConversationRecord, Violation, save
from device.emulator.scenario import Fault, Scenario, default_scenario
from device.emulator.speech import CACHE_ENTRIES, Backend, Synthesizer

log = logging.getLogger(__name__)

CONVERSATION_PATH = "/v1/convai/conversation"
SIGNED_URL_PATH = "/v1/convai/conversation/get-signed-url"
TOKEN_PATH = "/v1/convai/conversation/token"
SIGNATURE_PARAM = "conversation_signature"
# WebSocket subprotocols: browsers and the official JS client request "convai" (the service
# selects it; a client whose request is not answered fails the handshake) and may carry a
# conversation token as "bearer.<token>" (never selected: it would echo the secret).
SUBPROTOCOL = "convai"
BEARER_PREFIX = "bearer."
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
_POLL_S = 0.05  # longest a conversation thread waits before checking for stop
_CLOSE_TIMEOUT_S = 2.0  # closing handshake: how long a close waits for the client's answer
_STOP_GRACE_S = _CLOSE_TIMEOUT_S + 1.0  # stop(): conversations close themselves within this
_HOST_RE = re.compile(r"^[A-Za-z0-9.\-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")


class _AcceptWorker(Worker):
    def __init__(self, server: Server) -> None:
        super().__init__("emulator-accept")
        self._server = server

    def run(self) -> None:
        self._server.serve_forever()


class Emulator:
    """A local ElevenAgents-compatible agent server.

    ``with Emulator(scenario) as emu:`` starts it on a free port of 127.0.0.1;
    ``emu.base_url`` is the REST base, ``emu.signed_url()`` mints a WebSocket
    URL directly, ``emu.wait_for_conversation_end()`` returns what happened.
    """

    def __init__(
        self,
        scenario: Scenario | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str = "emulator-key",
        record_dir: Path | None = None,
        speech: Backend = "auto",
        synthesizer: Synthesizer | None = None,
        keep_conversations: int | None = None,
        render_replies: bool = False,
    ) -> None:
        self.scenario = scenario or default_scenario()
        self.host = host
        self._requested_port = port
        self._api_key = api_key
        self.record_dir = record_dir
        agent = self.scenario.agent
        self.synthesizer = synthesizer or Synthesizer(speech, agent.voice, agent.words_per_minute)
        # Also synthesise every scripted reply at start (the bench, `voice-appliance emulator`), so a reply
        # starts when the scenario's timing says, however long espeak-ng and the resampler take here (on
        # a slow or emulated CPU seconds, which the bench would otherwise count as the agent's latency).
        self._render_replies = render_replies
        self._secret = secrets.token_bytes(32)
        self._cond = threading.Condition()
        self._records: list[ConversationRecord] = []
        # A long-running emulator forgets the oldest finished records (audio is big);
        # their violations are kept for the report.
        self._keep = keep_conversations
        self._started = 0
        self._ended = 0
        self._archived_violations: list[Violation] = []
        self._connections: list[ServerConnection] = []
        # conversation threads still running: (thread, socket, record once there is one)
        self._live: dict[threading.Thread, tuple[ServerConnection, ConversationRecord | None]] = {}
        self._http_log: list[dict[str, Any]] = []
        self._refusals: list[dict[str, Any]] = []
        self._fault_uses: dict[int, int] = {}
        self._conn_seq = itertools.count()
        self._stopping = threading.Event()
        self._server: Server | None = None
        self._accept: _AcceptWorker | None = None
        self._lock = threading.Lock()
        self.port = 0

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> Emulator:
        """Listen and serve in the background; returns once the port is bound."""
        if self._server is not None:
            raise RuntimeError("emulator already started")
        # Synthesise what every conversation starts with now, so the metadata and the
        # first audio are not held up by espeak-ng when a client connects.
        agent = self.scenario.agent
        for text in self._texts_to_render():
            self.synthesizer.render(text, agent.output)
        try:
            self._server = serve(
                self._handle,
                self.host,
                self._requested_port,
                process_request=self._process_request,
                select_subprotocol=_select_subprotocol,
                compression=None,
                ping_interval=None,  # the protocol's own pings are used instead
                max_size=MAX_MESSAGE_BYTES,
                close_timeout=_CLOSE_TIMEOUT_S,
                server_header="voice-appliance-emulator",
                logger=logging.getLogger("device.emulator.websockets"),
            )
        except OSError as e:
            raise UnavailableError(
                f"cannot listen on {self.host}:{self._requested_port}: {e.strerror}; "
                "choose another --port (0 picks a free one)"
            ) from e
        self.port = self._server.socket.getsockname()[1]
        self._accept = _AcceptWorker(self._server)
        self._accept.start()
        log.info(
            "emulator listening on %s (agent %s, %s)",
            self.base_url,
            self.agent_id,
            "public" if self.scenario.agent.public else "private: signed URL required",
        )
        return self

    def _texts_to_render(self) -> list[str]:
        """What start() synthesises: the opening lines, and with render_replies the scripted replies.

        A reply with ``{result}`` depends on the tool's answer and is left to its turn; no more
        than the synthesizer keeps are rendered, so none pushes out the opening lines.
        """
        agent = self.scenario.agent
        texts = [t for t in (agent.first_message, agent.reprompt) if t.strip()]
        if self._render_replies:
            texts += [t.reply for t in self.scenario.turns if "{result}" not in t.reply]
        return list(dict.fromkeys(texts))[:CACHE_ENTRIES]

    def stop(self, timeout_s: float = 10.0) -> None:
        """Close every conversation (1011), join every thread, release the port. Idempotent."""
        self._stopping.set()
        server, self._server = self._server, None
        if server is None:
            return
        self._reset_stuck_senders()
        server.shutdown()  # returns once every connection handler has finished
        if self._accept is not None:
            self._accept.stop(timeout_s)
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            conn.recv_events_thread.join(timeout_s)
        with self._cond:
            self._cond.notify_all()
        log.info("emulator stopped")

    close = stop

    def _reset_stuck_senders(self) -> None:
        """Give each conversation time to close (1011); reset those stuck sending to a client that stopped reading.

        A send to such a client blocks in ``sendall()`` holding the connection's lock, so
        neither our close nor the library's shutdown could ever get through.
        """
        deadline = time.monotonic() + _STOP_GRACE_S
        with self._lock:
            live = list(self._live.items())
        for thread, _ in live:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        for thread, (ws, record) in live:
            if thread.is_alive() and thread is not threading.current_thread():
                log.warning(
                    "conversation %s did not close within %.0f s (a client that stopped reading?); "
                    "resetting its connection",
                    record.conversation_id if record else "(not started)",
                    _STOP_GRACE_S,
                )
                if record is not None:
                    self._finish(record, None, "emulator stopped; the client was not reading", "server")
                _reset(ws)

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- addresses -----------------------------------------------------------
    @property
    def agent_id(self) -> str:
        return self.scenario.agent.agent_id

    @property
    def _connect_host(self) -> str:
        if self.host in ("", "0.0.0.0"):
            return "127.0.0.1"
        if self.host == "::":
            return "[::1]"
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def base_url(self) -> str:
        """REST base, e.g. ``http://127.0.0.1:8765`` (use as agent.base_url)."""
        return f"http://{self._connect_host}:{self.port}"

    @property
    def ws_base_url(self) -> str:
        return f"ws://{self._connect_host}:{self.port}"

    def public_url(self, agent_id: str | None = None) -> str:
        """The WebSocket URL of a public agent (no signature)."""
        return f"{self.ws_base_url}{CONVERSATION_PATH}?agent_id={quote(agent_id or self.agent_id)}"

    def signed_url(self, agent_id: str | None = None, *, ttl_s: float | None = None, host: str | None = None) -> str:
        """Mint a signed URL as get-signed-url would (``ttl_s`` < 0 gives an expired one)."""
        agent = agent_id or self.agent_id
        ttl = self.scenario.timing.signed_url_ttl_s if ttl_s is None else ttl_s
        expires = time.time() + ttl
        base = f"ws://{host}" if host else self.ws_base_url
        return f"{base}{CONVERSATION_PATH}?agent_id={quote(agent)}&{SIGNATURE_PARAM}={self._sign(agent, expires)}"

    def _sign(self, agent_id: str, expires: float) -> str:
        expiry = f"{expires:.3f}"
        mac = hmac.new(self._secret, f"{agent_id}|{expiry}".encode(), hashlib.sha256).hexdigest()[:40]
        return f"{expiry}~{mac}"

    def _check_signature(self, agent_id: str, signature: str) -> str | None:
        """None when valid, else what is wrong with it."""
        expiry, sep, mac = signature.partition("~")
        try:
            expires = float(expiry)
        except ValueError:
            return "malformed"
        if not sep:
            return "malformed"
        good = hmac.new(self._secret, f"{agent_id}|{expiry}".encode(), hashlib.sha256).hexdigest()[:40]
        if not hmac.compare_digest(good, mac):
            return "invalid"
        if time.time() > expires:
            return "expired"
        return None

    # -- what happened ---------------------------------------------------------
    @property
    def conversations(self) -> list[ConversationRecord]:
        """Snapshots of every conversation so far, oldest first."""
        with self._cond:
            records = list(self._records)
        return [r.snapshot() for r in records]

    @property
    def violations(self) -> list[Violation]:
        """Every violation by every client since start (also of records no longer kept)."""
        with self._cond:
            archived = list(self._archived_violations)
        return archived + [v for r in self.conversations for v in r.violations]

    @property
    def conversations_started(self) -> int:
        with self._cond:
            return self._started

    @property
    def conversations_ended(self) -> int:
        with self._cond:
            return self._ended

    @property
    def http_requests(self) -> list[dict[str, Any]]:
        """REST requests served: t_s, path, agent_id, status."""
        with self._lock:
            return [dict(r) for r in self._http_log]

    @property
    def refusals(self) -> list[dict[str, Any]]:
        """WebSocket connections refused (bad agent, signature or a fault): t_s, how, code/status, reason."""
        with self._lock:
            return [dict(r) for r in self._refusals]

    def wait_until(
        self,
        predicate: Callable[[list[ConversationRecord]], bool],
        timeout_s: float = 10.0,
        what: str = "the condition",
    ) -> list[ConversationRecord]:
        """Block until ``predicate(conversations)`` holds; TimeoutError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                snaps = [r.snapshot() for r in self._records]
                if predicate(snaps):
                    return snaps
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"emulator: {what} did not happen within {timeout_s:g} s")
                self._cond.wait(min(remaining, 0.5))

    def wait_for_conversation_end(self, index: int = -1, timeout_s: float = 10.0) -> ConversationRecord:
        """The record of conversation ``index`` (-1: the latest) once its socket has closed."""

        def pick(snaps: list[ConversationRecord]) -> ConversationRecord | None:
            if index < 0:
                return snaps[index] if len(snaps) >= -index else None
            return next((r for r in snaps if r.index == index), None)

        def ended(snaps: list[ConversationRecord]) -> bool:
            r = pick(snaps)
            return r is not None and r.ended

        found = pick(self.wait_until(ended, timeout_s, f"the end of conversation {index}"))
        assert found is not None
        return found

    def _forget_old(self) -> None:
        with self._cond:
            self._ended += 1
            if self._keep is None:
                return
            while len(self._records) > self._keep and self._records[0].ended:
                old = self._records.pop(0)
                self._archived_violations += old.violations

    def _changed(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # -- HTTP --------------------------------------------------------------------
    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        agent_id = query.get("agent_id", "")
        if parts.path == SIGNED_URL_PATH:
            return self._rest(request, agent_id, signed=True)
        if parts.path == TOKEN_PATH:
            return self._rest(request, agent_id, signed=False)
        if parts.path != CONVERSATION_PATH:
            return self._json(
                404, {"detail": {"status": "not_found", "message": f"No route for {parts.path}"}}, path=parts.path
            )
        return self._admit(connection, agent_id, query, _bearer_token(request))

    def _rest(self, request: Request, agent_id: str, signed: bool) -> Response:
        path = SIGNED_URL_PATH if signed else TOKEN_PATH
        if signed:
            for n, fault in enumerate(self.scenario.faults):
                if fault.kind == "signed_url_error" and self._use_fault(n, fault):
                    headers = {}
                    if fault.status in (429, 503):
                        headers["Retry-After"] = f"{fault.retry_after_s:g}"
                    body = {
                        "detail": {
                            "status": "emulated_fault",
                            "message": f"Emulated HTTP {fault.status} from get-signed-url",
                        }
                    }
                    return self._json(fault.status, body, headers, path=path, agent_id=agent_id)
        key = request.headers.get("xi-api-key")
        if key is None:
            return self._json(
                401,
                {"detail": {"status": "needs_authorization", "message": "Missing the xi-api-key header"}},
                path=path,
                agent_id=agent_id,
            )
        if not hmac.compare_digest(key.encode(), self._api_key.encode()):
            return self._json(
                401,
                {"detail": {"status": "invalid_api_key", "message": "Invalid API key"}},
                path=path,
                agent_id=agent_id,
            )
        if agent_id != self.agent_id:
            return self._json(
                404,
                {"detail": {"status": "agent_not_found", "message": f"Agent {agent_id!r} not found"}},
                path=path,
                agent_id=agent_id,
            )
        if signed:
            host = request.headers.get("Host", "")
            url = self.signed_url(agent_id, host=host if _HOST_RE.match(host) else None)
            return self._json(200, {"signed_url": url}, path=path, agent_id=agent_id)
        # A conversation token: also admits a private agent's WebSocket as the "bearer.<token>" subprotocol.
        token = self._sign(agent_id, time.time() + self.scenario.timing.signed_url_ttl_s)
        return self._json(200, {"token": token}, path=path, agent_id=agent_id)

    def _use_fault(self, n: int, fault: Fault) -> bool:
        with self._lock:
            used = self._fault_uses.get(n, 0)
            if fault.count and used >= fault.count:
                return False
            self._fault_uses[n] = used + 1
            return True

    def _json(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None, *, path: str, agent_id: str = ""
    ) -> Response:
        data = json.dumps(body).encode()
        h = Headers(
            [
                ("Date", formatdate(usegmt=True)),
                ("Connection", "close"),
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(data))),
            ]
        )
        for k, v in (headers or {}).items():
            h[k] = v
        with self._lock:
            self._http_log.append({"t_s": time.monotonic(), "path": path, "agent_id": agent_id, "status": status})
        log.info("HTTP %s %s → %d", path, agent_id, status)
        return Response(status, http.HTTPStatus(status).phrase, h, data)

    def _admit(
        self, connection: ServerConnection, agent_id: str, query: dict[str, str], bearer: str | None = None
    ) -> Response | None:
        """Decide how a WebSocket upgrade is answered (None: accept)."""
        for n, fault in enumerate(self.scenario.faults):
            if fault.kind == "refuse_upgrade" and self._use_fault(n, fault):
                self._refused("http", fault.status, "refuse_upgrade fault")
                return self._json(
                    fault.status,
                    {"detail": {"status": "emulated_fault", "message": "Emulated refused upgrade"}},
                    path=CONVERSATION_PATH,
                    agent_id=agent_id,
                )
        problem: tuple[int, int, str] | None = None  # (http status, close code, reason)
        if agent_id != self.agent_id:
            problem = (404, 1008, f"Agent {agent_id!r} not found")
        elif not self.scenario.agent.public:
            signature = query.get(SIGNATURE_PARAM)
            if signature is None and bearer is not None:
                signature = bearer  # a conversation token from the token endpoint, as a subprotocol
            if signature is None:
                problem = (403, 1008, "This agent requires authentication: use a signed URL")
            else:
                wrong = self._check_signature(agent_id, signature)
                if wrong is not None:
                    problem = (403, 1008, f"The conversation signature is {wrong}")
        if problem is None:
            connection.emulator_query = {k: v for k, v in query.items() if k != SIGNATURE_PARAM}  # type: ignore[attr-defined]
            return None
        status, code, reason = problem
        if self.scenario.agent.auth_refusal == "http":
            self._refused("http", status, reason)
            return self._json(
                status, {"detail": {"status": "refused", "message": reason}}, path=CONVERSATION_PATH, agent_id=agent_id
            )
        connection.emulator_refusal = (code, reason)  # type: ignore[attr-defined]
        return None

    def _refused(self, how: str, code: int, reason: str) -> None:
        with self._lock:
            self._refusals.append({"t_s": time.monotonic(), "how": how, "code": code, "reason": reason})
        log.info("refused a conversation (%s %d): %s", how, code, reason)

    # -- conversations -------------------------------------------------------------
    def _handle(self, ws: ServerConnection) -> None:
        n = next(self._conn_seq)
        me = threading.current_thread()
        me.name = f"emulator-conn-{n}"
        with self._lock:
            self._connections = [c for c in self._connections if c.recv_events_thread.is_alive()]
            self._connections.append(ws)
            self._live[me] = (ws, None)
        try:
            self._converse(ws)
        finally:
            with self._lock:
                self._live.pop(me, None)

    def _converse(self, ws: ServerConnection) -> None:
        refusal = getattr(ws, "emulator_refusal", None)
        if refusal is not None:
            self._refused("close", *refusal)
            ws.close(*refusal)
            return
        agent = self.scenario.agent
        with self._cond:
            index = self._started
            self._started += 1
            record = ConversationRecord(
                conversation_id="conv_" + secrets.token_hex(12),
                agent_id=agent.agent_id,
                index=index,
                started_t_s=time.monotonic(),
                input_format=agent.input_format,
                output_format=agent.output_format,
            )
            self._records.append(record)
            self._cond.notify_all()
        with self._lock:
            self._live[threading.current_thread()] = (ws, record)
        log.info("conversation %s started (#%d)", record.conversation_id, index)
        conv = Conversation(self.scenario, record, render=self.synthesizer.render, clock=time.monotonic, seed=index)
        record.add_event(time.monotonic(), "to_agent", "query", **getattr(ws, "emulator_query", {}))
        try:
            self._drive(ws, conv, record)
        except Exception:
            log.exception("conversation %s failed inside the emulator", record.conversation_id)
            self._finish(record, *CLOSE_INTERNAL, "server")
            ws.close(*CLOSE_INTERNAL)
        finally:
            if record.ended_t_s is None:
                self._finish(record, None, "", "network")
            if self.record_dir is not None:
                try:
                    save(record, self.record_dir)
                except OSError as e:
                    log.error("cannot write the recording of %s to %s: %s", record.conversation_id, self.record_dir, e)
            with record.locked():
                record.complete = True
            self._forget_old()
            log.info(
                "conversation %s ended: %s %s (%s), %d violation(s)",
                record.conversation_id,
                record.close_code,
                record.close_reason,
                record.closed_by,
                len(record.violations),
            )
            self._changed()

    def _drive(self, ws: ServerConnection, conv: Conversation, record: ConversationRecord) -> None:
        if self._perform(ws, conv, record, conv.open()):
            return
        while not conv.closed:
            if self._stopping.is_set():
                self._perform(ws, conv, record, conv.stop())
                return
            deadline = conv.next_deadline_s()
            wait_s = _POLL_S if deadline is None else min(_POLL_S, max(0.0, deadline - time.monotonic()))
            try:
                data = ws.recv(timeout=wait_s)
            except TimeoutError:
                actions = conv.tick()
            except ConnectionClosed as e:
                self._client_gone(ws, conv, record, e)
                return
            else:
                actions = conv.receive(data)
            if self._perform(ws, conv, record, actions):
                return
            if actions:
                self._changed()

    def _perform(
        self, ws: ServerConnection, conv: Conversation, record: ConversationRecord, actions: list[Action]
    ) -> bool:
        """Carry out actions in order; True once the connection is finished."""
        for action in actions:
            try:
                if isinstance(action, Send):
                    ws.send(json.dumps(action.message))
                elif isinstance(action, SendRaw):
                    ws.send(action.text)
                elif isinstance(action, Close):
                    reason = action.reason.encode()[:123].decode("utf-8", "ignore")
                    self._finish(record, action.code, reason, "server")
                    ws.close(action.code, reason)
                    return True
                elif isinstance(action, Drop):
                    self._finish(record, None, "", "drop")
                    _abort(ws)
                    return True
            except ConnectionClosed as e:
                self._client_gone(ws, conv, record, e)
                return True
        return False

    def _client_gone(
        self, ws: ServerConnection, conv: Conversation, record: ConversationRecord, e: ConnectionClosed
    ) -> None:
        """The client closed (or vanished): still check what it sent before, then record the end."""
        conv.mute()
        while True:
            try:
                conv.receive(ws.recv(timeout=0))
            except (ConnectionClosed, TimeoutError):
                break
        code = e.rcvd.code if e.rcvd else None
        reason = e.rcvd.reason if e.rcvd else ""
        conv.client_closed(code, reason)
        self._finish(record, code, reason, "client" if e.rcvd else "network")

    def _finish(self, record: ConversationRecord, code: int | None, reason: str, by: str) -> None:
        with record.locked():
            if record.ended_t_s is not None:
                return
            record.close_code, record.close_reason, record.closed_by = code, reason, by
            record.ended_t_s = time.monotonic()


def _select_subprotocol(connection: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    """Select "convai" when the client asks for it, as the service does; nothing otherwise."""
    return Subprotocol(SUBPROTOCOL) if SUBPROTOCOL in offered else None


def _bearer_token(request: Request) -> str | None:
    """The token of a "bearer.<token>" subprotocol the client offered, if any."""
    for header in request.headers.get_all("Sec-WebSocket-Protocol"):
        for item in header.split(","):
            item = item.strip()
            if item.startswith(BEARER_PREFIX) and len(item) > len(BEARER_PREFIX):
                return item[len(BEARER_PREFIX) :]
    return None


def _reset(ws: ServerConnection) -> None:
    """Reset a connection from another thread, waking a send blocked on it."""
    with contextlib.suppress(OSError):
        ws.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):  # close() alone does not wake a thread blocked in sendall()
        ws.socket.shutdown(socket.SHUT_RDWR)
    ws.close_socket()


def _abort(ws: ServerConnection) -> None:
    """Reset the TCP connection: no close frame, an RST instead of a FIN."""
    with contextlib.suppress(OSError):  # already gone: nothing left to reset
        ws.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ws.close_socket()
