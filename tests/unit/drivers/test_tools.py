"""Client tools: built-ins, Python callables, argv commands; one result per call, always."""

from __future__ import annotations

import json
import logging
import os
import select
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from device.core.config import ToolsConfig, ToolSpec
from device.core.errors import ConfigError
from device.drivers.secrets import REDACTED, register_secret
from device.drivers.tools import MAX_RESULT_CHARS, ToolRegistry, ToolResult
from tests.support import Collector, Hooks

WAIT_S = 30.0  # generous: the machine is shared; nothing here asserts speed


class Replies(Collector[ToolResult]):
    """Collects results."""

    @property
    def results(self) -> list[ToolResult]:
        return self.matching(lambda r: True)

    def wait(self, n: int = 1) -> list[ToolResult]:
        return self.wait_until(lambda rs: len(rs) >= n, WAIT_S, what="a tool result")

    def one(self) -> ToolResult:
        (result,) = self.wait(1)
        return result


class Signals:
    """A datagram socket the tools' processes report to ("started <pid>"); waits time out, never sleep."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="va-tools-")  # short: AF_UNIX paths are limited
        self.path = os.path.join(self._dir.name, "s")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)

    def next(self, timeout_s: float = WAIT_S) -> str:
        self.sock.settimeout(timeout_s)
        return self.sock.recv(4096).decode()

    def pid(self, what: str = "started") -> int:
        kind, _, pid = self.next().partition(" ")
        assert kind == what
        return int(pid)

    def close(self) -> None:
        self.sock.close()
        self._dir.cleanup()


@pytest.fixture
def signals() -> Iterator[Signals]:
    s = Signals()
    yield s
    s.close()


def gone(pid: int) -> bool:
    """True when no process ``pid`` exists any more (killed and reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def exits(pid: int, timeout_s: float = WAIT_S) -> bool:
    """Wait until process ``pid`` (not necessarily our child) has ended; False on timeout."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:  # ended and reaped already
        return True
    try:
        return bool(select.select([fd], [], [], timeout_s)[0])  # a pidfd is readable once the process ended
    finally:
        os.close(fd)


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signals: Signals) -> Iterator[ModuleType]:
    """A throwaway module of user tools, importable as module:function (in the daemon and in each call)."""
    name = f"kiosk_tools_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            f"""
            import os, socket, subprocess, sys, threading, time
            from device.drivers.tools import ToolFailure

            def tell(what, pid=None):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                s.sendto(f"{{what}} {{pid or os.getpid()}}".encode(), {signals.path!r})
                s.close()

            def lookup(room, floor=0):
                return {{"room": room, "floor": floor, "open": True}}

            def greet(name):
                return "hello " + name

            def broken():
                raise RuntimeError("the door controller is offline")

            def refuses():
                raise ToolFailure("the door is locked for the night")

            def slow():
                tell("started")
                time.sleep(120)
                return "too late"

            def spawner():
                child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
                tell("grandchild", child.pid)
                tell("started")
                time.sleep(120)

            def chatty():
                print("a debugging print that must not become the result")
                return "the answer"

            def leaves_a_thread():
                threading.Thread(target=time.sleep, args=(120,), name="left-behind").start()
                return "answered"

            def gruss(name):
                return f"Grüß dich, {{name}} 🎟"

            def leaky():
                return "key is sk_leaky_secret_123456"

            def huge():
                return "x" * 100000

            def whoami():
                return {{"pid": os.getpid(), "key": os.environ.get("ELEVENLABS_API_KEY", "absent")}}
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    module = importlib.import_module(name)
    yield module
    sys.modules.pop(name, None)


ALL_BUILTINS = ("set_volume", "device_status", "end_conversation")


def cfg(*tools: ToolSpec, builtin: tuple[str, ...] = ALL_BUILTINS, max_calls: int = 4) -> ToolsConfig:
    return ToolsConfig(builtin=builtin, timeout_s=5.0, tool=tools, max_concurrent_calls=max_calls)


def py_tool(name: str, module: ModuleType, fn: str, timeout_s: float = 5.0) -> ToolSpec:
    return ToolSpec(name=name, callable=f"{module.__name__}:{fn}", timeout_s=timeout_s)


def cmd_tool(name: str, code: str, timeout_s: float = 20.0) -> ToolSpec:
    return ToolSpec(name=name, command=(sys.executable, "-c", code), timeout_s=timeout_s)


def call(reg: ToolRegistry, name: str, params: dict[str, Any], call_id: str = "c1") -> ToolResult:
    replies = Replies()
    reg.call(name, call_id, params, replies)
    result = replies.one()
    assert result.call_id == call_id
    assert result.name == name
    return result


# -- built-ins --------------------------------------------------------------------


def test_set_volume_reaches_the_device() -> None:
    hooks = Hooks()
    reg = ToolRegistry(cfg(), hooks)
    result = call(reg, "set_volume", {"percent": 35.4})
    assert not result.is_error
    assert "35" in result.result
    assert hooks.volumes == [35]


@pytest.mark.parametrize("params", [{}, {"percent": 150}, {"percent": "loud"}, {"percent": -1}])
def test_set_volume_rejects_bad_values_with_an_error_result(params: dict[str, Any]) -> None:
    hooks = Hooks()
    result = call(ToolRegistry(cfg(), hooks), "set_volume", params)
    assert result.is_error
    assert "0 to 100" in result.result
    assert hooks.volumes == []


def test_device_status_is_json() -> None:
    result = call(ToolRegistry(cfg(), Hooks()), "device_status", {})
    assert not result.is_error
    assert json.loads(result.result)["state"] == "listening"


def test_end_conversation_asks_the_device() -> None:
    hooks = Hooks()
    result = call(ToolRegistry(cfg(), hooks), "end_conversation", {})
    assert not result.is_error
    assert hooks.end_requests == 1


def test_only_the_configured_builtins_are_offered() -> None:
    reg = ToolRegistry(cfg(builtin=("device_status",)), Hooks())
    assert reg.names == ("device_status",)
    result = call(reg, "set_volume", {"percent": 10})
    assert result.is_error
    assert "unknown tool 'set_volume'" in result.result


def test_unknown_tool_gets_an_error_naming_what_is_offered() -> None:
    result = call(ToolRegistry(cfg(), Hooks()), "launch_rocket", {"target": "moon"})
    assert result.is_error
    assert "launch_rocket" in result.result
    assert "set_volume" in result.result


# -- Python callables ---------------------------------------------------------------


@pytest.mark.realtime
def test_callable_gets_parameters_as_keywords(user_module: ModuleType) -> None:
    reg = ToolRegistry(cfg(py_tool("lookup", user_module, "lookup")), Hooks())
    result = call(reg, "lookup", {"room": "B12", "floor": 2})
    assert not result.is_error
    assert json.loads(result.result) == {"room": "B12", "floor": 2, "open": True}


@pytest.mark.realtime
def test_callable_exception_becomes_an_error_result(user_module: ModuleType) -> None:
    reg = ToolRegistry(cfg(py_tool("broken", user_module, "broken")), Hooks())
    result = call(reg, "broken", {})
    assert result.is_error
    assert "RuntimeError: the door controller is offline" in result.result


@pytest.mark.realtime
def test_parameters_that_do_not_fit_are_an_error_result(user_module: ModuleType) -> None:
    reg = ToolRegistry(cfg(py_tool("greet", user_module, "greet")), Hooks())
    result = call(reg, "greet", {"nom": "x"})
    assert result.is_error
    assert "rejected the parameters" in result.result


@pytest.mark.realtime
def test_a_tool_failure_is_the_agents_message(user_module: ModuleType) -> None:
    reg = ToolRegistry(cfg(py_tool("refuses", user_module, "refuses")), Hooks())
    result = call(reg, "refuses", {})
    assert result.is_error
    assert result.result == "the door is locked for the night"


@pytest.mark.realtime
def test_a_callables_prints_do_not_become_its_result(user_module: ModuleType) -> None:
    result = call(ToolRegistry(cfg(py_tool("chatty", user_module, "chatty")), Hooks()), "chatty", {})
    assert not result.is_error
    assert result.result == "the answer"


@pytest.mark.realtime
def test_a_callable_answers_in_utf8_whatever_the_locale(
    user_module: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LC_ALL", "C")
    monkeypatch.setenv("LANG", "C")
    result = call(ToolRegistry(cfg(py_tool("gruss", user_module, "gruss")), Hooks()), "gruss", {"name": "Zoë"})
    assert not result.is_error
    assert result.result == "Grüß dich, Zoë 🎟"


@pytest.mark.realtime
def test_a_callable_answers_without_waiting_for_threads_it_left(user_module: ModuleType) -> None:
    reg = ToolRegistry(cfg(py_tool("leaves", user_module, "leaves_a_thread", timeout_s=60)), Hooks())
    result = call(reg, "leaves", {})  # would time out after 60 s if its process waited for the thread
    assert not result.is_error
    assert result.result == "answered"


@pytest.mark.realtime
def test_a_callable_runs_in_its_own_process_without_the_api_key(
    user_module: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ELEVENLABS_API_KEY", "sk_env_key_for_test_987")
    result = call(ToolRegistry(cfg(py_tool("whoami", user_module, "whoami")), Hooks()), "whoami", {})
    answer = json.loads(result.result)
    assert answer["pid"] != os.getpid()
    assert answer["key"] == "absent"


@pytest.mark.realtime
def test_a_timed_out_callable_is_killed_and_answers_once(user_module: ModuleType, signals: Signals) -> None:
    reg = ToolRegistry(cfg(py_tool("slow", user_module, "slow", timeout_s=2.0)), Hooks())
    replies = Replies()
    reg.call("slow", "c9", {}, replies)
    result = replies.one()
    assert result.is_error
    assert "timed out after 2 s" in result.result
    reg.close()
    try:
        pid = signals.pid()  # sent before the timeout, unless the machine was too busy to start Python
    except TimeoutError:
        pid = None
    assert pid is None or (pid != os.getpid() and gone(pid))  # its own process, killed and reaped
    assert [r.result for r in replies.results] == [result.result]


@pytest.mark.realtime
def test_a_tool_without_its_own_timeout_uses_the_tools_default(user_module: ModuleType) -> None:
    spec = ToolSpec(name="slow", callable=f"{user_module.__name__}:slow")
    reg = ToolRegistry(ToolsConfig(timeout_s=0.25, tool=(spec,)), Hooks())
    result = call(reg, "slow", {})
    assert result.is_error
    assert "timed out after 0.25 s" in result.result
    reg.close()


@pytest.mark.realtime
def test_cancel_gives_exactly_one_cancelled_result(user_module: ModuleType, signals: Signals) -> None:
    reg = ToolRegistry(cfg(py_tool("slow", user_module, "slow", timeout_s=60)), Hooks())
    replies = Replies()
    handle = reg.call("slow", "c1", {}, replies)
    pid = signals.pid()
    handle.cancel()
    assert handle.done
    result = replies.one()
    assert result.is_error
    assert "cancelled" in result.result
    assert reg.active_calls == 0
    assert gone(pid)


@pytest.mark.realtime
def test_a_hung_callable_cannot_hold_the_process(user_module: ModuleType, signals: Signals) -> None:
    """Closing the tools ends a hung Python tool; nothing of it is left to wait for.

    (Before, it ran in a non-daemon thread of the daemon that no stop could end: the process
    lived until the function returned. The thread guard and the pid check both catch that.)
    """
    reg = ToolRegistry(cfg(py_tool("slow", user_module, "slow", timeout_s=600)), Hooks())
    replies = Replies()
    reg.call("slow", "c1", {}, replies)
    pid = signals.pid()
    assert pid != os.getpid()
    reg.close()
    (result,) = replies.wait(1)
    assert result.is_error
    assert "cancelled" in result.result
    assert gone(pid)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("tool")]


@pytest.mark.realtime
@pytest.mark.parametrize("kind", ["callable", "command"])
def test_cancelling_kills_what_the_tool_started(user_module: ModuleType, signals: Signals, kind: str) -> None:
    code = (
        "import os, socket, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
        f"s.sendto(f'grandchild {{child.pid}}'.encode(), {signals.path!r})\n"
        f"s.sendto(f'started {{os.getpid()}}'.encode(), {signals.path!r})\n"
        "time.sleep(120)\n"
    )
    spec = py_tool("spawner", user_module, "spawner", 60) if kind == "callable" else cmd_tool("spawner", code, 60)
    reg = ToolRegistry(cfg(spec), Hooks())
    replies = Replies()
    reg.call("spawner", "c1", {}, replies)
    grandchild = signals.pid("grandchild")
    pid = signals.pid()
    reg.close()
    assert "cancelled" in replies.one().result
    assert gone(pid)
    assert exits(grandchild), "what the tool started was killed with it"


@pytest.mark.realtime
def test_results_are_redacted_and_bounded(user_module: ModuleType) -> None:
    register_secret("sk_leaky_secret_123456")
    reg = ToolRegistry(cfg(py_tool("leaky", user_module, "leaky"), py_tool("huge", user_module, "huge")), Hooks())
    leaky = call(reg, "leaky", {})
    assert "sk_leaky_secret_123456" not in leaky.result
    assert REDACTED in leaky.result
    huge = call(reg, "huge", {})
    assert len(huge.result) < MAX_RESULT_CHARS + 100
    assert "cut" in huge.result


@pytest.mark.realtime
def test_many_concurrent_calls_each_get_exactly_one_result(user_module: ModuleType) -> None:
    names = ["lookup", "broken", "nope", "device_status"] * 5
    reg = ToolRegistry(
        # Ten Python processes start at once: a generous timeout, so that a slow CPU (the ARM check runs
        # this under qemu) cannot turn a lookup into a timeout error. The test is about one result per call.
        cfg(
            py_tool("lookup", user_module, "lookup", timeout_s=WAIT_S),
            py_tool("broken", user_module, "broken", timeout_s=WAIT_S),
            max_calls=len(names),
        ),
        Hooks(),
    )
    replies = Replies()
    for i, name in enumerate(names):
        reg.call(name, f"id{i}", {"room": "A"} if name == "lookup" else {}, replies)
    results = replies.wait(len(names))
    reg.close()
    assert Counter(r.call_id for r in results) == Counter(f"id{i}" for i in range(len(names)))
    errors = {r.call_id for r in results if r.is_error}
    assert errors == {f"id{i}" for i, n in enumerate(names) if n in ("broken", "nope")}


# -- commands ---------------------------------------------------------------------------


ECHO_DOUBLE = "import json, sys; p = json.load(sys.stdin); print(p['n'] * 2)"


@pytest.mark.realtime
def test_command_gets_json_on_stdin_and_returns_stdout() -> None:
    reg = ToolRegistry(cfg(cmd_tool("double", ECHO_DOUBLE)), Hooks())
    result = call(reg, "double", {"n": 21})
    assert not result.is_error
    assert result.result == "42"


@pytest.mark.realtime
def test_command_parameters_are_never_interpreted_by_a_shell(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = f"$(touch {marker}); `touch {marker}` ; touch {marker}"
    reg = ToolRegistry(cfg(cmd_tool("echo", "import json, sys; print(json.load(sys.stdin)['s'])")), Hooks())
    result = call(reg, "echo", {"s": evil})
    assert result.result == evil
    assert not marker.exists()


@pytest.mark.realtime
def test_command_failure_reports_exit_status_and_stderr() -> None:
    code = "import sys; sys.stderr.write('relay not found\\n'); sys.exit(3)"
    result = call(ToolRegistry(cfg(cmd_tool("relay", code)), Hooks()), "relay", {})
    assert result.is_error
    assert "status 3" in result.result
    assert "relay not found" in result.result


@pytest.mark.realtime
def test_command_timeout_kills_it(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    code = f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    reg = ToolRegistry(cfg(cmd_tool("hang", code, timeout_s=3.0)), Hooks())
    result = call(reg, "hang", {})
    assert result.is_error
    assert "timed out after 3 s" in result.result
    if pidfile.exists():  # (on a very loaded machine Python may not even have started)
        with pytest.raises(ProcessLookupError):  # killed and reaped
            os.kill(int(pidfile.read_text()), 0)


@pytest.mark.realtime
def test_command_does_not_inherit_the_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ELEVENLABS_API_KEY", "sk_env_key_for_test_987")
    code = "import os; print(os.environ.get('ELEVENLABS_API_KEY', 'absent'), os.environ['TOOL_CALL_ID'])"
    result = call(ToolRegistry(cfg(cmd_tool("env", code)), Hooks()), "env", {}, call_id="call-77")
    assert result.result == "absent call-77"


@pytest.mark.realtime
def test_cancelling_a_command_kills_it() -> None:
    code = "import sys, time; sys.stdin.read(); time.sleep(60)"
    reg = ToolRegistry(cfg(cmd_tool("hang", code, timeout_s=60)), Hooks())
    replies = Replies()
    reg.call("hang", "c1", {}, replies)
    reg.close()
    result = replies.one()
    assert result.is_error
    assert "cancelled" in result.result


# -- configuration errors -----------------------------------------------------------------


def test_missing_module_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"tools\.tool\[0\]\.callable.*cannot import"):
        ToolRegistry(cfg(ToolSpec(name="x", callable="no_such_module_zz:fn")), Hooks())


def test_missing_function_is_a_config_error(user_module: ModuleType) -> None:
    with pytest.raises(ConfigError, match="no function 'nothere'"):
        ToolRegistry(cfg(py_tool("x", user_module, "nothere")), Hooks())


def test_missing_command_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not an executable"):
        ToolRegistry(cfg(ToolSpec(name="x", command=(str(tmp_path / "nope"),))), Hooks())
    with pytest.raises(ConfigError, match="not on PATH"):
        ToolRegistry(cfg(ToolSpec(name="x", command=("no-such-program-zz",))), Hooks())


def test_duplicate_tool_names_are_a_config_error(user_module: ModuleType) -> None:
    with pytest.raises(ConfigError, match="used twice"):
        ToolRegistry(cfg(py_tool("set_volume", user_module, "lookup")), Hooks())


@pytest.mark.realtime
def test_without_hooks_there_are_no_builtins(user_module: ModuleType) -> None:
    reg = ToolRegistry(cfg(py_tool("lookup", user_module, "lookup")), None)
    assert reg.names == ("lookup",)


def escaping_tool(signals: Signals, then: str) -> str:
    """A command that starts a process in a session of its own (out of reach of the group kill)
    which keeps the tool's stdout and stderr open, reports both pids, then runs ``then``."""
    return (
        "import os, socket, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], start_new_session=True)\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
        f"s.sendto(f'grandchild {{child.pid}}'.encode(), {signals.path!r})\n"
        f"s.sendto(f'started {{os.getpid()}}'.encode(), {signals.path!r})\n"
        f"{then}\n"
    )


@pytest.mark.realtime
def test_a_cancel_is_not_held_up_by_a_process_the_tool_hid(signals: Signals) -> None:
    reg = ToolRegistry(cfg(cmd_tool("hider", escaping_tool(signals, "time.sleep(120)"), 60)), Hooks())
    replies = Replies()
    reg.call("hider", "c1", {}, replies)
    grandchild = signals.pid("grandchild")
    try:
        pid = signals.pid()
        reg.close()  # before: the thread read the pipes until the 60 s timeout (WorkerStuckError here)
        assert "cancelled" in replies.one().result
        assert gone(pid)
    finally:
        os.kill(grandchild, 9)
        assert exits(grandchild)


@pytest.mark.realtime
def test_a_tool_that_exits_is_answered_though_a_process_it_started_holds_its_output(signals: Signals) -> None:
    code = escaping_tool(signals, "print('door opened')")
    reg = ToolRegistry(cfg(cmd_tool("hider", code, 60)), Hooks())
    replies = Replies()
    reg.call("hider", "c1", {}, replies)
    grandchild = signals.pid("grandchild")
    try:
        result = replies.one()  # before: "timed out after 60 s"
        assert not result.is_error
        assert result.result == "door opened"
    finally:
        os.kill(grandchild, 9)
        assert exits(grandchild)
    reg.close()


# -- limits on what the agent can make the device do or say ------------------------------------------------


def children_of(pid: int) -> list[int]:
    """Live processes whose parent is ``pid`` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(entry))
    return out


@pytest.mark.realtime
def test_calls_beyond_the_limit_are_answered_at_once_with_an_error(signals: Signals) -> None:
    """Calls beyond the limit (default 4) are refused at once; unlimited, 300 calls made 310 threads, 300 processes."""
    code = (
        "import os, socket, time\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
        f"s.sendto(f'started {{os.getpid()}}'.encode(), {signals.path!r})\n"
        "time.sleep(120)\n"
    )
    reg = ToolRegistry(ToolsConfig(tool=(cmd_tool("wait", code, 60),)), Hooks())
    assert reg.max_concurrent_calls == ToolsConfig().max_concurrent_calls == 4
    replies = Replies()
    n = 30
    for i in range(n):
        reg.call("wait", f"id{i}", {}, replies)
    refused = list(replies.results)  # answered at once, on the caller's thread
    assert len(refused) == n - 4
    assert reg.active_calls == 4
    assert all(r.is_error and "was not run" in r.result and "4 tool calls" in r.result for r in refused)
    running = {signals.pid() for _ in range(4)}
    assert set(children_of(os.getpid())) <= running  # no fifth process
    reg.close()
    results = replies.wait(n)
    assert Counter(r.call_id for r in results) == Counter(f"id{i}" for i in range(n))  # one each
    assert sum("cancelled" in r.result for r in results) == 4
    assert call(reg, "device_status", {}).is_error is False  # a freed slot runs the next call


def test_a_huge_unknown_tool_name_is_not_echoed_whole(caplog: pytest.LogCaptureFixture) -> None:
    """A 1 MB tool name or parameter is cut short in the error result and the log lines, not echoed whole."""
    caplog.set_level(logging.DEBUG, logger="device.drivers.tools")
    name = "x" * 1_000_000
    reg = ToolRegistry(cfg(), Hooks())
    replies = Replies()
    reg.call(name, "c1", {}, replies)
    result = replies.one()
    assert result.is_error
    assert result.call_id == "c1"
    assert "unknown tool 'xxxx" in result.result
    assert "1000000 characters" in result.result
    assert len(result.result) < 1000
    assert len(result.name) < 200  # the name reaches the session's log lines
    assert max(len(r.getMessage()) for r in caplog.records) < 1000
    # Parameters echoed into a result are bounded as well.
    volume = call(reg, "set_volume", {"percent": "y" * 1_000_000})
    assert volume.is_error
    assert "not a number" in volume.result
    assert len(volume.result) < MAX_RESULT_CHARS + 100
    assert max(len(r.getMessage()) for r in caplog.records) < 1000


# -- the process started ahead for Python tools ---------------------------------------------------------------


def join_call_threads() -> None:
    for t in threading.enumerate():
        if t.name.startswith("tool:"):
            t.join(WAIT_S)


@pytest.mark.realtime
def test_each_python_call_takes_a_process_started_ahead_of_it(user_module: ModuleType) -> None:
    reg = ToolRegistry(cfg(py_tool("whoami", user_module, "whoami")), Hooks())
    (ahead,) = children_of(os.getpid())  # started with the tools
    first = json.loads(call(reg, "whoami", {}, "c1").result)["pid"]
    assert first == ahead
    join_call_threads()  # the call's thread starts the next process once it has answered
    (ahead,) = children_of(os.getpid())
    assert ahead != first
    assert gone(first)
    second = json.loads(call(reg, "whoami", {}, "c2").result)["pid"]
    assert second == ahead  # one process per call
    join_call_threads()
    (spare,) = children_of(os.getpid())
    reg.close()
    assert gone(spare)
    assert children_of(os.getpid()) == []


@pytest.mark.realtime
def test_the_process_started_ahead_ends_with_its_daemon(user_module: ModuleType, tmp_path: Path) -> None:
    """Even a daemon that dies without closing its tools (SIGKILL) leaves no Python tool process."""
    script = tmp_path / "daemon.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import json, os, sys, threading
            sys.path[:0] = {[str(tmp_path), *sys.path]!r}
            from device.core.config import ToolsConfig, ToolSpec
            from device.drivers.tools import ToolRegistry
            reg = ToolRegistry(ToolsConfig(tool=(ToolSpec(name="w", callable="{user_module.__name__}:whoami"),)))
            done = threading.Event()
            reg.call("w", "c1", {{}}, lambda r: done.set())
            done.wait(30)
            for t in threading.enumerate():
                if t.name.startswith("tool:"):
                    t.join(30)
            print("ready", flush=True)
            threading.Event().wait(60)
            """
        )
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        (spare,) = children_of(proc.pid)
        proc.kill()
        proc.wait(WAIT_S)
        assert exits(spare), "the spare Python tool process outlived its daemon"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
