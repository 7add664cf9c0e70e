"""The audit trail in a real Redis stream: the shared entry shape, append-only, order, filters, sink."""

from __future__ import annotations

import itertools
from pathlib import Path

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


async def test_entries_redis_cannot_take_wait_on_disk_and_reach_the_stream_after_a_restart(
        redis_server: EmbeddedRedis, tmp_path: Path) -> None:
    client = client_from_config(redis_server.url, RedisConfig())
    spill = tmp_path / "data" / "audit-spill.jsonl"
    ticks = itertools.count(1_795_000_000)
    log = AuditLog(client, "ringwatch:audit", now=lambda: float(next(ticks)), spill_path=spill, queue_limit=2,
                   stop_timeout_s=0.2)
    await log.start()
    await client.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")  # Redis stops taking writes
    try:
        queued = [log.record("sup1", "alert.ack", f"A{i}", {"i": i}) for i in range(5)]
        assert queued == [True, True, False, False, False]  # the queue holds two; three overflow to disk
        await log.stop()  # the two still queued go to disk too: nothing is lost with the process
    finally:
        await client.execute_command("CLIENT", "UNPAUSE")
    assert log.spilled == 5
    assert log.dropped == 0
    assert len(spill.read_text(encoding="utf-8").splitlines()) == 5
    assert await client.xlen("ringwatch:audit") == 0

    again = AuditLog(client, "ringwatch:audit", spill_path=spill)  # the next start, Redis back
    await again.start()
    try:
        again.record("sup2", "alert.resolve", "A9")
        await again.flush()
    finally:
        await again.stop()
    rows = await client.xrange("ringwatch:audit")
    assert [f["target"] for _, f in rows] == ["A0", "A1", "A2", "A3", "A4", "A9"]  # the kept ones first, in order
    assert not spill.exists()
    assert not spill.with_suffix(".jsonl.replaying").exists()
    await client.aclose()
