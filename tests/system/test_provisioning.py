"""The provisioning scripts and ALSA templates, run for real on this machine (no systemd needed)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.system.unitfile import REPO

SCRIPTS = sorted((REPO / "provisioning").glob("*.sh"))
TEMPLATES = sorted((REPO / "provisioning" / "asound").glob("*.conf"))
FIRST_BOOT = REPO / "provisioning" / "first-boot.sh"
KEY = "sk_test_0f1e2d3c4b5a69788796a5b4c3d2e1f0"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="first-boot.sh chowns the key to root: run as root")


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse_and_pass_shellcheck(script: Path) -> None:
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    res = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout


def test_install_lists_what_building_pyalsaaudio_and_the_service_need() -> None:
    res = subprocess.run(
        [str(REPO / "provisioning" / "install.sh"), "--print-apt-packages"],
        capture_output=True, text=True, timeout=30, check=True,
    )
    packages = set(res.stdout.split())
    assert {"libasound2-dev", "python3-dev", "gcc", "python3-venv", "python3-systemd", "alsa-utils"} <= packages


@pytest.mark.parametrize(("kind", "cage"), [("lite", True), ("desktop", False)])
def test_install_screen_adds_the_browser_and_without_a_desktop_cage(kind: str, cage: bool) -> None:
    res = subprocess.run(
        [str(REPO / "provisioning" / "install.sh"), f"--screen={kind}", "--print-apt-packages"],
        capture_output=True, text=True, timeout=30, check=True,
    )
    packages = set(res.stdout.split())
    assert "chromium" in packages and "python3-systemd" in packages
    assert ("cage" in packages) is cage
    plain = subprocess.run([str(REPO / "provisioning" / "install.sh"), "--print-apt-packages"],
                           capture_output=True, text=True, timeout=30, check=True)
    assert "chromium" not in plain.stdout.split()  # a kiosk without a screen gets no browser


def test_install_refuses_an_unknown_screen_kind() -> None:
    res = subprocess.run([str(REPO / "provisioning" / "install.sh"), "--screen=tv"],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode != 0 and "choose desktop, lite or auto" in res.stderr


def test_install_rejects_an_unknown_option_with_usage() -> None:
    res = subprocess.run(
        [str(REPO / "provisioning" / "install.sh"), "--frobnicate"], capture_output=True, text=True, timeout=30
    )
    assert res.returncode != 0
    assert "unknown option --frobnicate" in res.stderr
    assert "--root DIR" in res.stderr


def _install(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO / "provisioning" / "install.sh"), *args], capture_output=True, text=True, timeout=60, input=input
    )


@needs_root
@pytest.mark.parametrize("inner", [" ", "\t", "\n", "\r\n"], ids=["space", "tab", "newline", "crlf"])
def test_install_refuses_a_key_with_whitespace_inside_and_never_prints_it(tmp_path: Path, inner: str) -> None:
    """A key with whitespace inside is refused before any change (`tr -d '[:space:]'` would make one wrong key)."""
    target = tmp_path / "root"
    target.mkdir()
    half = KEY[:16], KEY[16:]
    key_file = tmp_path / "key.txt"
    key_file.write_text(f"{half[0]}{inner}{half[1]}\n")
    res = _install("--root", str(target), "--no-apt", "--api-key-file", str(key_file))
    assert res.returncode == 1
    assert "whitespace inside" in res.stderr
    assert str(key_file) in res.stderr
    assert half[0] not in res.stdout + res.stderr
    assert half[1] not in res.stdout + res.stderr
    assert list(target.iterdir()) == []
    assert key_file.exists()
    res = _install("--root", str(target), "--no-apt", "--api-key-stdin", input=f"{half[0]}{inner}{half[1]}")
    assert res.returncode == 1
    assert "standard input has whitespace inside" in res.stderr
    assert half[0] not in res.stdout + res.stderr


@needs_root
def test_install_accepts_a_notepad_key_with_bom_crlf_and_blanks_around(tmp_path: Path) -> None:
    target = tmp_path / "root"
    target.mkdir()
    key_file = tmp_path / "key.txt"
    key_file.write_bytes(b"\xef\xbb\xbf  " + KEY.encode() + b" \r\n\r\n")
    res = _install("--root", str(target), "--no-apt", "--api-key-file", str(key_file))
    # Past the key: the next step finds the (empty) root without Debian's packages.
    assert res.returncode == 1, res.stderr
    assert "Debian packages missing" in res.stderr, res.stderr
    assert "API key" not in res.stderr
    assert KEY not in res.stderr
    empty = tmp_path / "empty.txt"
    empty.write_text(" \r\n")
    res = _install("--root", str(target), "--no-apt", "--api-key-file", str(empty))
    assert res.returncode == 1
    assert "is empty" in res.stderr


@needs_root
def test_install_refuses_an_unknown_extra_naming_the_valid_ones(tmp_path: Path) -> None:
    res = _install("--root", str(tmp_path), "--no-apt", "--extras", "wake,bench")
    assert res.returncode == 1
    assert "unknown extra 'bench'" in res.stderr
    assert "valid: wake,dsp,aec,apa102,mqtt" in res.stderr
    res = _install("--root", str(tmp_path), "--no-apt", "--remove-key-file")
    assert res.returncode == 1
    assert "only with --api-key-file" in res.stderr


@pytest.mark.parametrize("prefix", [
    "/opt/voice appliance", "/opt/a&b", "/opt/a#b", "/opt/a%b", "/opt/a\\b", "/opt/a\nb", "/opt/../etc", "/opt/./a",
    "opt/relative",
], ids=["space", "ampersand", "hash", "percent", "backslash", "newline", "dotdot", "dot", "relative"])
@pytest.mark.parametrize("form", ["separate", "equals"])
def test_install_refuses_a_prefix_the_units_and_sed_cannot_hold_before_changing_anything(
    tmp_path: Path, prefix: str, form: str
) -> None:
    """The prefix goes into the units (ExecStart=) and sed's replacement: a space split ExecStart, & expanded."""
    target = tmp_path / "root"
    target.mkdir()
    args = ["--prefix", prefix] if form == "separate" else [f"--prefix={prefix}"]
    res = _install("--root", str(target), "--no-apt", *args)
    assert res.returncode == 1
    assert res.stderr.startswith(f"install.sh: error: --prefix {prefix}: "), res.stderr
    assert "letters, digits" in res.stderr
    assert "systemd units" in res.stderr
    assert len(res.stderr.replace(prefix, "PREFIX").splitlines()) == 1, res.stderr
    assert res.stdout == ""
    assert list(target.iterdir()) == []


@needs_root
def test_install_takes_a_plain_prefix_with_dots_dashes_and_a_trailing_slash(tmp_path: Path) -> None:
    target = tmp_path / "root"
    target.mkdir()
    res = _install("--root", str(target), "--no-apt", "--prefix", "/opt/kiosk_2.0-b+c/")
    # Past the prefix: the next step finds the (empty) root without Debian's packages.
    assert res.returncode == 1, res.stderr
    assert "Debian packages missing" in res.stderr, res.stderr
    assert "--prefix" not in res.stderr


def _not_a_venv(target: Path) -> Path:
    """A system tree whose /usr has an executable bin/python (python-is-python3) but is no venv."""
    usr = target / "usr"
    (usr / "bin").mkdir(parents=True)
    (usr / "bin" / "python").write_text("#!/bin/sh\n")
    (usr / "bin" / "python").chmod(0o755)
    (usr / "lib").mkdir()
    return usr


@needs_root
def test_uninstall_removes_only_a_virtual_environment_at_the_prefix(tmp_path: Path) -> None:
    """`--prefix /usr` (the autotools habit) removed /usr when it had a bin/python."""
    target = tmp_path / "root"
    usr = _not_a_venv(target)
    res = subprocess.run([str(REPO / "provisioning" / "uninstall.sh"), "--root", str(target), "--prefix", "/usr/"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert (usr / "bin" / "python").exists()
    assert (usr / "lib").is_dir()
    assert "left /usr as it is: it is not a virtual environment (no pyvenv.cfg)" in res.stderr


@needs_root
def test_install_refuses_a_prefix_that_holds_something_else(tmp_path: Path) -> None:
    """A non-empty directory without pyvenv.cfg is no venv to upgrade: pip would have gone into the system's."""
    target = tmp_path / "root"
    usr = _not_a_venv(target)
    res = _install("--root", str(target), "--no-apt", "--prefix", "/usr")
    assert res.returncode == 1
    assert "--prefix /usr already holds something other than a virtual environment" in res.stderr, res.stderr
    assert sorted(p.name for p in usr.iterdir()) == ["bin", "lib"]
    assert [p.name for p in target.iterdir()] == ["usr"]
    (target / "opt" / "voice-appliance").mkdir(parents=True)  # an empty directory made for it is fine
    res = _install("--root", str(target), "--no-apt")
    assert res.returncode == 1, res.stderr
    assert "Debian packages missing" in res.stderr, res.stderr


@pytest.mark.skipif(shutil.which("arecord") is None, reason="needs alsa-utils (arecord)")
@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.name)
def test_asound_templates_parse_down_to_the_sound_card(tmp_path: Path, template: Path) -> None:
    """alsa-lib reads each template; opening stops only at the missing card, not at a syntax error."""
    shutil.copy(template, tmp_path / ".asoundrc")
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / ".config")}
    for argv in (
        ["arecord", "-D", "kiosk_mic", "-f", "S16_LE", "-r", "16000", "-c", "1", "-s", "160", "/dev/null"],
        ["aplay", "-D", "kiosk_speaker", "-f", "S16_LE", "-r", "16000", "-c", "1", "-s", "160", "/dev/zero"],
        ["arecord", "-D", "default", "-f", "S16_LE", "-r", "16000", "-c", "1", "-s", "160", "/dev/null"],
    ):
        res = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env)
        # No card here: alsa-lib must get as far as looking the card up.
        assert res.returncode != 0
        assert "Unknown PCM" not in res.stderr, res.stderr
        assert "parse error" not in res.stderr.lower(), res.stderr
        assert "card" in res.stderr.lower(), res.stderr


# -- first-boot.sh ----------------------------------------------------------------


def _first_boot(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    boot = tmp_path / "boot"
    etc = tmp_path / "etc"
    boot.mkdir()
    prefix = tmp_path / "prefix"
    (prefix / "bin").mkdir(parents=True)
    wrapper = prefix / "bin" / "voice-appliance"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m device "$@"\n')
    wrapper.chmod(0o755)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "FIRSTBOOT_PREFIX": str(prefix),
        "PYTHONPATH": str(REPO),
    }
    return boot, etc, env


def _run_first_boot(boot: Path, etc: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(FIRST_BOOT), "--boot", str(boot), "--etc", str(etc)],
        capture_output=True, text=True, timeout=60, env=env,
    )


@needs_root
def test_first_boot_installs_a_notepad_key_root_only_and_wipes_it(tmp_path: Path) -> None:
    boot, etc, env = _first_boot(tmp_path)
    (boot / "voice-appliance-api-key.txt").write_bytes(b"\xef\xbb\xbf" + KEY.encode() + b"\r\n")
    res = _run_first_boot(boot, etc, env)
    assert res.returncode == 0, res.stdout + res.stderr
    key_file = etc / "api_key"
    assert key_file.read_text() == KEY + "\n"
    st = key_file.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == 0
    assert not (boot / "voice-appliance-api-key.txt").exists()
    assert KEY not in res.stdout + res.stderr


@needs_root
def test_first_boot_applies_a_valid_config_once_and_keeps_the_old_one(tmp_path: Path) -> None:
    boot, etc, env = _first_boot(tmp_path)
    etc.mkdir()
    (etc / "config.toml").write_text('[agent]\nagent_id = "agent_old"\n')
    (boot / "voice-appliance.toml").write_bytes(b'\xef\xbb\xbf[agent]\r\nagent_id = "agent_new"\r\n')
    res = _run_first_boot(boot, etc, env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "agent_new" in (etc / "config.toml").read_text()
    assert "agent_old" in (etc / "config.toml.bak").read_text()
    assert stat.S_IMODE((etc / "config.toml").stat().st_mode) == 0o640
    assert not (boot / "voice-appliance.toml").exists()
    assert (boot / "voice-appliance.toml.applied").exists()
    # Once: a second boot finds nothing to do and changes nothing.
    res = _run_first_boot(boot, etc, env)
    assert res.returncode == 0
    assert res.stdout == ""


@needs_root
def test_first_boot_refuses_an_invalid_config_and_says_why_on_the_boot_partition(tmp_path: Path) -> None:
    boot, etc, env = _first_boot(tmp_path)
    etc.mkdir()
    (etc / "config.toml").write_text('[agent]\nagent_id = "agent_old"\n')
    (boot / "voice-appliance.toml").write_text('[agent]\nagent_id = "agent_new"\nregoin = "eu"\n')
    res = _run_first_boot(boot, etc, env)
    assert res.returncode == 1
    assert "agent_old" in (etc / "config.toml").read_text()
    assert (boot / "voice-appliance.toml.invalid").exists()
    error = (boot / "voice-appliance-error.txt").read_bytes().decode()
    assert "NOT applied" in error
    assert "agent.regoin" in error
    assert "region" in error
    assert "voice-appliance.toml" in error
    assert ".config.toml." not in error  # names the user's file
    assert error.endswith("\r\n")  # readable in Notepad


@needs_root
def test_first_boot_refuses_an_empty_key_and_still_wipes_the_file(tmp_path: Path) -> None:
    boot, etc, env = _first_boot(tmp_path)
    (boot / "voice-appliance-api-key.txt").write_text("\r\n")
    res = _run_first_boot(boot, etc, env)
    assert res.returncode == 1
    assert "empty" in res.stdout
    assert not (etc / "api_key").exists()
    assert not (boot / "voice-appliance-api-key.txt").exists()


@needs_root
def test_first_boot_never_leaves_an_inline_key_on_the_boot_partition(tmp_path: Path) -> None:
    """A refused config does not keep the key readable (as voice-appliance.toml.invalid, say)."""
    boot, etc, env = _first_boot(tmp_path)
    config = f'[agent]\r\nagent_id = "agent_new"\r\napi_key = "{KEY}"\r\nregion = "eu"\r\n'
    (boot / "voice-appliance.toml").write_text(config)
    res = _run_first_boot(boot, etc, env)
    assert res.returncode == 1  # api_key is no config key: refused, as before
    invalid = (boot / "voice-appliance.toml.invalid").read_text()
    assert KEY not in invalid
    assert 'api_key = "REMOVED-SECRET"' in invalid
    assert 'agent_id = "agent_new"' in invalid
    assert 'region = "eu"' in invalid  # the rest is still there to fix
    for f in boot.iterdir():
        assert KEY.encode() not in f.read_bytes(), f.name
    assert KEY not in res.stdout + res.stderr
    assert "removed what looked like an API key" in res.stdout
    assert "voice-appliance-api-key.txt" in res.stdout
    assert "agent.api_key" in (boot / "voice-appliance-error.txt").read_text()


@needs_root
def test_first_boot_scrubs_a_key_from_an_applied_config_too(tmp_path: Path) -> None:
    boot, etc, env = _first_boot(tmp_path)
    (boot / "voice-appliance.toml").write_text(f'# my key: {KEY}\n[agent]\nagent_id = "agent_new"\n')
    res = _run_first_boot(boot, etc, env)
    assert res.returncode == 0, res.stdout + res.stderr
    applied = (boot / "voice-appliance.toml.applied").read_text()
    assert KEY not in applied
    assert 'agent_id = "agent_new"' in applied
    assert "removed what looked like an API key" in res.stdout


KEY_NAME = "voice-appliance-api-key.txt"
CONFIG_NAME = "voice-appliance.toml"
# What a link may point at: a file outside the boot partition that must keep its bytes.
VICTIM = b'root:x:0:0:root:/root:/bin/bash\npassword = "hunter2"\n'


def _plant(kind: str, path: Path, victim: Path) -> None:
    victim.write_bytes(VICTIM)
    if kind == "symlink":
        path.symlink_to(victim)
    elif kind == "hardlink":
        os.link(victim, path)
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()


@needs_root
@pytest.mark.parametrize("name", [KEY_NAME, CONFIG_NAME])
@pytest.mark.parametrize(("kind", "why"), [
    ("symlink", "is a symbolic link"),
    ("hardlink", "has other names (hard links)"),
    ("fifo", "is not a regular file"),
    ("directory", "is not a regular file"),
])
def test_first_boot_takes_nothing_but_a_plain_file_and_leaves_the_rest_alone(
    tmp_path: Path, name: str, kind: str, why: str
) -> None:
    """A link on a boot directory that allows them (/boot on plain Debian) had its target installed and zeroed."""
    boot, etc, env = _first_boot(tmp_path)
    victim = tmp_path / "victim.txt"
    _plant(kind, boot / name, victim)
    res = _run_first_boot(boot, etc, env)  # bounded: a FIFO opened for reading would block here
    assert res.returncode == 1, res.stdout + res.stderr
    lines = [line for line in res.stdout.splitlines() if why in line]
    assert len(lines) == 1, res.stdout
    assert f"{boot / name} {why}" in lines[0], res.stdout
    assert "left it as it is" in lines[0], res.stdout
    assert res.stderr == ""
    assert victim.read_bytes() == VICTIM
    assert not (etc / "api_key").exists()
    assert not (etc / "config.toml").exists()
    assert [p.name for p in boot.iterdir()] == [name]  # untouched: still there, nothing written next to it
    assert (boot / name).is_symlink() == (kind == "symlink")


@needs_root
@pytest.mark.parametrize(("output", "config"), [
    ("voice-appliance-error.txt", '[agent]\nagent_id = "agent_new"\nregoin = "eu"\n'),
    ("voice-appliance.toml.invalid", f'[agent]\nagent_id = "agent_new"\napi_key = "{KEY}"\n'),
    ("voice-appliance.toml.applied", f'# my key: {KEY}\n[agent]\nagent_id = "agent_new"\n'),
], ids=["error-text", "invalid", "applied"])
def test_first_boot_replaces_a_link_where_it_writes_on_the_boot_partition(
    tmp_path: Path, output: str, config: str
) -> None:
    """What first-boot leaves on the boot partition is a new file: a link already there is never written through."""
    boot, etc, env = _first_boot(tmp_path)
    victim = tmp_path / "victim.txt"
    _plant("symlink", boot / output, victim)
    (boot / CONFIG_NAME).write_text(config)
    res = _run_first_boot(boot, etc, env)
    assert res.returncode == (0 if output.endswith(".applied") else 1), res.stdout + res.stderr
    assert victim.read_bytes() == VICTIM
    written = boot / output
    assert not written.is_symlink()
    assert written.is_file()
    assert "agent_new" in written.read_text() or "NOT applied" in written.read_text()
    assert KEY not in written.read_text()
    assert sorted(p.name for p in boot.iterdir() if p.name.startswith(".")) == []  # no temporary file left


def test_wheelhouse_refuses_an_unknown_extra_naming_the_valid_ones(tmp_path: Path) -> None:
    res = subprocess.run([str(REPO / "provisioning" / "wheelhouse.sh"), "--extras", "wake,bench", str(tmp_path / "w")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert "unknown extra 'bench'" in res.stderr
    assert "valid: wake,dsp,aec,apa102,mqtt" in res.stderr
    assert not (tmp_path / "w").exists()


@needs_root
def test_a_wheelhouse_of_wheels_only_needs_no_build_tools(tmp_path: Path) -> None:
    """With a pyalsaaudio wheel and no source archive nothing compiles: gcc and the headers are not asked for."""
    target = tmp_path / "root"
    target.mkdir()
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "pyalsaaudio-0.11.0-cp311-cp311-linux_aarch64.whl").write_bytes(b"")
    res = _install("--root", str(target), "--no-apt", "--wheelhouse", str(wheels))
    assert res.returncode == 1, res.stderr
    assert "Debian packages missing" in res.stderr, res.stderr
    missing = res.stderr.split("Debian packages missing", 1)[1].split(";", 1)[0].split()
    assert "python3-venv" in missing
    assert "alsa-utils" in missing
    assert not {"gcc", "libc6-dev", "python3-dev", "libasound2-dev"} & set(missing), missing
    # A source archive in it would be compiled: then the build tools are needed.
    (wheels / "webrtcvad-wheels-2.0.14.post1.tar.gz").write_bytes(b"")
    res = _install("--root", str(target), "--no-apt", "--wheelhouse", str(wheels))
    assert "gcc" in res.stderr.split("Debian packages missing", 1)[1].split(";", 1)[0].split()
    assert list(target.iterdir()) == []
    res = _install("--root", str(target), "--no-apt", "--wheelhouse", str(tmp_path / "nowhere"))
    assert res.returncode == 1
    assert "no such directory" in res.stderr
