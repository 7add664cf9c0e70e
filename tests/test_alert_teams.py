"""Alerts by team: a supervisor sees (websocket frames, hello snapshot, GET /api/v1/alerts) and may ack /
resolve only their own teams' alerts; admins, QA and tokens see everything; centre-wide alerts are everyone's."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from alerts.hub import AlertHub
from alerts.model import Alert
from config.schema import Config
from monitor.auth import SESSION_COOKIE, TokenStore, hash_password
from monitor.clock import VirtualClock
from monitor.engine import Monitor
from monitor.web import build_app

pytestmark = pytest.mark.usefixtures("no_leftover_tasks")

PASSWORD = "correct horse battery"
ADMIN = "admin-token-0123456789"


def _alert(hub: AlertHub, agent: str | None, queue: str | None, rule: str = "IN-ANSWER") -> Alert:
    aid = hub.next_id()
    a = Alert(aid, rule, f"{rule}:{aid}", "warning", "violation", 0.0, 1_795_000_000.0, f"call-{aid}", agent, queue,
              None, "振铃超时", "ringing too long")
    assert hub.raise_alert(a) is a
    return a


class Rig:
    def __init__(self, client: TestClient[Any, Any], hub: AlertHub) -> None:
        self.client, self.hub = client, hub
        self.cookies: dict[str, str] = {}
        self.csrf: dict[str, str] = {}

    async def login(self, name: str) -> None:
        r = await self.client.post("/api/v1/session", json={"name": name, "password": PASSWORD})
        assert r.status == 200, await r.text()
        self.cookies[name] = r.cookies[SESSION_COOKIE].value
        self.csrf[name] = (await r.json())["csrf"]
        self.client.session.cookie_jar.clear()  # each request names its user explicitly

    def h(self, name: str, *, post: bool = False) -> dict[str, str]:
        if name == "admin":
            return {"Authorization": f"Bearer {ADMIN}"}
        h = {"Cookie": f"{SESSION_COOKIE}={self.cookies[name]}"}
        if post:
            h["X-CSRF-Token"] = self.csrf[name]
        return h


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    h = hash_password(PASSWORD, n=2**10)
    cfg = Config.model_validate({"ui": {"cookie_secure": False,
        "users": [{"name": "sup-a", "role": "supervisor", "teams": ["a"], "password_hash": h},
                  {"name": "sup-b", "role": "supervisor", "teams": ["b"], "password_hash": h},
                  {"name": "qa1", "role": "qa", "teams": ["a"], "password_hash": h}],
        "teams": {"a": {"agents": ["Agent 7001"], "queues": ["support"]},
                  "b": {"agents": ["Agent 7002"], "queues": ["claims"]}}}})
    clock = VirtualClock(wall_origin=1_795_000_000.0)
    hub = AlertHub(clock.now)
    monitor = Monitor(cfg, clock, hub)
    app = build_app(monitor, hub, cfg, CollectorRegistry(), tokens=TokenStore([(ADMIN, "tok-admin", "admin")]))
    async with TestClient(TestServer(app)) as client:
        rig = Rig(client, hub)
        for name in ("sup-a", "sup-b", "qa1"):
            await rig.login(name)
        yield rig


async def _frame(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await ws.receive(timeout=2)
    assert msg.type is aiohttp.WSMsgType.TEXT, msg
    obj: dict[str, Any] = json.loads(msg.data)
    return obj


async def _ids(ws: aiohttp.ClientWebSocketResponse) -> list[tuple[str, str]]:
    """(alert id, change) of every frame up to the next pong."""
    await ws.send_json({"type": "ping"})
    out = []
    while (f := await _frame(ws))["type"] != "pong":
        out.append((f["id"], f["change"]) if f["type"] in ("alert", "notice") else (f["type"], f.get("code", "")))
    return out


async def test_each_supervisor_gets_only_their_teams_alert_frames_and_list(rig: Rig) -> None:
    old_a = _alert(rig.hub, "Agent 7001", None)  # before anyone connects: the hello snapshot
    old_b = _alert(rig.hub, "Agent 7002", None)
    wss = {n: await rig.client.ws_connect("/ws", headers=rig.h(n)) for n in ("sup-a", "sup-b", "qa1", "admin")}
    try:
        hello = {n: await _frame(ws) for n, ws in wss.items()}
        assert [a["id"] for a in hello["sup-a"]["open_alerts"]] == [old_a.id]
        assert [a["id"] for a in hello["sup-b"]["open_alerts"]] == [old_b.id]
        for n in ("qa1", "admin"):  # QA (default: not team-scoped) and admins see every team
            assert [a["id"] for a in hello[n]["open_alerts"]] == [old_a.id, old_b.id]

        by_agent_a = _alert(rig.hub, "Agent 7001", "claims")  # agent of team a, queue of team b: both teams
        by_queue_b = _alert(rig.hub, None, "claims")
        only_b = _alert(rig.hub, "Agent 7002", None)
        elsewhere = _alert(rig.hub, "Agent 9999", "other")  # in no team: no supervisor's
        centre = _alert(rig.hub, None, None, rule="SYS-LINES")  # centre-wide: everyone's
        got = {n: await _ids(ws) for n, ws in wss.items()}
        assert got["sup-a"] == [(by_agent_a.id, "opened"), (centre.id, "opened")]
        assert got["sup-b"] == [(by_agent_a.id, "opened"), (by_queue_b.id, "opened"), (only_b.id, "opened"),
                                (centre.id, "opened")]
        every = [(a.id, "opened") for a in (by_agent_a, by_queue_b, only_b, elsewhere, centre)]
        assert got["qa1"] == every
        assert got["admin"] == every

        # acking the other team's alert over the websocket: forbidden, nothing changes, nobody is told
        await wss["sup-a"].send_json({"type": "ack", "id": only_b.id})
        assert await _ids(wss["sup-a"]) == [("error", "forbidden")]
        assert only_b.state == "open"
        await wss["sup-b"].send_json({"type": "ack", "id": only_b.id})
        assert await _ids(wss["sup-b"]) == [(only_b.id, "acked")]
        assert await _ids(wss["sup-a"]) == []  # sup-a never hears of team b's alert
        assert await _ids(wss["admin"]) == [(only_b.id, "acked")]
    finally:
        for ws in wss.values():
            await ws.close()

    # the list
    for name, want in (("sup-a", [old_a, by_agent_a, centre]),
                       ("sup-b", [old_b, by_agent_a, by_queue_b, only_b, centre]),
                       ("qa1", [old_a, old_b, by_agent_a, by_queue_b, only_b, elsewhere, centre]),
                       ("admin", [old_a, old_b, by_agent_a, by_queue_b, only_b, elsewhere, centre])):
        r = await rig.client.get("/api/v1/alerts", headers=rig.h(name))
        assert r.status == 200
        body = await r.json()
        assert [a["id"] for a in body["alerts"]] == [a.id for a in want], name
        assert body["total"] == len(want)

    # ack / resolve of the other team's alert over HTTP: 403; own team's: 200; an admin: any
    for path in (f"/api/v1/alerts/{old_b.id}/ack", f"/api/v1/alerts/{old_b.id}/resolve"):
        r = await rig.client.post(path, headers=rig.h("sup-a", post=True))
        assert r.status == 403, await r.text()
        assert (await r.json())["error"] == "forbidden"
    assert old_b.state == "open"
    r = await rig.client.post(f"/api/v1/alerts/{old_a.id}/ack", headers=rig.h("sup-a", post=True))
    assert r.status == 200
    r = await rig.client.post(f"/api/v1/alerts/{old_b.id}/resolve", headers=rig.h("sup-a", post=True))
    assert r.status == 403
    r = await rig.client.post(f"/api/v1/alerts/{elsewhere.id}/ack", headers=rig.h("admin"))
    assert r.status == 200
    r = await rig.client.post(f"/api/v1/alerts/{centre.id}/ack", headers=rig.h("sup-b", post=True))
    assert r.status == 200  # centre-wide: any supervisor may take it


async def test_qa_can_be_team_scoped_by_config() -> None:
    h = hash_password(PASSWORD, n=2**10)
    cfg = Config.model_validate({"ui": {"cookie_secure": False, "qa_team_scoped": True,
        "users": [{"name": "qa1", "role": "qa", "teams": ["a"], "password_hash": h}],
        "teams": {"a": {"agents": ["Agent 7001"]}, "b": {"agents": ["Agent 7002"]}}}})
    clock = VirtualClock(wall_origin=1_795_000_000.0)
    hub = AlertHub(clock.now)
    app = build_app(Monitor(cfg, clock, hub), hub, cfg, CollectorRegistry(), tokens=TokenStore())
    async with TestClient(TestServer(app)) as client:
        rig = Rig(client, hub)
        await rig.login("qa1")
        a, _ = _alert(hub, "Agent 7001", None), _alert(hub, "Agent 7002", None)
        body = await (await client.get("/api/v1/alerts", headers=rig.h("qa1"))).json()
        assert [x["id"] for x in body["alerts"]] == [a.id]
