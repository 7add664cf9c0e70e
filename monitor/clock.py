"""One injectable clock for every timer and every "now" in ringwatch.

Rules never read the time themselves: they ask a :class:`Clock`.  Live, the
clock is the asyncio loop's monotonic clock (:class:`LoopClock`); in replay at
full speed it is a :class:`VirtualClock` that jumps from event to event and
fires due timers, in order, on the way.  Both give seconds since the clock's
origin, so the same rule code gives the same results either way.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Protocol


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the clock's origin."""

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` once at clock time ``when`` (at once if past)."""

    def wall(self, t: float) -> float:
        """Unix time of clock time ``t`` (for display and persistence)."""


class LoopClock:
    """The asyncio loop's clock.  ``scale`` > 1 runs clock time faster than real
    time (replaying a trace at speed S over TCP): clock seconds = real seconds * S."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None, scale: float = 1.0) -> None:
        self._loop = loop or asyncio.get_running_loop()
        if scale <= 0:
            raise ValueError("clock scale must be > 0")
        self.scale = scale
        self._origin = self._loop.time()
        self._wall_origin = time.time()

    def now(self) -> float:
        return (self._loop.time() - self._origin) * self.scale

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        return self._loop.call_at(self._origin + when / self.scale, callback)

    def wall(self, t: float) -> float:
        return self._wall_origin + t / self.scale


class _VTimer:
    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class VirtualClock:
    """A clock that only moves when told to; timers fire in time order as it moves."""

    def __init__(self, start: float = 0.0, wall_origin: float = 0.0) -> None:
        self._now = start
        self._wall_origin = wall_origin
        self._heap: list[tuple[float, int, _VTimer]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    def wall(self, t: float) -> float:
        return self._wall_origin + t

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        timer = _VTimer(when, callback)
        heapq.heappush(self._heap, (when, next(self._seq), timer))
        return timer

    @property
    def pending(self) -> int:
        return sum(1 for _, _, t in self._heap if not t.cancelled)

    def next_deadline(self) -> float | None:
        while self._heap and self._heap[0][2].cancelled:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def advance_to(self, t: float) -> None:
        """Move to ``t`` (never backwards), firing every timer due on the way at its own time."""
        heap = self._heap
        while heap and heap[0][0] <= t:
            when, _, timer = heapq.heappop(heap)
            if timer.cancelled:
                continue
            if when > self._now:
                self._now = when
            timer.callback()
        if t > self._now:
            self._now = t

    def advance(self, dt: float) -> None:
        self.advance_to(self._now + dt)
