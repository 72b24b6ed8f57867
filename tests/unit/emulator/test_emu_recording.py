"""Conversation records: snapshots that stay put, and the files written per conversation."""

from __future__ import annotations

import json
import threading
import wave
from pathlib import Path

from device.emulator.recording import ConversationRecord, ToolCallRecord, TurnRecord, Violation, save


def record() -> ConversationRecord:
    r = ConversationRecord("conv_abc", "agent_x", 3, 10.0, "pcm_16000", "ulaw_8000")
    r.add_event(10.5, "to_agent", "user_audio_chunk", bytes=8000, duration_ms=250.0, peak=0)
    r.add_audio(b"\x01\x00" * 4000)
    r.turns.append(
        TurnRecord(
            index=0,
            trigger="first_message",
            reply_text="Hi",
            event_id=1,
            tool_calls=[ToolCallRecord("t", "id1", {"a": 1}, 11.0)],
        )
    )
    r.add_violation(Violation("conv_abc", "pong_missing", "no pong for ping 2", 12.0))
    return r


def test_snapshot_is_a_copy() -> None:
    r = record()
    snap = r.snapshot()
    r.add_event(13.0, "from_agent", "ping", event_id=2)
    r.add_audio(b"\x02\x00")
    r.turns[0].tool_calls[0].result = "later"
    assert len(snap.events) == 1 and len(r.events) == 2
    assert snap.user_audio_pcm == b"\x01\x00" * 4000
    assert snap.turns[0].tool_calls[0].result is None
    assert snap.violations == r.violations
    assert r.events_of("ping", "from_agent") == [
        {"t_s": 13.0, "direction": "from_agent", "type": "ping", "event_id": 2}
    ]


def test_snapshots_while_another_thread_writes() -> None:
    r = record()
    done = threading.Event()

    def writer() -> None:
        for i in range(2000):
            with r.locked():  # the conversation's thread groups related updates like this
                r.add_event(float(i), "to_agent", "user_audio_chunk", bytes=2)
                r.add_audio(b"\x00\x00")
        done.set()

    t = threading.Thread(target=writer, name="test-writer")
    t.start()
    try:
        while not done.is_set():
            snap = r.snapshot()
            # A snapshot never lands inside a locked group of updates.
            assert len(snap.user_audio_pcm) == 8000 + 2 * (len(snap.events) - 1)
    finally:
        t.join(5)


def test_save_writes_the_event_log_and_the_user_audio(tmp_path: Path) -> None:
    r = record()
    r.ended_t_s, r.close_code, r.close_reason, r.closed_by = 20.0, 1000, "bye", "client"
    events_path, wav_path = save(r, tmp_path / "rec")
    assert events_path.name == "003_conv_abc.events.json" and wav_path.name == "003_conv_abc.user.wav"
    data = json.loads(events_path.read_text())
    assert data["conversation_id"] == "conv_abc" and data["close_code"] == 1000
    assert data["user_audio_s"] == 0.25
    assert data["events"][0]["type"] == "user_audio_chunk" and "audio" not in json.dumps(data["events"][0]).replace(
        "user_audio_chunk", ""
    )
    assert data["violations"][0]["rule"] == "pong_missing"
    assert data["turns"][0]["tool_calls"][0]["call_id"] == "id1"
    with wave.open(str(wav_path)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        assert w.readframes(w.getnframes()) == b"\x01\x00" * 4000
    assert (r.events_path, r.wav_path) == (events_path, wav_path)
