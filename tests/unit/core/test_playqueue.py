"""The play queue: when replies and earcons start, finish and are cut, on a clock the test moves."""

from __future__ import annotations

import pytest

from device.core.audioevents import PlaybackEvent
from device.core.audioformat import AudioFormat
from device.core.convert import ulaw_decode
from device.core.playqueue import Chunk, PlayQueue, PlayState

RATE = 16000
CHUNK_FRAMES = 1000  # 62.5 ms at 16 kHz
CUES = {"listening": b"\x01\x00" * 1500, "done": b"\x02\x00" * 500, "error": b""}


def cue_pcm(name: str, rate_hz: int) -> bytes:
    return CUES[name] * (rate_hz // RATE)  # a "conversion" the tests can see


def frames(n: int, value: int = 5) -> bytes:
    return bytes([value, 0]) * n


def opened(ring_s: float = 5.0, prebuffer_ms: float = 125) -> PlayQueue:
    q = PlayQueue(ring_s=ring_s, prebuffer_ms=prebuffer_ms, cue_pcm=cue_pcm)
    q.device_opened(RATE)
    return q


def kinds(q: PlayQueue) -> list[str]:
    return [e.kind for e in q.take_events()]


def events_of(q: PlayQueue, kind: str) -> list[PlaybackEvent]:
    return [e for e in q.take_events() if e.kind == kind]


def write_all(q: PlayQueue, now_s: float) -> list[Chunk]:
    """The speaker takes every chunk the queue hands out at ``now_s``."""
    out = []
    while (chunk := q.next_chunk(now_s)) is not None:
        q.wrote(chunk, len(chunk.data) // 2, True, now_s)
        out.append(chunk)
    return out


def next_chunk(q: PlayQueue, now_s: float) -> Chunk:
    chunk = q.next_chunk(now_s)
    assert chunk is not None, "the queue had nothing to write"
    return chunk


def playing_reply(n_frames: int = 4000, now_s: float = 0.0) -> PlayQueue:
    """A reply of ``n_frames`` whose first chunk has been written."""
    q = opened()
    q.write(frames(n_frames), now_s)
    chunk = next_chunk(q, now_s)
    q.wrote(chunk, CHUNK_FRAMES, True, now_s)
    q.take_events()
    return q


def served(q: PlayQueue, now_s: float, dropped_frames: int = 0) -> PlaybackEvent:
    """The driver serves the pending flush; the ``flushed`` event."""
    req = q.start_flush()
    assert req is not None
    q.flush_done(req, dropped_frames, now_s)
    return events_of(q, "flushed")[0]


# -- a new queue ----------------------------------------------------------------------------------


def test_a_new_queue_is_idle() -> None:
    assert opened().state is PlayState.IDLE


def test_a_new_queue_is_not_playing() -> None:
    assert not opened().is_playing


def test_an_idle_queue_has_nothing_due() -> None:
    assert opened().next_due_s(0.0, None) is None


# -- prebuffering -------------------------------------------------------------------------------


def test_audio_arriving_while_idle_is_prebuffered() -> None:
    q = opened()
    q.write(frames(1000), 0.0)
    assert q.state is PlayState.PREBUFFERING


def test_a_reply_waits_for_its_prebuffer() -> None:
    q = opened()
    q.write(frames(1000), 0.0)  # 62.5 ms of 125
    assert q.next_chunk(0.0) is None


def test_a_reply_starts_once_the_prebuffer_is_queued() -> None:
    q = opened()
    q.write(frames(1000), 0.0)
    q.write(frames(1000), 0.01)
    chunk = q.next_chunk(0.01)
    assert chunk == Chunk(frames(1000), is_reply=True)
    assert q.state is PlayState.REPLY


def test_a_short_reply_is_due_when_its_prebuffer_time_has_passed() -> None:
    q = opened()
    q.write(frames(500), 1.0)
    assert q.next_due_s(1.1, None) == pytest.approx(0.025)


def test_a_short_reply_starts_when_its_prebuffer_time_has_passed() -> None:
    q = opened()
    q.write(frames(500), 1.0)
    assert q.next_chunk(1.124) is None
    assert q.next_chunk(1.125) == Chunk(frames(500), is_reply=True)


def test_the_prebuffer_time_counts_from_the_audio_arrival() -> None:
    q = opened()
    q.write(frames(500), 1.0, received_at_s=0.9)
    assert q.next_chunk(1.03) is not None  # 130 ms after it arrived, 30 ms after it was written


def test_end_of_input_starts_a_short_reply_at_once() -> None:
    q = opened()
    q.write(frames(500), 0.0)
    q.end_of_input()
    assert q.next_chunk(0.0) is not None


def test_new_audio_cancels_end_of_input() -> None:
    q = opened()
    q.end_of_input()
    q.write(frames(500), 0.0)
    assert q.next_chunk(0.0) is None


def test_a_nearly_full_ring_starts_the_reply_at_once() -> None:
    q = opened(ring_s=0.1)  # 1600 frames: less than a second free, no use waiting for more
    q.write(frames(1000), 0.0)
    assert q.next_chunk(0.0) is not None


# -- a reply ------------------------------------------------------------------------------------


def test_a_reply_is_handed_out_in_chunks_of_62_5_ms() -> None:
    q = opened()
    q.write(frames(2500), 0.0)
    assert [len(c.data) // 2 for c in write_all(q, 0.0)] == [1000, 1000, 500]


def test_reply_started_measures_from_the_audio_arrival_to_the_first_write() -> None:
    q = opened()
    q.write(frames(500), 1.0, received_at_s=0.9)
    chunk = next_chunk(q, 1.2)
    q.wrote(chunk, 300, False, 1.25)
    (started,) = events_of(q, "reply_started")
    assert (started.reply_id, started.frames, started.t_s) == (1, 300, 1.25)
    assert started.latency_ms == pytest.approx(350.0)


def test_reply_started_is_emitted_once_per_reply() -> None:
    q = opened()
    q.write(frames(4000), 0.0)
    write_all(q, 0.0)
    assert kinds(q) == ["reply_started"]


def test_a_reply_is_not_finished_while_the_device_still_plays_it() -> None:
    q = opened()
    q.write(frames(2000), 0.0)
    write_all(q, 0.0)
    q.take_events()
    assert q.next_due_s(0.0, 800) == pytest.approx(800 / RATE)
    assert q.take_events() == []


def test_a_reply_finishes_when_the_ring_is_empty_and_the_device_has_played_it() -> None:
    q = opened()
    q.write(frames(2500), 0.0)
    write_all(q, 0.0)
    q.take_events()
    assert q.awaits_drain
    assert q.next_due_s(0.2, 0) == 0.0
    (finished,) = events_of(q, "reply_finished")
    assert (finished.reply_id, finished.frames, finished.t_s) == (1, 2500, 0.2)


def test_a_finished_reply_leaves_the_queue_idle() -> None:
    q = opened()
    q.write(frames(2000), 0.0)
    write_all(q, 0.0)
    q.next_due_s(0.2, 0)
    assert q.state is PlayState.IDLE and not q.is_playing


def test_reply_finished_is_emitted_once() -> None:
    q = opened()
    q.write(frames(2000), 0.0)
    write_all(q, 0.0)
    q.next_due_s(0.2, 0)
    q.take_events()
    q.next_due_s(0.3, 0)
    assert q.take_events() == []


def test_audio_arriving_before_the_device_drained_continues_the_same_reply() -> None:
    q = opened()
    q.write(frames(2000), 0.0)
    write_all(q, 0.0)
    q.write(frames(1000), 0.1)  # a slow network: the ring ran empty, the speaker did not
    q.next_due_s(0.1, 0)
    assert q.next_chunk(0.1) == Chunk(frames(1000), is_reply=True)
    assert kinds(q) == ["reply_started"]  # only the first one: the same reply


def test_a_second_reply_gets_the_next_id() -> None:
    q = opened()
    for _ in range(2):
        q.write(frames(2000), 0.0)
        write_all(q, 0.0)
        q.next_due_s(0.0, 0)
    assert [e.reply_id for e in q.take_events() if e.kind == "reply_finished"] == [1, 2]
    assert q.stats["replies"] == 2


def test_chunks_and_frames_written_are_counted() -> None:
    q = opened()
    q.write(frames(2000), 0.0)
    chunk = next_chunk(q, 0.0)
    q.wrote(chunk, 400, False, 0.0)
    q.wrote(chunk, 600, True, 0.0)
    assert (q.stats["chunks_written"], q.stats["frames_written"]) == (1, 1000)


# -- earcons --------------------------------------------------------------------------------------


def test_an_earcon_is_handed_out_as_cue_chunks() -> None:
    q = opened()
    q.request_earcon("listening")
    chunks = write_all(q, 0.0)
    assert b"".join(c.data for c in chunks) == CUES["listening"]
    assert not any(c.is_reply for c in chunks)


def test_an_earcon_starts_in_the_earcon_state() -> None:
    q = opened()
    q.request_earcon("done")
    q.next_chunk(0.0)
    assert q.state is PlayState.EARCON
    assert [(e.kind, e.detail) for e in q.take_events()] == [("earcon_started", "done")]


def test_an_earcon_finishes_only_when_heard() -> None:
    q = opened()
    q.request_earcon("done")
    write_all(q, 0.0)
    q.take_events()
    assert q.next_due_s(0.0, 300) == pytest.approx(300 / RATE)
    assert q.take_events() == []
    assert q.next_due_s(0.1, 0) == 0.0
    assert [(e.kind, e.detail, e.t_s) for e in q.take_events()] == [("earcon_finished", "done", 0.1)]
    assert q.state is PlayState.IDLE


def test_back_to_back_earcons_finish_the_first_as_the_second_starts() -> None:
    q = opened()
    q.request_earcon("done")
    q.request_earcon("listening")
    write_all(q, 0.0)
    q.next_due_s(0.0, 0)
    assert [(e.kind, e.detail) for e in q.take_events()] == [
        ("earcon_started", "done"),
        ("earcon_finished", "done"),
        ("earcon_started", "listening"),
        ("earcon_finished", "listening"),
    ]


def test_each_earcon_played_is_counted() -> None:
    q = opened()
    q.request_earcon("done")
    q.request_earcon("done")
    write_all(q, 0.0)
    assert q.stats["earcons"] == 2


def test_an_earcon_goes_before_a_reply_that_has_not_started() -> None:
    q = opened()
    q.write(frames(3000), 0.0)
    q.request_earcon("done")
    chunks = write_all(q, 0.0)
    assert [c.is_reply for c in chunks] == [False, True, True, True]


def test_a_reply_follows_its_earcon_seamlessly() -> None:
    q = opened()
    q.request_earcon("done")
    q.write(frames(3000), 0.0)
    write_all(q, 0.0)
    assert kinds(q) == ["earcon_started", "earcon_finished", "reply_started"]


def test_a_reply_waiting_behind_an_earcon_is_due_at_its_prebuffer_time() -> None:
    q = opened()
    q.request_earcon("done")
    write_all(q, 0.0)
    q.write(frames(100), 0.0)  # short: waits for its prebuffer time, maybe before the cue is heard
    assert q.next_due_s(0.1, 4000) == pytest.approx(0.025)


def test_an_earcon_asked_for_during_a_reply_waits_for_the_reply_to_finish() -> None:
    q = playing_reply(3000)
    q.request_earcon("done")
    chunks = write_all(q, 0.0)
    assert all(c.is_reply for c in chunks)
    q.next_due_s(0.0, 0)
    assert q.next_chunk(0.0) == Chunk(CUES["done"], is_reply=False)
    assert kinds(q) == ["reply_finished", "earcon_started"]


def test_an_empty_earcon_finishes_without_a_chunk() -> None:
    q = opened()
    q.request_earcon("error")
    assert q.next_chunk(0.0) is None
    q.next_due_s(0.0, 0)
    assert kinds(q) == ["earcon_started", "earcon_finished"]


def test_an_earcon_is_playing_as_soon_as_it_is_asked_for() -> None:
    q = opened()
    q.request_earcon("done")
    assert q.is_playing


# -- flush in every state ------------------------------------------------------------------------


def test_a_flush_when_idle_is_reported_as_nothing_playing() -> None:
    report = opened().flush(2.0)
    assert (report.requested_at_s, report.reply_id, report.discarded_frames, report.was_playing) == (2.0, 0, 0, False)


def test_a_flush_when_idle_is_still_served_and_reported() -> None:
    q = opened()
    q.flush(2.0)
    flushed = served(q, 2.001)
    assert (flushed.reply_id, flushed.frames, flushed.dropped_frames) == (0, 0, 0)
    assert flushed.latency_ms == pytest.approx(1.0)


def test_a_flush_waits_in_the_flushed_state_until_served() -> None:
    q = playing_reply()
    q.flush(0.0)
    assert q.state is PlayState.FLUSHED


def test_nothing_is_handed_out_until_the_flush_is_served() -> None:
    q = playing_reply()
    q.flush(0.0)
    q.write(frames(4000), 0.0)
    assert q.next_chunk(1.0) is None


def test_a_flush_while_prebuffering_discards_the_waiting_reply() -> None:
    q = opened()
    q.write(frames(700), 0.0)
    report = q.flush(0.05)
    assert (report.reply_id, report.discarded_frames, report.was_playing) == (0, 700, True)
    served(q, 0.05)
    assert q.state is PlayState.IDLE and q.stats["ring_frames"] == 0


def test_a_flush_mid_reply_reports_the_reply_and_what_it_discarded() -> None:
    q = playing_reply(4000)
    report = q.flush(0.1)
    assert (report.reply_id, report.discarded_frames, report.reply_frames_written) == (1, 3000, 1000)
    assert report.was_playing


def test_the_flushed_event_counts_what_the_ring_and_the_device_dropped() -> None:
    q = playing_reply(4000)
    q.flush(0.1)
    flushed = served(q, 0.11, dropped_frames=800)  # the device still held 800 frames
    assert (flushed.reply_id, flushed.dropped_frames, flushed.rate_hz) == (1, 3800, RATE)


def test_the_flushed_event_counts_the_chunk_written_after_the_request() -> None:
    q = playing_reply(4000)
    chunk = next_chunk(q, 0.0)  # in flight when the flush arrives
    q.flush(0.1)
    q.wrote(chunk, CHUNK_FRAMES, True, 0.1)
    assert served(q, 0.11).frames == CHUNK_FRAMES


def test_a_flushed_reply_does_not_also_finish() -> None:
    q = playing_reply()
    q.flush(0.1)
    served(q, 0.1)
    q.next_due_s(0.2, 0)
    assert q.take_events() == []


def test_a_served_flush_leaves_the_queue_idle() -> None:
    q = playing_reply()
    q.flush(0.1)
    served(q, 0.1)
    assert q.state is PlayState.IDLE and not q.is_playing


def test_a_cut_reply_is_playing_until_the_flush_is_served() -> None:
    q = playing_reply()
    q.flush(0.1)
    assert q.is_playing


def test_a_flush_cuts_the_earcon_and_the_queued_ones_without_earcon_finished() -> None:
    q = opened()
    q.request_earcon("listening")
    q.next_chunk(0.0)
    q.request_earcon("done")
    q.take_events()
    q.flush(0.1)
    served(q, 0.1)
    assert q.next_chunk(0.2) is None
    q.next_due_s(0.2, 0)
    assert q.take_events() == []
    assert q.state is PlayState.IDLE


def test_a_second_flush_before_the_first_is_served_adds_to_it() -> None:
    q = playing_reply(4000)
    q.flush(0.1)
    q.write(frames(600), 0.12)
    second = q.flush(0.15)
    assert (second.requested_at_s, second.reply_id, second.discarded_frames) == (0.15, 1, 3600)
    flushed = served(q, 0.2)
    assert flushed.dropped_frames == 3600
    assert flushed.latency_ms == pytest.approx(100.0)  # from the first request
    assert q.start_flush() is None  # served once
    assert q.stats["flushes"] == 2


def test_audio_written_after_a_flush_starts_the_next_reply() -> None:
    q = playing_reply()
    q.flush(1.0)
    q.write(frames(500), 1.01, received_at_s=1.0)  # before the driver served the flush
    served(q, 1.02)
    assert q.state is PlayState.PREBUFFERING
    assert q.next_chunk(1.125) is not None  # its prebuffer time counts from its arrival
    chunk = Chunk(frames(500), is_reply=True)
    q.wrote(chunk, 500, True, 1.125)
    (started,) = events_of(q, "reply_started")
    assert started.reply_id == 2 and started.latency_ms == pytest.approx(125.0)


def test_audio_arriving_while_a_flush_is_served_starts_a_new_reply() -> None:
    q = playing_reply()
    q.flush(1.0)
    req = q.start_flush()
    assert req is not None
    q.write(frames(500), 1.01)  # the driver is dropping the device's buffer meanwhile
    q.flush_done(req, 0, 1.02)
    assert q.next_chunk(1.135) is not None


def test_a_flush_cuts_an_odd_trailing_byte() -> None:
    q = opened()
    q.write(b"\x01\x02\x03", 0.0)
    q.flush(0.0)
    served(q, 0.0)
    q.write(b"\x04", 0.0)  # alone: half a frame, not the partner of the byte before the flush
    assert q.stats["ring_frames"] == 0


# -- formats --------------------------------------------------------------------------------------


def test_the_same_format_again_changes_nothing() -> None:
    q = opened()
    assert q.set_format(AudioFormat("pcm", RATE), 0.0) is False
    assert q.take_format_change() is None


def test_a_format_change_is_taken_once_by_the_driver() -> None:
    q = opened()
    q.set_format(AudioFormat("pcm", 22050), 0.0)
    assert q.take_format_change() == AudioFormat("pcm", 22050)
    assert q.take_format_change() is None


def test_a_format_change_while_idle_flushes_nothing() -> None:
    q = opened()
    q.set_format(AudioFormat("pcm", 22050), 0.0)
    assert q.start_flush() is None


def test_a_format_change_mid_reply_flushes_it() -> None:
    q = playing_reply()
    q.set_format(AudioFormat("pcm", 22050), 0.1)
    assert q.state is PlayState.FLUSHED


def test_the_flush_of_a_format_change_reports_the_old_rate() -> None:
    q = playing_reply()
    q.set_format(AudioFormat("pcm", 22050), 0.1)
    assert served(q, 0.1).rate_hz == RATE


def test_nothing_is_handed_out_until_the_device_is_reopened_in_the_new_format() -> None:
    q = opened()
    q.set_format(AudioFormat("pcm", 22050), 0.0)
    q.write(frames(4000), 0.0)
    assert q.next_chunk(0.0) is None


def test_chunks_after_a_format_change_are_62_5_ms_at_the_new_rate() -> None:
    q = opened()
    q.set_format(AudioFormat("pcm", 22050), 0.0)
    q.write(frames(4000), 0.0)
    q.take_format_change()
    q.device_opened(22050)
    chunk = q.next_chunk(0.0)
    assert chunk is not None and len(chunk.data) == 2 * 1378


def test_a_format_change_drops_a_cue_that_is_written_and_still_sounding_silently() -> None:
    q = opened()
    q.request_earcon("done")
    write_all(q, 0.0)
    q.take_events()
    q.set_format(AudioFormat("pcm", 22050), 0.0)
    assert q.start_flush() is None  # nothing of it is left to cut: reopening the device ends it
    q.take_format_change()
    assert q.state is PlayState.IDLE and q.take_events() == []


def test_a_format_change_mid_cue_flushes_it() -> None:
    q = opened()
    q.request_earcon("listening")
    q.next_chunk(0.0)
    q.set_format(AudioFormat("pcm", 22050), 0.0)
    assert q.state is PlayState.FLUSHED


def test_queued_earcons_survive_a_format_change_and_play_at_the_new_rate() -> None:
    q = opened()
    q.request_earcon("done")
    q.set_format(AudioFormat("pcm", 32000), 0.0)
    q.take_format_change()
    q.device_opened(32000)
    assert q.next_chunk(0.0) == Chunk(CUES["done"] * 2, is_reply=False)


def test_ulaw_is_decoded_into_the_ring() -> None:
    q = opened()
    q.set_format(AudioFormat("ulaw", 8000), 0.0)
    q.take_format_change()
    q.device_opened(8000)
    q.write(bytes(range(200)), 0.0)
    q.end_of_input()
    chunk = q.next_chunk(0.0)
    assert chunk is not None and chunk.data == ulaw_decode(bytes(range(200)))


def test_an_odd_byte_of_pcm_waits_for_its_partner() -> None:
    q = opened()
    q.write(b"\x01", 0.0)
    q.write(b"\x02\x03", 0.0)
    q.write(b"\x04", 0.0)
    q.end_of_input()
    assert q.next_chunk(0.0) == Chunk(b"\x01\x02\x03\x04", is_reply=True)


# -- the ring and the device -------------------------------------------------------------------


def test_audio_beyond_the_ring_is_discarded_and_reported() -> None:
    q = opened(ring_s=0.1)  # 1600 frames
    q.write(frames(2000), 3.0)
    (overflow,) = events_of(q, "overflow")
    assert (overflow.frames, overflow.t_s, overflow.rate_hz) == (400, 3.0, RATE)
    assert q.stats["overflow_frames"] == 400


def test_a_failed_device_discards_what_was_queued_for_it() -> None:
    q = opened()
    q.write(frames(700), 0.0)
    q.request_earcon("done")
    q.device_failed()
    assert q.stats["dropped_no_device_frames"] == 700
    assert not q.is_playing and q.state is PlayState.IDLE


def test_audio_for_a_failed_device_is_refused_and_counted() -> None:
    q = opened()
    q.device_failed()
    assert q.write(frames(300), 0.0) is False
    assert q.stats["dropped_no_device_frames"] == 300


def test_audio_is_taken_again_once_the_device_reopened() -> None:
    q = opened()
    q.device_failed()
    q.device_opened(RATE)
    assert q.write(frames(300), 0.0) is True


def test_a_flush_pending_when_the_device_fails_is_still_served() -> None:
    q = playing_reply()
    q.flush(0.1)
    q.device_failed()
    assert served(q, 0.2).reply_id == 1


def test_the_first_open_is_not_a_reopen() -> None:
    assert opened().stats["reopen_count"] == 0


def test_an_open_after_a_failure_is_a_reopen() -> None:
    q = opened()
    q.device_failed()
    q.device_opened(RATE)
    assert (q.stats["reopen_count"], q.stats["device_errors"]) == (1, 1)


def test_an_underrun_inside_a_reply_is_counted_and_reported() -> None:
    q = playing_reply()
    chunk = next_chunk(q, 0.0)
    q.underrun(chunk, 0.5)
    (underrun,) = events_of(q, "underrun")
    assert (underrun.reply_id, underrun.frames) == (1, CHUNK_FRAMES)
    assert q.stats["underruns"] == 1


def test_running_dry_before_a_reply_is_no_underrun() -> None:
    q = opened()
    q.write(frames(2000), 0.0)
    chunk = next_chunk(q, 0.0)
    q.underrun(chunk, 0.0)  # nothing of the reply written yet: the speaker was idle
    assert q.stats["underruns"] == 0 and q.take_events() == []


def test_running_dry_during_a_cue_is_no_underrun() -> None:
    q = opened()
    q.request_earcon("listening")
    chunk = next_chunk(q, 0.0)
    q.underrun(chunk, 0.0)
    assert q.stats["underruns"] == 0


def test_reply_chunks_carry_their_stream_position_and_a_flush_skips_what_it_cleared() -> None:
    """The position lets the screen match an audio event's characters with the chunk that plays them."""
    q = opened()
    assert q.stream_position == 0
    q.write(frames(2500), 0.0)
    assert q.stream_position == 2500
    first = next_chunk(q, 1.0)
    q.wrote(first, CHUNK_FRAMES, True, 1.0)
    second = next_chunk(q, 1.0)
    assert (first.position, second.position) == (0, 1000)
    q.flush(1.1)  # 500 frames still in the ring: never played
    assert q.start_flush() is not None
    q.write(frames(1200), 1.2)
    assert q.stream_position == 3700
    assert next_chunk(q, 2.0).position == 2500  # the next reply starts where the new audio went
