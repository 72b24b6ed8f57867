"""Pings and pongs: when pings fall due, what they carry, and which pongs are late."""

from __future__ import annotations

from device.emulator import wire
from device.emulator.pings import Pinger


def started(now: float = 0.0, interval_s: float = 5.0, pong_timeout_s: float = 2.0) -> Pinger:
    p = Pinger(interval_s, pong_timeout_s)
    p.start(now)
    return p


def test_a_ping_falls_due_an_interval_after_the_start() -> None:
    p = started()
    assert (p.due(4.9), p.due(5.0)) == (False, True)


def test_without_an_interval_no_ping_falls_due() -> None:
    p = started(interval_s=0)
    assert not p.due(1e9) and p.deadlines() == []


def test_the_first_ping_carries_no_round_trip() -> None:
    assert started().ping(5.0, 1) == wire.ping(1, None)


def test_a_pong_measures_the_round_trip_and_the_next_ping_carries_it() -> None:
    p = started()
    p.ping(5.0, 1)
    assert p.pong(5.25, 1) == 250.0
    assert p.ping(10.0, 2) == wire.ping(2, 250)


def test_a_pong_for_no_outstanding_ping_is_refused() -> None:
    p = started()
    p.ping(5.0, 1)
    p.pong(5.1, 1)
    assert p.pong(5.2, 1) is None


def test_pings_keep_their_interval() -> None:
    p = started()
    p.ping(5.3, 1)
    assert (p.due(9.9), p.due(10.0)) == (False, True)


def test_a_late_ping_waits_at_least_half_an_interval() -> None:
    p = started()
    p.ping(12.0, 1)
    assert (p.due(14.4), p.due(14.5)) == (False, True)


def test_a_pong_is_late_after_its_timeout_and_reported_once() -> None:
    p = started()
    p.ping(5.0, 1)
    assert (p.late(6.9), p.late(7.0), p.late(8.0)) == ([], [1], [])


def test_an_outstanding_ping_is_a_deadline_until_late() -> None:
    p = started()
    p.ping(5.0, 1)
    assert sorted(p.deadlines()) == [7.0, 10.0]
    p.late(7.0)
    assert p.deadlines() == [10.0]
