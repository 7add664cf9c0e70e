"""SYS-LINES: the daily inspection (每日巡检) before ``inspection_at``, and the probe schedule.

Every day, ``probe.daily_margin_min`` before ``lines.inspection_at`` (07:30, local
time of ``timezone``), the :class:`Inspector` runs the probe call (when enabled),
then writes the report of that day: the trunks and their lines with their state,
yesterday's outages, yesterday's connect rate per trunk, the probe's result and
yesterday's recording function (answered calls with a recording started, SYS-REC).
The report is stored (Redis, or memory: :class:`InspectionStore`), served on the API
(``monitor.lines_api``), pushed to supervisors as a notice through the alert hub,
and its result exported as metrics.  ``POST /api/v1/inspections/run`` runs one now.

The schedule is a clock timer (never a sleep): a :class:`~monitor.clock.VirtualClock`
with a ``wall_origin`` drives it in tests.  With ``probe.every_min`` > 0 the probe
also runs that often; a failing probe opens a ``SYS-LINES`` alert that the next good
probe resolves.

A report passes when no problem is found.  Problems: a trunk down, a configured trunk
never seen, the PBX link down, the probe failed (or did not run while enabled),
yesterday's recording share below ``min_recording_ratio``, a trunk's inbound connect
rate below ``min_connect_ratio`` (when set).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime as dt
import io
import json
import logging
from collections import OrderedDict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol
from zoneinfo import ZoneInfo

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from alerts.hub import AlertError, AlertHub
from alerts.model import Alert
from config.schema import Config
from monitor.clock import Clock, Timer
from monitor.engine import Monitor
from monitor.lines import RULE, SYSTEM, LineMonitor, LinesCollector, iso
from monitor.probe import ProbeResult, ProbeRunner
from telephony.ami.adapter import LineTracker

if TYPE_CHECKING:
    import redis.asyncio as aioredis
    from aiohttp import web

log = logging.getLogger(__name__)

Trigger = Literal["schedule", "manual"]
MEMORY_REPORTS: Final = 60


class InspectionStoreUnavailable(Exception):
    """The report store (Redis) cannot be reached."""


class InspectionStore(Protocol):
    """Where inspection reports live: newest first, bounded."""

    async def save(self, report: dict[str, Any]) -> None: ...

    async def list(self, limit: int) -> list[dict[str, Any]]: ...

    async def get(self, report_id: str) -> dict[str, Any] | None: ...

    async def close(self) -> None: ...


class MemoryInspectionStore:
    """Reports in memory (no Redis configured, and in tests)."""

    def __init__(self, keep: int = 400) -> None:
        self.keep = keep
        self._reports: OrderedDict[str, dict[str, Any]] = OrderedDict()

    async def save(self, report: dict[str, Any]) -> None:
        self._reports[report["id"]] = report
        self._reports.move_to_end(report["id"])
        while len(self._reports) > self.keep:
            self._reports.popitem(last=False)

    async def list(self, limit: int) -> list[dict[str, Any]]:
        return list(reversed(self._reports.values()))[:limit]

    async def get(self, report_id: str) -> dict[str, Any] | None:
        return self._reports.get(report_id)

    async def close(self) -> None:
        return None


class RedisInspectionStore:
    """Reports in Redis: ``<prefix>inspection:<id>`` (JSON) and ``<prefix>inspections`` (sorted set,
    id -> generated time), trimmed to ``keep``.  Errors surface as :class:`InspectionStoreUnavailable`."""

    def __init__(self, client: aioredis.Redis, prefix: str = "ringwatch:", keep: int = 400) -> None:
        self.client = client
        self.p = prefix
        self.keep = keep

    @contextlib.asynccontextmanager
    async def _op(self, what: str) -> Any:
        from redis.exceptions import RedisError

        try:
            yield
        except (RedisError, OSError, TimeoutError) as e:
            raise InspectionStoreUnavailable(f"Redis unavailable ({what}: {type(e).__name__})") from e

    async def save(self, report: dict[str, Any]) -> None:
        index = self.p + "inspections"
        async with self._op("save"):
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.set(self.p + "inspection:" + report["id"], json.dumps(report, ensure_ascii=False))
                pipe.zadd(index, {report["id"]: float(report["generated_wall"])})
                await pipe.execute()
            old = await self.client.zrange(index, 0, -(self.keep + 1))
            if old:
                names = _strs(old)
                await self.client.delete(*[self.p + "inspection:" + n for n in names])
                await self.client.zrem(index, *names)

    async def list(self, limit: int) -> list[dict[str, Any]]:
        async with self._op("list"):
            ids = await self.client.zrevrange(self.p + "inspections", 0, limit - 1)
            if not ids:
                return []
            names = _strs(ids)
            rows = await self.client.mget([self.p + "inspection:" + n for n in names])
        return [json.loads(r) for r in rows if r is not None]

    async def get(self, report_id: str) -> dict[str, Any] | None:
        async with self._op("get"):
            raw = await self.client.get(self.p + "inspection:" + report_id)
        return None if raw is None else dict(json.loads(raw))

    async def close(self) -> None:
        await self.client.aclose()


def _strs(items: Any) -> list[str]:
    return [x if isinstance(x, str) else bytes(x).decode() for x in items]


# -- time ----------------------------------------------------------------------------------


def hhmm(text: str) -> tuple[int, int]:
    h, _, m = text.partition(":")
    return int(h), int(m)


def next_due(at: str, tz: ZoneInfo, now_wall: float) -> float:
    """The next local ``at`` (HH:MM) strictly after ``now_wall`` (Unix seconds)."""
    h, m = hhmm(at)
    local = dt.datetime.fromtimestamp(now_wall, tz)
    for days in range(0, 3):
        day = local.date() + dt.timedelta(days=days)
        cand = dt.datetime.combine(day, dt.time(), tz) + dt.timedelta(hours=h, minutes=m)
        cand = cand.replace(tzinfo=None).replace(tzinfo=tz)  # wall-clock time in the zone
        if cand.timestamp() > now_wall:
            return cand.timestamp()
    raise AssertionError("unreachable")


# -- the inspector ---------------------------------------------------------------------------


def _problem(code: str, zh: str, en: str, **extra: Any) -> dict[str, Any]:
    return {"code": code, "text": {"zh": zh, "en": en}, **extra}


class Inspector:
    """Builds, stores and announces the daily inspection; schedules it and the periodic probe."""

    def __init__(self, cfg: Config, clock: Clock, hub: AlertHub, lines: LineMonitor, store: InspectionStore,
                 probe: ProbeRunner | None = None) -> None:
        self.cfg = cfg
        self.lcfg = cfg.lines
        self.clock = clock
        self.hub = hub
        self.lines = lines
        self.store = store
        self.probe = probe
        self.tz = ZoneInfo(cfg.timezone)
        self.recent: OrderedDict[str, dict[str, Any]] = OrderedDict()  # also served when the store is down
        self.last: dict[str, Any] | None = None
        self.store_failures = 0
        self.reports = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timers: dict[str, Timer] = {}
        self._probe_alert: str | None = None
        self._probe_failures = 0
        self._running = False
        self.next_inspection_wall: float | None = None

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Arm the daily inspection (and the periodic probe)."""
        self._running = True
        self._arm_inspection()
        if self.probe is not None and self.lcfg.probe.enabled and self.lcfg.probe.every_min > 0:
            self._arm_probe()

    async def stop(self) -> None:
        self._running = False
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def idle(self) -> None:
        """Wait for the jobs started so far (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _spawn(self, name: str, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("inspection: %s failed", t.get_name(), exc_info=t.exception())

        task.add_done_callback(done)

    def _arm(self, key: str, wall: float, callback: Any) -> None:
        old = self._timers.pop(key, None)
        if old is not None:
            old.cancel()
        now = self.clock.now()
        when = now + (wall - self.clock.wall(now))

        def fire() -> None:
            self._timers.pop(key, None)
            if self._running:
                callback()

        self._timers[key] = self.clock.call_at(when, fire)

    def _arm_inspection(self) -> None:
        margin = self.lcfg.probe.daily_margin_min * 60 if self.probe is not None and self.lcfg.probe.enabled else 0.0
        now_wall = self.clock.wall(self.clock.now())
        due = next_due(self.lcfg.inspection_at, self.tz, now_wall + margin)
        self.next_inspection_wall = due
        self._arm("inspection", due - margin, lambda: self._on_inspection_due(due))

    def _on_inspection_due(self, due_wall: float) -> None:
        self._spawn("inspection-daily", self.inspect("schedule", due_wall))
        self._arm_inspection()

    def _arm_probe(self) -> None:
        now_wall = self.clock.wall(self.clock.now())
        self._arm("probe", now_wall + self.lcfg.probe.every_min * 60, self._on_probe_due)

    def _on_probe_due(self) -> None:
        if self.probe is not None and not self.probe.running:
            self._spawn("probe-periodic", self.run_probe())
        self._arm_probe()

    # -- probe ---------------------------------------------------------------------------

    async def run_probe(self) -> ProbeResult | None:
        if self.probe is None:
            return None
        result = await self.probe.run()
        self._probe_alarm(result)
        return result

    def _probe_alarm(self, result: ProbeResult) -> None:
        """A failing probe opens one alert (until a probe succeeds again, which resolves it)."""
        if result.ok:
            self._probe_failures = 0
            alert_id, self._probe_alert = self._probe_alert, None
            if alert_id is not None:
                alert = self.hub.get(alert_id)
                if alert is not None and alert.state != "resolved":
                    with contextlib.suppress(AlertError):
                        self.hub.resolve(alert_id, SYSTEM)
            return
        self._probe_failures += 1
        if self._probe_alert is not None:
            return
        now = self.clock.now()
        reason = result.reason()
        alert = Alert(id=self.hub.next_id(), rule=RULE, key=f"{RULE}:probe:{now:.3f}", severity="warning",
                      kind="violation", at=now, opened_wall=self.clock.wall(now), call=None, agent=None, queue=None,
                      caller=None, text_zh=f"拨测失败:{reason['zh']}(热线 {self.lcfg.probe.hotline})",
                      text_en=f"Test call failed: {reason['en']} (hotline {self.lcfg.probe.hotline})",
                      details={"probe": result.to_json(self.tz)})
        if self.hub.raise_alert(alert) is not None:
            self._probe_alert = alert.id

    # -- the inspection ---------------------------------------------------------------------

    async def inspect(self, trigger: Trigger = "manual", due_wall: float | None = None) -> dict[str, Any]:
        """Run the probe (when enabled), build the report, store it, announce it."""
        probe: ProbeResult | None = None
        if self.probe is not None and self.lcfg.probe.enabled:
            probe = await self.run_probe()
        report = self.build(probe, trigger, due_wall)
        await self._save(report)
        self._announce(report)
        return report

    def build(self, probe: ProbeResult | None, trigger: Trigger = "manual",
              due_wall: float | None = None) -> dict[str, Any]:
        """The report (pure: reads the line monitor's state and statistics)."""
        lm, stats = self.lines, self.lines.stats
        now = self.clock.now()
        now_wall = self.clock.wall(now)
        if due_wall is None:
            due_wall = now_wall
        day = dt.datetime.fromtimestamp(due_wall, self.tz).date()
        yesterday = (day - dt.timedelta(days=1)).isoformat()
        ystart, yend = stats.day_bounds(yesterday)
        problems: list[dict[str, Any]] = []
        trunks = []
        for name in lm.trunk_names():
            t = lm.trunks[name]
            trunks.append({
                "name": name, "configured": t.configured, "state": t.state,
                "since": None if t.since is None else iso(self.clock.wall(t.since), self.tz),
                "down_s": round(t.outage.down_s(now), 1) if t.outage is not None else 0.0,
                "lines": [{"line": li.line, "state": li.state, "detail": li.detail}
                          for li in sorted(t.lines.values(), key=lambda li: li.line)],
            })
            if t.state == "down":
                detail = t.outage.detail if t.outage is not None else ""
                problems.append(_problem("trunk_down", f"线路 {name} 中断({detail})",
                                         f"trunk {name} is down ({detail})", trunk=name))
            elif t.state == "unknown" and t.configured:
                problems.append(_problem("trunk_unknown", f"线路 {name} 状态未知(PBX 未报告)",
                                         f"trunk {name}: state unknown (never reported by the PBX)", trunk=name))
        if not lm.link_connected:
            problems.append(_problem("pbx_link_down", "与 PBX 的连接中断,线路状态可能过时",
                                     "the PBX link is down: line states may be stale"))
        names = sorted(set(lm.trunk_names()) | stats.trunks())
        rates = [{"trunk": n, **stats.connect_rate(ystart, yend, n)} for n in names]
        floor = self.lcfg.min_connect_ratio
        for row in rates:
            rate = row["inbound"]["rate"]
            if floor is not None and rate is not None and rate < floor:
                problems.append(_problem("low_connect_rate",
                                         f"线路 {row['trunk']} 昨日呼入接通率 {rate:.1%} 低于 {floor:.0%}",
                                         f"trunk {row['trunk']}: yesterday's inbound connect rate {rate:.1%} "
                                         f"is below {floor:.0%}", trunk=row["trunk"]))
        recording = stats.recording(yesterday)
        rec_rate = recording["rate"]
        if rec_rate is not None and rec_rate < self.lcfg.min_recording_ratio:
            missing = recording["answered"] - recording["recorded"]
            problems.append(_problem("recording_missing", f"昨日有 {missing} 通已接通话未录音(录音率 {rec_rate:.1%})",
                                     f"{missing} of yesterday's answered calls were not recorded "
                                     f"(recording rate {rec_rate:.1%})"))
        probe_json: dict[str, Any] = {"enabled": self.lcfg.probe.enabled, "hotline": self.lcfg.probe.hotline}
        if probe is not None:
            probe_json.update(probe.to_json(self.tz))
            if not probe.ok:
                reason = probe.reason()
                problems.append(_problem("probe_failed", f"拨测失败:{reason['zh']}",
                                         f"test call failed: {reason['en']}", outcome=probe.outcome))
        elif self.lcfg.probe.enabled:
            problems.append(_problem("probe_missing", "拨测未执行", "the test call did not run"))
        outages = [o.to_json(now, self.tz) for o in lm.outages_between(ystart, now_wall)]
        generated = dt.datetime.fromtimestamp(now_wall, self.tz)
        return {
            "type": "inspection",
            "id": self._new_id(generated),
            "date": day.isoformat(),
            "due": iso(due_wall, self.tz),
            "generated_at": generated.isoformat(timespec="seconds"),
            "generated_wall": round(now_wall, 3),
            "on_time": now_wall <= due_wall + 1e-6,
            "trigger": trigger,
            "result": "fail" if problems else "pass",
            "problems": problems,
            "pbx_connected": lm.link_connected,
            "trunks": trunks,
            "outages": outages,
            "connect_rate": {"day": yesterday, "trunks": rates, "all": stats.connect_rate(ystart, yend, None)},
            "recording": recording,
            "probe": probe_json,
        }

    def _new_id(self, generated: dt.datetime) -> str:
        base = generated.strftime("%Y%m%dT%H%M%S")
        rid, n = base, 1
        while rid in self.recent:
            n += 1
            rid = f"{base}-{n}"
        return rid

    async def _save(self, report: dict[str, Any]) -> None:
        self.recent[report["id"]] = report
        while len(self.recent) > MEMORY_REPORTS:
            self.recent.popitem(last=False)
        self.last = report
        self.reports += 1
        try:
            await self.store.save(report)
        except InspectionStoreUnavailable as e:
            self.store_failures += 1
            log.warning("inspection %s kept in memory only: %s", report["id"], e)

    def _announce(self, report: dict[str, Any]) -> None:
        now = self.clock.now()
        n = len(report["problems"])
        if n == 0:
            zh = f"每日巡检 {report['date']}:通过(线路、接通率、拨测、录音均正常)"
            en = f"Daily inspection {report['date']}: passed (lines, connect rate, test call, recordings)"
        else:
            zh = f"每日巡检 {report['date']}:发现 {n} 个问题 — " + ";".join(p["text"]["zh"] for p in report["problems"])
            en = f"Daily inspection {report['date']}: {n} problem(s) — " + \
                "; ".join(p["text"]["en"] for p in report["problems"])
        alert = Alert(id=self.hub.next_id(), rule=RULE, key=f"{RULE}:inspection:{report['id']}",
                      severity="info" if n == 0 else "warning", kind="notice", at=now,
                      opened_wall=self.clock.wall(now), call=None, agent=None, queue=None, caller=None,
                      text_zh=zh, text_en=en,
                      details={"inspection": report["id"], "result": report["result"],
                               "problems": [p["code"] for p in report["problems"]]})
        self.hub.raise_alert(alert)
        log.info("inspection.done id=%s result=%s problems=%s", report["id"], report["result"],
                 ",".join(p["code"] for p in report["problems"]) or "-")

    # -- reads (API) --------------------------------------------------------------------------

    async def list(self, limit: int) -> tuple[list[dict[str, Any]], bool]:
        """Newest first; ``(reports, stored)``: from the store, or from memory when it is down."""
        try:
            return await self.store.list(limit), True
        except InspectionStoreUnavailable:
            return list(reversed(self.recent.values()))[:limit], False

    async def get(self, report_id: str) -> dict[str, Any] | None:
        if report_id in self.recent:
            return self.recent[report_id]
        try:
            return await self.store.get(report_id)
        except InspectionStoreUnavailable:
            return None


# -- CSV --------------------------------------------------------------------------------------

CSV_FIELDS: Final = (
    "id", "date", "generated_at", "due", "on_time", "trigger", "result", "problems",
    "trunk", "trunk_state", "trunk_down_s",
    "inbound_offered", "inbound_answered", "inbound_rate", "outbound_attempted", "outbound_answered", "outbound_rate",
    "outages", "outage_down_s",
    "probe_outcome", "probe_register_ms", "probe_post_dial_delay_ms", "probe_answer_ms", "probe_rtp_packets",
    "probe_audio", "probe_hangup",
    "recording_day", "recording_answered", "recording_recorded", "recording_rate",
)


def reports_csv(reports: Iterable[dict[str, Any]]) -> str:
    """One row per report and trunk (report-level columns repeated); a report without trunks: one row."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\r\n")
    w.writeheader()
    for r in reports:
        probe, rec = r.get("probe") or {}, r.get("recording") or {}
        base = {
            "id": r["id"], "date": r["date"], "generated_at": r["generated_at"], "due": r["due"],
            "on_time": r["on_time"], "trigger": r["trigger"], "result": r["result"],
            "problems": ";".join(p["code"] for p in r["problems"]),
            "probe_outcome": probe.get("outcome", "disabled" if not probe.get("enabled") else "missing"),
            "probe_register_ms": probe.get("register_ms"), "probe_post_dial_delay_ms": probe.get("post_dial_delay_ms"),
            "probe_answer_ms": probe.get("answer_ms"), "probe_rtp_packets": probe.get("rtp_packets"),
            "probe_audio": probe.get("audio"), "probe_hangup": probe.get("hangup"),
            "recording_day": rec.get("day"), "recording_answered": rec.get("answered"),
            "recording_recorded": rec.get("recorded"), "recording_rate": rec.get("rate"),
        }
        rates = {row["trunk"]: row for row in r["connect_rate"]["trunks"]}
        states = {t["name"]: t for t in r["trunks"]}
        names = sorted(set(rates) | set(states)) or [""]
        for name in names:
            row = dict(base)
            t, c = states.get(name, {}), rates.get(name)
            outages = [o for o in r["outages"] if o["trunk"] == name]
            row.update({"trunk": name, "trunk_state": t.get("state", ""), "trunk_down_s": t.get("down_s", ""),
                        "outages": len(outages), "outage_down_s": sum(o["down_s"] or 0 for o in outages)})
            if c is not None:
                row.update({"inbound_offered": c["inbound"]["offered"], "inbound_answered": c["inbound"]["answered"],
                            "inbound_rate": c["inbound"]["rate"], "outbound_attempted": c["outbound"]["attempted"],
                            "outbound_answered": c["outbound"]["answered"], "outbound_rate": c["outbound"]["rate"]})
            w.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buf.getvalue()


# -- metrics ----------------------------------------------------------------------------------


class InspectionCollector(Collector):
    """The last inspection and the last probe, read at scrape time (no I/O)."""

    PHASES: Final = ("register", "post_dial_delay", "answer", "first_rtp", "hangup")

    def __init__(self, inspector: Inspector) -> None:
        self._i = inspector

    def describe(self) -> Iterable[Metric]:
        return self._families()

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily("ringwatch_inspection_last_pass", "1 if the last daily inspection passed, else 0"),
            GaugeMetricFamily("ringwatch_inspection_last_timestamp_seconds", "When the last inspection was written"),
            GaugeMetricFamily("ringwatch_inspection_last_problems", "Problems found by the last inspection"),
            GaugeMetricFamily("ringwatch_inspection_recording_ratio",
                              "Share of the previous day's answered calls with a recording (last inspection)"),
            GaugeMetricFamily("ringwatch_inspection_next_timestamp_seconds", "When the next inspection is due"),
            GaugeMetricFamily("ringwatch_probe_last_success", "1 if the last test call succeeded, else 0"),
            GaugeMetricFamily("ringwatch_probe_last_timestamp_seconds", "When the last test call started"),
            GaugeMetricFamily("ringwatch_probe_last_phase_seconds",
                              "Timings of the last test call (register, post_dial_delay, answer, first_rtp, hangup)",
                              labels=["phase"]),
            GaugeMetricFamily("ringwatch_probe_last_rtp_packets", "RTP packets received in the last test call"),
        )

    def collect(self) -> Iterable[Metric]:
        fams = self._families()
        (last_pass, last_ts, problems, rec_ratio, next_ts, probe_ok, probe_ts, phase, rtp) = fams
        last = self._i.last
        if last is not None:
            last_pass.add_metric([], 1 if last["result"] == "pass" else 0)
            last_ts.add_metric([], last["generated_wall"])
            problems.add_metric([], len(last["problems"]))
            if last["recording"]["rate"] is not None:
                rec_ratio.add_metric([], last["recording"]["rate"])
        if self._i.next_inspection_wall is not None:
            next_ts.add_metric([], self._i.next_inspection_wall)
        res = self._i.probe.last if self._i.probe is not None else None
        out: list[Metric] = list(fams)
        if res is not None:
            probe_ok.add_metric([], 1 if res.ok else 0)
            probe_ts.add_metric([], res.started_wall)
            values = {"register": res.register_ms, "post_dial_delay": res.post_dial_delay_ms, "answer": res.answer_ms,
                      "first_rtp": res.first_rtp_ms, "hangup": res.hangup_ms}
            for name in self.PHASES:
                v = values[name]
                if v is not None:
                    phase.add_metric([name], v / 1000)
            rtp.add_metric([], res.rtp_packets)
        runs = CounterMetricFamily("ringwatch_probe_runs", "Test calls by outcome", labels=["outcome"])
        if self._i.probe is not None:
            for outcome, n in sorted(self._i.probe.by_outcome.items()):
                runs.add_metric([outcome], n)
        out.append(runs)
        return out


# -- wiring for the daemon --------------------------------------------------------------------


class LinesRuntime:
    """SYS-LINES in the daemon: the line tracker (for the adapter), the line monitor, the probe runner,
    the inspector and its store, their metrics and routes."""

    def __init__(self, cfg: Config, clock: Clock, hub: AlertHub, monitor: Monitor, registry: CollectorRegistry,
                 *, store: InspectionStore | None = None, probe: ProbeRunner | None = None) -> None:
        self.cfg = cfg
        self.registry = registry
        self.monitor = LineMonitor(cfg, clock, hub)
        self.monitor.attach(monitor)
        self.tracker = LineTracker(self.monitor.handle, tuple(cfg.lines.resync_actions))
        self.probe = probe if probe is not None else (ProbeRunner(cfg.lines.probe) if cfg.lines.probe.enabled else None)
        self._store = store
        self.inspector: Inspector | None = None
        self._collectors: list[Collector] = []

    async def start(self, app: web.Application | None = None, redis_url: str | None = None) -> None:
        store = self._store if self._store is not None else self._make_store(redis_url)
        self.inspector = Inspector(self.cfg, self.monitor.clock, self.monitor.hub, self.monitor, store, self.probe)
        self.inspector.start()
        self._collectors = [LinesCollector(self.monitor), InspectionCollector(self.inspector)]
        for c in self._collectors:
            self.registry.register(c)
        if app is not None:
            from monitor.lines_api import LINES

            app[LINES] = self

    def _make_store(self, redis_url: str | None) -> InspectionStore:
        kind = self.cfg.lines.store
        keep = self.cfg.lines.keep_reports
        if kind == "memory" or (kind == "auto" and redis_url is None):
            if kind == "auto":
                log.info("inspection reports are kept in memory (no Redis: set redis.url or enable commitments)")
            return MemoryInspectionStore(keep)
        if redis_url is None:
            log.error("lines.store is redis but no Redis URL is known; inspection reports are kept in memory")
            return MemoryInspectionStore(keep)
        from monitor.store import client_from_config

        return RedisInspectionStore(client_from_config(redis_url, self.cfg.redis), self.cfg.commitments.key_prefix,
                                    keep)

    async def stop(self) -> None:
        for c in self._collectors:
            self.registry.unregister(c)
        self._collectors = []
        if self.inspector is not None:
            await self.inspector.stop()
            await self.inspector.store.close()
        self.monitor.close()
