"""Wallboard KPIs (RULES.md, "Wallboard KPIs") over today's calls, and their coalesced push.

Definitions (today = the local day of ``timezone``; reset at midnight):

* offered: inbound calls that joined a queue (a call counts once, whatever its queues);
* service level = answered with a queue wait <= ``IN-WAIT.service_level_s`` / offered
  (abandoned calls stay in the denominator); ASA = mean queue wait of the answered;
  abandon rate = abandoned / offered; AHT = mean talk time of the answered calls that ended;
* calls waiting / longest wait: now, over every queue;
* agents by state: available / ringing / talking / wrapup (paused with the wrap-up reason) /
  paused / offline;
* IN-ANSWER and OUT-HOURS violations opened today; transfers over limit = IN-XFER violations today;
* callbacks due (open) / overdue, from the commitment store (refreshed every few seconds);
* line connect rate (SYS-LINES 接通率, from ``monitor.lines``, when line health is on): today's
  calls that ended, inbound answered ÷ offered and outbound answered ÷ attempted, over every trunk;
  the tile shows both together ((answered in + out) ÷ (offered + attempted)).

Each KPI gets a colour from ``ui.kpi`` (amber / red thresholds).  :class:`KpiPublisher` pushes
``{"type": "kpi", ...}`` frames on the websocket: when something changed, at most once per
``ui.kpi_push_interval_s`` (and every few seconds while calls wait: the longest wait grows).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo

from alerts.hub import AlertChange, AlertHub
from config.schema import Config, KpiThreshold
from monitor.engine import Monitor
from telephony.events import CallAbandoned, CallAnswered, CallEnded, DomainEvent, QueueJoined

log = logging.getLogger(__name__)

Colour = Literal["green", "amber", "red", "none"]
AGENT_STATES: Final = ("available", "ringing", "talking", "wrapup", "paused", "offline")
CallbackCounts = Callable[[], Awaitable[tuple[int, int]]]
#: today's connect rates: {"inbound": {"offered", "answered", "rate"}, "outbound": {"attempted", "answered", "rate"}}
LineConnect = Callable[[], dict[str, Any]]


def colour(value: float | None, t: KpiThreshold | None) -> Colour:
    """green / amber / red for ``value``; lower is better when ``red > amber``."""
    if value is None or t is None:
        return "none"
    if t.red >= t.amber:
        return "red" if value >= t.red else "amber" if value >= t.amber else "green"
    return "red" if value <= t.red else "amber" if value <= t.amber else "green"


class Wallboard:
    """Today's KPIs from the monitor's events and the alert hub (a sink: counts violations)."""

    name = "wallboard"

    def __init__(self, cfg: Config, monitor: Monitor, hub: AlertHub) -> None:
        self.cfg = cfg
        self.monitor = monitor
        self.tz = ZoneInfo(cfg.timezone)
        self.sl_s = cfg.rules.in_wait.service_level_s
        self._wrapup = cfg.pbx.channels.wrapup_pause_prefix
        self.callbacks: tuple[int, int] | None = None  # (due, overdue), None: unknown
        self.line_connect: LineConnect | None = None  # set when line health runs (monitor.lines)
        self.changed = asyncio.Event()
        self._reset(self._today())
        monitor.on_event(self._on_event)
        hub.add_sink(self)

    def _today(self, wall: float | None = None) -> str:
        when = self.monitor.clock.wall(self.monitor.clock.now()) if wall is None else wall
        return dt.datetime.fromtimestamp(when, self.tz).date().isoformat()

    def _reset(self, day: str) -> None:
        self.day = day
        self._offered: set[str] = set()
        self._answered: set[str] = set()
        self._abandoned: set[str] = set()
        self.within = 0
        self.wait_sum = 0.0
        self.talk_sum = 0.0
        self.talk_n = 0
        self.violations: dict[str, int] = {"IN-ANSWER": 0, "OUT-HOURS": 0, "IN-XFER": 0}

    def _roll(self, wall: float | None = None) -> None:
        day = self._today(wall)
        if day != self.day:
            self._reset(day)

    # -- inputs --------------------------------------------------------------------------------

    def _on_event(self, ev: DomainEvent) -> None:
        if not isinstance(ev, QueueJoined | CallAnswered | CallAbandoned | CallEnded):
            return
        self._roll()
        call = self.monitor.call(ev.call_id)
        if isinstance(ev, QueueJoined):
            if call is not None and call.direction == "inbound" and ev.call_id not in self._offered:
                self._offered.add(ev.call_id)
                self.changed.set()
        elif isinstance(ev, CallAnswered):
            if ev.call_id in self._offered and ev.call_id not in self._answered and call is not None:
                self._answered.add(ev.call_id)
                wait = call.wait_s or 0.0
                self.wait_sum += wait
                if wait <= self.sl_s:
                    self.within += 1
                self.changed.set()
        elif isinstance(ev, CallAbandoned):
            if ev.call_id in self._offered and ev.call_id not in self._abandoned:
                self._abandoned.add(ev.call_id)
                self.changed.set()
        else:  # ended: the line connect rate counts it (answered or not)
            if ev.call_id in self._answered and call is not None and call.talk_s is not None:
                self.talk_sum += call.talk_s
                self.talk_n += 1
            self.changed.set()

    def offer(self, change: AlertChange) -> None:
        a = change.alert
        if change.kind == "opened" and a.kind == "violation" and a.rule in self.violations:
            self._roll(a.opened_wall)
            if self._today(a.opened_wall) == self.day:
                self.violations[a.rule] += 1
                self.changed.set()

    # -- output --------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        self._roll()
        m = self.monitor
        waiting = m.waiting_by_queue()
        offered, answered, abandoned = len(self._offered), len(self._answered), len(self._abandoned)
        by_state = dict.fromkeys(AGENT_STATES, 0)
        for a in m.agents.values():
            state = a.state
            if a.paused and a.reason and a.reason.startswith(self._wrapup):
                state = "wrapup"
            elif state not in by_state:
                state = "offline"
            by_state[state] += 1
        values: dict[str, float | None] = {
            "calls_waiting": sum(n for n, _ in waiting.values()),
            "longest_wait_s": round(max((w for _, w in waiting.values()), default=0.0), 1),
            "service_level": round(self.within / offered, 4) if offered else None,
            "asa_s": round(self.wait_sum / answered, 1) if answered else None,
            "abandon_rate": round(abandoned / offered, 4) if offered else None,
            "aht_s": round(self.talk_sum / self.talk_n, 1) if self.talk_n else None,
            "in_answer_today": self.violations["IN-ANSWER"],
            "out_hours_today": self.violations["OUT-HOURS"],
            "transfers_over_limit": self.violations["IN-XFER"],
            "callbacks_due": self.callbacks[0] if self.callbacks else None,
            "callbacks_overdue": self.callbacks[1] if self.callbacks else None,
        }
        lines = self.line_connect() if self.line_connect is not None else None
        if lines is not None:
            inbound, outbound = lines["inbound"], lines["outbound"]
            tried = inbound["offered"] + outbound["attempted"]
            values["line_connect_rate"] = (round((inbound["answered"] + outbound["answered"]) / tried, 4)
                                           if tried else None)
        kpi = self.cfg.ui.kpi
        return {
            "type": "kpi",
            "day": self.day,
            "at": round(m.clock.wall(m.clock.now()), 3),
            "values": values,
            "colours": {k: colour(v, kpi.get(k)) for k, v in values.items() if k in kpi},
            "counts": {"offered": offered, "answered": answered, "abandoned": abandoned,
                       "answered_within": self.within},
            "agents": by_state,
            "line_connect": lines,
            "waiting_by_queue": {q: {"waiting": n, "longest_s": round(w, 1)} for q, (n, w) in sorted(waiting.items())},
            "service_level": {"threshold_s": self.sl_s,
                              "formula": {"zh": f"{self.sl_s:g} 秒内接起的来电 ÷ 进线总数(含放弃)",
                                          "en": f"answered within {self.sl_s:g} s ÷ offered (abandons included)"}},
            "thresholds": {k: {"amber": t.amber, "red": t.red} for k, t in kpi.items()},
        }


class KpiPublisher:
    """One owned task: pushes the wallboard's snapshot when it changed, at most every ``interval_s``."""

    def __init__(self, wallboard: Wallboard, publish: Callable[[dict[str, Any]], object], interval_s: float,
                 callbacks: CallbackCounts | None = None, refresh_s: float = 5.0) -> None:
        self.wallboard = wallboard
        self._publish = publish
        self.interval_s = interval_s
        self._callbacks = callbacks
        self._refresh_s = refresh_s
        self._task: asyncio.Task[None] | None = None
        self._last = ""
        self.pushed = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="kpi-publisher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _refresh_callbacks(self) -> None:
        if self._callbacks is None:
            return
        try:
            async with asyncio.timeout(self._refresh_s):
                self.wallboard.callbacks = await self._callbacks()
        except Exception as e:  # the store may be down: the wallboard shows "—"
            log.debug("kpi: callbacks unavailable (%s)", type(e).__name__)
            self.wallboard.callbacks = None

    def push_now(self) -> bool:
        """Publish the current snapshot if it differs from the last one pushed."""
        snap = self.wallboard.snapshot()
        text = json.dumps({k: v for k, v in snap.items() if k != "at"}, sort_keys=True)
        if text == self._last:
            return False
        self._last = text
        self._publish(snap)
        self.pushed += 1
        return True

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_refresh = 0.0
        while True:
            try:
                if loop.time() >= next_refresh:
                    await self._refresh_callbacks()
                    next_refresh = loop.time() + self._refresh_s
                self.wallboard.changed.clear()
                self.push_now()
                await asyncio.sleep(self.interval_s)  # the coalescing window
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._refresh_s):
                        await self.wallboard.changed.wait()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("kpi publisher failed; going on")
                await asyncio.sleep(self.interval_s)
