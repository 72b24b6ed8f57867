"""The eventfd waker, and the advice ALSA errors turn into."""

from __future__ import annotations

import os
import threading

from device.drivers.alsa import _hint
from device.drivers.waker import Waker


def test_wake_from_another_thread_ends_a_long_wait() -> None:
    waker = Waker()
    woke = threading.Event()

    def waiter() -> None:
        waker.wait(30.0)
        woke.set()

    t = threading.Thread(target=waiter, name="waiter")
    t.start()
    waker.wake()
    t.join(10.0)
    assert woke.is_set()
    waker.close()


def test_a_wake_before_the_wait_is_not_lost() -> None:
    waker = Waker()
    waker.wake()
    waker.wake()
    results: list[object] = []
    t = threading.Thread(target=lambda: results.append(waker.wait(30.0)), name="early-waiter")
    t.start()
    t.join(10.0)
    assert not t.is_alive()
    assert results == [[]]  # the pending wake ended the wait
    r, w = os.pipe()
    try:
        os.write(w, b"x")
        assert waker.wait(0.0, [(r, 1)]) == [(r, 1)]  # other descriptors are reported
    finally:
        os.close(r)
        os.close(w)
    waker.close()


def test_wake_after_close_is_harmless() -> None:
    waker = Waker()
    waker.close()
    waker.close()
    waker.wake()


def test_alsa_errors_say_what_to_do() -> None:
    missing = _hint("microphone", "hw:9", OSError("No such file or directory [hw:9]"), 16000, 1)
    assert "arecord -L" in missing
    assert "audio.capture_device" in missing
    busy = _hint("speaker", "hw:0", OSError("Device or resource busy [hw:0]"), 22050, 1)
    assert "dmix" in busy
    fmt = _hint("speaker", "hw:0", OSError("Invalid argument [hw:0]"), 22050, 1)
    assert "plughw" in fmt
    assert "22050" in fmt
