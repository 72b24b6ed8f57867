"""The gate: what the agent hears, block by block, sample by sample."""

from __future__ import annotations

import math
import shutil
import subprocess
from array import array
from pathlib import Path

import pytest

from device.core.config import GateConfig
from device.core.gate import (
    BLOCK_S,
    SPEECH_MIN_MS,
    VAD_FRAME_MS,
    VAD_FRAME_SAMPLES,
    Gate,
    Timeline,
    apply_ranges,
    level_dbfs,
    subtract,
)
from device.drivers.vad import WebrtcVad

N = 4000  # samples per block
BLOCK_BYTES = N * 2


def tone(n: int = N, amplitude: int = 3000, hz: float = 440.0, start: int = 0) -> bytes:
    return array("h", (round(amplitude * math.sin(2 * math.pi * hz * (start + i) / 16000)) for i in range(n))).tobytes()


def ramp(n: int = N) -> bytes:
    """Non-zero everywhere, distinct per sample: every kept or zeroed sample is visible."""
    return array("h", (1 + i % 30000 for i in range(n))).tobytes()


def samples(pcm: bytes) -> list[int]:
    return list(array("h", pcm))


def nonzero_span(pcm: bytes) -> tuple[int, int] | None:
    s = samples(pcm)
    idx = [i for i, v in enumerate(s) if v]
    return (idx[0], idx[-1] + 1) if idx else None


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """About a second of real synthesised speech, S16LE mono 16 kHz."""
    if not (shutil.which("espeak-ng") and shutil.which("sox")):
        pytest.skip("espeak-ng and sox are needed to make speech (apt-get install espeak-ng sox)")
    d = tmp_path_factory.mktemp("speech")
    wav = d / "s.wav"
    raw = d / "s.raw"
    subprocess.run(["espeak-ng", "-w", str(wav), "hello there, how are you today"], check=True, timeout=30)
    subprocess.run(["sox", str(wav), "-r", "16000", "-c", "1", "-b", "16", "-e", "signed", "-t", "raw", str(raw)],
                   check=True, timeout=30)
    return Path(raw).read_bytes()


def make_gate(cfg: GateConfig) -> Gate:
    """A gate with real webrtcvad, as the controller builds it."""
    return Gate(cfg, WebrtcVad(cfg.vad_aggressiveness))


def blocks_of(pcm: bytes) -> list[bytes]:
    pad = (-len(pcm)) % BLOCK_BYTES
    pcm = pcm + b"\0" * pad
    return [pcm[i:i + BLOCK_BYTES] for i in range(0, len(pcm), BLOCK_BYTES)]


# -- time-lines and ranges -----------------------------------------------------


def test_timeline_ranges_cut_at_the_right_sample() -> None:
    line = Timeline()
    line.set(10.1, True)
    line.set(10.2, False)
    # block [10.0, 10.25): on from sample 1600 to 3200
    assert line.ranges(10.0, 10.25, N) == [(1600, 3200)]
    assert line.ranges(10.25, 10.5, N) == []
    assert line.ranges(9.5, 9.75, N) == []


def test_timeline_later_change_replaces_scheduled_future() -> None:
    line = Timeline()
    line.set(1.0, True)
    line.set(3.0, False)  # scheduled (e.g. end of echo tail)
    line.set(2.0, True)  # agent speaks again before the tail ends
    assert line.value_at(5.0) is True
    line.prune(4.0)
    assert line.value_at(0.0) is True and line.last is True


def test_subtract_and_apply() -> None:
    assert subtract([(0, 10)], [(2, 4), (6, 20)]) == [(0, 2), (4, 6)]
    assert subtract([(0, 10)], []) == [(0, 10)]
    pcm = ramp(10)
    out = apply_ranges(pcm, [(2, 4)])
    assert len(out) == len(pcm)
    assert samples(out) == [0, 0, 3, 4, 0, 0, 0, 0, 0, 0]


def test_level_dbfs() -> None:
    assert level_dbfs(b"\0" * 100) == -120.0
    full = tone(amplitude=32767)
    assert -3.5 < level_dbfs(full) < -2.5  # a full-scale sine is -3 dBFS
    assert level_dbfs(tone(amplitude=327)) < level_dbfs(full) - 35


# -- push to talk ---------------------------------------------------------------


def test_closed_gate_sends_zeros_of_the_same_length() -> None:
    gate = make_gate(GateConfig(mode="push_to_talk"))
    out = gate.process(ramp(), captured_at_s=100.0, seq=7)
    (chunk,) = out.chunks
    assert chunk.pcm == b"\0" * BLOCK_BYTES and not chunk.open and not out.open
    assert chunk.seq == 7 and chunk.captured_at_s == 100.0


def test_push_to_talk_press_and_release_cut_inside_the_block() -> None:
    gate = make_gate(GateConfig(mode="push_to_talk"))
    block_end = 100.0
    start = block_end - BLOCK_S
    assert gate.press(start + 0.1) is True  # 1600 samples into the block
    out = gate.process(ramp(), block_end)
    pcm = out.chunks[0].pcm
    assert nonzero_span(pcm) == (1600, N)
    assert samples(pcm)[1600:] == samples(ramp())[1600:]  # the words right after the press are kept
    assert out.open and gate.talking

    assert gate.release(block_end + 0.05) is False  # 800 samples into the next block
    pcm2 = gate.process(ramp(), block_end + BLOCK_S).chunks[0].pcm
    assert nonzero_span(pcm2) == (0, 800)
    assert gate.process(ramp(), block_end + 2 * BLOCK_S).chunks[0].pcm == b"\0" * BLOCK_BYTES


def test_mute_forces_zeros_even_while_pressed_and_from_the_right_sample() -> None:
    gate = make_gate(GateConfig(mode="push_to_talk"))
    gate.press(99.0)
    gate.set_muted(100.0 - BLOCK_S + 0.125, True)  # half way through the block
    pcm = gate.process(ramp(), 100.0).chunks[0].pcm
    assert nonzero_span(pcm) == (0, 2000)
    out = gate.process(ramp(), 100.0 + BLOCK_S)
    assert out.chunks[0].pcm == b"\0" * BLOCK_BYTES and not out.open
    gate.set_muted(100.0 + BLOCK_S + 0.0625, False)
    assert nonzero_span(gate.process(ramp(), 100.0 + 2 * BLOCK_S).chunks[0].pcm) == (1000, N)


# -- toggle ---------------------------------------------------------------------------


def test_toggle_press_opens_and_next_press_closes() -> None:
    gate = make_gate(GateConfig(mode="toggle"))
    assert gate.press(1.0) is True
    assert gate.release(1.1) is None  # releasing changes nothing
    assert gate.process(ramp(), 2.0).open
    assert gate.press(2.1) is False
    assert not gate.process(ramp(), 2.5).open


def test_toggle_press_while_agent_speaks_is_barge_in_and_opens() -> None:
    gate = make_gate(GateConfig(mode="toggle", barge_in="button"))
    gate.press(1.0)
    gate.agent_started(1.5)  # agent starts while the user's toggle is still open
    assert gate.press(2.0) is None  # does not close
    assert gate.talking


# -- echo guard ----------------------------------------------------------------------


def test_echo_guard_closes_voice_gate_while_agent_speaks_plus_tail(speech: bytes) -> None:
    gate = make_gate(GateConfig(mode="voice", echo_tail_ms=500, barge_in="button", preroll_ms=0))
    gate.set_active(True)
    t = 100.0
    gate.agent_started(t - 10)
    for block in blocks_of(speech):  # the "user" talks over the agent: nothing goes out
        t += BLOCK_S
        out = gate.process(block, t)
        assert not out.open and not out.speech and not out.turn_started
        assert out.chunks[0].pcm == b"\0" * BLOCK_BYTES
    gate.agent_stopped(t)
    first = blocks_of(speech)[1]
    out = gate.process(first, t + BLOCK_S)  # inside the 500 ms tail
    assert not out.open
    t += 3 * BLOCK_S  # past the tail: speech opens the gate again
    assert any(gate.process(b, t + i * BLOCK_S).open for i, b in enumerate(blocks_of(speech)))


@pytest.mark.parametrize(("barge_in", "opens"), [("button", True), ("none", False), ("voice", True)])
def test_push_to_talk_while_agent_speaks_depends_on_barge_in(barge_in: str, opens: bool) -> None:
    gate = make_gate(GateConfig(mode="push_to_talk", barge_in=barge_in))  # type: ignore[arg-type]
    gate.agent_started(1.0)
    gate.press(2.0)
    out = gate.process(ramp(), 3.0)
    assert out.open is opens
    assert (out.chunks[0].pcm == ramp()) is opens


def test_flushed_agent_has_no_echo_tail(speech: bytes) -> None:
    gate = make_gate(GateConfig(mode="voice", echo_tail_ms=3000, preroll_ms=0))
    gate.set_active(True)
    gate.agent_started(0.0)
    gate.agent_stopped(10.0, flushed=True)
    opened = [gate.process(b, 10.0 + (i + 1) * BLOCK_S).open for i, b in enumerate(blocks_of(speech))]
    assert any(opened)


def test_voice_barge_in_lets_speech_through_while_agent_speaks(speech: bytes) -> None:
    gate = make_gate(GateConfig(mode="voice", barge_in="voice", preroll_ms=0))
    gate.set_active(True)
    gate.agent_started(0.0)
    outs = [gate.process(b, 10.0 + i * BLOCK_S) for i, b in enumerate(blocks_of(speech))]
    assert any(o.open for o in outs) and any(o.turn_started for o in outs)


# -- voice ------------------------------------------------------------------------------


def test_voice_mode_silence_stays_closed() -> None:
    gate = make_gate(GateConfig(mode="voice"))
    gate.set_active(True)
    for i in range(8):
        out = gate.process(b"\0" * BLOCK_BYTES, 10.0 + i * BLOCK_S)
        assert not out.open and not out.speech and not out.turn_started


def test_voice_mode_opens_on_speech_with_preroll_and_closes_after_hangover(speech: bytes) -> None:
    gate = make_gate(GateConfig(mode="voice", preroll_ms=500, hangover_ms=750))
    gate.set_active(True)
    quiet = tone(amplitude=30, hz=50)  # room noise, not speech
    stream = [quiet, quiet, quiet, *blocks_of(speech), *[b"\0" * BLOCK_BYTES] * 8]
    outs = [gate.process(b, 10.0 + (i + 1) * BLOCK_S, seq=i) for i, b in enumerate(stream)]

    starts = [i for i, o in enumerate(outs) if o.turn_started]
    ends = [i for i, o in enumerate(outs) if o.turn_ended]
    assert len(starts) == 1 and len(ends) == 1
    s, e = starts[0], ends[0]
    # pre-roll: the two blocks before speech (500 ms), as captured, then the block itself
    chunks = outs[s].chunks
    assert [c.seq for c in chunks] == [s - 2, s - 1, s]
    assert [c.pcm for c in chunks] == stream[s - 2:s + 1]
    assert not outs[s - 1].open and outs[s - 1].chunks[0].pcm == b"\0" * BLOCK_BYTES  # sent as zeros at the time
    # hang-over: still open for 750 ms after the last speech block, then closed
    last_speech = max(i for i, o in enumerate(outs) if o.speech)
    assert all(outs[i].open for i in range(s, last_speech + 1))
    assert all(outs[i].open for i in range(last_speech + 1, last_speech + 4))
    assert e == last_speech + 4 and not outs[e].open
    assert all(len(c.pcm) == BLOCK_BYTES for o in outs for c in o.chunks)


def test_preroll_never_contains_muted_audio(speech: bytes) -> None:
    gate = make_gate(GateConfig(mode="voice", preroll_ms=500))
    gate.set_active(True)
    gate.set_muted(0.0, True)
    noise = tone(amplitude=30, hz=50)
    gate.process(noise, 10.0)
    gate.process(noise, 10.25)
    gate.set_muted(10.3, False)
    outs = [gate.process(b, 10.5 + i * BLOCK_S) for i, b in enumerate(blocks_of(speech))]
    started = next(o for o in outs if o.turn_started)
    assert all(c.captured_at_s > 10.3 for c in started.chunks)


def test_always_open_opens_only_in_a_conversation_and_reports_turns(speech: bytes) -> None:
    gate = make_gate(GateConfig(mode="always_open", hangover_ms=250))
    assert not gate.process(b"\0" * BLOCK_BYTES, 1.0).open
    gate.set_active(True)
    out = gate.process(ramp(), 1.25)
    assert out.open and out.chunks[0].pcm == ramp()
    outs = [gate.process(b, 2.0 + i * BLOCK_S) for i, b in enumerate([*blocks_of(speech), *[b"\0" * BLOCK_BYTES] * 4])]
    assert sum(o.turn_started for o in outs) == 1 and sum(o.turn_ended for o in outs) == 1
    assert all(o.open for o in outs)
    gate.reset(10.0)
    assert not gate.process(ramp(), 11.0).open


def test_idle_speech_opens_for_start_on_speech(speech: bytes) -> None:
    gate = make_gate(GateConfig(mode="voice", start_on_speech=True, preroll_ms=250))
    outs = [gate.process(b, 1.0 + i * BLOCK_S) for i, b in enumerate([b"\0" * BLOCK_BYTES, *blocks_of(speech)])]
    started = next(o for o in outs if o.turn_started)
    assert started.open and len(started.chunks) == 2


# -- the injected VAD (a fake: no audio engine, milliseconds) --------------------------


class FakeVad:
    """Says speech for the first ``speech_frames`` frames it is asked about; records every frame."""

    def __init__(self, speech_frames: int = 0) -> None:
        self.left = speech_frames
        self.frames: list[bytes] = []

    def is_speech(self, frame: bytes) -> bool:
        self.frames.append(frame)
        self.left -= 1
        return self.left >= 0


def test_the_vad_is_asked_about_whole_frames_of_what_the_guard_let_through() -> None:
    vad = FakeVad()
    gate = Gate(GateConfig(mode="voice"), vad)
    gate.set_muted(BLOCK_S / 2, True)  # the second half of the block is muted
    gate.process(ramp(), BLOCK_S)
    assert len(vad.frames) == (N // 2) // VAD_FRAME_SAMPLES


def test_every_frame_the_vad_sees_is_one_vad_frame_long() -> None:
    vad = FakeVad()
    Gate(GateConfig(mode="voice"), vad).process(ramp(), BLOCK_S)
    assert {len(f) for f in vad.frames} == {VAD_FRAME_SAMPLES * 2}


def test_a_block_is_speech_once_the_vad_hears_speech_min_ms_of_it() -> None:
    frames = SPEECH_MIN_MS // VAD_FRAME_MS
    assert Gate(GateConfig(mode="voice"), FakeVad(frames)).process(ramp(), BLOCK_S).speech


def test_a_block_with_less_speech_than_speech_min_ms_is_not_speech() -> None:
    frames = SPEECH_MIN_MS // VAD_FRAME_MS - 1
    assert not Gate(GateConfig(mode="voice"), FakeVad(frames)).process(ramp(), BLOCK_S).speech


def test_speech_the_vad_hears_opens_the_voice_gate_and_starts_a_turn() -> None:
    out = Gate(GateConfig(mode="voice", preroll_ms=0), FakeVad(speech_frames=1000)).process(ramp(), BLOCK_S)
    assert (out.open, out.turn_started) == (True, True)


# -- wake_word mode ---------------------------------------------------------------


def test_wake_word_gate_sends_nothing_while_idle_and_reports_no_turn(speech: bytes) -> None:
    gate = make_gate(GateConfig(mode="wake_word"))
    for i, block in enumerate(blocks_of(speech)):
        out = gate.process(block, (i + 1) * BLOCK_S)
        assert not out.open and not out.turn_started and all(not c.open for c in out.chunks)
        assert out.chunks[-1].pcm == bytes(len(block))


def test_wake_opens_from_the_detection_sample_and_the_turn_starts_with_the_words_after_it(speech: bytes) -> None:
    gate = make_gate(GateConfig(mode="wake_word", hangover_ms=500))
    gate.set_active(True)  # the controller starts the conversation on the detection
    wake_at = 1000  # the wake word ended 1000 samples into the first block
    gate.wake_word_ended(wake_at / 16000)
    pcm = ramp(N)
    out = gate.process(pcm, BLOCK_S)
    assert out.open and nonzero_span(out.chunks[-1].pcm) == (wake_at, N)  # nothing of the wake word itself
    assert not out.turn_started  # a ramp is no speech: the user's turn has not begun
    turns = [gate.process(b, (i + 2) * BLOCK_S).turn_started for i, b in enumerate(blocks_of(speech))]
    assert turns.count(True) == 1  # the question that follows starts the turn (voice mode after the wake)


def test_after_wake_always_open_keeps_the_gate_open_for_the_conversation() -> None:
    gate = make_gate(GateConfig(mode="wake_word", after_wake="always_open"))
    gate.set_active(True)
    gate.wake_word_ended(0.0)
    assert all(gate.process(ramp(), (i + 1) * BLOCK_S).open for i in range(8))
    gate.reset(3.0)  # conversation over: closed again
    assert not gate.process(ramp(), 4 * BLOCK_S + 3.0).open


def test_wake_word_barge_in_ends_the_echo_guard_at_the_wake_word() -> None:
    gate = make_gate(GateConfig(mode="wake_word", barge_in="wake_word", echo_tail_ms=300))
    gate.set_active(True)
    gate.agent_started(0.0)
    assert not gate.process(ramp(), BLOCK_S).open  # the agent speaks: the guard holds
    gate.agent_stopped(2 * BLOCK_S, flushed=True)  # the controller flushes after the detection...
    gate.wake_word_ended(BLOCK_S + 2000 / 16000)  # ...which ended mid-block
    out = gate.process(ramp(), 2 * BLOCK_S)
    assert nonzero_span(out.chunks[-1].pcm) == (2000, N)


def test_other_barge_in_modes_keep_the_guard_over_a_wake() -> None:
    gate = make_gate(GateConfig(mode="wake_word", barge_in="none"))
    gate.set_active(True)
    gate.agent_started(0.0)
    gate.wake_word_ended(BLOCK_S / 2)
    assert not gate.process(ramp(), BLOCK_S).open


def _crowd(speech: bytes, seconds: float) -> bytes:
    """Four copies of the speech, offset and 20 dB down, looped: a crowd talking further away."""
    s = array("h", speech)
    n = int(seconds * 16000)
    out = array("h", bytes(2 * n))
    for k in range(4):
        off = k * len(s) // 4
        for i in range(n):
            out[i] += s[(i + off) % len(s)] // 10
    return out.tobytes()


def _mixed(a: bytes, b: bytes) -> bytes:
    x, y = array("h", a), array("h", b)
    return array("h", (max(-32768, min(32767, p + q)) for p, q in zip(x, y, strict=True))).tobytes()


@pytest.mark.parametrize(("margin_db", "closes"), [(0.0, False), (9.0, True)])
def test_in_a_crowd_the_voice_gate_closes_after_the_user_only_with_a_speech_margin(
    speech: bytes, margin_db: float, closes: bool
) -> None:
    gate = make_gate(GateConfig(mode="voice", speech_margin_db=margin_db))
    gate.set_active(True)
    said_s = len(speech) / 32000
    crowd = _crowd(speech, 4.0 + said_s + 4.0)
    user = bytes(2 * 4 * 16000) + speech + bytes(2 * 4 * 16000)  # the user speaks from 4 s on
    outs = [gate.process(b, (i + 1) * BLOCK_S) for i, b in enumerate(blocks_of(_mixed(user, crowd)))]
    said = [o for i, o in enumerate(outs) if 4.0 < (i + 1) * BLOCK_S <= 4.0 + said_s]
    assert any(o.open for o in said)  # the user is heard either way
    ended = [(i + 1) * BLOCK_S for i, o in enumerate(outs) if o.turn_ended and (i + 1) * BLOCK_S > 4.0 + said_s]
    assert bool(ended) is closes
    if closes:
        assert ended[0] - (4.0 + said_s) <= 1.5
        assert not outs[-1].open  # the crowd alone is not let through


def test_the_noise_floor_is_a_low_percentile_of_recent_frames() -> None:
    from device.core.speechfloor import SILENCE_DBFS, NoiseFloor

    floor = NoiseFloor(window_frames=10, percentile=20.0)
    assert floor.floor_dbfs == SILENCE_DBFS
    floor.add([-40.0] * 8 + [-10.0, -10.0])
    assert floor.floor_dbfs == -40.0
    floor.add([-20.0] * 10)  # the window moves on
    assert floor.floor_dbfs == -20.0
    floor.reset()
    assert floor.floor_dbfs == SILENCE_DBFS
    with pytest.raises(ValueError):
        NoiseFloor(window_frames=0)
