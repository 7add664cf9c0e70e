"""Authorisation of every endpoint by role, team-scoped spying, CSRF on sessions, and the audit of spies."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from alerts.hub import AlertHub
from config.schema import Config
from monitor.auth import TokenStore, hash_password
from monitor.clock import VirtualClock
from monitor.engine import Monitor
from monitor.ui import UI
from monitor.web import build_app
from telephony.events import AgentRinging, CallAnswered, CallOffered, QueueJoined, SpyStarted, SpyStopped

pytestmark = pytest.mark.usefixtures("no_leftover_tasks")

TOKENS = {role: f"{role}-token-0123456789" for role in ("agent", "qa", "supervisor", "admin", "wallboard")}
PASSWORD = "correct horse battery"

# endpoint -> roles allowed (None: no token needed)
MATRIX: list[tuple[str, str, set[str] | None]] = [
    ("GET", "/api/v1/alerts", {"qa", "supervisor", "admin"}),
    ("GET", "/api/v1/calls", {"qa", "supervisor", "admin"}),
    ("GET", "/api/v1/agents", {"agent", "qa", "supervisor", "admin", "wallboard"}),
    ("GET", "/api/v1/kpi", {"agent", "qa", "supervisor", "admin", "wallboard"}),
    ("GET", "/api/v1/spy", {"supervisor", "admin"}),
    ("POST", "/api/v1/calls/c2/spy", {"supervisor", "admin"}),
    ("GET", "/api/v1/qa/week", {"qa", "supervisor", "admin"}),
    ("GET", "/api/v1/qa/samples", {"qa", "supervisor", "admin"}),
    ("POST", "/api/v1/qa/samples/run", {"qa", "supervisor", "admin"}),
    ("GET", "/api/v1/audit", {"admin"}),
    ("GET", "/api/v1/session", {"agent", "qa", "supervisor", "admin", "wallboard"}),
    ("GET", "/api/v1/openapi.json", None),
    ("GET", "/metrics", {"agent", "qa", "supervisor", "admin", "wallboard"}),
]


class Rig:
    def __init__(self, client: TestClient[Any, Any], monitor: Monitor, clock: VirtualClock,
                 originates: list[tuple[Any, ...]]) -> None:
        self.client, self.monitor, self.clock, self.originates = client, monitor, clock, originates

    def h(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKENS[role]}"}


def talking(monitor: Monitor, call: str, agent: str, queue: str) -> None:
    monitor.handle(CallOffered(0.0, call, "inbound", "+8613900000001", "张三", 0.0))
    monitor.handle(QueueJoined(0.0, call, queue, 0.0))
    monitor.handle(AgentRinging(0.0, call, f"{call}-leg", agent, queue, 0.0))
    monitor.handle(CallAnswered(1.0, call, f"{call}-leg", agent, queue))


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    h = hash_password(PASSWORD)
    cfg = Config.model_validate({"ui": {"cookie_secure": False,  # aiohttp's test client: plain http
        "users": [{"name": "sup-a", "role": "supervisor", "teams": ["a"], "phone": "PJSIP/8001", "password_hash": h},
                  {"name": "sup-b", "role": "supervisor", "teams": ["b"], "phone": "PJSIP/8002", "password_hash": h},
                  {"name": "agent1", "role": "agent", "teams": ["a"], "password_hash": h}],
        "teams": {"a": {"agents": ["Agent 7001"], "queues": ["support"]},
                  "b": {"agents": ["Agent 7002"], "queues": ["claims"]}}}})
    clock = VirtualClock(wall_origin=1_795_000_000.0)
    hub = AlertHub(clock.now)
    monitor = Monitor(cfg, clock, hub)
    tokens = TokenStore([(tok, f"tok-{role}", role) for role, tok in TOKENS.items()])  # type: ignore[misc]
    app = build_app(monitor, hub, cfg, CollectorRegistry(), tokens=tokens)
    originates: list[tuple[Any, ...]] = []

    async def originate(phone: str, call: str, agent: str, mode: str, options: str, spy_id: str) -> str:
        originates.append((phone, call, agent, mode, options, spy_id))
        return "Local/7001@agents-00000001;1"

    app[UI].set_originate(originate)
    talking(monitor, "c1", "Agent 7001", "support")
    talking(monitor, "c2", "Agent 7002", "claims")
    async with TestClient(TestServer(app)) as client:
        yield Rig(client, monitor, clock, originates)


@pytest.mark.parametrize(("method", "path", "allowed"), MATRIX)
async def test_every_role_against_every_endpoint(rig: Rig, method: str, path: str, allowed: set[str] | None) -> None:
    body = {"mode": "listen"} if path.endswith("/spy") else {}
    r = await rig.client.request(method, path, json=body if method == "POST" else None)
    assert r.status == (200 if allowed is None else 401), await r.text()
    for role in TOKENS:
        r = await rig.client.request(method, path, headers=rig.h(role), json=body if method == "POST" else None)
        if allowed is None or role in allowed:
            # a token has no phone: spying answers 422 after authorisation passed
            assert r.status in (200, 201, 422), (role, r.status, await r.text())
        else:
            assert r.status == 403, (role, r.status)
            assert (await r.json())["error"] == "forbidden"


async def login(rig: Rig, name: str) -> str:
    r = await rig.client.post("/api/v1/session", json={"name": name, "password": PASSWORD})
    assert r.status == 200, await r.text()
    csrf: str = (await r.json())["csrf"]
    return csrf


async def test_a_supervisor_spies_on_their_team_only_and_every_spy_is_audited(rig: Rig) -> None:
    csrf = await login(rig, "sup-a")
    calls = await (await rig.client.get("/api/v1/calls")).json()
    assert [c["id"] for c in calls["calls"]] == ["c1"]  # team a only
    agents = await (await rig.client.get("/api/v1/agents")).json()
    assert [a["name"] for a in agents["agents"]] == ["Agent 7001"]
    # no CSRF token: refused before anything happens
    r = await rig.client.post("/api/v1/calls/c1/spy", json={"mode": "listen"})
    assert r.status == 403
    assert (await r.json())["error"] == "csrf"
    r = await rig.client.post("/api/v1/calls/c2/spy", json={"mode": "listen"}, headers={"X-CSRF-Token": csrf})
    assert r.status == 403
    assert (await r.json())["error"] == "not_your_team"
    for mode in ("listen", "whisper", "barge"):
        r = await rig.client.post("/api/v1/calls/c1/spy", json={"mode": mode}, headers={"X-CSRF-Token": csrf})
        assert r.status == 201, await r.text()
    assert [(o[0], o[2], o[3], o[4]) for o in rig.originates] == [
        ("PJSIP/8001", "Agent 7001", m, "qbES") for m in ("listen", "whisper", "barge")]
    ui = rig.client.app[UI]  # type: ignore[index]
    spy_ids = [o[5] for o in rig.originates]
    rig.clock.advance(1.0)
    rig.monitor.handle(SpyStarted(rig.clock.now(), "c1", "Agent 7001", spy_ids[0]))
    rig.clock.advance(30.0)
    rig.monitor.handle(SpyStopped(rig.clock.now(), "c1", "Agent 7001", spy_ids[0]))
    rig.monitor.handle(SpyStarted(rig.clock.now(), "c1", "Agent 7001", spy_ids[1]))
    entries = await ui.audit.query(limit=100, action="spy")
    got = [(e["action"], e["actor"], e["target"], e["details"]["mode"]) for e in reversed(entries)]
    assert got == [("spy.request", "sup-a", "c1", "listen"), ("spy.request", "sup-a", "c1", "whisper"),
                   ("spy.request", "sup-a", "c1", "barge"), ("spy.start", "sup-a", "c1", "listen"),
                   ("spy.end", "sup-a", "c1", "listen"), ("spy.start", "sup-a", "c1", "whisper")]
    end = entries[1]["details"]
    assert end["end"] - end["start"] == 30.0
    week = {r["agent"]: r for r in (await (await rig.client.get("/api/v1/qa/week")).json())["agents"]}
    assert (week["Agent 7001"]["random"], week["Agent 7001"]["onsite"]) == (1, 1)  # listen random, whisper on-site
    # the supervisor of team b cannot, an agent cannot, and logging out ends the session
    r = await rig.client.delete("/api/v1/session", headers={"X-CSRF-Token": csrf})
    assert r.status == 200
    assert (await rig.client.get("/api/v1/calls")).status == 401
    csrf_b = await login(rig, "sup-b")
    r = await rig.client.post("/api/v1/calls/c1/spy", json={"mode": "listen"}, headers={"X-CSRF-Token": csrf_b})
    assert r.status == 403
    await rig.client.delete("/api/v1/session", headers={"X-CSRF-Token": csrf_b})
    csrf_agent = await login(rig, "agent1")
    r = await rig.client.post("/api/v1/calls/c1/spy", json={"mode": "listen"}, headers={"X-CSRF-Token": csrf_agent})
    assert r.status == 403
    assert len(rig.originates) == 3


async def test_login_refuses_bad_passwords_locks_and_never_sets_a_cookie(rig: Rig) -> None:
    for _ in range(5):
        r = await rig.client.post("/api/v1/session", json={"name": "sup-a", "password": "wrong"})
        assert r.status == 401
        assert "rw_session" not in r.cookies
    r = await rig.client.post("/api/v1/session", json={"name": "sup-a", "password": PASSWORD})
    assert r.status == 429
    r = await rig.client.post("/api/v1/session", data="name=sup-a&password=x",
                              headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status == 415
    r = await rig.client.post("/api/v1/session", json={"name": "nobody", "password": PASSWORD})
    assert r.status == 401
