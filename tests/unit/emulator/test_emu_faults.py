"""The fault dispatch table against the fault kinds a scenario may name."""

from __future__ import annotations

from typing import get_args

from device.emulator.conversation import FAULT_HANDLERS
from device.emulator.scenario import FAULT_PARAMS, REPLY_FAULTS, FaultKind

# Kinds that act on the initiation, the metadata or the HTTP side, never on a reply.
CONNECTION_FAULTS = {"quota", "slow_metadata", "missing_metadata", "refuse_upgrade", "signed_url_error"}


def test_every_reply_fault_kind_has_exactly_one_handler() -> None:
    assert sorted(FAULT_HANDLERS) == sorted(REPLY_FAULTS)


def test_no_handler_serves_two_kinds() -> None:
    assert len(set(FAULT_HANDLERS.values())) == len(FAULT_HANDLERS)


def test_every_other_fault_kind_acts_on_the_connection() -> None:
    assert set(get_args(FaultKind)) - set(REPLY_FAULTS) == CONNECTION_FAULTS


def test_the_fault_kinds_are_the_ones_a_scenario_accepts() -> None:
    assert set(get_args(FaultKind)) == set(FAULT_PARAMS)
