"""The control socket's line protocol over a real Unix socket, and `voice-appliance ctl`."""

from __future__ import annotations

import contextlib
import grp
import json
import os
import selectors
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from device.cli import main
from device.core.events import ButtonEvent, Command, MuteEvent
from device.drivers import control
from device.drivers.control import ControlServer, request
from tests.support import cli, outsider_python


class FakeController:
    """Stands in for the controller's queue: records events and answers commands."""

    def __init__(self) -> None:
        self.events: list[object] = []
        self.state = "idle"

    def post(self, event: object) -> bool:
        self.events.append(event)
        if isinstance(event, Command) and event.reply is not None:
            if event.name == "start":
                self.state = "connecting"
                event.reply(True, self.state)
            elif event.name == "context":
                event.reply(False, "no conversation is running; start one first")
            else:
                event.reply(True, self.state)
        return True

    def status(self) -> dict[str, object]:
        return {"state": self.state, "counters": {"conversations": 0}}


def own_group() -> str:
    return grp.getgrgid(os.getgid()).gr_name


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[ControlServer, FakeController]]:
    fake = FakeController()
    srv = ControlServer(str(tmp_path / "run" / "control.sock"), own_group(), fake.post, fake.status)
    srv.start()
    yield srv, fake
    srv.close()


def test_socket_is_group_restricted(server: tuple[ControlServer, FakeController]) -> None:
    srv, _ = server
    st = srv.path.stat()
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert st.st_gid == os.getgid()


def test_unknown_group_leaves_the_socket_owner_only(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeController()
    srv = ControlServer(str(tmp_path / "c.sock"), "no-such-group-xyz", fake.post, fake.status)
    srv.bind()
    try:
        assert stat.S_IMODE(srv.path.stat().st_mode) == 0o600
        assert "group 'no-such-group-xyz' does not exist" in caplog.text
    finally:
        srv.close()
    assert not srv.path.exists()


def test_stale_socket_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # a killed daemon leaves its socket file behind
    fake = FakeController()
    srv = ControlServer(str(path), own_group(), fake.post, fake.status)
    srv.start()
    try:
        assert request(str(path), "press") == (True, "")
    finally:
        srv.close()


def test_a_live_socket_is_never_replaced(server: tuple[ControlServer, FakeController]) -> None:
    srv, fake = server
    second = ControlServer(str(srv.path), own_group(), fake.post, fake.status)
    with pytest.raises(control.ControlError, match=f"served by another process \\(pid {os.getpid()}\\)"):
        second.bind()
    second.close()
    assert request(str(srv.path), "press") == (True, "")  # the first one still serves its socket


def test_a_stop_leaves_a_socket_that_replaced_its_own(tmp_path: Path) -> None:
    fake = FakeController()
    path = tmp_path / "c.sock"
    srv = ControlServer(str(path), own_group(), fake.post, fake.status)
    srv.start()
    path.unlink()
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        other.bind(str(path))  # someone else's socket now has the name
        other.listen()
        srv.close()
        assert path.is_socket()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(path))  # and still works
    finally:
        other.close()


@pytest.mark.realtime
def test_ctl_not_allowed_names_the_configured_group(tmp_path: Path) -> None:
    """As a user who may not connect (nobody, when the tests run as root): the advice names control_group."""
    with tempfile.TemporaryDirectory(prefix="ctl-perm-") as name:
        public = Path(name)
        public.chmod(0o755)  # tmp_path's parents are private to the test user
        sock = public / "c.sock"
        config = public / "config.toml"
        config.write_text(f'[systemd]\ncontrol_socket = "{sock}"\ncontrol_group = "kiosk-ui"\n')
        config.chmod(0o644)
        fake = FakeController()
        srv = ControlServer(str(sock), own_group(), fake.post, fake.status)
        srv.start()
        def ctl(*args: str) -> subprocess.CompletedProcess[str]:
            # As root the outsider is nobody, on a copy of device/ it can read; otherwise the socket is closed to us.
            if os.geteuid() == 0:
                return outsider_python("-m", "device", "ctl", *args)
            return cli("ctl", *args)

        try:
            if os.geteuid() != 0:
                sock.chmod(0)
            res = ctl("--config", str(config), "status")
            config.chmod(0)  # --socket works without a readable configuration, which then cannot name the group
            unread = ctl("--config", str(config), "--socket", str(sock), "status")
        finally:
            srv.close()
    assert res.returncode == 77, res.stderr
    assert res.stderr == (
        f"voice-appliance ctl: error: not allowed to use {sock}; run as root or join its group kiosk-ui "
        "(sudo adduser $USER kiosk-ui, then log in again)\n"
    )
    assert unread.returncode == 77, unread.stderr
    assert "join the group systemd.control_group names (sudo adduser $USER GROUP, then" in unread.stderr
    assert fake.events == []

def test_press_release_mute_unmute_post_the_same_events_as_the_hardware(
    server: tuple[ControlServer, FakeController],
) -> None:
    srv, fake = server
    path = str(srv.path)
    for line in ("press", "release", "mute", "unmute"):
        assert request(path, line) == (True, "")
    kinds = [(type(e).__name__, getattr(e, "pressed", getattr(e, "muted", None)), e.source) for e in fake.events]  # type: ignore[attr-defined]
    assert kinds == [
        ("ButtonEvent", True, "ctl"),
        ("ButtonEvent", False, "ctl"),
        ("MuteEvent", True, "ctl"),
        ("MuteEvent", False, "ctl"),
    ]
    assert isinstance(fake.events[0], ButtonEvent)
    assert isinstance(fake.events[2], MuteEvent)


def test_commands_get_the_controllers_answer(server: tuple[ControlServer, FakeController]) -> None:
    srv, fake = server
    path = str(srv.path)
    assert request(path, "start") == (True, "connecting")
    assert request(path, "context The shop closes at six") == (False, "no conversation is running; start one first")
    cmd = fake.events[-1]
    assert isinstance(cmd, Command)
    assert cmd.name == "context"
    assert cmd.text == "The shop closes at six"
    ok, text = request(path, "status")
    assert ok
    assert json.loads(text) == {"state": "connecting", "counters": {"conversations": 0}}


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("", "empty command"),
        ("dance", "unknown command 'dance'"),
        ("context", "context needs text"),
        ("press hard", "press takes no arguments"),
    ],
)
def test_bad_requests_say_what_to_send(server: tuple[ControlServer, FakeController], line: str, fragment: str) -> None:
    srv, fake = server
    ok, text = request(str(srv.path), line)
    assert not ok
    assert fragment in text
    assert fake.events == []


def test_several_requests_on_one_connection_and_long_lines(server: tuple[ControlServer, FakeController]) -> None:
    srv, _ = server
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(srv.path))
        s.sendall(b"press\nrelease\nhelp\n")
        f = s.makefile("rb")
        assert f.readline() == b"ok\n"
        assert f.readline() == b"ok\n"
        assert f.readline().startswith(b"ok start: ")
        s.sendall(b"x" * 5000)
        assert f.readline().startswith(b"error line longer than 4096 bytes")
        assert f.readline() == b""  # and the connection is closed


def test_a_long_line_is_refused_even_when_it_ends_in_the_next_read(
    server: tuple[ControlServer, FakeController],
) -> None:
    srv, fake = server
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(srv.path))
        s.sendall(b"context " + b"x" * 4200 + b"\n")  # over the limit, but its newline comes after 4096 bytes
        f = s.makefile("rb")
        assert f.readline().startswith(b"error line longer than 4096 bytes")
        assert f.readline() == b""
    assert fake.events == []  # nothing of it reached the agent


def test_ctl_command_line(server: tuple[ControlServer, FakeController], capsys: pytest.CaptureFixture[str]) -> None:
    srv, fake = server
    path = str(srv.path)
    assert main(["ctl", "--socket", path, "press"]) == 0
    assert main(["ctl", "--socket", path, "status"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out) == {"state": "idle", "counters": {"conversations": 0}}
    assert main(["ctl", "--socket", path, "context", "Opening", "hours", "9-5"]) == 1
    assert "no conversation is running" in capsys.readouterr().err
    assert isinstance(fake.events[-1], Command)
    assert fake.events[-1].text == "Opening hours 9-5"
    assert main(["ctl", "--socket", path, "context"]) == 2
    assert main(["ctl", "--socket", path, "context", "Opening hours:\n9-5,\r\nclosed Sundays\n"]) == 1
    assert isinstance(fake.events[-1], Command)
    assert fake.events[-1].text == "Opening hours: 9-5, closed Sundays"


def test_ctl_without_a_daemon_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ctl", "--socket", str(tmp_path / "none.sock"), "status"]) == 69
    assert "is the daemon running?" in capsys.readouterr().err


def test_server_stops_cleanly_and_removes_its_socket(tmp_path: Path) -> None:
    fake = FakeController()
    srv = ControlServer(str(tmp_path / "c.sock"), own_group(), fake.post, fake.status)
    srv.start()
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(str(srv.path))  # a client that stays connected does not keep it alive
    try:
        srv.close()
        assert not srv.alive
        assert not srv.path.exists()
    finally:
        client.close()


# -- hostile and slow clients ------------------------------------------------------------------------


def _connect(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(path))  # blocking: waits while the accept queue is full
    s.settimeout(5)
    return s


def _wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_idle_and_non_reading_clients_do_not_lock_out_a_normal_client(
    server: tuple[ControlServer, FakeController],
) -> None:
    srv, fake = server
    hostile: list[socket.socket] = []
    try:
        for _ in range(16):
            hostile.append(_connect(srv.path))  # connects and never sends a byte
        for _ in range(16):
            s = _connect(srv.path)
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.send(b"help\n" * 2000)  # far more answers than a socket buffers, and never reads one
            hostile.append(s)
        for i in range(20):
            assert request(str(srv.path), "press" if i % 2 == 0 else "release") == (True, "")
        ok, text = request(str(srv.path), "status")
        assert ok
        assert json.loads(text)["state"] == "idle"
        assert request(str(srv.path), "start") == (True, "connecting")
        assert [type(e).__name__ for e in fake.events] == ["ButtonEvent"] * 20 + ["Command"]
    finally:
        for s in hostile:
            s.close()


def test_a_command_waiting_for_the_controller_does_not_hold_up_other_clients(tmp_path: Path) -> None:
    pending: list[Command] = []
    posted = threading.Event()

    def post(event: object) -> bool:
        if isinstance(event, Command):
            pending.append(event)
            posted.set()
        return True

    srv = ControlServer(str(tmp_path / "c.sock"), own_group(), post, lambda: {"state": "busy"})
    srv.start()
    try:
        with _connect(srv.path) as slow:
            slow.sendall(b"start\npress\n")  # the press must be answered after the start, in order
            assert posted.wait(5)
            assert request(str(srv.path), "status") == (True, '{"state":"busy"}')
            reply = pending[0].reply
            assert reply is not None
            reply(True, "connecting")  # from this (another) thread, like the controller
            f = slow.makefile("rb")
            assert f.readline() == b"ok connecting\n"
            assert f.readline() == b"ok\n"
    finally:
        srv.close()


def test_a_client_that_does_not_read_is_dropped(
    server: tuple[ControlServer, FakeController], monkeypatch: pytest.MonkeyPatch
) -> None:
    srv, _ = server
    monkeypatch.setattr(control, "WRITE_STALL_S", 0.2)
    with _connect(srv.path) as s:
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.send(b"help\n" * 2000)
        assert _wait_until(lambda: srv.dropped == 1)
        assert request(str(srv.path), "press") == (True, "")


def test_an_idle_client_is_closed_after_the_idle_timeout(
    server: tuple[ControlServer, FakeController], monkeypatch: pytest.MonkeyPatch
) -> None:
    srv, _ = server
    monkeypatch.setattr(control, "IDLE_TIMEOUT_S", 0.2)
    with _connect(srv.path) as idle:
        assert idle.recv(100) == b""  # closed by the server, not by the 5 s socket timeout
    assert srv.dropped == 1


def test_when_every_slot_is_taken_the_least_active_connection_makes_room(
    server: tuple[ControlServer, FakeController], monkeypatch: pytest.MonkeyPatch
) -> None:
    srv, _ = server
    monkeypatch.setattr(control, "MAX_CLIENTS", 3)
    first = _connect(srv.path)
    others = [_connect(srv.path) for _ in range(2)]
    try:
        for s in others:  # these two are active: they asked something and read the answer
            s.sendall(b"press\n")
            assert s.recv(100) == b"ok\n"
        assert request(str(srv.path), "release") == (True, "")
        assert first.recv(100) == b""  # the one that never spoke was closed for the newcomer
        for s in others:
            s.sendall(b"release\n")
            assert s.recv(100) == b"ok\n"
    finally:
        first.close()
        for s in others:
            s.close()


def test_a_burst_of_pipelined_requests_is_answered_in_full_and_in_order(
    server: tuple[ControlServer, FakeController],
) -> None:
    """More answers than a socket buffers: the server pauses this client and resumes it as it reads."""
    srv, fake = server
    n = 3000
    burst = b"".join(b"help\n" if i % 3 == 2 else b"press\n" if i % 3 == 0 else b"release\n" for i in range(n))
    with _connect(srv.path) as s:
        s.sendall(burst)
        f = s.makefile("rb")
        answers = [f.readline() for _ in range(n)]
    assert [a == b"ok\n" for a in answers] == [i % 3 != 2 for i in range(n)]
    assert all(a.startswith(b"ok start: ") for a in answers[2::3])
    assert [e.pressed for e in fake.events] == [i % 3 == 0 for i in range(n) if i % 3 != 2]  # type: ignore[attr-defined]


# -- one connection's limits, on a fake clock ---------------------------------------------------------


@pytest.fixture
def conn() -> Iterator[control._Client]:
    ours, theirs = socket.socketpair()
    try:
        yield control._Client(ours, last_progress=100.0)
    finally:
        ours.close()
        theirs.close()


def test_a_quiet_connection_may_stay_just_under_a_minute(conn: control._Client) -> None:
    assert conn.overdue(159.9) is None


def test_a_quiet_connection_is_closed_after_a_minute(conn: control._Client) -> None:
    assert (conn.deadline(), conn.overdue(160.0)) == (160.0, "it was idle for 60 s")


def test_an_unread_answer_closes_the_connection_after_5_s(conn: control._Client) -> None:
    assert conn.queue("ok") is None
    assert (conn.deadline(), conn.overdue(104.9), conn.overdue(105.0)) == (
        105.0,
        None,
        "it left its answer unread for 5 s",
    )


def test_a_command_in_flight_is_waited_for_not_closed(conn: control._Client) -> None:
    conn.ask = control._Ask(conn, deadline=103.0)
    assert (conn.deadline(), conn.overdue(1000.0)) == (103.0, None)


def test_over_64_kib_of_unread_answers_closes_the_connection(conn: control._Client) -> None:
    assert conn.queue("x" * (64 * 1024 - 1)) is None  # with its newline: exactly the limit
    assert conn.queue("ok") == "more than 65536 bytes of its answers were unread"


def test_a_busy_connection_is_not_read_from(conn: control._Client) -> None:
    assert conn.wanted_events == selectors.EVENT_READ
    conn.queue("ok")
    assert conn.wanted_events == selectors.EVENT_WRITE  # its next request waits until this answer is out


def test_a_connection_that_closed_its_side_is_only_written_to(conn: control._Client) -> None:
    conn.eof = True
    assert conn.wanted_events == 0
