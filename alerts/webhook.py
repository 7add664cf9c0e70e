"""Alert changes POSTed as JSON to an HTTP endpoint (chat bots, ticketing, paging).

:class:`WebhookSink` is an alert-hub :class:`~alerts.hub.Sink`: ``offer`` puts
the change in a bounded queue (``max_queue``; when full the *newest* change is
dropped and counted) and one named sender task delivers them in order.
Network errors, timeouts, 5xx, 408 and 429 are retried ``max_retries`` times
with capped exponential backoff and jitter; other 4xx answers are final (the
receiver rejected the request; sending it again would not help).

The URL may carry a secret (chat-bot webhooks put the key in the path or the
query), so it is never logged: logs name the webhook (``cfg.name``) only, and
exceptions are logged by type, since aiohttp's messages may include the URL.

Body: the same object as a websocket frame (``alerts.ws.change_frame``):
``{"type": "alert" | "notice", "change": "opened" | "acked" | "resolved", "by", ...}``,
with an ``Idempotency-Key: <alert id>:<change>`` header so a receiver can
discard a retried duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Final

import aiohttp

from alerts.hub import AlertChange
from alerts.ws import change_frame
from config.schema import WebhookConfig

log = logging.getLogger(__name__)

SessionFactory = Callable[[], aiohttp.ClientSession]

_RETRY_STATUS: Final = frozenset({408, 429})
_USER_AGENT: Final = "ringwatch-webhook/1"


def default_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(headers={"User-Agent": _USER_AGENT}, trust_env=False)


class _Retryable(Exception):
    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


class WebhookSink:
    """One webhook endpoint: bounded queue, one sender task, retries with backoff."""

    def __init__(self, cfg: WebhookConfig, session_factory: SessionFactory = default_session, *,
                 rng: random.Random | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self._factory = session_factory
        self._rng = rng or random.Random()
        self._sleep = sleep
        self._queue: asyncio.Queue[AlertChange] = asyncio.Queue(cfg.max_queue)
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        # every offered change ends up in exactly one of: delivered, failed, dropped (or is pending)
        self.delivered = 0
        self.failed = 0  # gave up (final 4xx, or retries exhausted)
        self.dropped = 0  # queue full, offered after stop(), or not delivered by stop()'s deadline
        self.retries = 0

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    # -- Sink ------------------------------------------------------------------------

    def offer(self, change: AlertChange) -> None:
        if self._stopping:
            self._count_drop("stopped")
            return
        try:
            self._queue.put_nowait(change)
        except asyncio.QueueFull:
            self._count_drop(f"queue full ({self.cfg.max_queue})")

    def _count_drop(self, why: str) -> None:
        self.dropped += 1
        if self.dropped == 1 or self.dropped % 100 == 0:  # not one line per drop in a flood
            log.warning("webhook %s: dropped an alert change: %s (%d dropped so far)", self.name, why, self.dropped)

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError(f"webhook {self.name} already started")
        self._session = self._factory()
        self._task = asyncio.create_task(self._run(), name=f"webhook-{self.name}")
        self._task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("webhook %s: sender task failed", self.name, exc_info=task.exception())

    async def stop(self, drain_timeout: float = 5.0) -> None:
        """Refuse new changes, deliver what is queued for up to ``drain_timeout`` s, then cancel and await."""
        self._stopping = True
        task, self._task = self._task, None
        if task is not None:
            if not task.done():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(drain_timeout):
                        await self._queue.join()
                task.cancel()
            await asyncio.wait([task])
        left = self._queue.qsize()
        if left:
            log.warning("webhook %s: %d alert changes not delivered at shutdown", self.name, left)
            self.dropped += left
            while not self._queue.empty():
                self._queue.get_nowait()
                self._queue.task_done()
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- delivery --------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            change = await self._queue.get()
            try:
                await self._deliver(change)
            except asyncio.CancelledError:
                self.dropped += 1  # in flight when stop() gave up waiting
                raise
            except Exception as exc:  # a bug, not the network: keep the sender alive
                self.failed += 1
                log.error("webhook %s: delivery of %s failed: %s", self.name, change.alert.id, type(exc).__name__)
            finally:
                self._queue.task_done()

    def backoff(self, attempt: int) -> float:
        """Delay before retry ``attempt`` (1-based): capped exponential, jittered to 50-100 %."""
        base = min(self.cfg.backoff_max_s, self.cfg.backoff_initial_s * 2.0 ** (attempt - 1))
        return base * (0.5 + self._rng.random() / 2)

    async def _deliver(self, change: AlertChange) -> None:
        body = json.dumps(change_frame(change), ensure_ascii=False).encode("utf-8")
        headers = {"Content-Type": "application/json; charset=utf-8",
                   "Idempotency-Key": f"{change.alert.id}:{change.kind}"}
        what = ""
        for attempt in range(self.cfg.max_retries + 1):
            if attempt:
                self.retries += 1
                await self._sleep(self.backoff(attempt))
            try:
                status = await self._post(body, headers)
            except _Retryable as e:
                what = e.what
                log.info("webhook %s: %s %s: %s (attempt %d)", self.name, change.alert.id, change.kind, what,
                         attempt + 1)
                continue
            if status < 300:
                self.delivered += 1
                return
            self.failed += 1  # a 4xx (or a redirect, which is not followed)
            log.warning("webhook %s: %s %s refused with HTTP %d; not retried", self.name, change.alert.id,
                        change.kind, status)
            return
        self.failed += 1
        log.warning("webhook %s: %s %s not delivered after %d attempts (last: %s)", self.name, change.alert.id,
                    change.kind, self.cfg.max_retries + 1, what)

    async def _post(self, body: bytes, headers: dict[str, str]) -> int:
        """The final HTTP status; raises :class:`_Retryable` for what is worth retrying."""
        assert self._session is not None
        try:
            async with self._session.post(self.cfg.url, data=body, headers=headers,
                                          timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_s),
                                          allow_redirects=False) as resp:
                status = resp.status
                await resp.content.read(64 * 1024)  # a small body is read so the connection can be reused
        except TimeoutError:
            raise _Retryable("timeout") from None
        except aiohttp.ClientError as e:
            raise _Retryable(type(e).__name__) from None
        if status >= 500 or status in _RETRY_STATUS:
            raise _Retryable(f"HTTP {status}")
        return status
