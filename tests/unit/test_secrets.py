"""API key sources and redaction of secrets from every log path."""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from device.errors import CredentialError, ExitCode
from device.logs import setup_logging
from device.secrets import REDACTED, Secret, load_api_key, redact

KEY = "sk_live_9f8e7d6c5b4a39281706f5e4d3c2b1a0"
TOKEN = "cs_7Hq2LmZx9PwR4tYv"
SIGNED_URL = f"wss://api.elevenlabs.io/v1/convai/conversation?agent_id=agent_1&conversation_signature={TOKEN}"


def key_file(tmp_path: Path, mode: int, text: str = KEY + "\n") -> Path:
    p = tmp_path / "api_key"
    p.write_text(text)
    os.chmod(p, mode)
    return p


def test_systemd_credential_comes_first(tmp_path: Path) -> None:
    cred = tmp_path / "creds"
    cred.mkdir()
    (cred / "elevenlabs_api_key").write_text("from-credential-123\n")
    other = key_file(tmp_path, 0o600)
    key = load_api_key(str(other), {"CREDENTIALS_DIRECTORY": str(cred), "ELEVENLABS_API_KEY": "envkey123"})
    assert key is not None and key.reveal() == "from-credential-123"
    assert "credential" in key.source


def test_root_only_key_file(tmp_path: Path) -> None:
    key = load_api_key(str(key_file(tmp_path, 0o600)), {})
    assert key is not None and key.reveal() == KEY


@pytest.mark.parametrize("mode", [0o640, 0o644, 0o604])
def test_group_or_world_readable_key_file_is_refused_with_the_fix(tmp_path: Path, mode: int) -> None:
    path = key_file(tmp_path, mode)
    with pytest.raises(CredentialError) as err:
        load_api_key(str(path), {})
    assert f"sudo chmod 600 {path}" in str(err.value)
    assert KEY not in str(err.value)
    assert err.value.exit_code == ExitCode.NOPERM


def test_missing_or_malformed_key_file(tmp_path: Path) -> None:
    with pytest.raises(CredentialError, match="does not exist"):
        load_api_key(str(tmp_path / "none"), {})
    with pytest.raises(CredentialError, match="empty"):
        load_api_key(str(key_file(tmp_path, 0o600, "\n")), {})
    bad = key_file(tmp_path, 0o600, "two words\n")
    with pytest.raises(CredentialError, match="not a single word") as err:
        load_api_key(str(bad), {})
    assert "two words" not in str(err.value)


def test_environment_is_the_last_resort(tmp_path: Path) -> None:
    key = load_api_key("", {"ELEVENLABS_API_KEY": "dev-key-123"})
    assert key is not None and key.reveal() == "dev-key-123"
    assert load_api_key("", {}) is None


def test_secret_does_not_print_itself() -> None:
    s = Secret(KEY, "test")
    assert KEY not in repr(s) and KEY not in str(s) and KEY not in f"{s}"
    assert KEY not in repr([s]) and KEY not in repr({"k": s})


def test_redact_signed_urls_headers_and_params() -> None:
    assert TOKEN not in redact(SIGNED_URL)
    assert "agent_id=agent_1" in redact(SIGNED_URL)  # public part kept for diagnosis
    assert "opaque123" not in redact("ws://127.0.0.1:9/v1/convai/conversation?agent_id=a&whatever=opaque123")
    assert "abc123secret" not in redact("{'xi-api-key': 'abc123secret'}")
    assert "abc123secret" not in redact("Authorization: Bearer abc123secret")
    assert "abc123secret" not in redact("https://broker/x?token=abc123secret&b=1")


@pytest.fixture
def captured_root() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    handler = setup_logging("debug", journald=False)
    handler.setStream(stream)  # type: ignore[attr-defined]
    yield stream
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def test_no_log_path_leaks_the_key_or_token(captured_root: io.StringIO) -> None:
    Secret(KEY, "test")  # registering happens when the key is loaded
    log = logging.getLogger("device.anything")
    log.info("key is %s", KEY)
    log.info(f"inline {KEY}")
    log.warning("url %s", SIGNED_URL)
    log.error("dict %r", {"xi-api-key": KEY, "signed_url": SIGNED_URL})
    try:
        raise RuntimeError(f"connect failed for {SIGNED_URL} with key {KEY}")
    except RuntimeError:
        log.exception("failure")
    log.debug("stack", stack_info=True)
    # third-party loggers propagate to the same handler
    logging.getLogger("websocket").debug("handshake GET %s xi-api-key: %s", SIGNED_URL, KEY)
    logging.getLogger("urllib3.connectionpool").debug('"GET /x?token=%s HTTP/1.1" 200', TOKEN)
    logging.getLogger("device.bad").info("broken format %d", "not-a-number " + KEY)
    out = captured_root.getvalue()
    assert out.count(REDACTED) >= 8
    assert KEY not in out
    assert TOKEN not in out
    assert "connect failed" in out and "Traceback" in out  # the line itself survives


def test_empty_credential_counts_as_no_key(tmp_path: Path) -> None:
    cred = tmp_path / "creds"
    cred.mkdir()
    (cred / "elevenlabs_api_key").write_text("")  # the unit's empty SetCredential= fallback
    assert load_api_key("", {"CREDENTIALS_DIRECTORY": str(cred)}) is None
    other = key_file(tmp_path, 0o600)
    key = load_api_key(str(other), {"CREDENTIALS_DIRECTORY": str(cred)})
    assert key is not None and key.reveal() == KEY
