"""Commitments on a real redis-server (the embedded starter on a tmp dir), on a virtual clock.

Nothing sleeps: a test jumps the clock (``VirtualClock.advance_to``) and awaits
``service.idle()``, which runs one scheduler pass and drains the pending queue.
Alert times are asserted exactly, in clock time and in wall time.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from prometheus_client import CollectorRegistry

from alerts.hub import AlertChange, AlertHub
from alerts.model import Alert
from config.schema import Config, load_config
from monitor.calls import Call
from monitor.clock import VirtualClock
from monitor.commitments import (
    Commitment,
    CommitmentCollector,
    CommitmentService,
    Rejected,
    StoreUnavailable,
    WrongState,
    complaints_report,
    next_wall,
    normalize_number,
    note_problem,
    plan,
    report_csv,
)
from monitor.engine import Monitor
from monitor.redis_embedded import EmbeddedRedis
from monitor.store import CommitmentStore
from monitor.workcal import WorkCalendar
from telephony.ami.adapter import channel_rules, replay_trace
from telephony.events import CallAnswered, CallEnded, CallOffered
from tests.replaytools import FIXTURES

pytestmark = pytest.mark.usefixtures("no_leftover_tasks")

TZ = ZoneInfo("Asia/Shanghai")
#: 2026-03-02 (Monday) 09:00 in Shanghai: the wall time of clock 0
W0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=TZ).timestamp()
H = 3600.0
DAY = 86400.0
NUMBER = "+86 139 1234 5678"


def make_cfg(**commitments: Any) -> Config:
    return Config.model_validate({"commitments": {"poll_interval_s": 3600, **commitments},
                                  "privacy": {"mask_callers": True}})


class Recorder:
    """An alert-hub sink that keeps every change."""

    name = "recorder"

    def __init__(self) -> None:
        self.changes: list[AlertChange] = []

    def offer(self, change: AlertChange) -> None:
        self.changes.append(change)

    def opened(self, change: str | None = None) -> list[Alert]:
        return [c.alert for c in self.changes if c.kind == "opened"
                and (change is None or c.alert.details.get("change") == change)]


@dataclass
class Rig:
    cfg: Config
    clock: VirtualClock
    hub: AlertHub
    store: CommitmentStore
    service: CommitmentService
    monitor: Monitor
    rec: Recorder = field(default_factory=Recorder)

    async def jump(self, t: float) -> None:
        self.clock.advance_to(t)
        await self.service.idle()

    async def stop(self) -> None:
        await self.service.stop()
        await self.store.close()


RigFactory = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def make_rig(redis_server: EmbeddedRedis) -> AsyncIterator[RigFactory]:
    rigs: list[Rig] = []

    async def make(wall_origin: float = W0, cfg: Config | None = None) -> Rig:
        config = cfg or make_cfg()
        clock = VirtualClock(wall_origin=wall_origin)
        hub = AlertHub(clock.now)
        assert redis_server.url is not None
        store = CommitmentStore.from_config(redis_server.url, config.redis, config.commitments.key_prefix)
        service = CommitmentService(config, store, clock, hub)
        monitor = Monitor(config, clock, hub)
        service.attach(monitor)
        rig = Rig(config, clock, hub, store, service, monitor)
        hub.add_sink(rig.rec)
        await service.start()
        await service.idle()
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        await rig.stop()


async def test_reminders_overdue_and_escalation_fire_at_their_exact_times(make_rig: RigFactory) -> None:
    rig = await make_rig()
    c, created = await rig.service.create("callback", NUMBER, "Agent 7001", by="desk", team="claims",
                                          call_id="1795294895.0")
    assert created
    assert c.due_at == W0 + 24 * H
    assert [a.details["change"] for a in rig.rec.opened()] == ["created"]

    await rig.jump(22 * H - 1)
    assert rig.rec.opened("reminder") == []
    await rig.jump(22 * H)  # 2 h before due
    first = rig.rec.opened("reminder")
    assert [(a.at, a.opened_wall, a.kind, a.agent) for a in first] == [(22 * H, W0 + 22 * H, "notice", "Agent 7001")]
    assert "2 小时" in first[0].text_zh
    assert first[0].caller == "+86139****5678"  # stored without formatting, masked on alerts
    await rig.jump(24 * H - 900)  # 15 min before due
    assert [a.at for a in rig.rec.opened("reminder")] == [22 * H, 24 * H - 900]

    await rig.jump(24 * H - 0.5)
    assert rig.rec.opened("overdue") == []
    await rig.jump(24 * H)
    overdue = rig.rec.opened("overdue")
    assert [(a.at, a.rule, a.severity, a.kind) for a in overdue] == [(24 * H, "IN-ESCALATE", "warning", "violation")]
    got, history = await rig.service.get(c.id)
    assert got.state == "overdue"
    assert got.state_at == W0 + 24 * H

    await rig.jump(24 * H + 30 * 60 - 1)
    assert rig.rec.opened("escalated") == []
    await rig.jump(24 * H + 30 * 60)
    escalated = rig.rec.opened("escalated")
    assert [(a.at, a.severity) for a in escalated] == [(24 * H + 1800, "critical")]
    _, history = await rig.service.get(c.id)
    assert [h["event"] for h in history] == ["created", "reminder 120 min", "reminder 15 min", "overdue", "escalated"]
    assert list(rig.service.fired) == [(c.id, "reminder", 22 * H), (c.id, "reminder", 24 * H - 900),
                                 (c.id, "overdue", 24 * H), (c.id, "escalated", 24 * H + 1800)]


async def test_an_acked_overdue_alert_is_not_escalated(make_rig: RigFactory) -> None:
    rig = await make_rig()
    c, _ = await rig.service.create("escalation_push", NUMBER, "Agent 7002", by="desk")
    assert c.due_at == W0 + 600
    await rig.jump(300)
    await rig.jump(600)
    [alert] = rig.rec.opened("overdue")
    rig.hub.ack(alert.id, "floor-a")
    await rig.jump(600 + 1800)
    assert rig.rec.opened("escalated") == []
    got, history = await rig.service.get(c.id)
    assert (got.alert_acked_by, got.alert_acked_at) == ("floor-a", W0 + 600)
    assert history[-1]["event"] == "acked"
    # fulfilling it late resolves its alerts and counts it as late
    done = await rig.service.fulfil(c.id, "Agent 7002", note="pushed to claims dept, ticket 4471")
    assert (done.state, done.on_time) == ("fulfilled", False)
    assert rig.hub.get(alert.id) is not None
    assert rig.hub.get(alert.id).state == "resolved"  # type: ignore[union-attr]


async def test_a_restarted_service_fires_the_deadline_at_the_right_virtual_time(make_rig: RigFactory) -> None:
    first = await make_rig()
    c, _ = await first.service.create("callback", NUMBER, "Agent 7001", by="desk")
    await first.stop()
    # ringwatch comes back one hour later (wall), with a fresh clock at 0
    second = await make_rig(wall_origin=W0 + H)
    await second.jump(21 * H - 1)
    assert second.rec.opened() == []
    await second.jump(21 * H)
    assert [a.opened_wall for a in second.rec.opened("reminder")] == [W0 + 22 * H]
    await second.jump(23 * H)
    [overdue] = second.rec.opened("overdue")
    assert (overdue.at, overdue.opened_wall, overdue.details["commitment"]["id"]) == (23 * H, W0 + 24 * H, c.id)


async def test_a_deadline_that_passed_while_down_fires_right_after_start(make_rig: RigFactory) -> None:
    first = await make_rig()
    c, _ = await first.service.create("harassment_record", NUMBER, "Agent 7003", by="desk")
    assert c.due_at == W0 + H
    await first.stop()
    second = await make_rig(wall_origin=W0 + 5 * H)  # down for 5 h: reminder and due both passed
    [overdue] = second.rec.opened("overdue")
    assert (overdue.at, overdue.opened_wall, overdue.rule) == (0.0, W0 + 5 * H, "OUT-HARASS")
    assert second.rec.opened("reminder") == []  # no stale reminder once it is overdue
    got, _ = await second.service.get(c.id)
    assert (got.state, got.state_at, got.overdue_alerted_at) == ("overdue", W0 + H, W0 + 5 * H)
    # the escalation is counted from the alert, not from the due time
    await second.jump(1800)
    assert [a.opened_wall for a in second.rec.opened("escalated")] == [W0 + 5 * H + 1800]


async def test_two_services_on_one_redis_raise_exactly_one_overdue_alert_each(make_rig: RigFactory) -> None:
    a = await make_rig()
    b = await make_rig()
    ids = [(await a.service.create("escalation_push", f"139000000{i:02d}", "Agent 7001", by="desk"))[0].id
           for i in range(20)]
    for t in (300.0, 600.0, 2400.0):  # reminders, overdue, escalation: both instances race for each
        a.clock.advance_to(t)
        b.clock.advance_to(t)
        await asyncio.gather(a.service.idle(), b.service.idle(), a.service.idle(), b.service.idle())
    for change in ("reminder", "overdue", "escalated"):
        fired = sorted(x.details["commitment"]["id"] for x in a.rec.opened(change) + b.rec.opened(change))
        assert fired == sorted(ids), change
    # (in practice both instances take a share of the 20: the atomic claim decides who fires which)


async def test_api_changes_are_broadcast_through_the_hub(make_rig: RigFactory) -> None:
    rig = await make_rig()
    c, _ = await rig.service.create("callback", NUMBER, "Agent 7001", by="desk")
    await rig.service.add_note(c.id, "Agent 7001", "customer asked for after 14:00")
    await rig.service.cancel(c.id, "floor-a", "customer withdrew the complaint")
    assert [a.details["change"] for a in rig.rec.opened()] == ["created", "note", "cancelled"]
    assert all(a.kind == "notice" for a in rig.rec.opened())
    with pytest.raises(WrongState):
        await rig.service.fulfil(c.id, "Agent 7001")
    got, history = await rig.service.get(c.id)
    assert (got.state, got.state_by, got.cancel_reason) == ("cancelled", "floor-a", "customer withdrew the complaint")
    assert [h["event"] for h in history] == ["created", "note", "cancelled"]
    assert (await rig.store.next_due()) is None  # a cancelled commitment has no deadline left


# -- automatic fulfilment ----------------------------------------------------------------------------


def outbound(rig: Rig, call_id: str, number: str, start: float, answer: float | None, end: float) -> None:
    """An outbound call through the monitor's real event handling (as the tracker emits it)."""
    rig.clock.advance_to(start)
    rig.monitor.handle(CallOffered(start, call_id, "outbound", number, "", start, agent="Agent 7001"))
    if answer is not None:
        rig.clock.advance_to(answer)
        rig.monitor.handle(CallAnswered(answer, call_id, call_id + "-leg", "Agent 7001", None))
    rig.clock.advance_to(end)
    rig.monitor.handle(CallEnded(end, call_id))


async def test_an_answered_outbound_call_to_the_number_fulfils_the_callback(make_rig: RigFactory) -> None:
    rig = await make_rig()
    c, _ = await rig.service.create("callback", NUMBER, "Agent 7001", by="desk")
    other, _ = await rig.service.create("callback", "13800000000", "Agent 7001", by="desk")
    complaint, _ = await rig.service.create("complaint_close", NUMBER, "Agent 7001", by="desk")

    outbound(rig, "out-1", "013800000001", 100, None, 130)  # another number: nothing
    outbound(rig, "out-2", "13912345678", 200, None, 230)  # unanswered: an attempt
    await rig.service.idle()
    got, _ = await rig.service.get(c.id)
    assert got.state == "open"
    assert got.attempts == [{"at": W0 + 200, "call_id": "out-2", "agent": "Agent 7001"}]
    assert [a.details["change"] for a in rig.rec.opened()][-1] == "attempt"

    outbound(rig, "out-3", "8613912345678", 3 * H, 3 * H + 8, 3 * H + 60)  # answered, same number (+86)
    await rig.service.idle()
    got, history = await rig.service.get(c.id)
    assert (got.state, got.on_time, got.fulfilled_call, got.state_at) == ("fulfilled", True, "out-3", W0 + 3 * H + 8)
    assert history[-1] == {"at": W0 + 3 * H + 60, "event": "fulfilled", "by": "Agent 7001", "on_time": True,
                           "call_id": "out-3", "auto": True, "state": "fulfilled"}
    assert (await rig.service.get(other.id))[0].state == "open"
    assert (await rig.service.get(complaint.id))[0].state == "open"  # complaints are not closed by a call
    await rig.jump(25 * H)  # the fulfilled callback never goes overdue
    assert [a.details["commitment"]["id"] for a in rig.rec.opened("overdue")] == [other.id]


async def test_a_late_answered_callback_is_fulfilled_late(make_rig: RigFactory) -> None:
    rig = await make_rig()
    c, _ = await rig.service.create("callback", NUMBER, "Agent 7001", by="desk")
    await rig.jump(24 * H)
    [alert] = rig.rec.opened("overdue")
    outbound(rig, "late-1", "13912345678", 25 * H, 25 * H + 5, 25 * H + 50)
    await rig.service.idle()
    got, _ = await rig.service.get(c.id)
    assert (got.state, got.on_time) == ("fulfilled", False)
    assert rig.hub.get(alert.id).state == "resolved"  # type: ignore[union-attr]


async def test_the_recorded_outbound_call_s08_fulfils_a_callback_to_5551234(make_rig: RigFactory) -> None:
    rig = await make_rig()
    c, _ = await rig.service.create("callback", "5551234", "Agent 7001", by="desk")
    not_it, _ = await rig.service.create("callback", "5551235", "Agent 7001", by="desk")
    replay_trace(FIXTURES / "S08_outbound_click_to_call.jsonl", rig.clock.advance_to, rig.monitor.handle,
                 rig.cfg.pbx.ami.max_message_bytes, channel_rules(rig.cfg))
    await rig.service.idle()
    got, _ = await rig.service.get(c.id)
    assert (got.state, got.on_time, got.fulfilled_call) == ("fulfilled", True, "1795295075.0")
    assert got.state_at == pytest.approx(W0 + 10.01, abs=0.01)  # the customer answered 10.01 s in
    assert (await rig.service.get(not_it.id))[0].state == "open"


async def test_the_pbx_entry_point_creates_once_per_call_and_kind(make_rig: RigFactory) -> None:
    rig = await make_rig()
    assert rig.service.submit_from_pbx("callback", "13912345678", "Agent 7001", "pbx-call-1", team="claims")
    assert rig.service.submit_from_pbx("callback", "13912345678", "Agent 7001", "pbx-call-1")  # a repeat
    assert not rig.service.submit_from_pbx("flowers", "13912345678", "Agent 7001", "pbx-call-1")
    await rig.service.idle()
    [c] = await rig.service.query()
    assert (c.source, c.call_id, c.created_by, c.team) == ("pbx", "pbx-call-1", "pbx", "claims")


# -- Redis unavailable -------------------------------------------------------------------------------


async def test_redis_down_api_refuses_monitoring_goes_on_and_everything_catches_up(
        make_rig: RigFactory, redis_server: EmbeddedRedis) -> None:
    rig = await make_rig()
    soon, _ = await rig.service.create("escalation_push", NUMBER, "Agent 7002", by="desk")
    cb, _ = await rig.service.create("callback", NUMBER, "Agent 7001", by="desk")
    await redis_server.stop()

    with pytest.raises(StoreUnavailable):
        await rig.service.create("callback", NUMBER, "Agent 7001", by="desk")
    with pytest.raises(StoreUnavailable):
        await rig.service.get(cb.id)
    # live monitoring carries on: an inbound call still rings into IN-ANSWER at 15 s
    from telephony.events import AgentRinging, QueueJoined

    rig.clock.advance_to(100)
    rig.monitor.handle(CallOffered(100, "in-1", "inbound", "13700000000", "", 100))
    rig.monitor.handle(QueueJoined(100, "in-1", "support", 100))
    rig.monitor.handle(AgentRinging(100, "in-1", "leg-1", "Agent 7005", "support", 100))
    rig.clock.advance_to(115)
    assert [a.rule for a in rig.hub.alerts() if a.call == "in-1"] == ["IN-ANSWER"]
    # the callback's customer is called back and answers while Redis is down
    outbound(rig, "out-9", "13912345678", 200, 205, 260)
    assert rig.service.pending == 1
    rig.clock.advance_to(700)  # the push (due at 600) passes while Redis is down
    await asyncio.sleep(0)
    assert rig.rec.opened("overdue") == []
    assert rig.service.store.available is False

    await redis_server.start()  # same directory: the AOF brings everything back
    await rig.jump(700 + 60)  # past the retry backoff (capped at retry_max_s = 30 s)
    assert rig.service.pending == 0
    [overdue] = rig.rec.opened("overdue")
    assert (overdue.details["commitment"]["id"], overdue.at) == (soon.id, 760)
    got, _ = await rig.service.get(cb.id)
    assert (got.state, got.on_time, got.fulfilled_call, got.state_at) == ("fulfilled", True, "out-9", W0 + 205)
    assert rig.service.store.available is True


# -- CMP-NOTE, CMP-CLOSE in working time, CMP-MONTHLY ---------------------------------------------


@pytest.mark.parametrize("text", ["已回复", "已处理。", " 已结案 ", "已转理赔部跟进", "已回复客户", "已查询,已处理",
                                  ""])
def test_bare_closing_phrases_are_rejected(text: str) -> None:
    cfg = make_cfg().commitments
    problem = note_problem(text, cfg.vague_notes, cfg.min_note_chars)
    assert problem is not None
    zh, en = problem
    assert "写明" in zh
    assert "say what" in en


@pytest.mark.parametrize("text", ["已回复客户:理赔款 3200 元已于3月5日到账,客户认可结果",
                                  "查询保单 P2026-118 的退保进度,告知客户本周五前到账,客户同意"])
def test_closing_notes_that_say_what_was_done_pass(text: str) -> None:
    cfg = make_cfg().commitments
    assert note_problem(text, cfg.vague_notes, cfg.min_note_chars) is None


async def test_closing_a_complaint_needs_a_real_note_and_a_late_one_a_reason(make_rig: RigFactory) -> None:
    rig = await make_rig()
    c, _ = await rig.service.create("complaint_close", NUMBER, "Agent 7001", by="desk")
    with pytest.raises(Rejected) as e:
        await rig.service.fulfil(c.id, "Agent 7001", note="已处理")
    assert e.value.code == "vague_note"
    with pytest.raises(Rejected) as e:
        await rig.service.fulfil(c.id, "Agent 7001")
    assert e.value.code == "note_required"
    await rig.jump(121 * H)
    with pytest.raises(Rejected) as e:
        await rig.service.fulfil(c.id, "Agent 7001", note="核实扣费记录后退还 35 元,客户认可")
    assert e.value.code == "overdue_reason_required"
    done = await rig.service.fulfil(c.id, "Agent 7001", note="核实扣费记录后退还 35 元,客户认可",
                                    overdue_reason="等待财务部退款审批 3 天")
    assert (done.state, done.on_time, done.overdue_reason) == ("fulfilled", False, "等待财务部退款审批 3 天")


def test_working_days_follow_the_chinese_calendar_with_make_up_days() -> None:
    cal = WorkCalendar("Asia/Shanghai")
    start = dt.datetime(2025, 9, 30, 10, 0, tzinfo=TZ).timestamp()  # the day before the National Day break
    due = dt.datetime.fromtimestamp(cal.add(start, 120 * H, "working_days"), TZ)
    # Oct 1-8 off; Sat Oct 11 is a make-up workday; Sun Oct 12 off: 5 working days end on Tue Oct 14 10:00
    assert due == dt.datetime(2025, 10, 14, 10, 0, tzinfo=TZ)
    hours = dt.datetime.fromtimestamp(cal.add(start, 9 * H, "working_hours"), TZ)
    assert hours == dt.datetime(2025, 10, 9, 10, 0, tzinfo=TZ)  # 7.5 h on Sep 30, 1.5 h on Oct 9 from 08:30
    assert cal.is_workday(dt.date(2025, 10, 11))
    assert not cal.is_workday(dt.date(2025, 10, 3))
    assert cal.add(start, 5 * H, "calendar") == start + 5 * H


async def test_a_complaint_counted_in_working_days_is_due_after_the_holiday(make_rig: RigFactory) -> None:
    cfg = load_config(env={})
    kinds = {k: v.model_dump() for k, v in cfg.commitments.kinds.items()}
    kinds["complaint_close"]["time_basis"] = "working_days"
    start = dt.datetime(2025, 9, 30, 10, 0, tzinfo=TZ).timestamp()
    rig = await make_rig(wall_origin=start, cfg=make_cfg(kinds=kinds))
    c, _ = await rig.service.create("complaint_close", NUMBER, "Agent 7001", by="desk")
    assert dt.datetime.fromtimestamp(c.due_at, TZ) == dt.datetime(2025, 10, 14, 10, 0, tzinfo=TZ)


async def test_monthly_report_lists_last_months_overdue_complaints_with_reasons(make_rig: RigFactory) -> None:
    start = dt.datetime(2026, 4, 20, 9, 0, tzinfo=TZ).timestamp()
    rig = await make_rig(wall_origin=start)
    late, _ = await rig.service.create("complaint_close", "13911110000", "Agent 7001", by="desk", team="claims")
    open_late, _ = await rig.service.create("complaint_close", "13922220000", "Agent 7002", by="desk")
    on_time, _ = await rig.service.create("complaint_close", "13933330000", "Agent 7003", by="desk")
    callback, _ = await rig.service.create("callback", "13944440000", "Agent 7004", by="desk")
    await rig.jump(DAY)
    await rig.service.fulfil(on_time.id, "Agent 7003", note="退还多扣保费 120 元,客户确认收到")
    await rig.jump(130 * H)  # due at 120 h (Apr 25): two complaints overdue
    await rig.service.add_note(open_late.id, "Agent 7002", "客户出国,联系不上", overdue_reason=True)
    await rig.service.fulfil(late.id, "Agent 7001", note="补发理赔材料清单并完成赔付 800 元,客户认可",
                             overdue_reason="理赔部资料审核超时")
    report = await complaints_report(rig.store, rig.cfg, "2026-04", rig.service.now_wall())
    assert report["count"] == 2
    rows = {r["id"]: r for r in report["items"]}
    assert set(rows) == {late.id, open_late.id}
    assert rows[late.id]["reason"] == "理赔部资料审核超时"
    assert rows[late.id]["state"] == "fulfilled"
    assert rows[late.id]["late_h"] == 10.0
    assert rows[late.id]["customer"] == "139****0000"
    assert rows[open_late.id]["reason"] == "客户出国,联系不上"
    assert rows[open_late.id]["closed"] is None
    assert callback.id not in rows
    csv_text = report_csv(report)
    assert csv_text.splitlines()[0] == "id,kind,customer,owner,team,call_id,created,due,closed,state,late_h,reason"
    assert "理赔部资料审核超时" in csv_text
    assert (await complaints_report(rig.store, rig.cfg, "2026-05", rig.service.now_wall()))["count"] == 0


# -- metrics ---------------------------------------------------------------------------------------------


async def test_metrics_count_open_overdue_and_the_on_time_ratio(make_rig: RigFactory) -> None:
    rig = await make_rig()
    registry = CollectorRegistry()
    registry.register(CommitmentCollector(rig.service))
    a, _ = await rig.service.create("callback", "13900000001", "Agent 7001", by="desk")
    await rig.service.create("callback", "13900000002", "Agent 7001", by="desk")
    await rig.service.create("escalation_push", "13900000003", "Agent 7001", by="desk")
    await rig.service.fulfil(a.id, "Agent 7001")
    await rig.jump(700)  # the push is overdue

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("ringwatch_commitments_open", kind="callback") == 1
    assert value("ringwatch_commitments_overdue", kind="escalation_push") == 1
    assert value("ringwatch_commitments_open", kind="escalation_push") == 0
    assert value("ringwatch_commitments_fulfilled_total", kind="callback", on_time="true") == 1
    assert value("ringwatch_commitments_fulfilled_on_time_ratio", kind="callback") == 1.0
    assert value("ringwatch_commitments_fulfilled_on_time_ratio", kind="escalation_push") is None
    assert value("ringwatch_commitments_store_up") == 1


def test_reminders_missed_while_down_collapse_into_the_nearest_one() -> None:
    kind = make_cfg().commitments.kinds["callback"]
    c = Commitment(id="C1", kind="callback", rule="IN-ESCALATE", customer="139", owner="a", created_at=W0,
                   created_by="x", due_at=W0 + 24 * H)
    assert next_wall(c, kind, 1800) == W0 + 22 * H
    assert plan(c, W0 + 23.9 * H, kind, 1800) == [("reminder", 15.0)]  # the 2 h one is not sent late
    assert c.reminders_sent == [15.0, 120.0]
    assert next_wall(c, kind, 1800) == W0 + 24 * H
    assert plan(c, W0 + 30 * H, kind, 1800) == [("overdue", 0.0)]
    assert (c.state, c.state_at, c.overdue_alerted_at) == ("overdue", W0 + 24 * H, W0 + 30 * H)
    assert next_wall(c, kind, 1800) == W0 + 30 * H + 1800


async def test_kinds_added_by_configuration(make_rig: RigFactory) -> None:
    extra = {"claim_documents": {"rule": "CLAIM-DOCS", "name_zh": "补齐理赔资料", "limit_h": 48,
                                 "reminders_min": [60]}}
    rig = await make_rig(cfg=make_cfg(kinds=extra))  # merged over the built-in kinds by load_config
    c, _ = await rig.service.create("claim_documents", NUMBER, "Agent 7001", by="desk")
    assert (c.rule, c.due_at) == ("CLAIM-DOCS", W0 + 48 * H)
    await rig.jump(48 * H)
    [overdue] = rig.rec.opened("overdue")
    assert overdue.rule == "CLAIM-DOCS"
    assert "补齐理赔资料" in overdue.text_zh


def test_numbers_are_compared_without_formatting_or_the_country_code() -> None:
    assert normalize_number("+86 139-1234-5678") == normalize_number("13912345678") == "13912345678"
    assert normalize_number("008613912345678") == "13912345678"
    assert normalize_number("5551234") == "5551234"


def test_commitment_round_trips_through_json() -> None:
    c = Commitment(id="C1", kind="callback", rule="IN-ESCALATE", customer="139", owner="a", created_at=1.0,
                   created_by="x", due_at=2.0, notes=[{"at": 1.0, "by": "x", "text": "t"}])
    assert Commitment.from_dict({**c.to_dict(), "future_field": 1}) == c


def _unused(_: Call) -> None:  # keeps the Call import meaningful for readers: records carry Call objects
    pass


async def test_a_commitment_signalled_by_the_pbx_on_the_call_is_created(make_rig: RigFactory) -> None:
    """UserEvent(RingwatchCommitment,Kind: callback) on the agent's channel during an inbound call."""
    from telephony.ami.codec import Message
    from telephony.ami.tracker import AmiTracker

    rig = await make_rig()
    tracker = AmiTracker(rig.monitor.handle)
    at = 0.0

    def ev(event: str, **fields: str) -> None:
        tracker.handle(Message([("Event", event), *fields.items()]), at)

    ev("QueueCallerJoin", Channel="PJSIP/trunk-0000000a", Uniqueid="c9", Linkedid="c9", Queue="support",
       CallerIDNum="13912345678", CallerIDName="张三")
    ev("AgentCalled", Channel="PJSIP/trunk-0000000a", Uniqueid="c9", Linkedid="c9",
       DestChannel="PJSIP/7001-0000000b", DestUniqueid="a9", Queue="support", Interface="PJSIP/7001",
       MemberName="Agent 7001")
    ev("AgentConnect", Channel="PJSIP/trunk-0000000a", Uniqueid="c9", Linkedid="c9",
       DestChannel="PJSIP/7001-0000000b", DestUniqueid="a9", Queue="support", Interface="PJSIP/7001",
       MemberName="Agent 7001")
    ev("UserEvent", UserEvent="RingwatchCommitment", Channel="PJSIP/7001-0000000b", Uniqueid="a9", Linkedid="c9",
       Kind="callback", Note="客户要求明天回电")
    await rig.service.idle()
    found = await rig.service.query(state="open")
    [c] = [c for c in found if c.call_id == "c9"]
    assert (c.kind, c.customer, c.owner) == ("callback", "13912345678", "Agent 7001")
