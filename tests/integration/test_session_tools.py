"""Client tools end to end: the emulator's agent calls, the device answers exactly once."""

from __future__ import annotations

import grp
import importlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from device.core.config import ToolsConfig, ToolSpec
from device.core.protocol import AgentResponse, Outcome, SessionEnded, ToolCallFinished, ToolCallStarted
from device.drivers import filedevices
from device.drivers.control import request
from device.drivers.tools import ToolRegistry
from device.emulator.scenario import ToolCall as ScenarioToolCall
from device.emulator.scenario import Turn
from tests.integration.sessionrig import (
    WAIT_S,
    Hooks,
    fast_scenario,
    make_session,
    running,
    speak,
    started,
    wait_reply_played,
)

pytestmark = pytest.mark.realtime

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def kiosk_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    name = f"kiosk_tools_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            import threading
            release = threading.Event()

            def room_of(exhibit):
                return {"dinosaurs": "Hall 3"}.get(exhibit, "unknown")

            def broken():
                raise ValueError("the ticket printer is out of paper")

            def slow():
                release.wait(60)
                return "too late"
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    yield module
    module.release.set()
    sys.modules.pop(name, None)


def converse_with_tool(
    tool_name: str, parameters: dict[str, Any], registry: ToolRegistry, tool_timeout_s: float = 5.0
) -> tuple[Any, Any]:
    scenario = fast_scenario(
        timing={"tool_timeout_s": tool_timeout_s},
        agent={"tool_error_reply": "Failed: {result}"},
        turns=(
            Turn(
                transcript="Question.",
                reply="Answer: {result}.",
                tool=ScenarioToolCall(name=tool_name, parameters=parameters),
            ),
        ),
    )
    with running(scenario) as emu:
        session, events = make_session(emu, tools=registry)
        with started(session):
            events.wait_for(AgentResponse)
            wait_reply_played(emu, 0)
            speak(session, "Question.")
            events.wait_for(ToolCallFinished)
            reply = events.wait_for(AgentResponse, lambda e: e.text.startswith(("Answer", "Failed")))
        record = emu.wait_for_conversation_end(timeout_s=WAIT_S)
    assert not record.violations, record.violations
    calls = [c for t in record.turns for c in t.tool_calls]
    assert len(calls) == 1 and calls[0].name == tool_name
    assert [type(e) for e in events.items if isinstance(e, (ToolCallStarted, ToolCallFinished))] == [
        ToolCallStarted,
        ToolCallFinished,
    ]
    assert events.of(ToolCallStarted)[0].call_id == events.of(ToolCallFinished)[0].call_id == calls[0].call_id
    return calls[0], reply


def tools_cfg(*specs: ToolSpec) -> ToolsConfig:
    return ToolsConfig(tool=specs)


def test_a_configured_callable_answers_and_the_agent_uses_the_result(kiosk_tools: ModuleType) -> None:
    registry = ToolRegistry(tools_cfg(ToolSpec(name="room_of", callable=f"{kiosk_tools.__name__}:room_of")), Hooks())
    call, reply = converse_with_tool("room_of", {"exhibit": "dinosaurs"}, registry)
    assert call.result == "Hall 3" and call.is_error is False
    assert reply.text == "Answer: Hall 3."


def test_an_unknown_tool_gets_an_error_result(kiosk_tools: ModuleType) -> None:
    call, reply = converse_with_tool("open_pod_bay_doors", {}, ToolRegistry(ToolsConfig(), Hooks()))
    assert call.is_error is True and "unknown tool 'open_pod_bay_doors'" in call.result
    assert reply.text.startswith("Failed: unknown tool")


def test_an_exception_becomes_an_error_result(kiosk_tools: ModuleType) -> None:
    registry = ToolRegistry(tools_cfg(ToolSpec(name="broken", callable=f"{kiosk_tools.__name__}:broken")), Hooks())
    call, _ = converse_with_tool("broken", {}, registry)
    assert call.is_error is True and "ValueError: the ticket printer is out of paper" in call.result


def test_a_timeout_becomes_an_error_result_before_the_agent_gives_up(kiosk_tools: ModuleType) -> None:
    registry = ToolRegistry(
        tools_cfg(ToolSpec(name="slow", callable=f"{kiosk_tools.__name__}:slow", timeout_s=0.3)), Hooks()
    )
    call, _ = converse_with_tool("slow", {}, registry, tool_timeout_s=10.0)
    assert call.is_error is True and "timed out after 0.3 s" in call.result and not call.timed_out
    kiosk_tools.release.set()
    registry.close()


def test_a_command_tool(tmp_path: Path) -> None:
    code = "import json, sys; p = json.load(sys.stdin); print('Hall', p['hall'])"
    registry = ToolRegistry(tools_cfg(ToolSpec(name="hall", command=(sys.executable, "-c", code))), Hooks())
    call, reply = converse_with_tool("hall", {"hall": 7}, registry)
    assert call.result == "Hall 7" and reply.text == "Answer: Hall 7."


def test_builtin_set_volume_and_end_conversation() -> None:
    hooks = Hooks()
    registry = ToolRegistry(ToolsConfig(), hooks)
    call, _ = converse_with_tool("set_volume", {"percent": 30}, registry)
    assert call.is_error is False and hooks.volumes == [30]
    call, _ = converse_with_tool("end_conversation", {}, registry)
    assert call.is_error is False and hooks.end_requests == 1


def test_ending_the_conversation_while_a_tool_runs_still_answers_the_call_once(kiosk_tools: ModuleType) -> None:
    scenario = fast_scenario(
        timing={"tool_timeout_s": 30.0},
        turns=(Turn(transcript="Question.", reply="Answer: {result}.", tool=ScenarioToolCall(name="slow")),),
    )
    registry = ToolRegistry(
        tools_cfg(ToolSpec(name="slow", callable=f"{kiosk_tools.__name__}:slow", timeout_s=20.0)), Hooks()
    )
    with running(scenario) as emu:
        session, events = make_session(emu, tools=registry)
        with started(session):
            events.wait_for(AgentResponse)
            wait_reply_played(emu, 0)
            speak(session, "Question.")
            events.wait_for(ToolCallStarted)
        # stop() ended the conversation while the tool was still running
        record = emu.wait_for_conversation_end(timeout_s=WAIT_S)
    assert events.ended().outcome is Outcome.LOCAL
    calls = [c for t in record.turns for c in t.tool_calls]
    assert len(calls) == 1
    results = [m for m in record.events if m["direction"] == "to_agent" and m["type"] == "client_tool_result"]
    assert len(results) == 1, "the service got exactly one result, before the close frame"
    assert calls[0].is_error is True and "cancelled" in str(calls[0].result)
    kinds = [type(e) for e in events.items if isinstance(e, (ToolCallStarted, ToolCallFinished, SessionEnded))]
    assert kinds == [ToolCallStarted, ToolCallFinished, SessionEnded]
    assert events.of(ToolCallFinished)[0].is_error
    assert not record.violations, record.violations


# -- the daemon as systemd runs it: a hung Python tool and a real SIGTERM ------------------------------------------

HANG_S = 120  # the hung tool's own sleep: the daemon must be gone long before it would end


class Datagrams:
    """A bound AF_UNIX datagram socket: systemd's notify socket, or the tool's "started <pid>" report."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.seen: list[str] = []

    def wait_for(self, fragment: str, timeout_s: float = WAIT_S) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                msg = self.sock.recv(4096).decode()
            except TimeoutError:
                raise AssertionError(f"no message with {fragment!r} within {timeout_s:g} s; saw {self.seen}") from None
            self.seen.append(msg)
            if fragment in msg:
                return msg

    def close(self) -> None:
        self.sock.close()


def process_ended(pid: int, timeout_s: float = WAIT_S) -> bool:
    """Wait until process ``pid`` (not necessarily our child) has ended; False on timeout."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout_s)[0])
    finally:
        os.close(fd)


def daemon_config(tmp: Path, emu: Any, module: str) -> Path:
    conf = filedevices.install(tmp / "alsa")
    raw = tmp / "in.raw"
    raw.write_bytes(bytes(2 * 16000 * 90))  # 90 s of silence: the conversation is driven by `ctl message`
    key = tmp / "api_key"
    key.write_text("emulator-key\n")
    key.chmod(0o600)
    (tmp / "run").mkdir()
    path = tmp / "config.toml"
    path.write_text(
        f"""
[agent]
agent_id = "{emu.agent_id}"
base_url = "{emu.base_url}"
connection = "signed_url"
api_key_file = "{key}"

[audio]
capture_device = '{filedevices.capture_device(raw)}'
playback_device = '{filedevices.playback_device(tmp / "out.raw", fixed_16k=True)}'
pace_realtime = true
earcons = false

[gate]
mode = "toggle"

[tools]
[[tools.tool]]
name = "hang"
callable = "{module}:hang"
timeout_s = 600.0
[[tools.tool]]
name = "stubborn"
callable = "{module}:stubborn"
timeout_s = 600.0
[[tools.tool]]
name = "stubborn_command"
command = {json.dumps([sys.executable, str(tmp / (module + ".py")), "stubborn"])}
timeout_s = 600.0
[[tools.tool]]
name = "hider"
command = {json.dumps([sys.executable, str(tmp / (module + ".py")), "hider"])}
timeout_s = 600.0

[systemd]
status_file = "{tmp / "run" / "status.json"}"
control_socket = "{tmp / "run" / "control.sock"}"
control_group = "{grp.getgrgid(os.getgid()).gr_name}"
watchdog = false
"""
    )
    assert conf.exists()
    return path


def test_sigterm_ends_the_daemon_while_a_python_tool_hangs(tmp_path: Path) -> None:
    """SIGTERM ends the daemon while its tools hang, well within systemd's 15 s (a hung callable once held it ~59 s).

    The real daemon runs as a process; the agent calls four tools (tools.max_concurrent_calls) that
    hang for 120 s — a Python callable that sleeps, one that ignores SIGTERM and starts a process
    of its own, the same as a command, and a command whose child escapes into a session of its own
    holding the tool's output open — and SIGTERM arrives while all four run. The daemon must exit
    cleanly (long before the tools' sleep would end), answer each call exactly once (cancelled), and
    leave no tool process behind that it could reach. The stop time is printed for the notes, not
    asserted (the machine is shared).
    """
    short = Path(tempfile.mkdtemp(prefix="va-hang-"))  # AF_UNIX paths are short
    notify = Datagrams(str(short / "notify"))
    tool = Datagrams(str(short / "tool"))
    module = f"hang_tool_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(
        textwrap.dedent(
            f"""
            import os, signal, socket, subprocess, sys, threading, time

            def tell(what, pid):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                s.sendto(f"{{what}} {{pid}}".encode(), {tool.path!r})

            def hang():  # sleeps
                tell("started", os.getpid())
                time.sleep({HANG_S})
                return "too late"

            def stubborn():  # ignores SIGTERM and starts a process of its own
                if threading.current_thread() is threading.main_thread():  # (as it is in its own process)
                    signal.signal(signal.SIGTERM, signal.SIG_IGN)
                child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep({HANG_S})"])
                tell("grandchild", child.pid)
                tell("started", os.getpid())
                time.sleep({HANG_S})

            def hider():  # starts a process in a session of its own that keeps the tool's output open
                child = subprocess.Popen(
                    [sys.executable, "-c", "import time; time.sleep({HANG_S})"], start_new_session=True
                )
                tell("escaped", child.pid)
                tell("started", os.getpid())
                time.sleep({HANG_S})

            if __name__ == "__main__":  # as a command tool
                {{"stubborn": stubborn, "hider": hider}}[sys.argv[1]]()
            """
        )
    )
    turns = tuple(
        Turn(transcript=f"Question {i}.", reply="Answer: {result}.", tool=ScenarioToolCall(name=name))
        for i, name in enumerate(("hang", "stubborn", "stubborn_command", "hider"))
    )
    scenario = fast_scenario(agent={"first_message": ""}, timing={"tool_timeout_s": 300.0}, turns=turns)
    proc: subprocess.Popen[str] | None = None
    log_path = tmp_path / "daemon.log"  # a file, not a pipe: nobody reads while it runs
    pids: list[int] = []  # the tools' processes and what they started: the stop must end them all
    escaped: list[int] = []  # out of the daemon's reach (a session of its own): the test ends it
    try:
        with running(scenario) as emu:
            config = daemon_config(tmp_path, emu, module)
            env = {k: v for k, v in os.environ.items() if not k.startswith(("VOICE_APPLIANCE_", "ELEVENLABS_"))}
            env.update(filedevices.alsa_env(tmp_path / "alsa" / filedevices.CONFIG_NAME))
            env.update(NOTIFY_SOCKET=notify.path, PYTHONPATH=str(tmp_path))
            env.pop("CREDENTIALS_DIRECTORY", None)
            with log_path.open("w") as log_file:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "device", "run", "--config", str(config), "--mock-gpio"],
                    env=env,
                    cwd=ROOT,
                    stderr=log_file,
                    text=True,
                )
            notify.wait_for("READY=1")
            sock = str(tmp_path / "run" / "control.sock")
            assert request(sock, "start")[0]
            notify.wait_for("STATUS=listening")
            for i, turn in enumerate(turns):  # each new turn leaves the previous call open (4: the limit)
                assert request(sock, f"message Question {i}.")[0]
                if turn.tool is not None and turn.tool.name.startswith("stubborn"):
                    pids.append(int(tool.wait_for("grandchild").split()[1]))
                if turn.tool is not None and turn.tool.name == "hider":
                    escaped.append(int(tool.wait_for("escaped").split()[1]))
                pids.append(int(tool.wait_for("started").split()[1]))

            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=HANG_S / 2)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"the daemon still ran {HANG_S / 2:g} s after SIGTERM: a tool held it") from None
            stop_s = time.monotonic() - t0
            record = emu.wait_for_conversation_end(timeout_s=WAIT_S)
        stderr = log_path.read_text()
        print(f"\nSIGTERM → exit with {len(turns)} hung tools: {stop_s:.2f} s", file=sys.stderr)
        assert code == 0, stderr
        assert "threads still running" not in stderr and "Traceback" not in stderr
        assert proc.pid not in pids and all(process_ended(pid) for pid in pids), "a tool's process outlived the daemon"
        results = [m for m in record.events if m["direction"] == "to_agent" and m["type"] == "client_tool_result"]
        calls = [c for t in record.turns for c in t.tool_calls]
        assert [c.name for c in calls] == ["hang", "stubborn", "stubborn_command", "hider"]
        assert sorted(m["tool_call_id"] for m in results) == sorted(c.call_id for c in calls), "one result per call"
        assert all(c.is_error is True and "cancelled" in str(c.result) for c in calls), calls
        assert not record.violations, record.violations
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if log_path.exists():
            print(f"daemon log:\n{log_path.read_text()[-4000:]}")  # shown when the test fails
        for pid in escaped:
            os.kill(pid, signal.SIGKILL)
            assert process_ended(pid)
        notify.close()
        tool.close()
        for leftover in short.iterdir():
            leftover.unlink()
        short.rmdir()
