"""Shared pieces of the daemon's end-to-end tests (no tests here).

A :class:`Rig` runs the real daemon in this process: real ALSA through
``type file`` devices (a microphone reading a prepared raw file in real time,
a speaker writing into a raw file), gpiozero's MockFactory pins (the button
pressed with ``drive_low()``), the real session against the emulator. The
input file is a script: speech at known places; the tests press the button
when the capture reaches them (synchronised on the daemon's telemetry).
"""

from __future__ import annotations

import grp
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from device.app.daemon import Daemon, Loader, serve
from device.app.telemetry import Telemetry
from device.core.config import AgentConfig, AudioConfig, ButtonConfig, Config, GateConfig, SessionConfig, SystemdConfig
from device.drivers import filedevices
from device.drivers.gpio import mock_factory
from device.drivers.notify import Notifier
from device.drivers.secrets import Secret
from device.emulator.scenario import Scenario, Turn, default_scenario
from device.emulator.server import Emulator
from device.emulator.speech import speechlike_pcm
from tests.support import Collector

RATE_HZ = 16000
BLOCK_FRAMES = 4000
BLOCK_BYTES = BLOCK_FRAMES * 2
BLOCK_S = BLOCK_FRAMES / RATE_HZ
CHUNK_FRAMES = 1000  # one playback chunk at 16 kHz (62.5 ms)
WAIT_S = 30.0  # every wait is bounded; generous because the machine is shared
ROOT = Path(__file__).resolve().parents[2]
BUTTON_PIN = 17
MUTE_PIN = 27
RED, GREEN, BLUE = 5, 6, 13  # the rgb preset's pins


def speech(text: str) -> bytes:
    """Deterministic speech-like S16LE mono 16 kHz that webrtcvad hears as speech."""
    return speechlike_pcm(text, RATE_HZ)


def silence(seconds: float) -> bytes:
    return bytes(2 * int(seconds * RATE_HZ))


def fast_scenario(*turns: Turn, **changes: Any) -> Scenario:
    """Short replies sent fast, quick turn-taking, no re-prompts."""
    base = default_scenario().with_changes(
        agent={"first_message": "", "words_per_minute": 300},
        timing={
            "speed": 20.0,
            "response_delay_ms": 50,
            "end_of_turn_silence_ms": 400,
            "turn_timeout_s": 0.0,
            "ping_interval_s": 1.0,
        },
        turns=turns or (Turn(transcript="What can you do?", reply="I can help."),),
    )
    return base.with_changes(**changes) if changes else base


class Recorder(Collector[Telemetry]):
    """Telemetry collected in order."""

    def of(self, kind: str) -> list[Telemetry]:
        return self.matching(lambda r: r.kind == kind)

    def wait(
        self, kind: str, pred: Callable[[Telemetry], bool] = lambda r: True, timeout_s: float = WAIT_S, after: int = 0
    ) -> Telemetry:
        """The first record of ``kind`` (from index ``after``) matching ``pred``."""

        def what() -> str:
            states = [r.data.get("state") for r in self.items if r.kind == "state"]
            return f"no {kind} telemetry within {timeout_s:g} s (states so far: {states})"

        return self.wait_first(lambda r: r.kind == kind and pred(r), timeout_s, after, what)

    def mark(self) -> int:
        return len(self)

    def states(self) -> list[str]:
        return [str(r.data["state"]) for r in self.of("state")]


class Rig:
    """The daemon on file devices and mock pins, talking to the emulator."""

    def __init__(
        self,
        tmp: Path,
        input_pcm: bytes,
        scenario: Scenario | None = None,
        *,
        gate: GateConfig | None = None,
        session: SessionConfig | None = None,
        button: ButtonConfig | None = None,
        systemd: SystemdConfig | None = None,
        audio: dict[str, Any] | None = None,
        notifier: Notifier | None = None,
        agent: dict[str, Any] | None = None,
    ) -> None:
        self.tmp = tmp
        self.input_pcm = input_pcm
        self.emu = Emulator(scenario or fast_scenario(), speech="tone")
        self.factory = mock_factory()
        self.tel = Recorder()
        self.out_path = tmp / "out.raw"
        filedevices.install(tmp / "alsa")
        raw = tmp / "in.raw"
        raw.write_bytes(input_pcm + silence(4.0))  # silent tail: the file plugin repeats its buffer at the end
        self.cfg_parts: dict[str, Any] = {
            "gate": gate or GateConfig(),
            "session": session or SessionConfig(),
            "button": button or ButtonConfig(pin=BUTTON_PIN, bounce_ms=0, long_press_s=0.5),
            "systemd": systemd
            or SystemdConfig(status_file=str(tmp / "status.json"), control_socket="", watchdog=False),
            "audio": AudioConfig(
                **{
                    "capture_device": filedevices.capture_device(raw),
                    "playback_device": filedevices.playback_device(self.out_path, fixed_16k=True),
                    "pace_realtime": True,
                    "earcons": False,
                    **(audio or {}),
                }
            ),
        }
        self.agent_changes = agent or {}
        self.notifier = notifier or Notifier({})
        self.daemon: Daemon | None = None

    @property
    def button(self) -> Any:
        return self.factory.pin(BUTTON_PIN)

    @property
    def d(self) -> Daemon:
        assert self.daemon is not None
        return self.daemon

    def config(self) -> Config:
        agent = AgentConfig(
            agent_id=self.emu.agent_id, base_url=self.emu.base_url, connection="signed_url", **self.agent_changes
        )
        return Config(agent=agent, **self.cfg_parts)

    def start(self) -> Rig:
        self.emu.start()
        self.daemon = Daemon(
            self.config(), Secret("emulator-key", "test"), pin_factory=self.factory, notifier=self.notifier
        )
        self.d.telemetry.subscribe(self.tel)
        self.d.start()
        return self

    def stop(self) -> None:
        try:
            if self.daemon is not None:
                self.daemon.stop()
        finally:
            self.emu.stop()
            self.factory.reset()

    def __enter__(self) -> Rig:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- driving ------------------------------------------------------------------------------------
    def wait_captured(self, seconds: float) -> Telemetry:
        """Until the microphone has delivered the input up to ``seconds`` into the file."""
        last_seq = max(0, int(seconds / BLOCK_S) - 1)
        return self.tel.wait("captured", lambda r: r.data["seq"] >= last_seq)

    def press_at(self, seconds: float) -> None:
        """Press the button when the capture reaches ``seconds`` of the input (block precision)."""
        self.wait_captured(seconds)
        self.button.drive_low()

    def release_at(self, seconds: float) -> None:
        self.wait_captured(seconds)
        self.button.drive_high()

    def wait_state(self, state: str, timeout_s: float = WAIT_S, after: int = 0) -> Telemetry:
        return self.tel.wait("state", lambda r: r.data["state"] == state, timeout_s, after)

    def output(self) -> bytes:
        """Everything the speaker got (complete once the daemon stopped)."""
        return filedevices.read_output(self.out_path)


def samples_equal_somewhere(needle: bytes, haystack: bytes) -> bool:
    """``needle`` occurs in ``haystack`` at a sample boundary."""
    start = haystack.find(needle)
    while start >= 0:
        if start % 2 == 0:
            return True
        start = haystack.find(needle, start + 1)
    return False


def is_silent(pcm: bytes) -> bool:
    return not any(pcm)


def with_session(**changes: Any) -> SessionConfig:
    return replace(SessionConfig(), **changes)


def monotonic() -> float:
    return time.monotonic()


@contextmanager
def run_daemon(tmp_path: Path, config: Path, notify_path: str) -> Iterator[subprocess.Popen[str]]:
    """``voice-appliance run`` as its own process on the ALSA files of ``tmp_path``, notifying ``notify_path``.

    Its stderr is a pipe (read it once it has ended); SIGTERM, then SIGKILL, at the end if it still runs.
    """
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("VOICE_APPLIANCE_")},
        **filedevices.alsa_env(tmp_path / "alsa" / filedevices.CONFIG_NAME),
        "NOTIFY_SOCKET": notify_path,
        "WATCHDOG_USEC": "2000000",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "device", "run", "--config", str(config), "--mock-gpio"],
        env=env,
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def serve_with_operator(cfg: Config, key: Secret | None, loader: Loader, operator: Callable[[], None]) -> int:
    """serve() in this (the main) thread, as the process runs it, while ``operator`` drives it from another
    (signals to this process, the control socket); SIGTERM when it is done. Its failure is raised here."""
    failures: list[BaseException] = []

    def run() -> None:
        try:
            operator()
        except BaseException as e:  # raised in the test's thread below
            failures.append(e)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    helper = threading.Thread(target=run, name="test-operator")
    helper.start()
    # Should serve() end early, a late signal must not kill the test run: serve() restores these.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGHUP, signal.SIGTERM)}
    try:
        code = serve(cfg, key, loader, pin_factory=mock_factory())
    finally:
        helper.join(WAIT_S)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failures:
        raise failures[0]
    return code


class NotifySocket:
    """A stand-in for systemd's notification socket: a real AF_UNIX datagram socket."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(WAIT_S)
        self.messages: list[str] = []

    def next(self, timeout_s: float = WAIT_S) -> str:
        self.sock.settimeout(timeout_s)
        msg = self.sock.recv(4096).decode()
        self.messages.append(msg)
        return msg

    def wait_for(self, fragment: str, timeout_s: float = WAIT_S) -> str:
        """The next message containing ``fragment`` (others are kept in ``messages``)."""
        while True:
            msg = self.next(timeout_s)
            if fragment in msg:
                return msg

    def drain(self) -> list[str]:
        out = []
        self.sock.settimeout(0)
        try:
            while True:
                out.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            pass
        self.messages += out
        return out

    def close(self) -> None:
        self.sock.close()


def write_config(tmp_path: Path, emu: Emulator, input_pcm: bytes, playback_device: str = "") -> Path:
    """A config for `voice-appliance run`: file devices, the emulator, the control socket; [systemd] comes last."""
    conf = filedevices.install(tmp_path / "alsa")
    playback_device = playback_device or filedevices.playback_device(tmp_path / "out.raw", fixed_16k=True)
    raw = tmp_path / "in.raw"
    raw.write_bytes(input_pcm + silence(4.0))
    key = tmp_path / "api_key"
    key.write_text("emulator-key\n")
    key.chmod(0o600)
    group = grp.getgrgid(os.getgid()).gr_name
    text = f"""
[agent]
agent_id = "{emu.agent_id}"
base_url = "{emu.base_url}"
connection = "signed_url"
api_key_file = "{key}"

[audio]
capture_device = '{filedevices.capture_device(raw)}'
playback_device = '{playback_device}'
pace_realtime = true
earcons = false

[gate]
mode = "toggle"

[systemd]
status_file = "{tmp_path / "run" / "status.json"}"
control_socket = "{tmp_path / "run" / "control.sock"}"
control_group = "{group}"
watchdog = true
"""
    path = tmp_path / "config.toml"
    path.write_text(text)
    assert conf.exists()
    return path
