"""``voice-appliance doctor``: check what the kiosk needs, and say what to fix.

Every check gives one or more findings — OK, WARN, FAIL or SKIP — each with
what was seen and, unless OK, what to do. The table goes to stdout (``--json``
for fleet tools); the exit code is 1 when anything FAILed, else 0. The API
key is never printed: only where it comes from and whether its file is safe.

Run it as root on the kiosk (``sudo voice-appliance doctor``) so it can read
the key file and judge what the service user may open. The checks:

software     the libraries the daemon imports, in usable versions
config       the configuration loads, has an agent id, the service can read it
user         the service user exists and is in the audio and gpio groups
credentials  the API key is where the unit looks, root-only, one line
audio        microphone and speaker open at 16 kHz (and the mixer control)
gpio         GPIO chips exist and the service user may open them
network      DNS, TCP and TLS to the agent host (and the token broker), then a
             signed URL is fetched, which proves key and agent id (--offline
             skips all of it)
service      the systemd unit's state, and why it stopped if it did
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import enum
import grp
import json
import os
import pwd
import shlex
import socket
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from device.app.settings import load_settings
from device.commands import soundcards
from device.commands.common import add_set_option, config_path
from device.core.config import ENV_PREFIX, Config
from device.core.errors import AudioError, ConfigError, CredentialError
from device.drivers.neterrors import NetFailure, classify, explain
from device.drivers.screen import summary as screen_summary
from device.drivers.secrets import (
    CREDENTIAL_NAME,
    ENV_VAR,
    PASTED_KEY_FILE,
    PASTED_KEY_FILE_FIX,
    UNIT_KEY_FILE,
    Secret,
    is_plainly_a_path,
    load_screen_token,
    parse_key,
    read_key_bytes,
    register_secret,
    unsuitable_key_file,
)
from device.drivers.userfiles import UnsuitableFile
from device.drivers.wake import hands_free_summary

UNIT = "voice-appliance.service"
SERVICE_USER = "voice-appliance"
# The example config's placeholder: a kiosk still carrying it cannot work.
EXAMPLE_AGENT_ID = "agent_0123456789abcdef"
CHECK_RATE_HZ = 16000


class Status(enum.Enum):
    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"
    SKIP = "SKIP"


@dataclass(frozen=True)
class Finding:
    """One line of the report: what was checked, how it went, what to do."""

    check: str
    status: Status
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


Runner = Callable[[Sequence[str], float, bytes | None], CommandResult]


def run_command(argv: Sequence[str], timeout_s: float, stdin: bytes | None = None) -> CommandResult:
    """Run a program without a shell; a missing program or a timeout is a result, not an exception."""
    try:
        proc = subprocess.run(
            list(argv), input=stdin, capture_output=True, timeout=timeout_s, check=False,
            stdin=None if stdin is not None else subprocess.DEVNULL,
        )
    except FileNotFoundError:
        return CommandResult(127, "", f"{argv[0]}: not found")
    except subprocess.TimeoutExpired:
        return CommandResult(124, "", f"{argv[0]}: no answer within {timeout_s:g} s")
    return CommandResult(
        proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")
    )


@dataclass
class Context:
    """What the checks look at; tests point the paths elsewhere."""

    config_path: Path
    overrides: Sequence[str] = ()
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    offline: bool = False
    unit: str = UNIT
    key_file: str | None = None  # None: the unit's LoadCredential= source, else UNIT_KEY_FILE
    dev_dir: Path = Path("/dev")
    systemd_dir: Path = Path("/run/systemd/system")
    euid: int = field(default_factory=os.geteuid)
    timeout_s: float = 5.0
    run: Runner = run_command
    audio_probe: AudioProbe | None = None
    asound_root: Path = Path("/")  # where /proc/asound and /etc/asound.conf are (device.commands.soundcards)
    alsa_conf_dirs: Sequence[Path] = (Path("/etc/alsa/conf.d"),)
    # Filled in as the checks run.
    cfg: Config | None = None
    key: Secret | None = None
    unit_props: dict[str, str] | None = None
    unit_text: str | None = None


# -- pure helpers -------------------------------------------------------------


def can_access(st_mode: int, st_uid: int, st_gid: int, uid: int, gids: Iterable[int], want: int) -> bool:
    """Whether a (non-root) uid with these groups gets ``want`` (os.R_OK|os.W_OK|os.X_OK) on a file."""
    if uid == 0:
        return True
    if st_uid == uid:
        bits = (st_mode >> 6) & 7
    elif st_gid in set(gids):
        bits = (st_mode >> 3) & 7
    else:
        bits = st_mode & 7
    return bits & want == want


def parse_show(text: str) -> dict[str, str]:
    """``systemctl show`` output (KEY=VALUE lines) as a dict."""
    props = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            props[key.strip()] = value.strip()
    return props


def credential_source(unit_text: str, name: str = CREDENTIAL_NAME) -> str | None:
    """The file LoadCredential= reads ``name`` from, in ``systemctl cat`` output (drop-ins last)."""
    source: str | None = None
    for raw in unit_text.splitlines():
        line = raw.strip()
        if not line.startswith("LoadCredential="):
            continue
        value = line.partition("=")[2].strip()
        if not value:
            source = None  # an empty assignment clears the list
            continue
        cred, _, path = value.partition(":")
        if cred == name:
            source = path or f"/etc/credstore/{name}"
    return source


_RESTART = "then: sudo systemctl restart {unit}"
_EXIT_MEANING = {
    "78": ("the configuration is invalid (exit 78)", "fix it (see the config line above), " + _RESTART),
    "77": ("the API key is missing or unsafe (exit 77)", "fix it (see the credentials line above), " + _RESTART),
    "74": ("an audio device could not be used (exit 74)", "see the audio lines above, " + _RESTART),
    "73": (
        "another voice-appliance daemon ran with this configuration (exit 73)",
        "stop that one (journalctl -u {unit} -b names its pid), " + _RESTART,
    ),
}


def interpret_service(props: Mapping[str, str], unit: str = UNIT) -> Finding:
    """Turn the unit's properties into one finding with what to do."""
    load = props.get("LoadState", "")
    active = props.get("ActiveState", "")
    sub = props.get("SubState", "")
    result = props.get("Result", "")
    status = props.get("ExecMainStatus", "")
    restarts = props.get("NRestarts", "0")
    status_text = props.get("StatusText", "")
    enabled = props.get("UnitFileState", "")
    journal = f"journalctl -u {unit} -b"
    if load == "not-found":
        return Finding(
            "service", Status.WARN, f"{unit} is not installed (fine on a development machine)",
            "on the kiosk: sudo provisioning/install.sh",
        )
    if load != "loaded":
        return Finding("service", Status.FAIL, f"{unit}: LoadState={load}", f"systemd-analyze verify {unit}; {journal}")
    if active == "active":
        text = f"active ({sub}), pid {props.get('MainPID', '?')}, restarts {restarts}"
        if status_text:
            text += f": {status_text}"
        if enabled not in ("enabled", "enabled-runtime", "static", "alias"):
            return Finding(
                "service", Status.WARN, f"{text}; not started at boot ({enabled})", f"sudo systemctl enable {unit}"
            )
        return Finding("service", Status.OK, text)
    if active in ("activating", "reloading"):
        if sub == "auto-restart":
            return Finding(
                "service", Status.WARN, f"restarting after a failure ({result}, restarts {restarts})", journal
            )
        return Finding(
            "service", Status.WARN, f"{active} ({sub})", f"wait a few seconds and run doctor again; {journal}"
        )
    if active == "failed":
        if result == "exit-code" and status in _EXIT_MEANING:
            why, fix = _EXIT_MEANING[status]
            return Finding("service", Status.FAIL, f"stopped: {why}; not restarted", fix.format(unit=unit))
        if result == "watchdog":
            return Finding(
                "service", Status.FAIL, "killed by the watchdog: a worker thread stopped responding",
                f"{journal} (the lines before 'Watchdog timeout'); sudo systemctl restart {unit}",
            )
        if result == "start-limit-hit":
            return Finding(
                "service", Status.FAIL, f"gave up after restarting too often ({restarts} restarts)",
                f"{journal}; fix the cause, then: sudo systemctl reset-failed {unit} && sudo systemctl start {unit}",
            )
        detail = f"failed ({result}" + (f", exit status {status}" if status and status != "0" else "") + ")"
        return Finding("service", Status.FAIL, detail, f"{journal}; then: sudo systemctl restart {unit}")
    # inactive
    if enabled in ("enabled", "enabled-runtime"):
        return Finding("service", Status.WARN, "not running (enabled, starts at boot)", f"sudo systemctl start {unit}")
    return Finding(
        "service", Status.WARN, f"not running and not enabled ({enabled or 'unknown'})",
        f"sudo systemctl enable --now {unit}",
    )


def render_table(findings: Sequence[Finding], color: bool = False) -> str:
    """The report as an aligned table; the fix goes on its own line under its finding."""
    colors = {Status.OK: "\033[32m", Status.WARN: "\033[33m", Status.FAIL: "\033[31;1m", Status.SKIP: "\033[2m"}
    check_w = max([len("CHECK"), *(len(f.check) for f in findings)])
    lines = [f"{'RESULT':<6}  {'CHECK':<{check_w}}  DETAIL"]
    for f in findings:
        word = f"{f.status.value:<6}"
        if color:
            word = f"{colors[f.status]}{word}\033[0m"
        lines.append(f"{word}  {f.check:<{check_w}}  {f.detail}")
        if f.fix:
            lines.append(f"{'':<6}  {'':<{check_w}}  → {f.fix}")
    fails = sum(f.status is Status.FAIL for f in findings)
    warns = sum(f.status is Status.WARN for f in findings)
    if fails:
        summary = f"{fails} problem(s) to fix, {warns} warning(s): fix the FAIL lines first."
    elif warns:
        summary = f"No problems; {warns} warning(s) worth a look."
    else:
        summary = "All checks passed."
    lines += ["", summary]
    return "\n".join(lines)


# -- software -------------------------------------------------------------------


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("."):
        digits = "".join(c for c in piece if c.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def check_software(ctx: Context, version: Callable[[str], str] = metadata.version) -> list[Finding]:
    def have(*names: str) -> str | None:
        for name in names:
            try:
                return version(name)
            except metadata.PackageNotFoundError:
                continue
        return None

    out: list[Finding] = []
    alsa = have("pyalsaaudio")
    if alsa is None:
        out.append(Finding(
            "software", Status.FAIL, "pyalsaaudio is not installed",
            "sudo provisioning/install.sh (builds it; needs libasound2-dev, python3-dev, gcc)",
        ))
    elif _version_tuple(alsa) < (0, 10):
        out.append(Finding(
            "software", Status.FAIL,
            f"pyalsaaudio {alsa} is too old (Debian's python3-alsaaudio?): no drop(), so a flush could not be instant",
            "sudo provisioning/install.sh (installs pyalsaaudio >= 0.10 into the venv)",
        ))
    missing = [
        label for label, names in (
            ("websocket-client", ("websocket-client",)),
            ("requests", ("requests",)),
            ("gpiozero", ("gpiozero",)),
            ("webrtcvad", ("webrtcvad-wheels", "webrtcvad")),
        ) if have(*names) is None
    ]
    if missing:
        out.append(Finding(
            "software", Status.FAIL, f"missing: {', '.join(missing)}", "sudo provisioning/install.sh",
        ))
    if have("systemd-python") is None:
        out.append(Finding(
            "software", Status.WARN, "systemd-python is missing: logs go to stderr, not the journal's fields",
            "sudo apt-get install python3-systemd (the venv sees Debian's packages)",
        ))
    if not out:
        versions = ", ".join(
            f"{name} {have(name)}" for name in ("pyalsaaudio", "gpiozero", "websocket-client", "requests")
        )
        out.append(Finding("software", Status.OK, f"python {sys.version.split()[0]}, {versions}"))
    return out


# -- config and user ------------------------------------------------------------


def _service_account() -> tuple[int, list[int]] | None:
    try:
        pw = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return None
    gids = [pw.pw_gid] + [g.gr_gid for g in grp.getgrall() if SERVICE_USER in g.gr_mem]
    return pw.pw_uid, gids


def check_config(ctx: Context) -> list[Finding]:
    path = ctx.config_path
    try:
        cfg = load_settings(path, environ=ctx.environ, overrides=list(ctx.overrides)).require_agent()
    except ConfigError as e:
        return [Finding(
            "config", Status.FAIL, str(e),
            f"edit {path}, then check it with: voice-appliance run --check --config {path}",
        )]
    ctx.cfg = cfg
    a = cfg.agent
    detail = f"{path}: agent {a.agent_id}, connection {a.connection}, gate {cfg.gate.mode}"
    detail += "; " + hands_free_summary(cfg)
    out: list[Finding] = []
    if a.agent_id == EXAMPLE_AGENT_ID:
        out.append(Finding(
            "config", Status.WARN, f"{path}: agent_id is still the example's placeholder",
            f"set agent_id in [agent] of {path} (ElevenLabs dashboard → Agents)",
        ))
    account = _service_account()
    if account is not None and ctx.euid == 0:
        st = path.stat()
        if not can_access(st.st_mode, st.st_uid, st.st_gid, account[0], account[1], os.R_OK):
            out.append(Finding(
                "config", Status.FAIL, f"{path}: the service user {SERVICE_USER} cannot read it",
                f"sudo chgrp {SERVICE_USER} {path} && sudo chmod 640 {path}",
            ))
    return (out or [Finding("config", Status.OK, detail)]) + _screen_findings(ctx, cfg)


def _screen_findings(ctx: Context, cfg: Config) -> list[Finding]:
    """One line when the screen is on: where it is served, and whether its token can be read."""
    if not cfg.screen.enabled:
        return []
    try:
        load_screen_token(cfg.screen.token_file, ctx.environ)
    except CredentialError as e:
        return [Finding("config", Status.FAIL, str(e), "fix screen.token_file (docs/screen.md)")]
    return [Finding("config", Status.OK, screen_summary(cfg.screen))]


def check_user(ctx: Context) -> list[Finding]:
    try:
        pw = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return [Finding(
            "user", Status.WARN, f"no user {SERVICE_USER} (fine on a development machine)",
            "on the kiosk: sudo provisioning/install.sh",
        )]
    groups = {g.gr_name for g in grp.getgrall() if SERVICE_USER in g.gr_mem}
    missing = [g for g in ("audio", "gpio") if g not in groups]
    if missing:
        return [Finding(
            "user", Status.FAIL, f"{SERVICE_USER} is not in group(s) {', '.join(missing)}",
            f"sudo usermod -aG {','.join(missing)} {SERVICE_USER} && sudo systemctl restart voice-appliance",
        )]
    return [Finding("user", Status.OK, f"{SERVICE_USER} (uid {pw.pw_uid}) in audio, gpio")]


# -- credentials ------------------------------------------------------------------


def _unit_text(ctx: Context) -> str:
    if ctx.unit_text is None:
        ctx.unit_text = ""
        if ctx.systemd_dir.is_dir():
            res = ctx.run(["systemctl", "cat", "--no-pager", ctx.unit], ctx.timeout_s, None)
            if res.returncode == 0:
                ctx.unit_text = res.stdout
    return ctx.unit_text


def _key_file_findings(path: Path, what: str, ctx: Context, owner_uid: int) -> tuple[list[Finding], Secret | None]:
    """Judge a key file: present, owner-only, owned by whoever must read it, one word."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return [], None
    mode = stat.filemode(st.st_mode)
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        return [Finding(
            "credentials", Status.FAIL, f"{what} {path} is readable by others ({mode})",
            f"sudo chmod 600 {path}",
        )], None
    out: list[Finding] = []
    if st.st_uid != owner_uid:
        owner = "root" if owner_uid == 0 else SERVICE_USER
        out.append(Finding(
            "credentials", Status.WARN, f"{what} {path} is owned by uid {st.st_uid}, not {owner}",
            f"sudo chown {owner}: {path}",
        ))
    try:
        raw = read_key_bytes(path)
    except PermissionError:
        out.append(Finding(
            "credentials", Status.WARN, f"{what} {path} exists ({mode}) but I may not read it",
            "run as root to check its content: sudo voice-appliance doctor",
        ))
        return out, None
    except UnsuitableFile as e:
        out.append(Finding(
            "credentials", Status.FAIL, str(unsuitable_key_file(path, what, e)),
            f"replace it with a plain file: sudo rm {path} && sudo install -m 600 /dev/null {path} && sudoedit {path}",
        ))
        return out, None
    except OSError as e:
        out.append(Finding("credentials", Status.FAIL, f"{what} {path}: cannot read it: {e}", f"rewrite {path}"))
        return out, None
    if not raw.strip():
        # What the daemon does with it (device/drivers/secrets.py): a blank credential is no key at all.
        out.append(Finding(
            "credentials", Status.FAIL,
            f"{what} {path} is blank, which the service reads as no API key; "
            "connection = signed_url needs the key in it, alone on one line",
            f"sudoedit {path}",
        ))
        return out, None
    try:
        text = parse_key(raw, path, what)  # the daemon's own judgement of the content
    except CredentialError as e:
        out.append(Finding("credentials", Status.FAIL, str(e), f"sudoedit {path}"))
        return out, None
    register_secret(text)
    out.append(Finding("credentials", Status.OK, f"{what} {path}: one key, {mode}, owner uid {st.st_uid}"))
    return out, Secret(text, f"file {path}")


def _blank(path: Path) -> bool:
    """True when ``path`` is missing or holds only whitespace (unreadable counts as not blank: judged later)."""
    try:
        return not read_key_bytes(path).strip()
    except FileNotFoundError:
        return True
    except OSError:
        return False


def check_credentials(ctx: Context) -> list[Finding]:
    cfg = ctx.cfg
    if cfg is None:
        return [Finding("credentials", Status.SKIP, "needs a valid config")]
    unit_text = _unit_text(ctx)
    unit_source = ctx.key_file if ctx.key_file is not None else (
        credential_source(unit_text) if unit_text else UNIT_KEY_FILE
    )
    connection = cfg.agent.connection
    if connection != "signed_url":
        stored = [p for p in (unit_source, cfg.agent.api_key_file) if p and Path(p).exists()]
        if stored:
            return [Finding(
                "credentials", Status.WARN,
                f"connection = {connection} needs no API key, but one is stored in {', '.join(stored)}",
                f"remove it so a stolen SD card holds no key: sudo shred -u {' '.join(stored)}",
            )]
        return [Finding("credentials", Status.OK, f"no API key needed (connection = {connection})")]

    cred_dir = ctx.environ.get("CREDENTIALS_DIRECTORY")
    # A blank credential is the unit's SetCredential= fallback: the daemon looks further, and so do we.
    if cred_dir and not _blank(Path(cred_dir) / CREDENTIAL_NAME):
        found, key = _key_file_findings(Path(cred_dir) / CREDENTIAL_NAME, "systemd credential", ctx, ctx.euid)
        ctx.key = key
        return found
    if unit_source:
        found, key = _key_file_findings(Path(unit_source), "key file (LoadCredential=)", ctx, 0)
        if found:
            ctx.key = key
            return found
    if cfg.agent.api_key_file:
        account = _service_account()
        owner = account[0] if account else ctx.euid
        path = Path(cfg.agent.api_key_file)
        try:
            found, key = _key_file_findings(path, "agent.api_key_file", ctx, owner)
        except (OSError, ValueError):  # e.g. a name too long for a file: a key pasted as the path
            found, key = [], None
        if found:
            ctx.key = key
            return found
        if not is_plainly_a_path(cfg.agent.api_key_file):
            return [Finding("credentials", Status.FAIL, PASTED_KEY_FILE, PASTED_KEY_FILE_FIX)]
        return [Finding(
            "credentials", Status.FAIL, f"agent.api_key_file {path} does not exist",
            f"sudo install -m 600 -o {SERVICE_USER} /dev/null {path} && sudoedit {path}",
        )]
    if ctx.environ.get(ENV_VAR):
        ctx.key = Secret(ctx.environ[ENV_VAR].strip(), f"environment {ENV_VAR}")
        return [Finding(
            "credentials", Status.WARN, f"API key from ${ENV_VAR}: development only, the service does not see it",
            f"install it for the service: sudo install -m 600 /dev/stdin {unit_source or UNIT_KEY_FILE}",
        )]
    target = unit_source or UNIT_KEY_FILE
    return [Finding(
        "credentials", Status.FAIL, f"no API key (connection = signed_url reads it from {target})",
        f"sudo install -m 600 /dev/null {target} && sudoedit {target}   "
        "(or connection = \"broker\" so no key lives on the device)",
    )]


# -- audio ------------------------------------------------------------------------


class AudioProbe:
    """Opens a device at the kiosk's format and closes it again; raises AudioError."""

    name = "?"

    def capture(self, device: str, channels: int) -> None:
        raise NotImplementedError

    def playback(self, device: str) -> None:
        raise NotImplementedError

    def mixer(self, card: str, control: str) -> None:
        raise NotImplementedError

    def devices(self, capture: bool) -> list[str]:
        raise NotImplementedError


@contextlib.contextmanager
def _alsa_lib_quiet() -> Iterator[None]:
    """alsa-lib prints its own error lines on fd 2; the finding already says it better."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class AlsaHelperProbe(AudioProbe):
    """Through the audio engine's own ALSA module: exactly what the daemon opens."""

    name = "pyalsaaudio"

    def __init__(self) -> None:
        from device.drivers import alsa  # imports alsaaudio; only when audio is checked

        self._alsa = alsa

    def capture(self, device: str, channels: int) -> None:
        with _alsa_lib_quiet():
            self._alsa.AlsaBackend().open_capture(device, CHECK_RATE_HZ, channels, 4000, 4).close()

    def playback(self, device: str) -> None:
        with _alsa_lib_quiet():
            self._alsa.AlsaBackend().open_playback(device, CHECK_RATE_HZ, 1000, 4).close()

    def mixer(self, card: str, control: str) -> None:
        with _alsa_lib_quiet():
            self._alsa.AlsaBackend().open_mixer(card, control).close()

    def devices(self, capture: bool) -> list[str]:
        with _alsa_lib_quiet():
            return list(self._alsa.list_devices(capture))


class AlsaUtilsProbe(AudioProbe):
    """Through arecord/aplay/amixer (alsa-utils): works without pyalsaaudio."""

    name = "alsa-utils"

    def __init__(self, run: Runner = run_command, timeout_s: float = 5.0) -> None:
        self._run = run
        self._timeout_s = timeout_s

    def _judge(self, role: str, device: str, res: CommandResult, channels: int) -> None:
        err = res.stderr.strip()
        if res.returncode == 127:
            raise AudioError("alsa-utils is not installed: sudo apt-get install alsa-utils")
        if res.returncode != 0:
            raise AudioError(f"{role} {device!r}: {err.splitlines()[-1] if err else f'exit {res.returncode}'}")
        if "rate is not accurate" in err or "rate doesn't match" in err.lower():
            raise AudioError(
                f"{role} {device!r} does not take {CHECK_RATE_HZ} Hz with {channels} channel(s); use a "
                "'plughw:CARD=…,DEV=0' or 'default' device so ALSA converts"
            )

    def capture(self, device: str, channels: int) -> None:
        argv = ["arecord", "-q", "-D", device, "-f", "S16_LE", "-r", str(CHECK_RATE_HZ), "-c", str(channels),
                "-t", "raw", "-s", str(CHECK_RATE_HZ // 10), "/dev/null"]
        self._judge("microphone", device, self._run(argv, self._timeout_s, None), channels)

    def playback(self, device: str) -> None:
        frames = CHECK_RATE_HZ // 20  # 50 ms of silence
        argv = ["aplay", "-q", "-D", device, "-f", "S16_LE", "-r", str(CHECK_RATE_HZ), "-c", "1", "-t", "raw", "-"]
        self._judge("speaker", device, self._run(argv, self._timeout_s, bytes(2 * frames)), 1)

    def mixer(self, card: str, control: str) -> None:
        res = self._run(["amixer", "-D", card, "sget", control], self._timeout_s, None)
        if res.returncode != 0:
            raise AudioError(
                f"mixer control {control!r} on {card!r}: {res.stderr.strip() or 'not found'}; list the controls "
                f"with `amixer -D {card} scontrols` and set audio.mixer_control (empty: software volume)"
            )

    def devices(self, capture: bool) -> list[str]:
        res = self._run(["arecord" if capture else "aplay", "-L"], self._timeout_s, None)
        return [line for line in res.stdout.splitlines() if line and not line[0].isspace()]


def default_audio_probe(ctx: Context) -> AudioProbe:
    try:
        return AlsaHelperProbe()
    except ImportError:
        return AlsaUtilsProbe(ctx.run, ctx.timeout_s)


def _service_active(ctx: Context) -> bool:
    props = _unit_props(ctx)
    return bool(props) and props.get("ActiveState") == "active"


# ALSA configuration snippets that make `default` a desktop sound server (Raspberry Pi OS Desktop:
# pipewire-alsa; Debian with pulseaudio: the pulse hook, active whenever a server answers).
SOUND_SERVER_CONFS = {
    "99-pipewire-default.conf": "PipeWire",
    "99-pulse.conf": "PulseAudio",
    "99-pulseaudio-default.conf": "PulseAudio",
}
SOUND_SERVER_DEVICES = {"pulse": "PulseAudio", "pipewire": "PipeWire"}


def sound_server_routes(devices: Iterable[str], conf_dirs: Iterable[Path]) -> list[tuple[str, str, str]]:
    """(device, server, why) for each configured device that goes to a sound server."""
    found = [(name, server) for d in conf_dirs for name, server in SOUND_SERVER_CONFS.items() if (d / name).exists()]
    out = []
    for device in dict.fromkeys(devices):
        base = device.split(":", 1)[0]
        if base in SOUND_SERVER_DEVICES:
            out.append((device, SOUND_SERVER_DEVICES[base], f"{device!r} is ALSA's {base} plugin"))
        elif base == "default" and found:
            conf_dir = next(d for d in conf_dirs if (d / found[0][0]).exists())
            out.append((device, found[0][1], f"ALSA 'default' routes to it ({conf_dir / found[0][0]})"))
    return out


def _sound_server_findings(ctx: Context, devices: Sequence[str]) -> list[Finding]:
    out = []
    for device, server, why in sound_server_routes(devices, ctx.alsa_conf_dirs):
        out.append(Finding(
            "audio", Status.WARN,
            f"{device!r} goes to {server}: {why}. {server} belongs to the logged-in desktop user's session; "
            "the service user cannot reach it (no session at boot), and a desktop (e.g. a Chromium kiosk "
            "screen) shares or holds the device",
            "name the card itself: audio.capture_device / audio.playback_device = 'plughw:CARD=<id>,DEV=0' "
            "(`arecord -l`), or the dsnoop/dmix devices of provisioning/asound/ so the desktop can share it",
        ))
    return out


def check_audio(ctx: Context) -> list[Finding]:
    cfg = ctx.cfg
    if cfg is None:
        return [Finding("audio", Status.SKIP, "needs a valid config")]
    probe = ctx.audio_probe or default_audio_probe(ctx)
    out: list[Finding] = []
    a = cfg.audio
    jobs: list[tuple[str, str, Callable[[], None], bool]] = [
        ("microphone", a.capture_device, lambda: probe.capture(a.capture_device, a.capture_channels), True),
        ("speaker", a.playback_device, lambda: probe.playback(a.playback_device), False),
    ]
    for role, device, job, capture in jobs:
        try:
            job()
        except AudioError as e:
            text = str(e)
            if "busy" in text.lower() and _service_active(ctx):
                out.append(Finding(
                    "audio", Status.WARN, f"{role} {device!r} is in use by the running service",
                    "for a full check: sudo systemctl stop voice-appliance; voice-appliance doctor; "
                    "sudo systemctl start voice-appliance (or use a dsnoop/dmix device, see provisioning/asound/)",
                ))
                continue
            try:
                known = probe.devices(capture)
            except AudioError:
                known = []
            key = "audio.capture_device" if capture else "audio.playback_device"
            listed = ", ".join(known[:8]) + (" …" if len(known) > 8 else "")
            out.append(Finding(
                "audio", Status.FAIL, text,
                f"set {key}" + (f"; ALSA knows: {listed}" if listed else "")
                + f" (`{'arecord' if capture else 'aplay'} -L`)" + soundcards.proposal_hint(ctx.asound_root),
            ))
            continue
        channels = f", {a.capture_channels} ch" if capture else ""
        out.append(Finding(
            "audio", Status.OK, f"{role} {device!r} opens at {CHECK_RATE_HZ} Hz{channels} ({probe.name})"
        ))
    out += _sound_server_findings(ctx, [a.capture_device, a.playback_device])
    from device.drivers import aec

    duplex = aec.describe(a.echo_cancellation, cfg.gate.barge_in)
    half = a.echo_cancellation == "auto" and cfg.gate.barge_in == "voice" and aec.available() is not None
    # its own line: no sound card here says nothing about whether the kiosk could be full duplex
    out.append(Finding("duplex", Status.WARN if half else Status.OK, f"echo cancellation: {duplex}",
                       "install.sh --extras aec (64-bit Raspberry Pi OS)" if half else ""))
    if a.mixer_control:
        try:
            probe.mixer(a.mixer_card, a.mixer_control)
        except AudioError as e:
            out.append(Finding("audio", Status.FAIL, str(e), "fix audio.mixer_control / audio.mixer_card"))
        else:
            out.append(Finding("audio", Status.OK, f"mixer control {a.mixer_control!r} on {a.mixer_card!r}"))
    return out


# -- gpio -------------------------------------------------------------------------


_UDEV_RULE = (
    "echo 'SUBSYSTEM==\"gpio\", KERNEL==\"gpiochip*\", GROUP=\"gpio\", MODE=\"0660\"' | "
    "sudo tee /etc/udev/rules.d/60-voice-appliance-gpio.rules && sudo udevadm trigger"
)


def check_gpio(ctx: Context) -> list[Finding]:
    cfg = ctx.cfg
    if cfg is None:
        return [Finding("gpio", Status.SKIP, "needs a valid config")]
    b = cfg.button
    needed = b.pin is not None or b.mute_pin is not None or cfg.leds.preset != "none"
    if not needed:
        return [Finding("gpio", Status.OK, "not used (no button, no mute switch, leds.preset = none)")]
    factory = ctx.environ.get("GPIOZERO_PIN_FACTORY", "")
    if factory == "mock":
        return [Finding(
            "gpio", Status.WARN, "GPIOZERO_PIN_FACTORY=mock: the physical button and LEDs are ignored",
            "unset GPIOZERO_PIN_FACTORY on the kiosk",
        )]
    chips = sorted(ctx.dev_dir.glob("gpiochip*")) + sorted(ctx.dev_dir.glob("gpiomem*"))
    if not chips:
        return [Finding(
            "gpio", Status.WARN,
            f"no {ctx.dev_dir}/gpiochip* (not a Raspberry Pi?): the button and LEDs will not work; "
            "the kiosk still runs",
            "on a Pi: check the kernel (ls /dev/gpiochip*); elsewhere drive it with `voice-appliance ctl press`",
        )]
    account = _service_account()
    names = ", ".join(p.name for p in chips)
    if account is None:
        return [Finding("gpio", Status.OK, f"{names} (no service user to check access for)")]
    uid, gids = account
    denied = []
    for path in chips:
        st = path.stat()
        if not can_access(st.st_mode, st.st_uid, st.st_gid, uid, gids, os.R_OK | os.W_OK):
            try:
                group = grp.getgrgid(st.st_gid).gr_name
            except KeyError:
                group = str(st.st_gid)
            denied.append(f"{path.name} ({group}, {stat.filemode(st.st_mode)})")
    if denied:
        return [Finding(
            "gpio", Status.FAIL, f"{SERVICE_USER} may not open {', '.join(denied)}",
            f"Raspberry Pi OS gives these to group gpio; elsewhere add a udev rule: {_UDEV_RULE}",
        )]
    return [Finding("gpio", Status.OK, f"{names}: read/write for {SERVICE_USER}")]


# -- network ----------------------------------------------------------------------


def _targets(cfg: Config) -> list[tuple[str, str]]:
    from device.drivers.agent_http import endpoints_for

    out = []
    if cfg.agent.connection == "broker":
        out.append(("token broker", cfg.agent.broker_url))
    out.append(("agent host", endpoints_for(cfg.agent).rest_base))
    return out


# Doctor's own timeout covers connecting and the TLS handshake: a silent peer is a connect timeout.
_DOCTOR_FAILURES: Mapping[type[BaseException], NetFailure] = {TimeoutError: NetFailure.CONNECT_TIMEOUT}


def _how_to_look(kind: NetFailure, port: int) -> str:
    """Where to look on the kiosk itself, after the advice the daemon's log line gives."""
    if kind is NetFailure.DNS:
        return "ping -c1 1.1.1.1; resolvectl status (or /etc/resolv.conf)"
    if kind is NetFailure.TLS:
        return "timedatectl shows the clock: a Pi has no battery clock, systemd-timesyncd must reach an NTP server"
    return f"is outgoing port {port} open? a firewall or a proxy (HTTPS_PROXY) may block it"


def _unreachable(label: str, host: str, port: int, e: BaseException, timeout_s: float) -> Finding:
    """A failed DNS lookup, connection or TLS handshake, worded as the daemon's log says it (neterrors)."""
    kind = classify(e, _DOCTOR_FAILURES) or NetFailure.FAILED
    failed, advice = explain(kind, e, host=f"{host}:{port}", what="connecting", timeout_s=timeout_s,
                             timeout_key="doctor's timeout")
    said = getattr(e, "verify_message", None) if kind is NetFailure.TLS else None
    detail = f"{label}: {failed}" + (f" ({said})" if said and said not in failed else "")
    return Finding("network", Status.FAIL, detail, f"{advice}: {_how_to_look(kind, port)}")


def _reach(label: str, url: str, ca_bundle: str, timeout_s: float) -> Finding:
    parts = urlsplit(url)
    host = parts.hostname or ""
    secure = parts.scheme in ("https", "wss")
    port = parts.port or (443 if secure else 80)
    where = f"{label} {host}:{port}"
    t0 = time.monotonic()
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        return _unreachable(label, host, port, e, timeout_s)
    t_dns = time.monotonic()
    sock: socket.socket | None = None
    error: OSError = TimeoutError("no address to connect to")
    for family, kind, proto, _name, addr in infos:
        try:
            sock = socket.socket(family, kind, proto)
            sock.settimeout(timeout_s)
            sock.connect(addr)
            break
        except OSError as e:
            error = e
            if sock is not None:
                sock.close()
            sock = None
    if sock is None:
        return _unreachable(label, host, port, error, timeout_s)
    t_tcp = time.monotonic()
    timings = f"DNS {1000 * (t_dns - t0):.0f} ms, TCP {1000 * (t_tcp - t_dns):.0f} ms"
    try:
        if secure:
            try:
                if ca_bundle:
                    from device.drivers.agent_http import check_ca_bundle

                    check_ca_bundle(ca_bundle)  # not a FIFO: ssl's open() of one would hang doctor
                context = ssl.create_default_context(cafile=ca_bundle or None)
            except OSError as e:
                return Finding(
                    "network", Status.FAIL, f"agent.ca_bundle {ca_bundle}: {e.strerror}", "fix agent.ca_bundle"
                )
            try:
                with context.wrap_socket(sock, server_hostname=host) as tls:
                    version = tls.version()
            except OSError as e:  # ssl.SSLError is an OSError
                return _unreachable(label, host, port, e, timeout_s)
            timings += f", TLS {1000 * (time.monotonic() - t_tcp):.0f} ms ({version})"
    finally:
        sock.close()
    return Finding("network", Status.OK, f"{where}: {timings}")


def check_network(ctx: Context) -> list[Finding]:
    cfg = ctx.cfg
    if cfg is None:
        return [Finding("network", Status.SKIP, "needs a valid config")]
    if ctx.offline:
        return [Finding("network", Status.SKIP, "--offline")]
    proxy = ctx.environ.get("HTTPS_PROXY") or ctx.environ.get("https_proxy")
    out = []
    for label, url in _targets(cfg):
        if proxy and urlsplit(url).scheme == "https":
            out.append(Finding("network", Status.SKIP, f"{label}: through the proxy {urlsplit(proxy).netloc}"))
            continue
        out.append(_reach(label, url, cfg.agent.ca_bundle, ctx.timeout_s))
    if any(f.status is Status.FAIL for f in out):
        return out
    out.append(_check_agent(ctx, cfg))
    return out


def _check_agent(ctx: Context, cfg: Config) -> Finding:
    """Fetch one signed URL: proves the key, the agent id and the region together."""
    from device.drivers.agent_http import AgentHttp, AgentHttpError

    if cfg.agent.connection == "public":
        return Finding("network", Status.OK, "public agent: nothing to fetch before a conversation")
    if cfg.agent.connection == "signed_url" and ctx.key is None:
        return Finding("network", Status.SKIP, "no API key to fetch a signed URL with (see credentials)")
    with AgentHttp(cfg.agent, ctx.key, attempts=1) as http:
        try:
            http.fetch_signed_url()
        except AgentHttpError as e:
            return Finding("network", Status.FAIL, f"agent {cfg.agent.agent_id}: {e.detail}", e.outcome.advice)
    source = "the token broker" if cfg.agent.connection == "broker" else "key and agent id accepted"
    return Finding("network", Status.OK, f"agent {cfg.agent.agent_id}: signed URL issued ({source})")


def check_mqtt(ctx: Context) -> list[Finding]:
    """The fleet channel's settings, the password file, and whether the broker takes the kiosk (one line each)."""
    cfg = ctx.cfg
    if cfg is None:
        return [Finding("mqtt", Status.SKIP, "needs a valid config")]
    if not cfg.mqtt.enabled:
        return [Finding("mqtt", Status.OK, "off (mqtt.enabled = false)")]
    from device.drivers.mqtt import check_lines

    levels = {"ok": Status.OK, "warn": Status.WARN, "fail": Status.FAIL, "skip": Status.SKIP}
    fix = "check [mqtt] in the configuration and the broker (docs/fleet.md)"
    out = []
    for level, text in check_lines(cfg.mqtt, ctx.timeout_s, reach=not ctx.offline):
        status = levels[level]
        out.append(Finding("mqtt", status, text.removeprefix("mqtt: "), fix if status is Status.FAIL else ""))
    if ctx.offline:
        out.append(Finding("mqtt", Status.SKIP, "broker not tried (--offline)"))
    return out


# -- service ----------------------------------------------------------------------

_SHOW_PROPS = (
    "LoadState", "UnitFileState", "ActiveState", "SubState", "Result", "ExecMainStatus",
    "NRestarts", "MainPID", "StatusText",
)


def _unit_props(ctx: Context) -> dict[str, str]:
    if ctx.unit_props is None:
        ctx.unit_props = {}
        if ctx.systemd_dir.is_dir():
            res = ctx.run(["systemctl", "show", ctx.unit, "-p", ",".join(_SHOW_PROPS)], ctx.timeout_s, None)
            if res.returncode == 0:
                ctx.unit_props = parse_show(res.stdout)
    return ctx.unit_props


def check_service(ctx: Context) -> list[Finding]:
    if not ctx.systemd_dir.is_dir():
        return [Finding("service", Status.SKIP, "systemd is not running here")]
    props = _unit_props(ctx)
    if not props:
        return [Finding("service", Status.WARN, f"systemctl show {ctx.unit} failed", "is systemd running?")]
    return [interpret_service(props, ctx.unit)]


# -- running it -------------------------------------------------------------------

CHECKS: dict[str, Callable[[Context], list[Finding]]] = {
    "software": check_software,
    "config": check_config,
    "user": check_user,
    "credentials": check_credentials,
    "audio": check_audio,
    "gpio": check_gpio,
    "network": check_network,
    "mqtt": check_mqtt,
    "service": check_service,
}


# Checks that read what another one found (the config; the key for the signed URL).
_NEEDS = {"credentials": {"config"}, "audio": {"config"}, "gpio": {"config"}, "network": {"config", "credentials"},
          "mqtt": {"config"}}


def run_checks(ctx: Context, only: Sequence[str] = ()) -> list[Finding]:
    """Run the checks in order; a crash is a FAIL line, not a traceback.

    With ``only``, the checks they depend on run too, but only the asked-for
    ones are reported.
    """
    wanted = set(only) if only else set(CHECKS)
    needed = set(wanted)
    for name in wanted:
        needed |= _NEEDS.get(name, set())
    findings: list[Finding] = []
    for name in CHECKS:
        if name not in needed:
            continue
        try:
            result = CHECKS[name](ctx)
        except Exception as e:  # a check must never hide the others
            result = [Finding(name, Status.FAIL, f"the check itself failed: {type(e).__name__}: {e}",
                              "run with --log-level debug and report it")]
        if name in wanted:
            findings.extend(result)
    return findings


def findings_to_json(findings: Sequence[Finding]) -> str:
    rows: list[dict[str, Any]] = []
    for f in findings:
        row = dataclasses.asdict(f)
        row["status"] = f.status.value
        rows.append(row)
    return json.dumps(rows, indent=2)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_set_option(parser)
    parser.add_argument("--offline", action="store_true", help="skip the network checks (DNS, TLS, signed URL)")
    parser.add_argument(
        "--only", metavar="CHECK[,CHECK]", default="",
        help=f"run only these checks: {', '.join(CHECKS)}",
    )
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")
    parser.add_argument("--unit", default=UNIT, help=f"systemd unit to inspect (default: {UNIT})")
    parser.add_argument(
        "--no-unit-env", action="store_true",
        help="ignore the unit's Environment= (by default the checks see what the service sees)",
    )
    parser.add_argument(
        "--key-file", default=None, metavar="PATH",
        help="where the unit's key lives (default: read from the unit's LoadCredential=, else "
        f"{UNIT_KEY_FILE})",
    )


# What the service's environment may set that changes what the checks should see.
_UNIT_ENV_KEYS = ("ALSA_CONFIG_PATH", "GPIOZERO_PIN_FACTORY", "LG_WD")


def unit_environment(ctx: Context) -> dict[str, str]:
    """The unit's Environment= (drop-ins included) that matters here: config overrides, ALSA, pins."""
    if not ctx.systemd_dir.is_dir():
        return {}
    res = ctx.run(["systemctl", "show", ctx.unit, "-p", "Environment", "--value"], ctx.timeout_s, None)
    if res.returncode != 0:
        return {}
    try:
        words = shlex.split(res.stdout)
    except ValueError:
        return {}
    env = {}
    for word in words:
        key, sep, value = word.partition("=")
        if sep and (key.startswith(ENV_PREFIX) or key in _UNIT_ENV_KEYS):
            env[key] = value
    return env


def run(args: argparse.Namespace) -> int:
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in only if name not in CHECKS]
    if unknown:
        raise ConfigError(f"--only: unknown check(s) {', '.join(unknown)}; choose from {', '.join(CHECKS)}")
    ctx = Context(
        config_path=config_path(args),
        overrides=list(getattr(args, "overrides", [])),
        offline=args.offline,
        unit=args.unit,
        key_file=args.key_file,
    )
    # Judge what the service will see: its Environment= (e.g. a drop-in's config path or
    # overrides, ALSA_CONFIG_PATH) wins over this shell's, unless asked not to.
    unit_env = {} if args.no_unit_env else unit_environment(ctx)
    if unit_env:
        ctx.environ = {**ctx.environ, **unit_env}
        for key in _UNIT_ENV_KEYS:  # ALSA and gpiozero read these from the process environment
            if key in unit_env:
                os.environ[key] = unit_env[key]
        if args.config is None and "VOICE_APPLIANCE_CONFIG" in unit_env:
            ctx.config_path = Path(unit_env["VOICE_APPLIANCE_CONFIG"])
    findings = run_checks(ctx, only)
    if args.json:
        print(findings_to_json(findings))
    else:
        color = sys.stdout.isatty() and "NO_COLOR" not in os.environ
        print(f"voice-appliance doctor — config {ctx.config_path}")
        if unit_env:
            print(f"with the environment of {ctx.unit}: {', '.join(sorted(unit_env))}")
        print()
        print(render_table(findings, color=color))
    return 1 if any(f.status is Status.FAIL for f in findings) else 0
