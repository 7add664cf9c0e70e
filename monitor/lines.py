"""SYS-LINES: the state of the PBX's lines and trunks, outages with escalation, connect rates per trunk.

Fed by line events (:class:`~telephony.events.LineStateChanged`,
:class:`~telephony.events.CallLineSeen`, from the adapter's line tracker) through
:meth:`LineMonitor.handle`, and by the call monitor (:meth:`LineMonitor.attach`:
``CallOffered.trunk``, link up/down, finished call records).

* **Lines** are what the PBX reports (``PJSIP/telecom``, ``SIP/provider``,
  ``registration/<name>``), each with up to two aspects (reachability,
  registration); a line is up when every aspect it reported is up.
* **Trunks** are named in ``lines.trunks`` (each a list of line regexes: up when all
  its known lines are up, down when one is down); a line matching none of them but
  one of ``lines.auto_trunk_patterns`` is a trunk of its own (at most 50 such).
  Other lines (agents' phones) are listed, never alerted on.
* **Outage** (the rule): a trunk going down opens a ``warning`` violation at once
  (``SYS-LINES``); still down ``line_recovery_limit_min`` (30) later, a second,
  ``critical`` one names ``escalation_targets``; both are resolved through the hub
  when the trunk is back, which is also announced as a notice.  The outage (down
  since, back at, time down, escalated) is kept for the API and the inspection.
  Deadlines are clock timers: the same code runs on the loop clock and on a
  :class:`~monitor.clock.VirtualClock`.  While the PBX link is down the trunks'
  states are stale (shown as such) and timers keep running; the resync after the
  reconnect reports every line again.
* **Connect rate** per trunk and local hour (``timezone``): inbound answered ÷
  offered, outbound answered ÷ attempted, from the finished call records; calls
  whose trunk is not known count under ``unknown``.  Plus, per local day, the
  answered calls and those with a recording (SYS-REC) for the inspection.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import re
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from alerts.hub import AlertError, AlertHub
from alerts.model import Alert, Severity
from config.schema import Config
from monitor.calls import Call
from monitor.clock import Clock, Timer
from monitor.engine import Monitor
from telephony.events import CallOffered, DomainEvent, LineEvent, LineStateChanged, LinkDown, LinkUp

log = logging.getLogger(__name__)

RULE: Final = "SYS-LINES"
SYSTEM: Final = "ringwatch"
UNKNOWN_TRUNK: Final = "unknown"  # connect-rate label of calls whose trunk is not known
MAX_LINES: Final = 5000
MAX_AUTO_TRUNKS: Final = 50
MAX_CALL_LINES: Final = 100_000
MAX_UNRECORDED_LISTED: Final = 50
DIRECTIONS: Final = ("inbound", "outbound")

TrunkState = Literal["up", "down", "unknown"]


def _r(x: float | None, n: int = 3) -> float | None:
    return None if x is None else round(x, n)


def ratio(answered: int, offered: int) -> float | None:
    return round(answered / offered, 4) if offered else None


def iso(wall: float | None, tz: ZoneInfo) -> str | None:
    return None if wall is None else dt.datetime.fromtimestamp(wall, tz).isoformat(timespec="seconds")


# -- state -------------------------------------------------------------------------------


@dataclass(slots=True)
class Aspect:
    up: bool
    detail: str
    at: float
    source: str


@dataclass(slots=True)
class LineInfo:
    line: str
    trunk: str | None
    since: float
    up: bool | None = None
    detail: str = ""
    seen: float = 0.0
    rtt_ms: float | None = None
    aspects: dict[str, Aspect] = field(default_factory=dict)

    @property
    def state(self) -> TrunkState:
        return "unknown" if self.up is None else ("up" if self.up else "down")


@dataclass(slots=True)
class Outage:
    trunk: str
    lines: list[str]
    detail: str
    down_at: float  # clock time
    down_wall: float
    up_at: float | None = None
    up_wall: float | None = None
    escalated_at: float | None = None
    alert_ids: list[str] = field(default_factory=list)

    def down_s(self, now: float) -> float:
        return max((self.up_at if self.up_at is not None else now) - self.down_at, 0.0)

    def to_json(self, now: float, tz: ZoneInfo) -> dict[str, Any]:
        return {
            "trunk": self.trunk,
            "lines": self.lines,
            "detail": self.detail,
            "down_at": iso(self.down_wall, tz),
            "up_at": iso(self.up_wall, tz),
            "down_s": _r(self.down_s(now), 1),
            "ongoing": self.up_at is None,
            "escalated": self.escalated_at is not None,
            "alerts": list(self.alert_ids),
        }


@dataclass(slots=True)
class TrunkInfo:
    name: str
    configured: bool
    lines: dict[str, LineInfo] = field(default_factory=dict)
    state: TrunkState = "unknown"
    since: float | None = None
    outage: Outage | None = None
    outages: int = 0


# -- connect rates -----------------------------------------------------------------------


@dataclass(slots=True)
class RecordingDay:
    answered: int = 0
    recorded: int = 0
    unrecorded: list[str] = field(default_factory=list)  # call ids (first MAX_UNRECORDED_LISTED)


class CallStats:
    """Offered / answered per (trunk, direction, local hour), and recordings per local day.

    Bounded: hours and days older than ``keep_days`` are dropped as new records come."""

    def __init__(self, tz: ZoneInfo, keep_days: int) -> None:
        self.tz = tz
        self.keep_s = keep_days * 86400
        self.hours: dict[tuple[str, str, int], list[int]] = {}  # (trunk, direction, hour start) -> [offered, answered]
        self.days: dict[str, RecordingDay] = {}  # local date -> recordings of its answered calls
        self.totals: dict[tuple[str, str], list[int]] = {}  # (trunk, direction) -> [offered, answered], monotonic
        self.records = 0

    def hour_start(self, wall: float) -> int:
        t = dt.datetime.fromtimestamp(wall, self.tz).replace(minute=0, second=0, microsecond=0)
        return int(t.timestamp())

    def day(self, wall: float) -> str:
        return dt.datetime.fromtimestamp(wall, self.tz).date().isoformat()

    def day_bounds(self, day: str) -> tuple[float, float]:
        d = dt.date.fromisoformat(day)
        start = dt.datetime.combine(d, dt.time(), self.tz)
        end = dt.datetime.combine(d + dt.timedelta(days=1), dt.time(), self.tz)
        return start.timestamp(), end.timestamp()

    def add(self, trunk: str | None, direction: str, offered_wall: float, answered: bool, recorded: bool,
            call_id: str) -> None:
        if direction not in DIRECTIONS:
            return
        self.records += 1
        name = trunk or UNKNOWN_TRUNK
        slot = self.hours.setdefault((name, direction, self.hour_start(offered_wall)), [0, 0])
        total = self.totals.setdefault((name, direction), [0, 0])
        slot[0] += 1
        total[0] += 1
        if answered:
            slot[1] += 1
            total[1] += 1
            rec = self.days.setdefault(self.day(offered_wall), RecordingDay())
            rec.answered += 1
            if recorded:
                rec.recorded += 1
            elif len(rec.unrecorded) < MAX_UNRECORDED_LISTED:
                rec.unrecorded.append(call_id)
        self._prune(offered_wall)

    def _prune(self, now_wall: float) -> None:
        horizon = now_wall - self.keep_s
        if self.records % 256:
            return
        for key in [k for k in self.hours if k[2] < horizon]:
            del self.hours[key]
        oldest = self.day(horizon)
        for day in [d for d in self.days if d < oldest]:
            del self.days[day]

    def counts(self, start_wall: float, end_wall: float, trunk: str | None = None,
               direction: str | None = None) -> tuple[int, int]:
        """(offered, answered) of calls offered in [start, end) on ``trunk`` (None: every trunk)."""
        offered = answered = 0
        for (t, d, hour), (o, a) in self.hours.items():
            if start_wall <= hour < end_wall and trunk in (None, t) and direction in (None, d):
                offered += o
                answered += a
        return offered, answered

    def trunks(self) -> set[str]:
        return {t for t, _ in self.totals}

    def hourly(self, start_wall: float, end_wall: float) -> list[dict[str, Any]]:
        rows = []
        for (t, d, hour), (o, a) in sorted(self.hours.items(), key=lambda kv: (kv[0][2], kv[0][0], kv[0][1])):
            if start_wall <= hour < end_wall:
                rows.append({"hour": iso(hour, self.tz), "trunk": t, "direction": d, "offered": o, "answered": a,
                             "rate": ratio(a, o)})
        return rows

    def connect_rate(self, start_wall: float, end_wall: float, trunk: str | None) -> dict[str, Any]:
        """The SYS-LINES figures: inbound answered ÷ offered, outbound answered ÷ attempted."""
        io, ia = self.counts(start_wall, end_wall, trunk, "inbound")
        oo, oa = self.counts(start_wall, end_wall, trunk, "outbound")
        return {"inbound": {"offered": io, "answered": ia, "rate": ratio(ia, io)},
                "outbound": {"attempted": oo, "answered": oa, "rate": ratio(oa, oo)}}

    def recording(self, day: str) -> dict[str, Any]:
        rec = self.days.get(day, RecordingDay())
        return {"day": day, "answered": rec.answered, "recorded": rec.recorded,
                "rate": ratio(rec.recorded, rec.answered), "unrecorded_calls": list(rec.unrecorded)}


# -- the monitor -------------------------------------------------------------------------


class LineMonitor:
    """Lines, trunks, outages (the SYS-LINES rule) and connect rates; see the module docstring."""

    def __init__(self, cfg: Config, clock: Clock, hub: AlertHub) -> None:
        self.cfg = cfg
        self.lcfg = cfg.lines
        self.clock = clock
        self.hub = hub
        self.tz = ZoneInfo(cfg.timezone)
        self.limit_s = self.lcfg.line_recovery_limit_min * 60
        self.trunks: dict[str, TrunkInfo] = {t.name: TrunkInfo(t.name, True) for t in self.lcfg.trunks}
        self._trunk_rules = [(t.name, [re.compile(p) for p in t.lines]) for t in self.lcfg.trunks]
        self._auto = [re.compile(p) for p in self.lcfg.auto_trunk_patterns]
        self.lines: dict[str, LineInfo] = {}
        self.outages: deque[Outage] = deque(maxlen=1000)  # ended ones, oldest first
        self.stats = CallStats(self.tz, self.lcfg.keep_days)
        self._call_trunks: OrderedDict[str, str] = OrderedDict()  # call id -> trunk (until its record)
        self._timers: dict[str, Timer] = {}
        self.link_connected = False
        self.link_since: float | None = None
        self.dropped_lines = 0

    # -- wiring ----------------------------------------------------------------------

    def attach(self, monitor: Monitor) -> None:
        """Follow ``monitor``: trunks of offered calls, the PBX link, finished call records."""
        monitor.on_event(self._on_event)
        monitor.on_record(self._on_record)

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    def trunk_of(self, line: str) -> str | None:
        """The trunk a line belongs to (configured first, then the auto patterns), None if not a trunk."""
        for name, patterns in self._trunk_rules:
            if any(p.search(line) for p in patterns):
                return name
        if any(p.search(line) for p in self._auto):
            if line in self.trunks or sum(not t.configured for t in self.trunks.values()) < MAX_AUTO_TRUNKS:
                return line
            log.warning("lines: more than %d auto trunks; %s is not treated as a trunk", MAX_AUTO_TRUNKS, line)
        return None

    # -- events ----------------------------------------------------------------------

    def handle(self, ev: LineEvent) -> None:
        try:
            if isinstance(ev, LineStateChanged):
                self._on_line(ev)
            else:
                self._on_call_line(ev.call_id, ev.line)
        except Exception:  # the line monitor must never break the adapter's read loop
            log.exception("lines: failed on %s", type(ev).__name__)

    def _on_event(self, ev: DomainEvent) -> None:
        if isinstance(ev, CallOffered) and ev.trunk:
            self._on_call_line(ev.call_id, ev.trunk, override=True)
        elif isinstance(ev, LinkUp):
            self.link_connected, self.link_since = True, ev.at
        elif isinstance(ev, LinkDown):
            self.link_connected, self.link_since = False, ev.at

    def _on_call_line(self, call_id: str, line: str, override: bool = False) -> None:
        if not override and call_id in self._call_trunks:
            return  # the first trunk seen on a call is the one it came in on / went out through
        trunk = self.trunk_of(line)
        if trunk is None:
            return
        self._call_trunks[call_id] = trunk
        while len(self._call_trunks) > MAX_CALL_LINES:
            self._call_trunks.popitem(last=False)

    def connect_today(self) -> dict[str, Any]:
        """Today's connect rates over every trunk (inbound answered ÷ offered, outbound answered ÷ attempted)."""
        now_wall = self.clock.wall(self.clock.now())
        day_start, _ = self.stats.day_bounds(self.stats.day(now_wall))
        return self.stats.connect_rate(day_start, now_wall + 1, None)

    def _on_record(self, call: Call, _record: dict[str, Any]) -> None:
        trunk = self._call_trunks.pop(call.id, None)
        self.stats.add(trunk, call.direction, self.clock.wall(call.offered_at), call.answered_at is not None,
                       call.recorded, call.id)

    def _on_line(self, ev: LineStateChanged) -> None:
        info = self.lines.get(ev.line)
        if info is None:
            if len(self.lines) >= MAX_LINES:
                self.dropped_lines += 1
                return
            trunk = self.trunk_of(ev.line)
            info = self.lines[ev.line] = LineInfo(ev.line, trunk, ev.at)
            if trunk is not None:
                self.trunks.setdefault(trunk, TrunkInfo(trunk, False)).lines[ev.line] = info
        info.aspects[ev.aspect] = Aspect(ev.up, ev.detail, ev.at, ev.source)
        info.seen = ev.at
        if ev.rtt_ms is not None:
            info.rtt_ms = ev.rtt_ms
        up = all(a.up for a in info.aspects.values())
        down = [a for a in info.aspects.values() if not a.up]
        info.detail = down[0].detail if down else ev.detail
        if up != info.up:
            info.up, info.since = up, ev.at
            log.info("lines.%s line=%s trunk=%s detail=%s", "up" if up else "down", ev.line, info.trunk, info.detail)
        if info.trunk is not None:
            self._update_trunk(self.trunks[info.trunk], ev.at)

    # -- the rule --------------------------------------------------------------------

    def _update_trunk(self, trunk: TrunkInfo, now: float) -> None:
        known = [li for li in trunk.lines.values() if li.up is not None]
        state: TrunkState = "down" if any(not li.up for li in known) else ("up" if known else "unknown")
        if state == trunk.state:
            if state == "down" and trunk.outage is not None:  # another line of it went down too
                trunk.outage.lines = sorted(li.line for li in known if not li.up)
            return
        old, trunk.state, trunk.since = trunk.state, state, now
        if state == "down":
            self._open_outage(trunk, now)
        elif old == "down":
            self._close_outage(trunk, now)

    def _open_outage(self, trunk: TrunkInfo, now: float) -> None:
        down = sorted((li for li in trunk.lines.values() if li.up is False), key=lambda li: li.line)
        detail = "; ".join(f"{li.line}: {li.detail}" for li in down)
        outage = trunk.outage = Outage(trunk.name, [li.line for li in down], detail, now, self.clock.wall(now))
        trunk.outages += 1
        mins = f"{self.lcfg.line_recovery_limit_min:g}"
        alert = self._alert(
            self._key(outage), "warning", "violation",
            f"线路 {trunk.name} 中断({detail}):须在 {mins} 分钟内切换至备用线路并上报",
            f"Line {trunk.name} is down ({detail}): move traffic to a backup line within {mins} min and report it",
            {"trunk": trunk.name, "lines": outage.lines, "down_since": iso(outage.down_wall, self.tz),
             "limit_min": self.lcfg.line_recovery_limit_min},
        )
        if alert is not None:
            outage.alert_ids.append(alert.id)
        key = f"{RULE}:{trunk.name}"
        old = self._timers.pop(key, None)
        if old is not None:
            old.cancel()

        def escalate(name: str = trunk.name, o: Outage = outage) -> None:
            self._timers.pop(f"{RULE}:{name}", None)
            try:
                self._escalate(o)
            except Exception:
                log.exception("lines: escalation of %s failed", name)

        self._timers[key] = self.clock.call_at(now + self.limit_s, escalate)

    def _escalate(self, outage: Outage) -> None:
        if outage.up_at is not None or outage.escalated_at is not None:
            return
        now = self.clock.now()
        outage.escalated_at = now
        mins = f"{self.lcfg.line_recovery_limit_min:g}"
        targets = self.lcfg.escalation_targets
        to_zh = "、".join(targets) if targets else "值班负责人"
        to_en = ", ".join(targets) if targets else "the duty manager"
        alert = self._alert(
            self._key(outage) + ":escalated", "critical", "violation",
            f"线路 {outage.trunk} 中断已超过 {mins} 分钟仍未恢复({outage.detail}),已升级至 {to_zh}",
            f"Line {outage.trunk} has been down over {mins} min ({outage.detail}); escalated to {to_en}",
            {"trunk": outage.trunk, "lines": outage.lines, "down_since": iso(outage.down_wall, self.tz),
             "limit_min": self.lcfg.line_recovery_limit_min, "escalated": True, "escalate_to": list(targets)},
        )
        if alert is not None:
            outage.alert_ids.append(alert.id)
        log.warning("lines.escalated trunk=%s down_since=%s targets=%s", outage.trunk, iso(outage.down_wall, self.tz),
                    to_en)

    def _close_outage(self, trunk: TrunkInfo, now: float) -> None:
        outage, trunk.outage = trunk.outage, None
        timer = self._timers.pop(f"{RULE}:{trunk.name}", None)
        if timer is not None:
            timer.cancel()
        if outage is None:
            return
        outage.up_at, outage.up_wall = now, self.clock.wall(now)
        for alert_id in outage.alert_ids:
            alert = self.hub.get(alert_id)
            if alert is not None and alert.state != "resolved":
                with contextlib.suppress(AlertError):
                    self.hub.resolve(alert_id, SYSTEM)
        self.outages.append(outage)
        mins = outage.down_s(now) / 60
        self._alert(
            self._key(outage) + ":restored", "info", "notice",
            f"线路 {trunk.name} 已恢复,中断 {mins:.1f} 分钟",
            f"Line {trunk.name} is back after {mins:.1f} min down",
            {"trunk": trunk.name, "outage": outage.to_json(now, self.tz)},
        )
        log.info("lines.restored trunk=%s down_s=%.1f escalated=%s", trunk.name, outage.down_s(now),
                 outage.escalated_at is not None)

    @staticmethod
    def _key(outage: Outage) -> str:
        return f"{RULE}:{outage.trunk}:{outage.down_at:.3f}"

    def _alert(self, key: str, severity: Severity, kind: Literal["violation", "notice"], zh: str, en: str,
               details: dict[str, Any]) -> Alert | None:
        now = self.clock.now()
        alert = Alert(id=self.hub.next_id(), rule=RULE, key=key, severity=severity, kind=kind, at=now,
                      opened_wall=self.clock.wall(now), call=None, agent=None, queue=None, caller=None,
                      text_zh=zh, text_en=en, details=details)
        return self.hub.raise_alert(alert)

    # -- views -----------------------------------------------------------------------

    def outages_between(self, start_wall: float, end_wall: float) -> list[Outage]:
        """Outages that overlapped [start, end): ended ones and the ongoing ones."""
        out = [o for o in self.outages if o.down_wall < end_wall and (o.up_wall or end_wall) >= start_wall]
        out += [t.outage for t in self.trunks.values() if t.outage is not None and t.outage.down_wall < end_wall]
        return sorted(out, key=lambda o: o.down_wall)

    def line_json(self, li: LineInfo) -> dict[str, Any]:
        return {"line": li.line, "trunk": li.trunk, "state": li.state, "since": iso(self.clock.wall(li.since), self.tz),
                "detail": li.detail, "rtt_ms": li.rtt_ms,
                "aspects": {k: {"up": a.up, "detail": a.detail, "source": a.source,
                                "at": iso(self.clock.wall(a.at), self.tz)} for k, a in sorted(li.aspects.items())}}

    def trunk_json(self, t: TrunkInfo) -> dict[str, Any]:
        now = self.clock.now()
        return {"name": t.name, "configured": t.configured, "state": t.state, "stale": not self.link_connected,
                "since": None if t.since is None else iso(self.clock.wall(t.since), self.tz),
                "down_s": _r(t.outage.down_s(now), 1) if t.outage is not None else 0.0,
                "outage": t.outage.to_json(now, self.tz) if t.outage is not None else None,
                "outages": t.outages,
                "lines": [self.line_json(li) for li in sorted(t.lines.values(), key=lambda li: li.line)]}

    def trunk_names(self) -> list[str]:
        return sorted(self.trunks)

    def snapshot(self, hours: int = 24) -> dict[str, Any]:
        """What ``GET /api/v1/lines`` answers."""
        now = self.clock.now()
        now_wall = self.clock.wall(now)
        hour = self.stats.hour_start(now_wall)
        day_start, _ = self.stats.day_bounds(self.stats.day(now_wall))
        trunks = []
        for name in self.trunk_names():
            j = self.trunk_json(self.trunks[name])
            j["connect_rate"] = {"this_hour": self.stats.connect_rate(hour, now_wall + 1, name),
                                 "last_hour": self.stats.connect_rate(hour - 3600, hour, name),
                                 "today": self.stats.connect_rate(day_start, now_wall + 1, name)}
            trunks.append(j)
        others = [self.line_json(li) for li in sorted(self.lines.values(), key=lambda li: li.line) if li.trunk is None]
        return {
            "now": iso(now_wall, self.tz),
            "ami_connected": self.link_connected,
            "line_recovery_limit_min": self.lcfg.line_recovery_limit_min,
            "trunks": trunks,
            "other_lines": others,
            "outages": [o.to_json(now, self.tz) for o in list(self.outages)[-50:]],
            "connect_rate": {
                "all": {"today": self.stats.connect_rate(day_start, now_wall + 1, None)},
                "hourly": self.stats.hourly(hour - (hours - 1) * 3600, now_wall + 1),
            },
        }


# -- metrics -----------------------------------------------------------------------------


class LinesCollector(Collector):
    """Trunk gauges and connect counts, read at scrape time (no I/O).  Labels: ``trunk`` (configured
    trunks and at most 50 auto trunks, plus ``unknown`` for calls on no known trunk), ``direction``,
    ``window`` (this_hour, last_hour, today)."""

    def __init__(self, lines: LineMonitor) -> None:
        self._lines = lines

    def describe(self) -> Iterable[Metric]:
        return self._families()

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, CounterMetricFamily, CounterMetricFamily,
                             CounterMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily("ringwatch_trunk_up", "1 while the trunk is up, 0 while down (absent: unknown)",
                              labels=["trunk"]),
            GaugeMetricFamily("ringwatch_trunk_down_seconds", "How long the trunk has been down (0 when up)",
                              labels=["trunk"]),
            CounterMetricFamily("ringwatch_trunk_outages", "Outages of the trunk (SYS-LINES alerts)", labels=["trunk"]),
            CounterMetricFamily("ringwatch_trunk_calls_offered", "Calls offered (inbound) / attempted (outbound)",
                                labels=["trunk", "direction"]),
            CounterMetricFamily("ringwatch_trunk_calls_answered", "Calls answered", labels=["trunk", "direction"]),
            GaugeMetricFamily("ringwatch_trunk_connect_ratio",
                              "Answered / offered (接通率) of the calls offered in the window",
                              labels=["trunk", "direction", "window"]),
        )

    def collect(self) -> Iterable[Metric]:
        lm = self._lines
        up, down_s, outages, offered, answered, rate = self._families()
        now = lm.clock.now()
        for name in lm.trunk_names():
            t = lm.trunks[name]
            if t.state != "unknown":
                up.add_metric([name], 1 if t.state == "up" else 0)
            down_s.add_metric([name], t.outage.down_s(now) if t.outage is not None else 0.0)
            outages.add_metric([name], t.outages)
        stats = lm.stats
        for (trunk, direction), (o, a) in sorted(stats.totals.items()):
            offered.add_metric([trunk, direction], o)
            answered.add_metric([trunk, direction], a)
        now_wall = lm.clock.wall(now)
        hour = stats.hour_start(now_wall)
        day_start, _ = stats.day_bounds(stats.day(now_wall))
        windows = {"this_hour": (hour, now_wall + 1), "last_hour": (hour - 3600, hour),
                   "today": (day_start, now_wall + 1)}
        for trunk in sorted(set(lm.trunk_names()) | stats.trunks()):
            for direction in DIRECTIONS:
                for window, (start, end) in windows.items():
                    o, a = stats.counts(start, end, trunk, direction)
                    if o:
                        rate.add_metric([trunk, direction, window], a / o)
        return [up, down_s, outages, offered, answered, rate]
