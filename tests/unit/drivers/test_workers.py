"""Capture and playback against a scripted backend, for what `type file` devices cannot do.

A real sound card can vanish mid-read (USB unplugged), overrun, underrun or
lack a mixer switch; the fakes of ``tests/fakeaudio.py`` stand in for ALSA at
exactly that edge. Everything above it — the workers, ring, flush, backoff —
is the real code.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable

import pytest

from device.core.audioevents import Block, CaptureEvent, PlaybackEvent
from device.core.config import AudioConfig
from device.core.errors import AudioError
from device.drivers.capture import Capture
from device.drivers.playback import Playback
from tests.fakeaudio import FakeBackend, FakeCapture, FakeMixer, FakePlayback
from tests.support import Collector

TIMEOUT_S = 10.0
BLOCK = 8000


class Q(Collector[object]):
    """Thread-safe collector with waiting."""

    def wait_for(self, pred: Callable[[list[object]], bool]) -> None:
        self.wait_until(pred, TIMEOUT_S)

    def kinds(self) -> list[str]:
        return [getattr(i, "kind", "?") for i in self.matching(lambda i: True)]


# -- capture ------------------------------------------------------------------


def test_mic_unplugged_mid_run_is_reopened_and_blocks_go_on() -> None:
    a, b, c = (bytes([n]) * BLOCK for n in (1, 2, 3))
    first = FakeCapture([a[:3000], a[3000:], None, b, AudioError("microphone 'x': No such device")])
    second = FakeCapture([c])
    backend = FakeBackend(captures=[first, AudioError("microphone 'x': not found"), second])
    blocks: queue.Queue[Block] = queue.Queue()
    events = Q()
    cap = Capture(AudioConfig(reopen_max_s=0.3), blocks.put, on_event=events, backend=backend)
    cap.start()
    try:
        got = [blocks.get(timeout=TIMEOUT_S) for _ in range(3)]
    finally:
        cap.stop()
    assert [g.pcm for g in got] == [a, b, c]
    assert [g.seq for g in got] == [0, 1, 2]
    assert events.kinds()[:5] == ["opened", "overrun", "device_error", "device_error", "opened"]
    assert first.closed and second.closed
    assert cap.stats == {"blocks": 3, "overruns": 1, "reopen_count": 1, "device_errors": 2, "open": 0}
    lost = [e for e in events.items if isinstance(e, CaptureEvent) and e.kind == "device_error"]
    assert "No such device" in lost[0].detail


def test_missing_mic_is_retried_with_capped_backoff_not_a_busy_loop() -> None:
    backend = FakeBackend(captures=[AudioError("microphone 'x': not found")])
    events = Q()
    cap = Capture(AudioConfig(reopen_max_s=0.1), lambda b: None, on_event=events, backend=backend)
    cap.start()
    try:
        events.wait_for(lambda items: len(items) >= 4)
    finally:
        cap.stop()
    errors = [e for e in events.items if isinstance(e, CaptureEvent)][:4]
    assert [e.attempt for e in errors] == [1, 2, 3, 4]
    for e, nxt in itertools.pairwise(errors):
        assert e.retry_in_s is not None and 0 < e.retry_in_s <= 0.1
        assert nxt.t_s - e.t_s >= e.retry_in_s * 0.99  # it waited before trying again
    assert cap.alive is False


# -- playback -------------------------------------------------------------------


def playback(backend: FakeBackend, events: Q, **cfg: object) -> Playback:
    settings: dict[str, object] = {"volume_percent": 100, "earcons": False, **cfg}
    pb = Playback(AudioConfig(**settings), events, backend=backend)  # type: ignore[arg-type]
    pb.start()
    return pb


def finished(n: int) -> Callable[[list[object]], bool]:
    return lambda items: sum(1 for e in items if getattr(e, "kind", "") == "reply_finished") >= n


def test_underrun_inside_a_reply_is_counted_and_nothing_is_lost() -> None:
    speaker = FakePlayback(16000, {1: -1, 3: -1})  # ran dry before the reply, then inside it
    events = Q()
    pb = playback(FakeBackend(playbacks=[speaker]), events)
    reply = bytes(range(256)) * 32  # 8192 bytes
    try:
        pb.write(reply)
        pb.end_of_input()
        events.wait_for(finished(1))
    finally:
        pb.stop()
    assert bytes(speaker.data) == reply
    assert pb.stats["underruns"] == 1
    underruns = [e for e in events.items if isinstance(e, PlaybackEvent) and e.kind == "underrun"]
    assert len(underruns) == 1 and underruns[0].frames == 1000


def test_flush_arriving_during_a_write_costs_at_most_that_chunk() -> None:
    holder: list[Playback] = []

    def flush_now() -> None:  # the interruption lands while ALSA is taking chunk 3
        holder[0].flush()

    speaker = FakePlayback(16000, {3: flush_now})
    events = Q()
    pb = playback(FakeBackend(playbacks=[speaker]), events)
    holder.append(pb)
    try:
        pb.write(bytes(2 * 16000))
        events.wait_for(lambda items: "flushed" in [getattr(e, "kind", "") for e in items])
        pb.write(b"\x01\x00" * 500)
        pb.end_of_input()
        events.wait_for(finished(1))
    finally:
        pb.stop()
    flushed = next(e for e in events.items if isinstance(e, PlaybackEvent) and e.kind == "flushed")
    assert flushed.frames == 1000  # chunk 3, in flight when the request came
    assert bytes(speaker.data) == bytes(2 * 3000) + b"\x01\x00" * 500
    assert speaker.drops == 1
    assert flushed.dropped_frames == 16000 - 3000


def test_speaker_lost_mid_reply_discards_stale_audio_and_reopens() -> None:
    first = FakePlayback(16000, {2: AudioError("speaker 'x' stopped taking audio: No such device")})  # unplugged
    second = FakePlayback(16000)
    events = Q()
    pb = playback(FakeBackend(playbacks=[first, second]), events, reopen_max_s=0.1)
    try:
        pb.write(bytes(2 * 8000))
        events.wait_for(lambda items: "device_error" in [getattr(e, "kind", "") for e in items])
        events.wait_for(lambda items: [getattr(e, "kind", "") for e in items].count("opened") == 2)
        pb.write(b"\x02\x00" * 1000)
        pb.end_of_input()
        events.wait_for(finished(1))
    finally:
        pb.stop()
    assert bytes(first.data) == bytes(2 * 1000)
    assert bytes(second.data) == b"\x02\x00" * 1000  # nothing of the stale reply comes out late
    assert pb.stats["dropped_no_device_frames"] >= 8000 - 2000
    assert pb.stats["reopen_count"] == 1


def test_mixer_control_sets_volume_and_mute_instead_of_software_gain() -> None:
    speaker, mixer = FakePlayback(16000), FakeMixer()
    events = Q()
    pb = playback(FakeBackend(playbacks=[speaker], mixer=mixer), events, mixer_control="PCM", volume_percent=30)
    try:
        pb.set_volume(55)
        pb.set_muted(True)
        pb.write(b"\x10\x27" * 1000)
        pb.end_of_input()
        events.wait_for(finished(1))
    finally:
        pb.stop()
    assert mixer.volume == [30, 55, 55]
    assert mixer.mute == [False, False, True]
    assert bytes(speaker.data) == b"\x10\x27" * 1000  # untouched: the card does the volume


def test_mixer_without_switch_mutes_in_software() -> None:
    speaker, mixer = FakePlayback(16000), FakeMixer(has_switch=False)
    events = Q()
    pb = playback(FakeBackend(playbacks=[speaker], mixer=mixer), events, mixer_control="Speaker")
    try:
        pb.set_muted(True)
        pb.write(b"\x10\x27" * 1000)
        pb.end_of_input()
        events.wait_for(finished(1))
    finally:
        pb.stop()
    assert bytes(speaker.data) == bytes(2000)


def test_missing_mixer_control_falls_back_to_software_volume() -> None:
    speaker = FakePlayback(16000)
    events = Q()
    backend = FakeBackend(playbacks=[speaker], mixer=AudioError("mixer control 'PCM' on 'default': not found"))
    pb = playback(backend, events, mixer_control="PCM", volume_percent=50)
    try:
        pb.write(b"\x10\x27" * 1000)  # 10000
        pb.end_of_input()
        events.wait_for(finished(1))
    finally:
        pb.stop()
    assert "mixer_unavailable" in events.kinds()
    assert bytes(speaker.data) == b"\xc4\x09" * 1000  # 2500: 50 % through the software curve


def test_volume_out_of_range_is_refused() -> None:
    pb = Playback(AudioConfig(earcons=False), backend=FakeBackend())
    with pytest.raises(ValueError, match="0 to 100"):
        pb.set_volume(101)


def test_odd_byte_pieces_are_joined_not_lost() -> None:
    speaker = FakePlayback(16000)
    events = Q()
    pb = playback(FakeBackend(playbacks=[speaker]), events)
    data = bytes(range(1, 201)) * 10
    try:
        pb.write(data[:3])
        pb.write(data[3:1001])
        pb.write(data[1001:])
        pb.end_of_input()
        events.wait_for(lambda items: pb.stats["frames_written"] == 1000)
    finally:
        pb.stop()
    assert bytes(speaker.data) == data


def test_overflowing_ring_is_reported_not_silent() -> None:
    speaker = FakePlayback(8000)
    events = Q()
    pb = playback(FakeBackend(playbacks=[FakePlayback(16000), speaker]), events, ring_s=5)
    from device.core.audioformat import AudioFormat

    try:
        pb.set_format(AudioFormat("pcm", 8000))
        pb.write(bytes(2 * 8000 * 6))  # 6 s into a 5 s ring
        events.wait_for(lambda items: "overflow" in [getattr(e, "kind", "") for e in items])
    finally:
        pb.stop()
    overflow = next(e for e in events.items if isinstance(e, PlaybackEvent) and e.kind == "overflow")
    assert overflow.frames == 8000
    assert pb.stats["overflow_frames"] == 8000


def test_format_change_mid_reply_cuts_it_and_reopens_at_the_new_rate() -> None:
    from device.core.audioformat import AudioFormat

    hold = threading.Event()

    def busy_until_released() -> int:  # ALSA busy with chunk 2 while the format changes
        hold.wait(TIMEOUT_S)
        return 0

    old_speaker = FakePlayback(16000, {2: busy_until_released})
    new_speaker = FakePlayback(22050)
    events = Q()
    pb = playback(FakeBackend(playbacks=[old_speaker, new_speaker]), events)
    try:
        pb.write(bytes(2 * 16000))
        events.wait_for(lambda items: "reply_started" in [getattr(e, "kind", "") for e in items])
        pb.set_format(AudioFormat("pcm", 22050))
        hold.set()
        events.wait_for(lambda items: "flushed" in [getattr(e, "kind", "") for e in items])
        events.wait_for(lambda items: [getattr(e, "kind", "") for e in items].count("opened") == 2)
        pb.write(b"\x03\x00" * 22050)
        pb.end_of_input()
        events.wait_for(finished(1))
    finally:
        pb.stop()
    assert bytes(old_speaker.data) == bytes(2 * 1000)  # one chunk, then cut
    assert bytes(new_speaker.data) == b"\x03\x00" * 22050
    assert pb.format == AudioFormat("pcm", 22050)


def test_reply_arriving_before_the_worker_served_a_flush_still_starts_on_its_own() -> None:
    # The interruption and the next reply's first (short) audio both land while ALSA is
    # taking chunk 3: the worker has not dropped yet. The new reply must still start
    # once its prebuffer time has passed, without waiting for more audio or end_of_input.
    holder: list[Playback] = []
    arrived_at: list[float] = []

    def interrupt_then_new_reply() -> None:
        pb = holder[0]
        pb.flush()
        arrived_at.append(time.monotonic())
        pb.write(b"\x01\x00" * 500, received_at_s=arrived_at[0])  # 31 ms, under the 125 ms prebuffer

    speaker = FakePlayback(16000, {3: interrupt_then_new_reply})
    events = Q()
    pb = playback(FakeBackend(playbacks=[speaker]), events)
    holder.append(pb)
    try:
        pb.write(bytes(2 * 16000))
        events.wait_for(finished(1))
    finally:
        pb.stop()
    assert bytes(speaker.data) == bytes(2 * 3000) + b"\x01\x00" * 500
    started = [e for e in events.items if isinstance(e, PlaybackEvent) and e.kind == "reply_started"]
    assert [e.reply_id for e in started] == [1, 2]
    # measured from the audio's arrival, so it includes the prebuffer wait
    assert started[1].latency_ms is not None and started[1].latency_ms >= 125 * 0.99
