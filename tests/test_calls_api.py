"""The calls API: one call's record, and dispositions (OUT-WRAPUP) with clear 4xx errors."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from monitor.auth import TokenStore
from monitor.web import build_app
from tests.pbxscript import Pbx, ch

pytestmark = pytest.mark.usefixtures("no_leftover_tasks")
AGENT = {"Authorization": "Bearer tok-agent"}
QA = {"Authorization": "Bearer tok-qa"}


@pytest.fixture
async def rig() -> AsyncIterator[tuple[Pbx, TestServer, aiohttp.ClientSession]]:
    p = Pbx()
    tokens = TokenStore([("tok-agent", "agent-7001", "agent"), ("tok-qa", "qa-1", "qa")])
    app = build_app(p.monitor, p.hub, p.cfg, CollectorRegistry(), tokens=tokens)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{server.port}") as http:
        yield p, server, http
    await server.close()


def outbound_ended(p: Pbx, t: float, uid: str = "o1") -> str:
    p.ev(t, "DialBegin", Channel=ch("7001", "p" + uid), Uniqueid="p" + uid, Linkedid="p" + uid, Context="outbound",
         Exten="13800138000", CallerIDName="坐席7001", DestChannel=ch("carrier-trunk", uid), DestUniqueid=uid,
         DestLinkedid="p" + uid)
    p.ev(t + 5, "DialEnd", Channel=ch("7001", "p" + uid), Uniqueid="p" + uid, Linkedid="p" + uid,
         DestChannel=ch("carrier-trunk", uid), DestUniqueid=uid, DestLinkedid="p" + uid, DialStatus="ANSWER")
    p.hangup(t + 20, ch("carrier-trunk", uid), uid, "p" + uid)
    return "p" + uid


async def test_disposition_on_time_and_late(rig: tuple[Pbx, TestServer, aiohttp.ClientSession]) -> None:
    p, _, http = rig
    on_time = outbound_ended(p, 0.0, "o1")
    late = outbound_ended(p, 0.0, "o2")
    p.until(20.0 + 299.0)
    r = await http.post(f"/api/v1/calls/{on_time}/disposition", json={"tag": "valid", "note": "已办理"}, headers=AGENT)
    assert r.status == 201
    body = await r.json()
    assert body["disposition"]["late"] is False
    assert body["disposition"]["by"] == "agent-7001"
    p.until(20.0 + 400.0)  # past the limit: OUT-WRAPUP fired for the other one
    assert [a["call"] for a in p.alerts("OUT-WRAPUP")] == [late]
    r = await http.post(f"/api/v1/calls/{late}/disposition", json={"tag": "refused"}, headers=AGENT)
    assert r.status == 201
    assert (await r.json())["disposition"]["late"] is True
    r = await http.get(f"/api/v1/calls/{late}", headers=QA)
    rec = (await r.json())["call"]
    assert rec["disposition"]["tag"] == "refused"
    assert rec["state"] == "ended"
    assert rec["caller"] == "138****8000"


@pytest.mark.parametrize(("body", "status", "code"), [
    (b"{not json", 400, "bad_json"),
    (b"[1, 2]", 400, "bad_json"),
    (b'{"tag": 5}', 400, "bad_field"),
    (b'{"tag": "maybe"}', 422, "unknown_tag"),
])
async def test_disposition_rejects_bad_input(rig: tuple[Pbx, TestServer, aiohttp.ClientSession], body: bytes,
                                             status: int, code: str) -> None:
    p, _, http = rig
    cid = outbound_ended(p, 0.0)
    r = await http.post(f"/api/v1/calls/{cid}/disposition", data=body,
                        headers={**AGENT, "Content-Type": "application/json"})
    assert r.status == status
    err = await r.json()
    assert err["error"] == code
    assert err["message"]["zh"]
    assert err["message"]["en"]
    assert p.call(cid).disposition is None


async def test_disposition_unknown_call_and_auth(rig: tuple[Pbx, TestServer, aiohttp.ClientSession]) -> None:
    _, _, http = rig
    r = await http.post("/api/v1/calls/nope/disposition", json={"tag": "valid"}, headers=AGENT)
    assert r.status == 404
    assert (await r.json())["error"] == "unknown_call"
    r = await http.post("/api/v1/calls/nope/disposition", json={"tag": "valid"})
    assert r.status == 401
    r = await http.post("/api/v1/calls/nope/disposition", json={"tag": "valid"}, headers=QA)
    assert r.status == 403  # QA reviews; agents and supervisors log outcomes
    r = await http.get("/api/v1/calls/nope", headers=QA)
    assert r.status == 404
