"""The daemon as a service: watchdog, READY/STOPPING/RELOADING, signals, status files, the control socket."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from pathlib import Path

import pytest

from device.app.daemon import serve
from device.core.config import SystemdConfig
from device.core.events import Command
from device.drivers.configfile import load_config
from device.drivers.control import request
from device.drivers.notify import Notifier
from device.drivers.secrets import Secret
from device.emulator.scenario import Fault
from device.emulator.server import Emulator
from tests.integration.daemonrig import (
    WAIT_S,
    NotifySocket,
    Rig,
    fast_scenario,
    run_daemon,
    serve_with_operator,
    silence,
    speech,
    with_session,
    write_config,
)

pytestmark = pytest.mark.realtime


def test_a_stuck_worker_stops_the_watchdog_pings(tmp_path: Path, notify: NotifySocket) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "400000"})  # ping every 0.2 s
    systemd = SystemdConfig(status_file="", control_socket="", watchdog=True, worker_stall_s=1.0)
    with Rig(tmp_path, silence(30.0), systemd=systemd, notifier=notifier, audio={"reopen_max_s": 0.1}) as rig:
        assert notify.wait_for("READY=1")
        notify.wait_for("WATCHDOG=1")
        assert rig.d.parts.watchdog is not None
        assert rig.d.stall_s == pytest.approx(2.125)

        # Make the controller hang the way a bug would: a command whose answer never returns.
        release = threading.Event()
        hanging = threading.Event()

        def stuck_reply(ok: bool, text: str) -> None:
            hanging.set()
            release.wait(WAIT_S)

        rig.d.controller.post(Command("start", reply=stuck_reply))  # type: ignore[union-attr]
        try:
            assert hanging.wait(WAIT_S)
            dog = rig.d.parts.watchdog
            assert dog.wait_rounds(1, WAIT_S)
            while "controller" not in dog.stuck:
                assert dog.wait_rounds(1, WAIT_S)
            notify.drain()
            assert dog.wait_rounds(5, WAIT_S)
            assert [m for m in notify.drain() if "WATCHDOG=1" in m] == []  # silence: systemd will restart us
        finally:
            release.set()
        notify.wait_for("WATCHDOG=1")  # the controller answers again: pings resume
        assert rig.d.parts.watchdog.stuck == []


def test_run_as_a_service_ready_ctl_reload_and_sigterm(tmp_path: Path, notify: NotifySocket) -> None:
    emu = Emulator(fast_scenario(), speech="tone").start()
    try:
        config = write_config(tmp_path, emu, silence(60.0))
        with run_daemon(tmp_path, config, notify.path) as proc:
            assert notify.wait_for("READY=1").startswith("READY=1")
            sock = str(tmp_path / "run" / "control.sock")
            ok, text = request(sock, "status")
            assert ok
            assert json.loads(text)["state"] == "idle"
            assert request(sock, "press") == (True, "")  # the on-screen button
            notify.wait_for("STATUS=listening")
            status = json.loads(request(sock, "status")[1])
            assert status["state"] == "listening"
            assert status["conversation_id"].startswith("conv_")
            notify.wait_for("WATCHDOG=1")

            proc.send_signal(signal.SIGHUP)  # reload: the conversation ends, the daemon comes back
            assert notify.wait_for("RELOADING=1")
            assert notify.wait_for("READY=1")
            assert emu.wait_for_conversation_end(timeout_s=WAIT_S).closed_by == "client"

            proc.send_signal(signal.SIGTERM)
            assert notify.wait_for("STOPPING=1")
            code = proc.wait(timeout=15)  # the unit's TimeoutStopSec
            stderr = proc.stderr.read() if proc.stderr else ""
        assert code == 0, stderr
        assert "threads still running" not in stderr
        assert "Traceback" not in stderr
        assert not (tmp_path / "run" / "control.sock").exists()
        assert not (tmp_path / "run" / "status.json").exists()
    finally:
        emu.stop()


def open_fds() -> set[str]:
    fds = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            fds.add(f"{fd}->{os.readlink(f'/proc/self/fd/{fd}')}")
    return fds


def test_sigterm_in_process_leaves_no_thread_and_no_open_device(
    tmp_path: Path, notify: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    emu = Emulator(fast_scenario(), speech="tone").start()
    try:
        cfg = load_config(write_config(tmp_path, emu, speech("Hello there.") + silence(30.0)), environ={})
        monkeypatch.setenv("NOTIFY_SOCKET", notify.path)
        before = open_fds()
        threads_before = set(threading.enumerate())

        def operator() -> None:
            notify.wait_for("READY=1")
            ok, _ = request(cfg.systemd.control_socket, "start")
            assert ok
            notify.wait_for("STATUS=listening")
            os.kill(os.getpid(), signal.SIGTERM)

        helper = threading.Thread(target=operator, name="test-operator")
        helper.start()
        from device.drivers.gpio import mock_factory

        code = serve(cfg, Secret("emulator-key", "test"), pin_factory=mock_factory())
        helper.join(WAIT_S)
        assert code == 0
        assert notify.wait_for("STOPPING=1")
        assert set(threading.enumerate()) <= threads_before  # every thread of the daemon joined
        leaked = open_fds() - before
        assert not [fd for fd in leaked if "in.raw" in fd or "out.raw" in fd or "/dev/snd" in fd], leaked
        assert not [fd for fd in leaked if "socket" in fd], leaked
        assert emu.wait_for_conversation_end(timeout_s=WAIT_S).closed_by == "client"
    finally:
        emu.stop()


def test_the_stop_does_not_wait_for_the_signed_url_prefetcher_before_ending_the_conversation(tmp_path: Path) -> None:
    """On a hung network the prefetcher can take agent.http_timeout_s to stop, and so can a
    conversation that is connecting; one after the other they would overrun TimeoutStopSec."""
    with Rig(tmp_path, silence(30.0)) as rig:
        rig.d.command("start")
        rig.wait_state("listening")
        prefetcher = rig.d.parts.signed_urls
        assert prefetcher is not None
        seen: list[bool] = []

        class HungPrefetcher:
            """The real one, as if an HTTP request of it were still in flight at the stop."""

            def close(self) -> None:
                try:
                    seen.append(rig.emu.wait_for_conversation_end(timeout_s=10.0).closed_by == "client")
                except TimeoutError:
                    seen.append(False)
                finally:
                    prefetcher.close()

        rig.d.parts.signed_urls = HungPrefetcher()
    assert seen == [True]  # the conversation ended while the prefetcher was still being stopped


def test_a_stop_is_no_stuck_worker(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    systemd = SystemdConfig(status_file="", control_socket="", watchdog=True)
    with Rig(tmp_path, silence(30.0), systemd=systemd) as rig:
        dog, prefetcher = rig.d.parts.watchdog, rig.d.parts.signed_urls
        assert dog is not None
        assert dog.alive
        assert prefetcher is not None
        rounds: list[bool] = []

        class SlowPrefetcher:
            """The real one, slow to stop (a request in flight): the watchdog, if still running, looks."""

            def close(self) -> None:
                rounds.append(dog.alive and dog.wait_rounds(2, WAIT_S))
                prefetcher.close()

        rig.d.parts.signed_urls = SlowPrefetcher()
    assert len(rounds) == 1
    assert "stopped responding" not in caplog.text  # the stopped capture is no stuck worker


def test_status_file_and_prometheus_textfile(tmp_path: Path) -> None:
    prom = tmp_path / "node" / "voice_appliance.prom"
    prom.parent.mkdir()
    systemd = SystemdConfig(
        status_file=str(tmp_path / "run" / "status.json"), prometheus_textfile=str(prom), control_socket=""
    )
    with Rig(tmp_path, silence(20.0), systemd=systemd) as rig:
        rig.d.command("start")
        rig.wait_state("listening")
        dog = rig.d.parts.watchdog
        assert dog is not None
        assert dog.wait_rounds(2, WAIT_S)
        doc = json.loads((tmp_path / "run" / "status.json").read_text())
        assert doc["state"] == "listening"
        assert doc["conversation_id"].startswith("conv_")
        assert set(doc["counters"]) >= {"conversations", "errors", "xruns", "ping_ms"}
        assert doc["counters"]["conversations"] == 1
        text = prom.read_text()
        assert 'voice_appliance_state{state="listening"} 1' in text
        assert "voice_appliance_conversations_total 1" in text
        rig.d.command("stop")
        rig.wait_state("idle")
    assert not (tmp_path / "run" / "status.json").exists()  # a stopped daemon leaves no stale status


def test_a_missing_microphone_shows_the_error_until_it_appears(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Rig(tmp_path, silence(10.0), audio={"reopen_max_s": 0.2})
    raw = tmp_path / "in.raw"
    content = raw.read_bytes()
    raw.unlink()  # the sound card has not appeared yet at boot
    with rig:
        assert "ready without it" not in caplog.text  # its failure, not a timeout, made the daemon ready
        rig.wait_state("error")
        assert rig.d.status().last_error.startswith("microphone:")
        assert rig.d.controller is not None
        assert rig.d.controller.machine.state.value == "idle"
        mark = rig.tel.mark()
        raw.write_bytes(content)  # ... now it has
        rig.wait_state("idle", after=mark)
        rig.wait_captured(1.0)
        assert rig.d.status_dict()["last_error"] == ""  # "the microphone works again": its error is over


def handled_so_far(rig: Rig) -> None:
    """Until the controller has handled every event posted before this call (a command answered after them)."""
    answered = threading.Event()
    rig.d.controller.post(Command("nothing", reply=lambda ok, text: answered.set()))  # type: ignore[union-attr]
    assert answered.wait(WAIT_S)


def test_the_microphone_coming_back_leaves_a_newer_error_shown(tmp_path: Path) -> None:
    scenario = fast_scenario(faults=(Fault(kind="quota", conversation=0),))
    rig = Rig(tmp_path, silence(10.0), scenario, audio={"reopen_max_s": 0.2}, session=with_session(error_hold_s=60.0))
    raw = tmp_path / "in.raw"
    content = raw.read_bytes()
    raw.unlink()
    with rig:
        rig.wait_state("error")
        mark = rig.tel.mark()
        rig.d.command("start")  # a conversation the agent refuses: a newer error than the microphone's
        rig.wait_state("connecting", after=mark)
        rig.wait_state("error", after=mark)
        refused = rig.d.status().last_error
        assert refused
        assert not refused.startswith("microphone:")
        raw.write_bytes(content)
        rig.wait_captured(1.0)
        handled_so_far(rig)  # the microphone's "works again" included
        assert rig.d.status().last_error == refused


def test_a_bad_reload_keeps_the_running_configuration(
    tmp_path: Path, notify: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    emu = Emulator(fast_scenario(), speech="tone").start()
    try:
        path = write_config(tmp_path, emu, silence(60.0))
        good = path.read_text()
        cfg = load_config(path, environ={})
        key = Secret("emulator-key", "test")
        sock = cfg.systemd.control_socket
        monkeypatch.setenv("NOTIFY_SOCKET", notify.path)

        def gate_mode() -> str:
            ok, text = request(sock, "status")
            assert ok, text
            return str(json.loads(text)["gate_mode"])

        def operator() -> None:
            notify.wait_for("READY=1")
            assert gate_mode() == "toggle"

            # A broken edit: the file does not load, nothing is stopped.
            path.write_text(good.replace('mode = "toggle"', 'mode = "shout"'))
            os.kill(os.getpid(), signal.SIGHUP)
            assert "gate.mode" in notify.wait_for("STATUS=reload refused")
            assert gate_mode() == "toggle"

            # An edit that loads but cannot be put to work (a tool that is not installed):
            # the old configuration comes back instead of the service exiting.
            path.write_text(
                good.replace('mode = "toggle"', 'mode = "push_to_talk"')
                + '\n[[tools.tool]]\nname = "lights"\ncommand = ["/nonexistent/lights-tool"]\n'
            )
            os.kill(os.getpid(), signal.SIGHUP)
            notify.wait_for("RELOADING=1")
            ready = notify.wait_for("READY=1")
            assert "STATUS=reload refused" in ready
            assert "lights-tool" in ready
            assert gate_mode() == "toggle"
            assert request(sock, "start")[0]  # ... and it still works
            notify.wait_for("STATUS=listening")

            # A good edit is applied.
            path.write_text(good.replace('mode = "toggle"', 'mode = "push_to_talk"'))
            os.kill(os.getpid(), signal.SIGHUP)
            notify.wait_for("RELOADING=1")
            notify.wait_for("READY=1")
            assert gate_mode() == "push_to_talk"

        code = serve_with_operator(cfg, key, lambda: (load_config(path, environ={}), key), operator)
        assert code == 0
    finally:
        emu.stop()
