"""The audit trail in a real Redis stream: the shared entry shape, append-only, order, filters, sink."""

from __future__ import annotations

import pytest

from alerts.hub import AlertChange
from alerts.model import Alert
from config.schema import RedisConfig
from monitor.audit import FIELDS, AuditLog
from monitor.redis_embedded import EmbeddedRedis
from monitor.store import client_from_config

pytestmark = pytest.mark.usefixtures("no_leftover_tasks")


async def test_entries_go_to_the_redis_stream_in_order(redis_server: EmbeddedRedis) -> None:
    client = client_from_config(redis_server.url, RedisConfig())
    log = AuditLog(client, "ringwatch:audit", now=lambda: 1_795_000_000.0)
    await log.start()
    try:
        log.record("sup1", "spy.start", "c1", {"mode": "listen", "agent": "Agent 7001"})
        log.record("ops", "dnc.add", "+86139****5678", {"days": 90})
        alert = Alert("A1", "IN-ANSWER", "k", "warning", "violation", 0.0, 0.0, "c1", "Agent 7001", "support",
                      None, "zh", "en")
        log.offer(AlertChange("acked", alert, "sup2"))
        await log.flush()
        raw = await client.xrange("ringwatch:audit")
        assert [tuple(sorted(f)) for _, f in raw] == [tuple(sorted(FIELDS))] * 3
        rows = await log.query(limit=10)
        assert [(r["actor"], r["action"], r["target"]) for r in rows] == [
            ("sup2", "alert.ack", "A1"), ("ops", "dnc.add", "+86139****5678"), ("sup1", "spy.start", "c1")]
        assert rows[2]["details"] == {"mode": "listen", "agent": "Agent 7001"}
        assert rows[2]["ts"] == 1_795_000_000.0
        assert [r["action"] for r in await log.query(action="spy")] == ["spy.start"]
        assert [r["actor"] for r in await log.query(actor="ops")] == ["ops"]
    finally:
        await log.stop()
        await client.aclose()
