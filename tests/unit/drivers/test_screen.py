"""The screen server on real sockets (127.0.0.1): the page, the event stream, the token, the talk button,
slow and surplus browsers, and a stop that leaves nothing behind."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from device.app.telemetry import TelemetryBus
from device.core.config import ScreenConfig
from device.core.events import ButtonEvent, Command
from device.drivers import screen as screen_mod
from device.drivers.screen import ScreenServer
from device.drivers.secrets import Secret
from tests.support import WAIT_S, Collector

PAGE = b"<!doctype html><title>the page</title>"
TOKEN = "s3cr3t-screen-token-value"


class Rig:
    """A screen server on an ephemeral port, its telemetry bus and what it posted to the controller."""

    def __init__(self, token: str | None = None, accept: bool = True, **cfg: Any) -> None:
        self.bus = TelemetryBus()
        self.posted: Collector[object] = Collector()
        self._accept = accept
        self.server = ScreenServer(
            ScreenConfig(enabled=True, **cfg),
            Secret(token, "test") if token else None,
            self.bus.subscribe,
            self._post,
            port=0,
            page=PAGE,
        )

    def _post(self, event: object) -> bool:
        self.posted(event)
        return self._accept

    @property
    def addr(self) -> tuple[str, int]:
        return ("127.0.0.1", self.server.port)


@pytest.fixture
def make() -> Iterator[Any]:
    made: list[Rig] = []

    def factory(**kw: Any) -> Rig:
        rig = Rig(**kw)
        rig.server.start()
        made.append(rig)
        return rig

    yield factory
    for rig in made:
        rig.server.close()


def request(rig: Rig, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
            ) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request; the status, headers and body (the server closes after answering)."""
    hdrs = {"Host": f"127.0.0.1:{rig.server.port}", "Content-Length": str(len(body)), **(headers or {})}
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
    with socket.create_connection(rig.addr, timeout=WAIT_S) as s:
        s.sendall(head.encode() + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    top, _, content = data.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    parsed = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, parsed, content


class Stream:
    """An EventSource's side of /events, read by hand: the framing is what is under test."""

    def __init__(self, rig: Rig | ScreenServer, path: str = "/events", rcvbuf: int | None = None) -> None:
        port = rig.server.port if isinstance(rig, Rig) else rig.port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(WAIT_S)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost:{port}\r\nAccept: text/event-stream"
                          "\r\n\r\n".encode())
        self.buf = b""
        self.status = 0
        self.headers = ""

    def open(self) -> Stream:
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        self.headers = head.decode()
        self.status = int(self.headers.split(" ")[1])
        return self

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("the server closed the stream")
        self.buf += chunk

    def block(self) -> str:
        """The next event block (the text between blank lines)."""
        while b"\n\n" not in self.buf:
            self._fill()
        block, _, self.buf = self.buf.partition(b"\n\n")
        return block.decode()

    def message(self) -> dict[str, Any]:
        """The next data message, parsed (retry lines and keepalive comments skipped)."""
        while True:
            block = self.block()
            if block.startswith("data: "):
                assert "\n" not in block, "one message is one data line"
                return dict(json.loads(block[len("data: "):]))

    def until(self, pred: Any) -> dict[str, Any]:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            msg = self.message()
            if pred(msg["view"]):
                return msg
        raise AssertionError("no such view")

    def close(self) -> None:
        self.sock.close()


def test_the_page_is_served_with_a_strict_policy(make: Any) -> None:
    rig = make()
    status, headers, body = request(rig, "GET", "/")
    assert status == 200 and body == PAGE
    assert headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in headers["content-security-policy"]  # nothing from elsewhere, ever
    assert request(rig, "GET", "/nothing")[0] == 404


def test_the_stream_starts_with_the_current_view_and_sends_each_change(make: Any) -> None:
    rig = make()
    stream = Stream(rig).open()
    assert stream.status == 200 and "text/event-stream" in stream.headers
    assert stream.block() == f"retry: {screen_mod.RETRY_MS}"  # the browser reconnects after a restart
    first = stream.message()
    assert first["view"]["state"] == "starting" and first["talk"] is False
    assert isinstance(first["server_s"], float)
    rig.bus.publish("state", state="listening")
    msg = stream.until(lambda v: v["state"] == "listening")
    assert msg["server_s"] >= first["server_s"]
    rig.bus.publish("transcript", role="user", text="Where is the café?", tentative=False)
    msg = stream.until(lambda v: v["lines"])
    assert msg["view"]["lines"][0] == {"role": "user", "text": "Where is the café?", "final": True, "cut": False}
    stream.close()


def test_a_page_opened_mid_conversation_sees_where_it_is(make: Any) -> None:
    rig = make()
    watcher = Stream(rig).open()
    rig.bus.publish("state", state="listening")
    rig.bus.publish("transcript", role="user", text="hello", tentative=False)
    watcher.until(lambda v: v["lines"])  # the server has taken both
    late = Stream(rig).open()
    view = late.message()["view"]
    assert view["state"] == "listening" and [line["text"] for line in view["lines"]] == ["hello"]
    watcher.close()
    late.close()


def test_other_telemetry_is_not_sent_to_the_screen(make: Any) -> None:
    rig = make()
    stream = Stream(rig).open()
    stream.message()
    for seq in range(50):
        rig.bus.publish("captured", seq=seq)  # four a second in a real daemon: the screen must not care
    rig.bus.publish("state", state="listening")
    assert stream.message()["view"]["state"] == "listening"  # the very next message is the change
    stream.close()


def test_a_token_is_required_when_configured_and_never_logged(make: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    rig = make(token=TOKEN)
    assert request(rig, "GET", "/")[0] == 401
    assert request(rig, "GET", "/?token=wrong")[0] == 401
    assert request(rig, "GET", "/?token=" + TOKEN[:-1])[0] == 401
    assert request(rig, "GET", "/?token=" + TOKEN)[0] == 200
    assert request(rig, "GET", "/", headers={"Authorization": "Bearer " + TOKEN})[0] == 200
    assert request(rig, "GET", "/", headers={"Authorization": "Bearer nope"})[0] == 401
    assert Stream(rig).open().status == 401
    ok = Stream(rig, "/events?token=" + TOKEN).open()
    assert ok.status == 200 and ok.message()["view"]["state"] == "starting"
    ok.close()
    assert TOKEN not in caplog.text


def test_another_host_name_is_refused_on_loopback(make: Any) -> None:
    """A page elsewhere that rebinds its DNS name to 127.0.0.1 still sends its own name as Host."""
    rig = make(talk_button=True)
    assert request(rig, "GET", "/", headers={"Host": "evil.example:8790"})[0] == 421
    assert request(rig, "POST", "/talk", b"start", headers={"Host": "evil.example"})[0] == 421
    assert rig.posted.items == []
    assert request(rig, "GET", "/", headers={"Host": "localhost"})[0] == 200


def test_talk_is_forbidden_unless_the_button_is_on(make: Any) -> None:
    rig = make()
    assert request(rig, "POST", "/talk", b"start")[0] == 403
    assert rig.posted.items == []


def test_talk_actions_reach_the_controller(make: Any) -> None:
    rig = make(talk_button=True)
    assert request(rig, "POST", "/talk", b"press")[0] == 204
    assert request(rig, "POST", "/talk", b'{"action": "release"}')[0] == 204
    assert request(rig, "POST", "/talk", b"start")[0] == 204
    assert request(rig, "POST", "/talk", b"end")[0] == 204
    press, release, start, end = rig.posted.items
    assert isinstance(press, ButtonEvent) and press.pressed and press.source == "screen"
    assert isinstance(release, ButtonEvent) and not release.pressed
    assert isinstance(start, Command) and start.name == "start"
    assert isinstance(end, Command) and end.name == "stop"
    assert request(rig, "POST", "/talk", b"mute")[0] == 400  # only what a visitor may do
    assert request(rig, "GET", "/talk")[0] == 405
    assert request(rig, "POST", "/talk", b"press", headers={"Origin": "http://evil.example"})[0] == 403
    assert len(rig.posted.items) == 4


def test_a_busy_controller_is_a_503(make: Any) -> None:
    rig = make(talk_button=True, accept=False)
    assert request(rig, "POST", "/talk", b"press")[0] == 503


def test_more_streams_than_max_clients_are_refused(make: Any) -> None:
    rig = make(max_clients=2)
    a, b = Stream(rig).open(), Stream(rig).open()
    assert a.status == b.status == 200
    c = Stream(rig).open()
    assert c.status == 503
    a.close()
    deadline = time.monotonic() + WAIT_S
    while True:  # the server notices the close on its next round
        d = Stream(rig).open()
        if d.status == 200 or time.monotonic() > deadline:
            break
        d.close()
    assert d.status == 200
    for s in (b, c, d):
        s.close()


def test_a_stuck_browser_is_dropped_and_the_others_go_on(make: Any, monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(screen_mod, "WRITE_STALL_S", 0.3)
    monkeypatch.setattr(screen_mod, "SEND_BUFFER_BYTES", 4096)
    rig = make()
    stuck = Stream(rig, rcvbuf=4096).open()  # reads nothing from here on
    reader = Stream(rig).open()
    reader.message()
    long_text = "word " * 390  # twelve such lines make a view of ~24 KB
    i = 0
    deadline = time.monotonic() + WAIT_S
    while rig.server.counts.clients_dropped == 0 and time.monotonic() < deadline:
        i += 1
        rig.bus.publish("transcript", role="user", text=f"{i} {long_text}", tentative=False)
        # The other browser gets every view meanwhile (publishing is one append: it never waits for a browser).
        reader.until(lambda v, i=i: v["lines"] and v["lines"][-1]["text"].startswith(f"{i} "))
    assert rig.server.counts.clients_dropped == 1
    rig.bus.publish("transcript", role="user", text="after", tentative=False)
    assert reader.until(lambda v: v["lines"][-1]["text"] == "after")
    assert sum("dropped" in r.getMessage() for r in caplog.records) == 1
    stuck.close()
    reader.close()


def test_a_start_that_cannot_bind_says_what_to_do() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = ScreenServer(ScreenConfig(enabled=True), None, TelemetryBus().subscribe, lambda e: True,
                              port=port, page=PAGE)
        with pytest.raises(screen_mod.ScreenError, match=r"screen\.port"):
            server.start()
        server.close()


def test_stop_joins_and_releases_every_socket(make: Any) -> None:
    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = fds()
    bus = TelemetryBus()
    server = ScreenServer(ScreenConfig(enabled=True), None, bus.subscribe, lambda e: True, port=0, page=PAGE)
    server.start()
    streams = [Stream(server).open() for _ in range(3)]
    for s in streams:
        s.message()
    server.close()
    assert not server.alive
    assert not bus.active  # unsubscribed: a stopped screen costs the publishers nothing
    for s in streams:
        with pytest.raises(EOFError):
            while True:
                s.block()
        s.close()
    server.close()  # idempotent
    assert fds() == before
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S).close()
    server.close()
