"""When a stream of wake-word scores counts as the wake word, and each model's shipped cutoffs (pure).

A detector's engine gives a score (0..1) per model step: microWakeWord every 30 ms (already the
mean of its last 5 raw outputs), openWakeWord about every 25 ms. :class:`WakeRule` takes a score
over the cutoff for ``confirm_steps`` steps in a row (score persistence; 1 = the plain cutoff) and
then ignores the word for ``refractory_s``. Measured on near misses ("hey travis", "a lexus"),
persistence does not separate them from the word for microWakeWord (a near miss it takes holds a
high score as long as the word does), so the daemon uses 1 step; what does separate them is a
second engine (drivers/wake.py verification). :data:`DEFAULTS` are the cutoffs chosen from the
wake-word benchmark (tests/bench/bench_wake_material.py; figures in docs/bench.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class RuleDefaults:
    """A model's shipped cutoff, and the verifier's (measured, docs/hands-free.md)."""

    cutoff: float
    verify_cutoff: float | None = None  # None: verification not measured for this model, so not shipped


# (engine, model) → defaults for a public kiosk. Models not listed: the model's own cutoff, and no
# verification unless wake.verify_threshold asks for it.
DEFAULTS: dict[tuple[str, str], RuleDefaults] = {
    # 240 positives; 18.7 min of near misses (a stream, and 120 phrases said alone): the model's own
    # 0.97 alone detects 30.8 % with 4 false accepts (12.8/h); 0.5 verified at 0.95 detects 27.1 %
    # with 2 (6.4/h). At 0.9 it keeps 31.7 % but lets 4 through ("hey travis", "a jar of this").
    ("microwakeword", "hey_jarvis"): RuleDefaults(0.5, 0.95),
}


def defaults_for(engine: str, model: str, own_cutoff: float) -> RuleDefaults:
    """The shipped cutoffs of a model (its own cutoff when not measured)."""
    return DEFAULTS.get((engine, model), RuleDefaults(own_cutoff))


class WakeRule:
    """Scores in, decisions out: the score above ``cutoff`` for ``confirm_steps`` steps in a row.

    ``step`` is called once per engine step with the time the step's audio ended; it returns
    True on the step that completes a detection. Owned by one thread.
    """

    def __init__(self, cutoff: float, confirm_steps: int = 1, refractory_s: float = 2.0) -> None:
        if not 0.0 <= cutoff <= 1.0:
            raise ValueError(f"cutoff {cutoff} is not a score between 0 and 1")
        if confirm_steps < 1:
            raise ValueError("confirm_steps must be at least 1")
        self.cutoff = cutoff
        self.confirm_steps = confirm_steps
        self.refractory_s = refractory_s
        self._run = 0
        self._quiet_until_s = -math.inf

    def step(self, score: float, t_s: float) -> bool:
        if score <= self.cutoff:
            self._run = 0
            return False
        self._run += 1
        if self._run < self.confirm_steps or t_s < self._quiet_until_s:
            return False
        self._run = 0
        self._quiet_until_s = t_s + self.refractory_s
        return True

    def reset(self) -> None:
        """Forget the run of high scores (the audio it came from is gone); the refractory time stays."""
        self._run = 0
