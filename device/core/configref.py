"""The configuration reference (docs/configuration.md), rendered from the config dataclasses.

Each field's help, default, type and bounds live once, in :mod:`device.core.config`; this module turns
them into Markdown so the page cannot drift from what the loader accepts (a test compares the
committed page with :func:`render`). Regenerate with ``python -m device.core.configref > docs/configuration.md``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import typing
from collections.abc import Iterator, Mapping
from typing import Any

from device.core.config import ENV_PREFIX, SECTIONS, _type_name

HEADER = """\
# Configuration reference

<!-- Generated from device/core/config.py by `python -m device.core.configref > docs/configuration.md`;
     tests/unit/core/test_configref.py fails when this page is stale. Edit the dataclasses, not this page. -->

The daemon reads TOML from `/etc/voice-appliance/config.toml` (or `--config FILE`). Every key is
optional except `agent.agent_id`; the defaults below apply to what a file leaves out. Precedence:
defaults < file < environment (`{env}SECTION_KEY=value`, e.g. `{env}AGENT_AGENT_ID`) < command line
(`--set section.key=value`). `voice-appliance run --check --config FILE` checks a file; every error
names the key and the fix and exits with code 78. A commented example: `examples/config.toml`.
Units are in the key names: `_s` seconds, `_ms` milliseconds, `_hz` hertz, `_percent`, `_dbfs`.
The API key is never a config key: it comes from a systemd credential or a root-only file
(`agent.api_key_file`).
"""


def _toml(value: Any) -> str:
    """A default as it would be written in TOML (``none`` for an absent optional value)."""
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return str(value)


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _bounds(meta: Mapping[str, Any]) -> str:
    low, high = meta.get("min"), meta.get("max")
    if low is None and high is None:
        return ""
    if high is None:
        return f"≥ {low}"
    if low is None:
        return f"≤ {high}"
    return f"{low} … {high}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table_rows(cls: type, prefix: str) -> Iterator[str]:
    hints = typing.get_type_hints(cls)
    yield "| key | type | default | range | meaning |"
    yield "|---|---|---|---|---|"
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if _nested(tp) is not None:
            kind, default = f"tables: `[[{prefix}.{f.name}]]` below", "(none)"
        else:
            kind, default = _type_name(tp), _toml(_default(f))
        yield (
            f"| `{f.name}` | {_cell(kind)} | `{_cell(default)}` | {_bounds(f.metadata)} "
            f"| {_cell(f.metadata.get('help', ''))} |"
        )


def _nested(tp: Any) -> type | None:
    """The dataclass of an array-of-tables field (``tuple[LedOutput, ...]``), else None."""
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if args and dataclasses.is_dataclass(args[0]) and isinstance(args[0], type):
            return args[0]
    return None


def _doc(cls: type) -> str:
    return " ".join((cls.__doc__ or "").split())


def render() -> str:
    """The whole reference page as Markdown."""
    out = [HEADER.format(env=ENV_PREFIX)]
    for name, cls in SECTIONS.items():
        out.append(f"## `[{name}]`\n")
        out.append(_doc(cls) + "\n")
        out.extend(_table_rows(cls, name))
        out.append("")
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            inner = _nested(hints[f.name])
            if inner is None:
                continue
            out.append(f"### `[[{name}.{f.name}]]`\n")
            out.append(f"{_doc(inner)} Repeat the table for each one.\n")
            out.extend(_table_rows(inner, f"{name}.{f.name}"))
            out.append("")
    return "\n".join(out)


def main() -> int:
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
