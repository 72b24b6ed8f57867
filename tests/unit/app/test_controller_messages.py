"""The controller's own error lines promise no retry it will not make."""

from __future__ import annotations

import random

from device.core.config import SessionConfig
from device.core.machine import Input, Kind, Machine, MachineSettings, State


def connecting(retry_attempts: int) -> Machine:
    cfg = SessionConfig(connecting_timeout_s=5, retry_attempts=retry_attempts)
    m = Machine(MachineSettings(session=cfg), 0.0, rng=random.Random(1))
    m.handle(Input(Kind.PRESS), 0.0)
    assert m.state is State.CONNECTING
    return m


def test_a_connect_timeout_with_retries_left_is_retried() -> None:
    m = connecting(retry_attempts=1)
    m.poll(5.0)
    assert m.state is State.ERROR and m.retry_pending  # the line then ends "(trying again in N s)"


def test_the_last_connect_timeout_does_not_claim_a_retry() -> None:
    m = connecting(retry_attempts=0)
    m.poll(5.0)
    assert m.state is State.ERROR and not m.retry_pending
    assert "no connection to the agent within 5 s" in m.last_error
    assert "tries again" not in m.last_error and "press" in m.last_error
