"""OUT-HOURS and OUT-DNC: may this number be dialled now?  The decision, and the live rule unit.

:class:`OutboundPolicy` answers the pre-dial permission check (``GET /api/v1/outbound/permit``) and
the live rule alike, from memory only (the calendar, the configured windows, the DNC list's local
copy), so it costs microseconds and never waits for Redis.  A dial is allowed when

* the day's calendar data is known (or ``missing_year: estimate``),
* the local time (``outbound.timezone``) is inside the absolute bounds (08:00 <= t < 20:00),
* and inside a window of the day's type (``"08:30-17:30"``: 08:30:00 <= t <= 17:30:00) for the most
  specific scope that sets one: campaign > queue > team (of the agent) > default,
* and the number is not on the DNC list (or the list cannot be read and ``dnc_unavailable: allow``).

Reason codes (bounded: they label metrics): OUT-HOURS ``calendar_missing``, ``holiday``,
``no_window``, ``before_earliest``, ``after_latest``, ``outside_window``; OUT-DNC ``dnc``,
``dnc_review``, ``dnc_unavailable``, ``invalid_number``.  ``next_allowed_at`` is the first moment
every reason is gone (None when a person must act first or the calendar does not know).

:class:`OutboundCompliance` is the rule unit: every outbound dial the tracker reports
(``CallOffered(direction="outbound")``) is decided at its dial time; each failed rule raises one
violation at once (``OUT-HOURS:<call>``, ``OUT-DNC:<call>``) with the reasons in ``details``.
Wall time comes from the clock (``Clock.wall``): a clock without a wall origin (a virtual clock
left at the Unix epoch: unit tests, ``ringwatch replay`` without ``--start-at``) has no time of
day, so the hours are not judged there (the DNC list still is, when attached).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol
from zoneinfo import ZoneInfo

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from alerts.model import Severity
from config.schema import Config, OutboundWindows
from monitor.clock import Clock
from monitor.dnc import DncEntry, InvalidNumber, normalize_number
from monitor.privacy import mask_number
from monitor.rules import RuleContext
from monitor.workcal import DAY_TYPES, DayInfo, DayType, WorkCalendar
from telephony.events import CallOffered, DomainEvent

log = logging.getLogger(__name__)

#: wall times before this come from a clock with no wall origin (the Unix epoch): no time of day to judge
ANCHORED_AFTER: Final = 946_684_800.0  # 2000-01-01
#: how far ahead next_allowed_at is searched
_SEARCH_DAYS: Final = 400

HOURS_REASONS: Final = ("calendar_missing", "holiday", "no_window", "before_earliest", "after_latest",
                        "outside_window")
DNC_REASONS: Final = ("dnc", "dnc_review", "dnc_unavailable", "invalid_number")
_DAY_ZH: Final[dict[str, str]] = {"workday": "工作日", "rest_day": "休息日", "statutory_holiday": "法定节假日"}
_DAY_EN: Final[dict[str, str]] = {"workday": "workday", "rest_day": "rest day", "statutory_holiday": "public holiday"}

Window = tuple[int, int]  # seconds of the day, both ends included
Scope = tuple[str, dict[DayType, tuple[Window, ...]]]  # (label, windows per day type)


def _secs(hhmm: str) -> int:
    h, _, m = hhmm.strip().partition(":")
    return int(h) * 3600 + int(m) * 60


def _parse(ws: list[str]) -> tuple[Window, ...]:
    out = []
    for w in ws:
        a, _, b = w.partition("-")
        out.append((_secs(a), _secs(b)))
    return tuple(sorted(out))


def _fmt(w: Window) -> str:
    return f"{w[0] // 3600:02d}:{w[0] % 3600 // 60:02d}-{w[1] // 3600:02d}:{w[1] % 3600 // 60:02d}"


class DncLookup(Protocol):
    @property
    def on_expiry(self) -> str:
        """expire | review (``outbound.on_expiry``)."""

    def lookup(self, number: str) -> tuple[bool, DncEntry | None]:
        """(the list can be trusted, the entry of this normalised number or None); no I/O."""


@dataclass(frozen=True, slots=True)
class Reason:
    code: str
    rule: str  # OUT-HOURS | OUT-DNC
    zh: str
    en: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "rule": self.rule, "message": {"zh": self.zh, "en": self.en}, **self.details}


@dataclass(frozen=True, slots=True)
class Decision:
    allow: bool
    reasons: tuple[Reason, ...]
    at: float  # Unix time judged
    local: dt.datetime
    day: DayInfo
    windows: tuple[Window, ...]  # of the day's type, for the scope (absolute bounds applied)
    scope: str  # campaign:<name> | queue:<name> | team:<name> | default
    next_allowed_at: float | None
    number: str | None  # normalised (None: invalid)
    dnc: DncEntry | None = None

    def to_json(self, tz: ZoneInfo, shown_number: str | None = None) -> dict[str, Any]:
        return {
            "allow": self.allow,
            "reasons": [r.to_json() for r in self.reasons],
            "next_allowed_at": _iso(self.next_allowed_at, tz),
            "at": self.local.isoformat(timespec="seconds"),
            "day": self.day.to_json(),
            "windows": [_fmt(w) for w in self.windows],
            "scope": self.scope,
            "number": shown_number if shown_number is not None else self.number,
        }


def _iso(wall: float | None, tz: ZoneInfo) -> str | None:
    return None if wall is None else dt.datetime.fromtimestamp(wall, tz).isoformat(timespec="seconds")


class OutboundPolicy:
    """The calendar and the windows of ``cfg.outbound``; decisions from memory only."""

    def __init__(self, cfg: Config, calendar: WorkCalendar | None = None) -> None:
        ocfg = cfg.outbound
        self.cfg = cfg
        self.ocfg = ocfg
        self.tz = ZoneInfo(ocfg.timezone or cfg.timezone)
        self.calendar = calendar or WorkCalendar(ocfg.timezone or cfg.timezone, cfg.commitments.work_hours,
                                                 policy=ocfg.holiday_policy, overrides_files=ocfg.calendar_overrides)
        lo, _, hi = ocfg.absolute.partition("-")
        self.bounds: Window = (_secs(lo), _secs(hi))  # lo <= t < hi
        self._default = self._merge({}, ocfg.windows)
        self._team_of = {agent: team for team, s in ocfg.teams.items() for agent in s.agents}
        self._scopes: dict[tuple[str | None, str | None, str | None], Scope] = {}
        self.dial_prefixes = tuple(ocfg.dial_prefixes)

    @staticmethod
    def _merge(base: dict[DayType, tuple[Window, ...]], w: OutboundWindows) -> dict[DayType, tuple[Window, ...]]:
        out = dict(base)
        for kind in DAY_TYPES:
            v = getattr(w, kind)
            if v is not None:
                out[kind] = _parse(v)
        return out

    def team_of(self, agent: str | None) -> str | None:
        return self._team_of.get(agent) if agent else None

    def scope(self, campaign: str | None = None, queue: str | None = None,
              team: str | None = None) -> tuple[str, dict[DayType, tuple[Window, ...]]]:
        """(label, windows per day type) of the most specific configured scope, levels merged per day type."""
        key = (campaign, queue, team)
        got = self._scopes.get(key)
        if got is not None:
            return got
        o = self.ocfg
        windows, label = self._default, "default"
        for kind, name, group in (("team", team, o.teams), ("queue", queue, o.queues), ("campaign", campaign,
                                                                                        o.campaigns)):
            if name is not None and name in group:
                windows, label = self._merge(windows, group[name].windows), f"{kind}:{name}"
        got = (label, windows)
        if len(self._scopes) < 10_000:
            self._scopes[key] = got
        return got

    # -- hours ----------------------------------------------------------------------------------

    def _day_windows(self, info: DayInfo, windows: dict[DayType, tuple[Window, ...]]) -> tuple[Window, ...]:
        lo, hi = self.bounds
        return tuple((max(a, lo), min(b, hi)) for a, b in windows.get(info.type, ()) if max(a, lo) <= min(b, hi))

    def _hours(self, local: dt.datetime, info: DayInfo, windows: tuple[Window, ...]) -> Reason | None:
        """Why the hours forbid ``local`` (None: they allow it)."""
        o = self.ocfg
        t = local.hour * 3600 + local.minute * 60 + local.second  # whole seconds: 17:30:00.4 is "17:30:00"
        hhmm = local.strftime("%H:%M:%S")
        day = info.date.isoformat()
        base: dict[str, Any] = {"day_type": info.type, "date": day, "local_time": hhmm,
                                "windows": [_fmt(w) for w in windows]}
        if info.holiday_zh:
            base["holiday"] = {"zh": info.holiday_zh, "en": info.holiday_en}
        if not info.known and o.missing_year == "deny":
            return Reason("calendar_missing", "OUT-HOURS",
                          f"{info.date.year} 年的法定节假日安排尚未录入日历(config/calendar_overrides.yaml),"
                          "无法判断当天能否外呼",
                          f"the {info.date.year} holiday schedule is not in the calendar yet "
                          "(config/calendar_overrides.yaml): ringwatch cannot tell whether calls are allowed", base)
        lo, hi = self.bounds
        if info.type == "statutory_holiday" and not windows:
            name_zh = f"({info.holiday_zh})" if info.holiday_zh else ""
            name_en = f" ({info.holiday_en})" if info.holiday_en else ""
            return Reason("holiday", "OUT-HOURS", f"{day} 为法定节假日{name_zh},禁止外呼",
                          f"{day} is a public holiday{name_en}: no outbound calls", base)
        if t < lo:
            return Reason("before_earliest", "OUT-HOURS",
                          f"当地时间 {hhmm} 早于 {_fmt(self.bounds)[:5]},任何情况下禁止外呼",
                          f"local time {hhmm} is before {_fmt(self.bounds)[:5]}: never call then", base)
        if t >= hi:
            return Reason("after_latest", "OUT-HOURS",
                          f"当地时间 {hhmm} 不早于 {_fmt(self.bounds)[6:]},任何情况下禁止外呼",
                          f"local time {hhmm} is at or after {_fmt(self.bounds)[6:]}: never call then", base)
        if not windows:
            return Reason("no_window", "OUT-HOURS", f"{_DAY_ZH[info.type]}({day})不安排外呼",
                          f"no calling window on a {_DAY_EN[info.type]} ({day})", base)
        if any(a <= t <= b for a, b in windows):
            return None
        shown = "、".join(_fmt(w) for w in windows)
        return Reason("outside_window", "OUT-HOURS",
                      f"当地时间 {hhmm} 不在{_DAY_ZH[info.type]}外呼时段 {shown} 内",
                      f"local time {hhmm} is outside the {_DAY_EN[info.type]} calling window "
                      f"{shown.replace('、', ', ')}",
                      base)

    def next_window_start(self, from_wall: float, windows: dict[DayType, tuple[Window, ...]]) -> float | None:
        """The first moment at or after ``from_wall`` the hours allow (None: unknown calendar / none within
        a year)."""
        local = dt.datetime.fromtimestamp(from_wall, self.tz)
        day = local.date()
        t0 = local.hour * 3600 + local.minute * 60 + local.second + (1 if local.microsecond else 0)
        for i in range(_SEARCH_DAYS):
            info = self.calendar.day(day)
            if not info.known and self.ocfg.missing_year == "deny":
                return None
            for a, b in self._day_windows(info, windows):
                start = max(a, t0) if i == 0 else a
                if start <= b and start < self.bounds[1]:
                    midnight = dt.datetime.combine(day, dt.time(), self.tz)
                    return (midnight + dt.timedelta(seconds=start)).timestamp()
            day += dt.timedelta(days=1)
        return None

    def window_end(self, at_wall: float, windows: dict[DayType, tuple[Window, ...]]) -> float | None:
        """While the hours allow ``at_wall``: the end of the current window (the last allowed second)."""
        local = dt.datetime.fromtimestamp(at_wall, self.tz)
        t = local.hour * 3600 + local.minute * 60 + local.second
        for a, b in self._day_windows(self.calendar.day(local.date()), windows):
            if a <= t <= b:
                end = min(b, self.bounds[1] - 1)
                return (dt.datetime.combine(local.date(), dt.time(), self.tz) + dt.timedelta(seconds=end)).timestamp()
        return None

    # -- the decision -------------------------------------------------------------------------

    def decide(self, number: str | None, at_wall: float, *, agent: str | None = None, campaign: str | None = None,
               queue: str | None = None, team: str | None = None, dnc: DncLookup | None = None,
               hours: bool = True, dialled: bool = False) -> Decision:
        """May ``number`` be dialled at ``at_wall``?  ``dnc`` None: the list is not checked; ``hours``
        False: the time is not judged; ``dialled``: the number as the PBX dialled it (``dial_prefixes``)."""
        label, windows = self.scope(campaign, queue, team or self.team_of(agent))
        local = dt.datetime.fromtimestamp(at_wall, self.tz)
        info = self.calendar.day(local.date())
        day_windows = self._day_windows(info, windows)
        reasons: list[Reason] = []
        hours_reason = self._hours(local, info, day_windows) if hours else None
        if hours_reason is not None:
            reasons.append(hours_reason)
        normalised: str | None = None
        entry: DncEntry | None = None
        blocked_until = at_wall
        permanent = hours_reason is not None and hours_reason.code == "calendar_missing"
        if number is not None:
            try:
                normalised = normalize_number(number, self.dial_prefixes if dialled else ())
            except InvalidNumber as e:
                reasons.append(Reason("invalid_number", "OUT-DNC", "号码无效,无法核对拒绝呼出名单",
                                      f"not a valid phone number ({e}): the do-not-call list cannot be checked"))
                permanent = True
        if normalised is not None and dnc is not None:
            ok, entry = dnc.lookup(normalised)
            if not ok:
                if self.ocfg.dnc_unavailable == "deny":
                    reasons.append(Reason("dnc_unavailable", "OUT-DNC",
                                          "拒绝呼出名单暂时无法读取(Redis 不可用),按配置拒绝外呼",
                                          "the do-not-call list cannot be read (Redis unavailable): denied "
                                          "as configured (outbound.dnc_unavailable: deny)"))
                    permanent = True
            elif entry is not None:
                state = entry.state(at_wall, dnc.on_expiry)
                d = {"entry": {"requested_at": _iso(entry.requested_at, self.tz), "until": _iso(entry.until, self.tz),
                               "reason": entry.reason, "agent": entry.agent, "source_call": entry.source_call,
                               "state": state}}
                if state == "active":
                    reasons.append(Reason(
                        "dnc", "OUT-DNC",
                        f"客户已要求不再来电(拒绝呼出,登记于 {_iso(entry.requested_at, self.tz)},原因:{entry.reason}),"
                        f"冷静期至 {_iso(entry.until, self.tz)}",
                        f"the customer asked not to be called (do-not-call since {_iso(entry.requested_at, self.tz)}, "
                        f"reason: {entry.reason}); cooling period until {_iso(entry.until, self.tz)}", d))
                    blocked_until = max(blocked_until, entry.until)
                elif state == "review":
                    reasons.append(Reason(
                        "dnc_review", "OUT-DNC",
                        f"拒绝呼出冷静期已于 {_iso(entry.until, self.tz)} 结束,待人工复核后方可外呼",
                        f"the do-not-call cooling period ended {_iso(entry.until, self.tz)}: "
                        "a person must review the entry before the number is called", d))
                    permanent = True
        next_at: float | None = None
        if reasons and not permanent:
            next_at = self.next_window_start(blocked_until, windows) if hours else blocked_until
        return Decision(not reasons, tuple(reasons), at_wall, local, info, day_windows, label, next_at, normalised,
                        entry)


# -- the live rule --------------------------------------------------------------------------------


class OutboundCompliance:
    """OUT-HOURS / OUT-DNC on every outbound dial the tracker sees (``CallOffered`` outbound)."""

    rule_id = "OUT-HOURS"

    def __init__(self, cfg: Config, clock: Clock, policy: OutboundPolicy | None = None) -> None:
        self.policy = policy or OutboundPolicy(cfg)
        self.clock = clock
        self.dnc: DncLookup | None = None
        self.checked = 0
        self.violations: Counter[tuple[str, str, str]] = Counter()  # (rule, reason, team) -> alerts opened
        self.unchecked: Counter[str] = Counter()  # reason the DNC list could not be checked on a dial
        self._today: dict[str, Counter[tuple[str, str]]] = {}  # local date -> (rule, reason) -> n

    def attach_dnc(self, dnc: DncLookup | None) -> None:
        self.dnc = dnc

    def on_event(self, ev: DomainEvent, ctx: RuleContext) -> None:
        if not isinstance(ev, CallOffered) or ev.direction != "outbound":
            return
        wall = self.clock.wall(ev.since)
        anchored = wall >= ANCHORED_AFTER
        if not anchored and self.dnc is None:
            return
        self.checked += 1
        p = self.policy
        d = p.decide(ev.caller or None, wall, agent=ev.agent, dnc=self.dnc, hours=anchored, dialled=True)
        if d.allow:
            return
        team = p.team_of(ev.agent) or "none"
        by_rule: dict[str, list[Reason]] = {}
        for r in d.reasons:
            if r.code == "dnc_unavailable":
                self.unchecked[r.code] += 1
                continue
            by_rule.setdefault(r.rule, []).append(r)
        agent = ev.agent or "-"
        number = ev.caller or "-"
        for rule, reasons in by_rule.items():
            first = reasons[0]
            details: dict[str, object] = {
                "reasons": [r.code for r in reasons], "reason": first.code, "team": team,
                "at_local": d.local.isoformat(timespec="seconds"), "day": d.day.to_json(),
                "windows": [_fmt(w) for w in d.windows], "scope": d.scope,
                "next_allowed_at": _iso(d.next_allowed_at, p.tz),
            }
            if d.dnc is not None and rule == "OUT-DNC":
                details["dnc"] = first.details.get("entry")
            if rule == "OUT-HOURS":
                zh = f"坐席 {agent} 违规外呼 {number}:{first.zh}"
                en = f"{agent} dialled {number} outside the allowed calling hours: {first.en}"
                severity: Severity = "warning"
            else:
                zh = f"坐席 {agent} 外呼了拒绝呼出号码 {number}:{first.zh}"
                en = f"{agent} dialled {number}, which is on the do-not-call list: {first.en}"
                severity = "critical"
            if ctx.violation(rule, f"{rule}:{ev.call_id}", severity, ev.call_id, ev.agent, None, zh, en,
                             **details):
                day = d.local.date().isoformat()
                today = self._today.setdefault(day, Counter())
                for old in sorted(self._today)[:-3]:
                    del self._today[old]
                for r in reasons:
                    self.violations[(rule, r.code, team)] += 1
                    today[(rule, r.code)] += 1
                log.info("%s on call %s by %s to %s: %s", rule, ev.call_id, agent, mask_number(number),
                         ",".join(r.code for r in reasons))

    def today(self, now_wall: float) -> dict[str, Any]:
        """Violations opened on the local day of ``now_wall``: by rule and by reason."""
        day = dt.datetime.fromtimestamp(now_wall, self.policy.tz).date().isoformat()
        counts = self._today.get(day, Counter())
        by_rule: Counter[str] = Counter()
        for (rule, _reason), n in counts.items():
            by_rule[rule] += n
        return {"date": day, "total": sum(counts.values()),
                "by_rule": {r: by_rule.get(r, 0) for r in ("OUT-HOURS", "OUT-DNC")},
                "by_reason": {reason: n for (_rule, reason), n in sorted(counts.items())}}


def outbound_rule(rules: Iterable[object]) -> OutboundCompliance | None:
    """The monitor's outbound rule unit (``monitor.rules``), if enabled."""
    return next((r for r in rules if isinstance(r, OutboundCompliance)), None)


# -- metrics ------------------------------------------------------------------------------------


class OutboundCollector(Collector):
    """OUT-HOURS / OUT-DNC counters, the calendar's missing years and the DNC list's health.  No I/O."""

    def __init__(self, rule: OutboundCompliance | None, policy: OutboundPolicy, clock: Clock,
                 dnc: Any | None = None, permits: Counter[tuple[str, str]] | None = None) -> None:
        self._rule, self._policy, self._clock, self._dnc = rule, policy, clock, dnc
        self._permits = permits if permits is not None else Counter()

    def collect(self) -> Iterable[Metric]:
        out: list[Metric] = []
        v = CounterMetricFamily("ringwatch_outbound_violations", "OUT-HOURS / OUT-DNC violations by reason and team "
                                "(one alert can carry two reasons of its rule)", labels=["rule", "reason", "team"])
        u = CounterMetricFamily("ringwatch_outbound_unchecked", "Outbound dials whose DNC check was impossible",
                                labels=["reason"])
        checked = CounterMetricFamily("ringwatch_outbound_dials_checked", "Outbound dials checked live")
        if self._rule is not None:
            for (rule, reason, team), n in sorted(self._rule.violations.items()):
                v.add_metric([rule, reason, team], n)
            for reason, n in sorted(self._rule.unchecked.items()):
                u.add_metric([reason], n)
            checked.add_metric([], self._rule.checked)
        out += [v, u, checked]
        p = CounterMetricFamily("ringwatch_outbound_permits", "Pre-dial permission answers by result and first reason",
                                labels=["result", "reason"])
        for (result, reason), n in sorted(self._permits.items()):
            p.add_metric([result, reason], n)
        out.append(p)
        now = self._clock.wall(self._clock.now())
        year = dt.datetime.fromtimestamp(now, self._policy.tz).year if now >= ANCHORED_AFTER else None
        m = GaugeMetricFamily("ringwatch_calendar_year_missing", "1 when the official holiday schedule of the year "
                              "(this one and the next) is in neither the holidays package nor the overrides",
                              labels=["year"])
        if year is not None:
            for y in (year, year + 1):
                m.add_metric([str(y)], 0.0 if self._policy.calendar.known(y) else 1.0)
        out.append(m)
        if self._dnc is not None:
            e = GaugeMetricFamily("ringwatch_dnc_entries", "Numbers on the do-not-call list (local copy)")
            e.add_metric([], len(self._dnc.entries))
            up = GaugeMetricFamily("ringwatch_dnc_available", "1 while the DNC list's local copy is fresh")
            up.add_metric([], 1.0 if self._dnc.available else 0.0)
            review = GaugeMetricFamily("ringwatch_dnc_review_due", "Entries past their cooling period awaiting "
                                       "review (on_expiry: review; at the last sweep)")
            review.add_metric([], self._dnc.review_due)
            out += [e, up, review]
        return out
