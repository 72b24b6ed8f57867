"""The agent's pings and the client's pongs (pure): round trips measured, late pongs found once."""

from __future__ import annotations

from device.emulator import wire


class Pinger:
    """Pings every ``interval_s`` once started (0: never); a pong is late after ``pong_timeout_s``."""

    def __init__(self, interval_s: float, pong_timeout_s: float) -> None:
        self.interval_s = interval_s
        self.pong_timeout_s = pong_timeout_s
        self.rtt_ms: int | None = None  # the last round trip, carried by the next ping
        self._sent: dict[int, float] = {}  # outstanding: event_id → sent at
        self._late: set[int] = set()
        self._next_s: float | None = None

    def start(self, now: float) -> None:
        if self.interval_s:
            self._next_s = now + self.interval_s

    def deadlines(self) -> list[float]:
        times = [sent + self.pong_timeout_s for eid, sent in self._sent.items() if eid not in self._late]
        return times if self._next_s is None else [self._next_s, *times]

    def late(self, now: float) -> list[int]:
        """The pings whose pong became late by ``now`` (each reported once)."""
        found = [eid for eid, sent in self._sent.items() if eid not in self._late and now - sent >= self.pong_timeout_s]
        self._late.update(found)
        return found

    def due(self, now: float) -> bool:
        return self._next_s is not None and now >= self._next_s

    def ping(self, now: float, event_id: int) -> wire.Message:
        """The ping to send now as ``event_id``; the next falls due an interval on (at least half of one away)."""
        assert self._next_s is not None
        self._sent[event_id] = now
        self._next_s = max(self._next_s + self.interval_s, now + self.interval_s / 2)
        return wire.ping(event_id, self.rtt_ms)

    def pong(self, now: float, event_id: int) -> float | None:
        """The round trip in ms of the ping ``event_id`` answers (None: no such ping is outstanding)."""
        sent = self._sent.pop(event_id, None)
        if sent is None:
            return None
        rtt_ms = (now - sent) * 1000
        self.rtt_ms = round(rtt_ms)
        return rtt_ms
