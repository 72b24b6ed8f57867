"""A plain, synchronous conversation client for tests and smoke checks.

It is deliberately dumb — not the device's session: it sends what it is
told (including protocol violations), answers pings unless told not to,
and hands back every server message as parsed JSON.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from device.emulator import wire

Predicate = Callable[[dict[str, Any]], bool]


class ProtocolClient:
    """``with ProtocolClient(url) as c: c.send_init(); c.recv_until("audio")``."""

    def __init__(
        self, url: str, *, auto_pong: bool = True, open_timeout_s: float = 5.0, max_size: int | None = None
    ) -> None:
        self.url = url
        self.auto_pong = auto_pong
        self.received: list[dict[str, Any]] = []
        self.close_code: int | None = None  # from the server's close frame; 1006 when there was none
        self.close_reason = ""
        self.sent_close_code: int | None = None  # what this client's websockets library sent
        self._ws: ClientConnection = connect(
            url, open_timeout=open_timeout_s, max_size=max_size, compression=None, close_timeout=2, legacy=True
        )

    # -- sending ---------------------------------------------------------------
    def send(self, message: dict[str, Any]) -> None:
        self.send_raw(json.dumps(message))

    def send_raw(self, data: str | bytes) -> None:
        try:
            self._ws.send(data)
        except ConnectionClosed as e:
            self._closed(e)
            raise

    def send_init(self, **fields: Any) -> None:
        self.send(wire.conversation_initiation_client_data(**fields))

    def send_audio(self, audio: bytes) -> None:
        self.send(wire.user_audio_chunk(audio))

    def stream_audio(self, audio: bytes, chunk_bytes: int = 8000) -> None:
        """Send ``audio`` as consecutive chunks (4000-frame blocks of 16 kHz PCM by default)."""
        for i in range(0, len(audio), chunk_bytes):
            self.send_audio(audio[i : i + chunk_bytes])

    # -- receiving -------------------------------------------------------------
    def recv(self, timeout_s: float) -> dict[str, Any] | None:
        """The next server message (None on timeout); raises ConnectionClosed at the end."""
        try:
            data = self._ws.recv(timeout=timeout_s)
        except TimeoutError:
            return None
        except ConnectionClosed as e:
            self._closed(e)
            raise
        try:
            msg = json.loads(data)
        except ValueError:
            msg = {"type": "<not json>", "text": data}
        if not isinstance(msg, dict):
            msg = {"type": "<not an object>", "value": msg}
        self.received.append(msg)
        if self.auto_pong and msg.get("type") == "ping":
            self.send(wire.pong(msg["ping_event"]["event_id"]))
        return msg

    def recv_until(self, what: str | Predicate, timeout_s: float = 10.0) -> dict[str, Any]:
        """Read until a message of type ``what`` (or matching it) arrives; TimeoutError otherwise."""
        match: Predicate = (lambda m: m.get("type") == what) if isinstance(what, str) else what
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {what if isinstance(what, str) else 'matching'} message in {timeout_s:g} s")
            msg = self.recv(min(remaining, 0.5))
            if msg is not None and match(msg):
                return msg

    def recv_until_closed(self, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        """Read everything until the server closes; returns what came meanwhile."""
        start = len(self.received)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                self.recv(min(0.5, max(0.0, deadline - time.monotonic())))
        except ConnectionClosed:
            return self.received[start:]
        raise TimeoutError(f"the server did not close within {timeout_s:g} s")

    def of_type(self, type_: str) -> list[dict[str, Any]]:
        return [m for m in self.received if m.get("type") == type_]

    def audio_bytes(self, event_id: int | None = None) -> bytes:
        """The agent audio received so far (of one event_id, or all), decoded."""
        return b"".join(
            base64.b64decode(m["audio_event"]["audio_base_64"])
            for m in self.of_type("audio")
            if event_id is None or m["audio_event"]["event_id"] == event_id
        )

    # -- closing -----------------------------------------------------------------
    def _closed(self, e: ConnectionClosed) -> None:
        self.sent_close_code = e.sent.code if e.sent is not None else None
        if e.rcvd is not None:
            self.close_code, self.close_reason = e.rcvd.code, e.rcvd.reason
        else:
            self.close_code, self.close_reason = 1006, ""

    def close(self, code: int = 1000, reason: str = "") -> None:
        self._ws.close(code, reason)

    def __enter__(self) -> ProtocolClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
