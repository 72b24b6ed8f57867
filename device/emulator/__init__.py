"""A local, protocol-faithful ElevenAgents server for benches, tests and kiosks.

    from device.emulator import Emulator, default_scenario
    with Emulator(default_scenario()) as emu:
        url = emu.signed_url()            # or GET {emu.base_url}/v1/convai/conversation/get-signed-url
        ...
        record = emu.wait_for_conversation_end()

``Emulator`` (and ``ProtocolClient``) need the ``websockets`` package from the
``[bench]`` extra; they are imported on first use so the scenario model can
be used without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from device.emulator.recording import ConversationRecord, ToolCallRecord, TurnRecord, Violation
from device.emulator.scenario import Fault, Scenario, ToolCall, Turn, default_scenario, load_scenario

if TYPE_CHECKING:
    from device.emulator.client import ProtocolClient
    from device.emulator.server import Emulator

__all__ = [
    "ConversationRecord",
    "Emulator",
    "Fault",
    "ProtocolClient",
    "Scenario",
    "ToolCall",
    "ToolCallRecord",
    "Turn",
    "TurnRecord",
    "Violation",
    "default_scenario",
    "load_scenario",
]


def __getattr__(name: str) -> Any:
    if name == "Emulator":
        from device.emulator.server import Emulator

        return Emulator
    if name == "ProtocolClient":
        from device.emulator.client import ProtocolClient

        return ProtocolClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
