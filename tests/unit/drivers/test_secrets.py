"""API key sources and redaction of secrets from every log path."""

from __future__ import annotations

import io
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from device.core.errors import CredentialError, ExitCode
from device.drivers.logs import setup_logging
from device.drivers.secrets import REDACTED, Secret, load_api_key, redact
from tests.support import cli, make_fifo

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
    assert key is not None
    assert key.reveal() == "from-credential-123"
    assert "credential" in key.source


def test_root_only_key_file(tmp_path: Path) -> None:
    key = load_api_key(str(key_file(tmp_path, 0o600)), {})
    assert key is not None
    assert key.reveal() == KEY


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
    assert key is not None
    assert key.reveal() == "dev-key-123"
    assert load_api_key("", {}) is None


def test_secret_does_not_print_itself() -> None:
    s = Secret(KEY, "test")
    assert KEY not in repr(s)
    assert KEY not in str(s)
    assert KEY not in f"{s}"
    assert KEY not in repr([s])
    assert KEY not in repr({"k": s})


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
    assert "connect failed" in out
    assert "Traceback" in out  # the line itself survives


def test_empty_credential_counts_as_no_key(tmp_path: Path) -> None:
    cred = tmp_path / "creds"
    cred.mkdir()
    (cred / "elevenlabs_api_key").write_text("")  # the unit's empty SetCredential= fallback
    assert load_api_key("", {"CREDENTIALS_DIRECTORY": str(cred)}) is None
    other = key_file(tmp_path, 0o600)
    key = load_api_key(str(other), {"CREDENTIALS_DIRECTORY": str(cred)})
    assert key is not None
    assert key.reveal() == KEY


# -- the CLI as the unit runs it: exit codes and what reaches the journal ----------------------------------

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "config.toml"




@pytest.mark.realtime
@pytest.mark.parametrize(
    "content", [b"\xff\xfe" + KEY.encode("utf-16-le"), b"sk_live_\xe9\xe8\n"], ids=["utf-16", "latin-1"]
)
def test_a_key_file_that_is_not_utf8_exits_77_not_70(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "api_key"
    path.write_bytes(content)
    path.chmod(0o600)
    r = cli("run", "--check", "--log-level", "debug", "--config", str(EXAMPLE), "--set", f"agent.api_key_file={path}")
    assert r.returncode == 77, r.stderr
    assert "not UTF-8" in r.stderr
    assert str(path) in r.stderr
    assert "internal error" not in r.stderr
    with pytest.raises(CredentialError, match="not UTF-8"):
        load_api_key(str(path), {})


PASTED = [
    KEY,  # the key itself where its file's path belongs
    "sk_" + "0123456789abcdef" * 20,  # longer than a file name may be (the lookup fails differently)
    "brk/Zm9vYmFy+c2VjcmV0dG9rZW4=",  # a base64 broker token has slashes
    f"/{KEY}",  # pasted after a slash
]


@pytest.mark.realtime
@pytest.mark.parametrize("value", PASTED, ids=["key", "long-key", "token-with-slash", "slash-key"])
def test_a_key_pasted_as_api_key_file_is_never_echoed(value: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(CredentialError) as err:
        load_api_key(value, {})
    assert value not in str(err.value)
    assert value[1:] not in str(err.value)
    assert "/etc/voice-appliance/api_key" in str(err.value)  # where the key belongs
    assert value[1:] not in caplog.text
    r = cli("run", "--check", "--log-level", "debug", "--config", str(EXAMPLE), "--set", f"agent.api_key_file={value}")
    assert r.returncode == 77, r.stderr
    assert value[1:] not in r.stdout + r.stderr
    assert "api_key_file" in r.stderr


def test_a_missing_key_file_at_a_real_path_is_named(tmp_path: Path) -> None:
    path = tmp_path / "api-key"  # a typo of a real path: naming it helps and leaks nothing
    with pytest.raises(CredentialError) as err:
        load_api_key(str(path), {})
    assert f"{path} does not exist" in str(err.value)
    assert f"sudo install -m 600 /dev/null {path}" in str(err.value)


@pytest.mark.realtime
@pytest.mark.parametrize("content", ["\n", "", "  \n", "\t\r\n"])
def test_a_whitespace_only_credential_is_no_key(tmp_path: Path, content: str) -> None:
    """The unit's fallback SetCredential=elevenlabs_api_key:\\n stands for "no key installed"."""
    cred = tmp_path / "creds"
    cred.mkdir()
    (cred / "elevenlabs_api_key").write_text(content)
    env = {"CREDENTIALS_DIRECTORY": str(cred)}
    assert load_api_key("", env) is None
    public = cli("run", "--check", "--config", str(EXAMPLE), "--set", "agent.connection=public", env=env)
    assert public.returncode == 0, public.stderr  # a public agent needs no key
    assert "api key: none" in public.stdout
    private = cli("run", "--check", "--config", str(EXAMPLE), env=env)
    assert private.returncode == 77
    assert "none was found: put it in /etc/voice-appliance/api_key" in private.stderr  # where the key goes
    assert "empty" not in private.stderr
    assert "alone on one line" not in private.stderr


def test_a_malformed_credential_is_still_refused(tmp_path: Path) -> None:
    cred = tmp_path / "creds"
    cred.mkdir()
    (cred / "elevenlabs_api_key").write_text("two words\n")
    with pytest.raises(CredentialError, match="not a single word") as err:
        load_api_key("", {"CREDENTIALS_DIRECTORY": str(cred)})
    assert "two words" not in str(err.value)


# -- a key file that is no key: refused with one line, never read whole, never waited on ---------------


def check_key(path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`run --check` with ``path`` as agent.api_key_file, as a process (cli's timeout catches a hang)."""
    return cli("run", "--check", "--config", str(EXAMPLE), "--set", f"agent.api_key_file={path}", env=env)


@pytest.mark.realtime
def test_a_fifo_as_the_key_file_is_refused_at_once(tmp_path: Path) -> None:
    fifo = make_fifo(tmp_path / "api_key")
    r = check_key(fifo)  # before: open() waited for a writer, for ever
    assert r.returncode == 77, r.stderr
    assert f"the key file {fifo} cannot be used: it is a FIFO (named pipe), not a regular file" in r.stderr
    assert len(r.stderr.splitlines()) == 1


@pytest.mark.realtime
def test_a_fifo_as_the_systemd_credential_is_refused_at_once(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    make_fifo(creds / "elevenlabs_api_key")
    r = cli("run", "--check", "--config", str(EXAMPLE), env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert r.returncode == 77, r.stderr
    assert "systemd credential" in r.stderr
    assert "FIFO (named pipe), not a regular file" in r.stderr


@pytest.mark.realtime
def test_a_huge_file_of_nul_bytes_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "api_key"
    with path.open("wb") as f:
        f.truncate(64 * 1024 * 1024)  # sparse: costs no disk
    path.chmod(0o600)
    r = check_key(path)
    assert r.returncode == 77, r.stderr
    assert f"the key file {path} cannot be used: it holds 64 MiB, over the 4 KiB limit" in r.stderr


@pytest.mark.realtime
@pytest.mark.parametrize(
    "content",
    [b"\0" * 100, KEY.encode() + b"\0\n", b"sk_live\x1b[2J" + KEY.encode(), ("sk_\u200b" + KEY).encode()],
    ids=["nul-bytes", "trailing-nul", "escape", "zero-width-space"],
)
def test_a_key_with_a_control_or_invisible_character_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "api_key"
    path.write_bytes(content)
    path.chmod(0o600)
    r = check_key(path)
    assert r.returncode == 77, r.stderr
    assert f"the key file {path} holds a control or invisible character" in r.stderr
    assert KEY not in r.stdout + r.stderr
    assert KEY[:12] not in r.stderr


def test_a_notepad_key_with_a_byte_order_mark_is_the_key(tmp_path: Path) -> None:
    path = tmp_path / "api_key"
    path.write_bytes(b"\xef\xbb\xbf" + KEY.encode() + b"\r\n")  # as provisioning/install.sh accepts it
    path.chmod(0o600)
    key = load_api_key(str(path), {})
    assert key is not None
    assert key.reveal() == KEY
