"""Logging set-up, done once by the entry point.

Under systemd the journal gets the records (systemd-python's JournalHandler,
no timestamps: journald adds its own); elsewhere stderr with timestamps.
Every handler redacts secrets (:class:`device.secrets.RedactingFilter`).
"""

from __future__ import annotations

import logging
import os
import sys
import typing
from collections.abc import Mapping

from device.secrets import RedactingFilter

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


class _SyslogPrefixFormatter(logging.Formatter):
    """``<N>`` priority prefixes that journald understands on plain stderr."""

    PRIORITY: typing.ClassVar[dict[int, int]] = {
        logging.DEBUG: 7,
        logging.INFO: 6,
        logging.WARNING: 4,
        logging.ERROR: 3,
        logging.CRITICAL: 2,
    }

    def format(self, record: logging.LogRecord) -> str:
        prio = self.PRIORITY.get(record.levelno, 6)
        return f"<{prio}>" + super().format(record)


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
            handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        except ImportError:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(_SyslogPrefixFormatter("%(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        )
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler
