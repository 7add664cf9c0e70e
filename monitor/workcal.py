"""The Chinese working calendar: day types, holiday breaks, make-up workdays, working-time arithmetic.

One calendar for the whole of ringwatch: OUT-HOURS (calling windows per day type) and the
commitments' working-time limits (CMP-CLOSE in working days / hours) both read it.

**Data.**  Official schedules (国务院办公厅关于 YYYY 年部分节假日安排的通知) come from two places:

* the ``holidays`` package's China calendar, which encodes every official notice since 2001
  (statutory days, days in lieu 补假 for a statutory day on a weekend, substituted days off
  调休 and the weekends worked for them, ``weekend_workdays``);
* ``config/calendar_overrides.yaml`` (and the files of ``outbound.calendar_overrides``): years the
  installed ``holidays`` release does not know yet, typed in from the notice (published each
  November).  A year in an override file replaces the library's data for that year.

A year is *known* when an override file has it or the library has its official notice (its
China table of substituted days lists the year).  For any other year the library only
*computes* the statutory days from the lunar calendar; the make-up workdays and substituted
days off are unknowable until the notice.  Such a day is reported with ``known=False`` and
``source="estimate"``: the outbound check denies (or, configured, allows with a flag) and the
daemon warns loudly at start and exports ``ringwatch_calendar_year_missing``.  Never a silent
"workday".

**Day types.**  ``workday`` (including 调休上班 make-up workdays on a weekend), ``rest_day``
(weekends) and ``statutory_holiday``.  Which days off of a holiday break are holidays depends
on the policy:

* ``whole_break`` (default): every day off of an official break (the run of consecutive days
  off that holds a holiday: 2026 Spring Festival = 15–23 Feb, weekends and 调休 days included);
* ``statutory_only``: only the statutory days themselves (法定节假日: 元旦 1, 春节 4 incl. 除夕,
  清明 1, 劳动节 2, 端午 1, 中秋 1, 国庆 3 since 2025) and their days in lieu (补假) when one
  falls on a weekend; the other days off of the break are rest days.

**Working time** (commitments): a limit counted in working time adds up only the time inside
a daily window on working days: the whole day for ``working_days``, ``work_hours`` for
``working_hours``.  All arithmetic is on Unix timestamps, so no local clock time is ever added to.
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo

import holidays
import yaml

from config.schema import DEFAULT_PATH

log = logging.getLogger(__name__)

TimeBasis = Literal["calendar", "working_days", "working_hours"]
DayType = Literal["workday", "rest_day", "statutory_holiday"]
HolidayPolicy = Literal["whole_break", "statutory_only"]
DataSource = Literal["library", "override", "estimate"]
DAY_TYPES: Final[tuple[DayType, ...]] = ("workday", "rest_day", "statutory_holiday")

#: the overrides shipped with ringwatch (years announced after the installed ``holidays`` release)
DEFAULT_OVERRIDES: Final = DEFAULT_PATH.with_name("calendar_overrides.yaml")

#: give up after this many calendar days (a calendar with no working day at all)
_MAX_DAYS = 3660
#: a holiday break is never longer than this (2020's extended Spring Festival was 10 days)
_MAX_BREAK = 16

_EVE_ZH, _EVE_EN = "农历除夕", "Chinese New Year's Eve"
_SPRING_ZH, _SPRING_EN = "春节", "Chinese New Year (Spring Festival)"


def _minutes(hhmm: str) -> int:
    h, _, m = hhmm.partition(":")
    return int(h) * 60 + int(m)


class CalendarDataError(ValueError):
    """An overrides file is not valid; the message names the file, the year and the entry."""


@dataclass(frozen=True, slots=True)
class HolidayBreak:
    """One official holiday break: every day off from ``start`` to ``end``; ``statutory`` are the
    statutory days (and days in lieu) among them."""

    name_zh: str
    name_en: str
    start: dt.date
    end: dt.date
    statutory: frozenset[dt.date]

    def __contains__(self, day: object) -> bool:
        return isinstance(day, dt.date) and self.start <= day <= self.end


@dataclass(frozen=True, slots=True)
class YearOverride:
    """A year's official schedule typed in from the State Council notice."""

    year: int
    source: str
    breaks: tuple[HolidayBreak, ...]
    workdays: frozenset[dt.date]  # make-up workdays (调休上班)
    file: str = ""


@dataclass(frozen=True, slots=True)
class DayInfo:
    """What the calendar says about one date."""

    date: dt.date
    type: DayType
    known: bool  # the year's official schedule is in the library or an overrides file
    source: DataSource
    makeup_workday: bool = False  # a weekend day worked for a substituted day off (调休上班)
    statutory: bool = False  # a statutory day (法定节假日) or its day in lieu (补假)
    holiday_zh: str | None = None  # the break this day off belongs to
    holiday_en: str | None = None
    break_start: dt.date | None = None
    break_end: dt.date | None = None

    @property
    def in_break(self) -> bool:
        return self.break_start is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "date": self.date.isoformat(), "type": self.type, "known": self.known, "source": self.source,
            "makeup_workday": self.makeup_workday, "statutory": self.statutory,
            "holiday": None if self.holiday_zh is None else {"zh": self.holiday_zh, "en": self.holiday_en},
            "break": None if self.break_start is None or self.break_end is None else
            [self.break_start.isoformat(), self.break_end.isoformat()],
        }


# -- overrides files ---------------------------------------------------------------------------


def _date(v: object, where: str) -> dt.date:
    if isinstance(v, dt.datetime):
        raise CalendarDataError(f"{where}: {v!r} is a date and time, expected a date (YYYY-MM-DD)")
    if isinstance(v, dt.date):
        return v
    if isinstance(v, str):
        try:
            return dt.date.fromisoformat(v)
        except ValueError:
            pass
    raise CalendarDataError(f"{where}: {v!r} is not a date (YYYY-MM-DD)")


def _dates(v: object, where: str) -> list[dt.date]:
    if v is None:
        return []
    if not isinstance(v, list):
        raise CalendarDataError(f"{where}: expected a list of dates")
    return [_date(x, f"{where}[{i}]") for i, x in enumerate(v)]


def parse_overrides(data: object, file: str = "<overrides>") -> dict[int, YearOverride]:
    """The years of one overrides document (see ``config/calendar_overrides.yaml``), checked."""
    if data is None:
        return {}
    if not isinstance(data, dict) or set(data) - {"years"}:
        raise CalendarDataError(f"{file}: the top level must be a mapping with the key 'years'")
    years = data.get("years") or {}
    if not isinstance(years, dict):
        raise CalendarDataError(f"{file}: years must be a mapping of year -> schedule")
    out: dict[int, YearOverride] = {}
    for raw_year, body in years.items():
        where = f"{file}: years.{raw_year}"
        if not isinstance(raw_year, int) or not 2000 <= raw_year <= 2100:
            raise CalendarDataError(f"{where}: the key must be a year (2000..2100)")
        if not isinstance(body, dict):
            raise CalendarDataError(f"{where}: expected a mapping with source, breaks, workdays")
        unknown = set(body) - {"source", "breaks", "workdays"}
        if unknown:
            raise CalendarDataError(f"{where}: unknown key {sorted(unknown)[0]!r} (source, breaks, workdays)")
        source = body.get("source")
        if not isinstance(source, str) or not source.strip():
            raise CalendarDataError(f"{where}.source: name the notice (title, number, URL) the dates come from")
        breaks: list[HolidayBreak] = []
        for i, b in enumerate(body.get("breaks") or []):
            bw = f"{where}.breaks[{i}]"
            if not isinstance(b, dict) or set(b) - {"name", "name_en", "days", "statutory"}:
                raise CalendarDataError(f"{bw}: expected name, name_en, days: [first, last], statutory: [dates]")
            name = b.get("name")
            if not isinstance(name, str) or not name:
                raise CalendarDataError(f"{bw}.name: required (e.g. 春节)")
            days = _dates(b.get("days"), f"{bw}.days")
            if len(days) != 2 or days[0] > days[1] or (days[1] - days[0]).days >= _MAX_BREAK:
                raise CalendarDataError(f"{bw}.days: give [first day off, last day off] of the break "
                                        f"(at most {_MAX_BREAK} days)")
            statutory = frozenset(_dates(b.get("statutory"), f"{bw}.statutory"))
            if not statutory:
                raise CalendarDataError(f"{bw}.statutory: list the statutory days (法定假日) of the break")
            outside = sorted(d for d in statutory if not days[0] <= d <= days[1])
            if outside:
                raise CalendarDataError(f"{bw}.statutory: {outside[0]} is outside the break {days[0]}..{days[1]}")
            if abs(days[0].year - raw_year) > 1:
                raise CalendarDataError(f"{bw}.days: {days[0]} is not in or next to {raw_year}")
            breaks.append(HolidayBreak(name, str(b.get("name_en") or name), days[0], days[1], statutory))
        breaks.sort(key=lambda b: b.start)
        for a, b in itertools.pairwise(breaks):
            if b.start <= a.end:
                raise CalendarDataError(f"{where}.breaks: {a.name_zh} and {b.name_zh} overlap")
        workdays = _dates(body.get("workdays"), f"{where}.workdays")
        for d in workdays:
            if d.weekday() < 5:
                raise CalendarDataError(f"{where}.workdays: {d} is a weekday; list only the weekend days worked "
                                        "(调休上班)")
            if any(d in b for b in breaks):
                raise CalendarDataError(f"{where}.workdays: {d} is inside a break")
        out[raw_year] = YearOverride(raw_year, source.strip(), tuple(breaks), frozenset(workdays), file)
    return out


def load_overrides(paths: Iterable[Path]) -> dict[int, YearOverride]:
    """The years of every file in ``paths``, later files winning per year.  A missing file is an error."""
    out: dict[int, YearOverride] = {}
    for path in paths:
        try:
            st = Path(path).stat()
        except OSError as e:
            raise CalendarDataError(f"cannot read calendar overrides {path}: {e.strerror}") from e
        out.update(_load_file(str(path), st.st_mtime_ns, st.st_size))
    return out


@functools.lru_cache(maxsize=32)
def _load_file(path: str, _mtime_ns: int, _size: int) -> dict[int, YearOverride]:
    """One file, parsed (cached while the file is unchanged: every Monitor builds a calendar)."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise CalendarDataError(f"cannot read calendar overrides {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise CalendarDataError(f"{path} is not valid YAML: {e}") from e
    return parse_overrides(data, path)


@functools.cache
def library_years() -> frozenset[int]:
    """The years whose official notice the installed ``holidays`` release encodes for China."""
    try:
        from holidays.countries.china import ChinaStaticHolidays
    except ImportError:  # pragma: no cover - a restructured library: nothing is known, loudly
        return frozenset()
    table = getattr(ChinaStaticHolidays, "special_public_holidays", None)
    return frozenset(int(y) for y in table) if isinstance(table, dict) else frozenset()


# -- the calendar ----------------------------------------------------------------------------


class WorkCalendar:
    """The Chinese working calendar (library + overrides) under one holiday policy, in one time zone."""

    def __init__(self, timezone: str = "Asia/Shanghai", work_hours: tuple[str, str] | list[str] = ("08:30", "17:30"),
                 *, policy: HolidayPolicy = "whole_break", overrides: Mapping[int, YearOverride] | None = None,
                 overrides_files: Sequence[Path] = ()) -> None:
        """``overrides`` as given, else the bundled ``config/calendar_overrides.yaml`` (when present)
        and then ``overrides_files`` (later files win per year)."""
        self.tz = ZoneInfo(timezone)
        self.policy: HolidayPolicy = policy
        self._hours = (_minutes(work_hours[0]), _minutes(work_hours[1]))
        if overrides is None:
            files = [DEFAULT_OVERRIDES] if DEFAULT_OVERRIDES.is_file() else []
            overrides = load_overrides([*files, *overrides_files])
        self.overrides: dict[int, YearOverride] = dict(overrides)
        self._by_date: dict[dt.date, tuple[HolidayBreak | None, bool]] = {}  # override date -> (break, makeup)
        for ov in self.overrides.values():
            for b in ov.breaks:
                d = b.start
                while d <= b.end:
                    self._by_date[d] = (b, False)
                    d += dt.timedelta(days=1)
            for d in ov.workdays:
                self._by_date[d] = (None, True)
        self.library_years = library_years()
        self._en = holidays.country_holidays("CN", language="en_US")
        self._zh = holidays.country_holidays("CN", language="zh_CN")
        self._cache: dict[dt.date, DayInfo] = {}

    # -- what is known -------------------------------------------------------------------------

    def known(self, year: int) -> bool:
        return year in self.overrides or year in self.library_years

    def source_of(self, year: int) -> DataSource:
        if year in self.overrides:
            return "override"
        return "library" if year in self.library_years else "estimate"

    def missing_years(self, years: Iterable[int]) -> list[int]:
        return sorted(y for y in set(years) if not self.known(y))

    # -- days ----------------------------------------------------------------------------------

    def day(self, day: dt.date) -> DayInfo:
        info = self._cache.get(day)
        if info is None:
            info = self._classify(day)
            if len(self._cache) > 20_000:
                self._cache.clear()
            self._cache[day] = info
        return info

    def is_workday(self, day: dt.date) -> bool:
        return self.day(day).type == "workday"

    def holiday_name(self, day: dt.date) -> str | None:
        """The name of the holiday break ``day`` belongs to (zh-CN), or None."""
        return self.day(day).holiday_zh

    def _classify(self, day: dt.date) -> DayInfo:
        known = self.known(day.year)
        entry = self._by_date.get(day)
        if entry is not None or day.year in self.overrides:
            brk, makeup = entry if entry is not None else (None, False)
            if brk is not None:
                statutory = day in brk.statutory
                kind: DayType = "statutory_holiday" if self.policy == "whole_break" or statutory else "rest_day"
                return DayInfo(day, kind, True, "override", statutory=statutory, holiday_zh=brk.name_zh,
                               holiday_en=brk.name_en, break_start=brk.start, break_end=brk.end)
            if makeup:
                return DayInfo(day, "workday", True, "override", makeup_workday=True)
            return DayInfo(day, "rest_day" if day.weekday() >= 5 else "workday", True, "override")
        source = self.source_of(day.year)
        if self._en.is_working_day(day):
            return DayInfo(day, "workday", known, source, makeup_workday=day.weekday() >= 5)
        run = self._off_run(day)
        named = [d for d in run if d in self._en]
        if not named:
            return DayInfo(day, "rest_day", known, source)
        statutory = self._statutory(day)
        zh, en = self._break_names(named)
        kind = "statutory_holiday" if self.policy == "whole_break" or statutory else "rest_day"
        return DayInfo(day, kind, known, source, statutory=statutory, holiday_zh=zh, holiday_en=en,
                       break_start=run[0], break_end=run[-1])

    def _off_run(self, day: dt.date) -> list[dt.date]:
        """The consecutive days off around ``day`` (a day off itself)."""
        one = dt.timedelta(days=1)
        start = end = day
        for _ in range(_MAX_BREAK):
            if self._en.is_working_day(start - one):
                break
            start -= one
        for _ in range(_MAX_BREAK):
            if self._en.is_working_day(end + one):
                break
            end += one
        return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]

    def _statutory(self, day: dt.date) -> bool:
        """A statutory day or a day in lieu (补假); not a substituted day off (调休) or an extension."""
        names = self._en.get_list(day)
        return any("substituted" not in n.lower() and "extended" not in n.lower() for n in names)

    def _break_names(self, named: list[dt.date]) -> tuple[str, str]:
        zh: list[str] = []
        en: list[str] = []
        for d in named:
            for n_zh, n_en in zip(self._zh.get_list(d), self._en.get_list(d), strict=False):
                if "substituted" in n_en.lower():
                    continue
                n_zh = n_zh.split("（")[0]
                n_en = n_en.replace(" (observed)", "").replace(" (estimated)", "")
                if n_zh == _EVE_ZH:
                    n_zh, n_en = _SPRING_ZH, _SPRING_EN
                if n_zh not in zh:
                    zh.append(n_zh)
                    en.append(n_en)
        if not zh:  # only substituted days listed (should not happen): name it by the first entry
            first = self._zh.get_list(named[0])
            return (first[0] if first else "假期"), "holiday"
        return "、".join(zh), " / ".join(en)

    def describe_year(self, year: int) -> list[str]:
        """The year as people check it against the notice: source, each break (statutory days starred),
        the make-up workdays (``ringwatch calendar YEAR``)."""
        out = [f"{year}: {self.source_of(year)}" + ("" if self.known(year) else
                                                    " (NOT KNOWN: computed from the lunar calendar, no make-up "
                                                    "workdays; add the notice to config/calendar_overrides.yaml)")]
        if year in self.overrides:
            out.append(f"  source: {self.overrides[year].source} ({self.overrides[year].file})")
        day = dt.date(year, 1, 1)
        while day.year == year:
            info = self.day(day)
            if info.break_start is not None and info.break_end is not None and (
                    day == info.break_start or (day.month == 1 and day.day == 1)):
                days = []
                d = info.break_start
                while d <= info.break_end:
                    days.append(f"{d:%m-%d}{'*' if self.day(d).statutory else ''}")
                    d += dt.timedelta(days=1)
                n = (info.break_end - info.break_start).days + 1
                out.append(f"  {info.holiday_zh} / {info.holiday_en}: {info.break_start} .. {info.break_end} "
                           f"({n} days: {' '.join(days)})")
            day += dt.timedelta(days=1)
        makeup = [d for d in (dt.date(year, 1, 1) + dt.timedelta(days=i) for i in range(366))
                  if d.year == year and self.day(d).makeup_workday]
        out.append("  make-up workdays (调休上班): " + (", ".join(f"{d} ({d:%a})" for d in makeup) or "none"))
        out.append(f"  (* statutory day or day in lieu; holiday_policy {self.policy})")
        return out

    # -- working time (commitments) -----------------------------------------------------------

    def add(self, start_wall: float, seconds: float, basis: TimeBasis) -> float:
        """The Unix time ``seconds`` of ``basis`` time after ``start_wall``."""
        if basis == "calendar":
            return start_wall + seconds
        window = (0, 24 * 60) if basis == "working_days" else self._hours
        return self._add_in_window(start_wall, seconds, window)

    def _add_in_window(self, start_wall: float, seconds: float, window: tuple[int, int]) -> float:
        t = start_wall
        remaining = seconds
        day = dt.datetime.fromtimestamp(t, self.tz).date()
        for _ in range(_MAX_DAYS):
            midnight = dt.datetime.combine(day, dt.time(), self.tz)
            if self.is_workday(day):
                ws = (midnight + dt.timedelta(minutes=window[0])).timestamp()
                we = (midnight + dt.timedelta(minutes=window[1])).timestamp()
                t = max(t, ws)
                if t < we:
                    if remaining <= we - t:
                        return t + remaining
                    remaining -= we - t
            day += dt.timedelta(days=1)
            t = max(t, dt.datetime.combine(day, dt.time(), self.tz).timestamp())
        raise ValueError(f"no working time within {_MAX_DAYS} days of {start_wall}")
