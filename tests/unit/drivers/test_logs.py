"""device.drivers.logs: every handler writes one line per message with controls escaped; the rate limit for peers."""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from device.drivers.logs import RateLimitedLog, escape_controls, setup_logging

FORGED = "boom\n<0>forged emergency\r\x1b[2J\x1b]0;title\x07\u2028\ud800 end"
ESCAPED = "boom\\n<0>forged emergency\\r\\x1b[2J\\x1b]0;title\\x07\\u2028\\ud800 end"


def test_escape_controls_keeps_everything_visible() -> None:
    assert escape_controls(FORGED) == ESCAPED
    assert escape_controls("tab\there\x7f\x9b") == "tab\\there\\x7f\\x9b"
    assert escape_controls("kept: ünïcödé, emoji 😀, RTL שלום") == "kept: ünïcödé, emoji 😀, RTL שלום"
    assert escape_controls("line 1\nline 2\x1b", keep_newlines=True) == "line 1\nline 2\\x1b"


@pytest.fixture
def root_restored() -> Iterator[None]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def _log_hostile_records() -> None:
    log = logging.getLogger("device.drivers.session")
    log.warning("session: the service reported an error: %s", FORGED)
    try:
        raise RuntimeError(f"failed on {FORGED}")
    except RuntimeError:
        log.exception("session: internal error with %s", FORGED)


def _stream_output(journald: bool, monkeypatch: pytest.MonkeyPatch) -> str:
    if journald:  # systemd-python missing: the <N> prefix fallback on stderr
        monkeypatch.setitem(sys.modules, "systemd.journal", None)
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    setup_logging("info", journald=journald)
    _log_hostile_records()
    return stream.getvalue()


def test_the_stderr_handler_writes_no_raw_control_and_no_forged_line(
    root_restored: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = _stream_output(False, monkeypatch)
    lines = out.splitlines()
    assert "\x1b" not in out
    assert "\r" not in out
    assert "\u2028" not in out
    assert "\x07" not in out
    records = [line for line in lines if not line.startswith("  ")]  # a traceback's lines are indented
    assert len(records) == 2, lines
    assert records[0].endswith("session: the service reported an error: " + ESCAPED)
    assert records[1].endswith("session: internal error with " + ESCAPED)
    assert "  <0>forged emergency" + ESCAPED.partition("emergency")[2] in lines  # a line break in the exception
    assert any(line.startswith("  Traceback (most recent call last):") for line in lines), lines
    assert any(line == "  RuntimeError: failed on boom" for line in lines), lines  # its own line break kept


def test_the_syslog_prefix_fallback_gives_every_line_the_records_priority(
    root_restored: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = _stream_output(True, monkeypatch)
    lines = out.splitlines()
    assert "\x1b" not in out
    assert "\r" not in out
    assert "\u2028" not in out
    assert lines[0] == "<4>device.drivers.session: session: the service reported an error: " + ESCAPED
    assert lines[1] == "<3>device.drivers.session: session: internal error with " + ESCAPED
    assert all(line.startswith("<3>") for line in lines[1:]), lines  # the traceback at the error's priority
    assert "<3>RuntimeError: failed on boom" in lines  # the exception's own line break: the next line is ...
    assert "<3><0>forged emergency" + ESCAPED.partition("emergency")[2] in lines  # ... the record's, not the text's


def test_the_journal_handler_gets_one_line_messages(root_restored: None) -> None:
    handler = setup_logging("info", journald=True)
    sent: list[tuple[str, dict[str, Any]]] = []

    def send(message: str, /, **fields: Any) -> None:  # the journal (JournalHandler's sender_function)
        sent.append((message, fields))

    handler.send = send  # type: ignore[attr-defined]
    _log_hostile_records()
    assert sent[0][0] == "device.drivers.session: session: the service reported an error: " + ESCAPED
    first_line, _, traceback = sent[1][0].partition("\n")
    assert first_line == "device.drivers.session: session: internal error with " + ESCAPED
    assert "\x1b" not in traceback
    assert traceback.startswith("Traceback")  # one MESSAGE field: lines kept
    assert [f["PRIORITY"] for _, f in sent] == ["4", "3"]


class Clock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def _limited(**kw: Any) -> tuple[RateLimitedLog, Clock, list[str]]:
    clock = Clock()
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = logging.getLogger(f"test.limited.{id(lines)}")
    logger.propagate = False
    logger.addHandler(Keep())
    logger.setLevel(logging.INFO)
    return RateLimitedLog(logger, 30.0, clock=clock, **kw), clock, lines


def test_the_rate_limit_lets_one_line_per_kind_through_per_interval_and_counts_the_rest() -> None:
    limited, clock, lines = _limited()
    assert limited.warning("bad_json", "ignored %s", "a")
    assert limited.info("unknown:x", "new type %s", "x")  # another kind: at once
    assert not any(limited.warning("bad_json", "ignored %s", "b") for _ in range(99))
    assert limited.held == 99
    clock.now_s += 30.0
    assert limited.warning("bad_json", "ignored %s", "c")
    assert lines == ["ignored a", "new type x", "ignored c (99 more like it since the last report)"]
    assert limited.held == 0


def test_the_rate_limit_bounds_the_lines_of_all_kinds_together_and_the_kinds_it_tells_apart() -> None:
    limited, clock, lines = _limited(max_lines=10, max_kinds=20)
    for i in range(1000):  # every line a new kind
        limited.info(f"unknown:{i}", "type %d", i)
    assert len(lines) == 10
    clock.now_s += 30.0
    for i in range(1000, 2000):
        limited.info(f"unknown:{i}", "type %d", i)
    assert len(lines) == 11  # the kinds over 20 share one, "other", whose first line is now due
    assert lines[-1] == "type 1000 (980 more like it since the last report)"
    limited.flush("session")
    assert lines[-1].startswith("session: 1009 log lines were held back by the rate limit (other ×999, ")
    assert limited.held == 0
