"""Playback on the clocked card: what a listener hears (the speaker sink's monitor), not what was written.

The card consumes audio in real time and ``drop()`` really discards, so these
tests assert properties of heard audio: how much of a reply is heard after an
interruption, that a starved reply is heard in full, that a reply does not
start before its prebuffer. Times come from one clock (CLOCK_MONOTONIC); the
recorder places heard samples on it within its ~10 ms latency.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from device.bench.clockedcard import ClockedCard, SpeakerRecording
from device.core.audioformat import AudioFormat
from device.core.config import AudioConfig
from device.drivers.playback import Playback
from tests.integration.audiorig import Events, sound_spans
from tests.support import sine

pytestmark = pytest.mark.realtime

CHUNK_MS = 62.5
CLOCK_ERROR_MS = 15.0  # the recorder's latency plus the sink's rendering step: how exactly "heard at" is known
TAIL_S = 0.5  # recording after the last event: what the card still had would be heard by then
# PulseAudio's null sink loses up to ~10 ms whenever a stream (re)starts, whatever the client: aplay and
# pacat alike were heard 1.490-1.4997 s of a 1.5 s tone here. Heard durations allow that per stretch.
START_LOSS_S = 0.012


@contextmanager
def playing(card: ClockedCard, rate_hz: int, **cfg: object) -> Iterator[tuple[Playback, Events, SpeakerRecording]]:
    """A playback worker on the card's speaker in ``pcm_<rate_hz>``, with the speaker's monitor recorded."""
    events = Events()
    audio = AudioConfig(playback_device=card.speaker_device, volume_percent=100, **cfg)  # type: ignore[arg-type]
    with card.record_speaker() as rec:
        pb = Playback(audio, events)
        pb.start()
        try:
            pb.set_format(AudioFormat("pcm", rate_hz))
            events.wait_for(lambda e: e.kind == "opened" and e.rate_hz == rate_hz)
            yield pb, events, rec
        finally:
            pb.stop()


def heard_spans_s(rec: SpeakerRecording) -> list[tuple[float, float]]:
    """(start, end) on CLOCK_MONOTONIC of every stretch of sound the speaker played."""
    return [(rec.time_of(a), rec.time_of(b)) for a, b in sound_spans(rec.pcm, rec.rate_hz)]


@pytest.mark.parametrize("rate_hz", [16000, 22050, 44100])
def test_at_most_one_chunk_is_heard_after_an_interruption(clocked_card: ClockedCard, rate_hz: int) -> None:
    person = threading.Event()  # never set: its waits are the scripted interruption's timing
    with playing(clocked_card, rate_hz, pace_realtime=False) as (pb, events, rec):
        pb.write(sine(440, rate_hz, 4.0))
        started = events.kind("reply_started")
        heard_from_s = rec.wait_for_sound(started.t_s - 0.1)
        person.wait(0.6)  # part of the reply is heard; where it is cut does not matter
        report = pb.flush()
        events.kind("flushed")
        person.wait(TAIL_S)
        rec.stop()
    spans = heard_spans_s(rec)
    assert len(spans) == 1, spans  # one stretch: nothing of the old reply resumed later
    start_s, end_s = spans[0]
    assert start_s == pytest.approx(heard_from_s, abs=0.002)
    heard_after_ms = (end_s - report.requested_at_s) * 1000
    print(f"{rate_hz} Hz: {heard_after_ms:.1f} ms of the old reply heard after the interruption")
    assert heard_after_ms <= CHUNK_MS + CLOCK_ERROR_MS
    assert end_s - start_s < 4.0 - 1.0  # it was really cut, not played out


def test_a_reply_arriving_slower_than_real_time_is_heard_in_full(clocked_card: ClockedCard) -> None:
    rate_hz = 16000
    reply = sine(440, rate_hz, 2.0)
    piece = len(reply) // 20  # 100 ms pieces, one every 150 ms: the speaker runs dry between them
    network = threading.Event()  # never set: the slow network's pace
    with playing(clocked_card, rate_hz, pace_realtime=False) as (pb, events, rec):
        for i in range(0, len(reply), piece):
            pb.write(reply[i : i + piece])
            network.wait(0.15)
        pb.end_of_input()
        total = len(reply) // 2
        # a gap longer than the device's buffer ends a reply and the next piece starts another: all frames count
        events.wait_for(
            lambda e: e.kind == "reply_finished" and sum(f.frames for f in events.of("reply_finished")) == total
        )
        finished = events.of("reply_finished")[-1]
        network.wait(TAIL_S)
        rec.stop()
        stats = pb.stats
    spans = heard_spans_s(rec)
    heard_s = sum(e - s for s, e in spans)
    print(f"{len(spans)} stretches, {heard_s:.3f} s heard, underruns {stats['underruns']}")
    assert 2.0 - START_LOSS_S * len(spans) <= heard_s <= 2.0 + 0.002  # every piece, none lost or repeated
    assert stats["underruns"] >= 1
    assert stats["device_errors"] == 0  # it ran dry, counted, and went on
    assert spans[-1][1] <= finished.t_s + CLOCK_ERROR_MS / 1000  # finished only once all of it was heard


def test_a_reply_is_not_heard_before_its_prebuffer(clocked_card: ClockedCard) -> None:
    rate_hz = 16000
    prebuffer_ms = 400
    with playing(clocked_card, rate_hz, pace_realtime=False, prebuffer_ms=prebuffer_ms) as (pb, events, rec):
        arrived_s = rec.time_of(len(rec.pcm) // 2)  # now, on the recorder's clock
        pb.write(sine(440, rate_hz, 0.1))  # less than the prebuffer and no end of input: it waits, then plays
        events.kind("reply_finished")
        threading.Event().wait(TAIL_S)
        rec.stop()
    spans = heard_spans_s(rec)
    assert len(spans) == 1
    assert (spans[0][0] - arrived_s) * 1000 >= prebuffer_ms - CLOCK_ERROR_MS
    assert 0.1 - START_LOSS_S <= spans[0][1] - spans[0][0] <= 0.1 + 0.002


@pytest.mark.parametrize("pace_realtime", [False, True], ids=["unpaced", "pace_realtime"])
def test_a_reply_is_heard_whole_at_the_card_rate_with_or_without_pacing(
    clocked_card: ClockedCard, pace_realtime: bool
) -> None:
    rate_hz = 22050
    with playing(clocked_card, rate_hz, pace_realtime=pace_realtime) as (pb, events, rec):
        pb.write(sine(440, rate_hz, 1.5))
        pb.end_of_input()
        finished = events.kind("reply_finished")
        threading.Event().wait(TAIL_S)
        rec.stop()
    spans = heard_spans_s(rec)
    assert len(spans) == 1, spans  # no gap, no repeat
    assert 1.5 - START_LOSS_S <= spans[0][1] - spans[0][0] <= 1.5 + 0.002
    assert spans[0][1] <= finished.t_s + CLOCK_ERROR_MS / 1000
