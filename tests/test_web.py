"""The web app over real loopback sockets: live alerts over websockets, the JSON API, health.

Websocket clients are the ``websockets`` library's, talking to aiohttp's server
on 127.0.0.1 port 0.  Nothing sleeps to "let things settle": every test awaits
the frame or condition it is about.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

import alerts.ws as ws_module
from alerts.hub import AlertHub
from alerts.model import Alert
from alerts.ws import WebSocketHub
from config.schema import Config
from monitor.auth import TokenStore
from monitor.clock import LoopClock
from monitor.engine import Monitor
from monitor.web import WS_HUB, AccessLogger, build_app
from telephony.events import AgentRinging, CallOffered, LinkUp, QueueJoined

pytestmark = pytest.mark.usefixtures("no_leftover_tasks")

SUP = "sup-token-0123456789abcdef"
SUP2 = "sup-token-fedcba9876543210"
QA = "qa-token-0123456789abcdef"
AGENT = "agent-token-0123456789abcdef"
ADMIN = "admin-token-0123456789abcdef"
CALLER = "+8613912345678"


def _tokens() -> TokenStore:
    return TokenStore([(SUP, "floor-a", "supervisor"), (SUP2, "floor-b", "supervisor"), (QA, "qa-1", "qa"),
                       (AGENT, "wallboard", "agent"), (ADMIN, "admin-env", "admin")])


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Rig:
    cfg: Config
    clock: LoopClock
    hub: AlertHub
    monitor: Monitor
    app: web.Application
    runner: web.AppRunner
    port: int

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return self.base.replace("http://", "ws://") + "/ws"

    @property
    def ws_hub(self) -> WebSocketHub:
        return self.app[WS_HUB]

    def ws(self, token: str | None = None, **kw: Any) -> connect:
        headers = _auth(token) if token is not None else None
        return connect(self.ws_url, additional_headers=headers, proxy=None, open_timeout=5, close_timeout=2,
                       **kw)

    def alert(self, n: int, **details: Any) -> Alert:
        alert = Alert(id=self.hub.next_id(), rule="IN-ANSWER", key=f"IN-ANSWER:test-{n}", severity="warning",
                      kind="violation", at=self.clock.now(), opened_wall=0.0, call=f"c{n}", agent="Agent 7001",
                      queue="support", caller="+86139****5678", text_zh="振铃超时", text_en="ring over limit",
                      details=details)
        assert self.hub.raise_alert(alert) is alert
        return alert


RigFactory = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def make_rig() -> AsyncIterator[RigFactory]:
    runners: list[web.AppRunner] = []

    async def make(cfg: dict[str, Any] | None = None, **ws_opts: Any) -> Rig:
        config = Config.model_validate(cfg or {})
        clock = LoopClock()
        hub = AlertHub(clock.now)
        monitor = Monitor(config, clock, hub)
        tokens = _tokens()
        ws_hub = WebSocketHub(hub, tokens, config.http, **ws_opts) if ws_opts else None
        app = build_app(monitor, hub, config, CollectorRegistry(), tokens=tokens, ws_hub=ws_hub)
        runner = web.AppRunner(app, access_log_class=AccessLogger, shutdown_timeout=5)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        return Rig(config, clock, hub, monitor, app, runner, port)

    yield make
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def rig(make_rig: RigFactory) -> Rig:
    return await make_rig()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def recv(ws: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(2.0):
        raw = await ws.recv()
    obj = json.loads(raw)
    assert isinstance(obj, dict)
    return obj


async def until(cond: Callable[[], bool]) -> None:
    """Wait (at most 2 s) for a condition the code under test has no event for."""
    async with asyncio.timeout(2.0):
        while not cond():  # noqa: ASYNC110 -- polling state owned by aiohttp (access log, socket set)
            await asyncio.sleep(0.001)


async def closed_by_server(ws: ClientConnection) -> ConnectionClosed:
    """Read (and discard) frames until the connection closes; the close as seen by the client."""
    try:
        async with asyncio.timeout(5.0):
            while True:
                await ws.recv()
    except ConnectionClosed as exc:
        return exc


# -- websocket: live alerts ---------------------------------------------------------


async def test_in_answer_alert_reaches_the_supervisor_within_100ms_of_its_deadline(make_rig: RigFactory) -> None:
    rig = await make_rig({"rules": {"IN-ANSWER": {"ring_limit_s": 0.3}}})
    async with rig.ws(SUP) as ws:
        hello = await recv(ws)
        assert hello["type"] == "hello"
        assert hello["role"] == "supervisor"
        assert hello["open_alerts"] == []
        t = rig.clock.now()
        rig.monitor.handle(CallOffered(t, "c1", "inbound", CALLER, "张三", t))
        rig.monitor.handle(QueueJoined(t, "c1", "support", t))
        rig.monitor.handle(AgentRinging(t, "c1", "leg1", "Agent 7001", "support", t))
        deadline = t + 0.3
        frame = await recv(ws)
        late = rig.clock.now() - deadline
    assert 0 <= late < 0.1, f"alert arrived {late * 1000:.1f} ms after the deadline"
    assert frame["type"] == "alert"
    assert frame["change"] == "opened"
    assert frame["rule"] == "IN-ANSWER"
    assert frame["agent"] == "Agent 7001"
    assert frame["queue"] == "support"
    assert frame["state"] == "open"
    assert CALLER not in json.dumps(frame, ensure_ascii=False)  # masked on screens
    assert frame["caller"] == "+86139****5678"
    assert "坐席" in frame["text"]["zh"]
    assert "Agent 7001" in frame["text"]["en"]


async def test_hello_carries_the_open_alerts_snapshot(rig: Rig) -> None:
    a1, a2 = rig.alert(1), rig.alert(2)
    rig.hub.resolve(a2.id, "floor-a")
    async with rig.ws(QA) as ws:
        hello = await recv(ws)
    assert hello["role"] == "qa"
    assert "alerts:read" in hello["permissions"]
    assert [a["id"] for a in hello["open_alerts"]] == [a1.id]


async def test_a_hello_larger_than_the_send_buffer_limit_is_delivered(make_rig: RigFactory) -> None:
    # a busy floor: 300 open alerts make a ~150 KB hello, more than a client may have waiting
    # (16 KiB here); one frame to an idle client is sent whole, the limit is on what piles up
    rig = await make_rig({"http": {"websocket_buffer_kib": 16, "websocket_socket_buffer_kib": 8}})
    opened = [rig.alert(n, note="x" * 300).id for n in range(300)]
    async with rig.ws(SUP) as ws:
        hello = await recv(ws)
        assert [a["id"] for a in hello["open_alerts"]] == opened
        assert rig.ws_hub.dropped == 0
        after = rig.alert(1000)
        assert (await recv(ws))["id"] == after.id


async def test_a_fan_out_spread_over_turns_of_the_loop_keeps_every_client_in_order(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ws_module, "FANOUT_CHUNK", 2)  # 7 clients: 4 turns of the loop per frame
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(rig.ws(SUP if i % 2 else QA)) for i in range(7)]
        for c in clients:
            await recv(c)  # hello
        sent = [rig.alert(n).id for n in range(5)]  # five changes raised in one go, before any chunk ran
        sent.append(rig.hub.ack(sent[0], by="floor-a").id)
        for c in clients:
            got = [(f["id"], f["change"]) for f in [await recv(c) for _ in range(6)]]
            assert got == [*((i, "opened") for i in sent[:5]), (sent[0], "acked")]


async def test_bad_header_token_is_refused_with_401_before_the_upgrade(rig: Rig) -> None:
    with pytest.raises(InvalidStatus) as err:
        async with rig.ws("not-a-token"):
            pass
    assert err.value.response.status_code == 401
    assert "Bearer" in err.value.response.headers["WWW-Authenticate"]
    assert rig.ws_hub.clients == 0


async def test_first_frame_auth(rig: Rig) -> None:
    async with rig.ws() as ws:
        await ws.send(json.dumps({"type": "auth", "token": SUP}))
        hello = await recv(ws)
    assert hello["type"] == "hello"
    assert hello["name"] == "floor-a"


@pytest.mark.parametrize("first", [json.dumps({"type": "auth", "token": "wrong"}), json.dumps({"type": "ack"}),
                                   "not json"])
async def test_bad_first_frame_is_refused_with_4401(rig: Rig, first: str) -> None:
    async with rig.ws() as ws:
        await ws.send(first)
        err = await recv(ws)
        assert err["type"] == "error"
        assert err["message"]["zh"]
        assert err["message"]["en"]
        with pytest.raises(ConnectionClosed) as closed:
            await recv(ws)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4401
    assert rig.ws_hub.clients == 0
    assert rig.ws_hub.refused == 1


async def test_no_auth_frame_in_time_is_refused(make_rig: RigFactory) -> None:
    rig = await make_rig(auth_timeout_s=0.1)
    async with rig.ws() as ws:
        await recv(ws)  # the error frame
        with pytest.raises(ConnectionClosed) as closed:
            await recv(ws)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4401


async def test_an_ack_from_one_client_reaches_every_client(rig: Rig) -> None:
    async with rig.ws(SUP) as a, rig.ws(SUP2) as b, rig.ws(QA) as c:
        clients = (a, b, c)
        for ws in clients:
            assert (await recv(ws))["type"] == "hello"
        alert = rig.alert(1)
        for ws in clients:
            assert (await recv(ws))["change"] == "opened"
        await a.send(json.dumps({"type": "ack", "id": alert.id}))
        changes = [await recv(ws) for ws in clients]
        assert all(f["change"] == "acked" and f["id"] == alert.id and f["state"] == "acked" for f in changes)
        assert all(f["by"] == "floor-a" and f["acked_by"] == "floor-a" for f in changes)
        # acking again is a conflict, answered to that client only
        await b.send(json.dumps({"type": "ack", "id": alert.id}))
        err = await recv(b)
        assert err["type"] == "error"
        assert err["code"] == "conflict"
        assert "已确认" in err["message"]["zh"]
        await b.send(json.dumps({"type": "resolve", "id": alert.id}))
        assert [(await recv(ws))["change"] for ws in clients] == ["resolved"] * 3
    assert alert.state == "resolved"  # the hub's own object


async def test_an_ack_over_http_is_broadcast_to_websocket_clients(rig: Rig, http: aiohttp.ClientSession) -> None:
    async with rig.ws(SUP) as a, rig.ws(QA) as b:
        for ws in (a, b):
            await recv(ws)
        alert = rig.alert(1)
        for ws in (a, b):
            await recv(ws)
        async with http.post(f"{rig.base}/api/v1/alerts/{alert.id}/ack", headers=_auth(ADMIN)) as resp:
            assert resp.status == 200
        for ws in (a, b):
            frame = await recv(ws)
            assert frame["change"] == "acked"
            assert frame["by"] == "admin-env"


async def test_an_agent_token_cannot_ack(rig: Rig) -> None:
    alert = rig.alert(1)
    async with rig.ws(AGENT) as ws:
        hello = await recv(ws)
        assert hello["role"] == "agent"
        assert hello["open_alerts"] == []
        await ws.send(json.dumps({"type": "ack", "id": alert.id}))
        err = await recv(ws)
    assert err["type"] == "error"
    assert err["code"] == "forbidden"
    assert "无权" in err["message"]["zh"]
    assert "may not" in err["message"]["en"]
    assert alert.state == "open"


async def test_bad_client_frames_get_bilingual_errors(rig: Rig) -> None:
    async with rig.ws(SUP) as ws:
        await recv(ws)
        await ws.send("{")
        assert (await recv(ws))["code"] == "bad_request"
        await ws.send(json.dumps({"type": "ack"}))
        assert (await recv(ws))["code"] == "bad_request"
        await ws.send(json.dumps({"type": "ack", "id": "A999"}))
        err = await recv(ws)
        assert err["code"] == "not_found"
        assert "不存在" in err["message"]["zh"]
        await ws.send(json.dumps({"type": "dance"}))
        assert (await recv(ws))["code"] == "unknown_type"
        await ws.send(json.dumps({"type": "ping"}))
        assert (await recv(ws)) == {"type": "pong"}


async def test_notices_go_to_agents_and_alerts_do_not(rig: Rig) -> None:
    async with rig.ws(AGENT) as ws:
        await recv(ws)
        rig.alert(1)  # a violation: not for the agent's screen
        notice = Alert(id=rig.hub.next_id(), rule="IN-ANSWER", key="APOLOGY:leg1", severity="info", kind="notice",
                       at=0.0, opened_wall=0.0, call="c1", agent="Agent 7001", queue="support", caller=None,
                       text_zh="请先向客户致歉", text_en="apologise to the caller")
        rig.hub.raise_alert(notice)
        frame = await recv(ws)
    assert frame["type"] == "notice"
    assert frame["id"] == notice.id
    assert frame["change"] == "opened"


def _tiny_recv_buffer_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    return sock


async def test_a_slow_client_is_dropped_and_the_fast_one_gets_everything(make_rig: RigFactory) -> None:
    rig = await make_rig({"http": {"websocket_buffer_kib": 64, "websocket_socket_buffer_kib": 16}})
    slow_sock = _tiny_recv_buffer_socket()
    await asyncio.get_running_loop().sock_connect(slow_sock, ("127.0.0.1", rig.port))
    # the slow client never reads: its library buffers one frame, then stops reading the socket
    async with rig.ws(SUP, sock=slow_sock, max_queue=1, compression=None) as slow, rig.ws(SUP2) as fast:
        await recv(fast)
        sent: list[str] = []
        for n in range(2000):
            sent.append(rig.alert(n, pad=os.urandom(16 * 1024).hex()).id)
            frame = await recv(fast)  # the fast client gets every frame, in order, without delay
            assert frame["id"] == sent[-1]
            if rig.ws_hub.dropped:
                break
        assert rig.ws_hub.dropped == 1, "the slow client was never dropped"
        assert rig.ws_hub.clients == 1
        # the fast client still gets what follows
        after = rig.alert(99_999)
        assert (await recv(fast))["id"] == after.id
        # once the slow client reads again, it finds the frames sent before it was dropped, then 1013
        closed = await closed_by_server(slow)
        assert closed.rcvd is not None
        assert closed.rcvd.code == 1013
        assert "too slow" in closed.rcvd.reason


async def test_shutdown_closes_websockets_with_going_away(rig: Rig) -> None:
    async with rig.ws(SUP) as a, rig.ws() as pending:
        await recv(a)
        await until(lambda: len(rig.ws_hub._sockets) == 2)
        await rig.runner.cleanup()
        for ws in (a, pending):
            with pytest.raises(ConnectionClosed) as closed:
                await recv(ws)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1001
    assert not [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("ws-")]


async def test_webhooks_run_with_the_app_and_stop_with_it(make_rig: RigFactory,
                                                           http: aiohttp.ClientSession) -> None:
    got: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def hook(request: web.Request) -> web.Response:
        got.put_nowait(await request.json())
        return web.Response(status=204)

    receiver = web.Application()
    receiver.router.add_post("/hook", hook)
    rcv_runner = web.AppRunner(receiver)
    await rcv_runner.setup()
    try:
        await web.TCPSite(rcv_runner, "127.0.0.1", 0).start()
        url = f"http://127.0.0.1:{rcv_runner.addresses[0][1]}/hook"
        rig = await make_rig({"alerts": {"webhooks": [{"name": "ops", "url": url}]}})
        alert = rig.alert(1)
        async with asyncio.timeout(2):
            body = await got.get()
        assert (body["id"], body["change"]) == (alert.id, "opened")
        async with http.get(f"{rig.base}/metrics", headers=_auth(AGENT)) as resp:
            text = await resp.text()
        assert 'ringwatch_webhook_deliveries_total{result="delivered",webhook="ops"} 1.0' in text
        assert "ringwatch_websocket_clients 0.0" in text
        await rig.runner.cleanup()
        assert not [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith(("webhook-", "ws-"))]
    finally:
        await rcv_runner.cleanup()


async def test_websocket_is_refused_while_shutting_down(rig: Rig) -> None:
    await rig.ws_hub.shutdown()
    with pytest.raises(InvalidStatus) as err:
        async with rig.ws(SUP):
            pass
    assert err.value.response.status_code == 503


# -- HTTP ------------------------------------------------------------------------------


async def test_healthz_needs_no_token_and_reports_the_link(rig: Rig, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{rig.base}/healthz") as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "degraded", "pbx": "asterisk", "pbx_connected": False,
                                      "ami_connected": False, "live_calls": 0}
    rig.monitor.handle(LinkUp(rig.clock.now(), "asterisk"))
    t = rig.clock.now()
    rig.monitor.handle(CallOffered(t, "c1", "inbound", CALLER, "张三", t))
    async with http.get(f"{rig.base}/healthz") as resp:
        assert await resp.json() == {"status": "ok", "pbx": "asterisk", "pbx_connected": True,
                                      "ami_connected": True, "live_calls": 1}


@pytest.mark.parametrize(("path", "method"), [("/api/v1/alerts", "GET"), ("/api/v1/calls", "GET"),
                                              ("/api/v1/agents", "GET"), ("/api/v1/alerts/A1/ack", "POST"),
                                              ("/metrics", "GET")])
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic eDp5"}])
async def test_api_needs_a_valid_token(rig: Rig, http: aiohttp.ClientSession, path: str, method: str,
                                       headers: dict[str, str]) -> None:
    async with http.request(method, rig.base + path, headers=headers) as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        body = await resp.json()
    assert body["error"] == "unauthorized"
    assert body["message"]["zh"]
    assert body["message"]["en"]


@pytest.mark.parametrize(("token", "path", "method", "status"), [
    (AGENT, "/api/v1/alerts", "GET", 403),
    (AGENT, "/api/v1/calls", "GET", 403),
    (AGENT, "/api/v1/agents", "GET", 200),
    (AGENT, "/metrics", "GET", 200),
    (QA, "/api/v1/alerts", "GET", 200),
    (QA, "/api/v1/calls", "GET", 200),
    (QA, "/api/v1/alerts/A1/ack", "POST", 403),
    (SUP, "/api/v1/alerts/A1/ack", "POST", 200),
    (ADMIN, "/api/v1/alerts/A1/resolve", "POST", 200),
])
async def test_roles(rig: Rig, http: aiohttp.ClientSession, token: str, path: str, method: str,
                     status: int) -> None:
    rig.alert(1)
    async with http.request(method, rig.base + path, headers=_auth(token)) as resp:
        assert resp.status == status
        body = await resp.json(content_type=None) if resp.content_type == "application/json" else None
    if status == 403:
        assert body is not None
        assert body["error"] == "forbidden"
        assert "权限" in body["message"]["zh"]


async def test_alert_api(rig: Rig, http: aiohttp.ClientSession) -> None:
    a1, a2 = rig.alert(1), rig.alert(2)
    h = _auth(SUP)
    async with http.post(f"{rig.base}/api/v1/alerts/{a1.id}/ack", headers=h) as resp:
        assert resp.status == 200
        assert (await resp.json())["alert"]["state"] == "acked"
    async with http.get(f"{rig.base}/api/v1/alerts?state=open", headers=h) as resp:
        assert [a["id"] for a in (await resp.json())["alerts"]] == [a2.id]
    async with http.get(f"{rig.base}/api/v1/alerts", headers=h) as resp:
        assert (await resp.json())["count"] == 2
    async with http.post(f"{rig.base}/api/v1/alerts/{a1.id}/ack", headers=h) as resp:
        assert resp.status == 409
        body = await resp.json()
        assert body["error"] == "conflict"
        assert "acked" in body["message"]["en"]
        assert "已确认" in body["message"]["zh"]
    async with http.post(f"{rig.base}/api/v1/alerts/{a1.id}/resolve", headers=h) as resp:
        assert resp.status == 200
    async with http.post(f"{rig.base}/api/v1/alerts/{a1.id}/resolve", headers=h) as resp:
        assert resp.status == 409
    async with http.post(f"{rig.base}/api/v1/alerts/A404/ack", headers=h) as resp:
        assert resp.status == 404
        assert (await resp.json())["error"] == "not_found"


@pytest.mark.parametrize("query", ["state=closed", "kind=all", "limit=0", "limit=x", "limit=100000", "colour=red"])
async def test_bad_query_is_a_clear_400(rig: Rig, http: aiohttp.ClientSession, query: str) -> None:
    async with http.get(f"{rig.base}/api/v1/alerts?{query}", headers=_auth(SUP)) as resp:
        assert resp.status == 400
        body = await resp.json()
    name = query.split("=")[0]
    assert body["error"] == "bad_request"
    assert name in body["message"]["en"]
    assert name in body["message"]["zh"]


async def test_unknown_route_and_method_answer_json(rig: Rig, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{rig.base}/nope") as resp:
        assert resp.status == 404
        assert (await resp.json())["error"] == "not_found"
    async with http.delete(f"{rig.base}/api/v1/alerts", headers=_auth(SUP)) as resp:
        assert resp.status == 405
        assert "GET" in resp.headers["Allow"]
        assert (await resp.json())["error"] == "method_not_allowed"


async def test_calls_and_agents(rig: Rig, http: aiohttp.ClientSession) -> None:
    t = rig.clock.now()
    rig.monitor.handle(CallOffered(t, "c1", "inbound", CALLER, "张三", t))
    rig.monitor.handle(QueueJoined(t, "c1", "support", t))
    rig.monitor.handle(AgentRinging(t, "c1", "leg1", "Agent 7001", "support", t))
    async with http.get(f"{rig.base}/api/v1/calls", headers=_auth(QA)) as resp:
        body = await resp.json()
    assert body["count"] == 1
    call = body["calls"][0]
    assert call["caller"] == "+86139****5678"
    assert call["state"] == "ringing"
    assert call["queue"] == "support"
    assert CALLER not in json.dumps(body)
    async with http.get(f"{rig.base}/api/v1/agents", headers=_auth(AGENT)) as resp:
        agents = (await resp.json())["agents"]
    assert [a["name"] for a in agents] == ["Agent 7001"]
    assert agents[0]["current_call"] == "c1"


async def test_access_log_prints_neither_tokens_nor_query_strings(
        rig: Rig, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with http.get(f"{rig.base}/api/v1/alerts?state=open&token={SUP}", headers=_auth(SUP)) as resp:
        assert resp.status == 400  # a token in the URL is not a way in
    async with http.get(f"{rig.base}/api/v1/alerts?state=open", headers=_auth(SUP)) as resp:
        assert resp.status == 200
    with contextlib.suppress(InvalidStatus):
        async with rig.ws("bad-token-value"):
            pass
    await until(lambda: sum("/api/v1/alerts" in r.getMessage() for r in caplog.records) >= 2)
    # the server's logs (the websockets *client* library logs its own request headers at DEBUG)
    text = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("websockets"))
    assert "GET /ws 401" in text
    assert SUP not in text
    assert "bad-token-value" not in text
    assert "state=open" not in text
