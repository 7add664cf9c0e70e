"""QA state and browser sessions survive a restart: both live in Redis (the commitments' server) when
there is one, written behind and loaded back at start; without Redis they stay in memory."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from alerts.hub import AlertHub
from config.schema import Config
from monitor.auth import SESSION_COOKIE, Principal, SessionStore, TokenStore, UserDirectory, hash_password
from monitor.clock import VirtualClock
from monitor.engine import Monitor
from monitor.persist import RedisWriter
from monitor.qa import Finished
from monitor.redis_embedded import EmbeddedRedis
from monitor.ui import UI, UiRuntime
from monitor.web import REGISTRY, build_app
from telephony.events import AgentRinging, CallAnswered, CallOffered, QueueJoined

pytestmark = pytest.mark.usefixtures("no_leftover_tasks")

PASSWORD = "correct horse battery"
PREFIX = "t:"
WALL = 1_795_000_000.0
HASH = hash_password(PASSWORD, n=2**10)


def _cfg(**ui: Any) -> Config:
    return Config.model_validate({"ui": {"cookie_secure": False, "qa": {"seed": 3}, **ui,
        "users": [{"name": "sup-a", "role": "supervisor", "teams": ["a"], "password_hash": HASH},
                  {"name": "qa1", "role": "qa", "password_hash": HASH}],
        "teams": {"a": {"agents": ["Agent 7001", "Agent 7002"]}}}})



@pytest.fixture
async def redis_client(redis_server: EmbeddedRedis) -> AsyncIterator[aioredis.Redis]:
    assert redis_server.url is not None
    client = aioredis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


@asynccontextmanager
async def running(client: aioredis.Redis | None, cfg: Config | None = None
                  ) -> AsyncIterator[tuple[TestClient[Any, Any], UiRuntime]]:
    """One ringwatch web app (a 'process'): started, then stopped (its writers flushed) on exit."""
    cfg = cfg or _cfg()
    clock = VirtualClock(wall_origin=WALL)
    hub = AlertHub(clock.now)
    app = build_app(Monitor(cfg, clock, hub), hub, cfg, CollectorRegistry(), tokens=TokenStore())
    rt = app[UI]
    if client is not None:
        rt.use_redis(client, PREFIX)
    async with TestClient(TestServer(app)) as tc:
        yield tc, rt


def _sample(tc: TestClient[Any, Any], name: str, **labels: str) -> float:
    """One sample of the app's Prometheus registry, by name and labels."""
    text = generate_latest(tc.server.app[REGISTRY]).decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    raise AssertionError(f"no sample {name}{labels}")


def _calls(n: int) -> list[Finished]:
    return [Finished(f"c{i:03d}", f"Agent 700{1 + i % 2}", "inbound" if i % 3 else "outbound",
                     frozenset({"complaint"}) if i % 7 == 0 else frozenset(), WALL - 3600 + i, "support")
            for i in range(n)]


async def test_qa_samples_reviews_appeals_and_tallies_survive_a_restart(redis_client: aioredis.Redis) -> None:
    async with running(redis_client) as (_, rt):
        qa = rt.qa
        for c in _calls(60):
            qa.add(c)
        day = qa.day_of(WALL)
        picked = [s.call.id for s in qa.run_sample(day)]
        assert len(picked) >= 6
        qa.review(picked[0], "qa1", {"attitude": 5, "comment": "语气生硬"})
        qa.review(picked[1], "qa1", {"fatal": True})
        qa.appeal(picked[1], "Agent 7002", "录音听错了")
        qa.review(picked[2], "qa1", {"skills": 10})
        qa.appeal(picked[2], "Agent 7001", "不同意")
        qa.review(picked[2], "qa2", {"skills": 2})  # the re-review
        qa.record_monitoring("Agent 7001", "random", "sup-a", "c001", WALL)
        qa.record_monitoring("Agent 7001", "onsite", "sup-a", "c003", WALL + 1)
        qa.record_monitoring("Agent 7002", "random", "sup-a", "c002", WALL + 2)
        before_rows = qa.query()
        before_week = qa.week({"Agent 7001", "Agent 7002"})
    # written to Redis, not only kept in memory
    assert await redis_client.hlen(f"{PREFIX}qa:sample") == len(picked)
    assert await redis_client.llen(f"{PREFIX}qa:mon") == 3

    async with running(redis_client) as (_, rt2):  # the restart: a new service on the same Redis
        qa2 = rt2.qa
        assert qa2.query() == before_rows
        assert qa2.week({"Agent 7001", "Agent 7002"}) == before_week
        states = {r["call"]: (r["state"], r["score"]) for r in qa2.query()}
        assert states[picked[0]] == ("reviewed", 95.0)
        assert states[picked[1]] == ("appealed", None)
        assert states[picked[2]] == ("rereviewed", 98.0)
        assert day in qa2.sampled_days
        assert len(qa2.finished[day]) == 60  # the day's calls too: re-running the sample gives the same one
        assert [s.call.id for s in qa2.run_sample(day)] == picked
        qa2.review(picked[1], "qa2", {})  # the appeal goes on after the restart
    async with running(redis_client) as (_, rt3):
        assert {r["call"]: r["state"] for r in rt3.qa.query()}[picked[1]] == "rereviewed"


async def test_a_review_is_answered_200_only_once_it_is_in_redis(redis_client: aioredis.Redis) -> None:
    async with running(redis_client) as (tc, rt):
        for c in _calls(30):
            rt.qa.add(c)
        picked = [s.call.id for s in rt.qa.run_sample(rt.qa.day_of(WALL))]
        r = await tc.post("/api/v1/session", json={"name": "qa1", "password": PASSWORD})
        headers = {"X-CSRF-Token": (await r.json())["csrf"]}
        r = await tc.post(f"/api/v1/qa/samples/{picked[0]}/review", json={"attitude": 4}, headers=headers)
        assert r.status == 200
        assert (await r.json())["persisted"] is True
        stored = json.loads(await redis_client.hget(f"{PREFIX}qa:sample", picked[0]) or "{}")
        assert stored["reviews"][0]["score"] == 96.0  # already in Redis when the answer came

        # Redis stops taking writes: the review is kept and the answer says so (202), then it is written
        rt.qa.persist_timeout_s = 0.3
        await redis_client.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")
        try:
            r = await tc.post(f"/api/v1/qa/samples/{picked[1]}/review", json={"fatal": True}, headers=headers)
            assert r.status == 202
            body = await r.json()
            assert body["persisted"] is False
            assert "恢复后自动写入" in body["message"]["zh"]
            assert body["sample"]["state"] == "reviewed"
            assert await redis_client.hget(f"{PREFIX}qa:sample", picked[1]) is not None  # the sampled row only
            assert json.loads(await redis_client.hget(f"{PREFIX}qa:sample", picked[1]) or "{}")["reviews"] == []
        finally:
            await redis_client.execute_command("CLIENT", "UNPAUSE")
        assert rt.qa.writer is not None
        assert await rt.qa.writer.settled(5.0)
        stored = json.loads(await redis_client.hget(f"{PREFIX}qa:sample", picked[1]) or "{}")
        assert stored["reviews"][0]["fatal"] is True


async def test_a_review_that_finds_the_write_queue_full_is_written_once_redis_is_back(
        redis_client: aioredis.Redis) -> None:
    async with running(redis_client) as (tc, rt):
        for c in _calls(30):
            rt.qa.add(c)
        picked = [s.call.id for s in rt.qa.run_sample(rt.qa.day_of(WALL))]
        assert rt.qa.writer is not None
        await rt.qa.writer.settled(5.0)
        await rt.qa.writer.stop()
        rt.qa.writer = RedisWriter(redis_client, "qa", queue_limit=1)  # Redis has been down for long
        rt.qa.persist_timeout_s = 0.3
        r = await tc.post("/api/v1/session", json={"name": "qa1", "password": PASSWORD})
        headers = {"X-CSRF-Token": (await r.json())["csrf"]}
        await redis_client.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")
        try:
            first = await tc.post(f"/api/v1/qa/samples/{picked[0]}/review", json={"attitude": 1}, headers=headers)
            second = await tc.post(f"/api/v1/qa/samples/{picked[1]}/review", json={"norms": 2}, headers=headers)
            assert (first.status, second.status) == (202, 202)  # the second could not even be queued
            assert (await second.json())["persisted"] is False
            # what an SRE sees meanwhile on /metrics
            assert _sample(tc, "ringwatch_store_write_queue", writer="qa") == 2  # one queued, one waiting for room
            assert _sample(tc, "ringwatch_store_writes_lost_total", writer="qa") == 0
        finally:
            await redis_client.execute_command("CLIENT", "UNPAUSE")
        # Redis is back: the next answer queues what was left out, in its current state
        assert await rt.qa.persisted() is True
        assert _sample(tc, "ringwatch_store_write_queue", writer="qa") == 0
        stored = {c: json.loads(await redis_client.hget(f"{PREFIX}qa:sample", c) or "{}") for c in picked[:2]}
        assert stored[picked[0]]["reviews"][0]["score"] == 99.0
        assert stored[picked[1]]["reviews"][0]["score"] == 98.0


async def test_no_listening_in_without_an_audit_entry_in_redis(redis_client: aioredis.Redis) -> None:
    cfg = Config.model_validate({"ui": {"cookie_secure": False, "users": [
        {"name": "sup-a", "role": "supervisor", "teams": ["a"], "phone": "PJSIP/8001", "password_hash": HASH}],
        "teams": {"a": {"agents": ["Agent 7001"]}}}})
    async with running(redis_client, cfg) as (tc, rt):
        sent: list[str] = []

        async def originate(phone: str, call: str, agent: str, mode: str, options: str, spy_id: str) -> str:
            # what the PBX is asked happens only after the request is in the audit stream
            stream = await redis_client.xrange(f"{PREFIX}audit")
            assert [f["action"] for _, f in stream][-1] == "spy.request"
            sent.append(call)
            return "PJSIP/7001-00000001"

        rt.set_originate(originate)
        m = rt.spy.monitor
        m.handle(CallOffered(0.0, "c1", "inbound", "+8613900000001", "张三", 0.0))
        m.handle(QueueJoined(0.0, "c1", "support", 0.0))
        m.handle(AgentRinging(0.0, "c1", "leg1", "Agent 7001", "support", 0.0))
        m.handle(CallAnswered(1.0, "c1", "leg1", "Agent 7001", "support"))
        r = await tc.post("/api/v1/session", json={"name": "sup-a", "password": PASSWORD})
        headers = {"X-CSRF-Token": (await r.json())["csrf"]}
        r = await tc.post("/api/v1/calls/c1/spy", json={"mode": "listen"}, headers=headers)
        assert r.status == 201, await r.text()
        assert sent == ["c1"]

        # Redis stops taking writes: the request cannot be audited, so the PBX is never asked
        rt.spy.audit_timeout_s = 0.3
        await redis_client.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")
        try:
            r = await tc.post("/api/v1/calls/c1/spy", json={"mode": "barge"}, headers=headers)
            assert r.status == 503
            body = await r.json()
            assert body["error"] == "audit_unavailable"
            assert "审计" in body["message"]["zh"]
        finally:
            await redis_client.execute_command("CLIENT", "UNPAUSE")
        assert sent == ["c1"]
        await rt.audit.flush()
    # the refused request and why are in the trail once Redis takes writes again
    stream = await redis_client.xrange(f"{PREFIX}audit")
    spy = [(f["action"], json.loads(f["details"]).get("mode"), json.loads(f["details"]).get("reason"))
           for _, f in stream if f["action"].startswith("spy.")]
    assert spy == [("spy.request", "listen", None), ("spy.request", "barge", None),
                   ("spy.failed", "barge", "audit_unavailable")]


async def test_qa_without_redis_stays_in_memory() -> None:
    async with running(None) as (_, rt):
        assert rt.qa.writer is None
        rt.qa.record_monitoring("Agent 7001", "random", "sup-a", "c1", WALL)
        assert rt.qa.week({"Agent 7001"})["agents"][0]["random"] == 1
    async with running(None) as (_, rt2):
        assert rt2.qa.week({"Agent 7001"})["agents"][0]["random"] == 0


async def test_sessions_survive_a_restart_with_a_ttl_and_logout_ends_them(redis_client: aioredis.Redis) -> None:
    cfg = _cfg(session_ttl_min=30)
    async with running(redis_client, cfg) as (tc, _):
        r = await tc.post("/api/v1/session", json={"name": "sup-a", "password": PASSWORD})
        assert r.status == 200
        sid, csrf = r.cookies[SESSION_COOKIE].value, (await r.json())["csrf"]
        r = await tc.post("/api/v1/session", json={"name": "qa1", "password": PASSWORD})
        other = r.cookies[SESSION_COOKIE].value
    keys = sorted(await redis_client.keys(f"{PREFIX}sess:*"))
    assert len(keys) == 2
    assert all(sid not in k and other not in k for k in keys)  # only digests of the ids are stored
    for k in keys:
        assert 29 * 60 * 1000 < await redis_client.pttl(k) <= 30 * 60 * 1000  # the session's TTL

    async with running(redis_client, cfg) as (tc, _):  # restarted: still logged in, same CSRF token
        tc.session.cookie_jar.clear()
        r = await tc.get("/api/v1/session", headers={"Cookie": f"{SESSION_COOKIE}={sid}"})
        assert r.status == 200, await r.text()
        me = await r.json()
        assert (me["name"], me["teams"], me["csrf"]) == ("sup-a", ["a"], csrf)
        r = await tc.delete("/api/v1/session", headers={"Cookie": f"{SESSION_COOKIE}={sid}", "X-CSRF-Token": csrf})
        assert r.status == 200
    assert len(await redis_client.keys(f"{PREFIX}sess:*")) == 1  # logout removed it from Redis too

    async with running(redis_client, cfg) as (tc, _):
        tc.session.cookie_jar.clear()
        r = await tc.get("/api/v1/session", headers={"Cookie": f"{SESSION_COOKIE}={sid}"})
        assert r.status == 401
        r = await tc.get("/api/v1/session", headers={"Cookie": f"{SESSION_COOKIE}={other}"})
        assert r.status == 200

    # a user removed from the configuration is not logged back in
    async with running(redis_client, Config.model_validate({"ui": {"cookie_secure": False}})) as (tc, _):
        tc.session.cookie_jar.clear()
        r = await tc.get("/api/v1/session", headers={"Cookie": f"{SESSION_COOKIE}={other}"})
        assert r.status == 401


async def test_an_expired_session_is_not_loaded(redis_client: aioredis.Redis) -> None:
    now = [1000.0]
    users = UserDirectory(_cfg().ui.users)
    store = SessionStore(60, now=lambda: now[0])
    store.use_redis(redis_client, PREFIX, users)
    await store.start()
    sid, _ = store.create(Principal("sup-a", "supervisor", frozenset({"a"})))
    await store.stop()
    # the key's own TTL is what Redis expires on; the stored expiry guards a clock that moved on
    fresh = SessionStore(60, now=lambda: now[0] + 59)
    fresh.use_redis(redis_client, PREFIX, users)
    await fresh.start()
    assert fresh.get(sid) is not None
    await fresh.stop()
    late = SessionStore(60, now=lambda: now[0] + 61)
    late.use_redis(redis_client, PREFIX, users)
    await late.start()
    assert late.get(sid) is None
    assert len(late) == 0
    await late.stop()
