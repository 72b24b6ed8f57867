"""Files named in the configuration: only regular files, opened without blocking, read up to a cap."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from device.drivers.userfiles import KIB, UnsuitableFile, check_file, read_file
from tests.support import make_fifo, unless_blocked_on


def test_a_regular_file_and_a_link_to_one_are_read(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_bytes(b"x" * KIB)
    (tmp_path / "link").symlink_to(path)
    assert read_file(path, KIB) == b"x" * KIB
    assert read_file(tmp_path / "link", KIB) == b"x" * KIB
    assert check_file(tmp_path / "link", KIB).st_size == KIB


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = make_fifo(tmp_path / "key")
    with pytest.raises(UnsuitableFile) as err:
        unless_blocked_on(fifo, lambda: read_file(fifo, KIB))
    assert str(err.value) == "it is a FIFO (named pipe), not a regular file"
    with pytest.raises(UnsuitableFile, match="FIFO"):
        check_file(fifo, KIB)


def test_a_directory_a_socket_and_a_device_are_refused(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(tmp_path / "sock"))
        for path, kind in ((tmp_path, "a directory"), (tmp_path / "sock", "a socket"),
                           (Path("/dev/zero"), "a character device")):
            with pytest.raises(UnsuitableFile) as err:
                read_file(path, KIB)
            assert str(err.value) == f"it is {kind}, not a regular file"


def test_a_large_sparse_file_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "nul"
    with path.open("wb") as f:
        f.truncate(300 * 1000 * 1000)
    with pytest.raises(UnsuitableFile) as err:
        read_file(path, 4 * KIB)
    assert str(err.value) == "it holds 286 MiB, over the 4 KiB limit"
    (tmp_path / "empty").touch()
    assert read_file(tmp_path / "empty", 4 * KIB) == b""


def test_a_file_that_reports_no_size_is_still_capped() -> None:
    status = Path(f"/proc/{os.getpid()}/status")  # a regular file of size 0 that holds about 1 KiB
    assert os.stat(status).st_size == 0
    with pytest.raises(UnsuitableFile, match="it holds more than the 64 bytes limit"):
        read_file(status, 64)
    assert b"Name:" in read_file(status, 64 * KIB)


def test_missing_and_forbidden_stay_what_they_are(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_file(tmp_path / "none", KIB)
    if os.geteuid() != 0:
        path = tmp_path / "secret"
        path.write_text("x")
        path.chmod(0)
        with pytest.raises(PermissionError):
            read_file(path, KIB)
