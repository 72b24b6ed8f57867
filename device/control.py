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
import json
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device.controller import ButtonEvent, Command, MuteEvent
from device.errors import DeviceError, ExitCode
from device.worker import Worker, WorkerExited

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 4096
MAX_CLIENTS = 16
POLL_S = 0.5
REPLY_TIMEOUT_S = 3.0
SOURCE = "ctl"

COMMANDS: Mapping[str, str] = {
    "start": "start a conversation",
    "stop": "end the conversation",
    "press": "press the button (on-screen push-to-talk)",
    "release": "release the button",
    "mute": "force the microphone off",
    "unmute": "let the microphone on again",
    "context": "context TEXT: background information for the agent",
    "message": "message TEXT: text the agent treats as the user's words",
    "status": "the daemon's status as JSON",
    "help": "this list",
}
_NEEDS_TEXT = ("context", "message")


class ControlError(DeviceError):
    """The control socket could not be set up or reached."""

    exit_code = ExitCode.UNAVAILABLE


@dataclass
class _Client:
    sock: socket.socket
    buf: bytearray = field(default_factory=bytearray)


class ControlServer(Worker):
    """Serves the control socket on its own thread; posts events to the controller."""

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
        self._clients: list[_Client] = []
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._closed = False
        self.requests = 0

    # -- lifetime ------------------------------------------------------------------------------
    def bind(self) -> None:
        """Create the socket (replacing a stale one) and restrict it to the group."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.is_socket():
                self.path.unlink()  # left over from a killed daemon
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            old_umask = os.umask(0o177)  # never world-accessible, not even for a moment
            try:
                sock.bind(str(self.path))
            finally:
                os.umask(old_umask)
            sock.listen(8)
            sock.setblocking(False)
        except OSError as e:
            raise ControlError(
                f"cannot create the control socket {self.path}: {e.strerror or e}; check that its directory "
                "exists and the service may write it (RuntimeDirectory=voice-appliance), or set "
                "systemd.control_socket = \"\" to turn it off"
            ) from None
        self._listener = sock
        self._restrict()

    def _restrict(self) -> None:
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

    def start(self) -> None:
        if self._listener is None:
            self.bind()
        super().start()

    def wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def run(self) -> None:
        try:
            while not self.stopping:
                self.beat()
                self._serve_once()
        finally:
            self._close_all()

    def _close_all(self) -> None:
        if self._closed:
            return
        self._closed = True
        for c in self._clients:
            c.sock.close()
        self._clients.clear()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            with contextlib.suppress(OSError):
                self.path.unlink()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def close(self) -> None:
        """Stop serving, remove the socket file, release everything (idempotent)."""
        self.stop()
        if not self.alive:
            self._close_all()  # also when it was bound but never started

    # -- serving -------------------------------------------------------------------------------------
    def _serve_once(self) -> None:
        assert self._listener is not None
        socks: list[Any] = [self._listener, self._wake_r, *(c.sock for c in self._clients)]
        try:
            readable, _, _ = select.select(socks, [], [], POLL_S)
        except (OSError, ValueError):
            return
        for r in readable:
            if r is self._wake_r:
                with contextlib.suppress(OSError):
                    os.read(self._wake_r, 64)
            elif r is self._listener:
                self._accept()
            else:
                client = next((c for c in self._clients if c.sock is r), None)
                if client is not None:
                    self._read(client)

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            sock, _ = self._listener.accept()
        except OSError:
            return
        if len(self._clients) >= MAX_CLIENTS:
            with contextlib.suppress(OSError):
                sock.sendall(b"error too many control connections; close one and try again\n")
            sock.close()
            return
        sock.settimeout(1.0)  # answers are small; a client that does not read is dropped
        self._clients.append(_Client(sock))

    def _read(self, client: _Client) -> None:
        try:
            data = client.sock.recv(MAX_LINE_BYTES)
        except OSError:
            data = b""
        if not data:
            self._drop(client)
            return
        client.buf += data
        while b"\n" in client.buf:
            line, _, rest = bytes(client.buf).partition(b"\n")
            client.buf = bytearray(rest)
            if len(line) > MAX_LINE_BYTES:  # its end may arrive in a later read than the limit
                self._refuse_long_line(client)
                return
            if not self._answer(client, self.handle(line.decode("utf-8", "replace"))):
                return
        if len(client.buf) > MAX_LINE_BYTES:
            self._refuse_long_line(client)

    def _refuse_long_line(self, client: _Client) -> None:
        self._answer(client, f"error line longer than {MAX_LINE_BYTES} bytes; send shorter lines")
        self._drop(client)

    def _answer(self, client: _Client, text: str) -> bool:
        try:
            client.sock.sendall(text.encode("utf-8") + b"\n")
            return True
        except OSError:
            self._drop(client)
            return False

    def _drop(self, client: _Client) -> None:
        client.sock.close()
        if client in self._clients:
            self._clients.remove(client)

    def handle(self, line: str) -> str:
        """Answer one request line (also used directly by tests)."""
        self.requests += 1
        name, _, text = line.strip().partition(" ")
        name = name.lower()
        text = text.strip()
        if not name:
            return "error empty command; send one of: " + ", ".join(COMMANDS)
        if name not in COMMANDS:
            return f"error unknown command {name!r}; send one of: " + ", ".join(COMMANDS)
        if name in _NEEDS_TEXT and not text:
            return f"error {name} needs text: {name} TEXT"
        if name not in _NEEDS_TEXT and text:
            return f"error {name} takes no arguments"
        now = self._clock()
        if name == "help":
            return "ok " + "; ".join(f"{k}: {v}" for k, v in COMMANDS.items())
        if name == "status":
            return "ok " + json.dumps(self._status(), separators=(",", ":"))
        if name in ("press", "release"):
            return self._posted(ButtonEvent(SOURCE, name == "press", now))
        if name in ("mute", "unmute"):
            return self._posted(MuteEvent(SOURCE, name == "mute", now))
        return self._ask(Command(name, text))

    def _posted(self, event: object) -> str:
        return "ok" if self._post(event) else "error the daemon is busy; try again"

    def _ask(self, cmd: Command) -> str:
        done = threading.Event()
        answer: list[tuple[bool, str]] = []

        def reply(ok: bool, text: str) -> None:
            answer.append((ok, text))
            done.set()

        if not self._post(Command(cmd.name, cmd.text, reply)):
            return "error the daemon is busy; try again"
        if not done.wait(REPLY_TIMEOUT_S):
            return "error the daemon did not answer in time; see `journalctl -u voice-appliance`"
        ok, text = answer[0]
        return f"ok {text}" if ok else f"error {text}"


# -- the client side (voice-appliance ctl) ------------------------------------------------------------


def request(path: str, line: str, timeout_s: float = 5.0) -> tuple[bool, str]:
    """Send one request line; returns (ok, text). ControlError when the daemon cannot be reached."""
    if "\n" in line:
        raise ValueError("one request per line")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout_s)
    try:
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise ControlError(
                f"no control socket at {path}: is the daemon running? (systemctl status voice-appliance)"
            ) from None
        except PermissionError:
            err = ControlError(
                f"not allowed to use {path}; run as root or join its group (sudo adduser $USER voice-appliance, "
                "then log in again)"
            )
            err.exit_code = ExitCode.NOPERM
            raise err from None
        except ConnectionRefusedError:
            raise ControlError(f"nothing listens on {path}: the daemon is not running") from None
        except OSError as e:
            raise ControlError(f"cannot reach the daemon at {path}: {e.strerror or e}") from None
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
    finally:
        sock.close()
    answer = buf.partition(b"\n")[0].decode("utf-8", "replace")
    word, _, text = answer.partition(" ")
    if word not in ("ok", "error"):
        raise ControlError(f"unexpected answer from the daemon: {answer[:200]!r}")
    return word == "ok", text
