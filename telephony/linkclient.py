"""The lifecycle both PBX clients (AMI, ESL) share: one owned supervisor task that keeps a link up,
started and stopped here; the protocol specifics stay in each client."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Self

log = logging.getLogger(__name__)


class LinkClient:
    """Subclasses set ``name``, ``kind`` ("AMI"/"ESL"), ``stats`` (with ``connected`` and
    ``last_error``) and ``_link``, and implement ``_supervise()`` and ``_goodbye()``."""

    name: str
    kind: str
    stats: Any
    _link: Any

    def _init_lifecycle(self) -> None:
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._up = asyncio.Event()

    @property
    def connected(self) -> bool:
        return bool(self.stats.connected)

    @property
    def last_error(self) -> str | None:
        error: str | None = self.stats.last_error
        return error

    async def wait_connected(self) -> None:
        """Return once a link is up (logged in); bound it with ``asyncio.timeout``."""
        await self._up.wait()

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError(f"{self.kind} client already started")
        self._stopping = False
        self._task = asyncio.create_task(self._supervise(), name=f"{self.name}-supervisor")
        self._task.add_done_callback(self._supervisor_done)

    async def stop(self) -> None:
        """Say goodbye (briefly, if a link is up), cancel every task and wait for them."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        if self._link is not None and not task.done():
            await self._goodbye()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _supervisor_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("%s supervisor crashed: the %s link will not come back", self.name, self.kind,
                      exc_info=task.exception())

    async def _supervise(self) -> None:
        raise NotImplementedError  # each client's reconnect loop

    async def _goodbye(self) -> None:
        raise NotImplementedError  # Logoff / exit, bounded, errors suppressed
