"""The echo canceller's reference (what the speaker played, on the microphone's clock) and the capture clock."""

from __future__ import annotations

import array
import itertools
import math

from device.core.echoref import CaptureClock, EchoDelay, EchoReference

RATE = 16000


def ramp(n: int, start: int = 1) -> bytes:
    return array.array("h", range(start, start + n)).tobytes()


def samples(pcm: bytes) -> list[int]:
    return list(array.array("h", pcm))


def test_a_span_gives_what_was_heard_then_and_silence_around_it() -> None:
    ref = EchoReference(keep_s=1.0)
    ref.played(10.0, ramp(160))  # heard from t = 10.000 s for 10 ms
    got = ref.span(10.015, 320)  # 10.015 - 0.020 .. 10.015
    s = samples(got.pcm)
    assert s[:80] == [0] * 80  # before it played
    assert s[80:240] == list(range(1, 161))
    assert s[240:] == [0] * 80  # after
    assert got.played_samples == 160


def test_pieces_a_few_milliseconds_off_continue_the_last_one() -> None:
    ref = EchoReference(keep_s=1.0, snap_s=0.02)
    ref.played(10.0, ramp(160, 1))
    ref.played(10.0 + 0.01 + 0.003, ramp(160, 161))  # the delay read 3 ms late: still continuous
    assert samples(ref.span(10.02, 320).pcm) == list(range(1, 321))
    assert ref.snapped == 1
    ref.played(10.5, ramp(160, 1000))  # a real gap (a new reply): placed where it is heard
    assert samples(ref.span(10.51, 160).pcm) == list(range(1000, 1160))


def test_a_flush_silences_what_the_speaker_never_played() -> None:
    ref = EchoReference(keep_s=1.0)
    ref.played(10.0, ramp(1600))  # 100 ms handed to ALSA
    ref.flushed(10.05)  # ALSA dropped the rest after 50 ms
    s = samples(ref.span(10.1, 1600).pcm)
    assert s[:800] == list(range(1, 801)) and s[800:] == [0] * 800
    ref.played(10.06, ramp(160, 5000))  # what follows starts where it is heard, not after the dropped end
    assert samples(ref.span(10.07, 160).pcm) == list(range(5000, 5160))


def test_the_ring_forgets_what_is_older_than_it_keeps_and_counts_a_late_span() -> None:
    ref = EchoReference(keep_s=0.5)
    ref.played(10.0, ramp(160))
    ref.played(11.0, ramp(160, 500))
    assert samples(ref.span(10.01, 160).pcm) == [0] * 160  # long gone
    assert ref.late_spans == 1
    assert samples(ref.span(11.01, 160).pcm) == list(range(500, 660))


def test_the_ring_wraps_around() -> None:
    ref = EchoReference(keep_s=0.1)  # 1600 samples
    t = 20.0
    for i in range(30):  # 30 pieces of 100 samples, continuous
        ref.played(t + i * 100 / RATE, ramp(100, 1 + 100 * i))
    end = t + 3000 / RATE
    assert samples(ref.span(end, 1000).pcm) == list(range(2001, 3001))


def test_the_capture_clock_keeps_consecutive_blocks_contiguous_despite_jittering_stamps() -> None:
    clock = CaptureClock(drift_ppm=0.0)
    stamps = [100.0 + 0.25 * k + jitter for k, jitter in enumerate([0.004, 0.0, 0.009, 0.002, 0.007, 0.001])]
    ends = [clock.place(k, 4000, s) for k, s in enumerate(stamps)]
    steps = [round(b - a, 6) for a, b in itertools.pairwise(ends)]
    # anchored at the least delayed stamp seen so far: never later than a stamp, 250 ms apart otherwise
    assert all(e <= s + 1e-9 for e, s in zip(ends, stamps, strict=True))
    assert steps.count(0.25) >= 3
    assert clock.reanchors == 0


def test_the_capture_clock_starts_afresh_after_skipped_blocks_or_lost_samples() -> None:
    clock = CaptureClock()
    clock.place(0, 4000, 100.0)
    assert clock.place(5, 4000, 101.25) == 101.25  # the path skipped blocks 1..4
    assert clock.place(6, 4000, 101.6) == 101.6  # 100 ms later than the clock: samples were lost
    assert clock.reanchors == 2


def echo_levels(delay_frames: int, n: int) -> tuple[list[float], list[float]]:
    """A reference with a syllable rhythm, and a microphone that hears it ``delay_frames`` later, 8 dB down."""
    ref = [-25.0 + 15 * math.sin(i / 3.0) + (10 if i % 17 < 5 else -10) for i in range(n)]
    near = [-80.0] * delay_frames + [v - 8 for v in ref[: n - delay_frames]]
    return near, ref


def test_the_echo_delay_is_found_from_the_levels_and_only_when_clear() -> None:
    est = EchoDelay()
    near, ref = echo_levels(14, 600)
    changed = [est.feed(near[i : i + 25], ref[i : i + 25]) for i in range(0, 600, 25)]
    assert any(changed) and est.locked
    assert est.delay_s == 0.14 and est.correlation > 0.9
    quiet = EchoDelay()
    for _i in range(0, 600, 25):  # the speaker silent: nothing to tell
        quiet.feed([-70.0] * 25, [-120.0] * 25)
    assert not quiet.locked and quiet.delay_s == 0.0
