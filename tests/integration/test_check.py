"""`voice-appliance check`: real ALSA through `type file` devices, gpiozero's mock pins, real webrtcvad, a pty."""

from __future__ import annotations

import io
import math
import os
import pty
import select
import subprocess
import sys
import threading
import time
from array import array
from pathlib import Path
from typing import Any

import pytest

from device.commands import bringup, check
from device.commands.check import Options, Ui
from device.core.config import Config
from device.drivers import filedevices
from device.drivers.configfile import load_config
from device.drivers.gpio import mock_factory

pytestmark = pytest.mark.realtime

RATE = 16000
ROOT = Path(__file__).resolve().parents[2]


def sine(level_dbfs: float, seconds: float, freq_hz: float = 300.0) -> bytes:
    amp = 32768 * 10 ** (level_dbfs / 20)
    return array(
        "h", (max(-32768, min(32767, round(amp * math.sin(2 * math.pi * freq_hz * i / RATE))))
              for i in range(int(seconds * RATE)))
    ).tobytes()


def quiet_noise(seconds: float) -> bytes:
    import random

    rng = random.Random(7)
    return array("h", (round(rng.gauss(0, 33)) for _ in range(int(seconds * RATE)))).tobytes()  # about -60 dBFS


def audio_cfg(alsa_dir: Path, raw: bytes, *extra: str) -> tuple[Config, Path]:
    inp = alsa_dir / "in.raw"
    inp.write_bytes(raw + bytes(int(filedevices.SILENT_TAIL_S * RATE) * 2))
    out = alsa_dir / "out.raw"
    cfg = load_config(None, environ={}, overrides=[
        f"audio.capture_device={filedevices.capture_device(inp)}",
        f"audio.playback_device={filedevices.playback_device(out, fixed_16k=True)}",
        *extra,
    ])
    return cfg, out


def run_part(cfg: Config, part: str, opt: Options) -> tuple[list[bringup.Result], str]:
    buf = io.StringIO()
    results = check.run_parts(cfg, [part], Ui(buf, ansi=False), threading.Event(), opt)
    return results, buf.getvalue()


def test_mic_measures_the_room_and_plays_the_recording_back(alsa_dir: Path) -> None:
    cfg, out = audio_cfg(alsa_dir, quiet_noise(1.0) + sine(-20, 2.0))
    results, text = run_part(cfg, "mic", Options(seconds=3.0))
    assert [r.verdict for r in results] == ["PASS"], text
    assert "usable for the VAD" in results[0].detail
    assert "3.0 s: level" in text
    assert "noise floor -6" in text  # -60 dBFS noise, then -23 dBFS RMS speech
    assert text.count("dBFS  peak") == 3  # the meter, one line per second of audio when not a terminal
    played = filedevices.read_output(out)
    assert len(played) == 3 * RATE * 2  # the whole recording came back
    # at the configured 80 % volume (software gain 0.64 = -3.9 dB)
    assert bringup.block_level(played[2 * RATE * 2 :]).rms_dbfs == pytest.approx(-23.0 - 3.9, abs=0.3)


def test_mic_clipping_fails_from_the_command_line_without_ansi(alsa_dir: Path) -> None:
    cfg, out = audio_cfg(alsa_dir, quiet_noise(0.5) + sine(2, 1.5))
    proc = subprocess.run(
        [sys.executable, "-m", "device", "check", "mic", "--seconds", "2", "--no-playback", "--config", "/nonexistent",
         "--set", f"audio.capture_device={cfg.audio.capture_device}"],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL mic       clipping" in proc.stdout
    assert "lower the capture gain by about" in proc.stdout
    assert "\x1b" not in proc.stdout
    assert not filedevices.read_output(out)  # --no-playback


def test_speaker_plays_tone_earcons_and_speech_at_the_configured_volume(alsa_dir: Path) -> None:
    cfg, out = audio_cfg(alsa_dir, b"", "audio.volume_percent=50")
    results, text = run_part(cfg, "speaker", Options())
    assert [r.verdict for r in results] == ["PASS"]
    for label in ("tone 440 Hz", "earcon listening", "earcon done", "earcon error", "spoken sample"):
        assert f"playing {label}" in text
    played = filedevices.read_output(out)
    tone = played[: RATE * 2]
    assert bringup.dominant_frequency_hz(tone, RATE) == pytest.approx(440, abs=3)
    assert bringup.block_level(tone).peak_dbfs == pytest.approx(-12 - 12.04, abs=0.2)  # 50 % = gain 0.25
    assert len(played) > 3 * RATE * 2  # earcons and the spoken sample followed


class PinUi(Ui):
    """Records the mock pins' values whenever a line is printed (the LED state is shown by then)."""

    def __init__(self, factory: Any) -> None:
        super().__init__(io.StringIO(), ansi=False)
        self.factory = factory
        self.seen: dict[str, tuple[float, ...]] = {}

    def line(self, text: str) -> None:
        super().line(text)
        words = text.split()
        if words and words[0] in ("idle", "listening", "speaking", "muted"):
            self.seen[words[0]] = tuple(round(float(self.factory.pin(p).state), 2) for p in (5, 6, 13))


def test_leds_walk_every_state_with_its_name() -> None:
    factory = mock_factory()
    try:
        ui = PinUi(factory)
        cfg = load_config(None, environ={})
        results = check.run_parts(cfg, ["leds"], ui, threading.Event(), Options(dwell_s=0, pin_factory=factory))
    finally:
        factory.reset()
    text = ui.stream.getvalue()  # type: ignore[attr-defined]
    assert [r.verdict for r in results] == ["PASS"]
    for state in ("idle", "connecting", "listening", "thinking", "speaking", "error", "muted"):
        assert f"  {state:<11} status: " in text
    assert ui.seen == {
        "idle": (0.0, 0.0, 0.2), "listening": (0.0, 1.0, 0.0), "speaking": (0.0, 0.0, 1.0), "muted": (1.0, 0.0, 0.0),
    }
    assert factory.pin(5).state == 0
    assert factory.pin(13).state == 0  # switched off at the end


def test_button_prints_presses_releases_long_presses_and_the_mute_switch() -> None:
    factory = mock_factory()
    now = [100.0]
    ready = threading.Event()
    stop = threading.Event()
    buf = io.StringIO()
    cfg = load_config(None, environ={}, overrides=["button.mute_pin=27", "button.long_press_s=2"])
    opt = Options(seconds=60, pin_factory=factory, clock=lambda: now[0], gpio_ready=ready)
    results: list[bringup.Result] = []
    worker = threading.Thread(
        target=lambda: results.extend(check.run_parts(cfg, ["button"], Ui(buf, ansi=False), stop, opt)),
        name="test-check-button",
    )
    worker.start()
    try:
        assert ready.wait(10)
        button, mute = factory.pin(17), factory.pin(27)
        button.drive_low()
        now[0] = 100.3
        button.drive_high()
        now[0] = 110.0
        button.drive_low()
        now[0] = 113.5
        button.drive_high()
        mute.drive_low()
        mute.drive_high()
    finally:
        stop.set()
        worker.join(10)
        factory.reset()
    assert not worker.is_alive()
    text = buf.getvalue()
    assert "button: pressed\nbutton: released after 0.30 s (short press)\nbutton: pressed\n" in text
    assert "button: released after 3.50 s (long press)" in text
    assert "mute switch: on (muted)\nmute switch: off" in text
    assert [r.verdict for r in results] == ["PASS"]
    assert results[0].detail == "2 press(es), 1 long, mute switch moved 2 time(s)"


def test_button_without_presses_warns_with_the_wiring() -> None:
    factory = mock_factory()
    try:
        results, _text = run_part(load_config(None, environ={}), "button", Options(seconds=0.2, pin_factory=factory))
    finally:
        factory.reset()
    assert results[0].verdict == "WARN"
    assert "BCM 17 to ground" in results[0].fix


def test_vad_shows_speech_then_silence(alsa_dir: Path) -> None:
    filedevices.prepare_input(ROOT / "device" / "data" / "bench" / "question.wav", alsa_dir / "in.raw", tail_s=3.0)
    speech_s = len((alsa_dir / "in.raw").read_bytes()) / 2 / RATE - 3.0
    cfg = load_config(None, environ={}, overrides=[
        f"audio.capture_device={filedevices.capture_device(alsa_dir / 'in.raw')}"])
    results, text = run_part(cfg, "vad", Options(seconds=speech_s + 1.5))
    assert results[0].verdict == "PASS", text
    lines = [line for line in text.splitlines() if "dBFS" in line]
    assert "#" in lines[0]  # speech heard at every aggressiveness
    assert "#" not in lines[-1]
    assert "-120.0 dBFS" in lines[-1]  # the silent tail: nothing
    assert " 2*" in lines[0]  # the configured aggressiveness is marked


def _pty_run(argv: list[str], timeout_s: float = 60) -> tuple[int, str]:
    """Run with stdout and stderr on a pseudo-terminal (as over SSH); return the exit code and what it showed."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdout=slave, stderr=slave, stdin=subprocess.DEVNULL, cwd=ROOT,
                            env={**os.environ, "TERM": "xterm"})
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        os.close(master)
    return rc, b"".join(chunks).decode("utf-8", "replace")


def test_on_a_terminal_the_meter_redraws_one_line_and_verdicts_have_colour(alsa_dir: Path) -> None:
    cfg, _out = audio_cfg(alsa_dir, quiet_noise(1.0) + sine(-20, 1.0))
    rc, shown = _pty_run([sys.executable, "-m", "device", "check", "mic", "--seconds", "2", "--no-playback",
                          "--config", "/nonexistent", "--set", f"audio.capture_device={cfg.audio.capture_device}"])
    assert rc == 0, shown
    assert shown.count("\r\x1b[2K 0.") + shown.count("\r\x1b[2K  0.") >= 5  # redrawn in place, 10 blocks a second
    assert "\x1b[32mPASS\x1b[0m mic" in shown
    assert "\x1b[1m== mic:" in shown


def test_plain_flag_and_all_parts_in_sequence(alsa_dir: Path, tmp_path: Path) -> None:
    cfg, _out = audio_cfg(alsa_dir, quiet_noise(1.0) + sine(-20, 1.0))
    root = tmp_path / "root"
    (root / "proc" / "asound" / "card1").mkdir(parents=True)
    (root / "proc" / "asound" / "cards").write_text(
        " 1 [UACDemoV10     ]: USB-Audio - UACDemoV1.0\n                      Jieli UACDemoV1.0\n")
    (root / "proc" / "asound" / "card1" / "pcm0c").mkdir()
    (root / "proc" / "asound" / "card1" / "pcm0p").mkdir()
    rc, shown = _pty_run([
        sys.executable, "-m", "device", "check", "--plain", "--mock-gpio", "--seconds", "1", "--dwell-s", "0",
        "--no-playback", "--root", str(root), "--config", "/nonexistent",
        "--set", f"audio.capture_device={cfg.audio.capture_device}",
        "--set", f"audio.playback_device={cfg.audio.playback_device}",
    ], timeout_s=90)
    assert "\x1b" not in shown
    summary = shown.split("== summary", 1)[1]
    for part in ("soundcard", "mic", "speaker", "leds", "button", "vad"):
        assert f" {part} " in summary, shown
    assert "WARN soundcard" in summary  # no /etc/asound.conf under the root yet
    assert "WARN button" in summary  # nobody pressed it
    assert rc == 0, shown


def test_ctrl_c_ends_the_live_view_with_a_verdict() -> None:
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "device", "check", "--mock-gpio", "--seconds", "60", "--plain", "--dwell-s", "0",
         "--config", "/nonexistent", "--set", "audio.capture_device=nonexistent_pcm"],
        stdout=slave, stderr=slave, stdin=subprocess.DEVNULL, cwd=ROOT,
    )
    os.close(slave)
    shown = b""
    try:
        deadline = time.monotonic() + 60
        while b"== button" not in shown and time.monotonic() < deadline:
            if select.select([master], [], [], 0.5)[0]:
                shown += os.read(master, 65536)
        assert b"== button" in shown, shown
        proc.send_signal(2)  # SIGINT, as Ctrl-C on the terminal
        while time.monotonic() < deadline:
            if not select.select([master], [], [], 0.5)[0]:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            shown += data
        rc = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        os.close(master)
    text = shown.decode()
    assert "WARN button    no press seen" in text
    assert "interrupted (Ctrl-C)" in text
    assert "== vad" not in text  # the sequence stopped there
    assert "FAIL mic" in text
    assert rc == 1  # the earlier parts' verdicts still count


def test_a_running_daemon_is_named(tmp_path: Path) -> None:
    import socket

    path = tmp_path / "control.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen(1)
        buf = io.StringIO()
        args = check_args("leds", "--mock-gpio", "--dwell-s", "0", "--set", f"systemd.control_socket={path}")
        assert check.run(args, stream=buf) == 0
    assert "warning: the voice-appliance daemon is running" in buf.getvalue()
    assert "sudo systemctl stop voice-appliance" in buf.getvalue()
    buf = io.StringIO()
    assert check.run(check_args("leds", "--mock-gpio", "--dwell-s", "0", "--set",
                                f"systemd.control_socket={path}"), stream=buf) == 0
    assert "daemon is running" not in buf.getvalue()  # a stale socket file: nobody answers


def check_args(*argv: str) -> Any:
    from device.cli import build_parser

    return build_parser().parse_args(["check", "--config", "/nonexistent", *argv])


def test_speaker_with_a_missing_mixer_control_fails_with_the_fix(alsa_dir: Path) -> None:
    cfg, out = audio_cfg(alsa_dir, b"", "audio.mixer_control=NoSuchControl", "audio.mixer_card=default")
    results, _text = run_part(cfg, "speaker", Options())
    assert [r.verdict for r in results] == ["FAIL"]
    assert "NoSuchControl" in results[0].detail
    assert "scontrols" in results[0].detail
    assert not filedevices.read_output(out)  # nothing played at an unknown volume


def test_wake_reports_the_scores_and_proposes_a_threshold(alsa_dir: Path) -> None:
    pytest.importorskip("pyopen_wakeword", reason="the wake extra is not installed")
    from device.bench import fixtures, wavfile

    word, _ = wavfile.read_wav(fixtures.WAKE_WAV)  # espeak-ng's "hey jarvis" (1.18 s)
    other, _ = wavfile.read_wav(fixtures.QUESTION_WAV)
    first = (wavfile.silence(0.5) + word) * check.WAKE_TIMES  # 8.4 s
    raw = first + wavfile.silence(10.0 - len(first) / 32000) + other + wavfile.silence(4.0)
    cfg, _ = audio_cfg(alsa_dir, raw, "wake.engine=openwakeword", "wake.model=hey_jarvis")
    results, text = run_part(cfg, "wake", Options(seconds=10.0))
    r = results[0]
    assert "now talk normally" in text
    assert r.verdict == "PASS", (r, text)
    assert f"{check.WAKE_TIMES} of {check.WAKE_TIMES} wake words over the cutoff 0.5" in r.detail
    proposed = float(r.detail.rsplit("wake.threshold = ", 1)[1])
    assert 0.05 <= proposed < 0.99


def test_wake_advice_says_when_ordinary_speech_scores_like_the_word() -> None:
    r = bringup.wake_advice([0.9, 0.95, 0.7], 0.8, 0.5, 3)
    assert r.verdict == "WARN" and "ordinary speech peaked at 0.80 — it would have woken" in r.detail
    assert "choose another wake word" in r.fix
    r = bringup.wake_advice([0.9, 0.95, 0.6], 0.1, 0.7, 3)
    assert r.verdict == "WARN" and "2 of 3 wake words" in r.detail and "wake.threshold = 0.35" in r.fix
    assert bringup.wake_advice([], 0.0, 0.5, 3).verdict == "FAIL"
    assert bringup.utterance_peaks([0, 0.3, 0.9, 0.2, 0, 0, 0, 0, 0.6, 0], 0.1, gap_s=0.3) == [0.9, 0.6]
