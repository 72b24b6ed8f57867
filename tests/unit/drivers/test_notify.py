"""sd_notify over a real AF_UNIX datagram socket, and the watchdog's health rule."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from device.drivers.notify import Notifier, Watchdog, stale_workers
from device.drivers.worker import Worker


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5.0)
    yield sock, path
    sock.close()


def drain(sock: socket.socket) -> list[str]:
    out = []
    sock.settimeout(0.0)
    try:
        while True:
            out.append(sock.recv(4096).decode())
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(5.0)
    return out


def test_messages_reach_the_socket(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready("idle, 0 conversations")
    assert sock.recv(4096).decode() == "READY=1\nSTATUS=idle, 0 conversations"
    n.status("listening,\nconversation x")  # newlines would split the field
    assert sock.recv(4096).decode() == "STATUS=listening, conversation x"
    n.watchdog()
    assert sock.recv(4096).decode() == "WATCHDOG=1"
    n.stopping()
    assert sock.recv(4096).decode() == "STOPPING=1\nSTATUS=stopping"
    n.reloading()
    msg = sock.recv(4096).decode().split("\n")
    assert msg[0] == "RELOADING=1"
    assert msg[1].startswith("MONOTONIC_USEC=")
    assert int(msg[1].split("=")[1]) > 0
    n.close()


def test_abstract_socket_address() -> None:
    name = f"voice-appliance-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5.0)
    try:
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert n.ready()
        assert sock.recv(100) == b"READY=1"
        n.close()
    finally:
        sock.close()


def test_outside_systemd_everything_is_a_quiet_no_op() -> None:
    n = Notifier({})
    assert not n.enabled
    assert n.watchdog_interval_s is None
    assert n.ready() is False
    assert n.watchdog() is False


def test_socket_gone_warns_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "missing")})
    assert n.status("a") is False
    assert n.status("b") is False
    assert len([r for r in caplog.records if "cannot notify systemd" in r.getMessage()]) == 1
    n.close()


@pytest.mark.parametrize(
    ("env", "interval"),
    [
        ({"WATCHDOG_USEC": "20000000"}, 10.0),
        ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid())}, 10.0),
        ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_the_timeout(env: dict[str, str], interval: float | None) -> None:
    assert Notifier({"NOTIFY_SOCKET": "/x", **env}).watchdog_interval_s == interval


class Beater(Worker):
    """Beats until told to hang; a hung one blocks without beating (a stuck thread)."""

    def __init__(self) -> None:
        super().__init__("beater")
        self.hang = threading.Event()
        self.unhang = threading.Event()
        self.hanging = threading.Event()

    def run(self) -> None:
        while not self.stopping:
            if self.hang.is_set():
                self.hanging.set()
                self.unhang.wait(30)
                self.hang.clear()
                self.hanging.clear()
            self.beat()
            self.wait(0.01)

    def unblock(self) -> None:
        self.unhang.set()


def test_stale_workers_names_dead_and_silent_ones() -> None:
    w = Beater()
    assert stale_workers([w], stall_s=3600) == ["beater"]  # never started: not alive
    w.start()
    try:
        assert stale_workers([w], stall_s=3600) == []
        assert stale_workers([w], stall_s=-1.0) == ["beater"]
    finally:
        w.stop()


@pytest.mark.realtime
def test_watchdog_pings_only_while_every_worker_is_fresh(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})  # ping every 50 ms
    worker = Beater()
    worker.start()
    dog = Watchdog(notifier, lambda: [worker], stall_s=0.3)
    dog.start()
    try:
        assert sock.recv(100) == b"WATCHDOG=1"
        worker.hang.set()
        assert worker.hanging.wait(5)
        deadline = time.monotonic() + 10
        while not dog.stuck and time.monotonic() < deadline:
            dog.wait_rounds(1, 5)
        assert dog.stuck == ["beater"]
        drain(sock)
        assert dog.wait_rounds(3, 5)
        assert drain(sock) == []  # no pings while the worker is stuck

        worker.unhang.set()
        assert sock.recv(100) == b"WATCHDOG=1"  # it beats again: pings resume
    finally:
        dog.stop()
        worker.unhang.set()
        worker.stop()
        notifier.close()


def test_housekeeping_tick_runs_and_its_failure_is_not_fatal() -> None:
    calls: list[int] = []

    def tick() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("disk full")

    dog = Watchdog(Notifier({}), lambda: [], stall_s=1.0, interval_s=0.01, tick=tick)
    dog.start()
    try:
        assert dog.wait_rounds(3, 5)
        assert len(calls) >= 3
        assert dog.alive
        assert dog.pings == 0  # not under systemd: no pings, but housekeeping runs
    finally:
        dog.stop()
