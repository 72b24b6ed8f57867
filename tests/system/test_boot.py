"""Boot a real systemd with the installed appliance and prove the unit does what it promises.

A minimal Debian bookworm (debootstrap, cached under
/var/cache/voice-appliance-test/) gets the project through
``provisioning/install.sh --root``; settings and the API key are dropped on
its boot partition as a user would; then systemd boots as PID 1 in its own
namespaces (tests/system/machine.py). With the real unit:

- first boot applies the boot partition's config and key, and wipes the key;
- the daemon reaches READY=1 (ActiveState=active) with a STATUS= line, over
  ALSA ``type file`` devices, gpiozero mock pins and the agent emulator;
- ``systemctl reload`` keeps it running; a stopped (SIGSTOP) daemon is
  killed by the watchdog and restarted; ``systemctl stop`` is clean;
- an invalid config exits 78 and a missing key 77, and neither is restarted.

Needs root, debootstrap, unshare/nsenter and overlayfs; skips otherwise.
First run builds the root (1–3 min); later runs take well under a minute.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import pty
import select
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from device.drivers import filedevices
from tests.system import pins
from tests.system.machine import (
    BASE_PACKAGES,
    CACHE_DIR,
    Machine,
    Overlay,
    Unavailable,
    booted,
    cached_root,
    install_packages,
    remove_stale_cgroups,
    wait_for,
)
from tests.system.unitfile import REPO

pytestmark = [pytest.mark.system, pytest.mark.timeout(900)]

UNIT = "voice-appliance.service"
FIRSTBOOT = "voice-appliance-firstboot.service"
EMU_KEY = "sk_boot_test_7f3a9c1e5b2d4f6a8c0e1b3d"
TEST_DIR = "/var/lib/voice-appliance-test"
ALSA_CONF = "/etc/voice-appliance-test/filedevices.conf"
WATCHDOG_S = 5
DROP_IN = f"""\
# Written by tests/system/test_boot.py: ALSA file devices, mock GPIO pins, short timeouts.
[Service]
Environment=ALSA_CONFIG_PATH=/usr/share/alsa/alsa.conf:{ALSA_CONF}
Environment=GPIOZERO_PIN_FACTORY=mock
ReadWritePaths={TEST_DIR}
WatchdogSec={WATCHDOG_S}
TimeoutAbortSec=2
RestartSec=1
"""
PROPS = ("ActiveState", "SubState", "Result", "ExecMainStatus", "NRestarts", "MainPID", "StatusText")


def _why_not_here() -> str | None:
    if os.geteuid() != 0:
        return "the boot test needs root (namespaces, mounts, chroot)"
    for tool in ("debootstrap", "unshare", "nsenter", "chroot", "mount"):
        if shutil.which(tool) is None:
            return f"the boot test needs {tool} (apt-get install debootstrap util-linux)"
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "the boot test needs overlayfs"
    return None


@pytest.fixture(scope="module")
def base_root() -> Path:
    reason = _why_not_here()
    if reason:
        pytest.skip(reason)
    remove_stale_cgroups()
    try:
        return cached_root([*BASE_PACKAGES, *install_packages()])
    except Unavailable as e:
        pytest.skip(str(e))


def _install_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_FIND_LINKS", "VIRTUAL_ENV"))}
    env["HOME"] = "/root"
    return env


FIXTURE_KEY = "sk_fixture_0123456789abcdef0123456789"
INSTALL_OUTPUT: dict[str, str] = {}


def _prepare(r: Path, overlay: Overlay) -> None:
    """What every fresh root gets before install.sh: this host's resolver, CAs and pip cache."""
    # This host's resolver and trusted CAs (e.g. a TLS-inspecting proxy) for pip inside the root.
    shutil.copy("/etc/resolv.conf", r / "etc" / "resolv.conf")
    host_cas = Path("/etc/ssl/certs/ca-certificates.crt")
    if host_cas.exists():
        shutil.copy(host_cas, r / "etc" / "ssl" / "certs" / "ca-certificates.crt")
    (r / "etc" / "hostname").write_text("kiosk-test\n")
    pip_cache = CACHE_DIR / "pip"
    pip_cache.mkdir(parents=True, exist_ok=True)
    overlay.bind(pip_cache, "/root/.cache/pip")


def install_sh(*args: str, env: dict[str, str] | None = None, offline: bool = False,
               stdin_tty_answer: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run provisioning/install.sh; ``offline``: in a network namespace of its own (loopback down, no route)."""
    argv = [str(REPO / "provisioning" / "install.sh"), *args]
    if offline:
        argv = ["unshare", "--net", "--", *argv]
    if stdin_tty_answer is None:
        return subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env or _install_env(),
                              stdin=subprocess.DEVNULL)
    # A terminal on stdin and stderr, as for a user at the console (install.sh asks only then).
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.Popen(argv, stdin=terminal, stdout=subprocess.PIPE, stderr=terminal,
                                env=env or _install_env(), start_new_session=True)
        os.close(terminal)
        terminal = -1
        output = b""
        answered = False
        while True:
            ready, _, _ = select.select([controller], [], [], 600)
            assert ready, "install.sh produced no output for 600 s"
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the terminal's other end closed (install.sh exited)
                break
            if not chunk:
                break
            output += chunk
            if not answered and b"[y/N]" in output:
                os.write(controller, stdin_tty_answer.encode() + b"\n")
                answered = True
        stdout = proc.stdout.read().decode() if proc.stdout else ""
        proc.wait(timeout=60)
        if proc.stdout:
            proc.stdout.close()
        return subprocess.CompletedProcess(argv, proc.returncode, stdout, output.decode(errors="replace"))
    finally:
        os.close(controller)
        if terminal >= 0:
            os.close(terminal)


@pytest.fixture(scope="module")
def root(base_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh writable copy of the cached root with the appliance installed by install.sh --root."""
    overlay = Overlay(base_root, tmp_path_factory.mktemp("overlay"))
    try:
        r = overlay.path
        _prepare(r, overlay)
        key_file = tmp_path_factory.mktemp("home") / "key.txt"
        key_file.write_text(FIXTURE_KEY + "\n")
        t0 = time.monotonic()
        res = install_sh("--root", str(r), "--api-key-file", str(key_file))
        print(f"\ninstall.sh --root (default, online, pip cache warm): {time.monotonic() - t0:.1f} s")
        assert res.returncode == 0, res.stdout + res.stderr
        INSTALL_OUTPUT.update(stderr=res.stderr, key_file=str(key_file))
        yield r
    finally:
        overlay.close()


def in_root(root: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["chroot", str(root), *argv], capture_output=True, text=True, timeout=120)


def test_install_builds_the_venv_user_and_config(root: Path) -> None:
    imports = "import alsaaudio, webrtcvad, gpiozero, systemd.journal, websocket, requests, device.cli"
    version = "from importlib.metadata import version; print(version('pyalsaaudio'))"
    res = in_root(root, "/opt/voice-appliance/bin/python", "-c", f"{imports}; {version}")
    assert res.returncode == 0, res.stderr
    assert tuple(int(x) for x in res.stdout.split(".")[:2]) >= (0, 10)  # built from PyPI, not Debian's 0.8.4
    groups = {line.split(":")[0]: line.strip().split(":")[3].split(",")
              for line in (root / "etc" / "group").read_text().splitlines()}
    assert "voice-appliance" in groups["audio"]
    assert "voice-appliance" in groups["gpio"]
    etc = root / "etc" / "voice-appliance"
    gid = int(next(line.split(":")[2] for line in (root / "etc" / "group").read_text().splitlines()
                   if line.startswith("voice-appliance:")))
    for path, mode in ((etc, 0o750), (etc / "config.toml", 0o640)):
        st = path.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (mode, 0, gid), path
    assert (root / "etc/systemd/system/multi-user.target.wants" / UNIT).is_symlink()
    assert os.readlink(root / "usr/local/bin/voice-appliance") == "/opt/voice-appliance/bin/voice-appliance"
    # Built in /opt/voice-appliance.new and moved: no script may still name that path.
    for script in (root / "opt" / "voice-appliance" / "bin").iterdir():
        if script.is_file() and not script.is_symlink():
            assert b"voice-appliance.new" not in script.read_bytes(), script


VENV_SITE = "/opt/voice-appliance/lib/python3.11/site-packages"
# In the venv's own site-packages without pip installing them: the venv's seed (ensurepip) and the project.
NOT_FROM_PIP = {"pip", "setuptools", "voice-appliance"}


def venv_distributions(root: Path) -> dict[str, str]:
    """name → version of what the venv itself holds (not what it sees of Debian's packages)."""
    res = in_root(root, "/opt/voice-appliance/bin/python", "-m", "pip", "list", "--path", VENV_SITE,
                  "--format", "json", "--disable-pip-version-check")
    assert res.returncode == 0, res.stderr
    return {canonicalize_name(d["name"]): d["version"] for d in json.loads(res.stdout)}


def assert_exactly_pinned(root: Path) -> None:
    installed = venv_distributions(root)
    pinned = pins.pinned_for(platform.machine())
    wrong = {n: v for n, v in installed.items() if n not in NOT_FROM_PIP and pinned.get(n) != v}
    assert not wrong, f"not the pinned version (constraints.txt: {[f'{n}=={pinned.get(n)}' for n in wrong]}): {wrong}"
    assert {"pyalsaaudio", "webrtcvad-wheels"} <= set(installed)


def test_the_venv_holds_exactly_the_pinned_versions(root: Path) -> None:
    """Every distribution in the venv is the version constraints.txt pins (pip runs as root: nothing unpinned)."""
    assert_exactly_pinned(root)
    assert "requests" not in venv_distributions(root)  # Debian's, through --system-site-packages


def test_the_kiosk_install_leaves_the_tools_out(root: Path) -> None:
    """No emulator or bench on a kiosk unless --with-tools; the CLI names the flag."""
    package = root / VENV_SITE.lstrip("/") / "device"
    assert (package / "app" / "daemon.py").exists()
    assert (package / "data" / "bench" / "question.wav").exists()
    assert not (package / "emulator").exists()
    assert not (package / "bench").exists()
    assert "websockets" not in venv_distributions(root)
    for tool in ("emulator", "bench"):
        res = in_root(root, "/opt/voice-appliance/bin/voice-appliance", tool)
        assert res.returncode == 69, res.stdout + res.stderr
        assert "--with-tools" in res.stderr
        assert "Traceback" not in res.stderr


def test_install_says_the_plaintext_key_file_is_still_there(root: Path) -> None:
    """Not a terminal, no --remove-key-file: the file stays and the command to remove it is shown."""
    key_file = INSTALL_OUTPUT["key_file"]
    assert Path(key_file).exists()
    advice = f"the plaintext key is still in {key_file}: remove it with: shred -u '{key_file}'"
    assert advice in INSTALL_OUTPUT["stderr"]
    assert FIXTURE_KEY not in INSTALL_OUTPUT["stderr"]


def test_install_again_keeps_the_config_and_tightens_the_key(root: Path) -> None:
    config = root / "etc" / "voice-appliance" / "config.toml"
    config.write_text(config.read_text() + "\n# edited on the kiosk\n")
    key = root / "etc" / "voice-appliance" / "api_key"
    key.write_text("placeholder\n")
    key.chmod(0o644)
    res = subprocess.run(
        [str(REPO / "provisioning" / "install.sh"), "--root", str(root)],
        capture_output=True, text=True, timeout=600, env=_install_env(),
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert config.read_text().endswith("# edited on the kiosk\n")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    key.unlink()  # the boot partition brings the real one


def test_units_verify_clean_inside_the_installed_system(root: Path) -> None:
    res = in_root(root, "systemd-analyze", "verify", "--man=no", UNIT, FIRSTBOOT)
    assert res.returncode == 0, res.stderr
    assert res.stderr == "", res.stderr


# -- installs that fail, and offline installs (each in a fresh root of its own) -------------


@pytest.fixture
def fresh_root(base_root: Path, tmp_path: Path) -> Iterator[Path]:
    overlay = Overlay(base_root, tmp_path / "overlay")
    try:
        _prepare(overlay.path, overlay)
        yield overlay.path
    finally:
        overlay.close()


def test_a_failed_install_leaves_nothing_half_created_and_says_how_to_resume(fresh_root: Path, tmp_path: Path) -> None:
    """pip fails (no network, the index at a closed port): no venv, no user, the key file kept."""
    key_file = tmp_path / "key.txt"
    key_file.write_text(FIXTURE_KEY + "\n")
    env = {**_install_env(), "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_RETRIES": "0", "PIP_TIMEOUT": "5"}
    res = install_sh("--root", str(fresh_root), "--api-key-file", str(key_file), env=env, offline=True)
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    for gone in ("opt/voice-appliance", "opt/voice-appliance.new", "etc/voice-appliance",
                 "usr/local/bin/voice-appliance", "usr/local/lib/systemd/system/voice-appliance.service"):
        assert not os.path.lexists(fresh_root / gone), f"{gone} left behind:\n{out}"
    assert "voice-appliance:" not in (fresh_root / "etc" / "passwd").read_text()
    assert not list((fresh_root / "var" / "tmp").glob("voice-appliance-src.*"))
    assert "install failed at pip install" in res.stderr, out
    assert "nothing else was changed" in res.stderr, out
    assert "run the same command again" in res.stderr
    assert key_file.exists()
    assert "remove it" not in out  # never removed when the install failed


WHEELHOUSE_INPUTS = (REPO / "provisioning" / "constraints.txt", REPO / "pyproject.toml",
                     REPO / "provisioning" / "wheelhouse.sh")


@pytest.fixture(scope="module")
def wheelhouse(base_root: Path) -> Path:
    """The default kiosk's wheels for this machine, built once per constraints/pyproject (cached like the root)."""
    key = hashlib.sha256(b"".join(p.read_bytes() for p in WHEELHOUSE_INPUTS)).hexdigest()[:16]
    out = CACHE_DIR / f"wheelhouse-{key}"
    # (Marked "built", not "complete": cached_root removes other directories marked complete.)
    if not (out / "built").exists():
        shutil.rmtree(out, ignore_errors=True)
        for old in CACHE_DIR.glob("wheelhouse-*"):
            shutil.rmtree(old, ignore_errors=True)
        t0 = time.monotonic()
        res = subprocess.run([str(REPO / "provisioning" / "wheelhouse.sh"), str(out)], capture_output=True,
                             text=True, timeout=600, env=_install_env())
        assert res.returncode == 0, res.stdout + res.stderr
        print(f"\nwheelhouse.sh (amd64, default): {time.monotonic() - t0:.1f} s")
        (out / "built").write_text("")
    return out


COMPILERS = ("gcc", "cc", "c89", "c99", "cpp")


def test_an_offline_install_from_a_wheelhouse_needs_no_network_and_no_compiler(
    fresh_root: Path, wheelhouse: Path, tmp_path: Path,
) -> None:
    """install.sh --wheelhouse installs offline: in a network namespace without network, compilers removed."""
    # No compiler in the root: a source build would fail (the boot root has install.sh's build tools).
    bin_dir = fresh_root / "usr" / "bin"
    for f in bin_dir.iterdir():
        if f.name in COMPILERS or "-gcc" in f.name or f.name.startswith("gcc"):
            f.unlink()
    assert in_root(fresh_root, "sh", "-c", "command -v gcc cc").stdout == ""
    wheels = tmp_path / "wheels"
    shutil.copytree(wheelhouse, wheels, ignore=shutil.ignore_patterns("built"))
    key_file = tmp_path / "key.txt"
    key_file.write_text(FIXTURE_KEY + "\n")
    # What a killed first install left (SIGKILL: no trap ran): started again from scratch, not taken over.
    leftover = fresh_root / "opt" / "voice-appliance.new"
    leftover.mkdir(parents=True)
    (leftover / "half-built").write_text("")
    t0 = time.monotonic()
    res = install_sh("--root", str(fresh_root), "--wheelhouse", str(wheels), "--api-key-file", str(key_file),
                     offline=True, stdin_tty_answer="y")
    took = time.monotonic() - t0
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    print(f"\ninstall.sh --root --wheelhouse (offline, no compiler): {took:.1f} s")
    assert "nothing to compile" in out
    imports = "import alsaaudio, webrtcvad, gpiozero, systemd.journal, websocket, requests, device.app.daemon"
    res2 = in_root(fresh_root, "/opt/voice-appliance/bin/python", "-c", imports)
    assert res2.returncode == 0, res2.stderr
    assert_exactly_pinned(fresh_root)
    assert not leftover.exists()
    assert not (fresh_root / "opt" / "voice-appliance" / "half-built").exists()
    # Asked on the terminal, answered y: the plaintext key file is gone, the key installed root-only.
    assert "remove it now? [y/N]" in out
    assert not key_file.exists()
    installed = fresh_root / "etc" / "voice-appliance" / "api_key"
    assert installed.read_text() == FIXTURE_KEY + "\n"
    assert stat.S_IMODE(installed.stat().st_mode) == 0o600
    assert FIXTURE_KEY not in out
    assert "voice-appliance:" in (fresh_root / "etc" / "passwd").read_text()


# -- the booted machine -------------------------------------------------------------


class Agent:
    """The kiosk's agent: the emulator, on this machine's loopback."""

    def __init__(self) -> None:
        from device.emulator import Emulator

        self.emulator = Emulator(api_key=EMU_KEY).start()
        self.base_url: str = self.emulator.base_url
        self.agent_id: str = self.emulator.agent_id

    def close(self) -> None:
        self.emulator.stop()


@pytest.fixture(scope="module")
def agent() -> Iterator[Agent]:
    a = Agent()
    yield a
    a.close()


def kiosk_config(agent: Agent) -> str:
    mic = filedevices.capture_device(Path(TEST_DIR) / "in.raw")
    speaker = f'va_out16:OUT="{TEST_DIR}/out.raw"'  # filedevices' naming; the file is inside the root
    return (
        f'[agent]\nagent_id = "{agent.agent_id}"\nbase_url = "{agent.base_url}"\nconnection = "signed_url"\n'
        f"[audio]\ncapture_device = '{mic}'\nplayback_device = '{speaker}'\npace_realtime = true\n"
        '[button]\npin = 17\n[leds]\npreset = "none"\n'
    )


@pytest.fixture(scope="module")
def machine(root: Path, agent: Agent, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    # What a user does with an SD card reader: config and key on the boot partition.
    boot = root / "boot" / "firmware"
    boot.mkdir(parents=True, exist_ok=True)
    (boot / "voice-appliance.toml").write_text(kiosk_config(agent))
    (boot / "voice-appliance-api-key.txt").write_bytes(b"\xef\xbb\xbf" + EMU_KEY.encode() + b"\r\n")
    # The test bench around the kiosk: ALSA file devices and a drop-in with mock pins and short timeouts.
    (root / ALSA_CONF.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
    (root / ALSA_CONF.lstrip("/")).write_text(filedevices.ASOUNDRC)
    test_dir = root / TEST_DIR.lstrip("/")
    test_dir.mkdir(parents=True, exist_ok=True)
    (test_dir / "in.raw").write_bytes(bytes(2 * 16000 * 5))
    assert in_root(root, "chown", "voice-appliance:voice-appliance", TEST_DIR).returncode == 0
    drop_in = root / "etc" / "systemd" / "system" / f"{UNIT}.d" / "boot-test.conf"
    drop_in.parent.mkdir(parents=True, exist_ok=True)
    drop_in.write_text(DROP_IN)
    # A kiosk's touchscreen app: a user in the group that may use the control socket.
    res = subprocess.run(
        ["useradd", "--root", str(root), "--system", "--groups", "voice-appliance", "--no-create-home",
         "--shell", "/usr/sbin/nologin", "kioskui"], capture_output=True, text=True, timeout=60,
    )
    assert res.returncode == 0, res.stderr
    with booted(root, tmp_path_factory.mktemp("boot") / "namespace.log") as m:
        m.boot_finished(timeout_s=90)
        yield m
    # Torn down: no process, cgroup or mount of the machine may survive it.
    assert not Path(f"/proc/{m.pid1}").exists()
    assert not list(Path("/sys/fs/cgroup").glob(f"*/{m.group}"))
    mounts = Path("/proc/self/mountinfo").read_text()
    assert f" {root}/proc " not in mounts
    assert f" {root}/run " not in mounts


def state(m: Machine) -> dict[str, str]:
    return m.show(UNIT, *PROPS)


@pytest.fixture(scope="module")
def daemon(machine: Machine) -> Machine:
    """The service once it reached READY=1."""

    def settled() -> str:
        s = state(machine)
        if s["ActiveState"] == "active":
            return "ready"
        if s["ActiveState"] == "failed":
            return "failed"
        return ""

    outcome = wait_for(settled, 90, f"{UNIT} to become active (READY=1) or fail")
    assert outcome == "ready", f"{state(machine)}\n{machine.journal(UNIT)}"
    return machine


def test_first_boot_applied_the_boot_partition_and_wiped_the_key(machine: Machine, root: Path) -> None:
    fb = machine.show(FIRSTBOOT, "Result", "ExecMainStatus")
    assert fb == {"Result": "success", "ExecMainStatus": "0"}, machine.journal(FIRSTBOOT)
    boot = root / "boot" / "firmware"
    assert not (boot / "voice-appliance-api-key.txt").exists()
    assert (boot / "voice-appliance.toml.applied").exists()
    key = root / "etc" / "voice-appliance" / "api_key"
    st = key.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o600, 0)
    assert key.read_text() == EMU_KEY + "\n"
    assert "agent_id" in (root / "etc" / "voice-appliance" / "config.toml").read_text()
    assert EMU_KEY not in machine.journal(FIRSTBOOT)


def test_service_is_ready_with_a_status_line(daemon: Machine, root: Path) -> None:
    s = state(daemon)
    assert s["SubState"] == "running", s
    assert s["StatusText"], s
    status = daemon.run("cat", "/run/voice-appliance/status.json").stdout
    assert '"state"' in status
    assert EMU_KEY not in daemon.journal(UNIT)


def test_doctor_sees_what_the_service_sees(daemon: Machine) -> None:
    res = daemon.run("voice-appliance", "doctor", "--offline", "--json", "--only",
                     "config,user,credentials,audio,service", check=False)
    rows = json.loads(res.stdout)
    assert {r["status"] for r in rows} == {"OK"}, res.stdout
    details = {r["check"]: " | ".join(x["detail"] for x in rows if x["check"] == r["check"]) for r in rows}
    assert "/etc/voice-appliance/api_key" in details["credentials"]  # found through LoadCredential=
    # the audio devices exist only in the unit's ALSA_CONFIG_PATH (the drop-in): doctor used it
    assert "va_in:" in details["audio"]
    assert "active (running)" in details["service"]
    assert res.returncode == 0
    assert EMU_KEY not in res.stdout + res.stderr


def as_user(user: str, *argv: str, group: str = "") -> tuple[str, ...]:
    return ("setpriv", f"--reuid={user}", f"--regid={group or user}", "--init-groups", *argv)


def test_control_socket_is_for_its_group_and_drives_a_conversation(daemon: Machine, agent: Agent) -> None:
    sock = "/run/voice-appliance/control.sock"
    assert daemon.run("stat", "-c", "%a %G", sock).stdout.split() == ["660", "voice-appliance"]
    status = daemon.run(*as_user("kioskui", "voice-appliance", "ctl", "status"))
    assert json.loads(status.stdout)["state"] == "idle"
    outsider = daemon.run(
        *as_user("nobody", "voice-appliance", "ctl", "--socket", sock, "status", group="nogroup"), check=False
    )
    assert outsider.returncode == 77
    assert "not allowed" in outsider.stderr
    emu = agent.emulator
    daemon.run(*as_user("kioskui", "voice-appliance", "ctl", "start"))
    wait_for(lambda: "conversation" in state(daemon)["StatusText"], 30, "STATUS= to show the conversation")

    def streaming() -> bool:  # the microphone stream (zeros while the gate is shut) reaches the agent
        records = emu.conversations  # type: ignore[attr-defined]
        return bool(records) and len(records[-1].user_audio_pcm) >= 8000

    wait_for(streaming, 30, "the kiosk's audio stream to reach the agent")
    daemon.run(*as_user("kioskui", "voice-appliance", "ctl", "stop"))
    record = emu.wait_for_conversation_end(timeout_s=30)  # type: ignore[attr-defined]
    assert (record.agent_id, record.close_code, record.closed_by) == (agent.agent_id, 1000, "client")
    wait_for(lambda: state(daemon)["StatusText"].startswith("idle"), 30, "STATUS= back to idle")


def test_reload_keeps_the_same_process(daemon: Machine) -> None:
    before = state(daemon)
    daemon.run("systemctl", "reload", UNIT, timeout_s=60)
    after = wait_for(lambda: (s := state(daemon))["ActiveState"] == "active" and s, 30, "active after reload")
    assert after["MainPID"] == before["MainPID"]
    assert after["NRestarts"] == before["NRestarts"]


def test_watchdog_restarts_a_stuck_daemon(daemon: Machine) -> None:
    before = state(daemon)
    daemon.run("systemctl", "kill", "--signal=SIGSTOP", UNIT)

    def restarted() -> dict[str, str] | None:
        s = state(daemon)
        ok = s["ActiveState"] == "active" and s["MainPID"] not in ("0", before["MainPID"])
        return s if ok else None

    after = wait_for(restarted, WATCHDOG_S + 30, "the watchdog to kill and restart the stopped daemon")
    assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1
    assert "Watchdog timeout" in daemon.journal(UNIT)


def test_stop_is_clean_within_the_stop_timeout(daemon: Machine) -> None:
    daemon.run("systemctl", "stop", UNIT, timeout_s=60)
    s = state(daemon)
    # "success": the daemon exited by itself on SIGTERM; "timeout" would mean systemd had to SIGKILL it.
    assert (s["ActiveState"], s["Result"]) == ("inactive", "success"), f"{s}\n{daemon.journal(UNIT)[-3000:]}"
    assert daemon.run("test", "-e", "/run/voice-appliance", check=False).returncode != 0  # RuntimeDirectory gone


def test_stop_interrupts_a_signed_url_request_that_never_answers(daemon: Machine, root: Path) -> None:
    """The worst case, agent.http_timeout_s at its maximum (120 s) and the
    prefetcher's signed-URL request in flight to a server that accepts and never answers: the
    unit still stops by itself within TimeoutStopSec (Result=success, not timeout/SIGKILL)."""
    drop = root / "etc" / "systemd" / "system" / f"{UNIT}.d" / "hanging-agent.conf"
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.settimeout(60)
        drop.write_text(
            "[Service]\n"
            f"Environment=VOICE_APPLIANCE_AGENT_BASE_URL=http://127.0.0.1:{listener.getsockname()[1]}\n"
            "Environment=VOICE_APPLIANCE_AGENT_HTTP_TIMEOUT_S=120\n"
        )
        try:
            daemon.run("systemctl", "daemon-reload")
            daemon.run("systemctl", "reset-failed", UNIT, check=False)
            daemon.run("systemctl", "restart", UNIT, timeout_s=60)  # Type=notify: returns at READY=1
            conn, _ = listener.accept()  # the prefetcher's request
            with conn:
                conn.settimeout(60)
                request = b""
                while b"\r\n\r\n" not in request:
                    chunk = conn.recv(4096)
                    assert chunk, "the daemon hung up before its request was complete"
                    request += chunk
                assert request.startswith(b"GET /v1/convai/conversation/get-signed-url")
                since = f"@{int(time.time())}"
                t0 = time.monotonic()
                daemon.run("systemctl", "stop", UNIT, timeout_s=120)
                stop_s = time.monotonic() - t0
            s = state(daemon)
            journal = daemon.run("journalctl", "-u", UNIT, "--since", since, "--no-pager", "-o", "cat",
                                 check=False, timeout_s=20).stdout
            assert (s["ActiveState"], s["Result"]) == ("inactive", "success"), f"{s}\n{journal[-3000:]}"
            assert "SIGKILL" not in journal, journal[-3000:]
            assert "timed out" not in journal.lower(), journal[-3000:]
            print(f"\nsystemctl stop with a hanging signed-URL request (http_timeout_s = 120): {stop_s:.2f} s")
        finally:
            drop.unlink()
            daemon.run("systemctl", "daemon-reload")


def _start_and_settle(m: Machine) -> dict[str, str]:
    m.run("systemctl", "stop", UNIT, timeout_s=60)
    m.run("systemctl", "reset-failed", UNIT, check=False)
    m.run("systemctl", "start", "--no-block", UNIT)
    # A restart would show as activating/auto-restart; "failed" means systemd decided not to.
    return wait_for(lambda: (s := state(m))["ActiveState"] == "failed" and s, 60, f"{UNIT} to fail")


def test_config_error_exits_78_and_is_not_restarted(machine: Machine, root: Path) -> None:
    config = root / "etc" / "voice-appliance" / "config.toml"
    good = config.read_text()
    try:
        config.write_text(good.replace("[audio]\n", "[audio]\ncapture_devise = 'oops'\n"))
        s = _start_and_settle(machine)
        assert (s["Result"], s["ExecMainStatus"], s["NRestarts"]) == ("exit-code", "78", "0"), s
        assert "audio.capture_devise" in machine.journal(UNIT)
    finally:
        config.write_text(good)


def test_missing_key_exits_77_and_is_not_restarted(machine: Machine, root: Path) -> None:
    key = root / "etc" / "voice-appliance" / "api_key"
    saved = key.read_bytes()
    try:
        key.unlink()
        s = _start_and_settle(machine)
        assert (s["Result"], s["ExecMainStatus"], s["NRestarts"]) == ("exit-code", "77", "0"), s
    finally:
        key.write_bytes(saved)
        key.chmod(0o600)


def test_no_key_drop_in_lets_a_public_agent_start_without_a_credential(daemon: Machine, root: Path) -> None:
    """drop-ins/token-broker.conf removes the credential; with connection = public READY=1 follows."""
    drop_dir = root / "etc" / "systemd" / "system" / f"{UNIT}.d"
    shutil.copy(REPO / "systemd" / "drop-ins" / "token-broker.conf", drop_dir / "token-broker.conf")
    (drop_dir / "public.conf").write_text("[Service]\nEnvironment=VOICE_APPLIANCE_AGENT_CONNECTION=public\n")
    key = root / "etc" / "voice-appliance" / "api_key"
    saved = key.read_bytes()
    key.unlink()
    try:
        daemon.run("systemctl", "daemon-reload")
        daemon.run("systemctl", "reset-failed", UNIT, check=False)
        daemon.run("systemctl", "restart", UNIT, timeout_s=60)
        s = wait_for(lambda: (x := state(daemon))["ActiveState"] in ("active", "failed") and x, 60, "a settled unit")
        assert s["ActiveState"] == "active", f"{s}\n{daemon.journal(UNIT)[-2000:]}"
        assert daemon.run("test", "-e", "/run/credentials/voice-appliance.service/elevenlabs_api_key",
                          check=False).returncode != 0
    finally:
        (drop_dir / "token-broker.conf").unlink()
        (drop_dir / "public.conf").unlink()
        key.write_bytes(saved)
        key.chmod(0o600)
        daemon.run("systemctl", "stop", UNIT, timeout_s=60)
        daemon.run("systemctl", "daemon-reload")


def test_uninstall_removes_the_install_and_purge_the_rest(machine: Machine, root: Path) -> None:
    uninstall = str(REPO / "provisioning" / "uninstall.sh")
    # An install.sh killed (SIGKILL: no trap ran) while building its first venv leaves the venv's .new.
    leftover = root / "opt" / "voice-appliance.new"
    (leftover / "bin").mkdir(parents=True)
    (leftover / "pyvenv.cfg").write_text("home = /usr/bin\n")
    res = subprocess.run([uninstall, "--root", str(root)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    for gone in ("opt/voice-appliance", "opt/voice-appliance.new", "usr/local/bin/voice-appliance",
                 f"usr/local/lib/systemd/system/{UNIT}",
                 f"etc/systemd/system/multi-user.target.wants/{UNIT}", "usr/local/sbin/voice-appliance-first-boot"):
        assert not os.path.lexists(root / gone), gone
    assert (root / "etc" / "voice-appliance" / "config.toml").exists()  # kept without --purge
    res = subprocess.run([uninstall, "--root", str(root), "--purge"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert not (root / "etc" / "voice-appliance").exists()
    assert "voice-appliance:" not in (root / "etc" / "passwd").read_text()


BINFMT = Path("/proc/sys/fs/binfmt_misc")


def test_the_machine_leaves_the_hosts_binfmt_registrations_alone(machine: Machine) -> None:
    # binfmt_misc is one table for the whole kernel: systemd-binfmt in the machine would flush
    # the host's entries (the ARM check's qemu interpreters) at boot and again when it stops.
    if not (BINFMT / "status").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], check=True, timeout=30)
    name = f"va-boot-test-{os.getpid()}"
    (BINFMT / "register").write_text(f":{name}:M::VA-BOOT-TEST-{os.getpid()}::/bin/false:\n")
    try:
        machine.run("systemctl", "restart", "systemd-binfmt.service", check=False, timeout_s=60)
        assert (BINFMT / name).exists(), "systemd-binfmt in the booted machine flushed the host's binfmt_misc"
    finally:
        if (BINFMT / name).exists():
            (BINFMT / name).write_text("-1\n")
