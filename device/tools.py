"""Client tools the agent may call: built-in device tools and configured ones.

Each call runs in its own named worker thread, never on the socket's receiving
thread, and is bounded by its tool's timeout. Whatever happens — success,
unknown tool, exception, non-zero exit, timeout, cancellation — the ``reply``
callback is called exactly once, so exactly one ``client_tool_result`` goes
back per call. Nothing the agent sends is run through a shell: a command tool
is a fixed argv and receives the parameters as JSON on its stdin.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from device.config import ToolsConfig, ToolSpec
from device.errors import ConfigError
from device.secrets import redact
from device.worker import Worker

log = logging.getLogger(__name__)

# Longest result string returned to the agent (longer output is cut, and says so).
MAX_RESULT_CHARS = 16_000
# Environment variables a tool command must not inherit.
_PRIVATE_ENV = ("ELEVENLABS_API_KEY", "CREDENTIALS_DIRECTORY")
_KILL_WAIT_S = 2.0


class DeviceHooks(Protocol):
    """What the built-in tools need from the device (the daemon implements it)."""

    def set_volume(self, percent: int) -> None: ...

    def device_status(self) -> dict[str, Any]: ...

    def end_conversation(self) -> None: ...


@dataclass(frozen=True)
class ToolResult:
    """The one answer to one ``client_tool_call``."""

    name: str
    call_id: str
    result: str
    is_error: bool
    duration_ms: float = 0.0


class ToolFailure(Exception):
    """A tool ran and failed; the message is what the agent is told."""


def _result_text(value: Any) -> str:
    if value is None:
        return "ok"
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(value)


def _clip(text: str) -> str:
    text = redact(text)
    if len(text) > MAX_RESULT_CHARS:
        return text[:MAX_RESULT_CHARS] + f"… [cut: {len(text)} characters]"
    return text


# -- tool kinds -----------------------------------------------------------------


class _Tool:
    """One callable tool: ``invoke(parameters)`` returns the result text or raises."""

    def __init__(self, name: str, timeout_s: float) -> None:
        self.name = name
        self.timeout_s = timeout_s

    def invoke(self, parameters: Mapping[str, Any]) -> str:  # pragma: no cover - abstract
        raise NotImplementedError


class _FunctionTool(_Tool):
    def __init__(self, name: str, timeout_s: float, fn: Callable[..., Any], *, kwargs: bool) -> None:
        super().__init__(name, timeout_s)
        self._fn = fn
        self._kwargs = kwargs

    def invoke(self, parameters: Mapping[str, Any]) -> str:
        if self._kwargs:
            return _result_text(self._fn(**parameters))
        return _result_text(self._fn(parameters))


class _CommandTool(_Tool):
    def __init__(self, name: str, timeout_s: float, argv: tuple[str, ...]) -> None:
        super().__init__(name, timeout_s)
        self.argv = argv


def _percent(parameters: Mapping[str, Any]) -> int:
    for key in ("percent", "volume", "level", "value"):
        if key in parameters:
            value = parameters[key]
            break
    else:
        raise ToolFailure("set_volume needs 'percent', a number from 0 to 100")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ToolFailure(f"set_volume: {value!r} is not a number; give 0 to 100") from None
    if not 0 <= number <= 100:
        raise ToolFailure(f"set_volume: {number:g} is out of range; give 0 to 100")
    return round(number)


def _builtins(hooks: DeviceHooks) -> dict[str, Callable[[Mapping[str, Any]], Any]]:
    def set_volume(p: Mapping[str, Any]) -> str:
        percent = _percent(p)
        hooks.set_volume(percent)
        return f"volume set to {percent}%"

    def device_status(p: Mapping[str, Any]) -> dict[str, Any]:
        return hooks.device_status()

    def end_conversation(p: Mapping[str, Any]) -> str:
        hooks.end_conversation()
        return "the conversation will end after this reply"

    return {"set_volume": set_volume, "device_status": device_status, "end_conversation": end_conversation}


def _resolve_callable(spec: ToolSpec, key: str) -> Callable[..., Any]:
    module_name, _, attr = spec.callable.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(
            f"tool {spec.name!r}: cannot import module {module_name!r} ({e}); install it or fix the "
            "module path (it must be importable by the service's Python)",
            key,
        ) from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"tool {spec.name!r}: {module_name} has no function {attr!r}", key)
    return fn


def _resolve_command(spec: ToolSpec, key: str) -> tuple[str, ...]:
    program = spec.command[0]
    if os.sep in program:
        if not (os.path.isfile(program) and os.access(program, os.X_OK)):
            raise ConfigError(f"tool {spec.name!r}: {program} is not an executable file", key)
        return spec.command
    found = shutil.which(program)
    if found is None:
        raise ConfigError(f"tool {spec.name!r}: {program!r} is not on PATH; give its absolute path", key)
    return (found, *spec.command[1:])


# -- calls ------------------------------------------------------------------------


class ToolCallHandle:
    """A running call; ``cancel()`` ends it (the reply says it was cancelled)."""

    def __init__(self, worker: _CallWorker | None) -> None:
        self._worker = worker

    def cancel(self, timeout_s: float = 5.0) -> None:
        if self._worker is not None:
            self._worker.stop(timeout_s)

    @property
    def done(self) -> bool:
        return self._worker is None or self._worker.replied


class _CallWorker(Worker):
    """Runs one call: a helper thread for Python functions, a child process for commands."""

    def __init__(
        self,
        tool: _Tool,
        call_id: str,
        parameters: Mapping[str, Any],
        reply: Callable[[ToolResult], None],
        on_done: Callable[[_CallWorker], None],
    ) -> None:
        super().__init__(f"tool:{tool.name}")
        self._tool = tool
        self._call_id = call_id
        self._parameters = parameters
        self._reply = reply
        self._on_done = on_done
        self._settled = threading.Event()
        self._outcome: tuple[str, bool] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._proc_lock = threading.Lock()
        self._started_s = time.monotonic()
        self.replied = False

    def wake(self) -> None:
        self._settled.set()
        with self._proc_lock:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.kill()

    def run(self) -> None:
        try:
            if isinstance(self._tool, _CommandTool):
                text, is_error = self._run_command(self._tool)
            else:
                text, is_error = self._run_function()
            self._send(text, is_error)
        finally:
            if not self.replied:  # an unexpected failure above: still answer once
                self._send(f"tool {self._tool.name} failed inside the device", True)
            self._on_done(self)

    def _send(self, text: str, is_error: bool) -> None:
        if self.replied:
            return
        self.replied = True
        duration_ms = (time.monotonic() - self._started_s) * 1000
        result = ToolResult(self._tool.name, self._call_id, _clip(text), is_error, duration_ms)
        if is_error:
            log.warning("tool %s failed after %.0f ms: %s", self._tool.name, duration_ms, result.result[:300])
        else:
            log.info("tool %s answered in %.0f ms", self._tool.name, duration_ms)
        try:
            self._reply(result)
        except Exception:
            log.exception("sending the result of tool %s failed", self._tool.name)

    def _run_function(self) -> tuple[str, bool]:
        def target() -> None:
            try:
                outcome = (self._tool.invoke(self._parameters), False)
            except ToolFailure as e:
                outcome = (str(e), True)
            except TypeError as e:  # usually parameters that do not fit the signature
                outcome = (f"tool {self._tool.name} rejected the parameters: {e}", True)
            except Exception as e:
                outcome = (f"tool {self._tool.name} failed: {type(e).__name__}: {e}", True)
            self._outcome = outcome
            self._settled.set()

        helper = threading.Thread(target=target, name=f"tool-fn:{self._tool.name}", daemon=False)
        helper.start()
        self._settled.wait(self._tool.timeout_s)
        if self._outcome is not None:
            helper.join(1.0)
            return self._outcome
        if self.stopping:
            return f"tool {self._tool.name} was cancelled: the conversation ended", True
        log.error(
            "tool %s did not return within %.1f s; its thread keeps running until it does "
            "(make the function honour a timeout)",
            self._tool.name,
            self._tool.timeout_s,
        )
        return f"tool {self._tool.name} timed out after {self._tool.timeout_s:g} s", True

    def _run_command(self, tool: _CommandTool) -> tuple[str, bool]:
        env = {k: v for k, v in os.environ.items() if k not in _PRIVATE_ENV}
        env["TOOL_NAME"] = tool.name
        env["TOOL_CALL_ID"] = self._call_id
        payload = json.dumps(dict(self._parameters), ensure_ascii=False).encode("utf-8")
        with self._proc_lock:
            if self.stopping:
                return f"tool {tool.name} was cancelled: the conversation ended", True
            try:
                self._proc = subprocess.Popen(  # argv, never a shell
                    tool.argv,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    env=env,
                    close_fds=True,
                    start_new_session=True,
                )
            except OSError as e:
                return f"tool {tool.name} could not start: {e.strerror}", True
        proc = self._proc
        try:
            out, err = proc.communicate(payload, timeout=tool.timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate(timeout=_KILL_WAIT_S)
            return f"tool {tool.name} timed out after {tool.timeout_s:g} s", True
        if self.stopping and proc.returncode < 0:
            return f"tool {tool.name} was cancelled: the conversation ended", True
        text = out.decode("utf-8", "replace").strip()
        if proc.returncode != 0:
            tail = err.decode("utf-8", "replace").strip()[-500:]
            return f"tool {tool.name} exited with status {proc.returncode}: {tail or text[-500:]}", True
        return text or "ok", False


class ToolRegistry:
    """The tools this device offers; ``call()`` runs one without blocking the caller."""

    def __init__(self, tools_cfg: ToolsConfig, hooks: DeviceHooks | None = None) -> None:
        self._tools: dict[str, _Tool] = {}
        if hooks is not None:
            builtins = _builtins(hooks)
            for name in tools_cfg.builtin:
                self._tools[name] = _FunctionTool(name, tools_cfg.timeout_s, builtins[name], kwargs=False)
        for i, spec in enumerate(tools_cfg.tool):
            key = f"tools.tool[{i}]"
            if spec.name in self._tools:
                raise ConfigError(
                    f"tool name {spec.name!r} is used twice (or is a built-in); rename it, or drop the "
                    "built-in from tools.builtin",
                    f"{key}.name",
                )
            timeout_s = spec.timeout_s or tools_cfg.timeout_s
            if spec.callable:
                fn = _resolve_callable(spec, f"{key}.callable")
                self._tools[spec.name] = _FunctionTool(spec.name, timeout_s, fn, kwargs=True)
            else:
                argv = _resolve_command(spec, f"{key}.command")
                self._tools[spec.name] = _CommandTool(spec.name, timeout_s, argv)
        self._lock = threading.Lock()
        self._active: set[_CallWorker] = set()
        self._mcp_approve = frozenset(tools_cfg.mcp_approve)

    def mcp_approves(self, tool_name: str) -> bool:
        """An MCP tool call awaiting approval: approved when listed in tools.mcp_approve, denied otherwise."""
        return tool_name in self._mcp_approve

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._tools))

    def call(
        self,
        name: str,
        call_id: str,
        parameters: Mapping[str, Any],
        reply: Callable[[ToolResult], None],
    ) -> ToolCallHandle:
        """Start a call; ``reply`` gets exactly one result, from another thread (or at once if unknown)."""
        tool = self._tools.get(name)
        if tool is None:
            offered = ", ".join(self.names) or "none"
            log.warning("the agent called unknown tool %r; this device offers: %s", name[:100], offered)
            reply(
                ToolResult(
                    name,
                    call_id,
                    f"unknown tool {name!r}: this device offers {offered}",
                    True,
                )
            )
            return ToolCallHandle(None)
        worker = _CallWorker(tool, call_id, parameters, reply, self._finished)
        with self._lock:
            self._active.add(worker)
        worker.start()
        return ToolCallHandle(worker)

    def _finished(self, worker: _CallWorker) -> None:
        with self._lock:
            self._active.discard(worker)

    @property
    def active_calls(self) -> int:
        with self._lock:
            return len(self._active)

    def close(self, timeout_s: float = 5.0) -> None:
        """Cancel every running call and join its thread."""
        with self._lock:
            workers = list(self._active)
        for w in workers:
            w.stop(timeout_s)
