"""From telemetry to the report's figures, on a synthetic conversation."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from device.bench import analysis
from tests.unit.bench.synthetic import T0, Ev, conversation


def _agent_turns() -> list[dict[str, Any]]:
    return [
        {"speech_end_t_s": T0 + 5.0, "reply_first_audio_sent_t_s": T0 + 6.39, "interrupted": True,
         "user_transcript": "Please turn the volume down", "reply_text": "Done."},
        {"speech_end_t_s": T0 + 11.0, "reply_first_audio_sent_t_s": T0 + 12.29, "interrupted": False,
         "user_transcript": "Sorry, is there a cafe?", "reply_text": "Yes."},
    ]


def test_turn_latency_and_the_device_share_with_the_emulator_s_records() -> None:
    fig = analysis.analyse(conversation(), t0_s=T0, agent_turns=_agent_turns())
    first, second = fig.turns
    # the block carrying the last voiced audio was captured at 4.75 s and sent 4 ms later
    assert first["user_speech_end_s"] == pytest.approx(4.75)
    assert first["first_agent_audio_received_s"] == pytest.approx(6.4)
    assert first["first_agent_audio_written_s"] == pytest.approx(6.55)
    assert first["latency_ms"] == pytest.approx(1800.0)
    assert first["device_share_ms"] == pytest.approx(154.0)
    assert first["interrupted"] is True
    assert first["user_text"] == "Please turn the volume down"
    assert second["first_agent_audio_written_s"] == pytest.approx(12.42)
    assert second["latency_ms"] == pytest.approx(1000 * (12.42 - 10.75))
    assert fig.reply_received_to_written_ms["count"] == 2
    assert fig.replies_played == 2


def test_without_the_emulator_replies_are_found_from_telemetry_alone() -> None:
    fig = analysis.analyse(conversation(), t0_s=T0)
    assert len(fig.turns) == 2
    assert fig.turns[0]["first_agent_audio_written_s"] == pytest.approx(6.55)
    assert fig.turns[0]["interrupted"] is True
    assert fig.turns[1]["interrupted"] is False
    # the last loud block the gate let through before each reply
    assert fig.turns[0]["user_speech_end_s"] == pytest.approx(5.0)
    # and what was said, from the transcripts
    assert fig.turns[0]["user_text"] == "Please turn the volume down, and tell me when the museum opens."
    assert fig.turns[0]["agent_text"] == "I turned the volume down. The museum opens at nine."
    assert fig.turns[1]["user_text"] == "Sorry, is there a cafe?"
    assert fig.reply_received_to_written_ms["p50"] == pytest.approx(120.0)


def test_interruptions_agent_and_local() -> None:
    fig = analysis.analyse(conversation(), t0_s=T0)
    assert fig.interruptions == [
        {"at_s": pytest.approx(9.0), "source": "local", "event_id": None, "old_audio_ms_after": 12.5,
         "old_audio_written_ms_after": 12.5},
        {"at_s": pytest.approx(9.7), "source": "agent", "event_id": 3, "old_audio_ms_after": 0.0,
         "old_audio_written_ms_after": 0.0},
    ]


def test_heard_audio_replaces_the_written_figures() -> None:
    """Clocked card: latency to the first sample heard; old audio heard after an interruption."""
    fig = analysis.analyse(conversation(), t0_s=T0)
    rate = 1000
    first_s = T0 - 1.0  # the recording began a second before the run
    written = [t["first_agent_audio_written_s"] for t in fig.turns]
    samples = [0] * (rate * 20)

    def sound(a_s: float, b_s: float) -> None:
        for i in range(round((T0 + a_s - first_s) * rate), round((T0 + b_s - first_s) * rate)):
            samples[i] = 1000

    sound(written[0] + 0.040, 9.0 + 0.030)  # heard 40 ms after written; 30 ms of it after the press at 9.0 s
    sound(written[1] + 0.025, written[1] + 1.0)
    pcm = struct.pack(f"<{len(samples)}h", *samples)
    analysis.apply_heard(fig, pcm, rate, first_s, T0)
    assert fig.turns[0]["first_agent_audio_heard_s"] == pytest.approx(written[0] + 0.040, abs=0.001)
    assert fig.turns[0]["latency_ms"] == pytest.approx(fig.turns[0]["written_latency_ms"] + 40, abs=1)
    assert fig.turns[1]["first_agent_audio_heard_s"] == pytest.approx(written[1] + 0.025, abs=0.001)
    local, agent = fig.interruptions
    assert local["old_audio_ms_after"] == pytest.approx(30, abs=1)
    assert local["old_audio_written_ms_after"] == 12.5  # the written figure stays, named as such
    assert agent["old_audio_ms_after"] == 0.0  # nothing of the old reply heard at 9.7 s


def test_press_to_first_frame_counts_only_presses_that_start_a_conversation() -> None:
    fig = analysis.analyse(conversation(), t0_s=T0)
    assert fig.press_to_first_frame_sent_ms == [pytest.approx(340.0)]
    # blocks held while connecting are left out of capture → wire
    assert fig.block_capture_to_wire_ms["p99"] == pytest.approx(4.0)


def test_counters_and_texts() -> None:
    fig = analysis.analyse(conversation(), t0_s=T0)
    assert fig.conversations == 1
    assert fig.conversation_s == pytest.approx(18.6)
    assert fig.session_outcomes == ["local"]
    assert fig.xruns == {"capture_overruns": 0, "playback_underruns": 1}
    assert fig.ping_ms["count"] == 8
    assert fig.ping_ms["max"] == 27
    assert [c["name"] for c in fig.tool_calls] == ["set_volume"]
    assert [(t["role"], t["cut"]) for t in fig.transcript] == [
        ("user", False), ("agent", False), ("agent", True), ("user", False), ("agent", False)
    ]


def test_outcome_names_accept_enums_and_strings() -> None:
    import enum

    class Outcome(enum.Enum):
        AGENT_ENDED = "agent_ended"

    assert analysis.outcome_name(Outcome.AGENT_ENDED) == "agent_ended"
    assert analysis.outcome_name("NETWORK") == "network"


@pytest.mark.parametrize(
    ("outcomes", "played", "violations", "ok", "ended_by"),
    [
        (["agent_ended"], 2, 0, True, "agent_ended"),
        (["network"], 1, 0, False, "network"),
        (["local"], 0, 0, False, "local"),
        (["normal"], 1, 2, False, "normal"),
        ([], 0, 0, False, "no_conversation"),
    ],
)
def test_the_verdict(outcomes: list[str], played: int, violations: int, ok: bool, ended_by: str) -> None:
    fig = analysis.Figures(conversations=len(outcomes), session_outcomes=outcomes, replies_played=played)
    got_ok, got_by, detail = analysis.verdict(fig, violations, timed_out=False, error=None)
    assert (got_ok, got_by) == (ok, ended_by), detail
    fig.session_details = ["connection refused; check the network"] * len(outcomes)
    if ended_by == "network":
        detail = analysis.verdict(fig, 0, False, None)[2]
        assert detail == "a conversation failed (network): connection refused; check the network"
    # A conversation still open at --max-wait-s never ended by itself: a failure, whatever else happened.
    still_going = analysis.verdict(fig, violations, timed_out=True, error=None)
    assert still_going[0] is False
    if fig.conversations:
        assert still_going[1] == "max_wait"
        assert "still going at --max-wait-s" in still_going[2]
    assert analysis.verdict(fig, 0, timed_out=False, error="boom") == (False, "error", "boom")


def test_a_flush_without_an_interruption_is_not_one() -> None:
    events = [Ev(T0 + 1, "flushed", {"old_audio_ms_after": 10.0})]
    assert analysis.analyse(events, t0_s=T0).interruptions == []


def test_replies_are_placed_in_the_playback_file() -> None:
    events = [
        Ev(T0 + 1.0, "reply_started", {"reply_id": 1}),
        Ev(T0 + 3.0, "flushed", {"old_audio_ms_after": 62.5}),
        Ev(T0 + 5.0, "reply_started", {"reply_id": 2}),
        Ev(T0 + 7.0, "reply_finished", {"reply_id": 2, "frames": 32000}),
        Ev(T0 + 8.0, "reply_started", {"reply_id": 3}),
        Ev(T0 + 9.0, "reply_finished", {"reply_id": 3, "frames": 16000}),
    ]
    # reply 1 was cut after 2 s (+ one chunk): whatever the others leave is its part
    segs = analysis.playback_segments(events, total_frames=33000 + 32000 + 16000, rate_hz=16000)
    assert segs == [(T0 + 1.0, 0, 33000), (T0 + 5.0, 33000, 32000), (T0 + 8.0, 65000, 16000)]
    # a short file (e.g. the run stopped early) never yields frames it does not hold
    segs = analysis.playback_segments(events, total_frames=40000, rate_hz=16000)
    assert segs[-1][1] + segs[-1][2] <= 40000
    assert analysis.playback_segments([], 1000, 16000) == []


def test_conversations_end_where_the_controller_leaves_them() -> None:
    events = [
        Ev(T0 + 0.0, "state", {"state": "connecting", "machine_state": "connecting"}),
        Ev(T0 + 1.0, "state", {"state": "muted", "machine_state": "listening"}),  # muted mid-conversation
        Ev(T0 + 4.0, "state", {"state": "idle", "machine_state": "idle", "cause": "timeout"}),
        Ev(T0 + 5.0, "state", {"state": "connecting", "machine_state": "connecting"}),
        Ev(T0 + 5.5, "session_end", {"outcome": "NETWORK", "detail": "connection refused"}),
        Ev(T0 + 5.5, "state", {"state": "error", "machine_state": "error", "cause": "failed"}),
        Ev(T0 + 7.0, "state", {"state": "connecting", "machine_state": "connecting"}),
    ]
    spans = analysis.conversation_spans(events)
    assert [(s.start_s - T0, None if s.end_s is None else s.end_s - T0, s.outcome) for s in spans] == [
        (0.0, 4.0, "idle_timeout"), (5.0, 5.5, "network"), (7.0, None, "unfinished")
    ]
    assert spans[1].detail == "connection refused"


def test_the_figures_depend_only_on_the_events_not_on_their_order() -> None:
    events = conversation()
    latest_first = sorted(events, key=lambda e: -e.t_s)  # stable: events at the same time keep their order
    for turns in (None, _agent_turns()):
        fig = analysis.analyse(events, t0_s=T0, agent_turns=turns)
        assert analysis.analyse(latest_first, t0_s=T0, agent_turns=turns) == fig
        assert analysis.analyse(iter(events), t0_s=T0, agent_turns=turns) == fig


def test_without_the_emulator_an_interruption_between_chunks_starts_a_new_reply() -> None:
    events = [Ev(T0 + 1.0 + 0.05 * i, "agent_audio") for i in range(4)]  # one reply: no quiet spell
    events += [Ev(T0 + 1.07, "interruption", {"event_id": 4})]
    events += [Ev(T0 + 1.0, "reply_started"), Ev(T0 + 1.12, "reply_started")]
    fig = analysis.analyse(events, t0_s=T0)
    assert [t["first_agent_audio_received_s"] for t in fig.turns] == [pytest.approx(1.0), pytest.approx(1.1)]
    assert [t["first_agent_audio_written_s"] for t in fig.turns] == [pytest.approx(1.0), pytest.approx(1.12)]
    assert [t["interrupted"] for t in fig.turns] == [True, False]
    assert fig.interruptions[0]["event_id"] == 4
    assert fig.interruptions[0]["old_audio_ms_after"] is None


def _wake_run(*, wake_at: float | None, pressed_at: float | None = None, user_says: bool = True,
              answered: bool = True) -> list[Ev]:
    """A conversation opening at 2.0 s (after a wake word and/or a press), the user, maybe a reply."""
    evs: list[Ev] = [Ev(T0 + 0.0, "state", {"state": "idle"})]
    if wake_at is not None:
        evs.append(Ev(T0 + wake_at, "wake", {"model": "hey_jarvis", "score": 0.912}))
    if pressed_at is not None:
        evs.append(Ev(T0 + pressed_at, "button", {"action": "press", "source": "button"}))
    evs.append(Ev(T0 + 2.0, "state", {"state": "connecting"}))
    evs.append(Ev(T0 + 2.5, "state", {"state": "listening"}))
    if user_says:
        evs.append(Ev(T0 + 4.0, "transcript", {"role": "user", "text": "when does it open", "tentative": False}))
    if answered:
        evs.append(Ev(T0 + 5.0, "reply_started", {"reply_id": 1}))
    evs.append(Ev(T0 + 9.0, "state", {"state": "idle", "cause": "timeout"}))
    return evs


def test_wake_figures_say_which_detection_started_the_conversation_and_how_late() -> None:
    evs = _wake_run(wake_at=1.8)
    evs.insert(1, Ev(T0 + 0.6, "wake", {"model": "hey_jarvis", "score": 0.71}))  # too early to start it
    wake = analysis.wake_figures(evs, T0, word_end_s=1.5)
    assert [d["at_s"] for d in wake["detections"]] == [pytest.approx(0.6), pytest.approx(1.8)]
    assert [d["started_conversation"] for d in wake["detections"]] == [False, True]
    assert wake["detections"][1]["score"] == 0.912
    assert wake["started_by_wake"] is True
    assert wake["false_wakes"] == 0
    assert wake["detection_delay_ms"] == pytest.approx(300.0)


def test_a_press_after_the_wake_word_started_the_conversation_not_the_word() -> None:
    wake = analysis.wake_figures(_wake_run(wake_at=1.0, pressed_at=1.9), T0, word_end_s=None)
    assert wake["started_by_wake"] is False
    assert wake["detection_delay_ms"] is None


def test_a_wake_word_nobody_follows_is_a_false_wake() -> None:
    wake = analysis.wake_figures(_wake_run(wake_at=1.8, user_says=False, answered=False), T0, word_end_s=None)
    assert wake["started_by_wake"] is True
    assert wake["false_wakes"] == 1


def _played() -> analysis.Figures:
    return analysis.Figures(conversations=1, session_outcomes=["idle_timeout"], replies_played=1)


def test_the_verdict_with_nothing_pressed_needs_the_wake_word() -> None:
    missed = analysis.wake_figures([Ev(T0, "state", {"state": "idle"})], T0, word_end_s=1.5)
    ok, ended_by, detail = analysis.verdict(analysis.Figures(), 0, False, None, wake=missed, require_wake=True)
    assert (ok, ended_by) == (False, "no_wake")
    assert "the wake word was not detected (0 detection(s))" in detail
    heard = analysis.wake_figures(_wake_run(wake_at=1.8), T0, word_end_s=1.5)
    ok, _, detail = analysis.verdict(_played(), 0, False, None, wake=heard, require_wake=True)
    assert ok, detail
    assert "woken by the wake word (1 detection(s))" in detail
    pressed = analysis.wake_figures(_wake_run(wake_at=1.0, pressed_at=1.9), T0, word_end_s=None)
    ok, ended_by, _ = analysis.verdict(_played(), 0, False, None, wake=pressed, require_wake=True)
    assert (ok, ended_by) == (False, "no_wake")


def test_an_agent_that_never_answered_the_user_fails_the_run() -> None:
    assert analysis.unanswered_user(_wake_run(wake_at=1.8), T0) is None
    why = analysis.unanswered_user(_wake_run(wake_at=1.8, answered=False), T0)
    assert why is not None and "never answered the user" in why and "when does it open" in why
    ok, _, detail = analysis.verdict(_played(), 0, False, None, unanswered=why)
    assert (ok, detail) == (False, why)


def test_speech_spans_find_the_end_of_the_first_word() -> None:
    tone = struct.pack("<1600h", *([8000, -8000] * 800))  # 0.1 s, loud
    pcm = bytes(3200) + tone * 3 + bytes(1600) + tone * 2 + bytes(8000) + tone
    spans = analysis.speech_spans(pcm, 16000)
    # the 50 ms pause is inside the first word; the 250 ms one separates the second
    assert spans[0] == (pytest.approx(0.1, abs=0.02), pytest.approx(0.65, abs=0.02))  # 20 ms windows
    assert len(spans) == 2


def test_with_nothing_pressed_a_false_wake_fails_the_run() -> None:
    wake = analysis.wake_figures(_wake_run(wake_at=1.8, user_says=False), T0, word_end_s=None)
    ok, ended_by, detail = analysis.verdict(_played(), 0, False, None, wake=wake, require_wake=True)
    assert (ok, ended_by) == (False, "false_wake")
    assert "heard nothing from the user" in detail
