"""A clocked virtual sound card: a private PulseAudio daemon with a speaker and a room.

ALSA ``type file`` devices have no clock and keep everything written to
them, also what ``drop()`` discards on a real card. This card consumes audio
in real time, so recording the speaker's monitor gives what a listener heard.
It needs no kernel module and no desktop session: one ``pulseaudio`` process
(Debian ``pulseaudio``), private to its directory, with two null sinks:

- ``speaker``: what the device plays (ALSA name :attr:`ClockedCard.speaker_device`);
  :meth:`ClockedCard.record_speaker` records its monitor with ``parec``, each
  sample placed on ``CLOCK_MONOTONIC`` (``time.monotonic()``).
- ``room``: what the microphone hears (ALSA name :attr:`ClockedCard.microphone_device`
  captures the room's monitor); :meth:`ClockedCard.play_into_room` speaks into it, and
  :attr:`ClockedCard.room` records it from the start (which also keeps the room real time).

The ALSA names go through ALSA's ``pulse`` plugin (libasound2-plugins) with the
daemon's socket as an argument (``va_pulse:SERVER=…,DEVICE=…``, defined in
:mod:`device.drivers.filedevices`' configuration), so neither ``default`` nor
``PULSE_SERVER`` of this process changes. Use::

    with ClockedCard.start(tmp_dir) as card:
        cfg = AudioConfig(capture_device=card.microphone_device, playback_device=card.speaker_device)
        with card.record_speaker() as rec:
            …                                   # run the device
        heard = rec.pcm                         # S16_LE mono at rec.rate_hz; rec.time_of(i) is sample i's time

Every process the card starts is its child, stopped (and waited for) by
:meth:`ClockedCard.stop` and :meth:`SpeakerRecording.stop`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from types import TracebackType

from device.core.errors import AudioError, UnavailableError
from device.drivers import filedevices

log = logging.getLogger(__name__)

SPEAKER_RATE_HZ = 48000
ROOM_RATE_HZ = 16000
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
RECORD_LATENCY_MS = 10  # parec's requested latency: the error of the heard-audio clock
READ_BYTES = 4096

CARD_PA = """\
# voice-appliance clocked card (device/bench/clockedcard.py)
load-module module-native-protocol-unix auth-anonymous=1 socket={socket}
load-module module-null-sink sink_name=speaker rate={speaker_rate} channels=1 format=s16le
load-module module-null-sink sink_name=room rate={room_rate} channels=1 format=s16le
set-default-sink speaker
set-default-source room.monitor
"""


def available() -> str | None:
    """None when a clocked card can run here; otherwise what is missing and how to get it."""
    missing = [tool for tool in ("pulseaudio", "parec", "pacat") if shutil.which(tool) is None]
    if missing:
        return (
            f"{', '.join(missing)} not found: install the Debian packages pulseaudio and "
            "pulseaudio-utils (provisioning/dev.sh setup does)"
        )
    if not any(Path("/usr/lib").glob("*/alsa-lib/libasound_module_pcm_pulse.so")):
        return "ALSA's pulse plugin is missing: install libasound2-plugins"
    return None


def _child_env(directory: Path, socket: Path) -> dict[str, str]:
    env = dict(os.environ)
    # The daemon keeps its cookie, runtime files and state in its own folder.
    env.update(HOME=str(directory), XDG_RUNTIME_DIR=str(directory), XDG_CONFIG_HOME=str(directory / "config"),
               PULSE_SERVER=f"unix:{socket}")
    return env


def _stop_process(proc: subprocess.Popen[bytes], what: str) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.warning("%s (pid %d) ignored SIGTERM; killing it", what, proc.pid)
            proc.kill()
            proc.wait(STOP_TIMEOUT_S)


class SpeakerRecording:
    """``parec`` on the speaker's monitor: what a listener heard, sample by sample on CLOCK_MONOTONIC.

    The sample clock is the null sink's. Each read at monotonic time ``t``
    that brings the total to ``n`` samples says sample ``n`` was rendered no
    later than ``t``; the earliest such bound over all reads places sample 0
    (within the recorder's latency, ~10 ms).
    """

    def __init__(self, card: ClockedCard, rate_hz: int, source: str = "speaker.monitor") -> None:
        self.rate_hz = rate_hz
        self.source = source
        self._buf = bytearray()
        self._lock = threading.Lock()
        self._grew = threading.Condition(self._lock)
        self._first_data = threading.Event()
        self._start_s: float | None = None
        self._proc = subprocess.Popen(
            ["parec", "-d", source, "--raw", "--format=s16le", f"--rate={rate_hz}", "--channels=1",
             f"--latency-msec={RECORD_LATENCY_MS}"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=card.client_env,
        )
        # "bench-": the bench does not count this thread's CPU as the device's
        self._thread = threading.Thread(target=self._read, name="bench-card-recorder")
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        while True:
            try:
                data = os.read(fd, READ_BYTES)
            except OSError:
                break
            if not data:
                break
            now = time.monotonic()
            with self._lock:
                self._buf += data
                start_s = now - (len(self._buf) // 2) / self.rate_hz
                if self._start_s is None or start_s < self._start_s:
                    self._start_s = start_s
                self._grew.notify_all()
            self._first_data.set()

    def wait_started(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Block until the recorder delivers audio (from then on nothing played is missed)."""
        if not self._first_data.wait(timeout_s):
            raise AudioError(f"the speaker recorder delivered nothing within {timeout_s:.0f} s")

    def wait_for_sound(self, after_s: float, threshold: int = 200, timeout_s: float = START_TIMEOUT_S) -> float:
        """Block until a sample louder than ``threshold`` at or after monotonic ``after_s``; its time."""
        deadline = time.monotonic() + timeout_s
        with self._grew:
            checked = 0
            while True:
                if self._start_s is not None:
                    first = max(checked, round((after_s - self._start_s) * self.rate_hz))
                    view = memoryview(self._buf)[: len(self._buf) - len(self._buf) % 2].cast("h")
                    try:
                        for i in range(max(0, first), len(view)):
                            if abs(view[i]) > threshold:
                                return self._start_s + i / self.rate_hz
                        checked = len(view)
                    finally:
                        view.release()
                left = deadline - time.monotonic()
                if left <= 0 or self._proc.poll() is not None:
                    raise AudioError(f"no sound on {self.source} within {timeout_s:.0f} s")
                self._grew.wait(left)

    def stop(self) -> None:
        """Stop recording (idempotent); what was heard so far stays in :attr:`pcm`."""
        _stop_process(self._proc, "parec")
        self._thread.join(STOP_TIMEOUT_S)
        if self._thread.is_alive():
            raise AudioError("the speaker recorder's reader did not stop")
        if self._proc.stdout is not None:
            self._proc.stdout.close()

    @property
    def pcm(self) -> bytes:
        """S16_LE mono at :attr:`rate_hz`, from the first sample recorded."""
        with self._lock:
            return bytes(self._buf[: len(self._buf) - len(self._buf) % 2])

    @property
    def start_s(self) -> float:
        """``time.monotonic()`` of sample 0."""
        with self._lock:
            if self._start_s is None:
                raise AudioError("the speaker recorder has not delivered any audio yet")
            return self._start_s

    def time_of(self, sample: int) -> float:
        return self.start_s + sample / self.rate_hz

    def sample_at(self, t_s: float) -> int:
        return max(0, round((t_s - self.start_s) * self.rate_hz))

    def __enter__(self) -> SpeakerRecording:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ClockedCard:
    """A running private PulseAudio daemon with ``speaker`` and ``room`` null sinks (see module doc)."""

    def __init__(self, directory: Path, speaker_rate_hz: int = SPEAKER_RATE_HZ, listen_to_room: bool = True) -> None:
        self.directory = directory
        self.listen_to_room = listen_to_room
        self.socket = directory / "native"
        self.speaker_rate_hz = speaker_rate_hz
        self._proc: subprocess.Popen[bytes] | None = None
        self._players: list[subprocess.Popen[bytes]] = []
        self._drains: list[threading.Thread] = []
        self._recordings: list[SpeakerRecording] = []
        self.room: SpeakerRecording | None = None

    @classmethod
    def start(
        cls, directory: Path, speaker_rate_hz: int = SPEAKER_RATE_HZ, *, listen_to_room: bool = True
    ) -> ClockedCard:
        """Start the daemon in ``directory`` and install the ALSA device definitions (this process).

        ``listen_to_room=False`` leaves the room without its low-latency listener: the sound server
        then starts a capture the way a desktop server may, its first period after ~1.9 s.
        """
        reason = available()
        if reason is not None:
            raise UnavailableError(f"no clocked sound card: {reason}")
        if len(str(directory / "native")) > 100:  # sun_path holds 108 bytes
            raise AudioError(f"{directory} is too long a path for the card's socket; use a shorter one")
        card = cls(directory, speaker_rate_hz, listen_to_room)
        card._start()
        return card

    @property
    def client_env(self) -> dict[str, str]:
        """Environment for pulse clients (parec, pacat) of this card."""
        return _child_env(self.directory, self.socket)

    @property
    def server(self) -> str:
        return f"unix:{self.socket}"

    @property
    def speaker_device(self) -> str:
        """ALSA playback device: the speaker sink."""
        return filedevices.pulse_device(self.server, "speaker")

    @property
    def microphone_device(self) -> str:
        """ALSA capture device: what the room hears (the room sink's monitor)."""
        return filedevices.pulse_device(self.server, "room.monitor")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "config").mkdir(exist_ok=True)
        self.socket.unlink(missing_ok=True)
        pa = self.directory / "card.pa"
        pa.write_text(CARD_PA.format(socket=self.socket, speaker_rate=self.speaker_rate_hz, room_rate=ROOM_RATE_HZ))
        if not filedevices.installed():
            filedevices.install(self.directory)  # the va_pulse template (an existing install has it)
        log_file = (self.directory / "pulseaudio.log").open("wb")
        try:
            self._proc = subprocess.Popen(
                ["pulseaudio", "-n", "-F", str(pa), "--exit-idle-time=-1", "--daemonize=no",
                 "--use-pid-file=no", "--log-target=stderr", "--log-level=warning"],
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, env=self.client_env,
            )
        finally:
            log_file.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self._proc.poll() is not None:
                self._proc = None
                raise AudioError(f"pulseaudio exited at start: {self._log_tail()}")
            if self.socket.exists() and self._pactl_ok():
                break
            if time.monotonic() > deadline:
                self.stop()
                raise AudioError(f"pulseaudio did not come up within {START_TIMEOUT_S:.0f} s: {self._log_tail()}")
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(0.05)  # nothing signals the socket's readiness: poll, but wake if it dies
        log.info("clocked card up: pulseaudio pid %d, socket %s", self._proc.pid, self.socket)
        # A listener on the room for the card's lifetime. Without a low-latency client the sound
        # server renders the idle room sink in blocks of up to 2 s, so the microphone's audio would
        # arrive up to ~1.7 s after it was said (no real microphone lags like that), and blocks
        # stamped on arrival would meet the button's presses late. It also records what was said.
        if not self.listen_to_room:
            return
        try:
            self.room = self.record_room()
        except AudioError:
            self.stop()
            raise

    def _pactl_ok(self) -> bool:
        try:
            done = subprocess.run(["pactl", "list", "short", "sinks"], env=self.client_env, capture_output=True,
                                  timeout=START_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            return False
        return done.returncode == 0 and b"speaker" in done.stdout and b"room" in done.stdout

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return " | ".join((self.directory / "pulseaudio.log").read_text(errors="replace").splitlines()[-3:])
        return "(no log)"

    def record_speaker(self, rate_hz: int | None = None) -> SpeakerRecording:
        """Start recording what the speaker plays; returns once the recorder delivers audio."""
        return self._record("speaker.monitor", rate_hz or self.speaker_rate_hz)

    def record_room(self) -> SpeakerRecording:
        """Start another recording of what is said in the room (:attr:`room` runs from the start)."""
        return self._record("room.monitor", ROOM_RATE_HZ)

    def _record(self, source: str, rate_hz: int) -> SpeakerRecording:
        rec = SpeakerRecording(self, rate_hz, source)
        self._recordings.append(rec)
        try:
            rec.wait_started()
        except AudioError:
            rec.stop()
            raise
        return rec

    def play_into_room(self, pcm: bytes, rate_hz: int = ROOM_RATE_HZ) -> subprocess.Popen[bytes]:
        """Speak S16_LE mono ``pcm`` into the room (the microphone hears it in real time); returns ``pacat``."""
        raw = self.directory / f"room-{len(self._players)}.raw"
        raw.write_bytes(pcm)
        proc = subprocess.Popen(
            ["pacat", "--playback", "-d", "room", "--raw", "--format=s16le", f"--rate={rate_hz}", "--channels=1",
             "--latency-msec=20", str(raw)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self.client_env,
        )
        self._players.append(proc)
        return proc

    def say_in_room(self, pcm: bytes, rate_hz: int = ROOM_RATE_HZ) -> float:
        """Start saying ``pcm`` in the room; returns the ``time.monotonic()`` its first sample played.

        The bench's timeline counts from there, as the file card's counts from the capture file's
        start. pacat reports its stream's start ("Stream started.") on stderr with -v.
        """
        raw = self.directory / f"room-{len(self._players)}.raw"
        raw.write_bytes(pcm)
        proc = subprocess.Popen(
            ["pacat", "-v", "--playback", "-d", "room", "--raw", "--format=s16le", f"--rate={rate_hz}",
             "--channels=1", "--latency-msec=20", str(raw)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=self.client_env,
        )
        self._players.append(proc)
        started = threading.Event()
        at: list[float] = []

        def drain() -> None:  # pacat keeps writing to stderr: read it to the end
            assert proc.stderr is not None
            for line in proc.stderr:
                if not started.is_set() and b"Stream started" in line:
                    at.append(time.monotonic())
                    started.set()
            proc.stderr.close()

        thread = threading.Thread(target=drain, name="bench-room-player")
        thread.start()
        self._drains.append(thread)
        if not started.wait(START_TIMEOUT_S):
            raise AudioError(f"the room did not start playing within {START_TIMEOUT_S:.0f} s (pacat)")
        return at[0]

    def stop(self) -> None:
        """Stop the recorders, the players and the daemon, and wait for each (idempotent)."""
        for rec in self._recordings:
            rec.stop()
        self._recordings.clear()
        self.room = None
        for proc in self._players:
            _stop_process(proc, "pacat")
        self._players.clear()
        for thread in self._drains:
            thread.join(STOP_TIMEOUT_S)
        self._drains.clear()
        if self._proc is not None:
            proc, self._proc = self._proc, None
            _stop_process(proc, "pulseaudio")

    def __enter__(self) -> ClockedCard:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


__all__ = ["ClockedCard", "SpeakerRecording", "available"]
