"""Full duplex rules: the canceller proving itself, the device-side voice barge-in, and the audit of false ones."""

from __future__ import annotations

from device.core.duplex import BargeInAudit, Convergence, FrameLevels, VoiceBargeIn


def frames(t0: float, n: int, near: float, out: float, ref: float) -> list[FrameLevels]:
    return [FrameLevels(t0 + (i + 1) * 0.01, near, out, ref) for i in range(n)]


def test_the_canceller_converges_when_it_keeps_taking_the_echo_off() -> None:
    c = Convergence(reduction_db=15, frames=50, first_frames=200)
    assert not c.feed(frames(0.0, 150, near=-30, out=-80, ref=-25))  # a fresh canceller needs 2 s of proof
    assert c.feed(frames(1.5, 50, near=-30, out=-80, ref=-25))
    assert c.converged and c.converged_at_s == 2.0


def test_a_leak_within_the_proof_keeps_it_from_converging() -> None:
    c = Convergence(reduction_db=15, frames=50, first_frames=50)
    c.feed(frames(0.0, 30, near=-30, out=-80, ref=-25))
    c.feed(frames(0.3, 20, near=-30, out=-32, ref=-25))  # 40 % of the frames leaked
    assert not c.converged


def test_after_the_first_time_each_start_needs_only_a_short_proof() -> None:
    c = Convergence(reduction_db=15, frames=50, first_frames=200)
    c.feed(frames(0.0, 200, near=-30, out=-80, ref=-25))
    c.restart()
    assert not c.converged
    assert c.feed(frames(5.0, 50, near=-30, out=-80, ref=-25))


def test_a_room_where_the_microphone_hardly_hears_the_speaker_counts_as_converged() -> None:
    c = Convergence(frames=50, first_frames=50)
    assert c.feed(frames(0.0, 50, near=-75, out=-76, ref=-25))


def test_frames_where_nothing_plays_prove_nothing() -> None:
    c = Convergence(frames=50, first_frames=50)
    assert not c.feed(frames(0.0, 500, near=-30, out=-30, ref=-120))


def test_the_users_voice_over_the_agent_makes_a_barge_in_from_its_first_frame() -> None:
    v = VoiceBargeIn(min_ms=120, window_ms=1000)
    echo = frames(0.0, 50, near=-30, out=-75, ref=-25)  # echo only: taken off
    assert v.feed(echo, [True] * 50) is None
    user = frames(0.5, 20, near=-24, out=-28, ref=-25)  # double talk: the voice stays
    got = v.feed(user, [True] * 20)
    assert got is not None
    assert round(got.t_s, 2) == 0.62 and round(got.onset_s, 2) == 0.5


def test_what_the_vad_does_not_call_speech_or_is_quiet_is_not_the_user() -> None:
    v = VoiceBargeIn(min_ms=120, window_ms=1000)
    assert v.feed(frames(0.0, 50, near=-24, out=-28, ref=-25), [False] * 50) is None  # a knock, music
    assert v.feed(frames(0.5, 50, near=-45, out=-60, ref=-25), [True] * 50) is None  # the canceller's residue
    assert v.user_frames == 0


def test_scattered_voice_frames_must_add_up_within_the_window() -> None:
    v = VoiceBargeIn(min_ms=120, window_ms=300)
    t = 0.0
    for _ in range(20):  # 2 voiced frames in every 300 ms: never 12 within one window
        assert v.feed(frames(t, 2, near=-24, out=-28, ref=-25), [True] * 2) is None
        assert v.feed(frames(t + 0.02, 28, near=-30, out=-80, ref=-25), [True] * 28) is None
        t += 0.3


def test_a_barge_in_the_service_heard_no_words_after_is_false() -> None:
    audit = BargeInAudit(confirm_s=4.0)
    audit.barged_in(10.0)
    assert audit.due(13.9) == 0
    audit.heard_voice(12.0)  # the user still talking: their words are still to come
    assert audit.due(15.9) == 0
    assert audit.due(16.0) == 1
    assert audit.false_barge_ins == 1 and audit.barge_ins == 1


def test_words_confirm_every_open_barge_in() -> None:
    audit = BargeInAudit(confirm_s=4.0)
    audit.barged_in(10.0)
    audit.barged_in(11.0)
    audit.user_spoke()
    assert audit.due(100.0) == 0 and audit.false_barge_ins == 0
