"""``voice-appliance check [PART]``: bring up the hardware on the kiosk itself.

Each part alone (``check mic``) or all in sequence (``check``), with the
service stopped (it holds the sound card and the pins)::

    mic        live level meter, then the recording played back; levels, clipping, DC offset,
               noise floor, whether the VAD can use it and how much gain to add or take away
    speaker    a test tone, the earcons and a spoken sample through the configured device and volume
    leds       every state's pattern in turn, with its name
    button     presses, releases and long presses (and the mute switch) as they happen
    vad        what webrtcvad decides per 30 ms frame at every aggressiveness, to tune it
    wake       say the wake word WAKE_TIMES times, then talk normally: the scores, the margin to the
               cutoff, false triggers, and a proposed wake.threshold (only when named: it needs you)
    soundcard  the sound cards found and the asound.conf that fits them (--write installs it)

On a terminal the live views redraw one line (plain ANSI, fine over SSH);
piped, they print one line per second of audio. Exit status 1 when a part
FAILed. The verdicts are computed in :mod:`device.commands.bringup`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import queue
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from device.app.settings import load_settings
from device.commands import bringup
from device.commands.bringup import Result
from device.commands.common import add_set_option, config_path
from device.core.audioformat import CAPTURE_RATE_HZ
from device.core.config import Config, LedsConfig
from device.core.errors import AudioError, DeviceError

PARTS = ("mic", "speaker", "leds", "button", "vad")
DEFAULT_SECONDS = {"mic": 5.0, "button": 20.0, "vad": 10.0, "wake": 12.0}
WAKE_TIMES = 5
WAKE_OTHER_S = 8.0  # the second part: ordinary speech
BLOCK_FRAMES = CAPTURE_RATE_HZ * bringup.BLOCK_MS // 1000
VAD_FRAME_MS = 30
VAD_LINE_FRAMES = 16  # one VAD line: 0.48 s
STALL_S = 3.0
SERVICE_HINT = "the service holds the sound card and pins while it runs: sudo systemctl stop voice-appliance"
_COLOURS = {"PASS": "\x1b[32m", "WARN": "\x1b[33m", "FAIL": "\x1b[31m"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_set_option(parser)
    parser.add_argument("part", nargs="?", choices=[*PARTS, "soundcard", "wake"],
                        help="one part (default: all in turn but wake)")
    parser.add_argument(
        "--seconds", type=float, default=None, metavar="S",
        help="length of the live views: mic (recorded and played back) 5, button 20, vad 10",
    )
    parser.add_argument("--no-playback", action="store_true", help="mic: do not play the recording back")
    parser.add_argument("--dwell-s", type=float, default=2.0, metavar="S", help="leds: seconds per state")
    parser.add_argument("--mock-gpio", action="store_true", help="gpiozero's mock pins (no hardware)")
    parser.add_argument("--plain", action="store_true", help="line output even on a terminal")
    parser.add_argument("--write", action="store_true", help="soundcard: install the proposed /etc/asound.conf")
    parser.add_argument(
        "--root", type=Path, default=Path("/"), metavar="DIR",
        help="soundcard: read DIR/proc/asound and write DIR/etc/asound.conf (an image, tests)",
    )


# -- the terminal -------------------------------------------------------------------


class Ui:
    """Lines and one live line: redrawn in place on a terminal, one line per second of audio otherwise."""

    def __init__(self, stream: TextIO, ansi: bool) -> None:
        self.stream = stream
        self.ansi = ansi
        self._live_shown = False
        self._last_plain_s: float | None = None

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def _clear_live(self) -> None:
        if self._live_shown:
            self._write("\r\x1b[2K")
            self._live_shown = False

    def line(self, text: str) -> None:
        self._clear_live()
        self._write(text + "\n")

    def heading(self, text: str) -> None:
        self.line(f"\x1b[1m== {text}\x1b[0m" if self.ansi else f"== {text}")

    def live(self, text: str, at_s: float) -> None:
        """A view that changes often; ``at_s`` (audio time) paces the plain output."""
        if self.ansi:
            self._write("\r\x1b[2K" + text)
            self._live_shown = True
        elif self._last_plain_s is None or at_s - self._last_plain_s >= 1.0:
            self._last_plain_s = at_s
            self._write(text + "\n")

    def end_live(self) -> None:
        self._clear_live()
        self._last_plain_s = None

    def progress(self, label: str, done: float, total: float) -> None:
        frac = min(1.0, done / total) if total > 0 else 1.0
        n = round(frac * 20)
        self.live(f"{label} [{'=' * n}{' ' * (20 - n)}] {100 * frac:3.0f} %", done)

    def result(self, r: Result) -> None:
        verdict = f"{_COLOURS[r.verdict]}{r.verdict}\x1b[0m" if self.ansi else r.verdict
        self.line(f"{verdict:<4} {r.part:<9} {r.detail}")
        if r.fix:
            self.line(f"{'':<4} {'':<9} → {r.fix}")


# -- audio --------------------------------------------------------------------------------


def _backend() -> Any:
    from device.drivers.alsa import AlsaBackend  # imports alsaaudio: only when a part needs audio

    return AlsaBackend()


def capture_blocks(cfg: Config, seconds: float, stop: threading.Event, backend: Any = None) -> Iterator[bytes]:
    """100 ms mono blocks from the configured microphone, ``seconds`` of audio in all."""
    from device.core.convert import to_mono

    a = cfg.audio
    dev = (backend or _backend()).open_capture(a.capture_device, CAPTURE_RATE_HZ, a.capture_channels, BLOCK_FRAMES, 4)
    block_bytes = BLOCK_FRAMES * 2 * a.capture_channels
    want = round(seconds * 1000 / bringup.BLOCK_MS)
    buf = bytearray()
    start_s = last_data_s = time.monotonic()
    try:
        for i in range(want):
            while len(buf) < block_bytes:
                if stop.is_set():
                    return
                data = dev.read()
                if data:
                    buf += data
                    last_data_s = time.monotonic()
                    continue
                if data is None:
                    continue  # an overrun: the device was prepared again
                poller = select.poll()
                for fd, mask in dev.pollfds():
                    poller.register(fd, mask)
                poller.poll(200)
                if time.monotonic() - last_data_s > STALL_S:
                    raise AudioError(f"microphone {a.capture_device!r} delivered no audio for {STALL_S:.0f} s")
            raw = bytes(buf[:block_bytes])
            del buf[:block_bytes]
            if a.pace_realtime:  # a clockless (file) device has every frame at once
                stop.wait(max(0.0, start_s + (i + 1) * bringup.BLOCK_MS / 1000 - time.monotonic()))
            yield to_mono(raw, a.capture_channels, a.stereo_mode)
    finally:
        dev.close()


def play(cfg: Config, pcm: bytes, stop: threading.Event, ui: Ui, label: str, backend: Any = None) -> None:
    """Play mono 16 kHz ``pcm`` at the configured volume (mixer control, else software gain)."""
    from device.core.convert import GainTable, volume_to_gain

    a = cfg.audio
    be = backend or _backend()
    mixer = None
    if a.mixer_control:
        mixer = be.open_mixer(a.mixer_card, a.mixer_control)
        mixer.set_volume(a.volume_percent)
    else:
        pcm = GainTable(volume_to_gain(a.volume_percent)).apply(pcm)
    dev = be.open_playback(a.playback_device, CAPTURE_RATE_HZ, 800, 4)
    total = len(pcm) // 2
    done = 0
    start_s = time.monotonic()
    try:
        while done < total and not stop.is_set():
            n = dev.write(pcm[2 * done : 2 * (done + 800)])
            if n > 0:
                done += n
                ui.progress(label, done / CAPTURE_RATE_HZ, total / CAPTURE_RATE_HZ)
                if a.pace_realtime:
                    stop.wait(max(0.0, start_s + done / CAPTURE_RATE_HZ - 0.1 - time.monotonic()))
            elif n == 0:
                poller = select.poll()
                for fd, mask in dev.pollfds():
                    poller.register(fd, mask)
                poller.poll(200)
        # let the card play what it holds before closing (close drops it)
        deadline = time.monotonic() + 2.0
        while not stop.is_set() and dev.delay_frames() > 0 and time.monotonic() < deadline:
            stop.wait(0.05)
    finally:
        ui.end_live()
        dev.close()
        if mixer is not None:
            mixer.close()


def _gain_hint(device: str) -> str:
    card = ""
    if "CARD=" in device:
        card = device.split("CARD=", 1)[1].split(",", 1)[0]
    where = f"alsamixer -c {card}" if card else "alsamixer (F6: choose the card)"
    return f"{where}, F4 for the Capture controls, then sudo alsactl store"


def _audio_failure(part: str, e: DeviceError) -> Result:
    fix = SERVICE_HINT if "busy" in str(e) else "voice-appliance check soundcard; then check audio.* in the config"
    return Result(part, "FAIL", str(e), fix)


# -- parts -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Options:
    seconds: float | None = None
    playback: bool = True
    dwell_s: float = 2.0
    pin_factory: Any = None
    write: bool = False
    root: Path = Path("/")
    clock: Callable[[], float] = time.monotonic
    gpio_ready: threading.Event | None = None  # set once the pins are open (tests drive them then)


def check_mic(cfg: Config, ui: Ui, stop: threading.Event, opt: Options) -> list[Result]:
    seconds = opt.seconds or DEFAULT_SECONDS["mic"]
    ui.heading(f"mic: {cfg.audio.capture_device!r}, {seconds:g} s — speak as a user would, from where they stand")
    recorded = bytearray()
    try:
        for block in capture_blocks(cfg, seconds, stop):
            recorded += block
            at_s = len(recorded) / 2 / CAPTURE_RATE_HZ
            ui.live(f"{at_s:5.1f} s {bringup.meter(bringup.block_level(block))}", at_s)
    except DeviceError as e:
        ui.end_live()
        return [_audio_failure("mic", e)]
    ui.end_live()
    stats = bringup.analyse(bytes(recorded), CAPTURE_RATE_HZ)
    ui.line(bringup.describe(stats))
    out = bringup.mic_verdicts(stats, _gain_hint(cfg.audio.capture_device))
    if opt.playback and recorded and not stop.is_set():
        ui.line(f"playing the recording back on {cfg.audio.playback_device!r}")
        try:
            play(cfg, bytes(recorded), stop, ui, "playback")
        except DeviceError as e:
            out.append(_audio_failure("speaker", e))
    return out


def _bundled_speech() -> bytes:
    from device.core.convert import to_mono
    from device.core.resample import resample
    from device.drivers.filedevices import read_wav

    pcm, rate_hz, channels = read_wav(Path(__file__).resolve().parent.parent / "data" / "bench" / "question.wav")
    pcm = to_mono(pcm, channels)
    return pcm if rate_hz == CAPTURE_RATE_HZ else resample(pcm, rate_hz, CAPTURE_RATE_HZ)


def check_speaker(cfg: Config, ui: Ui, stop: threading.Event, opt: Options) -> list[Result]:
    from device.drivers.earcons import EarconSet, load_earcons

    a = cfg.audio
    volume = f"mixer {a.mixer_card} {a.mixer_control!r}" if a.mixer_control else "software gain"
    ui.heading(f"speaker: {a.playback_device!r} at {a.volume_percent} % ({volume})")
    earcons = EarconSet(load_earcons(dataclasses.replace(a, earcons=True)))
    sounds = [("tone 440 Hz, 1 s", bringup.tone(440, 1.0, CAPTURE_RATE_HZ))]
    sounds += [(f"earcon {name}", earcons.pcm_at(name, CAPTURE_RATE_HZ)) for name in earcons.names]
    sounds.append(("spoken sample", _bundled_speech()))
    try:
        for label, pcm in sounds:
            if stop.is_set():
                break
            ui.line(f"playing {label}")
            play(cfg, pcm, stop, ui, label)
    except DeviceError as e:
        return [_audio_failure("speaker", e)]
    return [Result(
        "speaker", "PASS", f"played {', '.join(label for label, _ in sounds)}",
        "heard nothing or too soft? check the amplifier and cable, audio.volume_percent, "
        f"audio.mixer_control (amixer -D {a.mixer_card} scontrols) and audio.playback_device",
    )]


def _gpio(cfg: Config, opt: Options, leds: LedsConfig, on_button: Any, on_mute: Any, *, inputs: bool) -> Any:
    from device.drivers.gpio import Gpio

    button = cfg.button if inputs else dataclasses.replace(cfg.button, pin=None, mute_pin=None)
    g = Gpio(button, leds, on_button, on_mute, pin_factory=opt.pin_factory, clock=opt.clock)
    g.open()
    return g


def check_leds(cfg: Config, ui: Ui, stop: threading.Event, opt: Options) -> list[Result]:
    from device.core.display import STATES

    plan_outputs = ", ".join(f"{o.name} ({o.kind})" for o in cfg.leds.output) or f"preset {cfg.leds.preset}"
    ui.heading(f"leds: {plan_outputs}, {opt.dwell_s:g} s per state")
    g = _gpio(cfg, opt, cfg.leds, lambda *_: None, None, inputs=False)
    try:
        if not g.plan.outputs:
            return [Result("leds", "WARN", "no LED outputs configured (leds.preset = none)", "set leds.preset")]
        if g.unavailable:
            return [Result(
                "leds", "FAIL", "cannot open " + "; ".join(g.unavailable),
                "check the pins in [leds], the gpio group, and that the service is stopped",
            )]
        for state in STATES:
            if stop.is_set():
                break
            g.show(state)
            shown = ", ".join(f"{name}: {p}" for name, p in g.plan.for_state(state).items())
            ui.line(f"  {state:<11} {shown}")
            stop.wait(opt.dwell_s)
    finally:
        g.close()
    return [Result("leds", "PASS", f"showed {len(STATES)} states", "a state looked wrong? set [leds.patterns.STATE]")]


def check_button(cfg: Config, ui: Ui, stop: threading.Event, opt: Options) -> list[Result]:
    b = cfg.button
    seconds = opt.seconds or DEFAULT_SECONDS["button"]
    mute = f", mute switch BCM {b.mute_pin}" if b.mute_pin is not None else ""
    ui.heading(
        f"button: BCM {b.pin}{mute}, debounce {b.bounce_ms} ms, long press {b.long_press_s:g} s — "
        f"press it for the next {seconds:g} s (Ctrl-C ends)"
    )
    if b.pin is None:
        return [Result("button", "WARN", "no button configured (button.pin = -1)", "set button.pin")]
    events: queue.Queue[tuple[str, bool, float]] = queue.Queue()
    g = _gpio(
        cfg, opt, LedsConfig(preset="none"),
        lambda active, t: events.put(("button", active, t)),
        lambda active, t: events.put(("mute", active, t)),
        inputs=True,
    )
    tracker = bringup.PressTracker(b.long_press_s)
    switched = 0
    try:
        if g.unavailable:
            return [Result(
                "button", "FAIL", "cannot open " + "; ".join(g.unavailable),
                "check button.pin / button.mute_pin, the gpio group, and that the service is stopped",
            )]
        if opt.gpio_ready is not None:
            opt.gpio_ready.set()
        started_s = time.monotonic()
        deadline = started_s + seconds
        while True:
            try:
                what, active, t = events.get(timeout=0.05)
            except queue.Empty:
                if stop.is_set() or time.monotonic() >= deadline:
                    break
                late = tracker.tick(opt.clock())
                if late:
                    ui.line(late)
                continue
            if what == "button":
                ui.line(tracker.edge(active, t))
            else:
                switched += 1
                ui.line(bringup.switch_line(active))
    finally:
        g.close()
    if tracker.presses == 0:
        watched_s = min(seconds, time.monotonic() - started_s)
        return [Result(
            "button", "WARN", f"no press seen in {watched_s:.0f} s",
            f"check the wiring (BCM {b.pin} to {'ground' if b.pull_up else '3.3 V'}), button.pull_up and button.pin",
        )]
    extra = f", mute switch moved {switched} time(s)" if b.mute_pin is not None else ""
    return [Result("button", "PASS", f"{tracker.presses} press(es), {tracker.long_presses} long{extra}")]


def check_vad(cfg: Config, ui: Ui, stop: threading.Event, opt: Options) -> list[Result]:
    from device.drivers.vad import WebrtcVad

    seconds = opt.seconds or DEFAULT_SECONDS["vad"]
    mine = cfg.gate.vad_aggressiveness
    ui.heading(
        f"vad: {seconds:g} s from {cfg.audio.capture_device!r}; '#' = speech per 30 ms frame at aggressiveness "
        f"0-3 (* = configured, gate.vad_aggressiveness)"
    )
    vads = [WebrtcVad(level) for level in range(4)]
    frame_bytes = CAPTURE_RATE_HZ * VAD_FRAME_MS // 1000 * 2
    counts = [[0, 0] for _ in vads]
    pending = bytearray()
    line: list[list[bool]] = [[] for _ in vads]
    heard = 0
    try:
        for block in capture_blocks(cfg, seconds, stop):
            pending += block
            while len(pending) >= frame_bytes:
                frame = bytes(pending[:frame_bytes])
                del pending[:frame_bytes]
                heard += 1
                for level, vad in enumerate(vads):
                    speech = vad.is_speech(frame)
                    line[level].append(speech)
                    counts[level][0] += 1
                    counts[level][1] += int(speech)
                if len(line[0]) == VAD_LINE_FRAMES:
                    at_s = heard * VAD_FRAME_MS / 1000
                    level_db = bringup.block_level(frame).rms_dbfs
                    cols = "  ".join(
                        f"{level}{'*' if level == mine else ' '}{bringup.vad_strip(d)}" for level, d in enumerate(line)
                    )
                    ui.line(f"{at_s:5.2f} s {level_db:6.1f} dBFS  {cols}")
                    line = [[] for _ in vads]
    except DeviceError as e:
        return [_audio_failure("vad", e)]
    summaries = [bringup.VadSummary(level, n, s) for level, (n, s) in enumerate(counts)]
    return [bringup.vad_advice(summaries, mine)]


def check_wake(cfg: Config, ui: Ui, stop: threading.Event, opt: Options) -> list[Result]:
    from device.drivers.wake import WakeDetector

    seconds = opt.seconds or DEFAULT_SECONDS["wake"]
    det = WakeDetector(cfg.wake)
    # One recording in two parts (a file microphone restarts at its beginning when opened again).
    parts: list[list[float]] = [[], []]
    try:
        ui.heading(f"wake: {det.describe()}")
        ui.line(f"say the wake word {WAKE_TIMES} times, about 1 s apart ({seconds:g} s)")
        at_s = 0.0
        for block in capture_blocks(cfg, seconds + WAKE_OTHER_S, stop):
            second = at_s >= seconds
            if second and not parts[1]:
                ui.end_live()
                ui.line(f"now talk normally, anything but the wake word ({WAKE_OTHER_S:g} s)")
                det.reset()
            got = det.raw_scores(block) or [0.0]
            parts[second] += got
            at_s += len(block) / 2 / CAPTURE_RATE_HZ
            ui.live(f"{at_s:5.1f} s  score {max(got):.2f}", at_s)
        ui.end_live()
    except DeviceError as e:
        return [_audio_failure("wake", e)]
    finally:
        det.close()
    step_s = (seconds + WAKE_OTHER_S) / max(1, len(parts[0]) + len(parts[1]))
    word = bringup.utterance_peaks(parts[0], step_s)
    other = max(bringup.utterance_peaks(parts[1], step_s), default=0.0)
    return [bringup.wake_advice(word, other, det.info.cutoff, WAKE_TIMES)]


def check_soundcard(cfg: Config, ui: Ui, stop: threading.Event, opt: Options) -> list[Result]:
    from device.commands import soundcards

    ui.heading(f"soundcard: {opt.root / 'proc/asound'}")
    return soundcards.check(opt.root, write=opt.write, line=ui.line)


CHECKS: dict[str, Callable[[Config, Ui, threading.Event, Options], list[Result]]] = {
    "soundcard": check_soundcard,
    "mic": check_mic,
    "speaker": check_speaker,
    "leds": check_leds,
    "button": check_button,
    "vad": check_vad,
    "wake": check_wake,
}


def run_parts(cfg: Config, parts: Sequence[str], ui: Ui, stop: threading.Event, opt: Options) -> list[Result]:
    """Run each part in turn; a part that fails to start is a FAIL line, the next one still runs."""
    results: list[Result] = []
    for part in parts:
        if stop.is_set():
            break
        try:
            got = CHECKS[part](cfg, ui, stop, opt)
        except DeviceError as e:
            got = [Result(part, "FAIL", str(e), SERVICE_HINT if "busy" in str(e) else "")]
        for r in got:
            ui.result(r)
        results += got
    if len(parts) > 1:
        ui.heading("summary")
        for r in results:
            ui.result(dataclasses.replace(r, fix=""))
    return results


def load(args: argparse.Namespace, ui: Ui) -> Config:
    path = config_path(args)
    if path.exists():
        return load_settings(path, overrides=args.overrides)
    ui.line(f"note: {path} does not exist; checking with the defaults (and --set)")
    return load_settings(None, overrides=args.overrides)


def service_running(cfg: Config) -> bool:
    """Whether a daemon answers on the control socket (it then holds the sound card and the pins)."""
    path = cfg.systemd.control_socket
    if not path or not Path(path).exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(path)
        except OSError:
            return False  # a stale socket file, or not ours to use: the parts will say what is busy
    return True


def run(args: argparse.Namespace, stream: TextIO | None = None) -> int:
    out = stream or sys.stdout
    ui = Ui(out, ansi=out.isatty() and not args.plain and os.environ.get("TERM") != "dumb")
    cfg = load(args, ui)
    if args.part != "soundcard" and service_running(cfg):
        ui.line(f"warning: the voice-appliance daemon is running ({cfg.systemd.control_socket}); {SERVICE_HINT}")
    factory = None
    if args.mock_gpio:
        from device.drivers.gpio import mock_factory

        factory = mock_factory()
    opt = Options(
        seconds=args.seconds, playback=not args.no_playback, dwell_s=args.dwell_s,
        pin_factory=factory, write=args.write, root=args.root,
    )
    parts = [args.part] if args.part else ["soundcard", *PARTS]
    stop = threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():
        def on_interrupt(signum: int, frame: FrameType | None) -> None:
            # the first Ctrl-C ends the live view and the sequence, with verdicts; a second one aborts
            stop.set()
            signal.signal(signal.SIGINT, signal.default_int_handler)

        previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        results = run_parts(cfg, parts, ui, stop, opt)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if stop.is_set():
        ui.line("interrupted (Ctrl-C): the parts after this one did not run")
    return 1 if any(r.verdict == "FAIL" for r in results) else 0
