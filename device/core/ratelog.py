"""The rate limit for log lines another party causes (the agent service, a client of the control socket).

Pure: the time of each line is passed in (``now_s``) or read from an injected
clock, and there is no lock (:class:`device.drivers.logs.RateLimitedLog` is
the thread-safe one on the monotonic clock, for the drivers).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

OTHER_KIND = "other"


@dataclass
class _Kind:
    window_end_s: float = 0.0  # before it, lines of this kind are held back
    held: int = 0


class RateLimitedLog:
    """Lines another party can cause, rate-limited: each kind, and all kinds together.

    The first line of a kind goes out at once; then at most one per
    ``interval_s``, saying how many like it were held back since. All kinds
    together write at most ``max_lines`` per ``interval_s`` (lines over it are
    held and counted like the others). At most ``max_kinds`` kinds are told
    apart; further ones share the kind ``"other"``. :meth:`flush` reports
    what is still held (e.g. when a conversation ends).

    Each line's time is its ``now_s`` argument, else ``clock()``.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float,
        *,
        max_lines: int = 50,
        max_kinds: int = 64,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._log = logger
        self._interval_s = interval_s
        self._max_lines = max_lines
        self._max_kinds = max_kinds
        self._clock = clock
        self._kinds: dict[str, _Kind] = {}
        self._window_end_s = 0.0  # of the window all kinds share
        self._window_lines = 0

    def log(self, level: int, kind: str, msg: str, *args: object, now_s: float | None = None) -> bool:
        """Log ``msg % args`` at ``level`` unless ``kind`` (or the total) is over its rate; True when written."""
        return self._write(level, kind, msg, args, now_s)

    def info(self, kind: str, msg: str, *args: object, now_s: float | None = None) -> bool:
        return self._write(logging.INFO, kind, msg, args, now_s)

    def warning(self, kind: str, msg: str, *args: object, now_s: float | None = None) -> bool:
        return self._write(logging.WARNING, kind, msg, args, now_s)

    def _write(self, level: int, kind: str, msg: str, args: tuple[object, ...], now_s: float | None) -> bool:
        held = self._admit(kind, now_s)
        if held is None:
            return False
        suffix = f" ({held} more like it since the last report)" if held else ""
        self._log.log(level, msg + "%s", *args, suffix, stacklevel=3)  # the record names the caller's line
        return True

    def _admit(self, kind: str, now_s: float | None) -> int | None:
        """None when the line is held back; else how many like it were held since the last one written."""
        if now_s is None:
            if self._clock is None:
                raise TypeError("a RateLimitedLog without a clock needs each line's now_s")
            now_s = self._clock()
        if kind not in self._kinds and len(self._kinds) >= self._max_kinds:
            kind = OTHER_KIND
        state = self._kinds.setdefault(kind, _Kind())
        if now_s >= self._window_end_s:
            self._window_end_s, self._window_lines = now_s + self._interval_s, 0
        if now_s < state.window_end_s or self._window_lines >= self._max_lines:
            state.held += 1
            return None
        held, state.held = state.held, 0
        state.window_end_s = now_s + self._interval_s
        self._window_lines += 1
        return held

    @property
    def held(self) -> int:
        """Lines held back and not yet reported."""
        return sum(k.held for k in self._kinds.values())

    def flush(self, what: str) -> None:
        """One line for everything still held back (``what`` names the source), then forget the kinds."""
        held = self._drain()
        if held:
            shown = ", ".join(f"{name} ×{n}" for n, name in held[:5]) + (", …" if len(held) > 5 else "")
            total = sum(n for n, _ in held)
            self._log.info("%s: %d log lines were held back by the rate limit (%s)", what, total, shown)

    def _drain(self) -> list[tuple[int, str]]:
        """(held, kind) of every kind holding lines, most first; the kinds and the window start afresh."""
        held = sorted(((k.held, name) for name, k in self._kinds.items() if k.held), reverse=True)
        self._kinds.clear()
        self._window_end_s, self._window_lines = 0.0, 0
        return held
