"""``report.json``: its schema (versioned), a validator, and the human summary (pure).

The schema is a JSON Schema (draft 2020-12 subset) kept as data so it can be
printed for docs/bench.md (:func:`schema_table`) and checked without a
third-party validator (:func:`validate`). Times are seconds from the start of
the run (``*_s``), durations in milliseconds (``*_ms``); ``null`` means "not
measured in this run" (e.g. no interruption happened).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from device.core.errors import DeviceError

SCHEMA_VERSION = 3  # 2: card, heard figures (latency_ms and old_audio_ms_after heard on the clocked card);
# 3: wake (the wake word's detections, false wakes, detection delay), outcomes no_wake and max_wait as failures


class ReportError(DeviceError):
    """A report does not match the schema (a bug in the bench: please report it)."""


def _num(desc: str, minimum: float | None = None, nullable: bool = False) -> dict[str, Any]:
    d: dict[str, Any] = {"type": ["number", "null"] if nullable else "number", "description": desc}
    if minimum is not None:
        d["minimum"] = minimum
    return d


def _int(desc: str, nullable: bool = False) -> dict[str, Any]:
    return {"type": ["integer", "null"] if nullable else "integer", "minimum": 0, "description": desc}


def _str(desc: str, nullable: bool = False) -> dict[str, Any]:
    return {"type": ["string", "null"] if nullable else "string", "description": desc}


def _obj(desc: str, props: dict[str, Any], required: Sequence[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "description": desc,
        "properties": props,
        "required": list(props if required is None else required),
        "additionalProperties": False,
    }


def _arr(desc: str, items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "description": desc, "items": items}


def _stats(desc: str) -> dict[str, Any]:
    return _obj(
        desc,
        {
            "count": _int("number of samples"),
            "p50": _num("median", nullable=True),
            "p99": _num("99th percentile", nullable=True),
            "max": _num("largest sample", nullable=True),
        },
    )


SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "voice-appliance bench report",
    **_obj(
        "One bench run: the real daemon against an agent over loopback audio files.",
        {
            "schema_version": {"const": SCHEMA_VERSION, "description": "version of this schema"},
            "tool_version": _str("voice-appliance version that wrote the report"),
            "started_at": _str("wall-clock start of the run, ISO 8601 UTC"),
            "machine": _obj(
                "where it ran",
                {
                    "platform": _str("OS and architecture"),
                    "python": _str("Python version"),
                    "cpus": _int("logical CPUs"),
                },
            ),
            "mode": {
                "enum": ["realtime", "fast"],
                "description": "fast: the emulated agent answers at once (audio is paced to real time either way)",
            },
            "card": {
                "enum": ["clocked", "file"],
                "description": "the sound card: clocked (a private PulseAudio consuming audio in real time; figures "
                               "are what was heard) or file (ALSA type file devices; figures are what was written)",
            },
            "gate_mode": _str("gate.mode of the daemon"),
            "input": _obj(
                "the user audio fed to the microphone",
                {
                    "path": _str("source WAV"),
                    "rate_hz": _int("its sample rate before conversion to 16 kHz mono"),
                    "channels": _int("its channel count before conversion"),
                    "duration_s": _num("its length", 0),
                    "room_noise": _str("--room-noise: the WAV looped under the input and after it"),
                },
                required=["path", "rate_hz", "channels", "duration_s"],
            ),
            "agent": _obj(
                "the agent the daemon talked to",
                {
                    "kind": {"enum": ["emulator", "external"], "description": "built-in emulator or --agent-url"},
                    "url": _str("REST base URL (no credentials)"),
                    "scenario": _str("emulator scenario name or file", nullable=True),
                },
            ),
            "outcome": _obj(
                "how the run ended",
                {
                    "ok": {"type": "boolean", "description": "conversation succeeded and no protocol violation"},
                    "ended_by": _str(
                        "session outcome of the last conversation (normal, agent_ended, local, network, …), "
                        "or no_conversation, no_wake (gate wake_word, nothing pressed: the wake word did not "
                        "start it), false_wake (the wake word started a conversation the user said nothing in), "
                        "max_wait (still going at --max-wait-s: a failure), error"
                    ),
                    "detail": _str("one line saying what happened"),
                    "exit_code": _int("the process exit code"),
                },
            ),
            "duration_s": _num("wall time of the run", 0),
            "conversations": _int("conversations the daemon held"),
            "turns": _arr(
                "agent replies, in order",
                _obj(
                    "one reply",
                    {
                        "index": _int("0 for the first reply (often the agent's greeting)"),
                        "user_speech_end_s": _num(
                            "capture time of the block holding the last speech the agent heard", nullable=True
                        ),
                        "first_agent_audio_received_s": _num("first audio of the reply off the socket", nullable=True),
                        "first_agent_audio_written_s": _num("first sample of the reply written to ALSA", nullable=True),
                        "first_agent_audio_heard_s": _num(
                            "first sample of the reply heard (clocked card; null on the file card)", nullable=True
                        ),
                        "latency_ms": _num(
                            "speech end → first sample heard (clocked card) or written (file card): "
                            "what the user waits",
                            nullable=True,
                        ),
                        "written_latency_ms": _num("speech end → first sample written to ALSA", nullable=True),
                        "device_share_ms": _num(
                            "the device's part of latency_ms: last speech block capture → wire, "
                            "plus reply received → first sample written",
                            nullable=True,
                        ),
                        "interrupted": {"type": "boolean", "description": "the reply was cut short"},
                        "user_text": _str("what the agent heard (transcript)", nullable=True),
                        "agent_text": _str("what the agent said", nullable=True),
                    },
                ),
            ),
            "interruptions": _arr(
                "each time a reply was stopped",
                _obj(
                    "one interruption",
                    {
                        "at_s": _num("when it arrived (agent event) or was pressed (local barge-in)"),
                        "source": {"enum": ["agent", "local"], "description": "agent `interruption` or button"},
                        "event_id": _int("event id of the interruption", nullable=True),
                        "old_audio_ms_after": _num(
                            "ms of the old reply heard (clocked card) or written to ALSA (file card) after it "
                            "(bound: one 62.5 ms chunk)",
                            nullable=True,
                        ),
                        "old_audio_written_ms_after": _num(
                            "ms of the old reply written to ALSA after it (a real card drops what it still held)",
                            nullable=True,
                        ),
                    },
                ),
            ),
            "press_to_first_frame_sent_ms": _arr(
                "per conversation started by a press: press → first audio frame on the wire",
                {"type": "number", "minimum": 0},
            ),
            "block_capture_to_wire_ms": _stats("per sent block: captured → on the wire"),
            "reply_received_to_written_ms": _stats("per reply: first audio received → first sample written"),
            "xruns": _obj(
                "ALSA errors recovered",
                {"capture_overruns": _int("capture overruns"), "playback_underruns": _int("playback underruns")},
            ),
            "ping_ms": _stats("the agent's round-trip estimates from ping events"),
            "cpu_s": _obj(
                "CPU time while the daemon ran (from its start to its stop)",
                {
                    "process": _num("user + system seconds of the whole process (with a built-in emulator)", 0),
                    "device": _num("user + system seconds of the daemon's own threads", 0, nullable=True),
                    "per_conversation_minute": _num(
                        "device CPU s per minute of conversation (null under 5 s of conversation)", 0, nullable=True
                    ),
                },
            ),
            "peak_rss_mb": _num("peak resident memory of the bench process", 0),
            "protocol_violations": _arr(
                "client messages the emulator rejected (always empty for an external agent)",
                _obj(
                    "one violation",
                    {
                        "conversation_id": _str("conversation", nullable=True),
                        "rule": _str("rule"),
                        "detail": _str("what was wrong"),
                    },
                ),
            ),
            "tool_calls": _arr(
                "client tools the agent called",
                _obj(
                    "one call",
                    {
                        "at_s": _num("when it finished"),
                        "name": _str("tool"),
                        "is_error": {"type": "boolean", "description": "it failed"},
                    },
                ),
            ),
            "transcript": _arr(
                "what was said",
                _obj(
                    "one line",
                    {
                        "at_s": _num("when"),
                        "role": {"enum": ["user", "agent"], "description": "who spoke"},
                        "text": _str("text"),
                        "cut": {"type": "boolean", "description": "an agent reply cut short: the part actually said"},
                    },
                ),
            ),
            "wake": {
                **_obj(
                    "the wake word (gate wake_word; null otherwise)",
                    {
                        "detections": _arr(
                            "each wake word the detector heard",
                            _obj(
                                "one detection",
                                {
                                    "at_s": _num("where the word ended (capture time)"),
                                    "score": _num("the engine's score", 0),
                                    "model": _str("wake model"),
                                    "started_conversation": {
                                        "type": "boolean", "description": "it started a conversation",
                                    },
                                },
                            ),
                        ),
                        "started_by_wake": {
                            "type": "boolean", "description": "the first conversation was started by the wake word",
                        },
                        "false_wakes": _int("conversations the wake word started in which the user said nothing"),
                        "word_end_s": _num(
                            "end of the first speech in the input (its level), where the wake word ends", nullable=True
                        ),
                        "detection_delay_ms": _num("word_end_s → the first detection after it", nullable=True),
                    },
                ),
                "type": ["object", "null"],
            },
            "artefacts": _obj(
                "files written next to report.json (names relative to it)",
                {
                    "agent_audio_wav": _str(
                        "agent audio as heard (clocked card: the speaker's monitor from the start of the run) or as "
                        "written (file card)", nullable=True
                    ),
                    "user_audio_wav": _str("user audio the agent received", nullable=True),
                    "timeline_svg": _str("timeline picture"),
                    "timeline_png": _str("timeline picture as PNG (when rsvg-convert is installed)", nullable=True),
                },
            ),
        },
    ),
}


# -- validation -----------------------------------------------------------------

_TYPES: dict[str, Any] = {
    "object": Mapping,
    "array": (list, tuple),
    "string": str,
    "boolean": bool,
    "null": type(None),
}


def _is_type(value: Any, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, _TYPES[name])


def _check(value: Any, schema: Mapping[str, Any], where: str, errors: list[str]) -> None:
    if "const" in schema and value != schema["const"]:
        errors.append(f"{where}: must be {schema['const']!r}, got {value!r}")
        return
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: must be one of {schema['enum']}, got {value!r}")
        return
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else list(types)
        if not any(_is_type(value, n) for n in names):
            errors.append(f"{where}: expected {' or '.join(names)}, got {type(value).__name__} {value!r:.40}")
            return
    if "minimum" in schema and _is_type(value, "number") and value < schema["minimum"]:
        errors.append(f"{where}: {value} is below the minimum {schema['minimum']}")
    if isinstance(value, Mapping):
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{where}.{key}: missing")
        for key, item in value.items():
            if key in props:
                _check(item, props[key], f"{where}.{key}", errors)
            elif schema.get("additionalProperties") is False:
                errors.append(f"{where}.{key}: unknown field")
    elif isinstance(value, (list, tuple)) and "items" in schema:
        for i, item in enumerate(value):
            _check(item, schema["items"], f"{where}[{i}]", errors)


def validate(doc: Any) -> list[str]:
    """Every way ``doc`` differs from :data:`SCHEMA` (empty when it is valid)."""
    errors: list[str] = []
    _check(doc, SCHEMA, "report", errors)
    return errors


def check(doc: Any) -> None:
    """Raise :class:`ReportError` listing the problems when ``doc`` is not a valid report."""
    errors = validate(doc)
    if errors:
        raise ReportError("invalid bench report: " + "; ".join(errors[:10]))


def write(doc: Mapping[str, Any], path: Path) -> None:
    """Validate, then write ``report.json``."""
    check(doc)
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def load(path: Path) -> dict[str, Any]:
    """Read and validate a report; a clear error for other versions."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ReportError(f"cannot read report {path}: {e}") from None
    if isinstance(doc, dict) and doc.get("schema_version") != SCHEMA_VERSION:
        raise ReportError(
            f"{path} has schema_version {doc.get('schema_version')!r}; this version reads {SCHEMA_VERSION}"
        )
    check(doc)
    return dict(doc)


def schema_table(schema: Mapping[str, Any] = SCHEMA, prefix: str = "") -> list[tuple[str, str, str]]:
    """(field, type, description) rows for documentation, depth first."""
    rows: list[tuple[str, str, str]] = []
    for key, sub in schema.get("properties", {}).items():
        name = f"{prefix}{key}"
        if "const" in sub:
            tname = f"= {sub['const']}"
        elif "enum" in sub:
            tname = " | ".join(json.dumps(e) for e in sub["enum"])
        else:
            t = sub.get("type", "any")
            tname = " | ".join(t) if isinstance(t, list) else t
        rows.append((name, tname, sub.get("description", "")))
        if sub.get("type") == "object":
            rows.extend(schema_table(sub, name + "."))
        elif sub.get("type") == "array" and sub.get("items", {}).get("type") == "object":
            rows.extend(schema_table(sub["items"], name + "[]."))
    return rows


# -- statistics and the summary -------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[min(rank, len(ordered)) - 1])


def stats(values: Sequence[float]) -> dict[str, Any]:
    """The ``{count, p50, p99, max}`` object of the schema (ms rounded to 0.1)."""

    def r(v: float | None) -> float | None:
        return None if v is None else round(v, 1)

    return {
        "count": len(values),
        "p50": r(percentile(values, 50)),
        "p99": r(percentile(values, 99)),
        "max": r(max(values) if values else None),
    }


def _ms(v: Any) -> str:
    return "—" if v is None else f"{v:.0f} ms"


def summary(doc: Mapping[str, Any]) -> str:
    """The human-readable summary printed at the end of a run."""
    out = doc["outcome"]
    lines = [
        f"{'PASS' if out['ok'] else 'FAIL'}: {out['detail']} (ended by {out['ended_by']}, "
        f"{doc['duration_s']:.1f} s, {doc['mode']}, gate {doc['gate_mode']}, {doc['card']} card)",
    ]
    how = "heard" if doc["card"] == "clocked" else "written"
    lines.append(f"agent: {doc['agent']['kind']} {doc['agent']['url']}"
                 + (f" scenario {doc['agent']['scenario']}" if doc["agent"]["scenario"] else ""))
    if doc["transcript"]:
        lines.append("transcript:")
        for t in doc["transcript"]:
            lines.append(f"  {t['at_s']:6.1f} s  {t['role']:>5}: {t['text']}" + (" …" if t["cut"] else ""))
    if doc["turns"]:
        clocked = doc["card"] == "clocked"
        lines.append("turns:            " + ("latency (heard)   " if clocked else "")
                     + "latency (written)   device share   interrupted")
        for t in doc["turns"]:
            lines.append(
                f"  reply {t['index']:<3}    "
                + (f"{_ms(t['latency_ms']):>15}   " if clocked else "")
                + f"{_ms(t['written_latency_ms']):>17}   {_ms(t['device_share_ms']):>12}"
                f"   {'yes' if t['interrupted'] else 'no'}"
            )
    for i in doc["interruptions"]:
        lines.append(
            f"interruption ({i['source']}) at {i['at_s']:.2f} s: "
            f"{_ms(i['old_audio_ms_after'])} of the old reply {how} after it (bound 62 ms)"
            + (f"; {_ms(i['old_audio_written_ms_after'])} written" if doc["card"] == "clocked" else "")
        )
    press = doc["press_to_first_frame_sent_ms"]
    if press:
        lines.append("press → first frame sent: " + ", ".join(f"{v:.0f} ms" for v in press))
    b = doc["block_capture_to_wire_ms"]
    lines.append(f"block captured → wire: p50 {_ms(b['p50'])}, p99 {_ms(b['p99'])} ({b['count']} blocks)")
    p = doc["ping_ms"]
    lines.append(f"ping: p50 {_ms(p['p50'])} ({p['count']} pings)")
    x = doc["xruns"]
    lines.append(f"xruns: {x['capture_overruns']} capture overruns, {x['playback_underruns']} playback underruns")
    cpu = doc["cpu_s"]
    per_min = cpu["per_conversation_minute"]
    device = cpu["device"]
    lines.append(
        f"CPU: {cpu['process']:.2f} s process"
        + (f", {device:.2f} s device threads" if device is not None else "")
        + (f", {per_min:.2f} s per conversation minute" if per_min is not None else "")
        + f"; peak RSS {doc['peak_rss_mb']:.1f} MB"
    )
    if doc["tool_calls"]:
        lines.append(
            "tools: " + ", ".join(f"{c['name']}{' (error)' if c['is_error'] else ''}" for c in doc["tool_calls"])
        )
    wake = doc["wake"]
    if wake is not None:
        dets = ", ".join(f"{d['at_s']:.2f} s ({d['score']:.2f})" for d in wake["detections"]) or "none"
        delay = wake["detection_delay_ms"]
        lines.append(f"wake word: detections {dets}; false wakes {wake['false_wakes']}"
                     + (f"; {delay:.0f} ms after the word ended" if delay is not None else ""))
    v = doc["protocol_violations"]
    lines.append(f"protocol violations: {len(v)}")
    lines.extend(f"  {x['rule']}: {x['detail']}" for x in v)
    return "\n".join(lines)
