"""The commitments HTTP API over real loopback sockets, on a real redis-server (embedded starter).

Every 4xx path answers the JSON error shape of ``monitor.web`` with zh and en;
Redis stopped answers 503 while the rest of the app keeps serving.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry
from websockets.asyncio.client import connect

from alerts.hub import AlertHub
from config.schema import Config
from monitor.auth import TokenStore
from monitor.clock import VirtualClock
from monitor.commitments import CommitmentService
from monitor.commitments_api import add_commitment_routes
from monitor.engine import Monitor
from monitor.redis_embedded import EmbeddedRedis
from monitor.store import CommitmentStore
from monitor.web import AccessLogger, build_app
from telephony.events import CallOffered

pytestmark = pytest.mark.usefixtures("no_leftover_tasks")

TZ = ZoneInfo("Asia/Shanghai")
W0 = dt.datetime(2026, 4, 27, 9, 0, tzinfo=TZ).timestamp()  # a Monday
SUP, QA, AGENT, ADMIN = "sup-token-0123456789", "qa-token-0123456789", "agent-token-0123456789", "adm-token-0123456789"
H = 3600.0


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Api:
    clock: VirtualClock
    monitor: Monitor
    service: CommitmentService
    http: aiohttp.ClientSession
    base: str

    async def call(self, method: str, path: str, token: str = AGENT, body: Any = None, raw: bytes | None = None,
                   headers: dict[str, str] | None = None) -> tuple[int, Any, aiohttp.ClientResponse]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        async with self.http.request(method, self.base + path, data=data,
                                     headers={**auth(token), **(headers or {})}) as resp:
            text = await resp.text()
            payload = json.loads(text) if resp.content_type == "application/json" else text
            return resp.status, payload, resp

    async def create(self, **body: Any) -> dict[str, Any]:
        status, payload, _ = await self.call("POST", "/api/v1/commitments", body={
            "kind": "callback", "customer": "+8613912345678", "owner": "Agent 7001", **body})
        assert status == 201, payload
        return payload["commitment"]  # type: ignore[no-any-return]

    async def jump(self, t: float) -> None:
        self.clock.advance_to(t)
        await self.service.idle()


@pytest.fixture
async def api(redis_server: EmbeddedRedis) -> AsyncIterator[Api]:
    cfg = Config.model_validate({"commitments": {"poll_interval_s": 3600}})
    clock = VirtualClock(wall_origin=W0)
    hub = AlertHub(clock.now)
    monitor = Monitor(cfg, clock, hub)
    tokens = TokenStore([(SUP, "floor-a", "supervisor"), (QA, "qa-1", "qa"), (AGENT, "agent-7001", "agent"),
                         (ADMIN, "admin", "admin")])
    assert redis_server.url is not None
    store = CommitmentStore.from_config(redis_server.url, cfg.redis, cfg.commitments.key_prefix)
    service = CommitmentService(cfg, store, clock, hub)
    service.attach(monitor)
    app = build_app(monitor, hub, cfg, CollectorRegistry(), tokens=tokens)
    add_commitment_routes(app, service)
    runner = web.AppRunner(app, access_log_class=AccessLogger, shutdown_timeout=5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    await service.start()
    try:
        async with aiohttp.ClientSession() as http:
            yield Api(clock, monitor, service, http, f"http://127.0.0.1:{runner.addresses[0][1]}")
    finally:
        await service.stop()
        await runner.cleanup()
        await store.close()


def assert_error(status: int, payload: Any, want_status: int, code: str | None = None) -> None:
    assert status == want_status, payload
    assert set(payload) == {"error", "message"}
    assert set(payload["message"]) == {"zh", "en"}
    assert payload["message"]["zh"]
    assert payload["message"]["en"]
    if code is not None:
        assert payload["error"] == code


async def test_create_get_list_and_the_history(api: Api) -> None:
    status, payload, resp = await api.call("POST", "/api/v1/commitments", body={
        "kind": "callback", "customer": "+86 139-1234-5678", "owner": "Agent 7001", "team": "claims",
        "note": "客户要求下午回电"})
    assert status == 201
    c = payload["commitment"]
    assert resp.headers["Location"] == f"/api/v1/commitments/{c['id']}"
    assert c["state"] == "open"
    assert c["customer"] == "+86139****5678"  # masked per privacy.mask_callers
    assert c["due_at"] == W0 + 24 * H
    assert c["due_local"] == "2026-04-28T09:00:00+08:00"
    assert c["created_by"] == "agent-7001"
    assert c["notes"][0]["text"] == "客户要求下午回电"
    await api.create(kind="escalation_push", owner="Agent 7002", team="motor")

    status, payload, _ = await api.call("GET", f"/api/v1/commitments/{c['id']}", token=QA)
    assert status == 200
    assert [h["event"] for h in payload["history"]] == ["created"]
    for query, want in [("", 2), ("?kind=callback", 1), ("?agent=Agent%207002", 1), ("?team=claims", 1),
                        ("?state=open", 2), ("?state=overdue", 0), (f"?due_before={W0 + H}", 1),
                        ("?due_before=2026-04-27T09:30:00", 1), ("?due_before=2026-04-27T01:30:00Z", 1),
                        ("?limit=1", 1)]:
        status, payload, _ = await api.call("GET", "/api/v1/commitments" + query)
        assert status == 200
        assert payload["count"] == want, query
    status, payload, _ = await api.call("GET", "/api/v1/commitments?state=open")
    assert [x["kind"] for x in payload["commitments"]] == ["escalation_push", "callback"]  # soonest due first


async def test_a_live_call_fills_customer_and_owner(api: Api) -> None:
    api.monitor.handle(CallOffered(0.0, "call-1", "inbound", "13811112222", "", 0.0))
    api.monitor.calls["call-1"].agent = "Agent 7009"
    c = await (api.create(kind="callback", customer=None, owner=None, call_id="call-1"))
    assert (c["customer"], c["owner"], c["call_id"]) == ("138****2222", "Agent 7009", "call-1")


async def test_fulfil_cancel_note_and_their_conflicts(api: Api) -> None:
    c = await api.create()
    status, payload, _ = await api.call("POST", f"/api/v1/commitments/{c['id']}/note", body={"text": "已约下午三点"})
    assert status == 200
    assert payload["commitment"]["notes"][-1]["text"] == "已约下午三点"
    status, payload, _ = await api.call("POST", f"/api/v1/commitments/{c['id']}/fulfil", raw=b"")
    assert status == 200
    assert (payload["commitment"]["state"], payload["commitment"]["on_time"]) == ("fulfilled", True)
    status, payload, _ = await api.call("POST", f"/api/v1/commitments/{c['id']}/fulfil", body={})
    assert_error(status, payload, 409, "conflict")
    assert "已完成" in payload["message"]["zh"]

    d = await api.create()
    status, payload, _ = await api.call("POST", f"/api/v1/commitments/{d['id']}/cancel", token=SUP,
                                        body={"reason": "客户撤回投诉"})
    assert status == 200
    assert payload["commitment"]["state"] == "cancelled"
    status, payload, _ = await api.call("POST", f"/api/v1/commitments/{d['id']}/fulfil", body={"note": "x"})
    assert_error(status, payload, 409, "conflict")
    assert "cancelled" in payload["message"]["en"]
    status, payload, _ = await api.call("POST", f"/api/v1/commitments/{d['id']}/cancel", token=SUP,
                                        body={"reason": "again"})
    assert_error(status, payload, 409, "conflict")


async def test_idempotency_key_makes_a_retried_create_return_the_first(api: Api) -> None:
    body = {"kind": "callback", "customer": "13912345678", "owner": "Agent 7001"}
    first = await api.call("POST", "/api/v1/commitments", body=body, headers={"Idempotency-Key": "crm-8812"})
    again = await api.call("POST", "/api/v1/commitments", body=body, headers={"Idempotency-Key": "crm-8812"})
    assert (first[0], again[0]) == (201, 200)
    assert first[1]["commitment"]["id"] == again[1]["commitment"]["id"]
    listed = await api.call("GET", "/api/v1/commitments")
    assert listed[1]["count"] == 1


@pytest.mark.parametrize(("raw", "code", "field"), [
    (b"{not json", "bad_json", None),
    (b"[1, 2]", "bad_json", None),
    (b'{"kind": "callback", "customer": "13912345678", "owner": "a", "colour": "red"}', "bad_request", "colour"),
    (b'{"customer": "13912345678", "owner": "a"}', "bad_request", "kind"),
    (b'{"kind": "flowers", "customer": "13912345678", "owner": "a"}', "unknown_kind", "flowers"),
    (b'{"kind": "callback", "owner": "a"}', "bad_request", "customer"),
    (b'{"kind": "callback", "customer": "call me maybe", "owner": "a"}', "bad_request", "customer"),
    (b'{"kind": "callback", "customer": "13912345678"}', "bad_request", "owner"),
    (b'{"kind": 7, "customer": "13912345678", "owner": "a"}', "bad_request", "kind"),
])
async def test_create_refuses_bad_requests_with_400(api: Api, raw: bytes, code: str, field: str | None) -> None:
    status, payload, _ = await api.call("POST", "/api/v1/commitments", raw=raw)
    assert_error(status, payload, 400, code)
    if field is not None:
        assert field in payload["message"]["en"]
        assert field in payload["message"]["zh"]


async def test_unknown_ids_are_404(api: Api) -> None:
    for method, path, body in [("GET", "/api/v1/commitments/C999", None),
                               ("POST", "/api/v1/commitments/C999/fulfil", {}),
                               ("POST", "/api/v1/commitments/C999/note", {"text": "x"}),
                               ("POST", "/api/v1/commitments/C999/cancel", {"reason": "x"})]:
        status, payload, _ = await api.call(method, path, token=ADMIN, body=body)
        assert_error(status, payload, 404, "not_found")
        assert "C999" in payload["message"]["zh"]


async def test_a_vague_complaint_closing_note_is_refused_with_what_is_missing(api: Api) -> None:
    c = await api.create(kind="complaint_close")
    path = f"/api/v1/commitments/{c['id']}/fulfil"
    for note in ["已处理", "已转理赔部跟进", "已回复客户。"]:
        status, payload, _ = await api.call("POST", path, body={"note": note})
        assert_error(status, payload, 422, "vague_note")
        assert "写明具体做了什么" in payload["message"]["zh"]
        assert "say what exactly was done" in payload["message"]["en"]
    status, payload, _ = await api.call("POST", path, body={})
    assert_error(status, payload, 422, "note_required")
    status, payload, _ = await api.call("POST", path, body={"note": "核实后退还重复扣缴的保费 230 元,客户认可"})
    assert status == 200
    assert payload["commitment"]["state"] == "fulfilled"


async def test_other_bad_requests(api: Api) -> None:
    c = await api.create()
    cases = [
        ("POST", f"/api/v1/commitments/{c['id']}/cancel", SUP, {}, "reason"),
        ("POST", f"/api/v1/commitments/{c['id']}/cancel", SUP, {"reason": "  "}, "reason"),
        ("POST", f"/api/v1/commitments/{c['id']}/note", AGENT, {}, "text"),
        ("POST", f"/api/v1/commitments/{c['id']}/note", AGENT, {"text": "x", "overdue_reason": "yes"},
         "overdue_reason"),
        ("POST", f"/api/v1/commitments/{c['id']}/fulfil", AGENT, {"note": 5}, "note"),
        ("GET", "/api/v1/commitments?state=late", AGENT, None, "state"),
        ("GET", "/api/v1/commitments?kind=flowers", AGENT, None, "kind"),
        ("GET", "/api/v1/commitments?limit=0", AGENT, None, "limit"),
        ("GET", "/api/v1/commitments?due_before=tomorrow", AGENT, None, "due_before"),
        ("GET", "/api/v1/commitments?owner=x", AGENT, None, "owner"),
        ("GET", "/api/v1/reports/complaints?month=2026-13", AGENT, None, "YYYY-MM"),
        ("GET", "/api/v1/reports/complaints?month=2026-04&format=xlsx", AGENT, None, "format"),
    ]
    for method, path, token, body, mentioned in cases:
        status, payload, _ = await api.call(method, path, token=token, body=body)
        assert_error(status, payload, 400)
        assert mentioned in payload["message"]["en"], path


async def test_permissions(api: Api) -> None:
    c = await api.create()
    status, payload, _ = await api.call("POST", "/api/v1/commitments", token=QA,
                                        body={"kind": "callback", "customer": "139", "owner": "a"})
    assert_error(status, payload, 403, "forbidden")
    status, payload, _ = await api.call("POST", f"/api/v1/commitments/{c['id']}/cancel", token=AGENT,
                                        body={"reason": "no"})
    assert_error(status, payload, 403, "forbidden")
    assert (await api.call("GET", "/api/v1/commitments", token=QA))[0] == 200
    async with api.http.get(api.base + "/api/v1/commitments") as resp:
        assert resp.status == 401


async def test_redis_stopped_answers_503_and_the_app_keeps_serving(api: Api, redis_server: EmbeddedRedis) -> None:
    c = await api.create()
    await redis_server.stop()
    for method, path, body in [("POST", "/api/v1/commitments", {"kind": "callback", "customer": "139", "owner": "a"}),
                               ("GET", f"/api/v1/commitments/{c['id']}", None),
                               ("GET", "/api/v1/commitments", None),
                               ("POST", f"/api/v1/commitments/{c['id']}/fulfil", {})]:
        status, payload, resp = await api.call(method, path, body=body)
        assert_error(status, payload, 503, "store_unavailable")
        assert "Redis" in payload["message"]["en"]
        assert "实时话务监控不受影响" in payload["message"]["zh"]
        assert resp.headers["Retry-After"] == "5"
    async with api.http.get(api.base + "/healthz") as resp:
        assert resp.status == 200
    status, payload, _ = await api.call("GET", "/api/v1/agents")
    assert status == 200
    await redis_server.start()
    status, payload, _ = await api.call("GET", f"/api/v1/commitments/{c['id']}")
    assert status == 200
    assert payload["commitment"]["state"] == "open"


async def test_complaints_report_as_json_and_csv(api: Api) -> None:
    late = await api.create(kind="complaint_close", owner="Agent 7003")
    await api.jump(130 * H)  # due 2026-05-02 09:00; the month of its due decides the report
    status, payload, _ = await api.call("POST", f"/api/v1/commitments/{late['id']}/note",
                                        body={"text": "等待医院出具诊断证明", "overdue_reason": True})
    assert status == 200
    status, payload, _ = await api.call("GET", "/api/v1/reports/complaints?month=2026-05", token=QA)
    assert status == 200
    assert payload["count"] == 1
    assert payload["items"][0]["reason"] == "等待医院出具诊断证明"
    assert payload["items"][0]["late_h"] == 10.0
    status, text, resp = await api.call("GET", "/api/v1/reports/complaints?month=2026-05&format=csv", token=QA)
    assert status == 200
    assert resp.content_type == "text/csv"
    assert text.startswith("\ufeffid,kind,customer")
    assert "等待医院出具诊断证明" in text
    status, payload, _ = await api.call("GET", "/api/v1/reports/complaints", token=QA)  # default: last month
    assert (status, payload["month"], payload["count"]) == (200, "2026-04", 0)


async def test_changes_reach_the_websocket_feed(api: Api) -> None:
    url = api.base.replace("http://", "ws://") + "/ws"
    async with connect(url, additional_headers=auth(AGENT), proxy=None, open_timeout=5) as ws:
        async with asyncio.timeout(2):
            hello = json.loads(await ws.recv())
        assert hello["type"] == "hello"
        c = await api.create()
        async with asyncio.timeout(2):
            frame = json.loads(await ws.recv())
    assert frame["type"] == "notice"
    assert frame["details"]["change"] == "created"
    assert frame["details"]["commitment"]["id"] == c["id"]
    assert frame["rule"] == "IN-ESCALATE"
    assert "13912345678" not in json.dumps(frame)
