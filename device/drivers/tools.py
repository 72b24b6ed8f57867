"""Client tools the agent may call: built-in device tools and configured ones.

Each call runs in its own named worker thread, never on the socket's receiving
thread, and is bounded by its tool's timeout. Whatever happens — success,
unknown tool, exception, non-zero exit, timeout, cancellation, too many calls
at once — the ``reply`` callback is called exactly once, so exactly one
``client_tool_result`` goes back per call. Nothing the agent sends is run
through a shell: a command tool is a fixed argv and receives the parameters as
JSON on its stdin.

Configured Python callables run in a child process too (:mod:`device.drivers.toolhost`),
not in a thread of the daemon: a Python thread cannot be stopped from outside,
so a hung function would outlive its timeout and hold the process at exit (a
daemon thread would be abandoned instead, still running, against the house
rule). A child process is killed — with everything it started — at the timeout
or when the conversation or the daemon stops. Only the built-in tools, the
device's own bounded code, run in the call's thread.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from device.core.config import ToolsConfig, ToolSpec
from device.core.errors import ConfigError, WorkerStuckError
from device.drivers.logs import RateLimitedLog
from device.drivers.secrets import redact
from device.drivers.toolhost import BOOTSTRAP, ToolFailure, result_text
from device.drivers.worker import Worker

log = logging.getLogger(__name__)

# Longest result string returned to the agent (longer output is cut, and says so).
MAX_RESULT_CHARS = 16_000
# Longest piece of agent-controlled text (a tool name) echoed into a result or a log line.
MAX_ECHO_CHARS = 100
# Environment variables a tool command must not inherit.
_PRIVATE_ENV = ("ELEVENLABS_API_KEY", "CREDENTIALS_DIRECTORY")
# How long a SIGKILLed tool process is waited for (longer only if it is stuck in the kernel).
_KILL_WAIT_S = 0.5
# A running call looks at its stop, its deadline and its child this often (see _CallWorker._wait).
_SLICE_S = 0.25


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


__all__ = ["DeviceHooks", "ToolCallHandle", "ToolFailure", "ToolRegistry", "ToolResult"]


def _clip(text: str, limit: int = MAX_RESULT_CHARS) -> str:
    text = redact(text)
    if len(text) > limit:
        return text[:limit] + f"… [cut: {len(text)} characters]"
    return text


# -- tool kinds -----------------------------------------------------------------


class _Tool:
    """One callable tool: ``invoke(parameters)`` returns the result text or raises."""

    def __init__(self, name: str, timeout_s: float) -> None:
        self.name = name
        self.timeout_s = timeout_s

    def invoke(self, parameters: Mapping[str, Any]) -> str:  # pragma: no cover - abstract
        raise NotImplementedError


class _BuiltinTool(_Tool):
    """A built-in device tool: the device's own code, whose blocking calls are bounded."""

    def __init__(self, name: str, timeout_s: float, fn: Callable[[Mapping[str, Any]], Any]) -> None:
        super().__init__(name, timeout_s)
        self._fn = fn

    def invoke(self, parameters: Mapping[str, Any]) -> str:
        return result_text(self._fn(parameters))


class _CommandTool(_Tool):
    """A fixed argv; the parameters arrive as JSON on stdin, the result is its stdout."""

    def __init__(self, name: str, timeout_s: float, argv: tuple[str, ...]) -> None:
        super().__init__(name, timeout_s)
        self.argv = argv

    def spawn(self, call_id: str) -> subprocess.Popen[bytes]:
        env = _tool_env()
        env["TOOL_NAME"] = self.name
        env["TOOL_CALL_ID"] = call_id
        return _start(self.argv, env)

    def after_call(self) -> None:
        """Called on the call's thread once it has answered."""

    def request(self, parameters: Mapping[str, Any]) -> bytes:
        return json.dumps(dict(parameters), ensure_ascii=False).encode("utf-8")

    def answer(self, out: bytes, err: bytes, returncode: int) -> tuple[str, bool]:
        text = out.decode("utf-8", "replace").strip()
        if returncode != 0:
            tail = err.decode("utf-8", "replace").strip()[-500:]
            return f"tool {self.name} {_exit_text(returncode)}: {tail or text[-500:]}", True
        return text or "ok", False


class _PythonTool(_CommandTool):
    """A configured ``module:function``, called in a child ``python -I`` (see :mod:`device.drivers.toolhost`)."""

    def __init__(self, name: str, timeout_s: float, target: str, processes: _PythonProcesses) -> None:
        super().__init__(name, timeout_s, _PythonProcesses.ARGV)
        self.target = target
        self._processes = processes

    def spawn(self, call_id: str) -> subprocess.Popen[bytes]:
        return self._processes.take()

    def after_call(self) -> None:
        self._processes.refill()

    def request(self, parameters: Mapping[str, Any]) -> bytes:
        request = {"name": self.name, "target": self.target, "parameters": dict(parameters)}
        return json.dumps(request, ensure_ascii=False).encode("utf-8")

    def answer(self, out: bytes, err: bytes, returncode: int) -> tuple[str, bool]:
        try:
            if returncode == 0:
                answer = json.loads(out)
                return str(answer["result"]), bool(answer["is_error"])
        except (ValueError, TypeError, KeyError):  # it exited without a (whole) answer
            pass
        tail = err.decode("utf-8", "replace").strip()[-500:]  # it died, or exited, before answering
        return f"tool {self.name} {_exit_text(returncode)} without an answer: {tail}".rstrip(": "), True


def _tool_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _PRIVATE_ENV}


def _start(argv: tuple[str, ...], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(  # argv, never a shell
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        close_fds=True,
        start_new_session=True,  # its own process group: a kill ends what it started too
    )


class _PythonProcesses:
    """The child processes of the Python tools: one per call, and one started ahead.

    A fresh ``python -I`` takes tens of milliseconds to start on a PC (more on a Pi) before it
    can call anything, and the agent would wait for that on every call. So one child is kept
    ready — started with the tools, their modules imported — waiting for a request; a call
    takes it and the next is started once that call has answered. It is a process like any
    other call's (killed on close). One whose daemon goes away reads end-of-file and exits.
    """

    ARGV = (sys.executable, "-I", "-c", BOOTSTRAP)

    def __init__(self, modules: tuple[str, ...]) -> None:
        header = {"sys_path": list(sys.path), "preload": list(modules)}
        self._header = json.dumps(header, ensure_ascii=False).encode("utf-8") + b"\n"
        self._lock = threading.Lock()
        self._spare: subprocess.Popen[bytes] | None = None
        self._closed = False

    def _start(self) -> subprocess.Popen[bytes]:
        proc = _start(self.ARGV, _tool_env())
        assert proc.stdin is not None
        try:
            proc.stdin.write(self._header)
            proc.stdin.flush()
        except OSError:  # it died at once: the call reads why from its stderr
            pass
        return proc

    def take(self) -> subprocess.Popen[bytes]:
        """The waiting child if it is alive, else a new one."""
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is not None:
            if spare.poll() is None:
                return spare
            _discard(spare)
        return self._start()

    def refill(self) -> None:
        """Start the next call's child, unless one waits already or the tools are closed."""
        with self._lock:
            if self._closed or self._spare is not None:
                return
        try:
            proc = self._start()
        except OSError as e:  # the next call tries again, and reports it
            log.warning("could not start a process for the Python tools ahead of time: %s", e.strerror)
            return
        with self._lock:
            if not self._closed and self._spare is None:
                self._spare = proc
                return
        _discard(proc)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            spare, self._spare = self._spare, None
        if spare is not None:
            _discard(spare)


def _exit_text(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was ended by signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was ended by signal {-returncode}"
    return f"exited with status {returncode}"


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
        raise ToolFailure(f"set_volume: {_echo(repr(value))} is not a number; give 0 to 100") from None
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


def _resolve_callable(spec: ToolSpec, key: str) -> str:
    """Check at load that ``module:function`` imports (each call imports it again, in its own process)."""
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
    return spec.callable


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
    """Runs one call: a built-in in this thread, anything configured in a child process."""

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
        self._proc: subprocess.Popen[bytes] | None = None
        self._proc_lock = threading.Lock()
        self._started_s = time.monotonic()
        self.replied = False

    def unblock(self) -> None:
        with self._proc_lock:
            if self._proc is not None:
                _kill_group(self._proc)

    def run(self) -> None:
        try:
            if isinstance(self._tool, _CommandTool):
                text, is_error = self._run_process(self._tool)
                self._send(text, is_error)
                self._tool.after_call()
            else:
                self._send(*self._run_builtin())
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

    def _run_builtin(self) -> tuple[str, bool]:
        try:
            return self._tool.invoke(self._parameters), False
        except ToolFailure as e:
            return str(e), True
        except Exception as e:
            return f"tool {self._tool.name} failed: {type(e).__name__}: {e}", True

    def _run_process(self, tool: _CommandTool) -> tuple[str, bool]:
        payload = tool.request(self._parameters)
        with self._proc_lock:
            if self.stopping:
                return f"tool {tool.name} was cancelled: the conversation ended", True
            try:
                self._proc = tool.spawn(self._call_id)
            except (OSError, ValueError) as e:  # ValueError: a NUL byte in the environment (the call id)
                return f"tool {tool.name} could not start: {getattr(e, 'strerror', None) or e}", True
        proc = self._proc
        outcome, out, err = self._wait(proc, payload, tool.timeout_s)
        if outcome == "stopped" or (self.stopping and proc.returncode is not None and proc.returncode < 0):
            return f"tool {tool.name} was cancelled: the conversation ended", True
        if outcome == "timeout":
            return f"tool {tool.name} timed out after {tool.timeout_s:g} s", True
        return tool.answer(out, err, proc.returncode if proc.returncode is not None else -signal.SIGKILL)

    def _wait(self, proc: subprocess.Popen[bytes], payload: bytes, timeout_s: float) -> tuple[str, bytes, bytes]:
        """Feed and read the child until it ends: ("done" | "stopped" | "timeout", stdout, stderr).

        Reading waits in slices, not in one call up to the deadline: the output pipes stay open
        as long as any process holding them lives, and one that left the group (setsid) is out
        of reach of the kill. So every slice looks at the stop, the deadline and whether the
        child itself has exited; then the call ends whatever still holds its pipes.
        """
        deadline = time.monotonic() + timeout_s
        data: bytes | None = payload
        exited_s: float | None = None
        out = err = b""
        while True:
            try:
                out, err = proc.communicate(data, timeout=max(0.0, min(_SLICE_S, deadline - time.monotonic())))
                return "done", out, err
            except subprocess.TimeoutExpired as e:  # output so far is kept: retrying loses none
                out, err = e.stdout or b"", e.stderr or b""
            data = None
            now = time.monotonic()
            if self.stopping:
                outcome = "stopped"
            elif now >= deadline:
                outcome = "timeout"
            elif proc.poll() is None:
                continue
            else:  # it exited, yet something it started holds its pipes: one more slice to write, then done
                exited_s = now if exited_s is None else exited_s
                if now - exited_s < _SLICE_S:
                    continue
                outcome = "done"
            self._abandon(proc)
            return outcome, out, err

    def _abandon(self, proc: subprocess.Popen[bytes]) -> None:
        with self._proc_lock:
            _discard(proc)


def _discard(proc: subprocess.Popen[bytes]) -> None:
    """Kill a tool child's group, stop reading its pipes, and reap it (bounded)."""
    _kill_group(proc)
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()
    try:
        proc.wait(_KILL_WAIT_S)
    except subprocess.TimeoutExpired:  # SIGKILL cannot end a process stuck in the kernel
        log.error("tool process %d did not end after SIGKILL; it is left behind", proc.pid)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the child's process group (its pid: start_new_session), i.e. the child and what it started."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        except PermissionError:  # it changed its own group and uid: the child itself at least
            proc.kill()


def _echo(text: str) -> str:
    """Agent-controlled text (a tool name) as it may appear in a result or a log line."""
    if len(text) > MAX_ECHO_CHARS:
        return text[:MAX_ECHO_CHARS] + f"… [{len(text)} characters]"
    return text


class ToolRegistry:
    """The tools this device offers; ``call()`` runs one without blocking the caller."""

    def __init__(self, tools_cfg: ToolsConfig, hooks: DeviceHooks | None = None) -> None:
        self._tools: dict[str, _Tool] = {}
        self.max_concurrent_calls = tools_cfg.max_concurrent_calls
        modules = tuple(dict.fromkeys(spec.callable.partition(":")[0] for spec in tools_cfg.tool if spec.callable))
        self._python = _PythonProcesses(modules)
        if hooks is not None:
            builtins = _builtins(hooks)
            for name in tools_cfg.builtin:
                self._tools[name] = _BuiltinTool(name, tools_cfg.timeout_s, builtins[name])
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
                target = _resolve_callable(spec, f"{key}.callable")
                self._tools[spec.name] = _PythonTool(spec.name, timeout_s, target, self._python)
            else:
                argv = _resolve_command(spec, f"{key}.command")
                self._tools[spec.name] = _CommandTool(spec.name, timeout_s, argv)
        self._lock = threading.Lock()
        self._active: set[_CallWorker] = set()
        self._refused = 0  # calls refused since the last one that ran (one warning per burst)
        self._agent_log = RateLimitedLog(log, 30.0)  # the agent decides how often it calls an unknown tool
        self._mcp_approve = frozenset(tools_cfg.mcp_approve)
        if modules:
            self._python.refill()  # so that even the first call finds its process started

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
        """Start a call; ``reply`` gets exactly one result, from another thread (or at once if refused)."""
        tool = self._tools.get(name)
        if tool is None:
            shown = _echo(name)  # the name is the agent's: a megabyte of it is not echoed back
            offered = ", ".join(self.names) or "none"
            self._agent_log.warning(
                "unknown_tool", "the agent called unknown tool %r; this device offers: %s", shown, offered
            )
            reply(ToolResult(shown, call_id, _clip(f"unknown tool {shown!r}: this device offers {offered}"), True))
            return ToolCallHandle(None)
        worker = _CallWorker(tool, call_id, parameters, reply, self._finished)
        with self._lock:
            running = len(self._active)
            admitted = running < self.max_concurrent_calls
            if admitted:
                self._active.add(worker)
                self._refused = 0
            else:
                self._refused += 1
                first_refusal = self._refused == 1
        if not admitted:
            # Each call runs a thread and maybe a process: past the limit the agent is answered at once.
            (log.warning if first_refusal else log.debug)(
                "tool %s refused: %d calls are already running (tools.max_concurrent_calls = %d)",
                tool.name,
                running,
                self.max_concurrent_calls,
            )
            text = (
                f"tool {tool.name} was not run: the device is already running {running} tool calls, its limit; "
                "try again when one has answered"
            )
            reply(ToolResult(tool.name, call_id, text, True))
            return ToolCallHandle(None)
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
        """Cancel every running call (each child process is killed) and join its thread."""
        self._python.close()
        with self._lock:
            workers = list(self._active)
        for w in workers:  # kill them all first, so the joins below overlap
            with contextlib.suppress(WorkerStuckError):
                w.stop(0)
        for w in workers:
            w.stop(timeout_s)
