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
import sys
import threading
import time
import typing
from collections.abc import Callable, Mapping

from device.core import ratelog
from device.core.text import escape_controls
from device.drivers.secrets import RedactingFilter

LEVELS = ("debug", "info", "warning", "error")

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

OTHER_KIND = ratelog.OTHER_KIND


class RateLimitedLog(ratelog.RateLimitedLog):
    """:class:`device.core.ratelog.RateLimitedLog` for the drivers: thread-safe, on the monotonic clock by default."""

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float,
        *,
        max_lines: int = 50,
        max_kinds: int = 64,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(logger, interval_s, max_lines=max_lines, max_kinds=max_kinds, clock=clock)
        self._lock = threading.Lock()

    def _admit(self, kind: str, now_s: float | None) -> int | None:
        with self._lock:
            return super()._admit(kind, now_s)

    @property
    def held(self) -> int:
        with self._lock:
            return super().held

    def _drain(self) -> list[tuple[int, str]]:
        with self._lock:
            return super()._drain()
