"""Write-behind to Redis for state whose API is synchronous (the audit trail, QA samples and reviews, browser
sessions).

The owner keeps its state in memory (what it answers from) and hands every change to a
:class:`RedisWriter` as an operation (``async (client) -> None``).  :meth:`RedisWriter.submit`
never blocks and never raises: operations are queued (bounded) and run **in order** by one
task, retried with backoff while Redis is down; :meth:`RedisWriter.settled` waits (bounded) until
what was submitted so far is written, for answers that must only say "saved" once it is.  At start the owner
loads its state back from Redis; :meth:`RedisWriter.stop` writes what is queued first (a few
seconds at most), so a clean restart loses nothing.  The client is the commitments' Redis
client (``decode_responses=True``), shared, never closed here.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

#: one write: run against the client; raising a Redis / OS error makes it retried
Op = Callable[[aioredis.Redis], Awaitable[Any]]


class RedisWriter:
    def __init__(self, client: aioredis.Redis, name: str, *, queue_limit: int = 10_000,
                 retry_max_s: float = 30.0) -> None:
        self.client = client
        self.name = name
        self._queue: collections.deque[Op] = collections.deque()
        self._queue_limit = queue_limit
        self._retry_max = retry_max_s
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self.written = 0
        self._submitted = 0  # operations accepted into the queue so far
        self._settled = 0  # of those, finished (written, or dropped as a bug)
        self._progress = asyncio.Event()
        self.dropped = 0  # queue full (Redis down too long)
        self.failures = 0

    @property
    def pending(self) -> int:
        return len(self._queue)

    def submit(self, op: Op) -> bool:
        """Queue a write (never blocks, never raises).  False: the queue is full, the write is dropped."""
        if len(self._queue) >= self._queue_limit:
            self.dropped += 1
            log.error("%s: Redis write queue full (%d): a change was not persisted", self.name, self._queue_limit)
            return False
        self._queue.append(op)
        self._submitted += 1
        self._idle.clear()
        self._wake.set()
        return True

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"{self.name}-redis-writer")

    async def flush(self) -> None:
        """Wait until every submitted write is done."""
        if self._task is None:
            await self.start()
        await self._idle.wait()

    async def settled(self, timeout_s: float) -> bool:
        """Wait (at most ``timeout_s``) until every write submitted *so far* is in Redis — later ones
        don't hold it up.  For API answers that must only say "saved" once it is: False = not yet (Redis
        down or slow); the writes stay queued and are retried."""
        target = self._submitted
        if self._task is None:
            await self.start()
        try:
            async with asyncio.timeout(timeout_s):
                while self._settled < target:
                    self._progress.clear()
                    await self._progress.wait()
        except TimeoutError:
            return False
        return True

    async def stop(self, timeout_s: float = 5.0) -> None:
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self.flush()
        if self._queue:
            log.error("%s: %d changes not written to Redis at shutdown", self.name, len(self._queue))
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _run(self) -> None:
        delay = 0.1
        while True:
            if not self._queue:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                await self._queue[0](self.client)
            except (RedisError, OSError, TimeoutError) as exc:
                self.failures += 1
                log.warning("%s: Redis write failed (%s); retrying in %.1fs", self.name, type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max)
                continue
            except Exception:  # a bug in the op: do not retry it forever
                log.exception("%s: a Redis write failed; dropped", self.name)
            delay = 0.1
            self._queue.popleft()
            self.written += 1
            self._settled += 1
            self._progress.set()
