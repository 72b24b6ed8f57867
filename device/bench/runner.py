"""One bench run: the real daemon, an agent, loopback audio files, a scripted person.

The daemon (:class:`device.app.daemon.Daemon`) runs in this process exactly as
``voice-appliance run`` would run it, except that its configuration points
the microphone and speaker at ALSA ``type file`` devices
(:mod:`device.drivers.filedevices`), its agent at the built-in emulator (or
``--agent-url``), and its pins at gpiozero's mock factory, whose button pin
the script presses. Nothing of the daemon's logic is re-implemented here:
the bench only feeds inputs, listens to telemetry and writes the results.

Artefacts in the output folder: ``agent_audio.wav`` (what the speaker
played), ``user_audio.wav`` (what the agent received; built-in emulator only),
``report.json`` (see :mod:`device.bench.report`), ``timeline.svg`` (and
``timeline.png`` when ``rsvg-convert`` is installed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import os
import platform
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from device import __version__
from device.app.settings import check_resources, load_settings
from device.bench import analysis, clockedcard, fixtures, report, resources, script, timeline, wavfile
from device.bench.progress import Progress
from device.core.audioformat import CAPTURE_RATE_HZ
from device.core.config import AudioConfig, Config
from device.core.errors import ConfigError, CredentialError, DeviceError, ExitCode, UnavailableError
from device.drivers.capture import BLOCK_S
from device.drivers.secrets import Secret, load_api_key, redact

log = logging.getLogger(__name__)

SETTLE_S = 0.5  # telemetry that trails the end of a conversation (reply_finished, flushes)
POLL_S = 0.1
NO_CONVERSATION_GRACE_S = 3.0  # nothing pressed: a wake word this long after the input's end is no longer coming
PAD_MARGIN_S = 10.0  # the microphone's input outlasts the longest run by this much (see _microphone_audio)
FIRST_BLOCK_WAIT_S = 30.0  # the daemon's microphone opens within this, even under emulation
DEVICE_BUFFER_FRAMES = 4000  # what playback keeps queued in ALSA (4 × 62.5 ms at 16 kHz)
# Threads that are not the daemon's: the bench's own, the built-in emulator's (its connection
# threads and the websockets server's reader threads), pytest's. Library threads the daemon
# starts (gpiozero's LED blinkers and button hold timers) count as the device.
_NOT_DEVICE_PREFIXES = ("MainThread", "emulator", "bench-", "pytest", "asyncio")
_NOT_DEVICE_TARGETS = ("(recv_events)", "(handler)", "(conn_handler)")


@dataclass(frozen=True)
class BenchOptions:
    """What ``voice-appliance bench`` was asked to do (see commands/bench.py)."""

    out_dir: Path = Path("bench-out")
    input_wav: Path | None = None
    timeline: Path | None = None
    scenario: Path | None = None
    agent_url: str | None = None
    api_key_file: str | None = None
    gate_mode: str | None = None
    realtime: bool = True
    config_path: Path | None = None
    overrides: tuple[str, ...] = ()
    max_tail_s: float = 90.0  # longest wait for the conversation to end after the last step
    progress: TextIO | None = None
    card: str | None = None  # "clocked", "file"; None: clocked when PulseAudio is installed, else file
    room_noise: Path | None = None  # a WAV looped under the input and after it (what the room sounds like)


@dataclass
class BenchResult:
    report: dict[str, Any]
    exit_code: int
    out_dir: Path
    summary: str


@dataclass
class _Recorder:
    """Telemetry subscriber: keeps every record, wakes the runner on changes that matter."""

    progress: Progress | None = None
    events: list[Any] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    changed: threading.Event = field(default_factory=threading.Event)
    state: str = "idle"
    conversations: int = 0
    first_block: threading.Event = field(default_factory=threading.Event)  # the microphone delivered
    first_block_s: float = 0.0  # ... its first block, captured at this time

    def __call__(self, ev: Any) -> None:
        with self.lock:
            self.events.append(ev)
            if ev.kind == "captured" and not self.first_block.is_set():
                self.first_block_s = ev.t_s
                self.first_block.set()
            if ev.kind == "state":
                new = analysis.machine_state(ev.data) or self.state
                if new in analysis.CONVERSATION_STATES and self.state not in analysis.CONVERSATION_STATES:
                    self.conversations += 1
                self.state = new
                self.changed.set()
        if self.progress is not None:
            self.progress.on_event(ev)

    def snapshot(self) -> list[Any]:
        with self.lock:
            return list(self.events)


def is_device_thread(name: str) -> bool:
    """Whether a thread (by name) belongs to the daemon rather than the bench or the emulator."""
    return not name.startswith(_NOT_DEVICE_PREFIXES) and not name.endswith(_NOT_DEVICE_TARGETS)


def _emulator_api() -> tuple[Any, Any, Any]:
    """(Emulator, load_scenario, default_scenario); the server needs the bench extra's websockets."""
    from device.emulator import default_scenario, load_scenario

    try:
        from device.emulator import Emulator
    except ImportError as e:
        raise UnavailableError(
            f"the built-in agent emulator cannot be loaded ({e}); install the bench extra "
            "(pip install 'voice-appliance[bench]') or use --agent-url"
        ) from None
    return Emulator, load_scenario, default_scenario


def _with_led_patterns(events: list[Any], cfg: Config) -> list[Any]:
    """``led`` telemetry names the state; add what each LED output shows in it (for the picture)."""
    from device.app.telemetry import Telemetry
    from device.core.ledpatterns import resolve

    try:
        plan = resolve(cfg.leds)
    except DeviceError:
        return events
    out = []
    for e in events:
        if e.kind == "led" and "outputs" not in e.data:
            shown = plan.for_state(str(e.data.get("state", "")))
            outputs = {o.name: str(shown[o.name]) if o.name in shown else "off" for o in plan.outputs}
            e = Telemetry(e.t_s, "led", {**e.data, "outputs": outputs})
        out.append(e)
    return out


def _mock_pin_factory() -> Any:
    from device.drivers.gpio import mock_factory  # device.drivers.gpio is the one module that imports gpiozero

    return mock_factory()


def bench_config(
    config_path: Path | None,
    overrides: tuple[str, ...] | list[str],
    *,
    capture: str,
    playback: str,
    agent: dict[str, Any],
    gate_mode: str | None = None,
    control_socket: Path | None = None,
    pace_realtime: bool = True,
    wake_demo: bool = False,
) -> Config:
    """The user's configuration (file, environment, --set) with the bench's devices, agent and pins.

    ``pace_realtime``: the file card has no clock (the workers pace it); the clocked card has one.
    """
    user = load_settings(config_path, overrides=list(overrides))
    forced: dict[str, dict[str, Any]] = {
        "audio": {"capture_device": capture, "playback_device": playback, "pace_realtime": pace_realtime,
                  "capture_channels": 1, "mixer_control": ""},
        "agent": agent,
        # Nothing under /run, no watchdog: the bench is not a service. The control socket (for
        # timeline ctl steps) lives in the bench's own folder, for this user only.
        "systemd": {"status_file": "", "prometheus_textfile": "", "watchdog": False,
                    "control_socket": str(control_socket) if control_socket else "", "control_group": ""},
    }
    # Earcons would sit between the replies in the speaker file: off unless asked for.
    asked = {o.partition("=")[0].strip() for o in overrides}
    if "audio.earcons" not in asked and user.audio.earcons == AudioConfig().earcons:
        forced["audio"]["earcons"] = False
    if gate_mode:
        forced["gate"] = {"mode": gate_mode}
    if wake_demo:
        # The demo's wake word is espeak-ng's "hey jarvis": openWakeWord hears it (microWakeWord's model does
        # not hear synthetic voices), and the second one cuts the agent off.
        forced["gate"]["barge_in"] = "wake_word"
        forced["wake"] = {"engine": "openwakeword", "model": "hey_jarvis"}
    if user.button.pin is None:
        forced["button"] = {"pin": 17}
    changes = {}
    for section, values in forced.items():
        try:
            changes[section] = dataclasses.replace(getattr(user, section), **values)
        except TypeError as e:  # a field this build's config does not have
            raise ConfigError(f"the bench cannot set {section}: {e}", section) from None
    return check_resources(dataclasses.replace(user, **changes)).require_agent()


class Runner:
    """Prepares, runs and reports one bench run (use :func:`run`)."""

    def __init__(self, opts: BenchOptions) -> None:
        self.opts = opts
        self.demo = opts.input_wav is None
        self.out_dir = opts.out_dir
        self._work = tempfile.TemporaryDirectory(prefix="voice-appliance-bench-")
        self.work = Path(self._work.name)
        self.emulator: Any = None
        self.daemon: Any = None
        self.error: str | None = None
        self.timed_out = False
        self.interrupted = False
        self.started_at = datetime.datetime.now(datetime.UTC)
        self.t0_s = 0.0
        self.end_s = 0.0
        self.cpu_at_start_s = 0.0
        self.cpu_at_end_s = 0.0
        self.peak_rss_at_end_mb = 0.0
        self.monitor = resources.ResourceMonitor(interval_s=0.5)
        self.recorder = _Recorder()
        self.first_conversation = 0
        self.pin_factory: Any = None
        self.card_kind = opts.card or ("clocked" if clockedcard.available() is None else "file")
        self.card: clockedcard.ClockedCard | None = None
        self.heard: clockedcard.SpeakerRecording | None = None
        self.room_pcm = b""
        self.input_pcm = b""  # the input as given (before padding and room noise)
        self.steps: tuple[script.Step, ...] = ()

    # -- preparation ------------------------------------------------------------
    def _input(self) -> tuple[bytes, dict[str, Any]]:
        if self.opts.input_wav is None:
            wake = self.opts.gate_mode == "wake_word"
            demo = fixtures.demo_input(wake)
            what = f"{fixtures.QUESTION_WAV.name} + {fixtures.BARGE_IN_WAV.name}"
            return demo.pcm, {
                "path": f"{fixtures.WAKE_WAV.name} before {what} (bundled demo)" if wake
                else f"{what} (bundled demo)",
                "rate_hz": CAPTURE_RATE_HZ, "channels": 1, "duration_s": round(demo.duration_s, 3),
            }
        pcm, info = wavfile.read_wav(self.opts.input_wav)
        return pcm, {"path": str(self.opts.input_wav), "rate_hz": info.rate_hz, "channels": info.channels,
                     "duration_s": round(info.duration_s, 3)}

    def _steps(self, input_s: float, gate_mode: str) -> tuple[script.Step, ...]:
        if self.opts.timeline is not None:
            return script.load_steps(self.opts.timeline)
        if self.demo:
            wake = gate_mode == "wake_word"
            return script.load_steps(fixtures.DEMO_WAKE_TIMELINE if wake else fixtures.DEMO_TIMELINE)
        # Own audio, no timeline: hold the button while it plays (push to talk); with the wake word
        # nothing is pressed (the word must start the conversation); otherwise a click starts it.
        if gate_mode == "wake_word":
            return ()
        if gate_mode == "push_to_talk":
            return (script.Step(0.2, "press"), script.Step(round(input_s + 0.3, 3), "release"))
        return (script.Step(0.2, "press"), script.Step(0.2 + script.CLICK_S, "release"))

    def _scenario(self, load_scenario: Callable[[Path], Any], default_scenario: Callable[[], Any]) -> Any:
        if self.opts.scenario is not None:
            sc = load_scenario(self.opts.scenario)
        elif self.demo:
            sc = load_scenario(fixtures.DEMO_SCENARIO)
        else:
            # Own audio: the default agent, without re-prompts (they would keep the
            # conversation alive forever; the daemon's idle timeout ends it instead).
            sc = default_scenario().with_changes(timing={"turn_timeout_s": 0.0})
        if not self.opts.realtime:
            # Fast: the agent answers without thinking time and streams as fast as it can.
            sc = sc.with_changes(timing={"speed": 50.0, "response_delay_ms": 30})
        return sc

    def _microphone_audio(self, pcm: bytes, run_max_s: float) -> bytes:
        """The input, then silence (or the room noise, also under the input) until after the run's end.

        The file card repeats stale buffer contents once its input file ends (recipes.md): that is
        sound nobody made, and it kept a voice gate open until --max-wait-s. The input therefore
        lasts longer than the run can, and what follows the user's audio is what the room sounds like.
        """
        total = 2 * round((run_max_s + PAD_MARGIN_S) * CAPTURE_RATE_HZ)
        out = pcm + bytes(max(0, total - len(pcm)))
        if self.opts.room_noise is None:
            return out
        noise, _ = wavfile.read_wav(self.opts.room_noise)
        return wavfile.mix_under(out, noise)

    # -- the run ----------------------------------------------------------------
    def run(self) -> BenchResult:
        try:
            return self._run()
        finally:
            if self.card is not None:
                self.card.stop()
            self._work.cleanup()

    def _run(self) -> BenchResult:
        from device.drivers import filedevices

        self.out_dir.mkdir(parents=True, exist_ok=True)
        pcm, input_info = self._input()
        if self.opts.room_noise is not None:
            input_info["room_noise"] = str(self.opts.room_noise)
        self.input_pcm = pcm
        filedevices.install(self.work)
        in_raw = self.work / "in.raw"  # written once the run's length is known (_prepare_microphone)
        out_raw = self.work / "out.raw"
        capture = filedevices.capture_device(in_raw)
        playback = filedevices.playback_device(out_raw, fixed_16k=True)
        if self.card_kind == "clocked":
            # The input is said into the room when the run starts; the speaker's monitor is what was heard.
            self.card = clockedcard.ClockedCard.start(self.work / "card")
            capture, playback = self.card.microphone_device, self.card.speaker_device

        api_key: Secret | None
        scenario_name: str | None = None
        if self.opts.agent_url:
            agent: dict[str, Any] = {"base_url": self.opts.agent_url}
            if self.opts.api_key_file:
                agent.update(api_key_file=self.opts.api_key_file, connection="signed_url")
            api_key = load_api_key(self.opts.api_key_file or "")
            agent_info = {"kind": "external", "url": redact(self.opts.agent_url), "scenario": None}
        else:
            emulator_cls, load_scenario, default_scenario = _emulator_api()
            sc = self._scenario(load_scenario, default_scenario)
            scenario_name = str(self.opts.scenario) if self.opts.scenario else sc.name
            key = secrets.token_urlsafe(24)
            api_key = Secret(key, "bench emulator key")
            self.emulator = emulator_cls(sc, api_key=key, render_replies=True)
            self.emulator.start()
            self.first_conversation = len(self.emulator.conversations)
            agent = {"base_url": self.emulator.base_url, "agent_id": self.emulator.agent_id,
                     "connection": "public" if sc.agent.public else "signed_url", "api_key_file": ""}
            agent_info = {"kind": "emulator", "url": self.emulator.base_url, "scenario": scenario_name}
        try:
            cfg = bench_config(self.opts.config_path, self.opts.overrides, capture=capture, playback=playback,
                               agent=agent, gate_mode=self.opts.gate_mode, control_socket=self.work / "control.sock",
                               pace_realtime=self.card is None,
                               wake_demo=self.demo and self.opts.gate_mode == "wake_word")
            if cfg.agent.connection == "signed_url" and api_key is None:
                raise CredentialError(
                    "this agent needs a signed URL, and no API key was found: give --api-key-file FILE "
                    "(mode 600), or --set agent.connection=public for a public agent"
                )
            steps = self.steps = self._steps(input_info["duration_s"], cfg.gate.mode)
            expected_s = max(script.last_at_s(steps) + 6.0, input_info["duration_s"] + 3.0, 10.0)
            run_max_s = max(script.last_at_s(steps), input_info["duration_s"]) + self.opts.max_tail_s
            mic = self._microphone_audio(pcm, run_max_s)
            if self.card is not None:
                # The room is silent after the input by itself; with room noise it plays on.
                self.room_pcm = pcm if self.opts.room_noise is None else mic
            else:
                wavfile.write_wav(self.work / "in.wav", mic, CAPTURE_RATE_HZ)
                filedevices.prepare_input(self.work / "in.wav", in_raw)
            self._drive(cfg, api_key, steps, expected_s, input_info["duration_s"])
        finally:
            if self.emulator is not None:
                self.emulator.stop()
        return self._finish(cfg, input_info, agent_info, out_raw, filedevices.read_output)

    def _file_time_zero(self, default_s: float) -> float:
        """When the file microphone's first sample counts as said: the start of its first block.

        The capture worker reads the input file from its start once it has opened the device,
        which a slow CPU (the ARM check runs the bench under qemu) does seconds after the daemon
        started. The timeline's times are the input's, so they count from there; otherwise a
        press meant to frame a question would come before the question's audio is read.
        """
        deadline_s = time.monotonic() + FIRST_BLOCK_WAIT_S
        while not self.recorder.first_block.wait(0.1):
            if self.daemon is None or self.daemon.fatal.is_set() or time.monotonic() > deadline_s:
                return default_s  # the run reports the microphone's failure itself
        return self.recorder.first_block_s - BLOCK_S

    def _drive(self, cfg: Config, api_key: Secret | None, steps: tuple[script.Step, ...], expected_s: float,
               input_s: float = 0.0) -> None:
        from device.app.daemon import Daemon

        factory = self.pin_factory = _mock_pin_factory()
        self.daemon = Daemon(cfg, api_key, pin_factory=factory)
        if self.card is not None:
            self.heard = self.card.record_speaker(CAPTURE_RATE_HZ)
            self.t0_s = self.card.say_in_room(self.room_pcm)  # the input's time 0, as the timeline's
        else:
            self.t0_s = time.monotonic()
        self.cpu_at_start_s = resources.cpu_s()
        progress = None
        if self.opts.progress is not None:
            progress = Progress(self.opts.progress, t0_s=self.t0_s, expected_s=expected_s)
        self.recorder.progress = progress
        unsubscribe = self.daemon.telemetry.subscribe(self.recorder)
        self.monitor.start()
        button_pin = factory.pin(cfg.button.pin)
        pressed_low = cfg.button.pull_up
        try:
            self.daemon.start()
            if self.card is None:
                self.t0_s = self._file_time_zero(default_s=self.t0_s)
                if progress is not None:
                    progress.set_time_zero(self.t0_s)
            pending = list(steps)
            last_step_s = script.last_at_s(steps)
            settle_until: float | None = None
            while True:
                now = time.monotonic()
                elapsed = now - self.t0_s
                if self.daemon.fatal.is_set():
                    self.error = f"the daemon stopped working: {self.daemon.fatal_reason}"
                    return
                while pending and pending[0].at_s <= elapsed:
                    step = pending.pop(0)
                    if step.action == "end":
                        if progress is not None:
                            progress.note("end of the timeline")
                        return
                    self._perform(step, button_pin, pressed_low, cfg, progress)
                if not steps and self.recorder.conversations == 0 and elapsed > input_s + NO_CONVERSATION_GRACE_S:
                    if progress is not None:
                        progress.note("the input ended and nothing started a conversation")
                    return
                if not pending and elapsed >= last_step_s:
                    done = self._conversation_over()
                    if done and settle_until is None:
                        settle_until = now + SETTLE_S
                    elif not done:
                        settle_until = None
                    if settle_until is not None and now >= settle_until:
                        return
                    if elapsed > max(last_step_s, input_s) + self.opts.max_tail_s:
                        self.timed_out = True
                        return
                if progress is not None:
                    progress.tick(now)
                next_step_in = pending[0].at_s - elapsed if pending else POLL_S
                self.recorder.changed.wait(max(0.0, min(POLL_S, next_step_in)))
                self.recorder.changed.clear()
        except KeyboardInterrupt:
            self.interrupted = True
            self.error = "interrupted by the user (Ctrl-C)"
        except DeviceError as e:
            self.error = str(e)
        finally:
            try:
                self.daemon.stop()
            except DeviceError as e:
                self.error = self.error or f"the daemon did not stop cleanly: {e}"
            finally:
                self.end_s = time.monotonic()
                if self.heard is not None:
                    self.heard.stop()
                self.monitor.stop()
                self.cpu_at_end_s = resources.cpu_s()
                self.peak_rss_at_end_mb = resources.peak_rss_mb()
                unsubscribe()
                if progress is not None:
                    progress.finish()

    def _conversation_over(self) -> bool:
        """A conversation happened and none is open: idle again, or failed (no waiting for retries)."""
        with self.recorder.lock:
            return self.recorder.conversations > 0 and self.recorder.state not in analysis.CONVERSATION_STATES

    def _perform(self, step: script.Step, pin: Any, pressed_low: bool, cfg: Config,
                 progress: Progress | None) -> None:
        log.debug("bench step at %.2f s: %s", step.at_s, step.describe())
        if step.action in ("press", "release"):
            down = step.action == "press"
            (pin.drive_low if down == pressed_low else pin.drive_high)()
            return
        if step.action in ("mute", "unmute") and cfg.button.mute_pin is not None:
            # The mute switch closes to ground like the button (pull-up).
            mute_pin = self.pin_factory.pin(cfg.button.mute_pin)
            (mute_pin.drive_low if step.action == "mute" else mute_pin.drive_high)()
            return
        command = step.command if step.action == "ctl" else step.action
        if progress is not None:
            progress.note(f"ctl {command}")
        self._control(command, cfg)

    def _control(self, command: str, cfg: Config) -> None:
        """A control command over the daemon's control socket, exactly as `voice-appliance ctl` sends it."""
        from device.drivers.control import request

        ok, answer = request(cfg.systemd.control_socket, command)
        log.debug("ctl %s → %s %s", command.split(" ", 1)[0], "ok" if ok else "error", answer)
        if not ok:
            raise ConfigError(f"the daemon refused the timeline's ctl {command!r}: {answer}", "timeline")

    # -- results ------------------------------------------------------------------------
    def _agent_records(self) -> list[Any]:
        if self.emulator is None:
            return []
        return list(self.emulator.conversations[self.first_conversation :])

    def _finish(self, cfg: Config, input_info: dict[str, Any], agent_info: dict[str, Any], out_raw: Path,
                read_output: Callable[[Path], bytes]) -> BenchResult:
        events = self.recorder.snapshot()
        records = self._agent_records()
        agent_turns = None
        violations: list[dict[str, Any]] = []
        if self.emulator is not None:
            agent_turns = [dataclasses.asdict(t) for r in records for t in r.turns]
            violations = [
                {"conversation_id": v.conversation_id, "rule": v.rule, "detail": v.detail}
                for r in records for v in r.violations
            ]
        fig = analysis.analyse(events, t0_s=self.t0_s, agent_turns=agent_turns, end_s=self.end_s)
        heard = self.heard
        if heard is not None and heard.pcm:
            analysis.apply_heard(fig, heard.pcm, heard.rate_hz, heard.start_s, self.t0_s)
        state = self.recorder.state
        error = self.error
        if error is None and state == "error" and not fig.session_outcomes:
            error = "the daemon reported an error and no conversation ended normally; see the log above"
        wake = None
        if cfg.gate.mode == "wake_word":
            spans = analysis.speech_spans(self.input_pcm, CAPTURE_RATE_HZ)
            wake = analysis.wake_figures(events, self.t0_s, spans[0][1] if spans else None)
        # With the wake word and nothing pressed, only the word can have started a conversation.
        require_wake = cfg.gate.mode == "wake_word" and not any(s.action == "press" for s in self.steps)
        ok, ended_by, detail = analysis.verdict(
            fig, len(violations), self.timed_out, error, wake=wake, require_wake=require_wake,
            unanswered=analysis.unanswered_user(events, self.t0_s),
        )
        exit_code = 130 if self.interrupted else int(ExitCode.OK if ok else ExitCode.FAILURE)

        # artefacts
        if heard is not None:  # what was heard from the start of the run to its end
            agent_pcm = heard.pcm[2 * heard.sample_at(self.t0_s) : 2 * heard.sample_at(self.end_s)]
        else:
            agent_pcm = read_output(out_raw)
        agent_wav = self.out_dir / "agent_audio.wav"
        wavfile.write_wav(agent_wav, agent_pcm, CAPTURE_RATE_HZ)
        user_wav_name = None
        if records:
            user_pcm = b"".join(r.user_audio_pcm for r in records)
            rate = records[0].input_rate_hz
            wavfile.write_wav(self.out_dir / "user_audio.wav", user_pcm, rate)
            user_wav_name = "user_audio.wav"
        else:
            (self.out_dir / "user_audio.wav").unlink(missing_ok=True)
        device_cpu = self.monitor.cpu_of(is_device_thread)
        # Per minute only means something for a conversation of some length.
        conv_min = fig.conversation_s / 60 if fig.conversation_s >= 5.0 else 0.0
        doc: dict[str, Any] = {
            "schema_version": report.SCHEMA_VERSION,
            "tool_version": __version__,
            "started_at": self.started_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "machine": {"platform": platform.platform(terse=True) + " " + platform.machine(),
                        "python": platform.python_version(), "cpus": os.cpu_count() or 1},
            "mode": "realtime" if self.opts.realtime else "fast",
            "card": self.card_kind,
            "gate_mode": cfg.gate.mode,
            "input": input_info,
            "agent": agent_info,
            "outcome": {"ok": ok, "ended_by": ended_by, "detail": detail, "exit_code": exit_code},
            "duration_s": round(self.end_s - self.t0_s, 3),
            "conversations": fig.conversations,
            "turns": fig.turns,
            "interruptions": fig.interruptions,
            "press_to_first_frame_sent_ms": fig.press_to_first_frame_sent_ms,
            "block_capture_to_wire_ms": fig.block_capture_to_wire_ms,
            "reply_received_to_written_ms": fig.reply_received_to_written_ms,
            "xruns": fig.xruns,
            "ping_ms": fig.ping_ms,
            "cpu_s": {
                "process": round(self.cpu_at_end_s - self.cpu_at_start_s, 3),
                "device": round(device_cpu, 3),
                "per_conversation_minute": round(device_cpu / conv_min, 3) if conv_min > 0 else None,
            },
            "peak_rss_mb": round(self.peak_rss_at_end_mb, 1),
            "protocol_violations": violations,
            "tool_calls": fig.tool_calls,
            "transcript": fig.transcript,
            "wake": wake,
            "artefacts": {"agent_audio_wav": agent_wav.name, "user_audio_wav": user_wav_name,
                          "timeline_svg": "timeline.svg", "timeline_png": None},
        }
        png = self._timeline(_with_led_patterns(events, cfg), fig, agent_pcm, doc)
        doc["artefacts"]["timeline_png"] = png.name if png is not None else None
        report.write(doc, self.out_dir / "report.json")
        return BenchResult(doc, exit_code, self.out_dir, report.summary(doc))

    def _timeline(self, events: list[Any], fig: analysis.Figures, agent_pcm: bytes,
                  doc: dict[str, Any]) -> Path | None:
        total = len(agent_pcm) // 2
        window_s = 0.0625
        levels: list[tuple[float, float]] = []
        if self.heard is not None:  # heard audio is on the clock already: agent_pcm starts at t0
            for i, level in enumerate(wavfile.levels(agent_pcm, CAPTURE_RATE_HZ, window_s)):
                levels.append((self.t0_s + i * window_s, level))
        segments = [] if self.heard is not None else analysis.playback_segments(
            events, total, CAPTURE_RATE_HZ, DEVICE_BUFFER_FRAMES)
        for start_s, first, n in segments:
            seg = agent_pcm[2 * first : 2 * (first + n)]
            for i, level in enumerate(wavfile.levels(seg, CAPTURE_RATE_HZ, window_s)):
                levels.append((start_s + i * window_s, level))
        spans = []
        for t in fig.turns:
            first_s = t["first_agent_audio_heard_s"] if self.heard is not None else t["first_agent_audio_written_s"]
            if t["latency_ms"] is not None and first_s is not None:
                spans.append((self.t0_s + t["user_speech_end_s"], self.t0_s + first_s, f"{t['latency_ms']:.0f} ms"))
        out = doc["outcome"]
        subtitle = (f"{'PASS' if out['ok'] else 'FAIL'}: {out['detail']} · ended by {out['ended_by']} · "
                    f"{doc['mode']} · gate {doc['gate_mode']} · {doc['card']} card · agent {doc['agent']['kind']}"
                    + (f" ({doc['agent']['scenario']})" if doc["agent"]["scenario"] else ""))
        svg = timeline.render_svg(events, t0_s=self.t0_s, t1_s=self.end_s, speaker_levels=levels, spans=spans,
                                  title=f"voice-appliance {__version__} bench — {self.started_at:%Y-%m-%d %H:%M} UTC",
                                  subtitle=subtitle)
        return timeline.write(svg, self.out_dir / "timeline.svg")


def run(opts: BenchOptions) -> BenchResult:
    """Run the bench once; the report is written even when the conversation failed."""
    return Runner(opts).run()


@contextlib.contextmanager
def quiet_device_logs(level: int = logging.WARNING) -> Iterator[None]:
    """Keep the daemon's info lines from tearing the progress display (restored afterwards)."""
    logger = logging.getLogger("device")
    old = logger.level
    if logging.getLogger().getEffectiveLevel() >= logging.INFO:
        logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(old)


__all__ = ["BenchOptions", "BenchResult", "Runner", "quiet_device_logs", "run"]
