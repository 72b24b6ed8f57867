"""The child-process side of a configured Python tool (``[[tools.tool]] callable = "module:function"``).

:mod:`device.tools` runs every call of such a tool in a fresh ``python -I``
process that reads one JSON request on stdin — the daemon's ``sys.path``, the
target and the parameters — calls the function with the parameters as keyword
arguments and writes one JSON answer, ``{"result": str, "is_error": bool}``, on
stdout. The function's own prints go to stderr. Because the call lives in its
own process, a tool that hangs is killed at its timeout or at a stop and can
never hold the daemon; and it never sees the daemon's memory (the API key).

Only the standard library is imported here, so a call starts quickly.
"""

from __future__ import annotations

import importlib
import json
import sys
from typing import Any, TextIO

# Run by ``python -I -c``: -I keeps PYTHONPATH, PYTHONSTARTUP and the user's site out; the request
# brings the daemon's own sys.path, so the child imports exactly what the daemon validated at load.
BOOTSTRAP = (
    "import json, os, sys\n"
    "request = json.loads(sys.stdin.buffer.read())\n"
    "sys.path[:] = request['sys_path']\n"
    "from device.toolhost import serve\n"
    "code = serve(request)\n"
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


def serve(request: dict[str, Any], out: TextIO | None = None) -> int:
    """Answer one request (see the module docstring); the exit status is 0 once an answer is written."""
    answer = out or sys.stdout
    sys.stdout = sys.stderr  # the function's prints must not corrupt the answer
    name = str(request["name"])
    module_name, _, attr = str(request["target"]).partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except Exception as e:  # it imported in the daemon at load; say what changed since
        text, is_error = f"tool {name} could not load {module_name}:{attr}: {type(e).__name__}: {e}", True
    else:
        text, is_error = call(name, fn, dict(request["parameters"]))
    answer.write(json.dumps({"result": text, "is_error": is_error}, ensure_ascii=False))
    answer.flush()
    return 0
