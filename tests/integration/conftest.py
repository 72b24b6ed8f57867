"""Shared fixtures for the integration tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from device.audio import filedevices
from tests.contract.checking import contract_check  # noqa: F401 (autouse: every message against the contract)


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
