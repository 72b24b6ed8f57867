"""The one exception root of the firmware and the process exit codes.

Library exceptions are translated at module boundaries (``raise … from e``);
every message says what happened and what to do about it.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Process exit codes (sysexits.h values where one fits)."""

    OK = 0
    FAILURE = 1  # the job ran and failed (e.g. a bench conversation failed)
    USAGE = 2  # bad command line (argparse)
    UNAVAILABLE = 69  # a subcommand or service is not available
    SOFTWARE = 70  # internal error: a bug, please report it
    ALREADY_RUNNING = 73  # another daemon runs with this configuration (EX_CANTCREAT): systemd must not restart
    IO = 74  # audio device could not be used
    PROTOCOL = 76  # the agent server broke the protocol
    NOPERM = 77  # credentials missing, unreadable or too widely readable
    CONFIG = 78  # invalid configuration: systemd must not restart-loop


class DeviceError(Exception):
    """Root of every error the firmware raises on purpose."""

    exit_code: ExitCode = ExitCode.FAILURE


class ConfigError(DeviceError):
    """The configuration is invalid; the message names the key and the fix."""

    exit_code = ExitCode.CONFIG

    def __init__(self, message: str, key: str | None = None) -> None:
        self.key = key
        super().__init__(f"{key}: {message}" if key else message)


class CredentialError(DeviceError):
    """The API key is missing, unreadable, or readable by others."""

    exit_code = ExitCode.NOPERM


class AudioError(DeviceError):
    """An ALSA device could not be opened or used."""

    exit_code = ExitCode.IO


class SessionError(DeviceError):
    """The conversation with the agent could not start or ended abnormally."""

    exit_code = ExitCode.UNAVAILABLE


class ProtocolError(SessionError):
    """The agent server sent something the protocol does not allow."""

    exit_code = ExitCode.PROTOCOL


class AlreadyRunningError(DeviceError):
    """Another daemon runs with this configuration: its control socket or lock is taken."""

    exit_code = ExitCode.ALREADY_RUNNING


class WorkerStuckError(DeviceError):
    """A worker thread did not stop within its join timeout."""

    exit_code = ExitCode.SOFTWARE


class UnavailableError(DeviceError):
    """A subcommand or feature that this build does not provide yet."""

    exit_code = ExitCode.UNAVAILABLE
