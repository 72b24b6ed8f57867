"""The daemon's status for people and fleets: a JSON file, a Prometheus textfile, a STATUS= line.

Pure formatting plus atomic file writes (write a temporary file in the same
directory, then rename), so a reader never sees half a file. A path that
cannot be written is reported once and skipped: monitoring never stops the kiosk.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from device import __version__
from device.core.display import STARTING, STATES, STOPPED

log = logging.getLogger(__name__)

STATUS_SCHEMA_VERSION = 1

# name -> (prometheus type, help). Counters only grow while the service runs.
METRICS: Mapping[str, tuple[str, str]] = {
    "conversations": ("counter", "Conversations that connected."),
    "errors": ("counter", "Failures shown to the user (connection, session, audio)."),
    "xruns": ("counter", "Audio overruns (microphone) plus underruns (speaker)."),
    "capture_overruns": ("counter", "Microphone overruns."),
    "playback_underruns": ("counter", "Speaker underruns inside a reply."),
    "barge_ins": ("counter", "Replies cut off by a press, the wake word or the user's voice."),
    "false_barge_ins": ("counter", "Voice barge-ins after which the service heard no words (cut off for nothing)."),
    "wake_detections": ("counter", "Wake words heard (gate.mode = wake_word), barge-ins included."),
    "false_wakes": ("counter", "Conversations a wake word started in which the user then said nothing."),
    "interruptions": ("counter", "Replies the agent service interrupted."),
    "blocks_sent": ("counter", "250 ms audio blocks sent to the agent (zeros included)."),
    "blocks_open": ("counter", "Blocks that carried microphone audio."),
    "dropped_events": ("counter", "Controller events dropped because its queue was full."),
    "agent_text_parts": ("counter", "Streamed text parts of agent replies (agent_chat_response_part)."),
    "rich_content": ("counter", "Rich content (cards) the agent sent; this kiosk has no screen for them."),
    "mcp_approved": ("counter", "MCP tool calls approved (listed in tools.mcp_approve)."),
    "mcp_denied": ("counter", "MCP tool calls denied (not listed in tools.mcp_approve)."),
    "audio_dropped_s": ("counter", "Seconds of the user's speech that never reached the agent (no connection)."),
    "ping_ms": ("gauge", "Last round-trip estimate the agent service reported, in ms."),
    "echo_reduction_db": ("gauge", "How much echo cancellation takes off the speaker's echo (median dB; 0: off)."),
    "echo_delay_ms": ("gauge", "The echo's delay after what ALSA reports (room, microphone buffering, sound server)."),
    "uptime_s": ("gauge", "Seconds since the daemon started."),
}


@dataclass(frozen=True)
class Status:
    """A snapshot of the daemon."""

    state: str = "idle"
    muted: bool = False
    conversation_id: str = ""
    last_error: str = ""
    state_for_s: float = 0.0
    gate_mode: str = ""
    counters: Mapping[str, float] = field(default_factory=dict)

    def to_dict(self, now_epoch_s: float | None = None) -> dict[str, object]:
        now = time.time() if now_epoch_s is None else now_epoch_s
        return {
            "version": STATUS_SCHEMA_VERSION,
            "firmware": __version__,
            "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
            "pid": os.getpid(),
            "state": self.state,
            "state_for_s": round(self.state_for_s, 1),
            "muted": self.muted,
            "gate_mode": self.gate_mode,
            "conversation_id": self.conversation_id,
            "last_error": self.last_error,
            "counters": {k: self.counters.get(k, 0) for k in METRICS},
        }


def status_line(st: Status) -> str:
    """The human line for systemd's STATUS= (``systemctl status`` shows it)."""
    parts = [st.state + (" (muted)" if st.muted and st.state != "muted" else "")]
    if st.conversation_id:
        parts.append(f"conversation {st.conversation_id}")
    ping = st.counters.get("ping_ms")
    if ping:
        parts.append(f"ping {ping:g} ms")
    parts.append(f"{st.counters.get('conversations', 0):g} conversations")
    if st.last_error:
        parts.append(f"last error: {st.last_error}")
    return ", ".join(parts)


def to_json(st: Status, now_epoch_s: float | None = None) -> str:
    return json.dumps(st.to_dict(now_epoch_s), indent=2) + "\n"


def prometheus_value(value: float) -> str:
    """A sample value written exactly: integers as integers, floats by repr (never rounded like ``:g``)."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def to_prometheus(st: Status, prefix: str = "voice_appliance", *, running: bool = True) -> str:
    """Node-exporter textfile collector format; ``running=False`` is the file a clean stop leaves.

    A stopped daemon shows ``{prefix}_up 0`` and ``{prefix}_state{state="stopped"} 1`` (every
    other state 0), with the counters as they were at the stop.
    """
    state = st.state if running else STOPPED
    lines = [
        f"# HELP {prefix}_up 1 while the daemon runs, 0 after a clean stop.",
        f"# TYPE {prefix}_up gauge",
        f"{prefix}_up {int(running)}",
        f"# HELP {prefix}_state The daemon's state (1 for the current one).",
        f"# TYPE {prefix}_state gauge",
    ]
    lines += [f'{prefix}_state{{state="{s}"}} {int(s == state)}' for s in (STARTING, *STATES, STOPPED)]
    lines += [
        f"# HELP {prefix}_muted 1 while the microphone is muted.",
        f"# TYPE {prefix}_muted gauge",
        f"{prefix}_muted {int(st.muted and running)}",
    ]
    for name, (kind, help_text) in METRICS.items():
        metric = f"{prefix}_{name}_total" if kind == "counter" else f"{prefix}_{name}"
        lines += [
            f"# HELP {metric} {help_text}",
            f"# TYPE {metric} {kind}",
            f"{metric} {prometheus_value(st.counters.get(name, 0))}",
        ]
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str, mode: int = 0o644) -> tuple[int, int]:
    """Replace ``path`` with ``text`` in one rename (readers see old or new, never half).

    Returns the new file's (st_dev, st_ino), so its writer can tell later whether it is still its file.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            made = os.fstat(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return made.st_dev, made.st_ino


class StatusFiles:
    """Writes the status JSON and the optional Prometheus textfile; never raises."""

    def __init__(self, status_file: str, prometheus_textfile: str = "") -> None:
        self.status_path = Path(status_file) if status_file else None
        self.prometheus_path = Path(prometheus_textfile) if prometheus_textfile else None
        self._failed: set[Path] = set()
        self._written: dict[Path, tuple[int, int]] = {}  # (st_dev, st_ino) of the file each path got last
        self._last: Status | None = None
        self.writes = 0

    def write(self, st: Status) -> None:
        self._last = st
        if self.status_path is not None:
            self._write(self.status_path, to_json(st), create_dir=True)
        if self.prometheus_path is not None:
            self._write(self.prometheus_path, to_prometheus(st), create_dir=False)

    def _write(self, path: Path, text: str, create_dir: bool) -> None:
        try:
            if create_dir:
                path.parent.mkdir(parents=True, exist_ok=True)
            self._written[path] = write_atomic(path, text)
            self.writes += 1
            self._failed.discard(path)
        except OSError as e:
            if path not in self._failed:
                self._failed.add(path)
                log.warning(
                    "cannot write %s (%s); check that the directory exists and the service may write it "
                    "(the unit's RuntimeDirectory= creates /run/voice-appliance)",
                    path,
                    e.strerror or e,
                )

    def remove(self) -> None:
        """On a clean stop: remove the status file and leave the textfile saying "stopped".

        A stale file would claim we still run. The Prometheus textfile is
        rewritten rather than removed, so a fleet dashboard sees
        ``voice_appliance_up 0`` and ``state="stopped"`` (and the last counters)
        instead of the kiosk's series vanishing or staying at its last state.
        A file another process has put in the place of ours since our last
        write is its, not ours: it is left alone.
        """
        if self.status_path is not None and self._still_ours(self.status_path):
            with contextlib.suppress(OSError):
                self.status_path.unlink()
        if self.prometheus_path is not None and self._still_ours(self.prometheus_path):
            self._write(self.prometheus_path, to_prometheus(self._last or Status(), running=False), create_dir=False)

    def _still_ours(self, path: Path) -> bool:
        """True unless our last write of ``path`` was replaced by another's (never written: nothing to compare)."""
        made = self._written.get(path)
        if made is None:
            return True
        try:
            now = os.lstat(path)
        except OSError:
            return True  # gone: removing is a no-op, rewriting the textfile says we stopped
        if (now.st_dev, now.st_ino) == made:
            return True
        log.info("%s is no longer the file this daemon wrote; leaving it", path)
        return False
