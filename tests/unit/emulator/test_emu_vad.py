"""Turn-taking with real webrtcvad on real speech."""

from __future__ import annotations

import pytest

from device.emulator import pcm
from device.emulator.vad import SpeechEnded, SpeechStarted, TurnDetector, VadEvent

BLOCK_BYTES = 8000  # what the device sends: 4000 frames of 16 kHz


def silence_s(seconds: float, rate_hz: int = 16000) -> bytes:
    return bytes(2 * int(rate_hz * seconds))


def feed_blocks(
    det: TurnDetector, audio: bytes, block_bytes: int = BLOCK_BYTES, t0_s: float = 0.0
) -> list[tuple[int, VadEvent]]:
    """Feed ``audio`` in blocks stamped 1 s apart (block index as time); returns (block, event)."""
    out = []
    for n, i in enumerate(range(0, len(audio), block_bytes)):
        for ev in det.feed(audio[i : i + block_bytes], t0_s + n):
            out.append((n, ev))
    return out


def test_silence_is_not_speech() -> None:
    det = TurnDetector(16000)
    assert feed_blocks(det, silence_s(5)) == []
    assert det.take_score() == 0.0
    assert det.take_score() is None  # nothing since


def test_one_sentence_is_one_turn(user_speech_16k: bytes) -> None:
    det = TurnDetector(16000, end_silence_ms=700)
    events = feed_blocks(det, silence_s(1) + user_speech_16k + silence_s(2))
    kinds = [type(ev) for _, ev in events]
    assert kinds == [SpeechStarted, SpeechEnded]
    start, end = events[0][1], events[1][1]
    assert isinstance(start, SpeechStarted) and isinstance(end, SpeechEnded)
    assert start.audio_pos_s == pytest.approx(1.0, abs=0.35)
    spoken_s = len(user_speech_16k) / 32000
    assert end.is_turn
    assert spoken_s - 0.8 < end.speech_s <= spoken_s
    # Stamps are block receive times (here: block numbers, 0.25 s each): the block with the
    # last voiced frame, then the block completing 700 ms of silence, about 3 blocks later.
    assert 2 <= end.decided_t_s - end.t_s <= 4


def test_end_of_turn_silence_is_configurable(user_speech_16k: bytes) -> None:
    audio = user_speech_16k + silence_s(1.0)
    quick = TurnDetector(16000, end_silence_ms=300)
    patient = TurnDetector(16000, end_silence_ms=1500)
    assert any(isinstance(ev, SpeechEnded) for _, ev in feed_blocks(quick, audio))
    assert not any(isinstance(ev, SpeechEnded) for _, ev in feed_blocks(patient, audio))
    assert patient.in_speech
    assert any(isinstance(ev, SpeechEnded) for _, ev in feed_blocks(patient, silence_s(1.0)))


def test_a_short_burst_is_not_a_turn(user_speech_16k: bytes) -> None:
    det = TurnDetector(16000, speech_start_ms=60, min_speech_ms=1000)
    events = feed_blocks(det, user_speech_16k[16000 : 16000 + 2 * 4800] + silence_s(1.5))  # 0.3 s
    ends = [ev for _, ev in events if isinstance(ev, SpeechEnded)]
    assert ends and not ends[0].is_turn


@pytest.mark.parametrize("rate_hz", [8000, 22050, 24000, 44100, 48000])
def test_every_protocol_rate_is_understood(user_speech_16k: bytes, rate_hz: int) -> None:
    audio = pcm.resample(silence_s(0.5) + user_speech_16k + silence_s(1.5), 16000, rate_hz)
    det = TurnDetector(rate_hz)
    kinds = [type(ev) for _, ev in feed_blocks(det, audio, block_bytes=rate_hz // 2)]
    assert kinds == [SpeechStarted, SpeechEnded]


def test_block_boundaries_do_not_matter(user_speech_16k: bytes) -> None:
    audio = silence_s(0.5) + user_speech_16k + silence_s(1.0)
    whole = [ev for _, ev in feed_blocks(TurnDetector(16000), audio, block_bytes=len(audio), t0_s=0)]
    odd = [ev for _, ev in feed_blocks(TurnDetector(16000), audio, block_bytes=1234, t0_s=0)]
    assert [type(e) for e in whole] == [type(e) for e in odd]
    assert whole[-1].speech_s == pytest.approx(odd[-1].speech_s)  # type: ignore[union-attr]


def test_score_is_the_voiced_fraction(user_speech_16k: bytes) -> None:
    det = TurnDetector(16000)
    det.feed(user_speech_16k, 0)
    speaking = det.take_score()
    det.feed(silence_s(1), 1)
    assert speaking is not None and speaking > 0.5
    assert det.take_score() == 0.0


def test_speech_so_far(user_speech_16k: bytes) -> None:
    det = TurnDetector(16000)
    assert det.speech_so_far_s() == 0.0
    det.feed(user_speech_16k[: len(user_speech_16k) // 2], 0)
    assert det.in_speech and det.speech_so_far_s() > 0.3
