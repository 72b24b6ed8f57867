"""When scores count as the wake word (device/core/wakerule.py)."""

from __future__ import annotations

import pytest

from device.core.wakerule import DEFAULTS, RuleDefaults, WakeRule, defaults_for


def run(rule: WakeRule, scores: list[float], step_s: float = 0.03) -> list[int]:
    return [i for i, s in enumerate(scores) if rule.step(s, (i + 1) * step_s)]


def test_one_step_over_the_cutoff_is_a_detection_and_the_refractory_time_silences_repeats() -> None:
    rule = WakeRule(0.9, 1, refractory_s=0.5)
    scores = [0.1, 0.95, 0.97, 0.2] + [0.1] * 20 + [0.99]
    assert run(rule, scores) == [1, 24]  # 2 and the rest within 0.5 s are ignored; 24 is 0.69 s later
    assert run(WakeRule(0.9, 1, refractory_s=10.0), scores) == [1]


def test_persistence_needs_the_score_high_for_steps_in_a_row() -> None:
    rule = WakeRule(0.5, 3, refractory_s=0.0)
    assert run(rule, [0.9, 0.9, 0.1, 0.9, 0.9, 0.1]) == []  # a near miss: brief peaks
    assert run(WakeRule(0.5, 3, refractory_s=0.0), [0.9, 0.9, 0.9, 0.9]) == [2]


def test_a_reset_forgets_a_run_of_high_scores() -> None:
    rule = WakeRule(0.5, 2, refractory_s=0.0)
    assert not rule.step(0.9, 0.03)
    rule.reset()
    assert not rule.step(0.9, 0.06)
    assert rule.step(0.9, 0.09)


def test_bad_rules_are_refused() -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        WakeRule(1.5)
    with pytest.raises(ValueError, match="at least 1"):
        WakeRule(0.5, 0)


def test_models_without_a_measurement_keep_their_own_cutoff() -> None:
    assert defaults_for("microwakeword", "my_word", 0.93) == RuleDefaults(0.93, None)
    for d in DEFAULTS.values():
        assert 0 < d.cutoff < 1
        assert d.verify_cutoff is None or 0 < d.verify_cutoff < 1
