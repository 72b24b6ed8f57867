"""Shared pieces of the session integration tests (no tests here).

The emulator is the agent service; the only stand-ins are the device hooks
(``tests.support.Hooks``) and, where the emulator
cannot express a case, a scripted ``websockets`` server (the cloud's edge).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from websockets.exceptions import ConnectionClosed
from websockets.sync.server import ServerConnection, serve

from device.core.config import AgentConfig, SessionConfig, ToolsConfig
from device.core.protocol import SessionEnded, SessionEvent
from device.drivers.secrets import Secret
from device.drivers.session import Session
from device.drivers.tools import ToolRegistry
from device.emulator.scenario import Scenario, Turn, default_scenario
from device.emulator.server import Emulator
from device.emulator.speech import speechlike_pcm
from tests.support import Collector, Hooks

EMULATOR_KEY = "emulator-key"
WAIT_S = 30.0  # every wait is bounded; generous because the machine is shared
BLOCK_BYTES = 8000  # one capture block: 4000 frames S16LE mono 16 kHz

E = TypeVar("E")


def fast_scenario(**changes: Any) -> Scenario:
    """Short replies delivered quickly, quick turn-taking, no audio-rate policing."""
    base = default_scenario().with_changes(
        agent={"first_message": "Hello.", "words_per_minute": 300},
        timing={
            "speed": 20.0,
            "response_delay_ms": 50,
            "end_of_turn_silence_ms": 300,
            "turn_timeout_s": 0.0,
            "ping_interval_s": 0.5,
        },
        strict={"audio_rate_factor": 0.0},
        turns=(
            Turn(transcript="What can you do?", reply="I can help."),
            Turn(transcript="Thanks, bye.", reply="Bye.", end_call=True),
        ),
    )
    return base.with_changes(**changes) if changes else base


class Events(Collector[SessionEvent]):
    """Collects session events and the threads that delivered them."""

    def __init__(self) -> None:
        super().__init__(WAIT_S)
        self.threads: set[str] = set()

    def __call__(self, event: SessionEvent) -> None:
        self.threads.add(threading.current_thread().name)
        super().__call__(event)

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.matching(lambda e: isinstance(e, kind)) if isinstance(e, kind)]

    def wait_for(self, kind: type[E], pred: Callable[[E], bool] = lambda e: True, timeout_s: float = WAIT_S) -> E:
        def what() -> str:
            return f"no {kind.__name__} within {timeout_s:g} s; got {sorted({type(e).__name__ for e in self.items})}"

        found = self.wait_first(lambda e: isinstance(e, kind) and pred(e), timeout_s, what=what)
        assert isinstance(found, kind)
        return found

    def wait_count(  # type: ignore[override]
        self, kind: type[E], n: int, pred: Callable[[E], bool] = lambda e: True, timeout_s: float = WAIT_S
    ) -> list[E]:
        """Until at least ``n`` events of ``kind`` matching ``pred`` have arrived."""
        what = f"{n} {kind.__name__} events in {timeout_s:g} s"
        found = super().wait_count(lambda e: isinstance(e, kind) and pred(e), n, timeout_s, what=what)
        return [e for e in found if isinstance(e, kind)]

    def ended(self, timeout_s: float = WAIT_S) -> SessionEnded:
        return self.wait_for(SessionEnded, timeout_s=timeout_s)


@contextmanager
def running(scenario: Scenario | None = None, **kw: Any) -> Iterator[Emulator]:
    emu = Emulator(scenario or fast_scenario(), speech="tone", **kw)
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


def agent_for(emu: Emulator, **kw: Any) -> AgentConfig:
    kw.setdefault("agent_id", emu.agent_id)
    kw.setdefault("base_url", emu.base_url)
    kw.setdefault("connect_timeout_s", 5.0)
    kw.setdefault("http_timeout_s", 5.0)
    return AgentConfig(**kw)


def make_session(
    emu: Emulator | None,
    *,
    agent: AgentConfig | None = None,
    tools: ToolRegistry | None = None,
    key: str | None = EMULATOR_KEY,
    session_cfg: SessionConfig | None = None,
    **kw: Any,
) -> tuple[Session, Events]:
    events = Events()
    if agent is None:
        assert emu is not None
        agent = agent_for(emu)
    registry = tools if tools is not None else ToolRegistry(ToolsConfig(), Hooks())
    session = Session(
        agent,
        session_cfg or SessionConfig(),
        registry,
        Secret(key, "test") if key else None,
        events,
        **kw,
    )
    return session, events


@contextmanager
def started(session: Session) -> Iterator[Session]:
    session.start()
    try:
        yield session
    finally:
        session.stop()


def blocks(pcm: bytes) -> Iterator[bytes]:
    for i in range(0, len(pcm), BLOCK_BYTES):
        yield pcm[i : i + BLOCK_BYTES]


def speak(session: Session, text: str, silence_s: float = 0.75) -> bytes:
    """Send one utterance (speech-like audio) then enough silence to end the turn; returns the audio."""
    pcm = speechlike_pcm(text, 16000) + bytes(int(silence_s * 32000))
    for block in blocks(pcm):
        session.send_audio(block, time.monotonic())
    return pcm


def silence(session: Session, seconds: float) -> None:
    for block in blocks(bytes(int(seconds * 32000))):
        session.send_audio(block, time.monotonic())


def wait_reply_played(emu: Emulator, turn_index: int) -> None:
    """Until the emulator's playback clock says reply ``turn_index`` has been heard in full."""

    def played(snaps: list[Any]) -> bool:
        turns = snaps[-1].turns if snaps else []
        if len(turns) <= turn_index:
            return False
        end = turns[turn_index].reply_play_end_t_s
        return end is not None and time.monotonic() >= end

    emu.wait_until(played, WAIT_S, f"the end of reply {turn_index}")


def messages_to_agent(record: Any, kind: str) -> list[dict[str, Any]]:
    return [e for e in record.events if e["direction"] == "to_agent" and e["type"] == kind]


def dumps(msg: dict[str, Any]) -> str:
    return json.dumps(msg)


def wait_closed(ws: ServerConnection, timeout_s: float = WAIT_S) -> None:
    """Until the closing handshake is over, discarding what still arrives (bounded by ``timeout_s``).

    ``ws.close_code`` stays None until the connection is CLOSED: a script that
    ends first (its test set a ``done`` Event) must not read it before the
    device's close frame was processed. ``recv`` raises ConnectionClosed only
    once the state is CLOSED.
    """
    deadline = time.monotonic() + timeout_s
    try:
        while (left_s := deadline - time.monotonic()) > 0:
            ws.recv(timeout=left_s)
    except (ConnectionClosed, TimeoutError):
        return


def scripted(
    script: Callable[[ServerConnection], None],
) -> tuple[Any, int, threading.Thread, list[int | None]]:
    """A ``websockets`` server running ``script`` per connection: (server, port, thread, close codes).

    A close code is recorded once that connection's closing handshake is over
    (``server.shutdown()`` waits for it, closing a connection still open with 1001).
    """
    closes: list[int | None] = []

    def handler(ws: ServerConnection) -> None:
        try:
            script(ws)
        finally:
            wait_closed(ws)
            closes.append(ws.close_code)

    server = serve(handler, "127.0.0.1", 0, compression=None, max_size=None)
    port = server.socket.getsockname()[1]
    thread = threading.Thread(target=server.serve_forever, name="scripted-server")
    thread.start()
    return server, port, thread, closes


def metadata(conversation_id: str = "conv_scripted") -> str:
    return json.dumps({
        "type": "conversation_initiation_metadata",
        "conversation_initiation_metadata_event": {
            "conversation_id": conversation_id,
            "agent_output_audio_format": "pcm_16000",
            "user_input_audio_format": "pcm_16000",
        },
    })


def drain(ws: ServerConnection) -> None:
    """Until the device closes (answering its close frame)."""
    try:
        while True:
            ws.recv(timeout=WAIT_S)
    except (ConnectionClosed, TimeoutError):
        pass


def public_agent(port: int) -> AgentConfig:
    return AgentConfig(agent_id="a", connection="public", base_url=f"http://127.0.0.1:{port}", connect_timeout_s=5.0)
