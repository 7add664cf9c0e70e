"""SYS-LINES daily inspection: the report of a replayed day checked field by field, its schedule in the
configured time zone on the virtual clock, the failure reasons, the notice pushed through the hub, the
metrics of the last result, the CSV, the stores (memory, Redis) and the HTTP API."""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from alerts.hub import AlertChange, AlertHub
from config.schema import Config, RedisConfig
from monitor.auth import TokenStore
from monitor.clock import VirtualClock
from monitor.engine import Monitor
from monitor.inspection import (
    InspectionStoreUnavailable,
    LinesRuntime,
    MemoryInspectionStore,
    RedisInspectionStore,
    next_due,
    reports_csv,
)
from monitor.probe import ProbeResult, ProbeRunner, ProbeSpec
from monitor.redis_embedded import EmbeddedRedis
from monitor.store import client_from_config
from monitor.web import build_app
from telephony.ami.adapter import channel_rules, replay_trace
from tests.test_lines import DAY0, TZ, Trace, at

pytestmark = pytest.mark.usefixtures("no_leftover_tasks")
DAY = 86400.0


def ok_probe() -> ProbeResult:
    return ProbeResult("ok", registered=True, register_ms=1.5, post_dial_delay_ms=11.5, answer_ms=11.7, answered=True,
                       final_status=200, rtp_packets=100, rtp_voiced=100, first_rtp_ms=15.0, audio=True,
                       hangup="confirmed", hangup_ms=9.8, started_wall=1.0, duration_s=2.5)


def not_found_probe() -> ProbeResult:
    return ProbeResult("not_found", detail="404 Not Found", registered=True, register_ms=1.5, final_status=404)


class FakeProbe:
    """Stands in for the worker process: returns the next prepared result (the rig tests run the real one)."""

    def __init__(self, *results: ProbeResult) -> None:
        self.results = list(results)
        self.specs: list[ProbeSpec] = []

    async def __call__(self, spec: ProbeSpec) -> ProbeResult:
        self.specs.append(spec)
        return self.results.pop(0) if len(self.results) > 1 else self.results[0]


def cfg_for(**lines: Any) -> Config:
    base: dict[str, Any] = {
        "trunks": [{"name": "telecom", "lines": ["^PJSIP/telecom$"]}, {"name": "unicom", "lines": ["^PJSIP/unicom$"]}],
        "escalation_targets": ["网络值班"],
        "probe": {"enabled": True, "hotline": "95500", "daily_margin_min": 10},
    }
    base.update(lines)
    return Config.model_validate({"lines": base})


class Rig:
    def __init__(self, cfg: Config, probe: FakeProbe, store: Any = None) -> None:
        self.cfg = cfg
        self.clock = VirtualClock(wall_origin=DAY0)
        self.hub = AlertHub(self.clock.now)
        self.changes: list[AlertChange] = []
        self.hub.add_sink(self)
        self.monitor = Monitor(cfg, self.clock, self.hub)
        self.registry = CollectorRegistry()
        self.fake = probe
        self.runtime = LinesRuntime(cfg, self.clock, self.hub, self.monitor, self.registry,
                                    store=store or MemoryInspectionStore(), probe=ProbeRunner(cfg.lines.probe, probe))

    name = "test"

    def offer(self, change: AlertChange) -> None:
        self.changes.append(change)

    def replay(self, trace: Trace, path: Path) -> None:
        replay_trace(trace.write(path), self.clock.advance_to, self.monitor.handle, rules=channel_rules(self.cfg),
                     lines=self.runtime.tracker)

    def notices(self) -> list[dict[str, Any]]:
        return [c.alert.to_json() for c in self.changes if c.kind == "opened" and c.alert.kind == "notice"
                and "inspection" in c.alert.key]

    def metrics(self) -> dict[str, Any]:
        fams = text_string_to_metric_families(generate_latest(self.registry).decode())
        return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fams for s in f.samples}


@pytest.fixture
async def rig_factory() -> AsyncIterator[Any]:
    made: list[Rig] = []

    async def make(cfg: Config, probe: FakeProbe, store: Any = None) -> Rig:
        rig = Rig(cfg, probe, store)
        await rig.runtime.start()
        made.append(rig)
        return rig

    yield make
    for rig in made:
        await rig.runtime.stop()


def the_day(tr: Trace) -> None:
    """05-11: both trunks up from 08:00; telecom down 14:00-14:40 (escalated 14:30); calls on both trunks."""
    tr.banner(0.0)
    tr.device(1.0, "PJSIP/telecom", "NOT_INUSE")
    tr.device(1.0, "PJSIP/unicom", "NOT_INUSE")
    tr.inbound(at(9, 0), "telecom", answer_after=5)
    tr.inbound(at(9, 30), "telecom", answer_after=8)
    tr.inbound(at(10, 0), "telecom", answer_after=None)
    tr.inbound(at(11, 0), "telecom", answer_after=3)
    tr.outbound(at(11, 30), "telecom", answered=True)
    tr.outbound(at(12, 0), "telecom", answered=False)
    tr.inbound(at(13, 0), "unicom", answer_after=4)
    tr.inbound(at(15, 0), "unicom", answer_after=4, recorded=False)  # in8: answered, never recorded
    tr.device(at(14, 0), "PJSIP/telecom", "UNAVAILABLE")
    tr.device(at(14, 40), "PJSIP/telecom", "NOT_INUSE")


async def test_the_daily_report_of_a_replayed_day_field_by_field(rig_factory: Any, tmp_path: Path) -> None:
    rig: Rig = await rig_factory(cfg_for(), FakeProbe(ok_probe()))
    inspector = rig.runtime.inspector
    assert inspector is not None
    tr = Trace()
    the_day(tr)
    rig.replay(tr, tmp_path / "day.jsonl")
    # the inspection (probe first) starts 10 min before 07:30 local the next day, not earlier
    rig.clock.advance_to(DAY + at(7, 19, 59.9))
    await inspector.idle()
    assert inspector.last is None
    rig.clock.advance_to(DAY + at(7, 20))
    await inspector.idle()
    r = inspector.last
    assert r is not None
    assert len(rig.fake.specs) == 1
    assert rig.fake.specs[0].hotline == "95500"

    assert r["type"] == "inspection"
    assert r["id"] == "20260512T072000"
    assert r["date"] == "2026-05-12"
    assert r["due"] == "2026-05-12T07:30:00+08:00"
    assert r["generated_at"] == "2026-05-12T07:20:00+08:00"
    assert r["generated_wall"] == pytest.approx(DAY0 + DAY + at(7, 20))
    assert r["on_time"] is True
    assert r["trigger"] == "schedule"
    assert r["pbx_connected"] is True
    # lines and their state
    assert r["trunks"] == [
        {"name": "telecom", "configured": True, "state": "up", "since": "2026-05-11T14:40:00+08:00", "down_s": 0.0,
         "lines": [{"line": "PJSIP/telecom", "state": "up", "detail": "device NOT_INUSE"}]},
        {"name": "unicom", "configured": True, "state": "up", "since": "2026-05-11T08:00:01+08:00", "down_s": 0.0,
         "lines": [{"line": "PJSIP/unicom", "state": "up", "detail": "device NOT_INUSE"}]},
    ]
    # yesterday's outage, escalated at 30 min, resolved at 14:40, 40 min down
    [outage] = r["outages"]
    assert {k: v for k, v in outage.items() if k != "alerts"} == {
        "trunk": "telecom", "lines": ["PJSIP/telecom"], "detail": "PJSIP/telecom: device UNAVAILABLE",
        "down_at": "2026-05-11T14:00:00+08:00", "up_at": "2026-05-11T14:40:00+08:00", "down_s": 2400.0,
        "ongoing": False, "escalated": True}
    assert len(outage["alerts"]) == 2
    # yesterday's connect rate per trunk, from the replayed calls
    assert r["connect_rate"] == {
        "day": "2026-05-11",
        "trunks": [
            {"trunk": "telecom", "inbound": {"offered": 4, "answered": 3, "rate": 0.75},
             "outbound": {"attempted": 2, "answered": 1, "rate": 0.5}},
            {"trunk": "unicom", "inbound": {"offered": 2, "answered": 2, "rate": 1.0},
             "outbound": {"attempted": 0, "answered": 0, "rate": None}},
        ],
        "all": {"inbound": {"offered": 6, "answered": 5, "rate": 0.8333},
                "outbound": {"attempted": 2, "answered": 1, "rate": 0.5}},
    }
    # recording function (SYS-REC): 6 answered calls, one without a recording
    assert r["recording"] == {"day": "2026-05-11", "answered": 6, "recorded": 5, "rate": 0.8333,
                              "unrecorded_calls": ["in8"]}
    # the probe's result
    probe = r["probe"]
    assert probe["enabled"] is True
    assert probe["hotline"] == "95500"
    assert probe["ok"] is True
    assert probe["outcome"] == "ok"
    assert (probe["register_ms"], probe["post_dial_delay_ms"], probe["answer_ms"]) == (1.5, 11.5, 11.7)
    assert (probe["rtp_packets"], probe["audio"], probe["hangup"]) == (100, True, "confirmed")
    # the verdict: one problem, the unrecorded call
    assert r["result"] == "fail"
    assert [p["code"] for p in r["problems"]] == ["recording_missing"]
    assert r["problems"][0]["text"]["zh"] == "昨日有 1 通已接通话未录音(录音率 83.3%)"

    # pushed to supervisors: a notice through the hub
    [notice] = rig.notices()
    assert notice["rule"] == "SYS-LINES"
    assert notice["severity"] == "warning"
    assert notice["details"] == {"inspection": r["id"], "result": "fail", "problems": ["recording_missing"]}
    assert notice["text"]["zh"].startswith("每日巡检 2026-05-12:发现 1 个问题")
    # stored
    assert await inspector.store.list(10) == [r]
    # metrics of the last result
    m = rig.metrics()
    assert m[("ringwatch_inspection_last_pass", ())] == 0
    assert m[("ringwatch_inspection_last_problems", ())] == 1
    assert m[("ringwatch_inspection_recording_ratio", ())] == pytest.approx(0.8333)
    assert m[("ringwatch_inspection_last_timestamp_seconds", ())] == pytest.approx(r["generated_wall"])
    assert m[("ringwatch_probe_last_success", ())] == 1
    assert m[("ringwatch_probe_last_phase_seconds", (("phase", "post_dial_delay"),))] == pytest.approx(0.0115)
    assert m[("ringwatch_probe_runs_total", (("outcome", "ok"),))] == 1
    assert m[("ringwatch_trunk_up", (("trunk", "telecom"),))] == 1
    nxt = dt.datetime(2026, 5, 13, 7, 30, tzinfo=TZ).timestamp()
    assert m[("ringwatch_inspection_next_timestamp_seconds", ())] == pytest.approx(nxt)  # re-armed for tomorrow
    # the CSV: one row per trunk
    rows = list(csv.DictReader(io.StringIO(reports_csv([r]))))
    assert [(x["trunk"], x["trunk_state"], x["inbound_offered"], x["inbound_answered"], x["inbound_rate"],
             x["outbound_attempted"], x["outages"], x["outage_down_s"]) for x in rows] == [
        ("telecom", "up", "4", "3", "0.75", "2", "1", "2400.0"), ("unicom", "up", "2", "2", "1.0", "0", "0", "0")]
    assert {x["result"] for x in rows} == {"fail"}
    assert {x["problems"] for x in rows} == {"recording_missing"}
    assert {x["recording_rate"] for x in rows} == {"0.8333"}
    assert {x["probe_outcome"] for x in rows} == {"ok"}


async def test_a_failing_inspection_names_every_problem(rig_factory: Any, tmp_path: Path) -> None:
    rig: Rig = await rig_factory(cfg_for(min_connect_ratio=0.9, min_recording_ratio=0.5),
                                 FakeProbe(not_found_probe(), ok_probe()))
    inspector = rig.runtime.inspector
    assert inspector is not None
    tr = Trace()
    the_day(tr)
    tr.device(DAY + at(6, 0), "PJSIP/unicom", "UNAVAILABLE")  # down since 06:00 on the inspection day
    rig.replay(tr, tmp_path / "bad.jsonl")
    rig.clock.advance_to(DAY + at(7, 20))
    await inspector.idle()
    r = inspector.last
    assert r is not None
    assert r["result"] == "fail"
    assert [(p["code"], p.get("trunk"), p.get("outcome")) for p in r["problems"]] == [
        ("trunk_down", "unicom", None), ("low_connect_rate", "telecom", None), ("probe_failed", None, "not_found")]
    texts = [p["text"]["en"] for p in r["problems"]]
    assert texts[0] == "trunk unicom is down (PJSIP/unicom: device UNAVAILABLE)"
    assert texts[1] == "trunk telecom: yesterday's inbound connect rate 75.0% is below 90%"
    assert texts[2] == "test call failed: the hotline number was not found (not registered?) (404 Not Found)"
    unicom = next(t for t in r["trunks"] if t["name"] == "unicom")
    assert unicom["state"] == "down"
    assert unicom["down_s"] == pytest.approx(4800.0)  # down since 06:00, the report written at 07:20
    # the probe's failure also opened an alert; the next good probe resolves it
    [probe_alert] = [c.alert for c in rig.changes if c.kind == "opened" and c.alert.key.startswith("SYS-LINES:probe")]
    assert probe_alert.severity == "warning"
    assert "热线号码不存在" in probe_alert.text_zh
    again = await inspector.inspect("manual")
    assert again["trigger"] == "manual"
    assert [p["code"] for p in again["problems"]] == ["trunk_down", "low_connect_rate"]
    assert probe_alert.state == "resolved"


async def test_the_report_says_when_the_pbx_link_is_down_and_the_probe_is_off(rig_factory: Any,
                                                                              tmp_path: Path) -> None:
    cfg = cfg_for(probe={"enabled": False}, trunks=[{"name": "mobile", "lines": ["^PJSIP/mobile$"]}])
    rig: Rig = await rig_factory(cfg, FakeProbe(ok_probe()))
    inspector = rig.runtime.inspector
    assert inspector is not None
    tr = Trace()
    tr.banner(0.0)
    tr.eof(at(23, 0))
    rig.replay(tr, tmp_path / "down.jsonl")
    rig.clock.advance_to(DAY + at(7, 30))  # no probe: the inspection itself is at 07:30
    await inspector.idle()
    r = inspector.last
    assert r is not None
    assert r["generated_at"] == "2026-05-12T07:30:00+08:00"
    assert [p["code"] for p in r["problems"]] == ["trunk_unknown", "pbx_link_down"]
    assert r["probe"] == {"enabled": False, "hotline": "95500"}
    assert r["recording"]["rate"] is None  # no answered call: nothing to judge
    assert rig.fake.specs == []


async def test_the_probe_every_n_minutes_and_its_alert(rig_factory: Any) -> None:
    rig: Rig = await rig_factory(cfg_for(probe={"enabled": True, "every_min": 15}),
                                 FakeProbe(ok_probe(), not_found_probe(), not_found_probe(), ok_probe()))
    inspector = rig.runtime.inspector
    assert inspector is not None
    runs = []
    for minute in (14.99, 15, 30, 45, 60):
        rig.clock.advance_to(minute * 60)
        await inspector.idle()
        runs.append(len(rig.fake.specs))
    assert runs == [0, 1, 2, 3, 4]  # at 15, 30, 45 and 60 min, on the virtual clock
    opened = [c.alert for c in rig.changes if c.kind == "opened" and c.alert.key.startswith("SYS-LINES:probe")]
    assert len(opened) == 1  # two failures in a row: one alert
    assert opened[0].at == pytest.approx(30 * 60)
    assert opened[0].state == "resolved"  # by the good probe at 60 min
    assert opened[0].resolved_at == pytest.approx(60 * 60)
    assert inspector.last is None  # probes alone write no report


def test_next_due_in_the_configured_time_zone() -> None:
    tz = TZ
    t = dt.datetime(2026, 5, 11, 7, 29, 59, tzinfo=tz).timestamp()
    assert next_due("07:30", tz, t) == dt.datetime(2026, 5, 11, 7, 30, tzinfo=tz).timestamp()
    t = dt.datetime(2026, 5, 11, 7, 30, tzinfo=tz).timestamp()
    assert next_due("07:30", tz, t) == dt.datetime(2026, 5, 12, 7, 30, tzinfo=tz).timestamp()
    utc = dt.datetime(2026, 5, 11, 0, 0, tzinfo=dt.UTC).timestamp()  # 08:00 in Shanghai
    assert next_due("07:30", tz, utc) == dt.datetime(2026, 5, 12, 7, 30, tzinfo=tz).timestamp()
    from zoneinfo import ZoneInfo

    ny = ZoneInfo("America/New_York")  # across a DST change the local time is kept
    t = dt.datetime(2026, 3, 7, 12, 0, tzinfo=ny).timestamp()
    assert dt.datetime.fromtimestamp(next_due("07:30", ny, t + DAY), ny).strftime("%H:%M") == "07:30"


async def test_redis_store_keeps_the_newest_reports(redis_server: EmbeddedRedis) -> None:
    assert redis_server.url is not None
    store = RedisInspectionStore(client_from_config(redis_server.url, RedisConfig()), "rwtest:", keep=2)
    try:
        for i in range(3):
            await store.save({"id": f"r{i}", "generated_wall": 100.0 + i, "result": "pass", "问题": []})
        assert [r["id"] for r in await store.list(10)] == ["r2", "r1"]
        assert await store.get("r0") is None  # trimmed, key deleted
        assert await store.get("r1") == {"id": "r1", "generated_wall": 101.0, "result": "pass", "问题": []}
    finally:
        await store.close()
    dead = RedisInspectionStore(client_from_config("redis://127.0.0.1:1", RedisConfig(connect_timeout_s=0.2)))
    with pytest.raises(InspectionStoreUnavailable):
        await dead.list(1)
    await dead.close()


async def test_reports_stay_available_from_memory_when_the_store_is_down(rig_factory: Any) -> None:
    dead = RedisInspectionStore(client_from_config("redis://127.0.0.1:1", RedisConfig(connect_timeout_s=0.2)))
    rig: Rig = await rig_factory(cfg_for(), FakeProbe(ok_probe()), store=dead)
    inspector = rig.runtime.inspector
    assert inspector is not None
    report = await inspector.inspect("manual")
    assert inspector.store_failures == 1
    reports, stored = await inspector.list(5)
    assert (reports, stored) == ([report], False)
    assert await inspector.get(report["id"]) == report


# -- the HTTP API ---------------------------------------------------------------------------------


async def test_lines_and_inspections_api(rig_factory: Any, tmp_path: Path) -> None:
    rig: Rig = await rig_factory(cfg_for(), FakeProbe(ok_probe()))
    tr = Trace()
    the_day(tr)
    rig.replay(tr, tmp_path / "api.jsonl")
    tokens = TokenStore([("t-qa", "qa1", "qa"), ("t-sup", "sup1", "supervisor"), ("t-adm", "adm1", "admin"),
                         ("t-agent", "ag1", "agent")])
    app = build_app(rig.monitor, rig.hub, rig.cfg, CollectorRegistry(), tokens=tokens)
    from monitor.lines_api import LINES

    app[LINES] = rig.runtime
    async with TestClient(TestServer(app)) as client:
        def h(tok: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {tok}"}

        assert (await client.get("/api/v1/lines")).status == 401
        assert (await client.get("/api/v1/lines", headers=h("t-agent"))).status == 403
        resp = await client.get("/api/v1/lines", headers=h("t-qa"))
        assert resp.status == 200
        body = await resp.json()
        assert [t["name"] for t in body["trunks"]] == ["telecom", "unicom"]
        assert body["outages"][0]["down_s"] == 2400.0
        assert (await client.get("/api/v1/lines?hours=0", headers=h("t-qa"))).status == 400

        assert (await client.post("/api/v1/inspections/run", headers=h("t-sup"))).status == 403
        resp = await client.post("/api/v1/inspections/run", headers=h("t-adm"))
        assert resp.status == 201
        report = (await resp.json())["inspection"]
        assert report["trigger"] == "manual"

        resp = await client.get("/api/v1/inspections", headers=h("t-sup"))
        body = await resp.json()
        assert body["count"] == 1
        assert body["stored"] is True
        assert body["inspections"][0]["id"] == report["id"]
        assert body["next_due"] == "2026-05-12T07:30:00+08:00"
        resp = await client.get("/api/v1/inspections?format=csv&limit=5", headers=h("t-qa"))
        assert resp.status == 200
        assert resp.content_type == "text/csv"
        rows = list(csv.DictReader(io.StringIO(await resp.text())))
        assert [x["trunk"] for x in rows] == ["telecom", "unicom"]
        assert (await client.get("/api/v1/inspections?format=xml", headers=h("t-qa"))).status == 400
        resp = await client.get(f"/api/v1/inspections/{report['id']}", headers=h("t-qa"))
        assert (await resp.json())["inspection"] == report
        resp = await client.get("/api/v1/inspections/nope", headers=h("t-qa"))
        assert resp.status == 404
        assert (await resp.json())["error"] == "not_found"


async def test_api_answers_503_without_a_line_monitor() -> None:
    clock = VirtualClock()
    hub = AlertHub(clock.now)
    cfg = Config()
    app = build_app(Monitor(cfg, clock, hub), hub, cfg, CollectorRegistry(), tokens=TokenStore([("a", "a", "admin")]))
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/api/v1/lines", headers={"Authorization": "Bearer a"})
        assert resp.status == 503
        assert (await resp.json())["error"] == "lines_disabled"
