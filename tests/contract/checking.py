"""Validate every message through the emulator against the document, while a test runs.

``contract_check`` is an autouse fixture (imported by the integration and
bench conftests): it taps every in-process emulator conversation, validates
each JSON message the client sent and each the emulator sent, and fails the
test afterwards when any broke the contract. Messages a fault breaks on
purpose (``Send.conforms`` False) are not checked; a test whose client breaks
the contract on purpose is marked ``@pytest.mark.contract_exempt``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from device.emulator.conversation import add_message_tap, remove_message_tap
from tests.contract.validator import FROM_AGENT, TO_AGENT, contract

_MAX_SHOWN = 10
_ALIGNMENT_ITEMS = 2000


class ContractLog:
    """What one test sent through the emulators, and what broke the contract."""

    def __init__(self, check_client: bool = True) -> None:
        self.check_client = check_client
        self.counts: dict[str, dict[str, int]] = {TO_AGENT: {}, FROM_AGENT: {}}
        self.problems: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, direction: str, message: dict[str, Any], conforms: bool) -> None:
        """The tap: runs on emulator threads, so it never raises."""
        if not conforms or (direction == TO_AGENT and not self.check_client):
            return
        try:
            c = contract()
            message, found = _shrink_alignment(message)
            found += c.problems(direction, message)
            type_ = c.message_type(direction, message) or "?"
        except Exception as e:  # a bug here must fail the test, not kill the emulator thread
            found, type_ = [f"validator failed: {e!r}"], "?"
        with self._lock:
            self.counts[direction][type_] = self.counts[direction].get(type_, 0) + 1
            if found:
                shown = json.dumps(message, default=str)
                shown = shown if len(shown) <= 300 else shown[:300] + "…"
                self.problems += [f"{direction}: {p}\n    in {shown}" for p in found]

    def report(self) -> str:
        with self._lock:
            problems = list(self.problems)
        more = f"\n… and {len(problems) - _MAX_SHOWN} more" if len(problems) > _MAX_SHOWN else ""
        return f"{len(problems)} message(s) broke the AsyncAPI contract:\n" + "\n".join(problems[:_MAX_SHOWN]) + more


def _shrink_alignment(message: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Huge alignment arrays (the oversized-frame fault pads to 20 MiB with them) checked fast.

    jsonschema takes seconds over millions of items, on the emulator's thread, which would
    delay the frame past the client's timeouts: the items' types are checked here instead and
    the schema sees the first ``_ALIGNMENT_ITEMS``.
    """
    event = message.get("audio_event") if message.get("type") == "audio" else None
    alignment = event.get("alignment") if isinstance(event, dict) else None
    if not isinstance(alignment, dict) or all(
        not isinstance(v, list) or len(v) <= _ALIGNMENT_ITEMS for v in alignment.values()
    ):
        return message, []
    problems = []
    for key, kind in (("chars", str), ("char_start_times_ms", int), ("char_durations_ms", int)):
        values = alignment.get(key)
        if isinstance(values, list) and not all(isinstance(v, kind) and not isinstance(v, bool) for v in values):
            problems.append(f"audio: audio_event/alignment/{key}: an item is not of type {kind.__name__}")
    short = {k: v[:_ALIGNMENT_ITEMS] if isinstance(v, list) else v for k, v in alignment.items()}
    return {**message, "audio_event": {**event, "alignment": short}}, problems


@pytest.fixture(autouse=True)
def contract_check(request: pytest.FixtureRequest) -> Iterator[ContractLog]:
    log = ContractLog(check_client=request.node.get_closest_marker("contract_exempt") is None)
    add_message_tap(log)
    try:
        yield log
    finally:
        remove_message_tap(log)
    if log.problems:
        pytest.fail(log.report(), pytrace=False)
