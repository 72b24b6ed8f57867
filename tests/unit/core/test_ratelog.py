"""The pure rate limit: each line's time is passed in (tests/unit/drivers/test_logs.py tests the drivers' one)."""

from __future__ import annotations

import logging

import pytest

from device.core.ratelog import RateLimitedLog
from device.drivers import logs

LOGGER = "test.ratelog"


def test_each_lines_time_is_its_now_s(caplog: pytest.LogCaptureFixture) -> None:
    limited = RateLimitedLog(logging.getLogger(LOGGER), 30.0)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert limited.warning("bad_json", "ignored %s", "a", now_s=100.0)
        assert not limited.warning("bad_json", "ignored %s", "b", now_s=129.9)
        assert limited.warning("bad_json", "ignored %s", "c", now_s=130.0)
    assert [r.getMessage() for r in caplog.records] == ["ignored a", "ignored c (1 more like it since the last report)"]


def test_without_a_clock_a_line_needs_its_time() -> None:
    limited = RateLimitedLog(logging.getLogger(LOGGER), 30.0)
    with pytest.raises(TypeError, match="now_s"):
        limited.info("kind", "text")


def test_the_drivers_keep_their_name_for_it() -> None:
    assert issubclass(logs.RateLimitedLog, RateLimitedLog)
