"""The Worker thread base."""

from __future__ import annotations

import threading

import pytest

from device.core.errors import WorkerStuckError
from device.drivers.worker import Worker, WorkerExited


class Looper(Worker):
    def __init__(self, **kw: object) -> None:
        super().__init__("looper", **kw)  # type: ignore[arg-type]
        self.loops = 0
        self.running = threading.Event()

    def run(self) -> None:
        while not self.stopping:
            self.loops += 1
            self.beat()
            self.running.set()
            self.wait(10.0)  # stop() must cut this short


def test_named_non_daemon_and_stops_promptly() -> None:
    exits: list[WorkerExited] = []
    w = Looper(on_exit=exits.append)
    w.start()
    assert w.running.wait(5)
    assert w._thread.name == "looper"
    assert not w._thread.daemon
    w.stop(timeout_s=5)
    assert not w.alive
    assert exits == [WorkerExited("looper", None, True)]


def test_close_is_idempotent_and_start_twice_refused() -> None:
    w = Looper()
    w.start()
    with pytest.raises(RuntimeError):
        w.start()
    w.close()
    w.close()


def test_exception_reported_once_with_the_error() -> None:
    exits: list[WorkerExited] = []
    done = threading.Event()

    class Boom(Worker):
        def run(self) -> None:
            raise ValueError("broken mic")

    def on_exit(e: WorkerExited) -> None:
        exits.append(e)
        done.set()

    w = Boom("boom", on_exit=on_exit)
    w.start()
    assert done.wait(5)
    w.stop()
    assert len(exits) == 1
    assert isinstance(exits[0].error, ValueError)
    assert not exits[0].stopped


def test_a_thread_that_will_not_stop_is_an_error() -> None:
    release = threading.Event()

    class Stubborn(Worker):
        def run(self) -> None:
            release.wait(30)  # ignores the stop Event on purpose

    w = Stubborn("stubborn")
    w.start()
    with pytest.raises(WorkerStuckError, match="stubborn"):
        w.stop(timeout_s=0.2)
    release.set()
    w.stop()


def test_the_unblock_hook_unblocks_run() -> None:
    import queue

    class QueueWorker(Worker):
        def __init__(self) -> None:
            super().__init__("queue-worker")
            self.q: queue.Queue[object] = queue.Queue()

        def run(self) -> None:
            while not self.stopping:
                self.q.get()  # blocks until unblocked

        def unblock(self) -> None:
            self.q.put(None)

    w = QueueWorker()
    w.start()
    w.stop(timeout_s=5)
    assert not w.alive


def test_heartbeat_age_grows_without_beats() -> None:
    w = Looper()
    w.beat()
    first = w.heartbeat_age_s
    assert first >= 0
    w._heartbeat -= 100
    assert w.heartbeat_age_s >= 100


def test_a_subclass_holding_its_own_lock_while_starting_starts_and_stops() -> None:
    class Guarded(Worker):
        """Starts under its own ``_lock``: the base class's start lock must be a different one."""

        def __init__(self) -> None:
            super().__init__("guarded")
            self._lock = threading.Lock()
            self.running = threading.Event()

        def start(self) -> None:
            with self._lock:
                super().start()

        def run(self) -> None:
            self.running.set()
            self.wait(10.0)

    w = Guarded()
    starter = threading.Thread(target=w.start, name="test-starter")
    starter.start()
    starter.join(2.0)
    stuck = starter.is_alive()
    if stuck:  # a plain Lock may be released by any thread: let the starter finish
        w._lock.release()
        starter.join(5.0)
    assert not stuck, "start() deadlocked on the subclass's own _lock"
    assert w.running.wait(5)
    w.stop(timeout_s=5)
    assert not w.alive


def test_a_subclass_whose_lock_attribute_is_no_lock_starts_and_stops() -> None:
    class Keyed(Worker):
        def __init__(self) -> None:
            super().__init__("keyed")
            self._lock: dict[str, threading.Lock] = {}  # its own name, its own meaning

        def run(self) -> None:
            self.wait(10.0)

    w = Keyed()
    w.start()
    w.stop(timeout_s=5)
    assert not w.alive
