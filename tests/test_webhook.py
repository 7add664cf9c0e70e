"""Webhook sink against a real aiohttp receiver on 127.0.0.1 port 0.

``stop()`` drains the queue before it returns, so a test offers, stops, then
looks at the counters: nothing polls, nothing sleeps.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from alerts.hub import AlertChange, AlertHub
from alerts.model import Alert
from alerts.webhook import WebhookSink
from config.schema import WebhookConfig

pytestmark = pytest.mark.usefixtures("no_leftover_tasks")

SECRET = "s3cr3t-key-in-the-url"


@dataclass
class Receiver:
    """Answers each POST with the next scripted status (the last one repeats)."""

    statuses: list[int]
    port: int = 0
    hang: bool = False
    requests: list[dict[str, Any]] = field(default_factory=list)
    arrived: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    release: asyncio.Event = field(default_factory=asyncio.Event)  # ends a hanging request

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook?key={SECRET}"

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        req = {"body": body, "headers": dict(request.headers), "query": dict(request.query)}
        self.requests.append(req)
        self.arrived.put_nowait(req)
        if self.hang:
            await self.release.wait()
        status = self.statuses[min(len(self.requests) - 1, len(self.statuses) - 1)]
        return web.json_response({"ok": status < 300}, status=status)

    async def next(self) -> dict[str, Any]:
        async with asyncio.timeout(2.0):
            return await self.arrived.get()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rcv = Receiver([200])
    app = web.Application()
    app.router.add_post("/hook", rcv.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rcv.port = runner.addresses[0][1]
    yield rcv
    rcv.release.set()
    await runner.cleanup()


def _cfg(url: str, **kw: Any) -> WebhookConfig:
    base: dict[str, Any] = {"name": "ops", "url": url, "timeout_s": 1, "max_queue": 100, "max_retries": 3,
                            "backoff_initial_s": 0.01, "backoff_max_s": 0.02}
    return WebhookConfig.model_validate(base | kw)


def _change(n: int = 1, kind: str = "opened") -> AlertChange:
    alert = Alert(id=f"A{n}", rule="IN-ANSWER", key=f"IN-ANSWER:leg{n}", severity="warning", kind="violation",
                  at=15.0, opened_wall=1_795_000_000.0, call=f"c{n}", agent="Agent 7001", queue="support",
                  caller="+86139****5678", text_zh="坐席振铃超过 15 秒", text_en="rang over 15 s")
    return AlertChange(kind, alert, "floor-a" if kind != "opened" else None)  # type: ignore[arg-type]


async def test_delivers_an_alert_change(receiver: Receiver) -> None:
    sink = WebhookSink(_cfg(receiver.url))
    await sink.start()
    try:
        sink.offer(_change(1))
        req = await receiver.next()
    finally:
        await sink.stop()
    body = req["body"]
    assert body["type"] == "alert"
    assert body["change"] == "opened"
    assert body["id"] == "A1"
    assert body["rule"] == "IN-ANSWER"
    assert body["text"]["zh"] == "坐席振铃超过 15 秒"
    assert req["headers"]["Idempotency-Key"] == "A1:opened"
    assert req["headers"]["Content-Type"].startswith("application/json")
    assert req["query"] == {"key": SECRET}
    assert (sink.delivered, sink.failed, sink.dropped, sink.retries) == (1, 0, 0, 0)


async def test_a_real_hub_feeds_the_sink_in_order(receiver: Receiver) -> None:
    hub = AlertHub(lambda: 0.0)
    sink = WebhookSink(_cfg(receiver.url))
    hub.add_sink(sink)
    await sink.start()
    try:
        alert = _change(7).alert
        hub.raise_alert(alert)
        hub.ack(alert.id, "floor-a")
        hub.resolve(alert.id, "floor-b")
        changes = [(await receiver.next())["body"] for _ in range(3)]
    finally:
        await sink.stop()
    assert [(c["change"], c["by"]) for c in changes] == [("opened", None), ("acked", "floor-a"),
                                                         ("resolved", "floor-b")]


async def test_500_then_200_is_retried_and_delivered(receiver: Receiver) -> None:
    receiver.statuses = [500, 503, 200]
    sink = WebhookSink(_cfg(receiver.url))
    await sink.start()
    sink.offer(_change(1))
    await sink.stop()  # drains the queue
    assert len(receiver.requests) == 3
    assert {r["headers"]["Idempotency-Key"] for r in receiver.requests} == {"A1:opened"}
    assert (sink.delivered, sink.failed, sink.retries) == (1, 0, 2)


async def test_4xx_is_not_retried(receiver: Receiver) -> None:
    receiver.statuses = [400, 200]
    sink = WebhookSink(_cfg(receiver.url))
    await sink.start()
    sink.offer(_change(1))
    sink.offer(_change(2))
    await sink.stop()  # drains the queue
    assert [r["body"]["id"] for r in receiver.requests] == ["A1", "A2"]
    assert (sink.delivered, sink.failed, sink.retries) == (1, 1, 0)


async def test_gives_up_after_max_retries(receiver: Receiver) -> None:
    receiver.statuses = [502]
    sink = WebhookSink(_cfg(receiver.url, max_retries=2))
    await sink.start()
    sink.offer(_change(1))
    await sink.stop()  # drains the queue
    assert len(receiver.requests) == 3
    assert sink.retries == 2
    assert sink.delivered == 0


async def test_network_errors_are_retried_and_the_url_is_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="alerts.webhook")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sink = WebhookSink(_cfg(f"http://127.0.0.1:{port}/hook?key={SECRET}", max_retries=2))
    await sink.start()
    sink.offer(_change(1))
    await sink.stop()  # drains the queue
    assert sink.retries == 2
    assert sink.delivered == 0
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "ops" in text
    assert "not delivered after 3 attempts" in text
    assert SECRET not in text
    assert str(port) not in text


def test_queue_full_drops_the_newest_and_offer_never_blocks(caplog: pytest.LogCaptureFixture) -> None:
    sink = WebhookSink(_cfg("http://127.0.0.1:9/hook", max_queue=2))  # not started: nothing drains
    t0 = time.perf_counter()
    for n in range(10):
        sink.offer(_change(n))
    elapsed = time.perf_counter() - t0
    assert elapsed < 0.05
    assert (sink.pending, sink.dropped) == (2, 8)
    assert [r.levelname for r in caplog.records if "dropped" in r.getMessage()] == ["WARNING"]  # no flood


async def test_queued_changes_are_delivered_once_started(receiver: Receiver) -> None:
    sink = WebhookSink(_cfg(receiver.url, max_queue=2))
    for n in range(5):
        sink.offer(_change(n))
    await sink.start()
    await sink.stop()  # drains the queue
    assert [r["body"]["id"] for r in receiver.requests] == ["A0", "A1"]  # the oldest kept, the newest dropped
    assert sink.dropped == 3


async def test_stop_drains_then_ends_the_task(receiver: Receiver) -> None:
    sink = WebhookSink(_cfg(receiver.url))
    await sink.start()
    for n in range(3):
        sink.offer(_change(n))
    await sink.stop()
    assert sink.delivered == 3
    assert not sink.running
    sink.offer(_change(9))  # after stop: dropped, counted
    assert sink.dropped == 1
    assert sink.pending == 0


async def test_stop_is_bounded_when_the_receiver_hangs(receiver: Receiver) -> None:
    receiver.hang = True
    sink = WebhookSink(_cfg(receiver.url, timeout_s=30))
    await sink.start()
    sink.offer(_change(1))
    sink.offer(_change(2))
    await receiver.next()
    t0 = asyncio.get_running_loop().time()
    await sink.stop(drain_timeout=0.05)
    assert asyncio.get_running_loop().time() - t0 < 1.0
    assert not sink.running
    assert sink.delivered == 0
    assert sink.dropped == 2  # the one still queued and the one in flight


def test_backoff_is_capped_exponential_with_jitter() -> None:
    sink = WebhookSink(_cfg("http://x.invalid/", backoff_initial_s=0.5, backoff_max_s=4), rng=random.Random(1))
    for attempt, base in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 4.0), (10, 4.0)]:
        for _ in range(20):
            assert base * 0.5 <= sink.backoff(attempt) <= base


def test_body_is_json_with_chinese_text_kept() -> None:
    from alerts.ws import change_frame

    body = json.dumps(change_frame(_change(3, "acked")), ensure_ascii=False)
    assert "坐席" in body
    assert '"by": "floor-a"' in body
