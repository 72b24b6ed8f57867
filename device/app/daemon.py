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
import itertools
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

from device.app.controller import Controller
from device.app.parts import Parts, PinFactory
from device.app.telemetry import TelemetryBus
from device.core.config import Config
from device.core.errors import DeviceError, ExitCode
from device.core.events import ButtonEvent, Command, MuteEvent
from device.drivers.instance import InstanceLock, claim
from device.drivers.notify import Notifier
from device.drivers.secrets import Secret
from device.drivers.status import STARTING, Status, status_line
from device.drivers.worker import Worker, WorkerExited

if TYPE_CHECKING:
    from device.drivers.capture import Capture
    from device.drivers.playback import Playback

log = logging.getLogger(__name__)

STATUS_REWRITE_S = 10.0  # rewrite the status files at least this often (counters, ping)
# READY waits this long at most for the microphone's first block (through a sound server it takes
# ~2 s; the capture gives up on a silent one after 3.25 s): far inside the unit's TimeoutStartSec.
READY_WAIT_S = 10.0


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
        self._running = False
        self._starting = False  # parts are up, the microphone has not delivered yet: not ready
        self._session_numbers = itertools.count(1)  # across reloads: every session thread has its own name
        self._last_written: tuple[object, ...] = ()
        self._last_write_s = 0.0
        self._last_status_line = ""
        self._instance = InstanceLock()  # held from start() to stop(), across reloads
        self.reload_wanted = threading.Event()  # a reload asked for from inside (the fleet channel): serve() does it
        self.parts = self._new_parts()

    def _new_parts(self) -> Parts:
        return Parts(
            self.cfg,
            self.api_key,
            hooks=self,
            telemetry=self.telemetry,
            notifier=self.notifier,
            on_exit=self._worker_exited,
            tick=self._housekeeping,
            status=self.status_dict,
            session_numbers=self._session_numbers,
            pin_factory=self.pin_factory,
            request_reload=self.reload_wanted.set,
        )

    def _build(self) -> None:
        self.parts = self._new_parts()
        self.parts.build()

    def _stop_parts(self) -> None:
        errors = self.parts.stop()
        self.parts = self._new_parts()  # nothing built: every part reads None
        if errors:
            self.fatal_reason = "; ".join(errors)
            self.fatal.set()

    @property
    def controller(self) -> Controller | None:
        return self.parts.controller

    @property
    def capture(self) -> Capture | None:
        return self.parts.capture

    @property
    def playback(self) -> Playback | None:
        return self.parts.playback

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
            self.parts.start()
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
            self.parts.start()
        except Exception as e:  # a bad edit must not take the kiosk down
            refused = f"reload refused: {e or type(e).__name__}"
            log.error("%s; keeping the running configuration", refused)
            self._stop_parts()
            self.cfg, self.api_key = old
            self._build()
            self.parts.start()
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
        """The threads whose heartbeat the watchdog checks (see :meth:`Parts.workers`)."""
        return self.parts.workers()

    @property
    def stall_s(self) -> float:
        return self.parts.stall_s

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
        if c is not None and c.mic.echo_canceller is not None:
            counters.update(c.mic.echo_canceller.stats)
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
            if self.parts.status_files is not None:
                self.parts.status_files.write(st)


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
            if reload_requested.is_set() or daemon.reload_wanted.is_set():
                reload_requested.clear()
                daemon.reload_wanted.clear()
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
