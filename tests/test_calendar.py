"""The Chinese calendar and the OUT-HOURS windows, day by day over 2025 and 2026, against the official
schedules typed in by hand below (not taken from the library: a wrong library year fails here)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import holidays
import pytest

from config.schema import Config, ConfigError, load_config
from monitor.outbound import OutboundPolicy
from monitor.workcal import DEFAULT_OVERRIDES, CalendarDataError, WorkCalendar, library_years, load_overrides

TZ = dt.timezone(dt.timedelta(hours=8))  # Asia/Shanghai has no DST

D = dt.date.fromisoformat

# 国务院办公厅关于2025年部分节假日安排的通知 (国办发明电〔2024〕12号, 2024-11-12) and
# 国务院办公厅关于2026年部分节假日安排的通知 (2025-11-04), checked against the published texts.
# Each break: (name, first day off, last day off, statutory days and days in lieu 补假).
OFFICIAL: dict[int, dict[str, Any]] = {
    2025: {
        "breaks": [
            ("元旦", "2025-01-01", "2025-01-01", ["2025-01-01"]),
            ("春节", "2025-01-28", "2025-02-04", ["2025-01-28", "2025-01-29", "2025-01-30", "2025-01-31"]),
            ("清明节", "2025-04-04", "2025-04-06", ["2025-04-04"]),
            ("劳动节", "2025-05-01", "2025-05-05", ["2025-05-01", "2025-05-02"]),
            ("端午节", "2025-05-31", "2025-06-02", ["2025-05-31", "2025-06-02"]),  # Sat: Mon in lieu
            ("国庆节、中秋节", "2025-10-01", "2025-10-08", ["2025-10-01", "2025-10-02", "2025-10-03", "2025-10-06"]),
        ],
        "workdays": ["2025-01-26", "2025-02-08", "2025-04-27", "2025-09-28", "2025-10-11"],
    },
    2026: {
        "breaks": [
            ("元旦", "2026-01-01", "2026-01-03", ["2026-01-01"]),
            ("春节", "2026-02-15", "2026-02-23", ["2026-02-16", "2026-02-17", "2026-02-18", "2026-02-19"]),
            ("清明节", "2026-04-04", "2026-04-06", ["2026-04-05", "2026-04-06"]),  # Sun: Mon in lieu
            ("劳动节", "2026-05-01", "2026-05-05", ["2026-05-01", "2026-05-02", "2026-05-04"]),
            ("端午节", "2026-06-19", "2026-06-21", ["2026-06-19"]),
            ("中秋节", "2026-09-25", "2026-09-27", ["2026-09-25"]),
            ("国庆节", "2026-10-01", "2026-10-07", ["2026-10-01", "2026-10-02", "2026-10-03", "2026-10-05"]),
        ],
        "workdays": ["2026-01-04", "2026-02-14", "2026-02-28", "2026-05-09", "2026-09-20", "2026-10-10"],
    },
}


def _official(year: int) -> tuple[dict[dt.date, str], set[dt.date], set[dt.date]]:
    """(break day -> name, statutory days, make-up workdays) of the hand-typed schedule."""
    breaks: dict[dt.date, str] = {}
    statutory: set[dt.date] = set()
    for name, first, last, stat in OFFICIAL[year]["breaks"]:
        d = D(first)
        while d <= D(last):
            breaks[d] = name
            d += dt.timedelta(days=1)
        statutory |= {D(x) for x in stat}
    return breaks, statutory, {D(x) for x in OFFICIAL[year]["workdays"]}


def expected_type(d: dt.date, policy: str) -> str:
    breaks, statutory, workdays = _official(d.year)
    if d in breaks:
        return "statutory_holiday" if policy == "whole_break" or d in statutory else "rest_day"
    if d in workdays:
        return "workday"
    return "rest_day" if d.weekday() >= 5 else "workday"


def _days(year: int, month: int) -> list[dt.date]:
    d, out = dt.date(year, month, 1), []
    while d.month == month:
        out.append(d)
        d += dt.timedelta(days=1)
    return out


MONTHS = [(y, m) for y in (2025, 2026) for m in range(1, 13)]
WHOLE = WorkCalendar()
STATUTORY = WorkCalendar(policy="statutory_only")
POLICY = OutboundPolicy(Config())


def test_the_hand_typed_schedules_are_consistent() -> None:
    """The break lengths of the notices (共N天) and the make-up workdays on weekends."""
    lengths = {2025: [1, 8, 3, 5, 3, 8], 2026: [3, 9, 3, 5, 3, 3, 7]}
    for year, want in lengths.items():
        got = [(D(last) - D(first)).days + 1 for _n, first, last, _s in OFFICIAL[year]["breaks"]]
        assert got == want
        assert all(D(w).weekday() >= 5 for w in OFFICIAL[year]["workdays"])
    # the make-up workdays the issue names
    assert {"2026-01-04", "2026-02-14", "2026-02-28", "2026-05-09", "2026-09-20", "2026-10-10"} <= set(
        OFFICIAL[2026]["workdays"])


@pytest.mark.parametrize(("year", "month"), MONTHS)
def test_day_types_of_every_day_match_the_official_schedule(year: int, month: int) -> None:
    wrong = []
    for d in _days(year, month):
        for cal, policy in ((WHOLE, "whole_break"), (STATUTORY, "statutory_only")):
            info = cal.day(d)
            want = expected_type(d, policy)
            if info.type != want or not info.known or info.source != "library":
                wrong.append(f"{d} {policy}: {info.type} ({info.source}), want {want}")
        breaks, _stat, workdays = _official(year)
        info = WHOLE.day(d)
        assert info.makeup_workday == (d in workdays), d
        if d in breaks:
            assert (info.break_start, info.break_end) == next(
                (D(f), D(last)) for _n, f, last, _s in OFFICIAL[year]["breaks"] if D(f) <= d <= D(last)), d
            assert info.holiday_zh is not None
            assert info.holiday_zh.split("、")[0] == breaks[d].split("、")[0]
    assert not wrong, "\n".join(wrong)


def _at(d: dt.date, hh: int, mm: int, ss: int = 0) -> float:
    return dt.datetime(d.year, d.month, d.day, hh, mm, ss, tzinfo=TZ).timestamp()


@pytest.mark.parametrize(("year", "month"), MONTHS)
def test_permit_answers_at_the_window_edges_of_every_day(year: int, month: int) -> None:
    """Workdays 08:29 no, 08:30 yes, 17:30 yes, 17:31 no; rest days 08:59 no, 09:00 yes, 17:00 yes, 17:01 no;
    holidays no at any hour; 07:59 and 20:00 never."""
    wrong = []

    def check(d: dt.date, hh: int, mm: int, allow: bool, code: str | None = None) -> None:
        got = POLICY.decide(None, _at(d, hh, mm))
        codes = [r.code for r in got.reasons]
        if got.allow != allow or (code is not None and codes[:1] != [code]):
            wrong.append(f"{d} {hh:02d}:{mm:02d} ({expected_type(d, 'whole_break')}): allow={got.allow} {codes}")

    for d in _days(year, month):
        kind = expected_type(d, "whole_break")
        if kind == "workday":
            for hh, mm, ok in ((8, 29, False), (8, 30, True), (17, 30, True), (17, 31, False)):
                check(d, hh, mm, ok, None if ok else "outside_window")
        elif kind == "rest_day":
            for hh, mm, ok in ((8, 59, False), (9, 0, True), (17, 0, True), (17, 1, False)):
                check(d, hh, mm, ok, None if ok else "outside_window")
        else:
            for hh in range(24):
                check(d, hh, 0, False, "holiday")
                check(d, hh, 59, False, "holiday")
        if kind != "statutory_holiday":
            check(d, 7, 59, False, "before_earliest")
            check(d, 20, 0, False, "after_latest")
    assert not wrong, "\n".join(wrong[:40])


def test_the_library_agrees_with_the_hand_typed_make_up_workdays() -> None:
    """A cross-check of the data source itself: what ``holidays`` lists for China in 2025 and 2026."""
    for year in (2025, 2026):
        cn = holidays.country_holidays("CN", years=year)
        _b, _s, workdays = _official(year)
        assert {d for d in cn.weekend_workdays if d.year == year} == workdays
        breaks, _stat, _w = _official(year)
        assert set(cn) <= set(breaks)  # every listed day off lies in an official break
    assert {2025, 2026} <= library_years()


def test_boundaries_are_whole_seconds() -> None:
    d = D("2026-03-02")  # a Monday
    assert not POLICY.decide(None, _at(d, 8, 29, 59) + 0.999).allow
    assert POLICY.decide(None, _at(d, 8, 30, 0)).allow
    assert POLICY.decide(None, _at(d, 17, 30, 0) + 0.999).allow  # still 17:30:00
    assert not POLICY.decide(None, _at(d, 17, 30, 1)).allow


def test_next_allowed_at_skips_the_break_and_uses_make_up_workdays() -> None:
    tz = POLICY.tz
    got = POLICY.decide(None, _at(D("2026-02-13"), 17, 31))  # Friday evening
    assert got.next_allowed_at == dt.datetime(2026, 2, 14, 8, 30, tzinfo=tz).timestamp()  # Sat, make-up workday
    got = POLICY.decide(None, _at(D("2026-02-14"), 18, 0))
    assert got.next_allowed_at == dt.datetime(2026, 2, 24, 8, 30, tzinfo=tz).timestamp()  # after 15-23 Feb
    got = POLICY.decide(None, _at(D("2026-02-28"), 6, 0))  # Sat, make-up workday, early
    assert got.reasons[0].code == "before_earliest"
    assert got.next_allowed_at == dt.datetime(2026, 2, 28, 8, 30, tzinfo=tz).timestamp()
    got = POLICY.decide(None, _at(D("2026-03-01"), 8, 0))  # Sunday
    assert got.next_allowed_at == dt.datetime(2026, 3, 1, 9, 0, tzinfo=tz).timestamp()


def test_statutory_only_lets_the_other_break_days_be_rest_days() -> None:
    policy = OutboundPolicy(Config.model_validate({"outbound": {"holiday_policy": "statutory_only"}}))
    assert policy.decide(None, _at(D("2026-02-21"), 10, 0)).allow  # Sat inside the Spring Festival break
    assert policy.decide(None, _at(D("2026-02-20"), 10, 0)).allow  # a substituted day off (调休)
    assert not policy.decide(None, _at(D("2026-02-17"), 10, 0)).allow  # 春节 itself
    assert policy.decide(None, _at(D("2026-02-20"), 8, 45)).reasons[0].code == "outside_window"  # rest-day hours


# -- a year the library does not know ---------------------------------------------------------------------


def test_a_year_with_no_data_is_never_a_silent_workday(tmp_path: Path) -> None:
    d = D("2099-03-02")  # a Monday, a year no release knows
    assert not WHOLE.known(2099)
    assert WHOLE.missing_years([2026, 2099]) == [2099]
    info = WHOLE.day(d)
    assert (info.known, info.source) == (False, "estimate")
    got = POLICY.decide(None, _at(d, 10, 0))
    assert not got.allow
    assert [r.code for r in got.reasons] == ["calendar_missing"]
    assert got.next_allowed_at is None
    estimate = OutboundPolicy(Config.model_validate({"outbound": {"missing_year": "estimate"}}))
    assert estimate.decide(None, _at(d, 10, 0)).allow  # configured to estimate: allowed, day flagged unknown
    assert estimate.decide(None, _at(d, 10, 0)).to_json(estimate.tz)["day"]["known"] is False


OVERRIDE_2099 = """
years:
  2099:
    source: "test notice 2099"
    breaks:
      - {name: 劳动节, name_en: Labour Day, days: [2099-05-01, 2099-05-05], statutory: [2099-05-01, 2099-05-02]}
    workdays: [2099-04-26]
"""


def test_overrides_give_a_new_year(tmp_path: Path) -> None:
    f = tmp_path / "cal.yaml"
    f.write_text(OVERRIDE_2099, encoding="utf-8")
    cfg = Config.model_validate({"outbound": {"calendar_overrides": [str(f)]}})
    policy = OutboundPolicy(cfg)
    cal = policy.calendar
    assert cal.known(2099)
    assert cal.source_of(2099) == "override"
    assert cal.day(D("2099-05-03")).type == "statutory_holiday"
    assert cal.day(D("2099-04-26")).type == "workday"  # a Sunday worked
    assert cal.day(D("2099-04-26")).makeup_workday
    assert cal.day(D("2099-05-09")).type == "rest_day"  # a plain Saturday
    assert cal.day(D("2099-03-02")).type == "workday"
    assert policy.decide(None, _at(D("2099-03-02"), 10, 0)).allow
    assert policy.decide(None, _at(D("2099-05-04"), 10, 0)).reasons[0].code == "holiday"
    stat = WorkCalendar(policy="statutory_only", overrides_files=[f])
    assert stat.day(D("2099-05-04")).type == "rest_day"
    assert stat.day(D("2099-05-02")).type == "statutory_holiday"


@pytest.mark.parametrize(("body", "message"), [
    ("years: {2099: {breaks: []}}", "years.2099.source"),
    ("years: {2099: {source: x, workdays: [2099-03-02]}}", "is a weekday"),
    ("years: {2099: {source: x, breaks: [{name: a, days: [2099-05-01, 2099-05-03], statutory: [2099-05-09]}]}}",
     "outside the break"),
    ("years: {2099: {source: x, breaks: [{name: a, days: [2099-05-01, 2099-05-03], statutory: [2099-05-01]},"
     " {name: b, days: [2099-05-03, 2099-05-04], statutory: [2099-05-04]}]}}", "overlap"),
    ("years: {2099: {source: x, breaks: [{name: a, days: [2099-05-01], statutory: [2099-05-01]}]}}", "first day off"),
    ("years: {2099: {source: x, holidays: []}}", "unknown key 'holidays'"),
    ("years: {1999: {source: x}}", "a year"),
])
def test_bad_overrides_name_the_entry(tmp_path: Path, body: str, message: str) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(body, encoding="utf-8")
    with pytest.raises(CalendarDataError, match=message) as e:
        load_overrides([f])
    assert str(f) in str(e.value)


def test_the_bundled_overrides_file_is_valid() -> None:
    assert DEFAULT_OVERRIDES.is_file()
    assert load_overrides([DEFAULT_OVERRIDES]) == {}  # the library knows every year announced so far


def test_commitments_working_days_keep_working() -> None:
    """The API monitor/commitments.py uses: is_workday and add() in working days."""
    cal = WorkCalendar("Asia/Shanghai", ["08:30", "17:30"])
    assert cal.is_workday(D("2025-10-11"))  # a Saturday worked
    assert not cal.is_workday(D("2025-10-03"))
    start = _at(D("2026-02-13"), 12, 0)  # Friday noon; 14 Feb worked, 15-23 off
    assert cal.add(start, 2 * 86400, "working_days") == _at(D("2026-02-24"), 12, 0)


# -- configuration ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("over", "key"), [
    ({"windows": {"workday": ["07:30-17:30"], "rest_day": [], "statutory_holiday": []}}, "outbound"),
    ({"absolute": "07:00-20:00"}, "outbound"),
    ({"windows": {"workday": ["17:30-08:30"], "rest_day": [], "statutory_holiday": []}}, "outbound.windows"),
    ({"campaigns": {"x": {"windows": {"rest_day": ["09:00-21:00"]}}}}, "outbound"),
    ({"holiday_policy": "sometimes"}, "outbound.holiday_policy"),
    ({"teams": {"t": {"windows": {"statutory_holiday": ["09:00-12:00"]}}}}, "statutory_holiday"),
])
def test_config_errors_name_the_key(tmp_path: Path, over: dict[str, Any], key: str) -> None:
    import yaml

    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"outbound": over}), encoding="utf-8")
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(f)


def test_scopes_override_per_day_type() -> None:
    cfg = Config.model_validate({"outbound": {
        "campaigns": {"renewal": {"windows": {"rest_day": []}}},
        "queues": {"vip": {"windows": {"workday": ["10:00-12:00", "14:00-16:00"]}}},
        "teams": {"team-a": {"agents": ["Agent 7001"], "windows": {"workday": ["09:00-17:00"]}}}}})
    p = OutboundPolicy(cfg)
    sunday, monday = D("2026-03-01"), D("2026-03-02")
    assert p.decide(None, _at(sunday, 10, 0), campaign="renewal").reasons[0].code == "no_window"
    assert p.decide(None, _at(sunday, 10, 0), campaign="other").allow
    assert p.decide(None, _at(monday, 13, 0), queue="vip").reasons[0].code == "outside_window"
    assert p.decide(None, _at(monday, 14, 0), queue="vip").allow
    assert not p.decide(None, _at(monday, 8, 45), agent="Agent 7001").allow  # team-a starts at 09:00
    assert p.decide(None, _at(monday, 8, 45), agent="Agent 7002").allow
    assert p.decide(None, _at(monday, 8, 45), agent="Agent 7001").scope == "team:team-a"
    assert p.decide(None, _at(monday, 13, 0), queue="vip", agent="Agent 7001").scope == "queue:vip"


def test_the_calendar_command(capsys: pytest.CaptureFixture[str]) -> None:
    from monitor.cli import main

    assert main(["calendar", "2026"]) == 0
    out = capsys.readouterr().out
    assert "2026: library" in out
    assert "春节 / Chinese New Year (Spring Festival): 2026-02-15 .. 2026-02-23 (9 days:" in out
    assert "2026-02-14 (Sat)" in out
    assert main(["calendar", "2099"]) == 1
    assert "NOT KNOWN" in capsys.readouterr().out
