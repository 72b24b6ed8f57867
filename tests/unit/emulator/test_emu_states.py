"""The conversation's states, from connecting to closing (fake clock, no socket)."""

from __future__ import annotations

import json

import pytest

from device.emulator import wire
from device.emulator.conversation import Conversation, ConversationState
from device.emulator.recording import ConversationRecord
from device.emulator.scenario import default_scenario, parse_fault_spec
from device.emulator.speech import Synthesizer


class Clock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def conv(clock: Clock, tone_synth: Synthesizer) -> Conversation:
    scenario = default_scenario().with_changes(faults=(parse_fault_spec("slow_metadata:delay_s=1"),))
    record = ConversationRecord("conv_0123456789abcdef", "agent_emulator", 0, clock(), "pcm_16000", "pcm_16000")
    return Conversation(scenario, record, render=tone_synth.render, clock=clock)


def initiate(conv: Conversation) -> None:
    conv.receive(json.dumps(wire.conversation_initiation_client_data()))


def test_a_new_conversation_is_new(conv: Conversation) -> None:
    assert conv.state is ConversationState.NEW


def test_once_open_it_awaits_the_initiation(conv: Conversation) -> None:
    conv.open()
    assert conv.state is ConversationState.AWAITING_INIT


def test_after_the_initiation_it_awaits_the_metadata(conv: Conversation) -> None:
    conv.open()
    initiate(conv)
    assert conv.state is ConversationState.AWAITING_METADATA


def test_with_the_metadata_sent_it_is_active(conv: Conversation, clock: Clock) -> None:
    conv.open()
    initiate(conv)
    clock.now_s += 1.0
    conv.tick()
    assert conv.state is ConversationState.ACTIVE


def test_stopped_it_is_closed(conv: Conversation) -> None:
    conv.open()
    conv.stop()
    assert conv.state is ConversationState.CLOSED and conv.closed


def test_closed_by_the_client_it_is_closed(conv: Conversation) -> None:
    conv.open()
    conv.client_closed(1000, "")
    assert conv.state is ConversationState.CLOSED and conv.closed
