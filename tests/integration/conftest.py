"""Shared fixtures for the integration tests."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from device.bench import clockedcard
from device.bench.clockedcard import ClockedCard
from device.drivers import filedevices
from tests.contract.checking import contract_check  # noqa: F401 (autouse: every message against the contract)
from tests.integration.daemonrig import NotifySocket


@pytest.fixture(scope="module")
def alsa_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """ALSA `type file` devices for this module; ALSA_CONFIG_PATH restored afterwards."""
    old = os.environ.get("ALSA_CONFIG_PATH")
    directory = tmp_path_factory.mktemp("alsa")
    filedevices.install(directory)
    yield directory
    if old is None:
        os.environ.pop("ALSA_CONFIG_PATH", None)
    else:
        os.environ["ALSA_CONFIG_PATH"] = old


@pytest.fixture
def clocked_card(alsa_dir: Path) -> Iterator[ClockedCard]:
    """A private PulseAudio with ``speaker`` and ``room`` sinks for this test, stopped afterwards.

    Its directory is short (the socket path must fit in 108 bytes) and its ALSA
    names come from the module's device configuration (``alsa_dir``).
    """
    reason = clockedcard.available()
    if reason is not None:
        pytest.skip(f"no clocked card: {reason}")
    with tempfile.TemporaryDirectory(prefix="va-card-") as directory:
        card = ClockedCard.start(Path(directory))
        try:
            yield card
        finally:
            card.stop()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    """A stand-in for systemd's notification socket in tmp_path, closed afterwards."""
    n = NotifySocket(tmp_path / "notify.sock")
    yield n
    n.close()
