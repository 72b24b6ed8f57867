"""`voice-appliance run` ends after SIGTERM whatever a thread does: a speaker that blocks for ever."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from device.drivers import filedevices
from device.drivers.control import request
from device.emulator.server import Emulator
from tests.integration.daemonrig import WAIT_S, NotifySocket, fast_scenario, silence, write_config
from tests.support import ROOT

pytestmark = pytest.mark.realtime

# A speaker writing into a FIFO. Unlike the project's va_out devices this one truncates
# ("truncate false" would make the file plugin write to a new regular file beside the FIFO).
FIFO_ASOUNDRC = """\
pcm.va_fifo {
    @args [ OUT ]
    @args.OUT { type string }
    type plug
    slave {
        pcm {
            type file
            slave.pcm "null"
            file $OUT
            format "raw"
            truncate true
        }
        format S16_LE
        rate 16000
        channels 1
    }
}
"""
PIPE_BYTES = 4096  # the smallest pipe: an eighth of a second of the reply fills it
GREETING = "Hello! " + "I am the kiosk's assistant and I can answer questions about the opening hours. " * 3


def poll(what: str, check: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    """Until ``check()`` holds; fails after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    pause = threading.Event()  # never set: a bounded pause between looks
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:g} s"
        pause.wait(0.05)


def blocked_in_a_pipe(pid: int) -> bool:
    """A thread of ``pid`` sleeps in write() on a full pipe (the kernel's wait channel, /proc/PID/task/TID/wchan:
    ``pipe_write``, or ``anon_pipe_write`` on newer kernels)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if "pipe_write" in (task / "wchan").read_text():
                return True
        except OSError:
            continue  # that thread just ended
    return False


def start_run(config: Path, notify: NotifySocket, **env_changes: str) -> subprocess.Popen[str]:
    """`voice-appliance run --config CONFIG --mock-gpio` in a child process (stderr piped) under a stand-in systemd.

    Its ALSA loads the file devices of write_config (``ALSA_CONFIG_PATH`` in ``env_changes`` replaces them).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICE_APPLIANCE_")}
    env.update(filedevices.alsa_env(config.parent / "alsa" / filedevices.CONFIG_NAME), NOTIFY_SOCKET=notify.path)
    env.update(env_changes)
    return subprocess.Popen(
        [sys.executable, "-m", "device", "run", "--config", str(config), "--mock-gpio"],
        env=env,
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigterm_ends_the_process_while_the_speaker_blocks(tmp_path: Path) -> None:
    notify = NotifySocket(tmp_path / "notify.sock")
    emu = Emulator(fast_scenario(agent={"first_message": GREETING}), speech="tone").start()
    fifo = tmp_path / "speaker.fifo"
    os.mkfifo(fifo)
    # The reader opens the FIFO (the speaker's open does not wait), then never reads: a sound
    # server that stopped taking audio. Its end closes when the test is over.
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    proc: subprocess.Popen[str] | None = None
    try:
        fcntl.fcntl(reader, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        config = write_config(tmp_path, emu, silence(60.0), playback_device=f'va_fifo:OUT="{fifo}"')
        prom = tmp_path / "node" / "voice_appliance.prom"
        prom.parent.mkdir()
        with config.open("a") as f:
            f.write(f'prometheus_textfile = "{prom}"\n')  # [systemd] is the file's last table
        fifo_conf = tmp_path / "fifo.conf"
        fifo_conf.write_text(FIFO_ASOUNDRC)
        alsa = filedevices.alsa_env(tmp_path / "alsa" / filedevices.CONFIG_NAME)["ALSA_CONFIG_PATH"]
        proc = start_run(config, notify, ALSA_CONFIG_PATH=f"{alsa}:{fifo_conf}")
        notify.wait_for("READY=1")
        assert request(str(tmp_path / "run" / "control.sock"), "start")[0]  # the agent greets at once
        pid = proc.pid
        poll("the speaker blocks", lambda: blocked_in_a_pipe(pid))

        signalled_s = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING=1")
        try:
            code = proc.wait(timeout=WAIT_S)  # a failure detector: the unit's TimeoutStopSec is 15 s
        except subprocess.TimeoutExpired:
            pytest.fail("the process did not end after SIGTERM while its speaker was blocked")
        took_s = time.monotonic() - signalled_s
        stderr = proc.stderr.read() if proc.stderr else ""
        print(f"SIGTERM to exit with the speaker blocked: {took_s:.2f} s")
        assert code == 70, stderr  # SOFTWARE: a thread that does not end is a bug
        assert "threads still running after the stop: audio-playback" in stderr
        assert stderr.rstrip().splitlines()[-1].endswith("exiting with code 70 without waiting for audio-playback")
        assert "did not end (exit code 70)" in notify.wait_for("STATUS=stopped")
        assert not (tmp_path / "run" / "status.json").exists()
        assert 'voice_appliance_state{state="stopped"} 1' in prom.read_text()
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc is not None and proc.stderr is not None:
            proc.stderr.close()
        os.close(reader)
        emu.stop()
        notify.close()


# serve() as `voice-appliance run` calls it, around a daemon whose stop never returns: the joins of
# several stuck threads can add up past TimeoutStopSec, and the deadline must end the process anyway.
STUCK_STOP = """
import sys, threading
from device.app import daemon
from device.core.config import Config
from device.drivers.notify import Notifier

class StuckDaemon:
    def __init__(self, cfg, api_key, pin_factory=None):
        self.fatal = threading.Event()
        self.notifier = Notifier()
    def start(self):
        print("started", flush=True)
    def stop(self):
        threading.Event().wait()

daemon.Daemon = StuckDaemon
sys.exit(daemon.serve(Config(), None, hard_exit=True, stop_deadline_s=float(sys.argv[1])))
"""


def test_a_stop_that_never_ends_is_cut_at_the_deadline() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", STUCK_STOP, "1.0"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "started\n"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=WAIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 70
    assert "the stop took longer than 1 s" in err
    assert "exiting with code 70 without waiting for MainThread" in err
