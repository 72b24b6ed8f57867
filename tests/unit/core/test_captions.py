"""The screen's model: words appear when they are heard, an interruption cuts, nothing stays after the end."""

from __future__ import annotations

from device.core.captions import Captions
from device.core.protocol import Alignment

RATE = 16000
SUNNY = Alignment(tuple("Sunny all day today."), tuple(i * 50.0 for i in range(20)), (50.0,) * 20)


def aligned(text: str, per_char_ms: float = 50.0) -> Alignment:
    return Alignment(tuple(text), tuple(i * per_char_ms for i in range(len(text))), (per_char_ms,) * len(text))


def talking(keep_history: bool = False) -> Captions:
    c = Captions(keep_history)
    c.feed("state", 0.0, {"state": "listening"})
    c.feed("transcript", 0.5, {"role": "user", "text": "What's", "tentative": True})
    c.feed("transcript", 0.6, {"role": "user", "text": "What's the weather?", "tentative": False})
    c.feed("state", 0.7, {"state": "thinking"})
    return c


def agent_text(c: Captions) -> str:
    lines = [line for line in c.view()["lines"] if line["role"] == "agent"]
    return lines[-1]["text"] if lines else ""


def test_the_users_words_replace_the_tentative_ones() -> None:
    c = talking()
    assert [(line["role"], line["text"], line["final"]) for line in c.view()["lines"]] == [
        ("user", "What's the weather?", True)
    ]


def test_agent_words_appear_when_the_speaker_plays_them_not_when_they_arrive() -> None:
    c = talking()
    # 1.0 s of audio (16000 frames) arrives at once, 20 chars at 50 ms each
    c.feed("agent_audio", 1.0, {"position": 0, "frames": 16000, "rate_hz": RATE, "alignment": SUNNY})
    c.tick(1.0)
    assert agent_text(c) == ""  # nothing written to the speaker yet
    for i in range(5):  # the first 5000 frames handed to ALSA; the first is heard at 1.01
        c.feed("reply_chunk", 1.01 + i * 0.0625, {"position": i * 1000, "frames": 1000, "rate_hz": RATE})
    due = c.next_due_s(1.0)
    assert due is not None and abs(due - 0.01) < 1e-9
    c.tick(1.0)
    assert agent_text(c) == ""
    c.tick(1.01)
    assert agent_text(c) == "Sunny"  # a word shows whole from its first character
    c.tick(1.01 + 0.249)
    assert agent_text(c) == "Sunny"
    due = c.next_due_s(1.06)
    assert due is not None and abs(due - (1.01 + 0.25 - 1.06)) < 1e-9  # the space at 250 ms
    c.tick(1.01 + 0.30)
    assert agent_text(c) == "Sunny all"
    c.tick(5.0)  # the next space at 450 ms (frame 7200) is in no chunk written yet
    assert agent_text(c) == "Sunny all"
    assert c.next_due_s(5.0) is None


def test_an_interruption_cuts_the_caption_where_the_audio_stopped() -> None:
    c = talking()
    c.feed("agent_audio", 1.0, {"position": 0, "frames": 16000, "rate_hz": RATE, "alignment": SUNNY})
    for i in range(16):
        c.feed("reply_chunk", 1.0 + i * 0.0625, {"position": i * 1000, "frames": 1000, "rate_hz": RATE})
    c.tick(1.2)
    c.feed("interruption", 1.4, {"event_id": 2, "local": False})  # "all" (250 ms) heard, "day" (600 ms) not
    c.tick(9.0)
    view = c.view()
    assert agent_text(c) == "Sunny all"  # "all" at 300 ms heard; the space after it (450 ms) and "day" not
    assert view["lines"][-1]["cut"] is True
    assert c.next_due_s(9.0) is None


def test_without_alignment_the_text_shows_when_the_reply_plays_and_a_correction_replaces_it() -> None:
    c = talking()
    c.feed("transcript", 1.0, {"role": "agent", "text": "Sunny all day, with a breeze.", "correction": False})
    c.feed("agent_audio", 1.0, {"position": 0, "frames": 16000, "rate_hz": RATE, "alignment": None})
    assert agent_text(c) == ""
    c.feed("reply_started", 1.1, {"reply_id": 1})
    assert agent_text(c) == "Sunny all day, with a breeze."
    c.feed("interruption", 1.5, {"event_id": 2})
    c.feed("transcript", 1.6, {"role": "agent", "text": "Sunny all", "correction": True})
    assert agent_text(c) in ("Sunny all day, with a breeze.", "Sunny all")


def test_chars_of_audio_never_written_are_skipped() -> None:
    c = talking()
    c.feed("agent_audio", 1.0, {"position": 0, "frames": 8000, "rate_hz": RATE, "alignment": aligned("Old words")})
    c.feed("reply_chunk", 1.0, {"position": 4000, "frames": 1000, "rate_hz": RATE})  # 0..4000 flushed unheard
    c.tick(2.0)
    assert agent_text(c) == ""  # "Old" at 0 ms and the space were never played; "words" starts at 200 ms


def test_tools_and_errors_in_plain_words() -> None:
    c = talking()
    c.feed("tool_call", 1.0, {"name": "set_volume", "phase": "started", "is_error": False})
    assert c.view()["activity"] == "Setting the volume"
    c.feed("tool_call", 1.1, {"name": "set_volume", "phase": "finished", "is_error": False})
    assert c.view()["activity"] == ""
    c.feed("tool_call", 1.2, {"name": "look_up_opening_hours", "phase": "started"})
    assert c.view()["activity"] == "Working on it: look up opening hours"
    c.feed("error", 2.0, {"message": "HTTP 503 from api.elevenlabs.io", "source": "session"})
    c.feed("state", 2.0, {"state": "error"})
    view = c.view()
    assert view["error"].startswith("I can't reach the service") and "503" not in view["error"]
    assert view["activity"] == "" and view["state"] == "error"
    c.feed("state", 9.0, {"state": "connecting"})
    assert c.view()["error"] == ""


def test_nothing_of_a_conversation_stays_after_it_ends_unless_configured() -> None:
    c = talking()
    c.feed("state", 3.0, {"state": "idle"})
    assert c.view()["lines"] == [] and c.view()["state"] == "idle"
    kept = talking(keep_history=True)
    kept.feed("state", 3.0, {"state": "idle"})
    assert [line["text"] for line in kept.view()["lines"]] == ["What's the weather?"]


def test_versions_change_only_with_the_view() -> None:
    c = talking()
    v = c.version
    assert not c.feed("ping", 1.0, {"ping_ms": 20})
    assert not c.feed("state", 1.0, {"state": "thinking"})
    assert c.version == v
