"""What the kiosk shows, says and does when the service ends a conversation with an error,
and what its status counts of the events it cannot show.

The real controller drives real sessions against a hand-written WebSocket
server that plays the service, or the emulator (no ALSA here: playback is not
part of these cases). Retries happen only while a conversation is being opened; a
conversation that broke off is shown as an error and never reopened on its
own, and the log line says exactly that.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from websockets.sync.server import ServerConnection

from device.app.controller import Controller
from device.app.telemetry import TelemetryBus
from device.core.config import Config, SessionConfig, ToolsConfig
from device.drivers.secrets import Secret
from device.drivers.session import Session
from device.drivers.tools import ToolRegistry
from device.emulator.scenario import DEFAULT_CLIENT_EVENTS, Fault
from tests.integration.daemonrig import Recorder
from tests.integration.sessionrig import (
    WAIT_S,
    Hooks,
    agent_for,
    drain,
    fast_scenario,
    metadata,
    public_agent,
    running,
    scripted,
)

pytestmark = pytest.mark.realtime


def error_event(code: int, error_type: str, message: str = "") -> str:
    return json.dumps({"type": "error", "error_event": {"code": code, "message": message, "error_type": error_type}})


class Service:
    """The scripted service: connection N runs ``plan[N]`` ("fail:<code>:<type>" before or after the metadata)."""

    def __init__(self, plan: list[str], listening: threading.Event) -> None:
        self.plan = plan
        self.listening = listening
        self.connections = 0
        self._lock = threading.Lock()

    def __call__(self, ws: ServerConnection) -> None:
        with self._lock:
            n = self.connections
            self.connections += 1
        step = self.plan[min(n, len(self.plan) - 1)]
        ws.recv(timeout=WAIT_S)  # the initiation
        kind, _, rest = step.partition(":")
        code_s, _, error_type = rest.partition(":")
        if kind == "ok":
            ws.send(metadata(f"conv_{n}"))
            drain(ws)
            return
        if kind == "fail_mid":
            ws.send(metadata(f"conv_{n}"))
            if not self.listening.wait(WAIT_S):  # the controller shows the conversation first
                return
        code = int(code_s)
        ws.send(error_event(code, error_type, "The service explains."))
        ws.close(code, "")
        drain(ws)


@contextmanager
def controller_for(cfg: Config, key: Secret | None = None) -> Iterator[tuple[Controller, Recorder]]:
    """The real controller making real sessions; playback None (nothing here is about audio out)."""
    tools = ToolRegistry(cfg.tools, Hooks())

    def make_session(on_event: Any) -> Session:
        return Session(cfg.agent, cfg.session, tools, key, on_event)

    bus = TelemetryBus()
    tel = Recorder()
    bus.subscribe(tel)
    controller = Controller(cfg, make_session, None, bus)  # type: ignore[arg-type]
    controller.start()
    try:
        yield controller, tel
    finally:
        controller.stop(WAIT_S)


@contextmanager
def kiosk(plan: list[str]) -> Iterator[tuple[Controller, Recorder, Service]]:
    listening = threading.Event()
    service = Service(plan, listening)
    server, port, thread, _ = scripted(service)
    cfg = dataclasses.replace(
        Config(),
        agent=public_agent(port),
        session=SessionConfig(error_hold_s=1.0, retry_initial_s=0.1, retry_max_s=0.2, retry_attempts=2),
    )
    try:
        with controller_for(cfg) as (controller, tel):
            controller.telemetry.subscribe(
                lambda r: listening.set() if r.kind == "state" and r.data.get("state") == "listening" else None
            )
            yield controller, tel, service
    finally:
        server.shutdown()
        thread.join(WAIT_S)


def error_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "device.app.controller" and r.levelno >= logging.ERROR]


def test_a_conversation_that_broke_off_is_shown_not_reopened_and_the_line_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    with kiosk(["fail_mid:1011:unknown_websocket_crash"]) as (controller, tel, service):
        controller.press()
        tel.wait("state", lambda r: r.data["state"] == "listening")
        tel.wait("state", lambda r: r.data["state"] == "error")
        tel.wait("state", lambda r: r.data["state"] == "idle" and r.data["previous"] == "error")
        connections = service.connections
        states = tel.states()
    assert connections == 1, "a conversation that broke off was reopened without a press"
    assert states[-3:] == ["listening", "error", "idle"], states
    [line] = error_lines(caplog)
    assert "the service crashed (unknown_websocket_crash, close 1011)" in line
    assert "press the button" in line
    assert "tries again" not in line, line
    assert "trying again" not in line, line


def test_a_failed_opening_is_retried_and_the_line_says_when(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with kiosk(["fail:1011:unknown_websocket_crash", "ok"]) as (controller, tel, service):
        controller.press()
        tel.wait("state", lambda r: r.data["state"] == "listening")
        connections = service.connections
    assert connections == 2
    [line] = error_lines(caplog)
    assert "the service crashed" in line, line
    assert "(trying again in " in line, line


def test_a_safety_violation_is_not_retried_even_while_connecting(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with kiosk(["fail:1002:safety_violation", "ok"]) as (controller, tel, service):
        controller.press()
        tel.wait("state", lambda r: r.data["state"] == "error")
        tel.wait("state", lambda r: r.data["state"] == "idle" and r.data["previous"] == "error")
        connections = service.connections
    assert connections == 1
    [line] = error_lines(caplog)
    assert "content policy" in line
    assert "trying again" not in line


def test_the_status_counts_text_parts_rich_content_and_mcp_decisions() -> None:
    first = "Hello. I am the emulated agent, and I am here to help you with anything at all."
    scenario = fast_scenario(
        agent={"first_message": first, "client_events": (*DEFAULT_CLIENT_EVENTS, "agent_chat_response_part")},
        faults=(
            Fault(kind="rich_content", reply=0, after_chunks=0),
            Fault(kind="mcp_tool_call", tool_name="lookup_exhibit", state="awaiting_approval", reply=0, after_chunks=0),
            Fault(kind="mcp_tool_call", tool_name="open_door", state="awaiting_approval", reply=0, after_chunks=0),
            Fault(kind="agent_tool_response", tool_name="end_call", reply=0, after_chunks=3, delay_s=60.0),
        ),
    )
    with running(scenario) as emu:
        cfg = dataclasses.replace(
            Config(), agent=agent_for(emu), tools=ToolsConfig(mcp_approve=("lookup_exhibit",))
        )
        with controller_for(cfg, Secret("emulator-key", "test")) as (controller, tel):
            controller.press()
            tel.wait("state", lambda r: r.data["state"] == "listening")
            tel.wait("state", lambda r: r.data["state"] == "idle" and r.data["previous"] == "listening")
            counters = controller.status.to_dict()["counters"]
            decisions = {r.data["name"]: r.data["approved"] for r in tel.of("mcp_approval")}
    assert isinstance(counters, dict)
    assert counters["agent_text_parts"] == len(first.split(" ")) + 2  # start, a delta per word, stop
    assert counters["rich_content"] == 1
    assert (counters["mcp_approved"], counters["mcp_denied"]) == (1, 1)
    assert decisions == {"lookup_exhibit": True, "open_door": False}
