"""Client tools: built-ins, Python callables, argv commands; one result per call, always."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import threading
import uuid
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from device.config import ToolsConfig, ToolSpec
from device.errors import ConfigError
from device.secrets import REDACTED, register_secret
from device.tools import MAX_RESULT_CHARS, ToolRegistry, ToolResult

WAIT_S = 30.0  # generous: the machine is shared; nothing here asserts speed


class Hooks:
    """A real DeviceHooks implementation that records what the tools asked for."""

    def __init__(self) -> None:
        self.volumes: list[int] = []
        self.ended = 0

    def set_volume(self, percent: int) -> None:
        self.volumes.append(percent)

    def device_status(self) -> dict[str, Any]:
        return {"state": "listening", "volume_percent": 80, "uptime_s": 12.5}

    def end_conversation(self) -> None:
        self.ended += 1


class Replies:
    """Collects results; waits on a Condition, never sleeps."""

    def __init__(self) -> None:
        self.results: list[ToolResult] = []
        self._cond = threading.Condition()

    def __call__(self, result: ToolResult) -> None:
        with self._cond:
            self.results.append(result)
            self._cond.notify_all()

    def wait(self, n: int = 1) -> list[ToolResult]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.results) >= n, WAIT_S), "no tool result arrived"
            return list(self.results)

    def one(self) -> ToolResult:
        (result,) = self.wait(1)
        return result


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """A throwaway module of user tools, importable as module:function."""
    name = f"kiosk_tools_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            import threading
            release = threading.Event()
            started = threading.Event()

            def lookup(room, floor=0):
                return {"room": room, "floor": floor, "open": True}

            def greet(name):
                return "hello " + name

            def broken():
                raise RuntimeError("the door controller is offline")

            def slow():
                started.set()
                release.wait(60)
                return "too late"

            def leaky():
                return "key is sk_leaky_secret_123456"

            def huge():
                return "x" * 100000
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    module = importlib.import_module(name)
    yield module
    module.release.set()  # never leave a slow tool's thread behind
    sys.modules.pop(name, None)


ALL_BUILTINS = ("set_volume", "device_status", "end_conversation")


def cfg(*tools: ToolSpec, builtin: tuple[str, ...] = ALL_BUILTINS) -> ToolsConfig:
    return ToolsConfig(builtin=builtin, timeout_s=5.0, tool=tools)


def py_tool(name: str, module: ModuleType, fn: str, timeout_s: float = 5.0) -> ToolSpec:
    return ToolSpec(name=name, callable=f"{module.__name__}:{fn}", timeout_s=timeout_s)


def cmd_tool(name: str, code: str, timeout_s: float = 20.0) -> ToolSpec:
    return ToolSpec(name=name, command=(sys.executable, "-c", code), timeout_s=timeout_s)


def call(reg: ToolRegistry, name: str, params: dict[str, Any], call_id: str = "c1") -> ToolResult:
    replies = Replies()
    reg.call(name, call_id, params, replies)
    result = replies.one()
    assert result.call_id == call_id and result.name == name
    return result


# -- built-ins --------------------------------------------------------------------


def test_set_volume_reaches_the_device() -> None:
    hooks = Hooks()
    reg = ToolRegistry(cfg(), hooks)
    result = call(reg, "set_volume", {"percent": 35.4})
    assert not result.is_error and "35" in result.result
    assert hooks.volumes == [35]


@pytest.mark.parametrize("params", [{}, {"percent": 150}, {"percent": "loud"}, {"percent": -1}])
def test_set_volume_rejects_bad_values_with_an_error_result(params: dict[str, Any]) -> None:
    hooks = Hooks()
    result = call(ToolRegistry(cfg(), hooks), "set_volume", params)
    assert result.is_error and "0 to 100" in result.result
    assert hooks.volumes == []


def test_device_status_is_json() -> None:
    result = call(ToolRegistry(cfg(), Hooks()), "device_status", {})
    assert not result.is_error
    assert json.loads(result.result)["state"] == "listening"


def test_end_conversation_asks_the_device() -> None:
    hooks = Hooks()
    result = call(ToolRegistry(cfg(), hooks), "end_conversation", {})
    assert not result.is_error and hooks.ended == 1


def test_only_the_configured_builtins_are_offered() -> None:
    reg = ToolRegistry(cfg(builtin=("device_status",)), Hooks())
    assert reg.names == ("device_status",)
    result = call(reg, "set_volume", {"percent": 10})
    assert result.is_error and "unknown tool 'set_volume'" in result.result


def test_unknown_tool_gets_an_error_naming_what_is_offered() -> None:
    result = call(ToolRegistry(cfg(), Hooks()), "launch_rocket", {"target": "moon"})
    assert result.is_error
    assert "launch_rocket" in result.result and "set_volume" in result.result


# -- Python callables ---------------------------------------------------------------


def test_callable_gets_parameters_as_keywords(user_module: ModuleType) -> None:
    reg = ToolRegistry(cfg(py_tool("lookup", user_module, "lookup")), Hooks())
    result = call(reg, "lookup", {"room": "B12", "floor": 2})
    assert not result.is_error
    assert json.loads(result.result) == {"room": "B12", "floor": 2, "open": True}


def test_callable_exception_becomes_an_error_result(user_module: ModuleType) -> None:
    reg = ToolRegistry(cfg(py_tool("broken", user_module, "broken")), Hooks())
    result = call(reg, "broken", {})
    assert result.is_error and "RuntimeError: the door controller is offline" in result.result


def test_parameters_that_do_not_fit_are_an_error_result(user_module: ModuleType) -> None:
    reg = ToolRegistry(cfg(py_tool("greet", user_module, "greet")), Hooks())
    result = call(reg, "greet", {"nom": "x"})
    assert result.is_error and "rejected the parameters" in result.result


def test_callable_timeout_answers_once_and_late_result_is_discarded(user_module: ModuleType) -> None:
    reg = ToolRegistry(cfg(py_tool("slow", user_module, "slow", timeout_s=0.2)), Hooks())
    replies = Replies()
    reg.call("slow", "c9", {}, replies)
    result = replies.one()
    assert result.is_error and "timed out after 0.2 s" in result.result
    assert user_module.started.is_set()
    user_module.release.set()  # the function now returns "too late"
    reg.close()
    # Wait for the function's own thread to finish so its late result would show up.
    for t in threading.enumerate():
        if t.name == "tool-fn:slow":
            t.join(WAIT_S)
    assert [r.result for r in replies.results] == [result.result]


def test_a_tool_without_its_own_timeout_uses_the_tools_default(user_module: ModuleType) -> None:
    spec = ToolSpec(name="slow", callable=f"{user_module.__name__}:slow")
    reg = ToolRegistry(ToolsConfig(timeout_s=0.25, tool=(spec,)), Hooks())
    result = call(reg, "slow", {})
    assert result.is_error and "timed out after 0.25 s" in result.result
    user_module.release.set()
    reg.close()


def test_cancel_gives_exactly_one_cancelled_result(user_module: ModuleType) -> None:
    reg = ToolRegistry(cfg(py_tool("slow", user_module, "slow", timeout_s=60)), Hooks())
    replies = Replies()
    handle = reg.call("slow", "c1", {}, replies)
    assert user_module.started.wait(WAIT_S)
    handle.cancel()
    assert handle.done
    result = replies.one()
    assert result.is_error and "cancelled" in result.result
    assert reg.active_calls == 0
    user_module.release.set()


def test_results_are_redacted_and_bounded(user_module: ModuleType) -> None:
    register_secret("sk_leaky_secret_123456")
    reg = ToolRegistry(cfg(py_tool("leaky", user_module, "leaky"), py_tool("huge", user_module, "huge")), Hooks())
    leaky = call(reg, "leaky", {})
    assert "sk_leaky_secret_123456" not in leaky.result and REDACTED in leaky.result
    huge = call(reg, "huge", {})
    assert len(huge.result) < MAX_RESULT_CHARS + 100 and "cut" in huge.result


def test_many_concurrent_calls_each_get_exactly_one_result(user_module: ModuleType) -> None:
    reg = ToolRegistry(
        cfg(py_tool("lookup", user_module, "lookup"), py_tool("broken", user_module, "broken")), Hooks()
    )
    replies = Replies()
    names = ["lookup", "broken", "nope", "device_status"] * 5
    for i, name in enumerate(names):
        reg.call(name, f"id{i}", {"room": "A"} if name == "lookup" else {}, replies)
    results = replies.wait(len(names))
    reg.close()
    assert Counter(r.call_id for r in results) == Counter(f"id{i}" for i in range(len(names)))
    errors = {r.call_id for r in results if r.is_error}
    assert errors == {f"id{i}" for i, n in enumerate(names) if n in ("broken", "nope")}


# -- commands ---------------------------------------------------------------------------


ECHO_DOUBLE = "import json, sys; p = json.load(sys.stdin); print(p['n'] * 2)"


def test_command_gets_json_on_stdin_and_returns_stdout() -> None:
    reg = ToolRegistry(cfg(cmd_tool("double", ECHO_DOUBLE)), Hooks())
    result = call(reg, "double", {"n": 21})
    assert not result.is_error and result.result == "42"


def test_command_parameters_are_never_interpreted_by_a_shell(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = f"$(touch {marker}); `touch {marker}` ; touch {marker}"
    reg = ToolRegistry(cfg(cmd_tool("echo", "import json, sys; print(json.load(sys.stdin)['s'])")), Hooks())
    result = call(reg, "echo", {"s": evil})
    assert result.result == evil
    assert not marker.exists()


def test_command_failure_reports_exit_status_and_stderr() -> None:
    code = "import sys; sys.stderr.write('relay not found\\n'); sys.exit(3)"
    result = call(ToolRegistry(cfg(cmd_tool("relay", code)), Hooks()), "relay", {})
    assert result.is_error and "status 3" in result.result and "relay not found" in result.result


def test_command_timeout_kills_it(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    code = f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    reg = ToolRegistry(cfg(cmd_tool("hang", code, timeout_s=3.0)), Hooks())
    result = call(reg, "hang", {})
    assert result.is_error and "timed out after 3 s" in result.result
    if pidfile.exists():  # (on a very loaded machine Python may not even have started)
        with pytest.raises(ProcessLookupError):  # killed and reaped
            os.kill(int(pidfile.read_text()), 0)


def test_command_does_not_inherit_the_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ELEVENLABS_API_KEY", "sk_env_key_for_test_987")
    code = "import os; print(os.environ.get('ELEVENLABS_API_KEY', 'absent'), os.environ['TOOL_CALL_ID'])"
    result = call(ToolRegistry(cfg(cmd_tool("env", code)), Hooks()), "env", {}, call_id="call-77")
    assert result.result == "absent call-77"


def test_cancelling_a_command_kills_it() -> None:
    code = "import sys, time; sys.stdin.read(); time.sleep(60)"
    reg = ToolRegistry(cfg(cmd_tool("hang", code, timeout_s=60)), Hooks())
    replies = Replies()
    reg.call("hang", "c1", {}, replies)
    reg.close()
    result = replies.one()
    assert result.is_error and "cancelled" in result.result


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


def test_without_hooks_there_are_no_builtins(user_module: ModuleType) -> None:
    reg = ToolRegistry(cfg(py_tool("lookup", user_module, "lookup")), None)
    assert reg.names == ("lookup",)
