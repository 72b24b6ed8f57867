"""The appliance daemon: wires capture, gate, controller, session, playback, GPIO and systemd together.

::

    d = Daemon(cfg, api_key, pin_factory=mock_factory())
    d.start()            # READY=1 once GPIO is up and the microphone delivers (the network may come later)
    d.press(); d.release()
    d.stop()             # STOPPING=1, every thread joined, every device closed

Everything posts small events to the controller's queue; only the controller
changes state. :func:`serve` is the process main loop used by
``voice-appliance run``: SIGTERM/SIGINT stop, SIGHUP reloads the config.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

from device.app.agent import SessionLike
from device.app.controller import Controller
from device.app.telemetry import TelemetryBus
from device.core.audioevents import Block, PlaybackEvent
from device.core.config import Config
from device.core.errors import DeviceError, ExitCode, WorkerStuckError
from device.core.events import BlockEvent, ButtonEvent, Command, MuteEvent, PlaybackNote
from device.core.protocol import SessionEvent
from device.drivers.instance import InstanceLock, claim
from device.drivers.notify import Notifier, Watchdog
from device.drivers.secrets import Secret
from device.drivers.status import STARTING, Status, StatusFiles, status_line
from device.drivers.worker import Worker, WorkerExited

if TYPE_CHECKING:  # imported where they are built: each configuration loads only what it uses
    from device.drivers.agent_http import AgentHttp, SignedUrlSource
    from device.drivers.capture import Capture
    from device.drivers.control import ControlServer
    from device.drivers.gpio import Gpio
    from device.drivers.playback import Playback
    from device.drivers.tools import ToolRegistry

log = logging.getLogger(__name__)

STATUS_REWRITE_S = 10.0  # rewrite the status files at least this often (counters, ping)
STOP_JOIN_S = 5.0
# READY waits this long at most for the microphone's first block (through a sound server it takes
# ~2 s; the capture gives up on a silent one after 3.25 s): far inside the unit's TimeoutStartSec.
READY_WAIT_S = 10.0


class PinFactory(Protocol):
    """A gpiozero pin factory (``gpiozero.pins.Factory``: a Pi's, or the mock one), handed to the GPIO driver."""

    def pin(self, spec: Any) -> Any: ...

    def close(self) -> None: ...


class Daemon:
    """The kiosk: build, start, stop (and reload) every part."""

    def __init__(
        self,
        cfg: Config,
        api_key: Secret | None,
        *,
        pin_factory: PinFactory | None = None,
        notifier: Notifier | None = None,
        telemetry: TelemetryBus | None = None,
    ) -> None:
        self.cfg = cfg
        self.api_key = api_key
        self.pin_factory = pin_factory
        self.notifier = notifier or Notifier()
        self.telemetry = telemetry or TelemetryBus()
        self.fatal = threading.Event()  # a worker died: the process should exit and be restarted
        self.fatal_reason = ""
        self.started_at_s = 0.0
        self.sessions_made = 0
        self._running = False
        self._starting = False  # parts are up, the microphone has not delivered yet: not ready
        self._lock = threading.Lock()
        self._last_written: tuple[object, ...] = ()
        self._last_write_s = 0.0
        self._last_status_line = ""
        self._instance = InstanceLock()  # held from start() to stop(), across reloads
        self._clear_parts()

    def _clear_parts(self) -> None:
        self.controller: Controller | None = None
        self.capture: Capture | None = None
        self.playback: Playback | None = None
        self.gpio: Gpio | None = None
        self.control: ControlServer | None = None
        self.signed_urls: SignedUrlSource | None = None
        self.watchdog: Watchdog | None = None
        self.status_files: StatusFiles | None = None
        self._http: AgentHttp | None = None
        self._prefetch_http: AgentHttp | None = None
        self._tools: ToolRegistry | None = None

    # -- lifetime -------------------------------------------------------------------------
    def start(self) -> None:
        """Start every part; READY=1 once GPIO is up and the microphone delivers (or failed: shown)."""
        if self._running:
            raise RuntimeError("the daemon is already running")
        t0 = time.monotonic()
        self.started_at_s = t0
        self._instance = claim(self.cfg.systemd)  # first: a refusal must leave another daemon's files alone
        self._starting = True
        try:
            self._build()
            self._start_parts()
            self._wait_until_heard()
        except BaseException:
            self._starting = False
            self._stop_parts()
            self._instance.release()
            raise
        self._starting = False
        self._running = True
        self.notifier.ready(status_line(self.status()))
        log.info("voice appliance ready in %.0f ms (gate %s)", (time.monotonic() - t0) * 1000, self.cfg.gate.mode)

    def stop(self) -> None:
        """Stop every part (idempotent); STOPPING=1 first."""
        if not self._running and self.controller is None:
            return
        self.notifier.stopping()
        self._running = False
        self._stop_parts()
        self._instance.release()
        self.notifier.close()
        log.info("voice appliance stopped")

    def reload(self, cfg: Config, api_key: Secret | None) -> bool:
        """Apply a new configuration: RELOADING=1, restart the parts (a conversation ends), READY=1.

        A configuration that loads but cannot be put to work (e.g. a tool that is not installed)
        is refused: the running one comes back, and the error is logged and shown in STATUS=.
        False then.
        """
        self.notifier.reloading()
        log.info("reloading the configuration (a running conversation ends)")
        old = self.cfg, self.api_key
        self._running = False
        self._starting = True
        self._stop_parts()
        self.cfg, self.api_key = cfg, api_key
        refused = ""
        try:
            self._build()
            self._start_parts()
        except Exception as e:  # a bad edit must not take the kiosk down
            refused = f"reload refused: {e or type(e).__name__}"
            log.error("%s; keeping the running configuration", refused)
            self._stop_parts()
            self.cfg, self.api_key = old
            self._build()
            self._start_parts()
        self._wait_until_heard()
        self._starting = False
        self._running = True
        self.notifier.ready(refused or status_line(self.status()))
        return not refused

    def _wait_until_heard(self) -> None:
        """Ready means able to hear: a press before the microphone's first block could lose the
        first words. A microphone that fails is shown as an error and does not hold READY back."""
        if self.capture is None or self.capture.wait_settled(READY_WAIT_S):
            return
        log.warning(
            "the microphone %s delivered no audio within %.0f s of the start; ready without it (still trying)",
            self.cfg.audio.capture_device,
            READY_WAIT_S,
        )

    def __enter__(self) -> Daemon:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- inputs (any thread) -------------------------------------------------------------------
    def press(self, source: str = "api") -> None:
        self._post(ButtonEvent(source, True, time.monotonic()))

    def release(self, source: str = "api") -> None:
        self._post(ButtonEvent(source, False, time.monotonic()))

    def mute(self, muted: bool = True, source: str = "api") -> None:
        self._post(MuteEvent(source, muted, time.monotonic()))

    def command(self, name: str, text: str = "") -> None:
        """start, stop, context TEXT, message TEXT (answer discarded)."""
        self._post(Command(name, text))

    def _post(self, event: object) -> None:
        if self.controller is None:
            raise RuntimeError("the daemon is not running")
        self.controller.post(event)

    # -- observing ----------------------------------------------------------------------------------
    @property
    def state(self) -> str:
        return self.controller.status.state if self.controller is not None else "stopped"

    def workers(self) -> list[Worker]:
        """The threads whose heartbeat the watchdog checks.

        Not the signed-URL prefetcher nor the sessions' threads: they block in
        bounded network calls (up to the HTTP/connect timeouts, with retries),
        which is slow, not stuck. Their death still ends the process.
        """
        parts = [self.controller, self.capture, self.playback, self.control]
        return [w for w in parts if isinstance(w, Worker)]

    @property
    def stall_s(self) -> float:
        """systemd.worker_stall_s, raised above the audio workers' longest silent wait (device reopen backoff)."""
        return max(self.cfg.systemd.worker_stall_s, self.cfg.audio.reopen_max_s * 1.25 + 2.0)

    def status(self) -> Status:
        """The controller's snapshot plus the audio engine's counters."""
        c = self.controller
        base = c.status if c is not None else Status(state="stopped", gate_mode=self.cfg.gate.mode)
        counters = dict(base.counters)
        if self.capture is not None:
            counters["capture_overruns"] = self.capture.stats.get("overruns", 0)
        if self.playback is not None:
            counters["playback_underruns"] = self.playback.stats.get("underruns", 0)
        counters["xruns"] = counters.get("capture_overruns", 0) + counters.get("playback_underruns", 0)
        counters["uptime_s"] = round(time.monotonic() - self.started_at_s, 1)
        return Status(
            state=STARTING if self._starting and c is not None else base.state,
            muted=base.muted,
            conversation_id=base.conversation_id,
            last_error=self.fatal_reason or base.last_error,
            state_for_s=base.state_for_s,
            gate_mode=base.gate_mode,
            counters=counters,
        )

    def status_dict(self) -> dict[str, object]:
        return self.status().to_dict()

    # -- DeviceHooks for the built-in tools (called on tool threads) ------------------------
    def set_volume(self, percent: int) -> None:
        if self.playback is None:
            raise DeviceError("the speaker is not running")
        self.playback.set_volume(percent)

    def device_status(self) -> dict[str, Any]:
        st = self.status()
        return {
            "state": st.state,
            "muted": st.muted,
            "volume_percent": getattr(self.playback, "volume_percent", None),
            "uptime_s": st.counters.get("uptime_s", 0),
            "conversations": st.counters.get("conversations", 0),
            "location": self.cfg.agent.location,
        }

    def end_conversation(self) -> None:
        self.command("stop")

    # -- building ----------------------------------------------------------------------------------
    def _build(self) -> None:
        from device.drivers.capture import Capture
        from device.drivers.control import ControlServer
        from device.drivers.gpio import Gpio
        from device.drivers.playback import Playback
        from device.drivers.tools import ToolRegistry

        cfg = self.cfg
        self._tools = ToolRegistry(cfg.tools, self)
        if cfg.agent.connection != "public":
            # The HTTP client (and TLS) only for agents that fetch a signed URL: a public agent's
            # session makes its own client when a conversation opens.
            from device.drivers.agent_http import AgentHttp, SignedUrlSource

            self._http = AgentHttp(cfg.agent, self.api_key)
            if cfg.agent.prefetch_signed_url:
                self._prefetch_http = AgentHttp(cfg.agent, self.api_key)
                self.signed_urls = SignedUrlSource(
                    self._prefetch_http,
                    retry_initial_s=cfg.session.retry_initial_s,
                    retry_max_s=cfg.session.retry_max_s,
                    on_exit=self._worker_exited,
                )
        self.playback = Playback(cfg.audio, on_event=self._on_playback_event, on_exit=self._worker_exited)
        self.gpio = Gpio(
            cfg.button,
            cfg.leds,
            self._on_gpio_button,
            self._on_gpio_mute,
            pin_factory=self.pin_factory,
        )
        controller = Controller(
            cfg,
            self._make_session,
            self.playback,
            self.telemetry,
            show=self.gpio.show,
            on_exit=self._worker_exited,
        )
        self.controller = controller
        self.capture = Capture(
            cfg.audio,
            self._on_block,
            on_exit=self._worker_exited,
            on_event=controller.on_capture_event,
        )
        if cfg.systemd.control_socket:
            self.control = ControlServer(
                cfg.systemd.control_socket,
                cfg.systemd.control_group,
                controller.post,
                self.status_dict,
                on_exit=self._worker_exited,
            )
        self.status_files = StatusFiles(cfg.systemd.status_file, cfg.systemd.prometheus_textfile)
        self.watchdog = Watchdog(
            self.notifier,
            self.workers,
            self.stall_s,
            tick=self._housekeeping,
            enabled=cfg.systemd.watchdog,
            on_exit=self._worker_exited,
        )

    def _start_parts(self) -> None:
        from device.drivers.control import ControlError

        assert self.controller is not None and self.watchdog is not None  # _build() made every part
        assert self.gpio is not None and self.playback is not None and self.capture is not None
        self.gpio.open()  # before the controller: its first state shows on the LEDs
        self.playback.start()
        self.controller.start()
        if self.signed_urls is not None:
            self.signed_urls.start()
        if self.control is not None:
            try:
                self.control.start()
            except ControlError as e:
                log.warning("%s; running without it", e)
                self.control = None
        self.capture.start()
        self.watchdog.start()

    def _stop_parts(self) -> None:
        """Stop the watchdog, then inputs, the brain, outputs (the prefetcher alongside). Every part is tried."""
        errors: list[str] = []

        def attempt(what: str, fn: Callable[[], None]) -> None:
            try:
                fn()
            except WorkerStuckError as e:
                errors.append(str(e))
                log.error("%s", e)
            except Exception:
                log.exception("stopping %s failed", what)

        if self.watchdog is not None:  # first: a worker that has stopped is not a stuck one
            attempt("watchdog", self.watchdog.close)
        prefetcher: threading.Thread | None = None
        if self.signed_urls is not None:
            # It may wait out an HTTP request in flight (agent.http_timeout_s), and so may a
            # conversation that is connecting: both at once, or the stop overruns TimeoutStopSec.
            prefetcher = threading.Thread(
                target=attempt, args=("signed_urls", self.signed_urls.close), name="stop-prefetcher"
            )
            prefetcher.start()
        for name in ("capture", "control"):
            part = getattr(self, name)
            if part is not None:
                attempt(name, part.close)
        if self.controller is not None:
            attempt("controller", lambda: self.controller.stop(STOP_JOIN_S))  # type: ignore[union-attr]
        if self.playback is not None:
            attempt("playback", self.playback.close)
        if prefetcher is not None:
            prefetcher.join()  # bounded: close() gives up after http_timeout_s + 5 s
        if self.gpio is not None:
            attempt("gpio", self.gpio.close)
        if self._tools is not None:
            attempt("tools", self._tools.close)
        for http in (self._http, self._prefetch_http):
            if http is not None:
                attempt("http", http.close)
        if self.status_files is not None:
            attempt("status files", self.status_files.remove)
        self._clear_parts()
        if errors:
            self.fatal_reason = "; ".join(errors)
            self.fatal.set()

    # -- wiring callbacks (other threads) -------------------------------------------------------------
    def _make_session(self, on_event: Callable[[SessionEvent], None]) -> SessionLike:
        from device.drivers.session import Session

        tools = self._tools
        assert tools is not None, "sessions are made by the running controller, after _build()"
        with self._lock:
            self.sessions_made += 1
            n = self.sessions_made
        return Session(
            self.cfg.agent,
            self.cfg.session,
            tools,
            self.api_key,
            on_event,
            self.signed_urls,
            http=self._http,
            name=f"session-{n}",
        )

    def _on_block(self, block: Block) -> None:
        controller = self.controller
        if controller is not None:
            controller.post(BlockEvent(block.pcm, block.seq, block.captured_at_s))
        if self.telemetry.active:
            self.telemetry.publish("captured", block.captured_at_s, seq=block.seq)

    def _on_playback_event(self, event: PlaybackEvent) -> None:
        controller = self.controller
        if controller is not None:
            controller.post(PlaybackNote(event))

    def _on_gpio_button(self, pressed: bool, t_s: float) -> None:
        controller = self.controller
        if controller is not None:
            controller.post(ButtonEvent("gpio", pressed, t_s))

    def _on_gpio_mute(self, muted: bool, t_s: float) -> None:
        controller = self.controller
        if controller is not None:
            controller.post(MuteEvent("switch", muted, t_s))

    def _worker_exited(self, event: WorkerExited) -> None:
        if event.stopped and event.error is None:
            return
        reason = f"thread {event.name} ended unexpectedly" + (f" ({event.error})" if event.error else "")
        log.error("%s; the service stops so systemd restarts it (please report this with the log)", reason)
        self.fatal_reason = reason
        self.fatal.set()

    # -- housekeeping (watchdog thread, about once a second) --------------------------------------------
    def _housekeeping(self) -> None:
        st = self.status()
        line = status_line(st)
        if line != self._last_status_line:
            self._last_status_line = line
            self.notifier.status(line)
        key = (st.state, st.muted, st.conversation_id, st.last_error)
        now = time.monotonic()
        if key != self._last_written or now - self._last_write_s >= STATUS_REWRITE_S:
            self._last_written = key
            self._last_write_s = now
            if self.status_files is not None:
                self.status_files.write(st)


# -- the process main loop ------------------------------------------------------------------------------


Loader = Callable[[], tuple[Config, Secret | None]]
# What signal.signal() takes and gives back: a function, SIG_DFL / SIG_IGN, or None (not set from Python).
SignalHandler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


# From the start of the stop to the end of the process, whatever a thread does: below the unit's
# TimeoutStopSec (15 s), after which systemd would SIGKILL the process with no last log line.
STOP_DEADLINE_S = 12.0


def serve(
    cfg: Config,
    api_key: Secret | None,
    reload_config: Loader | None = None,
    *,
    pin_factory: PinFactory | None = None,
    stop_event: threading.Event | None = None,
    hard_exit: bool = False,
    stop_deadline_s: float = STOP_DEADLINE_S,
) -> int:
    """Run the daemon until SIGTERM/SIGINT (clean stop) or a fatal failure; SIGHUP reloads.

    ``hard_exit`` (the process's entry point): should a thread outlive the stop, the process
    ends anyway, with exit code 70, instead of returning and waiting for it; and should the stop
    itself take longer than ``stop_deadline_s`` (the joins of several stuck threads add up), the
    process ends then, so systemd never has to SIGKILL it.
    """
    stop = stop_event or threading.Event()
    reload_requested = threading.Event()

    def on_stop(signum: int, frame: FrameType | None) -> None:
        log.info("%s received: stopping", signal.Signals(signum).name)
        stop.set()

    def on_hup(signum: int, frame: FrameType | None) -> None:
        reload_requested.set()

    installed = threading.current_thread() is threading.main_thread()
    previous: dict[signal.Signals, SignalHandler] = {}
    if installed:
        handlers = {signal.SIGTERM: on_stop, signal.SIGINT: on_stop, signal.SIGHUP: on_hup}
        for sig, handler in handlers.items():
            previous[sig] = signal.signal(sig, handler)
    daemon = Daemon(cfg, api_key, pin_factory=pin_factory)
    try:
        daemon.start()
        while not stop.is_set() and not daemon.fatal.is_set():
            stop.wait(0.5)
            if reload_requested.is_set():
                reload_requested.clear()
                _reload(daemon, reload_config)
    finally:
        deadline_armed = hard_exit and installed
        if deadline_armed:
            def on_deadline(signum: int, frame: FrameType | None) -> None:
                log.error("the stop took longer than %g s", stop_deadline_s)
                _exit_without(lingering_threads() or [threading.current_thread().name], daemon.notifier)

            previous.setdefault(signal.SIGALRM, signal.signal(signal.SIGALRM, on_deadline))
            signal.setitimer(signal.ITIMER_REAL, stop_deadline_s)
        try:
            daemon.stop()
        finally:
            if deadline_armed:
                signal.setitimer(signal.ITIMER_REAL, 0)
            for sig, old in previous.items():
                signal.signal(sig, old)
    left = lingering_threads()
    if left:  # the interpreter would wait for them: say which, so it can be fixed
        log.error("threads still running after the stop: %s (please report this)", ", ".join(left))
    code = ExitCode.OK
    if daemon.fatal.is_set():
        log.error("stopped after a failure: %s", daemon.fatal_reason)
        code = ExitCode.SOFTWARE
    if left and hard_exit:
        _exit_without(left, daemon.notifier)
    return int(code)


def lingering_threads() -> list[str]:
    """Names of the threads besides this one that the interpreter would wait for at exit (non-daemon)."""
    me = threading.current_thread()
    return [t.name for t in threading.enumerate() if t is not me and t.is_alive() and not t.daemon]


def _exit_without(threads: list[str], notifier: Notifier) -> NoReturn:
    """End the process now, without the threads that outlived the stop.

    One blocked in a device (a speaker that stopped taking audio) may never return, and the
    interpreter would wait for it for ever. Such a thread is a bug: exit code 70 (SOFTWARE), so
    systemd records a failure and the restart policy applies. Logs, stdio and STATUS= go out first.
    """
    code = ExitCode.SOFTWARE
    notifier.status(f"stopped; thread(s) {', '.join(threads)} did not end (exit code {int(code)})")
    notifier.close()
    log.error("exiting with code %d without waiting for %s", code, ", ".join(threads))
    logging.shutdown()  # flushes every handler (journal, stderr)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _reload(daemon: Daemon, reload_config: Loader | None) -> None:
    if reload_config is None:
        log.warning("SIGHUP: this daemon was started without a configuration file to reload")
        return
    try:
        cfg, key = reload_config()
    except Exception as e:  # a bad edit, or a bug in reading it, must not take the kiosk down
        bug = not isinstance(e, DeviceError)
        reason = f"{type(e).__name__}: {e}" if bug else str(e)
        log.error("reload refused, keeping the running configuration: %s", reason, exc_info=bug)
        daemon.notifier.status(f"reload refused: {reason}")
        return
    daemon.reload(cfg, key)
