"""OUT-DNC: number normalisation, the list in Redis (cooling period on a virtual clock, renewals, removal,
expiry / review, the audit stream), two instances in sync, the CSV import of 100,000 rows and the export."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from config.schema import Config
from monitor.clock import VirtualClock
from monitor.dnc import (
    DncEntry,
    DncService,
    DncStore,
    InvalidNumber,
    StoreUnavailable,
    cooling_end,
    normalize_number,
)
from monitor.outbound import OutboundPolicy
from monitor.redis_embedded import EmbeddedRedis
from monitor.store import client_from_config

pytestmark = pytest.mark.usefixtures("no_leftover_tasks")

TZ = dt.timezone(dt.timedelta(hours=8))
DAY = 86400.0
#: Monday 2026-03-02 10:00 (Asia/Shanghai): day 0 of the cooling-period test
DAY0 = dt.datetime(2026, 3, 2, 10, 0, tzinfo=TZ).timestamp()


# -- normalisation ------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["13912345678", "+86 139-1234-5678", "+8613912345678", "0086 139 1234 5678",
                                 "8613912345678", "013912345678", "139 1234 5678", " (139) 1234.5678 ",
                                 "+86 (0)139 1234 5678"])
def test_mobile_number_variants_are_one_customer(raw: str) -> None:
    assert normalize_number(raw) == "13912345678"


@pytest.mark.parametrize("raw", ["010-12345678", "(010) 1234 5678", "+86 10 1234 5678", "0086-10-12345678",
                                 "+86 010 12345678"])
def test_landline_variants_drop_the_trunk_zero(raw: str) -> None:
    assert normalize_number(raw) == "1012345678"


def test_other_numbers() -> None:
    assert normalize_number("+1 (555) 010-0999") == "+15550100999"
    assert normalize_number("001 555 010 0999") == "+15550100999"
    assert normalize_number("5551234") == "5551234"  # a local number, as the recordings dial it
    assert normalize_number("95500") == "95500"
    assert normalize_number("9013912345678", ["9"]) == "13912345678"  # an outside-line 9 before the number
    assert normalize_number("9013912345678") == "9013912345678"  # not configured: digits kept


@pytest.mark.parametrize("raw", ["", "abc", "139-1234-567x", "12", "+", "1" * 41, "tel:13912345678"])
def test_invalid_numbers(raw: str) -> None:
    with pytest.raises(InvalidNumber):
        normalize_number(raw)


def test_cooling_end_is_local_midnight_of_day_90() -> None:
    tz = OutboundPolicy(Config()).tz
    end = cooling_end(DAY0, 90, tz)
    assert dt.datetime.fromtimestamp(end, tz) == dt.datetime(2026, 5, 31, 0, 0, tzinfo=tz)
    assert cooling_end(dt.datetime(2026, 3, 2, 23, 59, tzinfo=TZ).timestamp(), 90, tz) == end


# -- the service on a real Redis ------------------------------------------------------------------------


Make = Callable[..., Awaitable[DncService]]


@pytest.fixture
async def make(redis_server: EmbeddedRedis) -> AsyncIterator[Make]:
    made: list[tuple[DncService, aioredis.Redis]] = []

    async def factory(clock: VirtualClock | None = None, **outbound: Any) -> DncService:
        cfg = Config.model_validate({"outbound": outbound})
        assert redis_server.url is not None
        client = client_from_config(redis_server.url, cfg.redis)
        svc = DncService(cfg, DncStore(client), clock or VirtualClock(wall_origin=DAY0))
        await svc.sync_once()
        made.append((svc, client))
        return svc

    yield factory
    for svc, client in made:
        await svc.stop()
        await client.aclose()


async def audit(svc: DncService) -> list[dict[str, str]]:
    assert svc.store is not None
    rows = await svc.store.client.xrange(svc.store.k_audit)
    return [dict(fields) for _id, fields in rows]


async def test_a_number_added_on_day_0_is_denied_on_day_89_and_allowed_on_day_90(make: Make) -> None:
    clock = VirtualClock(wall_origin=DAY0)
    svc = await make(clock)
    policy = OutboundPolicy(svc.cfg)
    number = normalize_number("+86 139 1234 5678")
    entry, previous = await svc.add(svc.new_entry(number, "客户要求不再来电", "agent-7001", agent="Agent 7001",
                                                  source_call="1795295075.0"))
    assert previous is None
    assert policy.decide("13912345678", clock.wall(clock.now()), dnc=svc).reasons[0].code == "dnc"
    for day, allowed in ((1, False), (89, False), (90, True), (91, True)):
        clock.advance_to(day * DAY)
        await svc.sync_once()  # what the sync task does in the background
        got = policy.decide("013912345678", clock.wall(clock.now()), dnc=svc)
        assert got.allow is allowed, (day, got.reasons)
        if not allowed:
            assert [r.code for r in got.reasons] == ["dnc"]
            assert got.reasons[0].details["entry"]["until"] == "2026-05-31T00:00:00+08:00"
            # the first moment it may be called: 2026-05-31 is a Sunday -> 09:00
            assert got.next_allowed_at == dt.datetime(2026, 5, 31, 9, 0, tzinfo=TZ).timestamp()
    # day 89 is Saturday 2026-05-30 10:00, day 90 Sunday 10:00: both inside the rest-day window
    assert entry.until == dt.datetime(2026, 5, 31, tzinfo=TZ).timestamp()


async def test_variants_make_one_entry_and_a_new_request_renews_it(make: Make) -> None:
    clock = VirtualClock(wall_origin=DAY0)
    svc = await make(clock)
    _e, prev = await svc.add(svc.new_entry(normalize_number("+86 139-1234-5678"), "first", "a"))
    assert prev is None
    clock.advance_to(30 * DAY)
    second, prev = await svc.add(svc.new_entry(normalize_number("0139 1234 5678"), "again", "b"))
    assert prev is not None
    assert prev.reason == "first"
    assert second.until == cooling_end(DAY0 + 30 * DAY, 90, svc.tz)
    assert list(svc.entries) == ["13912345678"]
    stored = await svc.get("13912345678")
    assert stored == second
    actions = [a["action"] for a in await audit(svc)]
    assert actions == ["dnc.add", "dnc.renew"]


async def test_removal_is_audited_with_who_and_why(make: Make) -> None:
    svc = await make()
    await svc.add(svc.new_entry("13912345678", "不要再打", "agent-7001", agent="Agent 7001", source_call="c1"))
    assert await svc.remove("13800000000", "no such", "sup") is None
    removed = await svc.remove("13912345678", "客户已签约,同意回访", "floor-a")
    assert removed is not None
    assert removed.reason == "不要再打"
    assert await svc.get("13912345678") is None
    assert "13912345678" not in svc.entries
    rows = await audit(svc)
    assert [r["action"] for r in rows] == ["dnc.add", "dnc.remove"]
    add, rem = rows
    assert set(add) == {"ts", "actor", "action", "target", "details"}  # the shared shape of monitor/audit.py
    assert (add["actor"], add["target"]) == ("agent-7001", "139****5678")
    details = json.loads(add["details"])
    assert details["number"] == "13912345678"
    assert (details["agent"], details["source_call"], details["reason"]) == ("Agent 7001", "c1", "不要再打")
    assert details["until"] == "2026-05-31T00:00:00+08:00"
    assert float(add["ts"]) == pytest.approx(DAY0)
    assert rem["actor"] == "floor-a"
    assert json.loads(rem["details"])["reason"] == "客户已签约,同意回访"
    assert json.loads(rem["details"])["entry"]["reason"] == "不要再打"


async def test_two_instances_follow_each_other(make: Make) -> None:
    a, b = await make(), await make()
    await a.add(a.new_entry("13912345678", "x", "a"))
    await a.add(a.new_entry("13912345679", "y", "a"))
    assert await b.sync_once() == 2
    assert set(b.entries) == {"13912345678", "13912345679"}
    assert await b.remove("13912345678", "ok", "b") is not None
    await b.add(b.new_entry("13912345679", "renewed by b", "b"))
    await a.sync_once()
    assert set(a.entries) == {"13912345679"}
    assert a.entries["13912345679"].reason == "renewed by b"
    # a change older than what an instance already applied never wins: replaying the stream is a no-op
    a.loaded = False
    await a.sync_once()
    assert a.entries == b.entries


async def test_a_gap_in_the_change_stream_reloads_everything(make: Make) -> None:
    a, b = await make(), await make()
    await a.add(a.new_entry("13912345678", "x", "a"))
    assert b.store is not None
    await b.store.client.xtrim(b.store.k_changes, maxlen=0)  # trimmed past what b has read
    await a.add(a.new_entry("13912345679", "y", "a"))
    await b.sync_once()
    assert set(b.entries) == {"13912345678", "13912345679"}
    assert b.reloads == 2


async def test_expiry_drops_the_entry_once(make: Make) -> None:
    clock = VirtualClock(wall_origin=DAY0)
    svc, other = await make(clock), await make(clock)
    await svc.add(svc.new_entry("13912345678", "x", "a"))
    clock.advance_to(90 * DAY)
    assert await svc.sweep() == 1
    assert await other.sweep() == 0  # compare-and-set: expired once
    assert await svc.get("13912345678") is None
    assert [r["action"] for r in await audit(svc)] == ["dnc.add", "dnc.expire"]


async def test_review_keeps_blocking_until_a_person_removes_it(make: Make) -> None:
    clock = VirtualClock(wall_origin=DAY0)
    svc = await make(clock, on_expiry="review")
    policy = OutboundPolicy(svc.cfg)
    await svc.add(svc.new_entry("13912345678", "x", "a"))
    clock.advance_to(120 * DAY)
    await svc.sync_once()
    assert await svc.sweep() == 1
    assert await svc.sweep() == 0  # listed for review once
    assert svc.review_due == 1
    got = policy.decide("13912345678", clock.wall(clock.now()), dnc=svc)
    assert [r.code for r in got.reasons] == ["dnc_review"]
    assert got.next_allowed_at is None
    assert [e.number for e in svc.listing("review")] == ["13912345678"]
    await svc.remove("13912345678", "reviewed: may be called", "sup")
    assert policy.decide("13912345678", clock.wall(clock.now()), dnc=svc).allow
    assert [r["action"] for r in await audit(svc)] == ["dnc.add", "dnc.review_due", "dnc.remove"]


async def test_redis_down_the_copy_answers_then_goes_stale(make: Make, redis_server: EmbeddedRedis) -> None:
    clock = VirtualClock(wall_origin=DAY0)
    svc = await make(clock)
    policy = OutboundPolicy(svc.cfg)
    await svc.add(svc.new_entry("13912345678", "x", "a"))
    await redis_server.stop()
    with pytest.raises(StoreUnavailable):
        await svc.add(svc.new_entry("13912345679", "y", "a"))
    with pytest.raises(StoreUnavailable):
        await svc.sync_once()
    now = clock.wall(clock.now())
    assert policy.decide("13912345678", now, dnc=svc).reasons[0].code == "dnc"  # from the copy
    assert policy.decide("13912345679", now, dnc=svc).allow
    clock.advance(svc.ocfg.dnc_max_stale_s + 1)
    now = clock.wall(clock.now())
    assert [r.code for r in policy.decide("13912345679", now, dnc=svc).reasons] == ["dnc_unavailable"]
    allow = OutboundPolicy(Config.model_validate({"outbound": {"dnc_unavailable": "allow"}}))
    assert allow.decide("13912345679", now, dnc=svc).allow


# -- CSV --------------------------------------------------------------------------------------------------


async def chunks_of(data: bytes, size: int = 65536) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


BAD_ROWS = {7: "not-a-number", 1234: "12", 99_999: "139x"}


async def test_import_of_100k_rows_reports_bad_rows_by_line(make: Make) -> None:
    svc = await make()
    lines = ["number,reason,agent,source_call,requested_at"]
    for i in range(100_000):
        line = i + 2  # the header is line 1
        number = BAD_ROWS.get(line, f"+86 139-{i // 10000:04d}-{i % 10000:04d}")
        lines.append(f"{number},客户拒绝,Agent {7000 + i % 10},c{i},")
    lines[50] = '"+86 10 1234 5678","说 ""别再打了""\n(跨行备注)",Agent 7001,c-multi,2026-02-20'  # line 51, 2 lines
    lines.append("013900000010,duplicate of row 12,,,")  # the same customer as line 12
    lines.append("13900000011,bad time,,,yesterday")
    data = ("\ufeff" + "\r\n".join(lines) + "\r\n").encode("utf-8")
    t0 = time.perf_counter()
    report = await svc.import_csv(chunks_of(data), "crm-sync")
    took = time.perf_counter() - t0
    errors = {e["line"]: e["error"]["en"] for e in report.errors}
    # the two-line record shifts every later physical line by one
    assert sorted(errors) == [7, 1234 + 1, 99_999 + 1, 100_004]
    assert "bad time" not in errors[100_004]
    assert "requested_at" in errors[100_004]
    assert report.rows == 100_002
    assert report.duplicates == 1
    assert report.added == 100_002 - 4 - 1
    assert len(svc.entries) == report.added
    assert svc.entries["1012345678"].reason == '说 "别再打了"\n(跨行备注)'
    assert svc.entries["1012345678"].until == cooling_end(
        dt.datetime(2026, 2, 20, tzinfo=TZ).timestamp(), 90, svc.tz)
    assert svc.entries["13900000010"].reason == "duplicate of row 12"  # the later row wins
    assert took < 60, took
    other = await make()  # a second instance loads the lot
    assert len(other.entries) == report.added
    assert svc.store is not None
    assert await svc.store.client.xlen(svc.store.k_audit) == report.added + 1 + 1  # a row each, + renew, + summary


async def test_import_encoding_header_and_export_round_trip(make: Make) -> None:
    svc = await make()
    gbk = "号码,原因\n13912345678,客户投诉骚扰\n".replace("号码", "number").replace("原因", "reason").encode("gbk")
    report = await svc.import_csv(chunks_of(gbk, 7), "crm", "gbk")  # 7-byte chunks split characters
    assert (report.added, report.errors) == (1, [])
    assert svc.entries["13912345678"].reason == "客户投诉骚扰"
    bad = await svc.import_csv(chunks_of(b"phone,reason\n139,x\n"), "crm")
    assert bad.errors[0]["line"] == 1
    assert bad.added == 0
    wrong = await svc.import_csv(chunks_of("number\n13912345679\n".encode("gbk") + "客户\n13912345670".encode("gbk")),
                                 "crm")  # UTF-8 expected: line 3 is not, the others are imported
    assert [e["line"] for e in wrong.errors] == [3]
    assert wrong.added == 2
    exported = "".join([chunk async for chunk in svc.export_csv()])
    rows = exported.strip().split("\r\n")
    assert rows[0].startswith("number,reason,agent,source_call,requested_at,until,state")
    assert sorted(r.split(",")[0] for r in rows[1:]) == ["13912345670", "13912345678", "13912345679"]
    again = await svc.import_csv(chunks_of(exported.encode()), "crm")  # the export imports back
    assert (again.renewed, again.errors) == (3, [])
    with pytest.raises(ValueError, match="ASCII"):
        await svc.import_csv(chunks_of(b""), "crm", "utf-16")


def test_entry_json_round_trip() -> None:
    e = DncEntry("13912345678", "x", 1.5, 2.5, "a", "Agent 7001", "c1", "api", None)
    assert DncEntry.loads(e.dumps()) == e
    assert e.state(2.0, "expire") == "active"
    assert e.state(2.5, "expire") == "expired"
    assert e.state(2.5, "review") == "review"
