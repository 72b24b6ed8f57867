"""Helpers shared by the test suites: a waiting collector, loopback ports, recording doubles."""

from __future__ import annotations

import array
import contextlib
import importlib.util
import math
import os
import selectors
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

import pytest
from hypothesis import settings

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[1]
WAIT_S = 30.0  # generous: the machines are shared; no test here asserts speed


class Collector(Generic[T]):
    """Items handed over by other threads, in order. Tests wait on a Condition, never sleep."""

    def __init__(self, timeout_s: float = WAIT_S) -> None:
        self.items: list[T] = []
        self.timeout_s = timeout_s
        self._cond = threading.Condition()

    def __call__(self, item: T) -> None:
        with self._cond:
            self.items.append(item)
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self.items)

    def matching(self, pred: Callable[[T], bool], after: int = 0) -> list[T]:
        """The items (from index ``after``) for which ``pred`` holds."""
        with self._cond:
            return [item for item in self.items[after:] if pred(item)]

    def wait_until(
        self, done: Callable[[list[T]], bool], timeout_s: float | None = None, what: Callable[[], str] | str = ""
    ) -> list[T]:
        """Until ``done(items)`` holds; a copy of the items then. ``what`` describes the failure."""
        with self._cond:
            if not self._cond.wait_for(lambda: done(self.items), self.timeout_s if timeout_s is None else timeout_s):
                text = what() if callable(what) else what
                raise AssertionError(f"{text or 'the awaited items'} did not arrive; got {self.items!r:.2000}")
            return list(self.items)

    def wait_first(
        self,
        pred: Callable[[T], bool],
        timeout_s: float | None = None,
        after: int = 0,
        what: Callable[[], str] | str = "",
    ) -> T:
        """The first item (from index ``after``) for which ``pred`` holds, once there is one."""
        items = self.wait_until(lambda xs: any(pred(x) for x in xs[after:]), timeout_s, what)
        return next(x for x in items[after:] if pred(x))

    def wait_count(
        self, pred: Callable[[T], bool], n: int, timeout_s: float | None = None, what: Callable[[], str] | str = ""
    ) -> list[T]:
        """Until at least ``n`` items satisfy ``pred``; those items."""
        items = self.wait_until(lambda xs: sum(1 for x in xs if pred(x)) >= n, timeout_s, what)
        return [x for x in items if pred(x)]


def free_port() -> int:
    """A loopback TCP port nothing listens on (at the time of asking)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def self_signed_cert(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A certificate and key for ``host`` (an IP address or a name) that no client trusts unless told to."""
    crt, key = directory / "server.crt", directory / "server.key"
    san = f"IP:{host}" if host.replace(".", "").isdigit() else f"DNS:{host}"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(crt), "-days", "2",
         "-subj", f"/CN={host}", "-addext", f"subjectAltName={san}"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return crt, key


class FixedUrl:
    """Stands in for the signed-URL prefetch cache to hand the session one given URL."""

    def __init__(self, url: str) -> None:
        self.url = url

    def take(self, wait_s: float = 0.0) -> str:
        return self.url


class Hooks:
    """A real DeviceHooks implementation that records what the tools asked for."""

    def __init__(self) -> None:
        self.volumes: list[int] = []
        self.end_requests = 0

    def set_volume(self, percent: int) -> None:
        self.volumes.append(percent)

    def device_status(self) -> dict[str, Any]:
        return {"state": "listening", "volume_percent": 80, "uptime_s": 12.5}

    def end_conversation(self) -> None:
        self.end_requests += 1


def needs(module: str, extra: str) -> pytest.MarkDecorator:
    """Skip where an optional extra's library is missing (the ARM check installs the tools, test, and dsp on arm64).

    dev.sh installs every extra, so in CI on x86-64 such a skip is a failure (tests/conftest.py).
    """
    return pytest.mark.skipif(
        importlib.util.find_spec(module) is None, reason=f"{module} is not installed (the '{extra}' extra)"
    )


def cli(*args: str, env: dict[str, str] | None = None, **popen: Any) -> subprocess.CompletedProcess[str]:
    """``voice-appliance …`` as a real process, with a clean credential environment (``popen``: e.g. ``user=``)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("VOICE_APPLIANCE_", "ELEVENLABS_"))}
    base.pop("CREDENTIALS_DIRECTORY", None)
    return subprocess.run(
        [sys.executable, "-m", "device", *args],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        timeout=60,
        cwd=ROOT,
        check=False,
        **popen,
    )


def outsider_python(*argv: str, user: str = "nobody", group: str = "nogroup") -> subprocess.CompletedProcess[str]:
    """Debian's python3 ``argv`` as another user (the tests run as root), on a world-readable copy of ``device/``.

    The checkout and its venv may sit where that user cannot go (a clone under /root), so neither is used:
    what runs needs only the standard library (ctl, config loading).
    """
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(prefix="va-outsider-") as name:
        copy = Path(name)
        shutil.copytree(ROOT / "device", copy / "device", ignore=shutil.ignore_patterns("__pycache__"))
        for path in (copy, *copy.rglob("*")):
            path.chmod(0o755 if path.is_dir() else 0o644)
        return subprocess.run(
            ["/usr/bin/python3", *argv],
            capture_output=True,
            text=True,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(copy), "LANG": "C.UTF-8"},
            timeout=60,
            cwd=copy,
            check=False,
            user=user,
            group=group,
            extra_groups=[],
        )


def make_fifo(path: Path) -> Path:
    """A real FIFO (mode 600, as a key file would be) that nobody writes to: opening it to read blocks."""
    os.mkfifo(path, 0o600)
    return path


def unless_blocked_on(fifo: Path, call: Callable[[], T], timeout_s: float = WAIT_S) -> T:
    """``call()`` in a thread; fail the test (instead of hanging it) when it is still blocked after ``timeout_s``.

    A reader blocked opening the FIFO is released by a writer opening and closing it, so the
    thread ends and the failure says what happened.
    """
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as e:  # handed back to the test's thread
            outcome.append((False, e))

    thread = threading.Thread(target=run, name="test-fifo-call")
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        with contextlib.suppress(OSError):  # ENXIO: no reader (any more)
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(timeout_s)
        pytest.fail(f"still blocked after {timeout_s:.0f} s: the FIFO {fifo} was opened and waited on")
    ok, value = outcome[0]
    if not ok:
        raise value
    return cast(T, value)


def sine(freq_hz: float, rate_hz: int, seconds: float, amp: float = 12000) -> bytes:
    """``seconds`` of a 16-bit mono sine at ``amp`` (rounded, clipped to the sample range)."""
    w = 2 * math.pi * freq_hz / rate_hz
    return array.array(
        "h", (max(-32768, min(32767, round(amp * math.sin(w * i)))) for i in range(round(seconds * rate_hz)))
    ).tobytes()


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that logs nothing and answers in one call."""

    def send_body(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class LocalHttp:
    """``handler`` served on 127.0.0.1 (TLS with ``tls`` = (cert, key)) by a named thread; close() joins it."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], name: str,
                 tls: tuple[Path, Path] | None = None) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = False  # close() waits for requests in flight: nothing outlives a test
        if tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(tls[0]), str(tls[1]))
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port: int = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name=name, kwargs={"poll_interval": 0.05})
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(WAIT_S)


def read_http_head(conn: socket.socket) -> bytes | None:
    """An HTTP request's head and whatever came with it (up to and past the blank line); None if the peer hung up."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            return None
        data += chunk
    return data


def _profile_share(full: int) -> int:
    """``full`` scaled by the loaded hypothesis profile (100 examples: all of it; the fast profile's 25: a quarter)."""
    return full * settings.default.max_examples // 100


def cases(full: int) -> range:
    """Seeds for a test over ``full`` cases: all of them in the full run, a quarter (at least one) otherwise."""
    return range(max(1, _profile_share(full)))


def examples(full: int) -> int:
    """A property's max_examples: ``full`` in the full run, the same share of a smaller profile's count otherwise.

    tests/conftest.py loads the "fast" profile (25 examples instead of hypothesis' 100) when the
    real-time tests are left out; a property that sets its own count scales with it, and never
    drops below 10.
    """
    return max(10, _profile_share(full))


PROXY_WAIT_S = 30.0


class ConnectProxy:
    """An HTTP CONNECT proxy on loopback (what HTTPS_PROXY names); records each tunnel's target."""

    def __init__(self) -> None:
        self.targets: list[str] = []
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._threads = [threading.Thread(target=self._accept, name="proxy-accept")]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            t = threading.Thread(target=self._tunnel, args=(conn,), name="proxy-tunnel")
            self._threads.append(t)
            t.start()

    def _tunnel(self, client: socket.socket) -> None:
        with client:
            client.settimeout(PROXY_WAIT_S)
            head = read_http_head(client)
            if head is None:
                return
            method, target = head.split(b"\r\n", 1)[0].decode().split(" ")[:2]
            self.targets.append(f"{method} {target}")
            host, port = target.rsplit(":", 1)
            with socket.create_connection((host, int(port)), timeout=PROXY_WAIT_S) as upstream:
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                upstream.sendall(head.split(b"\r\n\r\n", 1)[1])
                with selectors.DefaultSelector() as sel:
                    sel.register(client, selectors.EVENT_READ, upstream)
                    sel.register(upstream, selectors.EVENT_READ, client)
                    while not self._stop.is_set():
                        for key, _ in sel.select(0.05):
                            data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                            if not data:
                                return
                            key.data.sendall(data)

    def close(self) -> None:
        self._stop.set()
        for t in list(self._threads):
            t.join(PROXY_WAIT_S)
        self._listener.close()
