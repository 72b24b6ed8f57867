"""An audio event's alignment: decoded when usable, dropped (never the audio) when not."""

from __future__ import annotations

import base64
import json

from device.core.audioformat import PCM_16000
from device.core.protocol import AgentAudio, Alignment, decode_alignment, decode_server_message


def audio_message(alignment: object) -> str:
    event: dict[str, object] = {"audio_base_64": base64.b64encode(b"\0\0" * 10).decode(), "event_id": 3}
    if alignment is not None:
        event["alignment"] = alignment
    return json.dumps({"type": "audio", "audio_event": event})


def test_the_alignment_of_an_audio_event_is_surfaced() -> None:
    msg = audio_message({"chars": ["H", "i", "\n"], "char_start_times_ms": [0, 80, 160],
                         "char_durations_ms": [80, 80, 40]})
    event = decode_server_message(msg, PCM_16000, 1.0)
    assert isinstance(event, AgentAudio)
    assert event.alignment == Alignment(("H", "i", " "), (0.0, 80.0, 160.0), (80.0, 80.0, 40.0))


def test_a_broken_alignment_is_dropped_and_the_audio_kept() -> None:
    for bad in (
        {"chars": ["a"], "char_start_times_ms": [0, 1], "char_durations_ms": [1]},
        {"chars": [1], "char_start_times_ms": [0], "char_durations_ms": [1]},
        {"chars": ["a"], "char_start_times_ms": [-5], "char_durations_ms": [1]},
        {"chars": ["a"], "char_start_times_ms": [True], "char_durations_ms": [1]},
        {"chars": "abc"},
        "nonsense",
    ):
        event = decode_server_message(audio_message(bad), PCM_16000, 1.0)
        assert isinstance(event, AgentAudio) and event.alignment is None and len(event.audio) == 20
    assert decode_alignment(None) is None
    assert decode_server_message(audio_message(None), PCM_16000, 1.0).alignment is None  # type: ignore[union-attr]
