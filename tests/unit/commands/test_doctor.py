"""``voice-appliance doctor``: each check against real files, real ALSA file devices, real sockets."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from device.cli import main
from device.commands import doctor
from device.commands.doctor import (
    AlsaUtilsProbe,
    CommandResult,
    Context,
    Finding,
    Status,
    can_access,
    credential_source,
    interpret_service,
    parse_show,
    render_table,
    run_checks,
)
from device.drivers import filedevices
from tests.support import LocalHttp, QuietHandler, make_fifo, needs, self_signed_cert, unless_blocked_on

KEY = "sk_doctor_test_5e8f2a1b9c7d3e6f4a0b1c2d"
REPO = Path(__file__).resolve().parents[3]


def write_config(path: Path, body: str = "") -> Path:
    path.write_text('[agent]\nagent_id = "agent_test"\n' + body)
    return path


def make_ctx(tmp_path: Path, body: str = "", **kw: object) -> Context:
    kw.setdefault("environ", {})
    kw.setdefault("key_file", str(tmp_path / "api_key"))
    kw.setdefault("systemd_dir", tmp_path / "no-systemd")
    kw.setdefault("dev_dir", tmp_path / "dev")
    return Context(config_path=write_config(tmp_path / "config.toml", body), **kw)  # type: ignore[arg-type]


def statuses(findings: Sequence[Finding], check: str) -> list[Status]:
    return [f.status for f in findings if f.check == check]


def all_text(findings: Sequence[Finding]) -> str:
    return render_table(findings) + doctor.findings_to_json(findings)


# -- pure parts -------------------------------------------------------------------


def test_can_access_follows_owner_then_group_then_other() -> None:
    assert can_access(0o600, 10, 20, 10, [], os.R_OK | os.W_OK)
    assert not can_access(0o600, 10, 20, 11, [20], os.R_OK)
    assert can_access(0o660, 0, 20, 11, [5, 20], os.R_OK | os.W_OK)
    assert not can_access(0o640, 0, 20, 11, [20], os.W_OK)
    assert can_access(0o604, 0, 20, 11, [], os.R_OK)
    # the owner class wins even when it grants less than group
    assert not can_access(0o060, 11, 20, 11, [20], os.R_OK)
    assert can_access(0o000, 5, 5, 0, [], os.R_OK | os.W_OK)


def test_credential_source_reads_the_unit_and_its_drop_ins_like_systemd() -> None:
    unit = "[Service]\nLoadCredential=elevenlabs_api_key:/etc/voice-appliance/api_key\nLoadCredential=other:/x\n"
    assert credential_source(unit) == "/etc/voice-appliance/api_key"
    moved = unit + "# /etc/systemd/system/voice-appliance.service.d/k.conf\n[Service]\n" \
        "LoadCredential=elevenlabs_api_key:/srv/key\n"
    assert credential_source(moved) == "/srv/key"
    cleared = unit + "[Service]\nLoadCredential=\n"
    assert credential_source(cleared) is None
    assert credential_source("[Service]\nLoadCredential=elevenlabs_api_key\n") == "/etc/credstore/elevenlabs_api_key"


def test_parse_show_takes_key_value_lines() -> None:
    props = parse_show("ActiveState=active\nStatusText=listening: conv_1 (ping 80 ms)\nbogus line\n")
    assert props == {"ActiveState": "active", "StatusText": "listening: conv_1 (ping 80 ms)"}


SERVICE_CASES = [
    ({"LoadState": "not-found"}, Status.WARN, "not installed", "install.sh"),
    ({"LoadState": "loaded", "ActiveState": "active", "SubState": "running", "MainPID": "42",
      "StatusText": "idle", "UnitFileState": "enabled", "NRestarts": "0"}, Status.OK, "idle", ""),
    ({"LoadState": "loaded", "ActiveState": "active", "SubState": "running", "UnitFileState": "disabled"},
     Status.WARN, "not started at boot", "systemctl enable"),
    ({"LoadState": "loaded", "ActiveState": "failed", "Result": "exit-code", "ExecMainStatus": "78"},
     Status.FAIL, "configuration is invalid", "restart"),
    ({"LoadState": "loaded", "ActiveState": "failed", "Result": "exit-code", "ExecMainStatus": "77"},
     Status.FAIL, "API key", "credentials"),
    ({"LoadState": "loaded", "ActiveState": "failed", "Result": "exit-code", "ExecMainStatus": "73"},
     Status.FAIL, "another voice-appliance daemon ran", "names its pid"),
    ({"LoadState": "loaded", "ActiveState": "failed", "Result": "watchdog"}, Status.FAIL, "watchdog", "journalctl"),
    ({"LoadState": "loaded", "ActiveState": "failed", "Result": "start-limit-hit", "NRestarts": "9"},
     Status.FAIL, "too often", "reset-failed"),
    ({"LoadState": "loaded", "ActiveState": "failed", "Result": "exit-code", "ExecMainStatus": "70"},
     Status.FAIL, "exit status 70", "journalctl"),
    ({"LoadState": "loaded", "ActiveState": "activating", "SubState": "auto-restart", "Result": "exit-code",
      "NRestarts": "3"}, Status.WARN, "restarting after a failure", "journalctl"),
    ({"LoadState": "loaded", "ActiveState": "inactive", "UnitFileState": "enabled"}, Status.WARN, "not running",
     "systemctl start"),
]


@pytest.mark.parametrize(("props", "status", "detail", "fix"), SERVICE_CASES)
def test_service_state_is_explained(props: dict[str, str], status: Status, detail: str, fix: str) -> None:
    f = interpret_service(props)
    assert f.status is status
    assert detail in f.detail
    assert fix in f.fix


def test_table_puts_the_fix_under_its_line_and_counts() -> None:
    text = render_table([
        Finding("config", Status.OK, "fine"),
        Finding("audio", Status.FAIL, "microphone gone", "plug it in"),
        Finding("gpio", Status.WARN, "no chips", "use ctl"),
    ])
    lines = text.splitlines()
    fail_at = next(i for i, ln in enumerate(lines) if ln.startswith("FAIL"))
    assert "microphone gone" in lines[fail_at]
    assert lines[fail_at + 1].strip() == "→ plug it in"
    assert lines[-1].startswith("1 problem(s) to fix, 1 warning(s)")


def test_a_crashing_check_is_a_fail_line_and_the_others_still_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(ctx: Context) -> list[Finding]:
        raise RuntimeError("boom")

    monkeypatch.setitem(doctor.CHECKS, "user", broken)
    findings = run_checks(make_ctx(tmp_path, offline=True), ["user", "service"])
    assert [f.check for f in findings] == ["user", "service"]
    assert findings[0].status is Status.FAIL
    assert "boom" in findings[0].detail


# -- config -----------------------------------------------------------------------


def test_config_ok_names_agent_and_mode(tmp_path: Path) -> None:
    findings = run_checks(make_ctx(tmp_path, "[gate]\nmode = \"toggle\"\n"), ["config"])
    assert statuses(findings, "config") == [Status.OK]
    assert "agent_test" in findings[0].detail
    assert "toggle" in findings[0].detail


@needs("pymicro_wakeword", "wake")
@needs("webrtc_noise_gain", "dsp")
def test_config_shows_the_wake_word_and_noise_processing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    body = "[gate]\nmode = \"wake_word\"\n[wake]\nmodel = \"alexa\"\n[audio]\nauto_gain_dbfs = 3\n"
    [ok] = run_checks(make_ctx(tmp_path, body), ["config"])
    assert ok.status is Status.OK
    assert "wake word: microwakeword alexa" in ok.detail
    assert "auto gain -3 dBFS" in ok.detail
    monkeypatch.setitem(sys.modules, "pymicro_wakeword", None)  # a machine without the wake extra
    [fail] = run_checks(make_ctx(tmp_path, body), ["config"])
    assert fail.status is Status.FAIL
    assert "64-bit Raspberry Pi OS" in fail.detail


def test_the_screen_has_one_line_and_an_unsafe_token_file_fails(tmp_path: Path) -> None:
    assert len(run_checks(make_ctx(tmp_path), ["config"])) == 1  # off: no line for it
    token = tmp_path / "screen_token"
    token.write_text("a-screen-token-value\n")
    token.chmod(0o644)  # readable by everyone
    body = f'[screen]\nenabled = true\nbind = "0.0.0.0"\ntoken_file = "{token}"\n'
    findings = run_checks(make_ctx(tmp_path, body), ["config"])
    assert [f.status for f in findings] == [Status.OK, Status.FAIL]
    assert "screen.token_file" in findings[1].fix and "a-screen-token-value" not in all_text(findings)
    token.chmod(0o600)
    [_, screen] = run_checks(make_ctx(tmp_path, body), ["config"])
    assert screen.status is Status.OK
    assert screen.detail == ("screen: http://0.0.0.0:8790/ (read-only, other machines too, token required, "
                             "up to 4 browsers)")


def test_config_error_names_the_key(tmp_path: Path) -> None:
    findings = run_checks(make_ctx(tmp_path, "[audio]\ncapture_devise = \"x\"\n"), ["config", "audio"])
    config = [f for f in findings if f.check == "config"]
    assert config[0].status is Status.FAIL
    assert "audio.capture_devise" in config[0].detail
    assert "capture_device" in config[0].detail
    assert "--check" in config[0].fix
    assert statuses(findings, "audio") == [Status.SKIP]


def test_shipped_example_config_is_flagged_as_a_placeholder(tmp_path: Path) -> None:
    ctx = Context(config_path=REPO / "examples" / "config.toml", environ={})
    findings = run_checks(ctx, ["config"])
    assert findings[0].status is Status.WARN
    assert "placeholder" in findings[0].detail


# -- credentials ------------------------------------------------------------------


def _key(tmp_path: Path, text: str, mode: int) -> Path:
    path = tmp_path / "api_key"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_root_only_key_file_is_ok_and_never_printed(tmp_path: Path) -> None:
    _key(tmp_path, KEY + "\n", 0o600)
    ctx = make_ctx(tmp_path)
    findings = run_checks(ctx, ["credentials"])
    assert Status.FAIL not in statuses(findings, "credentials")
    assert any(f.status is Status.OK and "one key" in f.detail for f in findings)
    assert ctx.key is not None
    assert ctx.key.reveal() == KEY
    assert KEY not in all_text(findings)
    assert KEY not in repr(ctx.key)


def test_group_readable_key_file_fails_with_the_chmod(tmp_path: Path) -> None:
    path = _key(tmp_path, KEY, 0o640)
    findings = run_checks(make_ctx(tmp_path), ["credentials"])
    assert findings[0].status is Status.FAIL
    assert findings[0].fix == f"sudo chmod 600 {path}"
    assert KEY not in all_text(findings)


@pytest.mark.parametrize(("text", "why"), [("", "blank, which the service reads as no API key"),
                                         (" \n\t\n", "blank, which the service reads as no API key"),
                                         ("two words\n", "not a single word")])
def test_malformed_key_file_fails(tmp_path: Path, text: str, why: str) -> None:
    _key(tmp_path, text, 0o600)
    findings = run_checks(make_ctx(tmp_path), ["credentials"])
    assert findings[-1].status is Status.FAIL
    assert why in findings[-1].detail


def test_a_fifo_or_a_nul_filled_key_file_fails_as_it_does_for_the_daemon(tmp_path: Path) -> None:
    fifo = make_fifo(tmp_path / "api_key")
    findings = unless_blocked_on(fifo, lambda: run_checks(make_ctx(tmp_path), ["credentials"]))
    assert findings[-1].status is Status.FAIL, all_text(findings)
    assert "it is a FIFO (named pipe), not a regular file" in findings[-1].detail
    assert f"sudo rm {fifo} && sudo install -m 600 /dev/null {fifo}" in findings[-1].fix
    fifo.unlink()
    _key(tmp_path, "\0" * 64, 0o600)
    findings = run_checks(make_ctx(tmp_path), ["credentials"])
    assert findings[-1].status is Status.FAIL
    assert "control or invisible character" in findings[-1].detail


def test_a_fifo_as_the_systemd_credential_is_not_waited_on(tmp_path: Path) -> None:
    cred = tmp_path / "creds"
    cred.mkdir()
    fifo = make_fifo(cred / "elevenlabs_api_key")
    ctx = make_ctx(tmp_path, environ={"CREDENTIALS_DIRECTORY": str(cred)})
    findings = unless_blocked_on(fifo, lambda: run_checks(ctx, ["credentials"]))
    assert findings[-1].status is Status.FAIL
    assert "systemd credential" in findings[-1].detail
    assert "FIFO" in findings[-1].detail


def test_missing_key_says_how_to_install_it(tmp_path: Path) -> None:
    findings = run_checks(make_ctx(tmp_path), ["credentials"])
    assert findings[0].status is Status.FAIL
    assert f"sudo install -m 600 /dev/null {tmp_path / 'api_key'}" in findings[0].fix
    assert "broker" in findings[0].fix


def test_environment_key_is_a_development_warning(tmp_path: Path) -> None:
    findings = run_checks(make_ctx(tmp_path, environ={"ELEVENLABS_API_KEY": KEY}), ["credentials"])
    assert findings[0].status is Status.WARN
    assert "development" in findings[0].detail
    assert KEY not in all_text(findings)


def test_systemd_credential_directory_is_read_first(tmp_path: Path) -> None:
    cred = tmp_path / "creds"
    cred.mkdir()
    (cred / "elevenlabs_api_key").write_text(KEY)
    (cred / "elevenlabs_api_key").chmod(0o400)
    _key(tmp_path, KEY, 0o644)  # would FAIL, but the credential wins as it does for the daemon
    ctx = make_ctx(tmp_path, environ={"CREDENTIALS_DIRECTORY": str(cred)})
    findings = run_checks(ctx, ["credentials"])
    assert findings[-1].status is Status.OK
    assert "systemd credential" in findings[-1].detail


def test_a_blank_systemd_credential_is_no_key_as_for_the_daemon(tmp_path: Path) -> None:
    """The unit's SetCredential= fallback (one newline) when no key file is installed: look further, say where."""
    cred = tmp_path / "creds"
    cred.mkdir()
    (cred / "elevenlabs_api_key").write_text("\n")
    findings = run_checks(make_ctx(tmp_path, environ={"CREDENTIALS_DIRECTORY": str(cred)}), ["credentials"])
    assert [f.status for f in findings] == [Status.FAIL]
    assert "no API key" in findings[0].detail
    assert str(tmp_path / "api_key") in findings[0].detail
    assert "systemd credential" not in findings[0].detail  # not "the credential is empty": it stands for none
    _key(tmp_path, KEY + "\n", 0o600)  # the key file behind LoadCredential= is what counts next
    findings = run_checks(make_ctx(tmp_path, environ={"CREDENTIALS_DIRECTORY": str(cred)}, euid=0), ["credentials"])
    assert findings[-1].status is Status.OK
    assert "one key" in findings[-1].detail


@pytest.mark.parametrize("pasted", [KEY, "sk/" + "x" * 300, "x" * 5000])
def test_a_key_pasted_as_api_key_file_is_never_quoted(tmp_path: Path, pasted: str) -> None:
    ctx = make_ctx(tmp_path, f'api_key_file = "{pasted}"\n', key_file="")
    findings = run_checks(ctx, ["credentials"])
    assert [f.status for f in findings] == [Status.FAIL], all_text(findings)
    assert "not the path of an existing file" in findings[0].detail
    assert "sudoedit" in findings[0].fix
    assert pasted not in all_text(findings)
    assert pasted[:12] not in all_text(findings)


def test_a_missing_key_file_path_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "keys" / "api_key"
    missing.parent.mkdir()
    findings = run_checks(make_ctx(tmp_path, f'api_key_file = "{missing}"\n', key_file=""), ["credentials"])
    assert findings[0].status is Status.FAIL
    assert f"{missing} does not exist" in findings[0].detail


def test_broker_mode_warns_about_a_key_left_on_the_device(tmp_path: Path) -> None:
    path = _key(tmp_path, KEY, 0o600)
    ctx = make_ctx(tmp_path, 'connection = "broker"\nbroker_url = "https://broker.example"\n')
    findings = run_checks(ctx, ["credentials"])
    assert findings[0].status is Status.WARN
    assert f"shred -u {path}" in findings[0].fix
    path.unlink()
    assert run_checks(ctx, ["credentials"])[0].status is Status.OK


# -- audio (real ALSA through type-file devices) ------------------------------------


@pytest.fixture
def alsa_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    conf_dir = tmp_path / "alsa"
    conf_dir.mkdir()
    conf = conf_dir / filedevices.CONFIG_NAME
    conf.write_text(filedevices.ASOUNDRC)
    for key, value in filedevices.alsa_env(conf, {}).items():
        monkeypatch.setenv(key, value)
    (tmp_path / "in.raw").write_bytes(bytes(2 * 16000))
    return tmp_path


def test_doctor_says_in_one_line_when_echo_cancellation_cannot_run_here(
    alsa_files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pywebrtc_audio", None)  # as on 32-bit Raspberry Pi OS: no wheel
    ctx = make_ctx(alsa_files, _audio_body(alsa_files) + "[gate]\nmode = 'always_open'\nbarge_in = 'voice'\n")
    ctx.audio_probe = AlsaUtilsProbe()
    findings = [f for f in run_checks(ctx, ["audio"]) if "echo cancellation" in f.detail]
    assert [f.status for f in findings] == [Status.WARN]
    assert "half duplex" in findings[0].detail and "--extras aec" in findings[0].fix


def _audio_body(tmp: Path, capture: str | None = None) -> str:
    mic = capture or filedevices.capture_device(tmp / "in.raw")
    spk = filedevices.playback_device(tmp / "out.raw")
    return f"[audio]\ncapture_device = '{mic}'\nplayback_device = '{spk}'\n"


@pytest.mark.skipif(shutil.which("arecord") is None, reason="needs alsa-utils")
def test_alsa_utils_probe_opens_both_devices_at_16k(alsa_files: Path) -> None:
    ctx = make_ctx(alsa_files, _audio_body(alsa_files))
    ctx.audio_probe = AlsaUtilsProbe()
    findings = run_checks(ctx, ["audio"])
    assert statuses(findings, "audio") == [Status.OK, Status.OK], render_table(findings)
    assert statuses(findings, "duplex") == [Status.OK]
    assert "echo cancellation: off (auto: only for gate.barge_in" in render_table(findings)
    # aplay really played the 50 ms of silence (padded to a whole period) into the file
    played = filedevices.read_output(alsa_files / "out.raw")
    assert len(played) >= 2 * 800
    assert played == bytes(len(played))


@pytest.mark.skipif(shutil.which("arecord") is None, reason="needs alsa-utils")
def test_missing_microphone_fails_and_says_which_key(alsa_files: Path) -> None:
    ctx = make_ctx(alsa_files, _audio_body(alsa_files, capture="no_such_mic"))
    ctx.audio_probe = AlsaUtilsProbe()
    findings = run_checks(ctx, ["audio"])
    mic = findings[0]
    assert mic.status is Status.FAIL
    assert "no_such_mic" in mic.detail
    assert "audio.capture_device" in mic.fix
    assert "arecord -L" in mic.fix
    assert findings[1].status is Status.OK


@pytest.mark.realtime
def test_audio_through_the_cli_uses_the_audio_engine(alsa_files: Path) -> None:
    """The default probe (the audio engine's ALSA module when it imports), in a fresh process."""
    cfg = write_config(alsa_files / "config.toml", _audio_body(alsa_files))
    res = subprocess.run(
        [sys.executable, "-m", "device", "doctor", "--only", "audio", "--json", "--config", str(cfg)],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    rows = [r for r in json.loads(res.stdout) if not r["detail"].startswith("echo cancellation")]
    assert [r["status"] for r in rows] == ["OK", "OK"], res.stdout + res.stderr
    assert all("(pyalsaaudio)" in r["detail"] for r in rows)
    assert res.returncode == 0


# -- gpio -------------------------------------------------------------------------


def test_gpio_not_needed_when_nothing_is_wired(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, "[button]\npin = -1\n[leds]\npreset = \"none\"\n")
    assert run_checks(ctx, ["gpio"])[0].status is Status.OK


def test_gpio_without_chips_is_a_warning_not_a_failure(tmp_path: Path) -> None:
    (tmp_path / "dev").mkdir()
    findings = run_checks(make_ctx(tmp_path), ["gpio"])
    assert findings[0].status is Status.WARN
    assert "ctl press" in findings[0].fix


def test_gpio_mock_factory_is_flagged(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, environ={"GPIOZERO_PIN_FACTORY": "mock"})
    assert run_checks(ctx, ["gpio"])[0].status is Status.WARN


def test_gpio_chips_are_listed(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "gpiochip0").touch()
    (dev / "gpiochip4").touch()
    findings = run_checks(make_ctx(tmp_path), ["gpio"])
    assert "gpiochip0" in findings[0].detail
    assert "gpiochip4" in findings[0].detail


# -- network (real sockets on loopback) --------------------------------------------


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    srv = socket.create_server(("127.0.0.1", 0))
    yield srv
    srv.close()


def test_offline_skips_the_network(tmp_path: Path) -> None:
    assert run_checks(make_ctx(tmp_path, offline=True), ["network"])[0].status is Status.SKIP


def test_reachable_http_host_and_public_agent(tmp_path: Path, listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    body = f"connection = \"public\"\nbase_url = \"http://localhost:{port}\"\n"
    ctx = make_ctx(tmp_path)
    ctx.config_path.write_text(f'[agent]\nagent_id = "agent_test"\n{body}')
    findings = run_checks(ctx, ["network"])
    assert [f.status for f in findings] == [Status.OK, Status.OK], render_table(findings)
    assert f"localhost:{port}" in findings[0].detail
    assert "TCP" in findings[0].detail


def test_refused_connection_fails(tmp_path: Path, listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there any more
    ctx = make_ctx(tmp_path)
    ctx.config_path.write_text(
        f'[agent]\nagent_id = "agent_test"\nconnection = "public"\nbase_url = "http://127.0.0.1:{port}"\n'
    )
    findings = run_checks(ctx, ["network"])
    assert findings[0].status is Status.FAIL
    assert f"connection to 127.0.0.1:{port} refused" in findings[0].detail
    assert f"port {port}" in findings[0].fix


def test_a_peer_that_never_answers_the_tls_handshake_is_a_connect_timeout(
    tmp_path: Path, listener: socket.socket
) -> None:
    port = listener.getsockname()[1]  # the kernel accepts the connection; nobody ever speaks TLS on it
    ctx = make_ctx(tmp_path, timeout_s=0.3)
    ctx.config_path.write_text(
        f'[agent]\nagent_id = "agent_test"\nconnection = "public"\nbase_url = "https://127.0.0.1:{port}"\n'
    )
    findings = run_checks(ctx, ["network"])
    assert findings[0].status is Status.FAIL
    assert findings[0].detail == f"agent host: connecting to 127.0.0.1:{port} timed out after 0.3 s while connecting"


def test_dns_failure_says_to_check_dns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_dns(*args: object, **kwargs: object) -> list[object]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)  # the edge of the world: the resolver
    findings = run_checks(make_ctx(tmp_path, 'region = "eu"\n'), ["network"])
    assert findings[0].status is Status.FAIL
    assert "DNS" in findings[0].detail
    assert "api.eu.residency.elevenlabs.io" in findings[0].detail
    assert "resolv" in findings[0].fix


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A TLS server on 127.0.0.1 with a self-signed certificate for 'localhost'."""
    cert, key = self_signed_cert(tmp_path, "localhost")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(10)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            try:
                with context.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass  # the client refused our certificate

    thread = threading.Thread(target=serve, name="test-tls-server")
    thread.start()
    yield srv.getsockname()[1], cert
    stop.set()
    srv.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close() alone would not
    srv.close()
    thread.join(timeout=10)


def _https_ctx(tmp_path: Path, port: int, ca_bundle: str = "") -> Context:
    ctx = make_ctx(tmp_path)
    ca = f'ca_bundle = "{ca_bundle}"\n' if ca_bundle else ""
    ctx.config_path.write_text(
        f'[agent]\nagent_id = "agent_test"\nconnection = "public"\nbase_url = "https://localhost:{port}"\n{ca}'
    )
    return ctx


def test_untrusted_certificate_points_at_ca_bundle(tmp_path: Path, tls_server: tuple[int, Path]) -> None:
    port, _cert = tls_server
    findings = run_checks(_https_ctx(tmp_path, port), ["network"])
    assert findings[0].status is Status.FAIL
    assert "TLS check of localhost" in findings[0].detail
    assert "certificate verify failed" in findings[0].detail
    assert "self-signed" in findings[0].detail
    assert "agent.ca_bundle" in findings[0].fix


def test_trusted_with_ca_bundle(tmp_path: Path, tls_server: tuple[int, Path]) -> None:
    port, cert = tls_server
    findings = run_checks(_https_ctx(tmp_path, port, str(cert)), ["network"])
    assert findings[0].status is Status.OK, render_table(findings)
    assert "TLS" in findings[0].detail, render_table(findings)


def test_a_fifo_as_ca_bundle_fails_instead_of_hanging(tmp_path: Path, tls_server: tuple[int, Path]) -> None:
    port, _cert = tls_server
    fifo = make_fifo(tmp_path / "ca.pem")
    findings = unless_blocked_on(fifo, lambda: run_checks(_https_ctx(tmp_path, port, str(fifo)), ["network"]))
    assert findings[0].status is Status.FAIL, render_table(findings)
    assert findings[0].detail == f"agent.ca_bundle {fifo}: it is a FIFO (named pipe), not a regular file"


# -- the agent itself, through the emulator --------------------------------------------


@pytest.fixture
def emulator() -> Iterator[object]:
    from device.emulator import Emulator
    with Emulator(api_key=KEY) as emu:
        yield emu


@pytest.mark.realtime
@pytest.mark.parametrize(("agent_id", "key", "status", "words"), [
    (None, KEY, Status.OK, "signed URL issued"),
    (None, "sk_wrong_key_0000000000", Status.FAIL, "401"),
    ("agent_nobody", KEY, Status.FAIL, "404"),
])
def test_signed_url_proves_key_and_agent(
    tmp_path: Path, emulator: object, agent_id: str | None, key: str, status: Status, words: str
) -> None:
    emu = emulator
    _key(tmp_path, key, 0o600)
    ctx = make_ctx(tmp_path)
    ctx.config_path.write_text(
        f'[agent]\nagent_id = "{agent_id or emu.agent_id}"\nbase_url = "{emu.base_url}"\n'  # type: ignore[attr-defined]
    )
    findings = run_checks(ctx, ["network"])
    agent = findings[-1]
    assert agent.status is status, render_table(findings)
    assert words in agent.detail, render_table(findings)
    assert key not in all_text(findings)


class Broker(LocalHttp):
    """A token broker over TLS that hands out ``signed_url``."""

    def __init__(self, cert: tuple[Path, Path], signed_url: str) -> None:
        class Handler(QuietHandler):
            def do_GET(self) -> None:
                self.send_body(200, json.dumps({"signed_url": signed_url}).encode())

        super().__init__(Handler, "test-broker", cert)


@pytest.mark.parametrize(("host", "status"), [
    ("127.0.0.1:9", Status.OK),
    ("[::1]:9", Status.OK),
    ("localhost:9", Status.OK),
    ("127.attacker.example", Status.FAIL),
    ("127.0.0.1.nip.io", Status.FAIL),
    ("localhost.attacker.example", Status.FAIL),
    ("agents.example.com", Status.FAIL),
])
def test_an_https_broker_handing_out_plaintext_ws_is_refused_unless_loopback(
    tmp_path: Path, cert: tuple[Path, Path], host: str, status: Status
) -> None:
    token = "BROKER_TOKEN_7f3a9c"
    broker = Broker(cert, f"ws://{host}/v1/convai/conversation?agent_id=agent_test&token={token}")
    try:
        ctx = make_ctx(tmp_path)
        base = f"https://127.0.0.1:{broker.port}"
        ctx.config_path.write_text(
            f'[agent]\nagent_id = "agent_test"\nconnection = "broker"\nbroker_url = "{base}/kiosk"\n'
            f'base_url = "{base}"\nca_bundle = "{cert[0]}"\n'
        )
        findings = run_checks(ctx, ["network"])
    finally:
        broker.close()
    agent = findings[-1]
    assert agent.status is status, render_table(findings)
    if status is Status.FAIL:
        assert "unencrypted ws://" in agent.detail
        assert "wss://" in agent.detail
    assert token not in all_text(findings)


# -- the command ------------------------------------------------------------------


def test_cli_exit_codes_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write_config(tmp_path / "good.toml", "[button]\npin = -1\n[leds]\npreset = \"none\"\n")
    assert main(["doctor", "--config", str(good), "--only", "config,gpio", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["check"], r["status"]) for r in rows] == [("config", "OK"), ("gpio", "OK")]

    bad = tmp_path / "bad.toml"
    bad.write_text("[agent]\nagent_id = 'a'\n[gate]\nmode = 'push_to_tlak'\n")
    assert main(["doctor", "--config", str(bad), "--only", "config"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out
    assert "gate.mode" in out
    assert "push_to_talk" in out

    assert main(["doctor", "--only", "config,nonsense"]) == 78
    assert "unknown check(s) nonsense" in capsys.readouterr().err


def test_service_check_reads_systemctl(tmp_path: Path) -> None:
    calls: list[list[str]] = []

    def systemctl(argv: Sequence[str], timeout_s: float, stdin: bytes | None) -> CommandResult:
        calls.append(list(argv))  # systemctl is the edge here; the boot test runs the real one
        return CommandResult(0, "LoadState=loaded\nActiveState=failed\nResult=exit-code\nExecMainStatus=78\n", "")

    (tmp_path / "systemd").mkdir()
    ctx = make_ctx(tmp_path, systemd_dir=tmp_path / "systemd", run=systemctl)
    findings = run_checks(ctx, ["service"])
    assert findings[0].status is Status.FAIL
    assert "exit 78" in findings[0].detail
    assert calls
    assert calls[0][:3] == ["systemctl", "show", "voice-appliance.service"]


def test_unit_environment_keeps_what_changes_the_checks(tmp_path: Path) -> None:
    shown = ('VOICE_APPLIANCE_CONFIG=/srv/kiosk.toml "VOICE_APPLIANCE_AGENT_LOCATION=Front desk" '
             "ALSA_CONFIG_PATH=/usr/share/alsa/alsa.conf:/etc/x.conf LANG=C.UTF-8 LG_WD=/run/voice-appliance\n")

    def systemctl(argv: Sequence[str], timeout_s: float, stdin: bytes | None) -> CommandResult:
        assert list(argv[:2]) == ["systemctl", "show"]
        assert "Environment" in argv
        return CommandResult(0, shown, "")

    (tmp_path / "systemd").mkdir()
    env = doctor.unit_environment(make_ctx(tmp_path, systemd_dir=tmp_path / "systemd", run=systemctl))
    assert env == {
        "VOICE_APPLIANCE_CONFIG": "/srv/kiosk.toml",
        "VOICE_APPLIANCE_AGENT_LOCATION": "Front desk",
        "ALSA_CONFIG_PATH": "/usr/share/alsa/alsa.conf:/etc/x.conf",
        "LG_WD": "/run/voice-appliance",
    }
    assert doctor.unit_environment(make_ctx(tmp_path)) == {}  # no systemd: nothing


# -- the fleet channel ----------------------------------------------------------------


def test_mqtt_off_is_one_ok_line(tmp_path: Path) -> None:
    findings = run_checks(make_ctx(tmp_path), ["mqtt"])
    assert [(f.status, f.detail) for f in findings] == [(Status.OK, "off (mqtt.enabled = false)")]


def test_mqtt_settings_and_a_readable_password_file_fail_without_the_broker(tmp_path: Path) -> None:
    pw = tmp_path / "mqtt_password"
    pw.write_text("broker-pw-9876\n")
    os.chmod(pw, 0o644)
    body = (
        '[mqtt]\nenabled = true\nhost = "127.0.0.1"\nusername = "lobby-1"\n'
        f'password_file = "{pw}"\ndevice_id = "lobby-1"\n'
    )
    findings = run_checks(make_ctx(tmp_path, body, offline=True), ["mqtt"])
    assert statuses(findings, "mqtt") == [Status.WARN, Status.FAIL, Status.SKIP]
    assert "in clear" in findings[0].detail and "readable by others" in findings[1].detail
    assert "broker-pw-9876" not in all_text(findings)
    os.chmod(pw, 0o600)
    findings = run_checks(make_ctx(tmp_path, body, offline=True), ["mqtt"])
    assert statuses(findings, "mqtt") == [Status.WARN, Status.SKIP]  # --offline: the broker is not tried
