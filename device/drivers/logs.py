"""Logging set-up, done once by the entry point, and the rate limit for lines another party causes.

Under systemd the journal gets the records (systemd-python's JournalHandler,
no timestamps: journald adds its own); elsewhere stderr with timestamps.
Every handler redacts secrets (:class:`device.drivers.secrets.RedactingFilter`) and
writes a record's message on one line with its control characters escaped
(:func:`escape_controls`), so no text in a record, wherever it came from, can
forge a log line, a journald priority or a terminal escape sequence.

:class:`RateLimitedLog` bounds what a peer (the agent service, a client of
the control socket) can make the daemon log, however much it sends.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from device.drivers.secrets import RedactingFilter

LEVELS = ("debug", "info", "warning", "error")

# C0 and C1 controls, DEL, the Unicode line and paragraph separators, and lone surrogates (they cannot be
# encoded: a stream, the journal or an sd_notify datagram would fail on them).
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_CONTROLS_BUT_NEWLINE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def escape_controls(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with every control character written as a visible escape (``\\n``, ``\\x1b``, ``\\u2028``).

    Nothing is dropped, but nothing can end a line, move a terminal's cursor
    or colour it. ``keep_newlines``: line breaks stay (a traceback's).
    """
    return (_CONTROLS_BUT_NEWLINE if keep_newlines else _CONTROLS).sub(_escape, text)


def under_journald(environ: Mapping[str, str] | None = None) -> bool:
    """True when stderr is connected to the journal (systemd sets JOURNAL_STREAM)."""
    env = os.environ if environ is None else environ
    stream = env.get("JOURNAL_STREAM", "")
    if not stream:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return stream == f"{st.st_dev}:{st.st_ino}"


class _OneLineFormatter(logging.Formatter):
    """The header and message on one line, control characters escaped; a traceback below it.

    A traceback keeps its line breaks, each further line starting with
    ``continuation`` (the plain stderr indents them, so that only a record's
    first line starts at the margin).
    """

    continuation = "  "

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        head = self.formatMessage(record)  # what Formatter.format put first (record.message is set by now)
        if not text.startswith(head):  # not laid out as Formatter does: all of it on one line
            return escape_controls(text)
        rest = escape_controls(text[len(head):], keep_newlines=True)
        return escape_controls(head) + rest.replace("\n", "\n" + self._continuation(record))

    def _continuation(self, record: logging.LogRecord) -> str:
        return self.continuation


class _JournalFormatter(_OneLineFormatter):
    """For JournalHandler: the record is one MESSAGE field, so a traceback needs no marks."""

    continuation = ""


class _SyslogPrefixFormatter(_OneLineFormatter):
    """``<N>`` priority prefixes that journald understands on plain stderr, on every line of a record.

    journald reads each line as an entry of its own: a traceback's lines get
    the record's priority, and no text in a record can start a line with a
    priority of its own choosing.
    """

    PRIORITY: typing.ClassVar[dict[int, int]] = {
        logging.DEBUG: 7,
        logging.INFO: 6,
        logging.WARNING: 4,
        logging.ERROR: 3,
        logging.CRITICAL: 2,
    }

    def format(self, record: logging.LogRecord) -> str:
        return self._continuation(record) + super().format(record)

    def _continuation(self, record: logging.LogRecord) -> str:
        return f"<{self.PRIORITY.get(record.levelno, 6)}>"


def setup_logging(level: str = "info", journald: bool | None = None) -> logging.Handler:
    """Configure the root logger once; returns the handler installed."""
    if level not in LEVELS:
        level = "info"
    use_journal = under_journald() if journald is None else journald
    handler: logging.Handler
    if use_journal:
        try:
            from systemd.journal import JournalHandler

            handler = JournalHandler(SYSLOG_IDENTIFIER="voice-appliance")
            handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
        except ImportError:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(_SyslogPrefixFormatter("%(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_OneLineFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler


# -- the rate limit -------------------------------------------------------------------------------

OTHER_KIND = "other"


@dataclass
class _Kind:
    window_end_s: float = 0.0  # before it, lines of this kind are held back
    held: int = 0


class RateLimitedLog:
    """Lines another party can cause, rate-limited: each kind, and all kinds together.

    The first line of a kind goes out at once; then at most one per
    ``interval_s``, saying how many like it were held back since. All kinds
    together write at most ``max_lines`` per ``interval_s`` (lines over it are
    held and counted like the others). At most ``max_kinds`` kinds are told
    apart; further ones share the kind ``"other"``. :meth:`flush` reports
    what is still held (e.g. when a conversation ends).
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float,
        *,
        max_lines: int = 50,
        max_kinds: int = 64,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._interval_s = interval_s
        self._max_lines = max_lines
        self._max_kinds = max_kinds
        self._clock = clock
        self._lock = threading.Lock()
        self._kinds: dict[str, _Kind] = {}
        self._window_end_s = 0.0  # of the window all kinds share
        self._window_lines = 0

    def log(self, level: int, kind: str, msg: str, *args: object) -> bool:
        """Log ``msg % args`` at ``level`` unless ``kind`` (or the total) is over its rate; True when written."""
        return self._write(level, kind, msg, args)

    def info(self, kind: str, msg: str, *args: object) -> bool:
        return self._write(logging.INFO, kind, msg, args)

    def warning(self, kind: str, msg: str, *args: object) -> bool:
        return self._write(logging.WARNING, kind, msg, args)

    def _write(self, level: int, kind: str, msg: str, args: tuple[object, ...]) -> bool:
        with self._lock:
            now = self._clock()
            if kind not in self._kinds and len(self._kinds) >= self._max_kinds:
                kind = OTHER_KIND
            state = self._kinds.setdefault(kind, _Kind())
            if now >= self._window_end_s:
                self._window_end_s, self._window_lines = now + self._interval_s, 0
            if now < state.window_end_s or self._window_lines >= self._max_lines:
                state.held += 1
                return False
            held, state.held = state.held, 0
            state.window_end_s = now + self._interval_s
            self._window_lines += 1
        suffix = f" ({held} more like it since the last report)" if held else ""
        self._log.log(level, msg + "%s", *args, suffix, stacklevel=3)  # the record names the caller's line
        return True

    @property
    def held(self) -> int:
        """Lines held back and not yet reported."""
        with self._lock:
            return sum(k.held for k in self._kinds.values())

    def flush(self, what: str) -> None:
        """One line for everything still held back (``what`` names the source), then forget the kinds."""
        with self._lock:
            held = sorted(((k.held, name) for name, k in self._kinds.items() if k.held), reverse=True)
            self._kinds.clear()
            self._window_end_s, self._window_lines = 0.0, 0
        if held:
            shown = ", ".join(f"{name} ×{n}" for n, name in held[:5]) + (", …" if len(held) > 5 else "")
            total = sum(n for n, _ in held)
            self._log.info("%s: %d log lines were held back by the rate limit (%s)", what, total, shown)
