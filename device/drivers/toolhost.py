"""The child-process side of a configured Python tool (``[[tools.tool]] callable = "module:function"``).

:mod:`device.drivers.tools` runs every call of such a tool in a ``python -I`` process
of its own (one is started ahead and waits, so a call does not wait for Python
to start): the process reads the request on stdin — the target and the
parameters — calls the function with the parameters as keyword arguments and
writes one JSON answer, ``{"result": str, "is_error": bool}``, on stdout. The
function's own prints go to stderr. Because the call lives in its own process,
a tool that hangs is killed at its timeout or at a stop and can never hold the
daemon; and it never sees the daemon's memory (the API key).

Only the standard library is imported here, so a call starts quickly.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import sys
from typing import Any, BinaryIO

# Run by ``python -I -c``: -I keeps PYTHONPATH, PYTHONSTARTUP and the user's site out. The first
# line on stdin brings the daemon's own sys.path (so the child imports exactly what the daemon
# validated at load) and the tools' modules to import ahead; the rest, up to end-of-file, is the
# request. A child that gets end-of-file instead (its daemon went away) exits at once.
BOOTSTRAP = (
    "import json, os, sys\n"
    "header = json.loads(sys.stdin.buffer.readline() or 'null')\n"
    "if header is None:\n"
    "    os._exit(0)\n"
    "sys.path[:] = header['sys_path']\n"
    "from device.drivers.toolhost import main\n"
    "code = main(header['preload'])\n"
    "sys.stderr.flush()\n"
    "os._exit(code)\n"  # answered: threads the function left behind must not keep the call open
)


class ToolFailure(Exception):
    """A tool ran and failed; the message is what the agent is told (raise it from a tool)."""


def result_text(value: Any) -> str:
    """What the agent is told for a tool's return value (None: ok; str as is; else JSON)."""
    if value is None:
        return "ok"
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(value)


def call(name: str, fn: Any, parameters: dict[str, Any]) -> tuple[str, bool]:
    """Call ``fn(**parameters)``: (result text, is_error); exceptions become error texts."""
    try:
        return result_text(fn(**parameters)), False
    except ToolFailure as e:
        return str(e), True
    except TypeError as e:  # usually parameters that do not fit the signature
        return f"tool {name} rejected the parameters: {e}", True
    except Exception as e:
        return f"tool {name} failed: {type(e).__name__}: {e}", True


def answer(request: dict[str, Any]) -> tuple[str, bool]:
    """Run one request: (result text, is_error)."""
    name = str(request["name"])
    module_name, _, attr = str(request["target"]).partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except Exception as e:  # it imported in the daemon at load; say what changed since
        return f"tool {name} could not load {module_name}:{attr}: {type(e).__name__}: {e}", True
    return call(name, fn, dict(request["parameters"]))


def main(preload: list[str], stdin: BinaryIO | None = None, stdout: BinaryIO | None = None) -> int:
    """Import ``preload``, wait for the request on stdin, write the answer on stdout; the exit status."""
    out = stdout or sys.stdout.buffer  # bytes: UTF-8 whatever the locale says
    sys.stdout = sys.stderr  # the function's prints (and the modules') must not corrupt the answer
    for module in preload:  # ahead of the request, while the process waits as a spare
        with contextlib.suppress(Exception):  # reported by answer(), if a call needs it
            importlib.import_module(module)
    raw = (stdin or sys.stdin.buffer).read()
    if not raw.strip():  # a spare that was never used
        return 0
    text, is_error = answer(json.loads(raw))
    out.write(json.dumps({"result": text, "is_error": is_error}, ensure_ascii=False).encode("utf-8"))
    out.flush()
    return 0
