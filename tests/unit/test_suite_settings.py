"""Suite-wide settings that keep the tests free of wall-clock limits."""

from __future__ import annotations

from hypothesis import HealthCheck, settings


def test_hypothesis_has_no_deadline_on_slow_machines() -> None:
    # Hypothesis fails an example slower than 200 ms by default: under qemu (the ARM check)
    # or on a loaded 2-core machine, building one GainTable takes longer than that.
    assert settings.default.deadline is None
    assert HealthCheck.too_slow in settings.default.suppress_health_check
