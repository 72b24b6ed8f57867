"""From telemetry (and the emulator's turn records) to the figures of report.json (pure).

All inputs are plain data: telemetry events with ``t_s``/``kind``/``data``
(device/app/telemetry.py) and, when the agent is the built-in emulator, its turn
records as mappings (device/emulator/recording.py ``TurnRecord`` fields).
Times in the output are seconds from ``t0_s``; durations are milliseconds.

Definitions (also in docs/bench.md, ``report.json``):

- user speech end: capture time of the block that carried the last voiced
  audio the agent heard (the emulator knows when that audio arrived; the
  block sent just before is the one). Without the emulator: the last open,
  loud block before the reply.
- latency: user speech end → first sample of the reply written to ALSA.
- device share: that block's capture → wire, plus the reply's first audio
  received → first sample written. The rest is network and agent.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from device.bench.report import stats

# Session outcomes that are a normal end of a conversation (the rest are failures).
OK_OUTCOMES = frozenset({"normal", "agent_ended", "local", "max_duration", "idle_timeout", "unfinished"})
SPEECH_DBFS = -45.0  # a gate block louder than this counts as speech (no-emulator fallback)
FLUSH_PAIR_S = 1.0  # a flush this soon after an interruption belongs to it


class Event(Protocol):
    """What the bench reads of a telemetry record (device.app.telemetry.Telemetry fits)."""

    @property
    def t_s(self) -> float: ...
    @property
    def kind(self) -> str: ...
    @property
    def data(self) -> Mapping[str, Any]: ...


def _get(data: Mapping[str, Any], *names: str, default: Any = None) -> Any:
    for n in names:
        if n in data and data[n] is not None:
            return data[n]
    return default


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _r(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def outcome_name(value: Any) -> str:
    """``Outcome.AGENT_ENDED`` / ``"AGENT_ENDED"`` / ``"agent_ended"`` → ``"agent_ended"``."""
    name = getattr(value, "name", None) or getattr(value, "value", None) or value
    return str(name).lower()


@dataclass
class Figures:
    """Everything report.json derives from telemetry."""

    turns: list[dict[str, Any]] = field(default_factory=list)
    interruptions: list[dict[str, Any]] = field(default_factory=list)
    press_to_first_frame_sent_ms: list[float] = field(default_factory=list)
    block_capture_to_wire_ms: dict[str, Any] = field(default_factory=lambda: stats([]))
    reply_received_to_written_ms: dict[str, Any] = field(default_factory=lambda: stats([]))
    xruns: dict[str, int] = field(default_factory=lambda: {"capture_overruns": 0, "playback_underruns": 0})
    ping_ms: dict[str, Any] = field(default_factory=lambda: stats([]))
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    transcript: list[dict[str, Any]] = field(default_factory=list)
    conversations: int = 0
    session_outcomes: list[str] = field(default_factory=list)
    session_details: list[str] = field(default_factory=list)
    conversation_s: float = 0.0
    replies_played: int = 0


def _times(events: Sequence[Event], kind: str) -> list[Event]:
    return [e for e in events if e.kind == kind]


def _first_at_or_after(events: Sequence[Event], t_s: float, before_s: float | None = None) -> Event | None:
    keys = [e.t_s for e in events]
    i = bisect.bisect_left(keys, t_s)
    if i < len(events) and (before_s is None or events[i].t_s < before_s):
        return events[i]
    return None


CONVERSATION_STATES = frozenset({"connecting", "listening", "thinking", "speaking", "ending"})


def machine_state(data: Mapping[str, Any]) -> str:
    """The controller's own state (the displayed one says "muted" during a muted conversation)."""
    return str(_get(data, "machine_state", "state", "to", "new", default=""))
# How a conversation ended when the session itself reported nothing: the cause of the
# controller's move out of the conversation (device/core/machine.py Kind values).
END_CAUSES = {
    "timeout": "idle_timeout",
    "long_press": "local",
    "stop": "local",
    "shutdown": "local",
    "max_duration": "max_duration",
    "ended": "normal",
    "failed": "failed",
}


@dataclass(frozen=True)
class Span:
    """One conversation: from entering connecting to leaving the conversation states."""

    start_s: float
    end_s: float | None
    outcome: str
    detail: str


def conversation_spans(events: Sequence[Event]) -> list[Span]:
    """Every conversation, with how it ended (the session's word for it when it gave one)."""
    spans: list[Span] = []
    open_at: float | None = None
    ended: Event | None = None  # the session's own report, when it came
    for e in events:
        if e.kind == "session_end" and open_at is not None and ended is None:
            ended = e
        if e.kind != "state":
            continue
        state = machine_state(e.data)
        if open_at is None and state in CONVERSATION_STATES:
            open_at, ended = e.t_s, None
        elif open_at is not None and state not in CONVERSATION_STATES:
            if ended is not None:
                outcome = outcome_name(_get(ended.data, "outcome", default="unknown"))
                detail = str(_get(ended.data, "detail", default=""))
            else:
                cause = str(_get(e.data, "cause", default=""))
                outcome = END_CAUSES.get(cause, cause or "unknown")
                detail = f"the device ended it ({cause})" if cause else ""
            spans.append(Span(open_at, e.t_s, outcome, detail))
            open_at, ended = None, None
    if open_at is not None:
        spans.append(Span(open_at, None, "unfinished", "still going when the run ended"))
    return spans


# Monotonic time → seconds from the start of the run (rounded); None stays None.
Rel = Callable[[float | None], float | None]


def _relative_to(t0_s: float) -> Rel:
    """The run's clock: seconds from ``t0_s``."""

    def rel(t: float | None) -> float | None:
        return None if t is None else round(t - t0_s, 4)

    return rel


def analyse(
    events: Iterable[Event],
    *,
    t0_s: float,
    agent_turns: Sequence[Mapping[str, Any]] | None = None,
    end_s: float | None = None,
) -> Figures:
    """Compute the report's figures; ``agent_turns`` come from the emulator when it was used."""
    evs = sorted(events, key=lambda e: e.t_s)
    end = end_s if end_s is not None else (evs[-1].t_s if evs else t0_s)
    fig = Figures()
    rel = _relative_to(t0_s)

    conv = conversation_spans(evs)
    fig.conversations = len(conv)
    fig.conversation_s = sum((c.end_s if c.end_s is not None else end) - c.start_s for c in conv)
    fig.session_outcomes = [c.outcome for c in conv]
    fig.session_details = [c.detail for c in conv]

    uplink = _uplink(evs, conv)
    fig.block_capture_to_wire_ms = stats(uplink.wire_ms)
    fig.press_to_first_frame_sent_ms = _press_to_first_frame_sent_ms(evs, uplink.sent)

    replies = _Replies(audio=_times(evs, "agent_audio"), started=_times(evs, "reply_started"),
                       interruptions=_times(evs, "interruption"))
    if agent_turns is not None:
        fig.turns, received_to_written = _turns_from_agent(agent_turns, replies, uplink, rel)
    else:
        fig.turns, received_to_written = _turns_from_telemetry(evs, replies, uplink, end, rel)
    fig.reply_received_to_written_ms = stats(received_to_written)
    fig.replies_played = sum(1 for t in fig.turns if t["first_agent_audio_written_s"] is not None)

    fig.interruptions = _interruptions(replies.interruptions, _times(evs, "flushed"), rel)
    fig.xruns = _xruns(evs)
    fig.ping_ms = stats([v for e in _times(evs, "ping") if (v := _num(_get(e.data, "ping_ms"))) is not None])
    fig.tool_calls = _tool_calls(evs, rel)
    fig.transcript = _transcript(evs, rel)
    return fig


@dataclass(frozen=True)
class _Uplink:
    """The microphone blocks sent to the agent, and when each was captured."""

    sent: list[Event]
    sent_delay: list[tuple[float, float, float]]  # (sent t, captured t, delay ms)
    wire_ms: list[float]  # capture → wire, without blocks held while a socket opened

    def block_before(self, arrival_s: float) -> tuple[float, float, float] | None:
        """The last block sent at or before ``arrival_s`` (sent t, captured t, delay ms)."""
        i = bisect.bisect_right([s[0] for s in self.sent_delay], arrival_s)
        return self.sent_delay[i - 1] if i > 0 else None


def _uplink(evs: Sequence[Event], conv: Sequence[Span]) -> _Uplink:
    """The blocks sent, their capture → wire delays, and those that measure the path."""
    sent = _times(evs, "block_sent")
    first_sent_per_conv: list[float] = []
    for c in conv:
        first = _first_at_or_after(sent, c.start_s, c.end_s)
        if first is not None:
            first_sent_per_conv.append(first.t_s)
    wire_ms: list[float] = []
    sent_delay: list[tuple[float, float, float]] = []
    for e in sent:
        captured = _num(_get(e.data, "captured_at_s"))
        if captured is None:
            continue
        sent_delay.append((e.t_s, captured, 1000 * (e.t_s - captured)))
        # Blocks held while the socket opened would measure the connection, not the path.
        held = any(captured < f <= e.t_s for f in first_sent_per_conv)
        if not held:
            wire_ms.append(1000 * (e.t_s - captured))
    return _Uplink(sent, sent_delay, wire_ms)


def _press_to_first_frame_sent_ms(evs: Sequence[Event], sent: Sequence[Event]) -> list[float]:
    """For each press that starts a conversation (from idle or error): press → first block sent."""
    out: list[float] = []
    state = "idle"
    for e in evs:
        if e.kind == "state":
            state = str(_get(e.data, "state", "to", "new", default=state))
        elif (
            e.kind == "button"
            and str(_get(e.data, "action", "kind", "event", default="")) == "press"
            and state in ("idle", "error")
        ):
            first = _first_at_or_after(sent, e.t_s)
            if first is not None:
                out.append(round(1000 * (first.t_s - e.t_s), 1))
    return out


@dataclass(frozen=True)
class _Replies:
    """The downlink telemetry replies are found in."""

    audio: list[Event]  # agent_audio: a chunk received
    started: list[Event]  # reply_started: its first sample written
    interruptions: list[Event]


def _turns_from_agent(
    agent_turns: Sequence[Mapping[str, Any]], replies: _Replies, uplink: _Uplink, rel: Rel
) -> tuple[list[dict[str, Any]], list[float]]:
    """Turns anchored on the emulator's records: (turns, received → written ms)."""
    turns: list[dict[str, Any]] = []
    received_to_written: list[float] = []
    anchors = [
        t for t in agent_turns if _num(t.get("reply_first_audio_sent_t_s")) is not None
    ]
    anchors.sort(key=lambda t: float(t["reply_first_audio_sent_t_s"]))
    for i, t in enumerate(anchors):
        sent_at = float(t["reply_first_audio_sent_t_s"])
        nxt = float(anchors[i + 1]["reply_first_audio_sent_t_s"]) if i + 1 < len(anchors) else None
        rx = _first_at_or_after(replies.audio, sent_at, nxt)
        wr = _first_at_or_after(replies.started, rx.t_s, nxt) if rx is not None else None
        speech_end = _num(t.get("speech_end_t_s"))
        user_end: float | None = None
        uplink_ms: float | None = None
        if speech_end is not None:
            blk = uplink.block_before(speech_end)
            if blk is not None:
                user_end, uplink_ms = blk[1], blk[2]
            else:
                user_end = speech_end
        turns.append(
            _turn(len(turns), user_end, rx, wr, uplink_ms, bool(t.get("interrupted")),
                  t.get("user_transcript"), t.get("reply_text") or None, rel)
        )
        if rx is not None and wr is not None:
            received_to_written.append(1000 * (wr.t_s - rx.t_s))
    return turns, received_to_written


def _turns_from_telemetry(
    evs: Sequence[Event], replies: _Replies, uplink: _Uplink, end: float, rel: Rel
) -> tuple[list[dict[str, Any]], list[float]]:
    """Turns found without the agent's records: (turns, received → written ms)."""
    turns: list[dict[str, Any]] = []
    received_to_written: list[float] = []
    transcripts = [e for e in _times(evs, "transcript") if not _get(e.data, "tentative", default=False)]
    gates = [e for e in _times(evs, "gate") if _get(e.data, "open")
             and (_num(_get(e.data, "level_dbfs")) or -120.0) > SPEECH_DBFS]
    reply_starts = _reply_starts(replies)
    for i, start in enumerate(reply_starts):
        next_s = reply_starts[i + 1].t_s if i + 1 < len(reply_starts) else None
        prev = reply_starts[i - 1].t_s if i > 0 else float("-inf")
        rx = start
        wr = _first_at_or_after(replies.started, rx.t_s, next_s)
        loud = [g for g in gates if prev < g.t_s <= rx.t_s]
        user_end = uplink_ms = None
        if loud:
            user_end = loud[-1].t_s
            blk = next((s for s in uplink.sent_delay if s[1] >= user_end - 1e-6), None)
            uplink_ms = blk[2] if blk is not None else None
        until = next_s if next_s is not None else end + 1
        cut = any(rx.t_s <= x.t_s < until for x in replies.interruptions)
        said = [e for e in transcripts if prev < e.t_s <= rx.t_s and _get(e.data, "role") == "user"]
        answer = [e for e in transcripts if rx.t_s - 1.0 <= e.t_s < until and _get(e.data, "role") != "user"
                  and not _get(e.data, "correction", default=False)]
        turns.append(_turn(i, user_end, rx, wr, uplink_ms, cut,
                           _get(said[-1].data, "text") if said else None,
                           _get(answer[0].data, "text") if answer else None, rel))
        if wr is not None:
            received_to_written.append(1000 * (wr.t_s - rx.t_s))
    return turns, received_to_written


def _reply_starts(replies: _Replies) -> list[Event]:
    """Without the agent's records a reply is the first audio after a quiet spell (or an interruption)."""
    starts: list[Event] = []
    last_t: float | None = None
    for e in replies.audio:
        interrupted_between = last_t is not None and any(last_t < x.t_s <= e.t_s for x in replies.interruptions)
        if last_t is None or e.t_s - last_t > 1.0 or interrupted_between:
            starts.append(e)
        last_t = e.t_s
    return starts


def _interruptions(interruptions: Sequence[Event], flushes: Sequence[Event], rel: Rel) -> list[dict[str, Any]]:
    """Each interruption with the flush that answered it.

    An interruption (the agent's event, or a press that cut the agent off:
    data.local) is followed by the playback's flush report; other flushes
    (e.g. at the end of a session) interrupted nobody.
    """
    out: list[dict[str, Any]] = []
    used: set[int] = set()
    for x in interruptions:
        idx = next((i for i, f in enumerate(flushes) if i not in used and 0 <= f.t_s - x.t_s <= FLUSH_PAIR_S), None)
        old_ms = None
        if idx is not None:
            used.add(idx)
            old_ms = _num(_get(flushes[idx].data, "old_audio_ms_after"))
        local = bool(_get(x.data, "local", default=False))
        event_id = _get(x.data, "event_id")
        out.append({
            "at_s": rel(x.t_s),
            "source": "local" if local else "agent",
            "event_id": event_id if isinstance(event_id, int) and not isinstance(event_id, bool) else None,
            "old_audio_ms_after": _r(old_ms),
            "old_audio_written_ms_after": _r(old_ms),
        })
    return out


def _xruns(evs: Sequence[Event]) -> dict[str, int]:
    """Capture overruns and playback underruns, counted."""
    xruns = {"capture_overruns": 0, "playback_underruns": 0}
    for e in _times(evs, "xrun"):
        kind = str(_get(e.data, "kind", default=""))
        if "over" in kind:
            xruns["capture_overruns"] += 1
        elif "under" in kind:
            xruns["playback_underruns"] += 1
    return xruns


def _tool_calls(evs: Sequence[Event], rel: Rel) -> list[dict[str, Any]]:
    """Finished tool calls (a call reports started, then finished)."""
    return [
        {
            "at_s": rel(e.t_s),
            "name": str(_get(e.data, "name", default="?")),
            "is_error": bool(_get(e.data, "is_error", default=False)),
        }
        for e in _times(evs, "tool_call")
        if _get(e.data, "phase", default="finished") == "finished"
    ]


def _transcript(evs: Sequence[Event], rel: Rel) -> list[dict[str, Any]]:
    """Final transcripts (tentative ones left out); an agent line the agent corrected is marked cut."""
    out: list[dict[str, Any]] = []
    for e in _times(evs, "transcript"):
        if _get(e.data, "tentative", default=False):
            continue
        role = str(_get(e.data, "role", default="agent"))
        out.append({
            "at_s": rel(e.t_s),
            "role": "user" if role == "user" else "agent",
            "text": str(_get(e.data, "text", default="")),
            "cut": bool(_get(e.data, "correction", default=False)),
        })
    return out


def _turn(
    index: int,
    user_end: float | None,
    rx: Event | None,
    wr: Event | None,
    uplink_ms: float | None,
    interrupted: bool,
    user_text: Any,
    agent_text: Any,
    rel: Rel,
) -> dict[str, Any]:
    latency = device = None
    if wr is not None and user_end is not None:
        latency = 1000 * (wr.t_s - user_end)
    if wr is not None and rx is not None:
        device = 1000 * (wr.t_s - rx.t_s) + (uplink_ms if uplink_ms is not None and user_end is not None else 0.0)
        if user_end is None:
            device = None  # the first message: nobody waited for it
    return {
        "index": index,
        "user_speech_end_s": rel(user_end),
        "first_agent_audio_received_s": rel(rx.t_s if rx is not None else None),
        "first_agent_audio_written_s": rel(wr.t_s if wr is not None else None),
        "first_agent_audio_heard_s": None,
        "latency_ms": _r(latency),
        "written_latency_ms": _r(latency),
        "device_share_ms": _r(device),
        "interrupted": interrupted,
        "user_text": str(user_text) if user_text else None,
        "agent_text": str(agent_text) if agent_text else None,
    }


HEARD_THRESHOLD = 16  # |sample| above this is sound: the clocked card's idle speaker is digital silence
HEARD_SLACK_S = 0.005  # a sample may be placed this much before it was written (the recorder's clock error)


def apply_heard(fig: Figures, heard_pcm: bytes, rate_hz: int, first_sample_s: float, t0_s: float) -> None:
    """Replace written-based figures by heard ones (clocked card).

    ``heard_pcm`` is the speaker's monitor (S16_LE mono at ``rate_hz``), its
    sample 0 heard at monotonic ``first_sample_s``; the figures' times are
    seconds from ``t0_s``. A reply is first heard at the first sound from the
    moment its first sample was written. After an interruption, sound heard
    before the next reply was written is old audio: its end counts.
    """
    samples = memoryview(heard_pcm[: len(heard_pcm) - len(heard_pcm) % 2]).cast("h")
    n = len(samples)

    def index(rel_s: float) -> int:
        return min(n, max(0, round((t0_s + rel_s - first_sample_s) * rate_hz)))

    def rel(i: int) -> float:
        return first_sample_s + i / rate_hz - t0_s

    def first_sound(a: int, b: int) -> int | None:
        return next((i for i in range(a, b) if abs(samples[i]) > HEARD_THRESHOLD), None)

    def last_sound(a: int, b: int) -> int | None:
        return next((i for i in range(b - 1, a - 1, -1) if abs(samples[i]) > HEARD_THRESHOLD), None)

    written = sorted(w for t in fig.turns if (w := t["first_agent_audio_written_s"]) is not None)
    for t in fig.turns:
        w = t["first_agent_audio_written_s"]
        if w is None:
            continue
        later = [x for x in written if x > w]
        i = first_sound(index(w - HEARD_SLACK_S), index(later[0]) if later else n)
        heard_s = rel(i) if i is not None else None
        t["first_agent_audio_heard_s"] = None if heard_s is None else round(heard_s, 4)
        end = t["user_speech_end_s"]
        t["latency_ms"] = _r(1000 * (heard_s - end)) if heard_s is not None and end is not None else None
    for x in fig.interruptions:
        at = x["at_s"]
        nxt = [w for w in written if w > at]
        i = last_sound(index(at), index(nxt[0] - HEARD_SLACK_S) if nxt else n)
        x["old_audio_ms_after"] = _r(max(0.0, 1000 * (rel(i + 1) - at)) if i is not None else 0.0)
    samples.release()


def verdict(
    fig: Figures,
    violations: int,
    timed_out: bool,
    error: str | None,
    *,
    wake: Mapping[str, Any] | None = None,
    require_wake: bool = False,
    unanswered: str | None = None,
) -> tuple[bool, str, str]:
    """(ok, ended_by, detail) of a run.

    ``require_wake``: nothing was pressed (``--gate wake_word`` without a timeline), so the run
    passes only if the wake word (``wake``, :func:`wake_figures`) started the first conversation.
    ``unanswered``: why the agent never answered the user (:func:`unanswered_user`), a failure.
    """
    if error is not None:
        return False, "error", error
    detections = len(wake["detections"]) if wake is not None else 0
    if require_wake and (wake is None or not wake["started_by_wake"]):
        if fig.conversations == 0:
            return False, "no_wake", (
                f"the wake word was not detected ({detections} detection(s)) and nothing was pressed: "
                "no conversation started"
            )
        return False, "no_wake", "the first conversation was not started by the wake word"
    if require_wake and wake is not None and wake["false_wakes"]:
        return False, "false_wake", (
            f"{wake['false_wakes']} conversation(s) the wake word started heard nothing from the user "
            "(the words after the wake word were lost, or nobody spoke)"
        )
    if fig.conversations == 0:
        return False, "no_conversation", "no conversation started: check the timeline presses and the gate mode"
    ended_by = "max_wait" if timed_out else (fig.session_outcomes[-1] if fig.session_outcomes else "unknown")
    if timed_out:
        # A conversation still open at --max-wait-s never ended: the gate stayed open or the agent
        # kept talking. The bench cut it off; that is no success.
        return False, "max_wait", (
            "the conversation was still going at --max-wait-s (it never ended by itself; a gate that "
            "never closes, or an agent that never stops?)"
        )
    bad = [i for i, o in enumerate(fig.session_outcomes) if o not in OK_OUTCOMES]
    if bad:
        outcome = fig.session_outcomes[bad[-1]]
        why = fig.session_details[bad[-1]] if bad[-1] < len(fig.session_details) else ""
        return False, outcome, f"a conversation failed ({outcome}): {why}" if why else (
            f"a conversation failed ({outcome}); see the log above for what to do"
        )
    if fig.replies_played == 0:
        return False, ended_by, "no agent reply was played"
    if unanswered is not None:
        return False, ended_by, unanswered
    if violations:
        return False, ended_by, f"the emulator saw {violations} protocol violation(s)"
    n = fig.replies_played
    woke = f", woken by the wake word ({detections} detection(s))" if require_wake else ""
    return True, ended_by, f"{fig.conversations} conversation(s), {n} repl{'y' if n == 1 else 'ies'} played{woke}"


def unanswered_user(events: Iterable[Event], t0_s: float) -> str | None:
    """Why the agent never answered the user, or None: in some conversation the user's last final
    words (transcript) were followed by no reply before the conversation ended."""
    evs = sorted(events, key=lambda e: e.t_s)
    starts = [e.t_s for e in _times(evs, "reply_started")]
    said = [e for e in _times(evs, "transcript")
            if _get(e.data, "role") == "user" and not _get(e.data, "tentative", default=False)]
    for span in conversation_spans(evs):
        end = span.end_s if span.end_s is not None else float("inf")
        inside = [e for e in said if span.start_s <= e.t_s <= end]
        if not inside:
            continue
        last = inside[-1]
        if not any(last.t_s <= s <= end for s in starts):
            text = str(_get(last.data, "text", default=""))
            return (f"the agent never answered the user (their last words, at {last.t_s - t0_s:.1f} s: "
                    f"{text[:60]!r})")
    return None


WAKE_START_WINDOW_S = 2.0  # a conversation starting this soon after a wake detection was started by it


def wake_figures(events: Iterable[Event], t0_s: float, word_end_s: float | None) -> dict[str, Any]:
    """The wake word's part of a run (report.json ``wake``).

    A conversation was started by the wake word when the last wake detection or press within
    :data:`WAKE_START_WINDOW_S` before it entered ``connecting`` was a detection. A false wake: a
    conversation the wake word started in which the user then said nothing (no final transcript).
    ``word_end_s``: where the first wake word ends in the input (seconds from ``t0_s``), when known.
    """
    evs = sorted(events, key=lambda e: e.t_s)
    wakes = _times(evs, "wake")
    presses = [e for e in _times(evs, "button") if _get(e.data, "action") == "press"]
    said = [e for e in _times(evs, "transcript")
            if _get(e.data, "role") == "user" and not _get(e.data, "tentative", default=False)]
    starters: set[int] = set()
    started: list[bool] = []
    false_wakes = 0
    for span in conversation_spans(evs):
        cands = [(e.t_s, i) for i, e in enumerate(wakes) if span.start_s - WAKE_START_WINDOW_S <= e.t_s <= span.start_s]
        pressed = [e.t_s for e in presses if span.start_s - WAKE_START_WINDOW_S <= e.t_s <= span.start_s]
        by_wake = bool(cands) and (not pressed or max(cands)[0] >= max(pressed))
        started.append(by_wake)
        if by_wake:
            starters.add(max(cands)[1])
            end = span.end_s if span.end_s is not None else float("inf")
            if not any(span.start_s <= e.t_s <= end for e in said):
                false_wakes += 1
    detections = [
        {"at_s": round(e.t_s - t0_s, 4), "score": _r(_num(_get(e.data, "score")), 3) or 0.0,
         "model": str(_get(e.data, "model", default="")), "started_conversation": i in starters}
        for i, e in enumerate(wakes)
    ]
    delay = None
    if word_end_s is not None:
        after = [e.t_s - t0_s for e in wakes if e.t_s - t0_s >= word_end_s - 0.5]
        if after:
            delay = round(1000 * (after[0] - word_end_s), 1)
    return {
        "detections": detections,
        "started_by_wake": bool(started) and started[0],
        "false_wakes": false_wakes,
        "word_end_s": None if word_end_s is None else round(word_end_s, 3),
        "detection_delay_ms": delay,
    }


def speech_spans(pcm: bytes, rate_hz: int, *, window_s: float = 0.02, gap_s: float = 0.15,
                 floor_dbfs: float = -45.0, below_peak_db: float = 30.0) -> list[tuple[float, float]]:
    """Where there is speech in S16_LE mono PCM: (start, end) seconds, from the level alone.

    A window is loud when above ``floor_dbfs`` and within ``below_peak_db`` of the loudest one; loud
    windows closer than ``gap_s`` join. Meant for clean bench input (the wake word's end), not a VAD.
    """
    samples = memoryview(pcm[: len(pcm) - len(pcm) % 2]).cast("h")
    step = max(1, round(rate_hz * window_s))
    levels: list[float] = []
    for i in range(0, len(samples), step):
        w = samples[i : i + step]
        ms = sum(x * x for x in w) / max(1, len(w))
        levels.append(10 * math.log10(ms / 32768.0**2) if ms > 0 else -120.0)
    samples.release()
    if not levels:
        return []
    cut = max(floor_dbfs, max(levels) - below_peak_db)
    spans: list[tuple[float, float]] = []
    for i, level in enumerate(levels):
        if level <= cut:
            continue
        a, b = i * step / rate_hz, (i + 1) * step / rate_hz
        if spans and a - spans[-1][1] < gap_s:
            spans[-1] = (spans[-1][0], b)
        else:
            spans.append((a, b))
    return spans


def playback_segments(
    events: Iterable[Event], total_frames: int, rate_hz: int, ahead_frames: int = 0
) -> list[tuple[float, int, int]]:
    """Where each reply sits in the playback file: (start time, first frame, frames).

    The file holds the replies back to back (nothing is written between them).
    A finished reply's length comes from ``reply_finished``; an interrupted one's
    is estimated from when it was flushed (plus ``ahead_frames`` the device had
    buffered, which the file keeps); the last unknown length takes what is left.
    """
    evs = sorted(events, key=lambda e: e.t_s)
    starts = _times(evs, "reply_started")
    finished = {(_get(e.data, "reply_id")): _num(_get(e.data, "frames")) for e in _times(evs, "reply_finished")}
    flushes = _times(evs, "flushed")
    lengths: list[int | None] = []
    estimates: list[int] = []
    for i, s in enumerate(starts):
        nxt = starts[i + 1].t_s if i + 1 < len(starts) else float("inf")
        known = finished.get(_get(s.data, "reply_id"))
        if known is not None and _get(s.data, "reply_id") is not None:
            lengths.append(int(known))
            estimates.append(int(known))
            continue
        lengths.append(None)
        flush = next((f for f in flushes if s.t_s <= f.t_s < nxt), None)
        end = flush.t_s if flush is not None else min(nxt, evs[-1].t_s if evs else s.t_s)
        old_ms = (_num(_get(flush.data, "old_audio_ms_after")) or 0.0) if flush is not None else 0.0
        estimates.append(max(0, int((end - s.t_s) * rate_hz + ahead_frames + old_ms * rate_hz / 1000)))
    unknown = [i for i, n in enumerate(lengths) if n is None]
    if unknown:
        left = max(0, total_frames - sum(n for n in lengths if n is not None))
        guess = sum(estimates[i] for i in unknown[:-1])
        for i in unknown[:-1]:
            lengths[i] = min(estimates[i], left) if guess <= left else round(estimates[i] * left / max(guess, 1))
        lengths[unknown[-1]] = max(0, left - sum(lengths[i] or 0 for i in unknown[:-1]))
    out: list[tuple[float, int, int]] = []
    offset = 0
    for s, n in zip(starts, lengths, strict=True):
        n = min(n or 0, max(0, total_frames - offset))
        out.append((s.t_s, offset, n))
        offset += n
    return out
