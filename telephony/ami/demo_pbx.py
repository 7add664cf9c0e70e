"""A demo PBX: real Asterisk 22 recordings played over real AMI/TCP, in a loop.

Until the call-centre simulator exists this is the demo's traffic: the recorded
scenarios (answered, slow answer, abandon, ring-no-answer, transfers, agent
hang-up first, recorded call, a 20-call burst) are started one after another,
overlapping, each copy with fresh Uniqueids / Linkedids / channel names so
every loop is new calls.  Only the events are played (the recorder's own
logins, list replies and security events are left out); the server answers
Login, Ping and the resync lists itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Iterator
from pathlib import Path

from telephony.ami.server import ScriptedAmiServer
from telephony.ami.trace import read_trace, renumber

log = logging.getLogger(__name__)

DEFAULT_TRACES = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "ami"
SCENARIOS = (
    "S01_answered_caller_hangs_up",
    "S02_slow_answer_20s",
    "S03_abandoned_in_queue",
    "S04_ringnoanswer_then_second_agent",
    "S05_blind_transfer_to_claims",
    "S09_agent_hangs_up_first",
    "S06_attended_transfer",
    "S10_recorded_call_mixmonitor",
    "S12_burst_20_calls",
    "S07_blind_transfer_long_wait",
)
_SKIP_EVENTS = frozenset({"SuccessfulAuth", "FullyBooted", "InvalidPassword", "InvalidAccountID"})

Pairs = tuple[tuple[str, str], ...]
Script = list[tuple[float, Pairs]]


def load_scenario(path: Path) -> Script:
    out: Script = []
    for item in read_trace(path):
        if item.kind != "msg" or not item.pairs or item.pairs[0][0] != "Event":
            continue
        if item.pairs[0][1] in _SKIP_EVENTS or any(k == "ActionID" for k, _ in item.pairs):
            continue
        out.append((item.t, item.pairs))
    return out


def programme(scripts: list[Script], spacing_s: float, loops: int) -> Iterator[tuple[float, Pairs]]:
    """Every scenario started ``spacing_s`` after the previous one, forever (loops=0)."""
    copies = itertools.count(1)
    offset = 0.0
    pending: list[tuple[float, int, int, Pairs]] = []
    rounds = itertools.count() if loops == 0 else range(loops)
    for _ in rounds:
        for script in scripts:
            copy = next(copies)
            pending.extend((offset + t, copy, i, renumber(p, copy)) for i, (t, p) in enumerate(script))
            pending.sort()
            # everything before the next scenario's start can go out now
            offset += spacing_s
            while pending and pending[0][0] < offset:
                t, _, _, pairs = pending.pop(0)
                yield t, pairs
    for t, _, _, pairs in pending:
        yield t, pairs


class DemoPbx:
    """Loopback AMI server + a named task that plays the programme in real time / ``speed``."""

    def __init__(self, *, username: str, secret: str, speed: float = 1.0, loops: int = 0,
                 spacing_s: float = 12.0, traces: Path = DEFAULT_TRACES, port: int = 0) -> None:
        if speed <= 0:
            raise ValueError("demo speed must be > 0")
        self.server = ScriptedAmiServer(username=username, secret=secret, port=port)
        self.speed = speed
        self.loops = loops
        self.spacing_s = spacing_s
        self.traces = traces
        self.played = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def port(self) -> int:
        return self.server.port

    async def start(self) -> None:
        scripts = [load_scenario(self.traces / f"{name}.jsonl") for name in SCENARIOS
                   if (self.traces / f"{name}.jsonl").exists()]
        if not scripts:
            raise FileNotFoundError(f"no recorded scenarios under {self.traces}")
        await self.server.start()
        self._task = asyncio.create_task(self._play(scripts), name="demo-pbx-player")

    async def _play(self, scripts: list[Script]) -> None:
        loop = asyncio.get_running_loop()
        # wait for the daemon to log in, so it sees every call from its start
        await self.server.wait_until(lambda: self.server.logins > 0, timeout_s=3600)
        start = loop.time()
        for t, pairs in programme(scripts, self.spacing_s, self.loops):
            delay = start + t / self.speed - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.server.push(pairs)
            self.played += 1
        log.info("demo programme finished (%d events)", self.played)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.server.stop()
