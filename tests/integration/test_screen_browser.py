"""The screen in a real browser: headless Chromium shows the page of the daemon on the bench (the emulator,
the clocked card) through a scripted conversation driven from the page's own talk button.

What it proves: the talk button starts a conversation and holds the microphone open; the agent's words
appear as they are heard (each word's time on the page against when the speaker played it, from the
reply_chunk telemetry: reported, with a generous sanity bound only); after an interruption no word that
was not heard is shown; the conversation's words are gone when it ends; the page shows that it is
reconnecting while the daemon is down and recovers by itself when it is back. Screenshots at fixed
points go to bench-out/screen/ (800x480 and 1920x1080), each checked for drawn content.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from device.app.daemon import Daemon
from device.bench.clockedcard import ClockedCard
from device.core.config import ScreenConfig
from device.core.protocol import Alignment
from device.drivers.secrets import Secret
from device.emulator.scenario import Turn
from tests.integration import browser
from tests.integration.browser import Browser
from tests.integration.daemonrig import ROOT, WAIT_S, Recorder, Rig, fast_scenario, speech
from tests.support import free_port

pytestmark = pytest.mark.realtime

OUT = ROOT / "bench-out" / "screen"
QUESTION_1 = speech("Where can I find the dinosaurs?")
QUESTION_2 = speech("And is there a cafe?")
REPLY_1 = "The dinosaurs are in the great hall on the left, right past the shop with the blue door."
REPLY_2 = "Yes, there is a lovely cafe upstairs with cakes, soup, coffee and a terrace that looks over the park."
SANITY_S = 1.0  # not a latency target: the figures are printed; this only catches a caption gone wrong
CHUNK_S = 1000 / 16000  # one playback chunk


@pytest.fixture
def screen_browser_ready() -> None:
    reason = browser.available()
    if reason is not None:
        pytest.skip(reason)


def words_heard(tel: Recorder, event_id: int) -> list[tuple[str, float | None]]:
    """Each word of one reply and when its first character was heard (None: never played), from the
    alignment and the reply_chunk anchors: computed here, independently of the captions model."""
    chars: list[tuple[str, float]] = []  # (char, stream position)
    for r in tel.of("agent_audio"):
        a = r.data.get("alignment")
        if r.data.get("event_id") != event_id or not isinstance(a, Alignment):
            continue
        rate = r.data["rate_hz"]
        chars += [(c, r.data["position"] + ms * rate / 1000) for c, ms in zip(a.chars, a.starts_ms, strict=True)]
    anchors = [(r.data["position"], r.data["frames"], r.data["rate_hz"], r.t_s) for r in tel.of("reply_chunk")]

    def heard(position: float) -> float | None:
        for start, frames, rate, t_s in anchors:
            if start <= position < start + frames:
                return float(t_s + (position - start) / rate)
        return None

    words: list[tuple[str, float | None]] = []
    word, first = "", 0.0
    for c, position in [*chars, (" ", 0.0)]:
        if c.isspace():
            if word:
                words.append((word, heard(first)))
            word = ""
        else:
            if not word:
                first = position
            word += c
    return words


def shown_times(log: list[dict[str, Any]], reply: str, epoch_to_mono: float) -> list[tuple[float, float]]:
    """When the page first showed 1, 2, … words of ``reply`` (this process's monotonic clock), and when the
    server made that message (``server_s``, the same clock)."""
    target = reply.split()
    shown: list[tuple[float, float]] = []
    for entry in log:
        words = entry["agent"].split()
        if not words or words != target[: len(words)]:
            continue
        while len(shown) < len(words):
            shown.append((entry["shown_ms"] / 1000 - epoch_to_mono, float(entry["server_s"])))
    return shown


def figures(name: str, deltas: list[float]) -> str:
    ms = sorted(d * 1000 for d in deltas)
    p95 = ms[min(len(ms) - 1, int(0.95 * len(ms)))]
    return f"{name}: n={len(ms)} p50 {statistics.median(ms):.0f} ms, p95 {p95:.0f} ms, max {ms[-1]:.0f} ms"


@pytest.fixture
def rig(tmp_path: Path, clocked_card: ClockedCard, screen_browser_ready: None) -> Iterator[Rig]:
    scenario = fast_scenario(
        Turn(transcript="Where can I find the dinosaurs?", reply=REPLY_1),
        Turn(transcript="And is there a cafe?", reply=REPLY_2),
        agent={"alignment": True, "words_per_minute": 200},
    )
    audio = {"capture_device": clocked_card.microphone_device, "playback_device": clocked_card.speaker_device,
             "pace_realtime": False}
    r = Rig(tmp_path, b"", scenario, audio=audio)
    r.cfg_parts["screen"] = ScreenConfig(enabled=True, port=free_port(), talk_button=True)
    with r:
        yield r


def speak(card: ClockedCard, pcm: bytes) -> None:
    """Play a question into the room and return 0.3 s after its last word (a scripted person)."""
    asked_at_s = time.monotonic()
    player = card.play_into_room(pcm)
    assert card.room is not None
    spoke_at_s = card.room.wait_for_sound(asked_at_s)
    threading.Event().wait(max(0.0, spoke_at_s + len(pcm) / 2 / 16000 + 0.3 - time.monotonic()))
    assert player.wait(WAIT_S) == 0


def test_the_page_follows_a_conversation_and_survives_a_restart(rig: Rig, clocked_card: ClockedCard,
                                                                tmp_path: Path) -> None:
    screen = rig.cfg_parts["screen"]
    url = f"http://127.0.0.1:{screen.port}/"
    rig.wait_state("idle")
    with Browser(tmp_path / "chromium", url) as page:
        epoch_to_mono = time.time() - time.monotonic()
        page.wait_for("window.__screen && window.__screen.view && window.__screen.view.state === 'idle'")
        assert page.eval("document.getElementById('state').textContent") == "Press to talk"
        shot = page.screenshot(OUT / "idle-800x480.png")
        assert shot["width"] == 800 and shot["height"] == 480 and shot["lit"] > 0.01

        # The talk button starts the conversation and holds the microphone open while the visitor speaks.
        mark = rig.tel.mark()
        page.mouse("mousePressed", "#talk")
        rig.tel.wait("button", lambda r: r.data["source"] == "screen" and r.data["action"] == "press", after=mark)
        rig.wait_state("listening", after=mark)
        speak(clocked_card, QUESTION_1)
        page.mouse("mouseReleased", "#talk")
        started = rig.tel.wait("reply_started", after=mark)
        page.wait_for("window.__screen.view.lines.some(l => l.role === 'agent' && l.text.split(' ').length >= 6)")
        shot = page.screenshot(OUT / "speaking-800x480.png")
        assert shot["lit"] > 0.03 and shot["colors"] > 4
        assert page.eval("document.body.className") == "s-speaking"
        assert "dinosaurs" in page.eval("document.getElementById('lines').textContent")
        assert page.eval("[...document.querySelectorAll('.line')].every(e => e.dir === 'auto')")  # RTL reads RTL
        rig.tel.wait("reply_finished", after=mark)
        page.wait_for(f"window.__screen.view.lines.some(l => l.text === {REPLY_1!r})", what="the whole reply")

        # Turn 2, cut off with the talk button a few words in.
        page.resize(1920, 1080)
        mark2 = rig.tel.mark()
        page.mouse("mousePressed", "#talk")
        speak(clocked_card, QUESTION_2)
        page.mouse("mouseReleased", "#talk")
        second = rig.tel.wait("reply_started", after=mark2)
        page.wait_for("(() => { const a = window.__screen.view.lines.filter(l => l.role === 'agent');"
                      " return a.length >= 2 && a[a.length - 1].text.split(' ').length >= 4; })()")
        shot = page.screenshot(OUT / "speaking-1920x1080.png")
        assert shot["width"] == 1920 and shot["height"] == 1080 and shot["lit"] > 0.01
        cut_mark = rig.tel.mark()
        page.mouse("mousePressed", "#talk")
        interruption = rig.tel.wait("interruption", after=cut_mark)
        page.mouse("mouseReleased", "#talk")
        page.wait_for("window.__screen.view.lines.some(l => l.cut)", what="the cut line")
        cut_text = page.eval("window.__screen.view.lines.filter(l => l.cut)[0].text")
        log_during = page.eval("window.__screen.log")

        # The end button ends it; nothing of the conversation stays on the page.
        page.resize(800, 480)
        page.click("#end")
        rig.wait_state("idle", after=cut_mark)
        page.wait_for("window.__screen.view.state === 'idle' && window.__screen.view.lines.length === 0")
        assert page.eval("document.getElementById('lines').textContent") == ""

        # The daemon goes away and comes back: the page says so quietly, then carries on by itself.
        rig.d.stop()
        page.wait_for("!window.__screen.connected")
        assert page.eval("document.getElementById('conn').textContent") == "reconnecting…"
        page.wait_for("window.__screen.view.state === 'stopped'", what="nothing stale while the daemon is away")
        assert page.eval("document.getElementById('buttons').className") == ""  # no button that does nothing
        page.screenshot(OUT / "reconnecting-800x480.png")
        rig.daemon = Daemon(rig.config(), Secret("emulator-key", "test"), pin_factory=rig.factory,
                            notifier=rig.notifier)
        again = Recorder()
        rig.d.telemetry.subscribe(again)
        rig.d.start()
        page.wait_for("window.__screen.opens >= 2 && window.__screen.connected && "
                      "window.__screen.view.state === 'idle'", what="the page back after the restart")
        assert page.eval("document.getElementById('conn').textContent") == ""
        drift_s = (time.time() - time.monotonic()) - epoch_to_mono

    # -- captions against what was heard --------------------------------------------------------------
    heard_1 = words_heard(rig.tel, int(rig.tel.of("agent_audio")[0].data["event_id"]))
    assert [w for w, _ in heard_1] == REPLY_1.split()
    shown_1 = shown_times(log_during, REPLY_1, epoch_to_mono)
    assert len(shown_1) == len(heard_1)  # every word, in order
    page_lag = [s - h for (s, _), (_, h) in zip(shown_1, heard_1, strict=True) if h is not None]
    server_lag = [m - h for (_, m), (_, h) in zip(shown_1, heard_1, strict=True) if h is not None]
    assert len(page_lag) == len(heard_1)  # every word of it was played
    print(figures("reply 1, word on the page minus word heard", page_lag))
    print(figures("reply 1, server's message made minus word heard", server_lag))
    print(f"clock offset drift over the test: {drift_s * 1000:.1f} ms")
    assert all(-0.05 < d < SANITY_S for d in page_lag), page_lag  # never before it is heard, never far after

    # After the interruption: only words that were heard before the cut are on screen.
    second_id = next(int(r.data["event_id"]) for r in rig.tel.of("agent_audio")
                     if r.t_s >= started.t_s and r.data["event_id"] != rig.tel.of("agent_audio")[0].data["event_id"])
    heard_2 = words_heard(rig.tel, second_id)
    cut_words = cut_text.split()
    assert 0 < len(cut_words) < len(REPLY_2.split())
    assert cut_words == REPLY_2.split()[: len(cut_words)]
    for word, at in heard_2[: len(cut_words)]:
        assert at is not None and at <= interruption.t_s + CHUNK_S, (word, at)
    flushed = rig.tel.of("flushed")
    cut_at = min([interruption.t_s] + [r.t_s for r in flushed if r.t_s >= second.t_s])
    unheard = [w for w, at in heard_2 if at is None or at > cut_at + CHUNK_S]
    print(f"reply 2 cut after {len(cut_words)} of {len(REPLY_2.split())} words; "
          f"{len(unheard)} words after the cut never shown")
    after = [(w, None if at is None else round((at - interruption.t_s) * 1000)) for w, at in heard_2]
    print(f"reply 2 words heard, ms after the interruption: {after[:len(cut_words) + 2]}; "
          f"flushed at {[round((r.t_s - interruption.t_s) * 1000) for r in flushed if r.t_s >= second.t_s]} ms")

    # State on the page against the LEDs.
    led = [(r.data["state"], r.t_s) for r in rig.tel.items[mark:] if r.kind == "led"]
    lags = []
    for state, t_s in led:
        seen = [e["shown_ms"] / 1000 - epoch_to_mono for e in log_during if e["state"] == state]
        later = [s for s in seen if s >= t_s - 0.05]
        if later:
            lags.append(later[0] - t_s)
    if lags:
        print(figures("state on the page minus the LEDs", lags))
        assert all(d < SANITY_S for d in lags)
