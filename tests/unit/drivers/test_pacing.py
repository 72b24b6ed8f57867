"""Pacing of clockless devices: an imaginary card playing and recording at the nominal rate."""

from __future__ import annotations

import pytest

from device.drivers.pacing import BlockPacer, PacedPlayback, PlaybackClock
from tests.fakeaudio import FakePlayback


def test_clock_plays_at_the_nominal_rate() -> None:
    clock = PlaybackClock(16000, 4000)
    assert clock.room_frames(0.0) == 4000
    clock.wrote(4000, 10.0)
    assert clock.delay_frames(10.0) == 4000
    assert clock.room_frames(10.0) == 0
    assert clock.delay_frames(10.125) == 2000
    assert clock.seconds_until_room(3000, 10.125) == pytest.approx(1000 / 16000)
    assert clock.seconds_until_drained(10.125) == pytest.approx(0.125)
    assert clock.delay_frames(11.0) == 0


def test_clock_restarts_after_running_dry() -> None:
    clock = PlaybackClock(1000, 100)
    clock.wrote(50, 0.0)
    assert clock.ran_dry(1.0)
    clock.wrote(50, 5.0)  # restarts: the 50 new frames are all still queued
    assert clock.delay_frames(5.0) == 50
    assert not clock.ran_dry(5.0)


def test_drop_empties_the_clock() -> None:
    clock = PlaybackClock(1000, 100)
    clock.wrote(100, 0.0)
    clock.drop()
    assert clock.delay_frames(0.0) == 0
    assert not clock.ran_dry(0.0)


def test_block_pacer_deadlines() -> None:
    pacer = BlockPacer(0.25)
    pacer.start(100.0)
    assert pacer.next_deadline_s == 100.25
    pacer.advance()
    pacer.advance()
    assert pacer.next_deadline_s == 100.75


def clockless_sink() -> FakePlayback:
    """A clockless device: takes everything at once, like ALSA's null."""
    return FakePlayback(1000, device="sink", period_frames=10, buffer_frames=40)


def test_paced_playback_accepts_one_buffer_then_the_rate() -> None:
    now = [0.0]
    sink = clockless_sink()
    dev = PacedPlayback(sink, lambda: now[0])
    assert not dev.clocked
    assert dev.write(b"\x01\x00" * 100) == 40  # only the buffer fits
    assert dev.write(b"\x01\x00" * 10) == 0
    assert dev.seconds_until_room(10) == pytest.approx(0.010)
    now[0] = 0.005
    assert dev.write(b"\x01\x00" * 10) == 0  # room for 5 frames: less than a period, nothing
    assert dev.write(b"\x01\x00" * 5) == 5  # a request that fits whole goes in
    now[0] = 0.020
    assert dev.write(b"\x01\x00" * 100) == 15  # a period or more free: as much as fits
    assert dev.delay_frames() == 40
    assert len(sink.data) == 2 * 60


def test_paced_playback_reports_an_underrun_like_alsa() -> None:
    now = [0.0]
    sink = clockless_sink()
    dev = PacedPlayback(sink, lambda: now[0])
    dev.write(b"\x00\x00" * 20)
    now[0] = 1.0  # everything played long ago
    assert dev.write(b"\x00\x00" * 5) == -1  # nothing written
    assert dev.write(b"\x00\x00" * 5) == 5  # and ready again
    assert len(sink.data) == 2 * 25
    dev.drop()
    assert sink.drops == 1
    assert dev.delay_frames() == 0
