"""The progress display: counters from telemetry, lines for notable moments."""

from __future__ import annotations

import io

from device.bench import progress
from tests.unit.bench.synthetic import T0, conversation


def test_counters_and_notable_lines_on_a_plain_stream() -> None:
    out = io.StringIO()
    p = progress.Progress(out, t0_s=T0, expected_s=20, tty=False)
    for ev in conversation():
        p.on_event(ev)
    p.tick(now_s=T0 + 19.0)
    p.tick(now_s=T0 + 19.2)
    p.finish(now_s=T0 + 19.5)
    text = out.getvalue()
    assert "   you: Please turn the volume down, and tell me when the museum opens." in text
    assert "tool: set_volume" in text
    assert "interruption (event 3): playback flushed" in text
    assert "conversation ended: local (long press)" in text
    assert "xrun: underrun" in text
    status = [line for line in text.splitlines() if line.startswith("[")]
    # one every few seconds (the second draw came too soon), plus the final one
    assert len(status) == 2
    assert "19.5/20 s  idle" in status[1]
    assert "2 replies, 2 interruptions, 1 tool call, 1 xrun, ping 27 ms" in status[1]
    assert "barge-in: a press cut the agent off" in text
    assert "agent, cut: I turned the volume down. …" in text
    assert "Please turn the\n" not in text  # tentative transcripts are not printed


def test_on_a_terminal_the_status_line_is_redrawn_in_place() -> None:
    out = io.StringIO()
    p = progress.Progress(out, t0_s=T0, expected_s=10, tty=True)
    p.tick(now_s=T0 + 1)
    p.note("press")
    p.tick(now_s=T0 + 2)
    p.finish(now_s=T0 + 3)
    text = out.getvalue()
    assert text.count("\r\033[K") == 2  # redrawn twice after the first draw
    assert "press\n" in text
    assert text.endswith("\n")


def test_the_bar() -> None:
    assert progress.bar(0.5, 10) == "[#####.....]"
    assert progress.bar(3.0, 4) == "[####]"
    assert progress.bar(-1, 4) == "[....]"
