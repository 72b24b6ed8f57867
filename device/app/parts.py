"""The parts of one configuration: built together, started in order, stopped in reverse.

::

    parts = Parts(cfg, api_key, hooks=daemon, telemetry=bus, notifier=notifier,
                  on_exit=on_worker_exit, tick=housekeeping, status=daemon.status_dict)
    parts.build()        # makes every part; nothing runs yet
    parts.start()        # GPIO, playback, screen, controller, prefetcher, control socket, capture, watchdog
    errors = parts.stop()  # every part is tried; the workers that would not stop

The daemon makes a new ``Parts`` for each start and reload; the wiring callbacks
(microphone blocks, playback events, the button and the mute switch) post to this
set's controller, so a reload never feeds a stopped one.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from device.app.agent import SessionLike
from device.app.controller import Controller
from device.app.speaker import publish_reply_chunk
from device.app.telemetry import TelemetryBus
from device.core.audioevents import Block, PlaybackEvent
from device.core.config import Config
from device.core.errors import CredentialError, WorkerStuckError
from device.core.events import BlockEvent, ButtonEvent, MuteEvent, PlaybackNote
from device.core.protocol import SessionEvent
from device.drivers.notify import Notifier, Watchdog
from device.drivers.secrets import Secret
from device.drivers.status import StatusFiles
from device.drivers.worker import Worker, WorkerExited

if TYPE_CHECKING:  # imported where they are built: each configuration loads only what it uses
    from device.drivers.aec import EchoTap
    from device.drivers.agent_http import AgentHttp, SignedUrlSource
    from device.drivers.capture import Capture
    from device.drivers.control import ControlServer
    from device.drivers.gpio import Gpio
    from device.drivers.mqtt import FleetLink
    from device.drivers.playback import Playback
    from device.drivers.screen import ScreenServer
    from device.drivers.tools import DeviceHooks, ToolRegistry

log = logging.getLogger(__name__)

STOP_JOIN_S = 5.0


class PinFactory(Protocol):
    """A gpiozero pin factory (``gpiozero.pins.Factory``: a Pi's, or the mock one), handed to the GPIO driver."""

    def pin(self, spec: Any) -> Any: ...

    def close(self) -> None: ...


class Parts:
    """Every part of one configuration, and the callbacks that wire them to its controller."""

    def __init__(
        self,
        cfg: Config,
        api_key: Secret | None,
        *,
        hooks: DeviceHooks,
        telemetry: TelemetryBus,
        notifier: Notifier,
        on_exit: Callable[[WorkerExited], None],
        tick: Callable[[], None],
        status: Callable[[], dict[str, object]],
        session_numbers: Iterator[int] | None = None,
        pin_factory: PinFactory | None = None,
        request_reload: Callable[[], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.api_key = api_key
        self._hooks = hooks
        self._telemetry = telemetry
        self._notifier = notifier
        self._on_exit = on_exit
        self._tick = tick
        self._status = status
        # Session threads are named session-N; the daemon hands every reload's parts the same count.
        self._session_numbers = session_numbers or itertools.count(1)
        self._pin_factory = pin_factory
        self._request_reload = request_reload or (lambda: log.warning("a reload was asked for; this daemon cannot"))
        self.controller: Controller | None = None
        self.capture: Capture | None = None
        self.playback: Playback | None = None
        self.gpio: Gpio | None = None
        self.control: ControlServer | None = None
        self.screen: ScreenServer | None = None
        self.signed_urls: SignedUrlSource | None = None
        self.watchdog: Watchdog | None = None
        self.echo_tap: EchoTap | None = None
        self.status_files: StatusFiles | None = None
        self.fleet: FleetLink | None = None  # mqtt.enabled: the fleet channel
        self._fleet_unsubscribe: Callable[[], None] | None = None
        self._http: AgentHttp | None = None
        self._prefetch_http: AgentHttp | None = None
        self._tools: ToolRegistry | None = None

    @property
    def stall_s(self) -> float:
        """systemd.worker_stall_s, raised above the audio workers' longest silent wait (device reopen backoff)."""
        return max(self.cfg.systemd.worker_stall_s, self.cfg.audio.reopen_max_s * 1.25 + 2.0)

    def workers(self) -> list[Worker]:
        """The threads whose heartbeat the watchdog checks.

        Not the signed-URL prefetcher nor the sessions' threads: they block in
        bounded network calls (up to the HTTP/connect timeouts, with retries),
        which is slow, not stuck. Their death still ends the process.
        """
        parts = [self.controller, self.capture, self.playback, self.control, self.screen]
        return [w for w in parts if isinstance(w, Worker)]

    # -- building --------------------------------------------------------------------------
    def build(self) -> None:
        """Make every part (nothing starts). On a failure, what was made is left for :meth:`stop`."""
        from device.drivers import aec
        from device.drivers.capture import Capture
        from device.drivers.control import ControlServer
        from device.drivers.gpio import Gpio
        from device.drivers.playback import Playback
        from device.drivers.tools import ToolRegistry

        cfg = self.cfg
        self._tools = ToolRegistry(cfg.tools, self._hooks)
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
                    on_exit=self._on_exit,
                )
        # Echo cancellation: playback feeds the tap what the speaker will play, the controller's
        # microphone path cancels it (device.drivers.aec; None when off or not installed).
        duplex = aec.make(cfg.audio.echo_cancellation, cfg.gate.barge_in)
        tap, canceller = duplex if duplex is not None else (None, None)
        self.echo_tap = tap
        self.playback = Playback(cfg.audio, on_event=self._on_playback_event, on_exit=self._on_exit, echo_tap=tap)
        self.gpio = Gpio(cfg.button, cfg.leds, self._on_gpio_button, self._on_gpio_mute, pin_factory=self._pin_factory)
        controller = Controller(
            cfg, self._make_session, self.playback, self._telemetry, show=self.gpio.show, on_exit=self._on_exit,
            echo_canceller=canceller,
        )
        self.controller = controller
        self.capture = Capture(cfg.audio, self._on_block, on_exit=self._on_exit, on_event=controller.on_capture_event)
        if cfg.systemd.control_socket:
            self.control = ControlServer(
                cfg.systemd.control_socket,
                cfg.systemd.control_group,
                controller.post,
                self._status,
                on_exit=self._on_exit,
            )
        if cfg.screen.enabled:
            from device.drivers.screen import ScreenServer
            from device.drivers.secrets import load_screen_token

            try:
                token = load_screen_token(cfg.screen.token_file)
            except CredentialError as e:  # the kiosk still talks; without its token the screen must not serve
                log.error("%s; running without the screen", e)
            else:
                self.screen = ScreenServer(
                    cfg.screen, token, self._telemetry.subscribe, controller.post, on_exit=self._on_exit
                )
        if cfg.mqtt.enabled:
            self._build_fleet(controller)
        self.status_files = StatusFiles(cfg.systemd.status_file, cfg.systemd.prometheus_textfile)
        self.watchdog = Watchdog(
            self._notifier, self.workers, self.stall_s, tick=self._tick, enabled=cfg.systemd.watchdog,
            on_exit=self._on_exit,
        )

    def _build_fleet(self, controller: Controller) -> None:
        from device.drivers.mqtt import FleetLink
        from device.drivers.secrets import load_mqtt_password

        def volume() -> int | None:
            return self.playback.volume_percent if self.playback is not None else None

        self.fleet = FleetLink(
            self.cfg.mqtt,
            load_mqtt_password(self.cfg.mqtt.password_file),
            post=controller.post,  # the control socket's path into the controller
            status=self._status,
            set_volume=self._hooks.set_volume,  # the volume tool's
            volume=volume,
            request_reload=self._request_reload,
            on_exit=self._on_exit,
        )

    def start(self) -> None:
        """Start in order: the LEDs first (the controller's first state shows on them), the microphone last."""
        from device.drivers.control import ControlError
        from device.drivers.screen import ScreenError

        assert self.controller is not None and self.watchdog is not None, "build() first"
        assert self.gpio is not None and self.playback is not None and self.capture is not None
        self.gpio.open()
        self.playback.start()
        if self.screen is not None:  # before the controller: the screen sees its first state
            try:
                self.screen.start()
            except ScreenError as e:
                log.warning("%s; running without the screen", e)
                self.screen = None
        self.controller.start()
        if self.signed_urls is not None:
            self.signed_urls.start()
        if self.control is not None:
            try:
                self.control.start()
            except ControlError as e:
                log.warning("%s; running without it", e)
                self.control = None
        if self.fleet is not None:  # it never waits for the broker: connecting is its own thread's
            self._fleet_unsubscribe = self._telemetry.subscribe(self.fleet.on_telemetry)
            self.fleet.start()
        self.capture.start()
        self.watchdog.start()

    def stop(self) -> list[str]:
        """Stop the watchdog, then inputs, the brain, outputs (the prefetcher alongside).

        Every part is tried, whatever the others do; returns what the workers that would not stop said.
        """
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
        fleet: threading.Thread | None = None
        if self.fleet is not None:
            # Its goodbye ("offline") and a connect in flight take up to connect_timeout_s: meanwhile the rest stops.
            if self._fleet_unsubscribe is not None:
                self._fleet_unsubscribe()
            link = self.fleet
            fleet = threading.Thread(
                target=attempt, args=("mqtt", lambda: link.stop(link.cfg.connect_timeout_s + 3.0)), name="stop-mqtt"
            )
            fleet.start()
        prefetcher: threading.Thread | None = None
        if self.signed_urls is not None:
            # It may wait out an HTTP request in flight (agent.http_timeout_s), and so may a
            # conversation that is connecting: both at once, or the stop overruns TimeoutStopSec.
            prefetcher = threading.Thread(
                target=attempt, args=("signed_urls", self.signed_urls.close), name="stop-prefetcher"
            )
            prefetcher.start()
        for what, part in (("capture", self.capture), ("control", self.control), ("screen", self.screen)):
            if part is not None:
                attempt(what, part.close)
        controller = self.controller
        if controller is not None:
            attempt("controller", lambda: controller.stop(STOP_JOIN_S))
        if self.playback is not None:
            attempt("playback", self.playback.close)
        if prefetcher is not None:
            prefetcher.join()  # bounded: close() gives up after http_timeout_s + 5 s
        if fleet is not None:
            fleet.join()  # bounded: the worker's stop gives up after connect_timeout_s + 3 s
        if self.gpio is not None:
            attempt("gpio", self.gpio.close)
        if self._tools is not None:
            attempt("tools", self._tools.close)
        for http in (self._http, self._prefetch_http):
            if http is not None:
                attempt("http", http.close)
        if self.status_files is not None:
            attempt("status files", self.status_files.remove)
        return errors

    # -- wiring callbacks (other threads) -----------------------------------------------------
    def _make_session(self, on_event: Callable[[SessionEvent], None]) -> SessionLike:
        from device.drivers.session import Session

        tools = self._tools
        assert tools is not None, "sessions are made by the running controller, after build()"
        n = next(self._session_numbers)  # atomic: a count is advanced under the GIL
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
        if self.controller is not None:
            self.controller.post(BlockEvent(block.pcm, block.seq, block.captured_at_s))
        if self._telemetry.active:
            self._telemetry.publish("captured", block.captured_at_s, seq=block.seq)
        if self.fleet is not None:
            self.fleet.on_block(block.pcm, block.captured_at_s)

    def _on_playback_event(self, event: PlaybackEvent) -> None:
        if event.kind == "reply_chunk":  # many a second, and only for the telemetry: not through the controller
            publish_reply_chunk(self._telemetry, event)
            return
        if self.controller is not None:
            self.controller.post(PlaybackNote(event))

    def _on_gpio_button(self, pressed: bool, t_s: float) -> None:
        if self.controller is not None:
            self.controller.post(ButtonEvent("gpio", pressed, t_s))

    def _on_gpio_mute(self, muted: bool, t_s: float) -> None:
        if self.controller is not None:
            self.controller.post(MuteEvent("switch", muted, t_s))
