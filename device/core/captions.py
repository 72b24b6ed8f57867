"""What the kiosk's screen shows, from the telemetry records (pure: records and the time in, a view out).

The state has the LEDs' meaning (the ``state`` records' display state, :mod:`device.core.display`).
The user's words come from ``transcript`` records (a tentative line is replaced by the next one and
by the final one). The agent's words are revealed as they are heard: each ``agent_audio`` record's
``alignment`` places its characters at stream positions (the record's ``position`` plus each start
time), and the ``reply_chunk`` records say when the frame at a position is heard (the chunk's write
time plus ALSA's delay). A word appears when its first character is heard; an ``interruption`` cuts
the line where the audio stopped, so no word that was not heard is ever shown. Without alignment
the agent's text (``agent_response``, or its correction) is shown when the reply starts playing.

:class:`Captions` is fed with :meth:`feed` and :meth:`tick`; :meth:`next_due_s` says when the next
word is due, so the owner (``device/drivers/screen.py``) wakes exactly then.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from device.core import display
from device.core.protocol import Alignment

MAX_LINES = 12  # lines kept on screen (a long conversation scrolls off the top)
MAX_LINE_CHARS = 2000
MAX_ANCHORS = 256  # reply chunks remembered: ~16 s of audio, far more than ALSA's buffer
CONVERSATION_STATES = frozenset({display.WOKEN, display.CONNECTING, display.LISTENING, display.THINKING,
                                 display.SPEAKING})

TOOL_WORDS: Mapping[str, str] = {
    "set_volume": "Setting the volume",
    "device_status": "Checking the kiosk",
    "end_conversation": "Ending the conversation",
}

ERROR_WORDS: Mapping[str, str] = {
    "session": "I can't reach the service. Please try again in a minute.",
    "agent": "Something went wrong on the service. Please try again.",
    "speaker": "The speaker is not working. Please tell a member of staff.",
    "microphone": "The microphone is not working. Please tell a member of staff.",
}
OTHER_ERROR = "Something went wrong. Please try again, or tell a member of staff."


def tool_words(name: str) -> str:
    """A tool call in plain words."""
    return TOOL_WORDS.get(name, "Working on it: " + name.replace("_", " ").strip())


@dataclass
class Line:
    """One turn on screen."""

    role: str  # user, agent
    text: str = ""
    final: bool = False  # user: the final transcript; agent: the reply ended
    cut: bool = False  # agent: interrupted, the rest was never heard

    def as_dict(self) -> dict[str, Any]:
        return {"role": self.role, "text": self.text, "final": self.final, "cut": self.cut}


@dataclass
class _Char:
    position: float  # stream frame where it is spoken
    rate_hz: int
    text: str


@dataclass
class _Anchor:
    position: int
    frames: int
    rate_hz: int
    heard_at_s: float

    def heard_s(self, position: float) -> float | None:
        """When the frame at ``position`` is heard, None when this chunk does not hold it."""
        if self.position <= position < self.position + self.frames:
            return self.heard_at_s + (position - self.position) / self.rate_hz
        return None


@dataclass
class _Reply:
    """The agent line being revealed."""

    line: Line
    pending: collections.deque[_Char] = field(default_factory=collections.deque)
    aligned: bool = False  # audio with alignment came: the text follows what is heard
    text: str = ""  # agent_response / correction: shown when there is no alignment
    heard: bool = False  # its audio has started playing


class Captions:
    """The screen's model. Not thread-safe: one owner feeds it and reads it."""

    def __init__(self, keep_history: bool = False) -> None:
        self._keep_history = keep_history
        self.state = display.STARTING
        self.activity = ""
        self.error = ""
        self.lines: collections.deque[Line] = collections.deque(maxlen=MAX_LINES)
        self._reply: _Reply | None = None
        self._anchors: collections.deque[_Anchor] = collections.deque(maxlen=MAX_ANCHORS)
        self.version = 0  # bumped on every change the screen shows

    # -- reading ---------------------------------------------------------------------------
    def view(self) -> dict[str, Any]:
        """What the page renders (plain data, JSON-ready)."""
        return {
            "version": self.version,
            "state": self.state,
            "activity": self.activity,
            "error": self.error,
            "lines": [line.as_dict() for line in self.lines],
        }

    def next_due_s(self, now_s: float) -> float | None:
        """Seconds until the next word is heard (0: now), None when nothing is waiting for its time."""
        reply = self._reply
        if reply is None or not reply.pending:
            return None
        heard = self._heard_s(reply.pending[0])
        return None if heard is None else max(0.0, heard - now_s)

    # -- input -----------------------------------------------------------------------------
    def feed(self, kind: str, t_s: float, data: Mapping[str, Any]) -> bool:
        """One telemetry record; True when the view changed."""
        before = self.version
        handler = _HANDLERS.get(kind)
        if handler is not None:
            handler(self, t_s, data)
        return self.version != before

    def tick(self, now_s: float) -> bool:
        """Reveal the words heard by ``now_s``; True when the view changed."""
        before = self.version
        self._reveal(now_s)
        return self.version != before

    # -- handlers --------------------------------------------------------------------------
    def _on_state(self, t_s: float, data: Mapping[str, Any]) -> None:
        state = str(data.get("state", ""))
        if not state or state == self.state:
            return
        was_in_conversation = self.state in CONVERSATION_STATES
        self.state = state
        if state in (display.CONNECTING, display.WOKEN, display.LISTENING):
            self.error = ""
        if state not in CONVERSATION_STATES:
            self._reveal(t_s)
            self._end_reply(cut=bool(self._reply and self._reply.pending))
            self.activity = ""
            if was_in_conversation and not self._keep_history:
                self.lines.clear()  # privacy: nothing of a conversation stays after it ends
        self._changed()

    def _on_transcript(self, t_s: float, data: Mapping[str, Any]) -> None:
        text = str(data.get("text", ""))[:MAX_LINE_CHARS]
        if data.get("role") == "user":
            last = self.lines[-1] if self.lines else None
            line = last if last is not None and last.role == "user" and not last.final else None
            if line is None:
                if not text.strip():
                    return
                self._end_reply(cut=False)
                line = Line("user")
                self.lines.append(line)
            line.text = text
            line.final = not data.get("tentative", False)
            self._changed()
            return
        reply = self._current_reply()
        if data.get("correction") and not reply.aligned:
            reply.text = text
        elif not data.get("correction"):
            reply.text = (reply.text + " " + text).strip() if reply.text and not reply.aligned else text
        if not reply.aligned and reply.heard:
            reply.line.text = reply.text[:MAX_LINE_CHARS]
            self._show(reply)
            self._changed()

    def _on_agent_audio(self, t_s: float, data: Mapping[str, Any]) -> None:
        alignment = data.get("alignment")
        position, rate = data.get("position"), int(data.get("rate_hz") or 0)
        reply = self._current_reply()
        if not isinstance(alignment, Alignment) or not isinstance(position, int) or rate <= 0:
            return
        reply.aligned = True
        for ch, start_ms in zip(alignment.chars, alignment.starts_ms, strict=True):
            reply.pending.append(_Char(position + start_ms * rate / 1000.0, rate, ch))

    def _on_reply_chunk(self, t_s: float, data: Mapping[str, Any]) -> None:
        position, frames, rate = data.get("position"), data.get("frames"), data.get("rate_hz")
        if not isinstance(position, int) or not isinstance(frames, int) or not isinstance(rate, int) or rate <= 0:
            return
        if self._anchors and position < self._anchors[-1].position:
            self._anchors.clear()  # a new playback (the daemon reloaded): positions start again
        self._anchors.append(_Anchor(position, frames, rate, t_s))

    def _on_reply_started(self, t_s: float, data: Mapping[str, Any]) -> None:
        reply = self._current_reply()
        reply.heard = True
        if not reply.aligned and reply.text:
            reply.line.text = reply.text[:MAX_LINE_CHARS]
            self._show(reply)
            self._changed()

    def _on_interruption(self, t_s: float, data: Mapping[str, Any]) -> None:
        self._reveal(t_s)  # what was heard up to the cut stays; nothing after it is ever shown
        self._end_reply(cut=True)

    def _on_reply_finished(self, t_s: float, data: Mapping[str, Any]) -> None:
        self._reveal(t_s)

    def _on_tool_call(self, t_s: float, data: Mapping[str, Any]) -> None:
        name = str(data.get("name", ""))
        self.activity = tool_words(name) if data.get("phase") == "started" else ""
        self._changed()

    def _on_error(self, t_s: float, data: Mapping[str, Any]) -> None:
        self.error = ERROR_WORDS.get(str(data.get("source", "")), OTHER_ERROR)
        self._changed()

    # -- helpers ---------------------------------------------------------------------------
    def _changed(self) -> None:
        self.version += 1

    def _current_reply(self) -> _Reply:
        if self._reply is None:
            line = Line("agent")
            self._reply = _Reply(line)
        return self._reply

    def _show(self, reply: _Reply) -> None:
        if not any(line is reply.line for line in self.lines):
            self.lines.append(reply.line)

    def _end_reply(self, cut: bool) -> None:
        reply, self._reply = self._reply, None
        if reply is None:
            return
        reply.line.final = True
        if cut and any(line is reply.line for line in self.lines):
            reply.line.cut = True
            self._changed()

    def _heard_s(self, ch: _Char) -> float | None:
        for anchor in reversed(self._anchors):
            if anchor.position <= ch.position:
                return anchor.heard_s(ch.position)
        return None

    def _reveal(self, now_s: float) -> None:
        reply = self._reply
        if reply is None:
            return
        shown = False
        while reply.pending:
            ch = reply.pending[0]
            heard = self._heard_s(ch)
            if heard is None:
                if self._anchors and ch.position < self._anchors[-1].position:
                    reply.pending.popleft()  # never written (skipped): never heard, and nor is its word
                    while not ch.text.isspace() and reply.pending and not reply.pending[0].text.isspace():
                        reply.pending.popleft()
                    continue
                break
            if heard > now_s:
                break
            reply.pending.popleft()
            self._append(reply, ch.text)
            shown = True
            if not ch.text.isspace():  # a word shows whole from its first character on
                while reply.pending and not reply.pending[0].text.isspace():
                    self._append(reply, reply.pending.popleft().text)
        if shown:
            self._show(reply)
            self._changed()

    @staticmethod
    def _append(reply: _Reply, text: str) -> None:
        if len(reply.line.text) < MAX_LINE_CHARS:
            reply.line.text += text


_HANDLERS = {
    "state": Captions._on_state,
    "transcript": Captions._on_transcript,
    "agent_audio": Captions._on_agent_audio,
    "reply_chunk": Captions._on_reply_chunk,
    "reply_started": Captions._on_reply_started,
    "reply_finished": Captions._on_reply_finished,
    "interruption": Captions._on_interruption,
    "tool_call": Captions._on_tool_call,
    "error": Captions._on_error,
}
KINDS_USED = frozenset(_HANDLERS)
