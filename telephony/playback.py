"""What the two demo PBXs share (``telephony.ami.demo_pbx``, ``telephony.esl.demo_pbx``): recorded
scenarios started one after another, overlapping, each copy renumbered so that every loop is new
calls, played in real time / ``speed`` by one named task into a loopback server."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger(__name__)

Pairs = tuple[tuple[str, str], ...]
Script = list[tuple[float, Pairs]]
Renumber = Callable[[Pairs, int], Pairs]


def programme(scripts: list[Script], spacing_s: float, loops: int, renumber: Renumber) -> Iterator[tuple[float, Pairs]]:
    """Every scenario started ``spacing_s`` after the previous one (its first event at its start),
    ``loops`` rounds (0: forever); each copy renumbered with ``renumber(pairs, copy)``."""
    copies = itertools.count(1)
    offset = 0.0
    pending: list[tuple[float, int, int, Pairs]] = []
    rounds = itertools.count() if loops == 0 else range(loops)
    for _ in rounds:
        for script in scripts:
            copy = next(copies)
            first = script[0][0] if script else 0.0
            pending.extend((offset + t - first, copy, i, renumber(p, copy)) for i, (t, p) in enumerate(script))
            pending.sort()
            # everything before the next scenario's start can go out now
            offset += spacing_s
            while pending and pending[0][0] < offset:
                t, _, _, pairs = pending.pop(0)
                yield t, pairs
    for t, _, _, pairs in pending:
        yield t, pairs


class RecordingLoop(abc.ABC):
    """A loopback server and the named task that plays the programme into it.  Subclasses say what
    the server is, when the client is ready (``_ready``) and how an event is sent (``_send``)."""

    task_name = "demo-pbx-player"

    def __init__(self, server: Any, load: Callable[[], list[Script]], renumber: Renumber, *, speed: float,
                 loops: int, spacing_s: float) -> None:
        if speed <= 0:
            raise ValueError("demo speed must be > 0")
        self.server = server
        self._load = load
        self.scripts: list[Script] = []
        self.renumber = renumber
        self.speed = speed
        self.loops = loops
        self.spacing_s = spacing_s
        self.played = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def host(self) -> str:
        return str(self.server.host)

    @property
    def port(self) -> int:
        return int(self.server.port)

    @abc.abstractmethod
    def _ready(self) -> bool:
        """The daemon is attached (logged in / subscribed): playing may start."""

    @abc.abstractmethod
    async def _send(self, pairs: Pairs) -> None:
        """Send one recorded event to the attached client."""

    async def start(self) -> None:
        """Read the recordings (in a worker thread: tens of MB), then listen and play."""
        self.scripts = await asyncio.to_thread(self._load)
        if not self.scripts:
            raise FileNotFoundError("no recorded scenarios to play")
        await self.server.start()
        self._task = asyncio.create_task(self._play(), name=self.task_name)

    async def _play(self) -> None:
        loop = asyncio.get_running_loop()
        # wait for the daemon to be attached, so it sees every call from its start
        await self.server.wait_until(self._ready, timeout_s=3600)
        start = loop.time()
        for t, pairs in programme(self.scripts, self.spacing_s, self.loops, self.renumber):
            delay = start + t / self.speed - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await self._send(pairs)
            self.played += 1
        log.info("demo programme finished (%d events)", self.played)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.server.stop()
