"""The frame-size cap on websocket-client: it works on the installed release, and a changed one is refused."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from device.core.config import AgentConfig, SessionConfig, ToolsConfig
from device.core.errors import SessionError
from device.core.protocol import MAX_MESSAGE_BYTES
from device.drivers import session as session_mod
from device.drivers.session import Session, _End, _install_frame_cap, check_frame_cap, frame_cap_problem
from device.drivers.tools import ToolRegistry

FrameBuffer: Any = type(session_mod.websocket.WebSocket().frame_buffer)


def reader(data: bytes) -> Any:
    """A websocket-client frame buffer reading ``data``, with the cap installed."""
    pending = [data]

    def recv(n: int) -> bytes:
        chunk, pending[0] = pending[0][:n], pending[0][n:]
        if not chunk:
            raise ConnectionError("no more data")  # would be a closed socket
        return chunk

    fb = FrameBuffer(recv, True)
    _install_frame_cap(fb, MAX_MESSAGE_BYTES)
    return fb


def test_the_cap_works_on_the_installed_release() -> None:
    assert frame_cap_problem() == ""


def test_a_frame_within_the_limit_is_read_whole() -> None:
    payload = b"x" * 70000  # a 64-bit length field, like a long audio message
    frame = reader(bytes([0x81, 0x7F]) + struct.pack("!Q", len(payload)) + payload).recv_frame()
    assert frame.data == payload


def test_an_oversized_frame_is_refused_from_its_header_with_close_code_1009() -> None:
    # Only the header is there: reading the payload would fail with ConnectionError instead.
    fb = reader(bytes([0x82, 0x7F]) + struct.pack("!Q", MAX_MESSAGE_BYTES + 1))
    with pytest.raises(_End) as caught:
        fb.recv_frame()
    assert caught.value.ended.close_code == 1009
    assert f"over the {MAX_MESSAGE_BYTES // 1048576} MiB limit" in caught.value.ended.detail


class ReadsLengthItself(FrameBuffer):  # type: ignore[misc]
    """A release that reads the length in a step of another name: the hook would never fire."""

    def recv_frame(self) -> Any:
        self.recv_header()
        self.length = struct.unpack("!Q", self.recv_strict(8))[0]
        return self.recv_strict(self.length)


def test_a_release_whose_frame_reader_changed_is_detected() -> None:
    assert "frame reader changed" in frame_cap_problem(ReadsLengthItself)


def test_a_release_without_the_step_is_detected() -> None:
    class NoLengthStep:
        def __init__(self, recv: Any, skip_utf8_validation: bool) -> None:
            self.recv = recv

        def recv_frame(self) -> None:
            pass

    assert "frame reader changed (AttributeError" in frame_cap_problem(NoLengthStep)


def test_a_session_refuses_to_start_without_the_cap_and_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session_mod, "_frame_cap_checked", ["its frame reader changed (x)"])
    with pytest.raises(SessionError, match=r"cannot limit the size.*install a tested release \(websocket-client 1"):
        check_frame_cap()
    with pytest.raises(SessionError, match="frame reader changed"):
        Session(AgentConfig(agent_id="a"), SessionConfig(), ToolRegistry(ToolsConfig()), None, lambda e: None)
