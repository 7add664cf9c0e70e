"""OUT-HOURS / OUT-DNC live and over HTTP: the recorded outbound call S08 replayed at chosen wall-clock
times (``--start-at``), the DNC rule on a dial, the metrics, the permit / status / DNC endpoints on a real
Redis with a virtual clock, and the daemon's wiring."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from alerts.hub import AlertHub
from config.schema import Config
from monitor.auth import TokenStore
from monitor.cli import main
from monitor.clock import VirtualClock
from monitor.daemon import Daemon
from monitor.dnc import DncEntry, cooling_end
from monitor.engine import Monitor
from monitor.outbound import OutboundCollector, OutboundCompliance, outbound_rule
from monitor.outbound_api import OutboundRuntime, calendar_warnings
from monitor.redis_embedded import EmbeddedRedis
from monitor.replay import replay_virtual
from monitor.store import client_from_config
from monitor.web import AccessLogger, build_app

pytestmark = pytest.mark.usefixtures("no_leftover_tasks")

ROOT = Path(__file__).resolve().parents[1]
S08 = ROOT / "tests" / "fixtures" / "ami" / "S08_outbound_click_to_call.jsonl"
DIAL_T = 2.006  # the customer dial of S08, seconds from the trace's start
TZ = dt.timezone(dt.timedelta(hours=8))
DAY = 86400.0


def wall(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).replace(tzinfo=TZ).timestamp()


def replay(start: str | None, cfg: Config | None = None, dnc: Any = None) -> tuple[list[dict[str, Any]], Monitor]:
    out: list[dict[str, Any]] = []

    def setup(m: Monitor) -> None:
        rule = outbound_rule(m.rules)
        assert rule is not None
        rule.attach_dnc(dnc)

    m = replay_virtual(S08, cfg or Config(), out.append, setup, wall_origin=wall(start) if start else 0.0)
    return out, m


# (the trace's t = 0, the first reason of the OUT-HOURS alert or None): the dial comes 2.006 s later
START_AT = [
    ("2026-03-02T08:29:57", "outside_window"),  # Monday: dial 08:29:59
    ("2026-03-02T08:29:58", None),  # dial 08:30:00.006 (whole seconds: 08:30:00)
    ("2026-03-02T12:00:00", None),
    ("2026-03-02T17:29:58", None),  # dial 17:30:00.006
    ("2026-03-02T17:29:59", "outside_window"),  # dial 17:30:01
    ("2026-03-02T07:58:00", "before_earliest"),
    ("2026-03-02T19:59:58", "after_latest"),  # dial 20:00:00
    ("2026-03-01T08:59:57", "outside_window"),  # Sunday: dial 08:59:59
    ("2026-03-01T08:59:58", None),  # 09:00:00
    ("2026-03-01T16:59:58", None),  # 17:00:00
    ("2026-03-01T16:59:59", "outside_window"),  # 17:00:01
    ("2026-02-14T08:29:58", None),  # Saturday, a make-up workday: the workday window
    ("2026-02-15T10:00:00", "holiday"),  # Sunday inside the Spring Festival break
    ("2026-02-17T12:00:00", "holiday"),  # 春节
    ("2026-10-10T17:00:00", None),  # Saturday worked for National Day
    ("2026-10-06T12:00:00", "holiday"),  # a substituted day off
]


@pytest.mark.parametrize(("start", "reason"), START_AT)
def test_s08_replayed_at_a_wall_time_alerts_exactly_outside_the_window(start: str, reason: str | None) -> None:
    out, _m = replay(start)
    alerts = [o for o in out if o["type"] == "alert" and o["rule"].startswith("OUT-")]
    if reason is None:
        assert alerts == []
        return
    assert len(alerts) == 1
    a = alerts[0]
    assert a["rule"] == "OUT-HOURS"
    assert a["at"] == pytest.approx(DIAL_T, abs=1e-6)  # at the dial, while it rings
    assert a["agent"] == "Agent 7001"
    assert a["call"] == "1795295075.0"
    assert a["caller"] == "5****34"  # masked
    assert "5551234" not in json.dumps(a, ensure_ascii=False)
    assert a["details"]["reason"] == reason
    assert a["details"]["day"]["date"] == (dt.datetime.fromisoformat(start) + dt.timedelta(seconds=DIAL_T)).date(
        ).isoformat()
    assert a["details"]["at_local"].startswith(start[:11])
    assert a["text"]["zh"].startswith("坐席 Agent 7001 违规外呼 5****34")
    # the call itself is tracked as always
    assert [o["direction"] for o in out if o["type"] == "call"] == ["outbound"]


def test_without_start_at_the_trace_has_no_time_of_day() -> None:
    out, m = replay(None)
    assert not [o for o in out if o["type"] == "alert" and o["rule"].startswith("OUT-")]
    assert [o["rule"] for o in out if o["type"] == "alert"] == ["SYS-REC"]  # S08 was not recorded: as before
    rule = outbound_rule(m.rules)
    assert rule is not None
    assert rule.checked == 0


def test_the_cli_replay_start_at(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(S08), "--json", "--start-at", "2026-02-17T10:00:00+08:00"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(o["rule"], o["details"]["reason"]) for o in lines
            if o["type"] == "alert" and o["rule"].startswith("OUT-")] == [("OUT-HOURS", "holiday")]
    assert main(["replay", str(S08), "--json", "--start-at", "2026-03-02 09:00"]) == 0  # no offset: Asia/Shanghai
    assert not [o for o in map(json.loads, capsys.readouterr().out.splitlines())
                if o["type"] == "alert" and o["rule"].startswith("OUT-")]
    assert main(["replay", str(S08), "--start-at", "someday"]) == 2
    assert "ISO 8601" in capsys.readouterr().err


@dataclass
class FakeDnc:
    entries: dict[str, DncEntry]
    on_expiry: str = "expire"
    ok: bool = True

    def lookup(self, number: str) -> tuple[bool, DncEntry | None]:
        return self.ok, self.entries.get(number)


def _listed(number: str, requested: float) -> FakeDnc:
    until = cooling_end(requested, 90, TZ)
    return FakeDnc({number: DncEntry(number, "客户拒绝", requested, until, "agent-7002", "Agent 7002", "c0")})


def test_a_dial_to_a_listed_number_raises_out_dnc_with_the_entry() -> None:
    start = "2026-03-02T10:00:00"
    out, m = replay(start, dnc=_listed("5551234", wall(start) - 10 * DAY))
    alerts = [o for o in out if o["type"] == "alert" and o["rule"].startswith("OUT-")]
    assert [(a["rule"], a["severity"], a["details"]["reason"]) for a in alerts] == [("OUT-DNC", "critical", "dnc")]
    entry = alerts[0]["details"]["dnc"]
    assert (entry["reason"], entry["agent"], entry["state"]) == ("客户拒绝", "Agent 7002", "active")
    assert entry["until"] == "2026-05-21T00:00:00+08:00"  # 2026-02-20 + 90 days
    # on a holiday too: both rules, one alert each
    out, _m = replay("2026-02-17T10:00:00", dnc=_listed("5551234", wall("2026-02-10T10:00:00")))
    assert sorted(o["rule"] for o in out if o["type"] == "alert" and o["rule"].startswith("OUT-")) == [
        "OUT-DNC", "OUT-HOURS"]
    # past the cooling period: allowed; the list unreadable: counted, no alert (not the agent's fault)
    out, _m = replay(start, dnc=_listed("5551234", wall(start) - 90 * DAY))
    assert not [o for o in out if o["type"] == "alert" and o["rule"].startswith("OUT-")]
    down = FakeDnc({}, ok=False)
    out, m = replay(start, dnc=down)
    assert not [o for o in out if o["type"] == "alert" and o["rule"].startswith("OUT-")]
    rule = outbound_rule(m.rules)
    assert rule is not None
    assert rule.unchecked["dnc_unavailable"] == 1


def test_metrics_count_by_rule_reason_and_team() -> None:
    cfg = Config.model_validate({"outbound": {"teams": {"team-a": {"agents": ["Agent 7001"]}}}})
    registry = CollectorRegistry()
    for start in ("2026-02-17T10:00:00", "2026-03-02T21:00:00"):
        _out, m = replay(start, cfg)
        rule = outbound_rule(m.rules)
        assert rule is not None
        registry.register(OutboundCollector(rule, rule.policy, m.clock))
        text = generate_latest(registry).decode()
        registry = CollectorRegistry()
        reason = "holiday" if start.startswith("2026-02-17") else "after_latest"
        assert (f'ringwatch_outbound_violations_total{{reason="{reason}",rule="OUT-HOURS",team="team-a"}} 1.0'
                in text)
        assert 'ringwatch_calendar_year_missing{year="2026"} 0.0' in text
        assert "5551234" not in text
        assert rule.today(m.clock.wall(m.clock.now()))["by_rule"] == {"OUT-HOURS": 1, "OUT-DNC": 0}


def test_the_calendar_gauge_and_warnings_for_a_year_without_data() -> None:
    clock = VirtualClock(wall_origin=wall("2099-12-10T10:00:00"))
    rule = OutboundCompliance(Config(), clock)
    registry = CollectorRegistry()
    registry.register(OutboundCollector(rule, rule.policy, clock))
    text = generate_latest(registry).decode()
    assert 'ringwatch_calendar_year_missing{year="2099"} 1.0' in text
    assert 'ringwatch_calendar_year_missing{year="2100"} 1.0' in text
    levels = [level for level, _msg in calendar_warnings(rule.policy, clock.wall(0))]
    assert levels == [40, 30]  # ERROR for this year, WARNING for the next (22 days ahead)
    assert calendar_warnings(rule.policy, wall("2026-06-01T10:00:00")) == []  # 2027 is more than 45 days away


# -- HTTP ---------------------------------------------------------------------------------------------------

PBX, AGENT, SUP, QA = "pbx-token-0123456789", "agent-token-0123456789", "sup-token-0123456789", "qa-token-012345678"
W0 = wall("2026-03-02T10:00:00")  # Monday


@dataclass
class Api:
    clock: VirtualClock
    rt: OutboundRuntime
    monitor: Monitor
    http: aiohttp.ClientSession
    base: str

    async def call(self, method: str, path: str, token: str = SUP, body: Any = None, raw: bytes | None = None,
                   headers: dict[str, str] | None = None) -> tuple[int, Any]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        async with self.http.request(method, self.base + path, data=data,
                                     headers={"Authorization": f"Bearer {token}", **(headers or {})}) as resp:
            text = await resp.text()
            return resp.status, (json.loads(text) if resp.content_type == "application/json" else text)

    async def jump(self, t: float) -> None:
        self.clock.advance_to(t)
        assert self.rt.dnc is not None
        await self.rt.dnc.sync_once()


@pytest.fixture
async def api(redis_server: EmbeddedRedis) -> AsyncIterator[Api]:
    cfg = Config()
    clock = VirtualClock(wall_origin=W0)
    hub = AlertHub(clock.now)
    monitor = Monitor(cfg, clock, hub)
    tokens = TokenStore([(PBX, "asterisk", "pbx"), (AGENT, "agent-7001", "agent"), (SUP, "floor-a", "supervisor"),
                         (QA, "qa-1", "qa")])
    registry = CollectorRegistry()
    app = build_app(monitor, hub, cfg, registry, tokens=tokens)
    assert redis_server.url is not None
    client = client_from_config(redis_server.url, cfg.redis)
    rt = OutboundRuntime(cfg, clock, monitor, registry)
    await rt.start(app, client)
    assert rt.dnc is not None
    await rt.dnc.sync_once()
    runner = web.AppRunner(app, access_log_class=AccessLogger, shutdown_timeout=5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        async with aiohttp.ClientSession() as http:
            yield Api(clock, rt, monitor, http, f"http://127.0.0.1:{runner.addresses[0][1]}")
    finally:
        await runner.cleanup()
        await rt.stop()
        await client.aclose()


def assert_error(status: int, payload: Any, want: int, code: str | None = None) -> None:
    assert status == want, payload
    assert set(payload) == {"error", "message"}
    assert payload["message"]["zh"]
    assert payload["message"]["en"]
    if code:
        assert payload["error"] == code


async def test_permit_json_and_text(api: Api) -> None:
    status, body = await api.call("GET", "/api/v1/outbound/permit?number=13912345678&agent=Agent%207001"
                                  "&campaign=renewal", token=PBX)
    assert status == 200
    assert body["allow"] is True
    assert body["reasons"] == []
    assert body["next_allowed_at"] is None
    assert body["at"] == "2026-03-02T10:00:00+08:00"
    assert body["day"]["type"] == "workday"
    assert body["windows"] == ["08:30-17:30"]
    assert body["number"] == "139****5678"
    status, text = await api.call("GET", "/api/v1/outbound/permit?number=13912345678&format=text", token=PBX)
    assert (status, text) == (200, "ALLOW")
    status, body = await api.call("GET", "/api/v1/outbound/permit?number=13912345678&at=2026-02-17T09:00", token=PBX)
    assert body["allow"] is False
    assert body["reasons"][0]["code"] == "holiday"
    assert body["reasons"][0]["rule"] == "OUT-HOURS"
    assert body["reasons"][0]["holiday"]["zh"] == "春节"
    assert body["next_allowed_at"] == "2026-02-24T08:30:00+08:00"
    status, text = await api.call("GET", "/api/v1/outbound/permit?number=139&format=text", token=PBX)
    assert text == "DENY:invalid_number"
    status, text = await api.call("GET", "/api/v1/outbound/permit?number=13912345678&format=text&at=2026-03-02T20:00",
                                  token=PBX)
    assert text == "DENY:after_latest"


async def test_permit_errors_and_permissions(api: Api) -> None:
    for query, name in [("", "number"), ("?number=1&at=tomorrow", "at"), ("?number=1&format=xml", "format"),
                        ("?number=1&caller=2", "caller")]:
        status, body = await api.call("GET", "/api/v1/outbound/permit" + query, token=PBX)
        assert_error(status, body, 400, "bad_request")
        assert name in body["message"]["en"]
    status, body = await api.call("GET", "/api/v1/outbound/permit?number=1", token="nope-0123456789abcdef")
    assert_error(status, body, 401)
    status, body = await api.call("GET", "/api/v1/outbound/permit?number=13912345678", token=QA)
    assert_error(status, body, 403, "forbidden")
    status, body = await api.call("GET", "/api/v1/dnc/13912345678", token=PBX)  # the PBX token only asks
    assert_error(status, body, 403, "forbidden")
    status, body = await api.call("DELETE", "/api/v1/dnc/13912345678", token=AGENT, body={"reason": "x"})
    assert_error(status, body, 403, "forbidden")  # agents add, supervisors remove


async def test_dnc_over_http_day_89_and_day_90(api: Api) -> None:
    status, body = await api.call("POST", "/api/v1/dnc", token=AGENT, body={
        "number": "+86 139-1234-5678", "reason": "客户说不要再打来", "agent": "Agent 7001", "source_call": "c-1"})
    assert status == 201, body
    assert body["created"] is True
    assert body["entry"]["until"] == "2026-05-31T00:00:00+08:00"
    assert body["entry"]["by"] == "agent-7001"
    status, body = await api.call("POST", "/api/v1/dnc", token=AGENT, body={"number": "013912345678",
                                                                              "reason": "again"})
    assert status == 200
    assert body["created"] is False
    assert body["previous"]["reason"] == "客户说不要再打来"
    for variant in ("13912345678", "+8613912345678", "0139-1234-5678", "0086%20139%201234%205678"):
        status, body = await api.call("GET", f"/api/v1/dnc/{variant}", token=QA)
        assert status == 200, variant
        assert body["entry"]["number"] == "13912345678"
        assert body["blocks"] is True
    path = "/api/v1/outbound/permit?number=%2B86%20139%201234%205678"
    status, body = await api.call("GET", path, token=PBX)
    assert body["allow"] is False
    assert [r["code"] for r in body["reasons"]] == ["dnc"]
    assert body["reasons"][0]["entry"]["reason"] == "again"
    await api.jump(89 * DAY)  # Saturday 2026-05-30 10:00, inside the rest-day window
    status, body = await api.call("GET", path, token=PBX)
    assert (body["allow"], body["at"]) == (False, "2026-05-30T10:00:00+08:00")
    assert body["next_allowed_at"] == "2026-05-31T09:00:00+08:00"
    await api.jump(90 * DAY)
    status, body = await api.call("GET", path, token=PBX)
    assert body["allow"] is True, body


async def test_dnc_add_from_a_call_list_remove_and_audit(api: Api) -> None:
    from telephony.events import CallOffered

    api.monitor.handle(CallOffered(0.0, "call-9", "outbound", "+86 138 0013 8000", "", 0.0, agent="Agent 7003"))
    status, body = await api.call("POST", "/api/v1/dnc", token=AGENT, body={"source_call": "call-9",
                                                                              "reason": "拒绝"})
    assert status == 201, body
    assert (body["entry"]["agent"], body["entry"]["source_call"]) == ("Agent 7003", "call-9")
    for bad, field in [({"reason": "x"}, "number"), ({"number": "13912345678"}, "reason"),
                       ({"number": "13912345678", "reason": "x", "extra": 1}, "extra"),
                       ({"number": "13912345678", "reason": "x", "requested_at": "2030-01-01"}, "requested_at")]:
        status, payload = await api.call("POST", "/api/v1/dnc", token=AGENT, body=bad)
        assert_error(status, payload, 400)
        assert field in payload["message"]["en"]
    status, payload = await api.call("POST", "/api/v1/dnc", token=AGENT, body={"number": "abc", "reason": "x"})
    assert_error(status, payload, 400, "invalid_number")
    status, body = await api.call("GET", "/api/v1/dnc?state=active", token=QA)
    assert [e["number"] for e in body["entries"]] == ["138****8000"]
    status, payload = await api.call("DELETE", "/api/v1/dnc/13800138000", token=SUP)
    assert_error(status, payload, 400)  # a reason is required
    status, body = await api.call("DELETE", "/api/v1/dnc/13800138000", token=SUP, body={"reason": "客户同意回访"})
    assert status == 200
    assert body["removed"]["reason"] == "拒绝"
    status, payload = await api.call("DELETE", "/api/v1/dnc/13800138000?reason=again", token=SUP)
    assert_error(status, payload, 404, "not_listed")
    status, payload = await api.call("GET", "/api/v1/dnc/13800138000", token=QA)
    assert_error(status, payload, 404, "not_listed")
    assert api.rt.dnc is not None
    assert api.rt.dnc.store is not None
    rows = await api.rt.dnc.store.client.xrange("ringwatch:audit")
    got = [(f["action"], f["actor"], f["target"]) for _id, f in rows]
    assert got == [("dnc.add", "agent-7001", "138****8000"), ("dnc.remove", "floor-a", "138****8000")]


async def test_import_and_export_over_http(api: Api) -> None:
    csv_body = "number,reason,agent\n13912345678,拒绝,Agent 7001\nbad,x,\n010-12345678,投诉,\n".encode("gbk")
    status, body = await api.call("POST", "/api/v1/dnc/import?encoding=gbk", raw=csv_body,
                                  headers={"Content-Type": "text/csv"})
    assert status == 200, body
    assert (body["rows"], body["added"], body["errors_total"]) == (3, 2, 1)
    assert body["errors"][0]["line"] == 3
    status, body = await api.call("POST", "/api/v1/dnc/import", raw=b"phone\n1\n")
    assert_error(status, body, 400, "bad_csv")
    status, body = await api.call("POST", "/api/v1/dnc/import?encoding=utf-16", raw=b"")
    assert_error(status, body, 400)
    status, text = await api.call("GET", "/api/v1/dnc/export")
    assert status == 200
    assert text.startswith("\ufeffnumber,reason,")
    assert sorted(line.split(",")[0] for line in text.strip().splitlines()[1:]) == ["1012345678", "13912345678"]
    status, body = await api.call("GET", "/api/v1/dnc/export", token=AGENT)
    assert_error(status, body, 403)


async def test_status_now_and_violations_today(api: Api) -> None:
    status, body = await api.call("GET", "/api/v1/outbound/status", token=AGENT)
    assert status == 200, body
    assert (body["allowed"], body["until"], body["why"]) == (True, "2026-03-02T17:30:00+08:00", [])
    assert body["day"]["type"] == "workday"
    assert body["violations_today"] == {"date": "2026-03-02", "total": 0, "by_rule": {"OUT-HOURS": 0, "OUT-DNC": 0},
                                        "by_reason": {}}
    assert body["calendar"]["source"] == "library"
    await api.jump(8 * 3600.0)  # 18:00
    from telephony.events import CallOffered

    api.monitor.handle(CallOffered(api.clock.now(), "c-late", "outbound", "13912345678", "", api.clock.now(),
                                   agent="Agent 7001"))
    status, body = await api.call("GET", "/api/v1/outbound/status", token=AGENT)
    assert (body["allowed"], body["until"]) == (False, "2026-03-03T08:30:00+08:00")
    assert body["why"][0]["code"] == "outside_window"
    assert body["violations_today"]["by_rule"]["OUT-HOURS"] == 1
    assert body["violations_today"]["by_reason"] == {"outside_window": 1}
    status, body = await api.call("GET", "/api/v1/outbound/status?team=x&campaign=y", token=AGENT)
    assert status == 200
    status, body = await api.call("GET", "/api/v1/outbound/status?number=1", token=AGENT)
    assert_error(status, body, 400)


async def test_redis_down_writes_503_permit_keeps_answering(api: Api, redis_server: EmbeddedRedis) -> None:
    status, _ = await api.call("POST", "/api/v1/dnc", token=AGENT, body={"number": "13912345678", "reason": "x"})
    assert status == 201
    await redis_server.stop()
    status, body = await api.call("POST", "/api/v1/dnc", token=AGENT, body={"number": "13912345679", "reason": "x"})
    assert_error(status, body, 503, "store_unavailable")
    status, text = await api.call("GET", "/api/v1/outbound/permit?number=13912345678&format=text", token=PBX)
    assert text == "DENY:dnc"  # from the local copy
    status, body = await api.call("GET", "/api/v1/dnc/13912345678", token=QA)
    assert status == 200  # from the local copy while it is fresh
    api.clock.advance(301)
    status, text = await api.call("GET", "/api/v1/outbound/permit?number=13912345679&format=text", token=PBX)
    assert text == "DENY:dnc_unavailable"  # stale: fail closed as configured


async def test_the_daemon_serves_the_outbound_routes(tmp_path: Path) -> None:
    cfg = Config.model_validate({"http": {"port": 0}, "data_dir": str(tmp_path),
                                 "lines": {"enabled": False}})
    clock = VirtualClock(wall_origin=W0)
    daemon = Daemon(cfg, TokenStore([(SUP, "floor-a", "supervisor")]), clock=clock, host="127.0.0.1", port=9,
                    secret="x")
    try:
        await daemon.start()
        assert daemon.outbound is not None
        assert daemon.outbound.dnc is not None
        assert daemon.commitments is not None
        assert daemon.commitments.store is not None
        assert daemon.outbound.dnc.store is not None
        assert daemon.outbound.dnc.store.client is daemon.commitments.store.client  # one Redis
        base = f"http://127.0.0.1:{daemon.http_port}"
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {SUP}"}) as http:
            async with http.get(base + "/api/v1/outbound/status") as resp:
                assert resp.status == 200
                assert (await resp.json())["allowed"] is True
            async with http.get(base + "/metrics") as resp:
                text = await resp.text()
        assert 'ringwatch_calendar_year_missing{year="2026"} 0.0' in text
        assert "ringwatch_outbound_permit_seconds_bucket" in text
    finally:
        await daemon.stop()
