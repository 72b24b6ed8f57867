"""The wake-word benchmark's material (tests/wakematerial.py) is what it claims, on a few clips.

Real synthesizers (espeak-ng, flite, festival) and the real microWakeWord engine; the full
benchmark is tests/bench/bench_wake_material.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests import wakematerial as m

pytestmark = [pytest.mark.realtime,
              pytest.mark.skipif(bool(m.missing_tools()), reason=f"needs {', '.join(m.missing_tools())}")]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path_factory.getbasetemp() / "wake-material"  # shared by this module's tests
    monkeypatch.setattr(m, "CACHE", cache)
    return cache


THREE = (m.Voice("espeak", "en-us"), m.Voice("flite", "slt"), m.Voice("festival", "kal_diphone"))


def test_three_synthesizers_say_the_wake_word_differently_and_the_cache_keeps_it(_private_cache: Path) -> None:
    said = [m.speak(v, "hey jarvis") for v in THREE]
    for x in said:
        assert 0.4 < len(x) / m.RATE_HZ < 2.5
        assert float(np.max(np.abs(x))) == pytest.approx(10 ** (-3 / 20), abs=0.01)  # normalized to -3 dBFS
    assert len({len(x) for x in said}) == 3  # three different voices, not one
    files = sorted((_private_cache / "speech").glob("*.wav"))
    assert len(files) == 3
    stamps = [f.stat().st_mtime_ns for f in files]
    m.speak.cache_clear()
    again = m.speak(THREE[1], "hey jarvis")
    assert np.array_equal(again, said[1])
    assert [f.stat().st_mtime_ns for f in files] == stamps  # read from the cache, not synthesized again
    slow = m.speak(THREE[0], "hey jarvis", 0.85, -200)
    assert len(slow) > len(said[0]) * 1.1  # the speed variation is slower


def test_conditions_have_the_level_and_snr_they_are_named_after() -> None:
    word = m.speak(THREE[0], "hey jarvis")
    x = np.concatenate([np.zeros(8000, np.float32), word, np.zeros(16000, np.float32)])
    speech = np.abs(x) > 0.01
    for name, snr_db in (("pink_10db", 10.0), ("babble_20db", 20.0), ("babble_5db", 5.0)):
        noisy = m.condition(x, name)
        noise = noisy - x
        # pink noise is not stationary over 2.5 s: its level here differs a little from the whole loop's
        assert 20 * np.log10(m.rms(x[speech]) / m.rms(noise)) == pytest.approx(snr_db, abs=1.0), name
    quiet = m.condition(x, "quiet")
    assert 20 * np.log10(m.rms(quiet[speech])) == pytest.approx(-40.0, abs=0.5)
    reverb = m.condition(x, "reverb")
    tail = slice(8000 + len(word), 8000 + len(word) + 3200)  # 200 ms after the word: the room still rings
    assert m.rms(reverb[tail]) > 100 * max(m.rms(x[tail]), 1e-6)


def test_babble_is_several_talkers_at_once() -> None:
    b = m.babble()
    assert len(b) == 60 * m.RATE_HZ
    frames = b[: len(b) // 320 * 320].reshape(-1, 320)
    level = 20 * np.log10(np.sqrt(np.mean(frames**2, axis=1)) + 1e-9)
    # One talker pauses between words; four at once hardly ever fall silent.
    assert float(np.mean(level < float(np.max(level)) - 30)) < 0.02


def test_near_misses_are_built_for_each_wake_word() -> None:
    for model in m.PHRASE:
        phrases = m.NEAR_MISSES[model]
        assert len(phrases) >= 5
        assert all(m.PHRASE[model] not in p for p in phrases)
    assert "a lexus" in m.NEAR_MISSES["alexa"]
    assert "hey travis" in m.NEAR_MISSES["hey_jarvis"]


def test_the_benchmark_scores_clips_and_counts_near_miss_false_accepts() -> None:
    pytest.importorskip("pymicro_wakeword", reason="the wake extra is not installed")
    from tests.bench import bench_wake_material as b

    pos = b.positive_traces("microwakeword", "okay_nabu", conditions=("clean", "babble_5db"),
                            voices=(m.Voice("flite", "rms"),), variants=((1.0, 0),))
    assert [c.cond for c, _ in pos] == ["clean", "babble_5db"]
    clean, drowned = (t for _, t in pos)
    # Measured: flite's rms says "okay nabu" clearly (peak 0.996); in babble at 5 dB it is lost.
    assert float(np.max(clean)) > 0.9
    assert b.decisions(clean, b.STEP_S["microwakeword"], 0.85, 1)
    assert float(np.max(drowned)) < float(np.max(clean))
    stream = np.concatenate([np.zeros(8000, np.float32), m.speak(m.Voice("flite", "rms"), "okay nabu"),
                             np.zeros(16000, np.float32)] * 2)
    trace = b.negative_trace("microwakeword", "okay_nabu", "test", stream, "twice")
    assert len(b.decisions(trace, b.STEP_S["microwakeword"], 0.85, 1)) == 2  # said twice, 2 s apart: counted twice
