"""One daemon per configuration: a second `voice-appliance run` refuses and leaves the first alone.

Real daemon processes on the same configuration (file devices, mock pins, the
emulator), each with its own stand-in for systemd's notification socket.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, closing, contextmanager
from pathlib import Path

import pytest

from device.core.errors import ExitCode
from device.drivers.control import request
from device.emulator.server import Emulator
from tests.integration.daemonrig import WAIT_S, NotifySocket, fast_scenario, run_daemon, silence, write_config

pytestmark = pytest.mark.realtime


@contextmanager
def emulator() -> Iterator[Emulator]:
    emu = Emulator(fast_scenario(), speech="tone").start()
    try:
        yield emu
    finally:
        emu.stop()


def configure(tmp_path: Path, emu: Emulator) -> Path:
    """The service test's configuration plus a Prometheus textfile."""
    config = write_config(tmp_path, emu, silence(60.0))
    (tmp_path / "node").mkdir()
    with config.open("a") as f:  # [systemd] is its last table
        f.write(f'prometheus_textfile = "{tmp_path / "node" / "voice_appliance.prom"}"\n')
    return config


def ended(proc: subprocess.Popen[str], timeout_s: float = WAIT_S) -> int | None:
    """Its exit code once it ends by itself within ``timeout_s``; None when it is still running."""
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None


def first_to_end(procs: list[subprocess.Popen[str]], timeout_s: float = WAIT_S) -> subprocess.Popen[str] | None:
    """The first of ``procs`` to exit (woken by its pidfd), or None when all still run after ``timeout_s``."""
    with selectors.DefaultSelector() as sel, ExitStack() as fds:
        for proc in procs:
            fd = os.pidfd_open(proc.pid)
            fds.callback(os.close, fd)
            sel.register(fd, selectors.EVENT_READ, proc)
        ready = sel.select(timeout_s)
    if not ready:
        return None
    proc: subprocess.Popen[str] = ready[0][0].data
    proc.wait()
    return proc


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error" in line.lower()]


def pid_answering(sock: str) -> int:
    ok, text = request(sock, "status")
    assert ok, text
    return int(json.loads(text)["pid"])


def test_a_second_daemon_refuses_and_touches_nothing_of_the_first(tmp_path: Path) -> None:
    run = tmp_path / "run"
    sock, status_file = str(run / "control.sock"), run / "status.json"
    prom = tmp_path / "node" / "voice_appliance.prom"
    with emulator() as emu, ExitStack() as stack:
        config = configure(tmp_path, emu)
        notify_a = stack.enter_context(closing(NotifySocket(tmp_path / "a.notify")))
        notify_b = stack.enter_context(closing(NotifySocket(tmp_path / "b.notify")))
        a = stack.enter_context(run_daemon(tmp_path, config, notify_a.path))
        notify_a.wait_for("READY=1")
        notify_a.wait_for("WATCHDOG=1")
        notify_a.wait_for("WATCHDOG=1")  # a whole watchdog round since the first: the status files are written
        assert pid_answering(sock) == a.pid
        socket_id = os.stat(sock).st_ino

        b = stack.enter_context(run_daemon(tmp_path, config, notify_b.path))
        code = ended(b)
        if code is None:  # it runs, on A's files: stop it to see what it leaves behind
            b.send_signal(signal.SIGTERM)
            b.wait(timeout=15)
        b_stderr = b.stderr.read() if b.stderr else ""

        assert code == ExitCode.ALREADY_RUNNING == 73, b_stderr
        assert error_lines(b_stderr) == [
            f"voice-appliance run: error: another voice-appliance daemon (pid {a.pid}) runs with this "
            f"configuration ({run / 'control.sock.lock'} is taken); stop that one first "
            "(sudo systemctl stop voice-appliance, if it is the service), or give this one its own "
            "systemd.control_socket and systemd.status_file"
        ], b_stderr
        assert "ready" not in b_stderr
        assert "READY=1" not in notify_b.drain()
        # A's socket, status file and textfile are A's, and A still answers on its socket.
        assert os.stat(sock).st_ino == socket_id
        assert pid_answering(sock) == a.pid
        assert json.loads(status_file.read_text())["pid"] == a.pid
        assert "voice_appliance_up 1\n" in prom.read_text()

        a.send_signal(signal.SIGTERM)
        assert ended(a, 15) == 0
    assert not os.path.exists(sock)
    assert not status_file.exists()
    assert "voice_appliance_up 0\n" in prom.read_text()  # A's own clean stop


def test_of_two_daemons_started_at_once_exactly_one_runs(tmp_path: Path) -> None:
    sock = str(tmp_path / "run" / "control.sock")
    with emulator() as emu, ExitStack() as stack:
        config = configure(tmp_path, emu)
        notifies = [stack.enter_context(closing(NotifySocket(tmp_path / f"{n}.notify"))) for n in "ab"]
        procs = [stack.enter_context(run_daemon(tmp_path, config, n.path)) for n in notifies]

        loser = first_to_end(procs)
        assert loser is not None, "both daemons are running on one configuration"
        assert loser.returncode == ExitCode.ALREADY_RUNNING, loser.stderr.read() if loser.stderr else ""
        winner = procs[1 - procs.index(loser)]
        notifies[procs.index(winner)].wait_for("READY=1")
        assert pid_answering(sock) == winner.pid
        winner.send_signal(signal.SIGTERM)
        assert ended(winner, 15) == 0


def test_a_daemon_replaces_the_socket_and_lock_a_killed_one_left(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(run / "control.sock"))
    stale.close()  # a killed daemon's socket: the file is there, nobody listens
    (run / "control.sock.lock").write_text("999999\n")  # ... and its lock file (the kernel let go of the lock)
    with emulator() as emu, ExitStack() as stack:
        config = configure(tmp_path, emu)
        notify = stack.enter_context(closing(NotifySocket(tmp_path / "a.notify")))
        proc = stack.enter_context(run_daemon(tmp_path, config, notify.path))
        notify.wait_for("READY=1")
        assert pid_answering(str(run / "control.sock")) == proc.pid
        proc.send_signal(signal.SIGTERM)
        assert ended(proc, 15) == 0
