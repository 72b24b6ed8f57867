"""The [screen] section: off by default, loopback by default, a token required anywhere else."""

from __future__ import annotations

from pathlib import Path

import pytest

from device.core.config import parse_config
from device.core.errors import ConfigError, CredentialError
from device.drivers.secrets import load_screen_token


def test_off_and_on_loopback_by_default() -> None:
    screen = parse_config({}, {}, []).screen
    assert not screen.enabled and screen.bind == "127.0.0.1" and screen.loopback
    assert not screen.talk_button and not screen.keep_history


@pytest.mark.parametrize("bind", ["0.0.0.0", "192.168.1.20", "::", "kiosk.local"])
def test_a_reachable_address_needs_a_token(bind: str) -> None:
    with pytest.raises(ConfigError, match="token_file") as e:
        parse_config({"screen": {"enabled": True, "bind": bind}}, {}, [])
    assert e.value.key == "screen.token_file"
    cfg = parse_config({"screen": {"enabled": True, "bind": bind, "token_file": "/etc/x"}}, {}, [])
    assert not cfg.screen.loopback


@pytest.mark.parametrize("bind", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_loopback_addresses_need_none(bind: str) -> None:
    assert parse_config({"screen": {"enabled": True, "bind": bind}}, {}, []).screen.loopback


def test_bad_values_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"screen\.port"):
        parse_config({"screen": {"port": 70000}}, {}, [])
    with pytest.raises(ConfigError, match=r"screen\.bind"):
        parse_config({"screen": {"bind": "a b"}}, {}, [])


def test_the_token_is_read_like_a_key_file_and_never_shown(tmp_path: Path) -> None:
    f = tmp_path / "token"
    f.write_text("s3cret-token\n")
    f.chmod(0o644)
    with pytest.raises(CredentialError, match="readable by others") as e:
        load_screen_token(str(f), {})
    assert "s3cret" not in str(e.value)
    f.chmod(0o600)
    token = load_screen_token(str(f), {})
    assert token is not None and token.reveal() == "s3cret-token" and "s3cret" not in repr(token)
    assert load_screen_token("", {}) is None
    with pytest.raises(CredentialError, match="install -m 600"):
        load_screen_token(str(tmp_path / "missing"), {})
    cred = tmp_path / "creds"
    cred.mkdir()
    (cred / "voice_appliance_screen_token").write_text("from-systemd\n")
    token = load_screen_token(str(f), {"CREDENTIALS_DIRECTORY": str(cred)})
    assert token is not None and token.reveal() == "from-systemd"
