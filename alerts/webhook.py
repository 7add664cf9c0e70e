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

A subclass changes what is sent and how the answer is read, and nothing else:
:meth:`WebhookSink.request` (URL, body, headers of each attempt) and
:meth:`WebhookSink.refusal` (which answers are delivered / retried / final);
the chat-bot sinks in ``alerts.chat`` do that.
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


class Retryable(Exception):
    """Raised by :meth:`WebhookSink.refusal` (or the transport) for an answer worth retrying."""

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

    # -- what a subclass (a chat-bot sink, alerts.chat) may change -------------------

    def request(self, change: AlertChange) -> tuple[str, bytes, dict[str, str]]:
        """URL, body and headers of one delivery attempt (called again for every retry, so a
        subclass can sign each attempt with a fresh timestamp)."""
        body = json.dumps(change_frame(change), ensure_ascii=False).encode("utf-8")
        headers = {"Content-Type": "application/json; charset=utf-8",
                   "Idempotency-Key": f"{change.alert.id}:{change.kind}"}
        return self.cfg.url, body, headers

    def refusal(self, status: int, answer: bytes) -> str | None:
        """None if the receiver took the change; else why it refused (final, not retried).
        Raises :class:`Retryable` for what is worth retrying (5xx, 408, 429)."""
        if status >= 500 or status in _RETRY_STATUS:
            raise Retryable(f"HTTP {status}")
        return None if status < 300 else f"HTTP {status}"  # a 4xx, or a redirect (not followed)

    # -- delivery (continued) --------------------------------------------------------

    async def _deliver(self, change: AlertChange) -> None:
        what = ""
        for attempt in range(self.cfg.max_retries + 1):
            if attempt:
                self.retries += 1
                await self._sleep(self.backoff(attempt))
            url, body, headers = self.request(change)
            try:
                status, answer = await self._post(url, body, headers)
                refused = self.refusal(status, answer)
            except Retryable as e:
                what = e.what
                log.info("webhook %s: %s %s: %s (attempt %d)", self.name, change.alert.id, change.kind, what,
                         attempt + 1)
                continue
            if refused is None:
                self.delivered += 1
                return
            self.failed += 1
            log.warning("webhook %s: %s %s refused with %s; not retried", self.name, change.alert.id,
                        change.kind, refused)
            return
        self.failed += 1
        log.warning("webhook %s: %s %s not delivered after %d attempts (last: %s)", self.name, change.alert.id,
                    change.kind, self.cfg.max_retries + 1, what)

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        """The HTTP status and (the first 64 KiB of) the answer; raises :class:`Retryable` on
        network errors and timeouts."""
        assert self._session is not None
        try:
            async with self._session.post(url, data=body, headers=headers,
                                          timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_s),
                                          allow_redirects=False) as resp:
                status = resp.status
                answer = await resp.content.read(64 * 1024)  # read, so the connection can be reused
        except TimeoutError:
            raise Retryable("timeout") from None
        except aiohttp.ClientError as e:
            raise Retryable(type(e).__name__) from None
        return status, answer
