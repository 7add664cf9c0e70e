"""A minimal Chinese working calendar for commitment deadlines (CMP-CLOSE in working time).

Working days come from the ``holidays`` package's China calendar: weekends and
official holidays off, make-up workdays (调休上班, e.g. Sunday 2025-01-26) on
(``holidays.China.is_working_day``).  A limit counted in working time adds up
only the time inside a daily window on working days: the whole day for
``working_days`` (120 h = 5 working days), ``commitments.work_hours`` for
``working_hours``.  All arithmetic is on Unix timestamps, so no local clock
time is ever added to.

This is deliberately small: the full calendar (YAML overrides for newly
announced years, the OUT-HOURS windows) is a later issue.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal
from zoneinfo import ZoneInfo

import holidays

TimeBasis = Literal["calendar", "working_days", "working_hours"]

#: give up after this many calendar days (a calendar with no working day at all)
_MAX_DAYS = 3660


def _minutes(hhmm: str) -> int:
    h, _, m = hhmm.partition(":")
    return int(h) * 60 + int(m)


class WorkCalendar:
    def __init__(self, timezone: str = "Asia/Shanghai", work_hours: tuple[str, str] | list[str] = ("08:30", "17:30"),
                 ) -> None:
        self.tz = ZoneInfo(timezone)
        self._cn = holidays.country_holidays("CN")
        self._hours = (_minutes(work_hours[0]), _minutes(work_hours[1]))

    def is_workday(self, day: dt.date) -> bool:
        return bool(self._cn.is_working_day(day))

    def holiday_name(self, day: dt.date) -> str | None:
        name = self._cn.get(day)
        return str(name) if name else None

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
