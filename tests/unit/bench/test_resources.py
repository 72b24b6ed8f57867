"""Resource sampling: CPU is attributed to the thread that spent it."""

from __future__ import annotations

import threading

from device.bench import resources


def test_a_busy_thread_s_cpu_is_attributed_to_it_by_name() -> None:
    mon = resources.ResourceMonitor(interval_s=0.05)
    spent = threading.Event()
    release = threading.Event()

    def busy() -> None:
        me = threading.get_native_id()
        x = 0
        while (resources.thread_cpu_s(me) or 0.0) < 0.05:
            x += 1
        spent.set()
        release.wait(10)

    t = threading.Thread(target=busy, name="busy-worker")
    t.start()
    try:
        assert spent.wait(30)
        mon.poll()
    finally:
        release.set()
        t.join(10)
    by_name = mon.cpu_by_thread()
    assert by_name["busy-worker"] >= 0.05
    assert mon.cpu_of(lambda n: n.startswith("busy")) == by_name["busy-worker"]
    assert mon.cpu_of(lambda n: n == "no such thread") == 0.0


def test_samples_describe_this_process() -> None:
    s = resources.sample()
    assert s.rss_mb > 1
    assert s.fds > 0
    assert s.threads >= 1
    assert s.cpu_s > 0
    assert resources.peak_rss_mb() >= s.rss_mb * 0.5


def test_the_monitor_samples_until_stopped() -> None:
    seen: list[resources.Sample] = []
    got_two = threading.Event()

    def on_sample(s: resources.Sample) -> None:
        seen.append(s)
        if len(seen) >= 2:
            got_two.set()

    mon = resources.ResourceMonitor(interval_s=0.01, on_sample=on_sample)
    mon.start()
    try:
        assert got_two.wait(10)
    finally:
        mon.stop()
    assert len(mon.samples) >= 3  # plus the final one taken on the way out
    assert all(b.t_s >= a.t_s for a, b in zip(mon.samples, mon.samples[1:], strict=False))


def test_threads_are_told_apart_by_name() -> None:
    from device.bench.runner import is_device_thread

    for name in ("controller", "audio-playback", "session-3-rx", "tool:set_volume", "Thread-10 (_blink_device)",
                 "Thread-1 (held)"):
        assert is_device_thread(name), name
    for name in ("MainThread", "emulator-conn-0", "emulator-accept", "bench-resources", "Thread-6 (recv_events)",
                 "Thread-3 (handler)"):
        assert not is_device_thread(name), name
