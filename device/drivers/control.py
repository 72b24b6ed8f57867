"""The local control socket: a line protocol so a kiosk's own app can drive the daemon.

A Unix stream socket (``systemd.control_socket``, mode 0660, group
``systemd.control_group``): only root, the service user and members of that
group can connect. One request per line (UTF-8, at most 4096 bytes), one
answer per line, as many requests per connection as the client likes::

    start            start a conversation (like a press in idle)
    stop             end the conversation (like a long press)
    press            the on-screen button went down (exactly like the physical one)
    release          ... and up
    mute / unmute    force the microphone off / let it on (a mute switch still wins)
    context TEXT     send TEXT to the agent as background information (no reply from it)
    message TEXT     send TEXT to the agent as if the user had said it
    status           the daemon's status as one line of JSON
    help             the list of commands

Answers: ``ok`` or ``ok TEXT`` (the state after the command, or the JSON of
``status``), or ``error TEXT`` saying what went wrong and what to do.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device.core.controlproto import (
    BUSY_ANSWER,
    HELP_ANSWER,
    LINE_TOO_LONG_ANSWER,
    MAX_LINE_BYTES,
    OK,
    REPLY_TIMEOUT_ANSWER,
    LineBuffer,
    LineTooLong,
    encode,
    parse,
    parse_answer,
    reply_answer,
    status_answer,
)
from device.core.errors import DeviceError, ExitCode
from device.core.events import ButtonEvent, Command, MuteEvent
from device.drivers.worker import Worker, WorkerExited

log = logging.getLogger(__name__)

MAX_CLIENTS = 32  # when all are taken, the least recently active connection is closed to make room
LISTEN_BACKLOG = 64  # connections the kernel queues for accept()
IDLE_TIMEOUT_S = 60.0  # a connection that sends nothing for this long is closed
WRITE_STALL_S = 5.0  # a connection that reads none of its pending answer for this long is closed
MAX_OUTPUT_BYTES = 64 * 1024  # unsent answers kept per connection (a status line is about 2 KB)
POLL_S = 0.5
DROP_LOG_EVERY_S = 60.0
REPLY_TIMEOUT_S = 3.0
SOURCE = "ctl"


class ControlError(DeviceError):
    """The control socket could not be set up or reached."""

    exit_code = ExitCode.UNAVAILABLE


@dataclass(eq=False)
class _Ask:
    """A command waiting for the controller's answer; ``done`` is guarded by the server's lock."""

    client: _Client
    deadline: float
    answer: str = ""
    done: bool = False


@dataclass(eq=False)
class _Client:
    """One connection: its unread requests, its unsent answers, and the limits that close it.

    The limits read the module's constants when they are checked, so a test can shorten them.
    """

    sock: socket.socket
    last_progress: float  # monotonic time of the last byte read from or written to it
    lines: LineBuffer = field(default_factory=LineBuffer)
    outbuf: bytearray = field(default_factory=bytearray)
    ask: _Ask | None = None  # at most one command in flight, so answers keep the order of requests
    eof: bool = False  # it has shut down its side: answer what it sent, then close
    events: int = 0  # what it is registered for in the selector

    @property
    def busy(self) -> bool:
        """Its next request must wait: an answer is unsent or a command is in flight."""
        return bool(self.outbuf) or self.ask is not None

    @property
    def wanted_events(self) -> int:
        """What to wait for in the selector.

        Read only while it is not busy: a client that does not read cannot make us buffer more.
        """
        events = selectors.EVENT_WRITE if self.outbuf else 0
        if not self.busy and not self.eof:
            events |= selectors.EVENT_READ
        return events

    def deadline(self) -> float:
        """When it next needs looking at: its command's answer is due, or a limit runs out."""
        if self.ask is not None:
            return self.ask.deadline
        if self.outbuf:
            return self.last_progress + WRITE_STALL_S
        return self.last_progress + IDLE_TIMEOUT_S

    def overdue(self, now: float) -> str | None:
        """Why it must be closed at ``now`` (idle, or not reading its answer); None while it may stay.

        Never while a command is in flight: that one is answered with a timeout instead.
        """
        if self.ask is not None:
            return None
        if self.outbuf and now >= self.last_progress + WRITE_STALL_S:
            return f"it left its answer unread for {WRITE_STALL_S:.0f} s"
        if not self.outbuf and now >= self.last_progress + IDLE_TIMEOUT_S:
            return f"it was idle for {IDLE_TIMEOUT_S:.0f} s"
        return None

    def queue(self, answer: str) -> str | None:
        """Add an answer to the unsent ones; why it must be closed when that makes too many."""
        self.outbuf += encode(answer)
        if len(self.outbuf) > MAX_OUTPUT_BYTES:
            return f"more than {MAX_OUTPUT_BYTES} bytes of its answers were unread"
        return None

    def read(self) -> bool:
        """Take what the socket has, or its end; False when there was nothing after all. OSError: it failed."""
        try:
            data = self.sock.recv(MAX_LINE_BYTES)
        except BlockingIOError:
            return False
        if data:
            self.last_progress = time.monotonic()
            self.lines.feed(data)
        else:
            self.eof = True  # answer what it sent, then close
        return True

    def write(self) -> None:
        """Send what the socket takes now; the rest waits for EVENT_WRITE. OSError: it failed."""
        try:
            sent = self.sock.send(self.outbuf)
        except BlockingIOError:
            return
        if sent:
            del self.outbuf[:sent]
            self.last_progress = time.monotonic()


class _SocketFile:
    """The socket's name on disk: made only for this user and the group, removed only while it is still ours."""

    def __init__(self, path: Path, group: str) -> None:
        self.path = path
        self.group = group
        self._made: tuple[int, int] | None = None  # (st_dev, st_ino) of the socket file it bound

    def bind(self) -> socket.socket:
        """A listening socket at ``path``, replacing a stale file there, never a live one (ControlError)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.is_socket():
                pid = serving_pid(str(self.path))
                if pid is not None:
                    raise ControlError(
                        f"{self.path} is served by another process{pid_note(pid)}; it is left alone (give this "
                        "daemon its own systemd.control_socket)"
                    )
                self.path.unlink()  # left over from a killed daemon: nobody listens on it
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            old_umask = os.umask(0o177)  # never world-accessible, not even for a moment
            try:
                sock.bind(str(self.path))
            finally:
                os.umask(old_umask)
            made = os.stat(self.path)
            self._made = (made.st_dev, made.st_ino)
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
        except OSError as e:
            raise ControlError(
                f"cannot create the control socket {self.path}: {e.strerror or e}; check that its directory "
                "exists and the service may write it (RuntimeDirectory=voice-appliance), or set "
                "systemd.control_socket = \"\" to turn it off"
            ) from None
        return sock

    def restrict(self) -> None:
        """Give it to the group (mode 0660), or only to this user when that cannot be done."""
        mode = 0o600
        if self.group:
            try:
                gid = grp.getgrnam(self.group).gr_gid
                os.chown(self.path, -1, gid)
                mode = 0o660
            except KeyError:
                log.warning(
                    "control socket: group %r does not exist, so only this user can use %s "
                    "(create the group or set systemd.control_group)",
                    self.group,
                    self.path,
                )
            except OSError as e:
                log.warning(
                    "control socket: cannot give %s to group %r (%s); only this user can use it",
                    self.path,
                    self.group,
                    e.strerror,
                )
        os.chmod(self.path, mode)

    def remove(self) -> None:
        """Remove the socket file if it is still the one this server made (not one that replaced it)."""
        try:
            now = os.lstat(self.path)
        except OSError:
            return  # already gone
        if (now.st_dev, now.st_ino) != self._made:
            log.info("control socket: %s is no longer the one this daemon made; leaving it", self.path)
            return
        with contextlib.suppress(OSError):
            self.path.unlink()


class ControlServer(Worker):
    """Serves the control socket on its own thread; posts events to the controller.

    One thread multiplexes every connection with non-blocking I/O, so no
    client can hold up another: a client's unsent answers wait in its own
    bounded buffer, a command waiting for the controller does not block the
    loop, idle and non-reading clients are closed after a while, and when all
    slots are taken the least recently active connection makes room.
    """

    def __init__(
        self,
        path: str,
        group: str,
        post: Callable[[object], bool],
        status: Callable[[], Mapping[str, Any]],
        *,
        clock: Callable[[], float] = time.monotonic,
        on_exit: Callable[[WorkerExited], None] | None = None,
    ) -> None:
        super().__init__("control", on_exit)
        self.path = Path(path)
        self.group = group
        self._post = post
        self._status = status
        self._clock = clock
        self._listener: socket.socket | None = None
        self._file = _SocketFile(self.path, group)
        self._clients: list[_Client] = []
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._answer_lock = threading.Lock()  # guards _answered, _closed and every _Ask.done
        self._answered: list[_Ask] = []
        self._closed = False
        self.requests = 0
        self.dropped = 0  # connections closed for being idle, not reading, or making room
        self._drops_logged = 0
        self._drop_log_s = -DROP_LOG_EVERY_S

    # -- lifetime ------------------------------------------------------------------------------
    def bind(self) -> None:
        """Create the socket (replacing a stale one, never a live one) and restrict it to the group."""
        self._listener = self._file.bind()
        self._file.restrict()

    def start(self) -> None:
        if self._listener is None:
            self.bind()
        super().start()

    def unblock(self) -> None:
        with self._answer_lock:
            if self._closed:
                return  # the pipe is gone; its descriptor number may already belong to someone else
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")

    def run(self) -> None:
        assert self._listener is not None
        try:
            self._selector.register(self._listener, selectors.EVENT_READ)
            self._selector.register(self._wake_r, selectors.EVENT_READ)
            while not self.stopping:
                self.beat()
                self._serve_once()
        finally:
            self._close_all()

    def _close_all(self) -> None:
        with self._answer_lock:
            if self._closed:
                return
            self._closed = True
        for c in self._clients:
            c.sock.close()
        self._clients.clear()
        self._selector.close()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            self._file.remove()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def close(self) -> None:
        """Stop serving, remove the socket file (if still ours), release everything (idempotent)."""
        self.stop()
        if not self.alive:
            self._close_all()  # also when it was bound but never started

    # -- serving -------------------------------------------------------------------------------------
    def _serve_once(self) -> None:
        now = time.monotonic()
        timeout_s = POLL_S
        for c in self._clients:
            timeout_s = min(timeout_s, c.deadline() - now)
        for key, mask in self._selector.select(max(0.0, timeout_s)):
            obj = key.fileobj
            if obj == self._wake_r:
                with contextlib.suppress(OSError):
                    os.read(self._wake_r, 4096)
            elif obj is self._listener:
                self._accept()
            else:
                client: _Client = key.data
                if client not in self._clients:
                    continue  # dropped earlier in this round
                if mask & selectors.EVENT_WRITE:
                    self._flush(client)
                if mask & selectors.EVENT_READ and client in self._clients:
                    self._read(client)
        self._collect_answers()
        self._expire(time.monotonic())

    def _expire(self, now: float) -> None:
        for c in list(self._clients):
            ask = c.ask
            if ask is not None:
                if now >= ask.deadline and self._finish(ask, REPLY_TIMEOUT_ANSWER):
                    self._collect_answers()
            elif (why := c.overdue(now)) is not None:
                self._drop(c, why)

    def _accept(self) -> None:
        assert self._listener is not None
        for _ in range(LISTEN_BACKLOG):  # everything queued, but never loop forever
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return  # BlockingIOError: none left
            sock.setblocking(False)
            if len(self._clients) >= MAX_CLIENTS:
                # Make room instead of refusing: whoever has done nothing for longest goes.
                oldest = min(self._clients, key=lambda c: c.last_progress)
                self._drop(oldest, f"all {MAX_CLIENTS} connections were taken and it was the least active")
            client = _Client(sock, time.monotonic())
            self._clients.append(client)
            self._selector.register(sock, selectors.EVENT_READ, client)
            client.events = selectors.EVENT_READ

    def _read(self, client: _Client) -> None:
        try:
            if not client.read():
                return
        except OSError:
            self._drop(client, None)
            return
        self._process(client)

    def _process(self, client: _Client) -> None:
        """Answer the client's complete lines, one at a time, while it is not busy; then re-register it."""
        while not client.busy and client in self._clients:
            try:
                line = client.lines.pop()
            except LineTooLong:
                self._refuse_long_line(client)
                break
            if line is None:
                break
            answer = self.handle(line, client)
            if answer is not None:
                self._send(client, answer)
        if client not in self._clients:
            return
        if client.lines.overlong:
            self._refuse_long_line(client)
        if client.eof and not client.busy:
            self._drop(client, None)
        elif client in self._clients:
            self._register(client)

    def _refuse_long_line(self, client: _Client) -> None:
        client.lines.clear()
        client.eof = True  # read no more from it; close once the refusal is out
        self._send(client, LINE_TOO_LONG_ANSWER)

    def _send(self, client: _Client, answer: str) -> None:
        why = client.queue(answer)
        if why is not None:
            self._drop(client, why)
            return
        self._write(client)

    def _write(self, client: _Client) -> None:
        try:
            client.write()
        except OSError:
            self._drop(client, None)

    def _flush(self, client: _Client) -> None:
        if client.outbuf:
            self._write(client)
        if client in self._clients:
            self._process(client)  # requests that waited behind this answer

    def _register(self, client: _Client) -> None:
        events = client.wanted_events
        if events == client.events:
            return
        if client.events == 0:
            self._selector.register(client.sock, events, client)
        elif events == 0:
            self._selector.unregister(client.sock)
        else:
            self._selector.modify(client.sock, events, client)
        client.events = events

    def _drop(self, client: _Client, why: str | None) -> None:
        if client not in self._clients:
            return
        self._clients.remove(client)
        if why is not None:
            self.dropped += 1
            now = time.monotonic()
            if now - self._drop_log_s >= DROP_LOG_EVERY_S:  # a client reconnecting in a loop must not flood the log
                log.info(
                    "control socket: closed %d connection(s) since the last report, the latest because %s",
                    self.dropped - self._drops_logged,
                    why,
                )
                self._drop_log_s = now
                self._drops_logged = self.dropped
        if client.events:
            self._selector.unregister(client.sock)
            client.events = 0
        if client.ask is not None:
            with self._answer_lock:
                client.ask.done = True  # a late answer from the controller goes nowhere
        client.sock.close()

    # -- commands that wait for the controller ---------------------------------------------------------
    def _finish(self, ask: _Ask, answer: str) -> bool:
        """Record the answer once (from any thread); False when it already had one."""
        with self._answer_lock:
            if ask.done:
                return False
            ask.done = True
            ask.answer = answer
            self._answered.append(ask)
        return True

    def _collect_answers(self) -> None:
        with self._answer_lock:
            answered, self._answered = self._answered, []
        for ask in answered:
            client = ask.client
            if client.ask is ask and client in self._clients:
                client.ask = None
                self._send(client, ask.answer)
                if client in self._clients:
                    self._process(client)

    def handle(self, line: str, client: _Client | None = None) -> str | None:
        """Answer one request line; None when the answer comes later (a command sent to the controller)."""
        self.requests += 1
        req = parse(line)
        if isinstance(req, str):
            return req  # what is wrong with it
        name = req.name
        now = self._clock()
        if name == "help":
            return HELP_ANSWER
        if name == "status":
            return status_answer(self._status())
        if name in ("press", "release"):
            return self._posted(ButtonEvent(SOURCE, name == "press", now))
        if name in ("mute", "unmute"):
            return self._posted(MuteEvent(SOURCE, name == "mute", now))
        assert client is not None, "commands are only answered on a connection"
        return self._ask(client, Command(name, req.text))

    def _posted(self, event: object) -> str:
        return OK if self._post(event) else BUSY_ANSWER

    def _ask(self, client: _Client, cmd: Command) -> str | None:
        ask = _Ask(client, time.monotonic() + REPLY_TIMEOUT_S)

        def reply(ok: bool, text: str) -> None:  # called on the controller's thread
            if self._finish(ask, reply_answer(ok, text)):
                self.unblock()

        client.ask = ask
        if not self._post(Command(cmd.name, cmd.text, reply)):
            client.ask = None
            with self._answer_lock:
                ask.done = True
            return BUSY_ANSWER
        return None


# -- the client side (voice-appliance ctl) ------------------------------------------------------------


def request(path: str, line: str, timeout_s: float = 5.0, group: str | None = None) -> tuple[bool, str]:
    """Send one request line; returns (ok, text). ControlError when the daemon cannot be reached.

    ``group`` is systemd.control_group, for the advice when this user may not connect (None: not known).
    """
    if "\n" in line:
        raise ValueError("one request per line")
    try:
        sock = _connected(path, timeout_s)
    except FileNotFoundError:
        raise ControlError(
            f"no control socket at {path}: is the daemon running? (systemctl status voice-appliance)"
        ) from None
    except PermissionError:
        join = (
            f"join its group {group} (sudo adduser $USER {group}"
            if group
            else "join the group systemd.control_group names (sudo adduser $USER GROUP"
        )
        err = ControlError(f"not allowed to use {path}; run as root or {join}, then log in again)")
        err.exit_code = ExitCode.NOPERM
        raise err from None
    except ConnectionRefusedError:
        raise ControlError(f"nothing listens on {path}: the daemon is not running") from None
    except BlockingIOError:
        raise ControlError(f"the daemon did not accept the connection on {path} in {timeout_s:g} s") from None
    except OSError as e:
        raise ControlError(f"cannot reach the daemon at {path}: {e.strerror or e}") from None
    with sock:
        try:
            sock.sendall(line.encode("utf-8") + b"\n")
            buf = b""
            while b"\n" not in buf:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
        except OSError as e:
            raise ControlError(f"the daemon did not answer on {path}: {e.strerror or e}") from None
    answer = buf.partition(b"\n")[0].decode("utf-8", "replace")
    parsed = parse_answer(answer)
    if parsed is None:
        raise ControlError(f"unexpected answer from the daemon: {answer[:200]!r}")
    return parsed


def serving_pid(path: str, timeout_s: float = 2.0) -> int | None:
    """The pid of the process listening on ``path`` (0 when it cannot be told); None when nobody listens.

    A socket file nobody listens on (ECONNREFUSED) is what a killed daemon leaves behind.
    """
    try:
        sock = _connected(path, timeout_s)
    except BlockingIOError:
        return 0  # its accept queue stays full: someone listens
    except OSError:
        return None  # refused, missing, or not ours to tell: what comes next (bind, unlink) says which
    with sock:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[0])  # struct ucred: pid, uid, gid


def pid_note(pid: int) -> str:
    """`` (pid N)`` for a message, or nothing when the pid is not known (0)."""
    return f" (pid {pid})" if pid else ""


def _connected(path: str, timeout_s: float) -> socket.socket:
    """A stream socket connected to ``path`` (OSError as connect raised it; the socket is then closed)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout_s)
    try:
        _connect(sock, path, time.monotonic() + timeout_s)
    except BaseException:
        sock.close()
        raise
    return sock


def _connect(sock: socket.socket, path: str, deadline: float) -> None:
    """Connect, waiting while the daemon's accept queue is full (a Unix socket then fails at once)."""
    while True:
        try:
            sock.connect(path)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.005)  # the server thread drains the queue within milliseconds
