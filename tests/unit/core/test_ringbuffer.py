"""The playback ring: a bounded FIFO that never loses or reorders what it accepted."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device.core.ringbuffer import RingBuffer
from tests.support import examples

# An operation: ("w", data) writes, ("r", n) reads up to n bytes, ("c", 0) clears.
ops = st.lists(
    st.one_of(
        st.tuples(st.just("w"), st.binary(max_size=40)),
        st.tuples(st.just("r"), st.integers(min_value=0, max_value=50)),
        st.tuples(st.just("c"), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=examples(300), deadline=None)
@given(capacity=st.integers(min_value=1, max_value=64), operations=ops)
def test_behaves_like_a_bounded_fifo(capacity: int, operations: list[tuple[str, object]]) -> None:
    ring = RingBuffer(capacity)
    model = bytearray()
    for op, arg in operations:
        if op == "w":
            assert isinstance(arg, bytes)
            stored = ring.write(arg)
            expected = min(len(arg), capacity - len(model))
            assert stored == expected
            model += arg[:stored]
        elif op == "r":
            assert isinstance(arg, int)
            got = ring.read(arg)
            assert got == bytes(model[:arg])
            del model[:arg]
        else:
            assert ring.clear() == len(model)
            model.clear()
        assert len(ring) == len(model)
        assert ring.free == capacity - len(model)
    assert ring.read(capacity) == bytes(model)


@settings(max_examples=examples(200), deadline=None)
@given(chunks=st.lists(st.binary(min_size=1, max_size=300), max_size=30), read_size=st.integers(1, 200))
def test_everything_written_comes_out_once_in_order_when_it_fits(chunks: list[bytes], read_size: int) -> None:
    ring = RingBuffer(sum(map(len, chunks)) + 1)
    out = bytearray()
    for c in chunks:
        assert ring.write(c) == len(c)
        out += ring.read(read_size)  # interleaved reads make the data wrap around
    while len(ring):
        out += ring.read(read_size)
    assert bytes(out) == b"".join(chunks)


def test_full_ring_refuses_the_excess_and_keeps_the_oldest() -> None:
    ring = RingBuffer(4)
    assert ring.write(b"abc") == 3
    assert ring.write(b"def") == 1
    assert ring.read(10) == b"abcd"


def test_accepts_memoryviews_of_any_shape() -> None:
    ring = RingBuffer(8)
    ring.write(memoryview(b"\x01\x00\x02\x00").cast("h"))
    assert ring.read(8) == b"\x01\x00\x02\x00"


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        RingBuffer(0)


def _rss_bytes() -> int:
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_an_empty_ring_takes_no_memory_until_audio_reaches_it() -> None:
    before = _rss_bytes()
    ring = RingBuffer(64 * 1024 * 1024)
    assert _rss_bytes() - before < 8 * 1024 * 1024
    ring.write(b"\x01" * 1000)
    assert ring.read(1000) == b"\x01" * 1000
