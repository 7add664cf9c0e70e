"""Listen, whisper, barge: a supervisor's own phone rung into the agent's call (Asterisk ChanSpy).

:class:`SpyService` decides *whether* (permission ``calls:spy``, the call in one of the
supervisor's teams, the supervisor has a phone, the call is being talked on) and asks the PBX
adapter to do it (``AsteriskAdapter.spy``: an AMI Originate of the supervisor's phone into
``ChanSpy(<agent channel>,<options>)``).  The session is then ``requested``; the PBX's
SpyStarted / SpyStopped events (ChanSpyStart / ChanSpyStop) make it ``active`` and ``ended``.

Every request, start and end is in the audit trail (``spy.request``, ``spy.start``,
``spy.end``: who, whom, which call, mode, start and end).  The request is written to Redis
*before* the PBX is asked: when the audit trail cannot be written (Redis down), listening in is
refused (503 ``audit_unavailable``), never done unaudited.  A session that starts counts for
QA-LIVE (``monitor.qa``): ``random`` (a silent listen, 随机监听) or ``onsite`` (the agent is
aware: whisper or barge, 现场监听) unless the request says otherwise.
"""

from __future__ import annotations

import itertools
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

from alerts.model import Alert
from config.schema import UiConfig
from monitor.audit import AuditLog
from monitor.auth import Principal
from monitor.engine import Monitor
from telephony.events import DomainEvent, SpyStarted, SpyStopped

log = logging.getLogger(__name__)

SpyMode = Literal["listen", "whisper", "barge"]
QaKind = Literal["random", "onsite"]
SPY_MODES: Final = get_args(SpyMode)
QA_KINDS: Final = get_args(QaKind)
SpyState = Literal["requested", "active", "ended", "failed"]

#: ``(supervisor_channel, call_id, agent, mode, options, spy_id) -> spied channel``; raises LookupError
#: when the agent has no leg in the call, anything else when the PBX refuses
Originate = Callable[[str, str, str, SpyMode, str, str], Awaitable[str]]
#: told when a session starts: (agent, qa kind, by, call id, Unix time)
MonitoringListener = Callable[[str, QaKind, str, str, float], None]


class SpyError(Exception):
    def __init__(self, status: int, code: str, zh: str, en: str) -> None:
        super().__init__(en)
        self.status, self.code, self.zh, self.en = status, code, zh, en


@dataclass(slots=True)
class SpySession:
    id: str
    by: str
    agent: str
    call_id: str
    mode: SpyMode
    qa: QaKind
    phone: str
    requested_at: float  # Unix time
    state: SpyState = "requested"
    started_at: float | None = None
    ended_at: float | None = None
    channel: str | None = None  # what the PBX spies on (never shown to the browser)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "by": self.by, "agent": self.agent, "call": self.call_id, "mode": self.mode,
                "qa": self.qa, "state": self.state, "requested_at": round(self.requested_at, 3),
                "started_at": _r(self.started_at), "ended_at": _r(self.ended_at)}


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def call_teams(ui: UiConfig, queue: str | None, agent: str | None) -> set[str]:
    """The teams a call belongs to: by its agent, and by its queue."""
    return {name for name, t in ui.teams.items() if (agent and agent in t.agents) or (queue and queue in t.queues)}


def agent_teams(ui: UiConfig, agent: str) -> set[str]:
    return {name for name, t in ui.teams.items() if agent in t.agents}


def in_scope(principal: Principal, ui: UiConfig, queue: str | None, agent: str | None) -> bool:
    """May ``principal`` see / spy on a call of this queue and agent?  None teams: everything."""
    if principal.teams is None:
        return True
    return bool(principal.teams & call_teams(ui, queue, agent))


def alert_in_scope(principal: Principal, ui: UiConfig, alert: Alert) -> bool:
    """May ``principal`` see / ack / resolve ``alert``?  Its agent's or queue's team must be one of the
    principal's; an alert with neither agent nor queue (a line down, an inspection) is centre-wide:
    everyone's.  A principal without teams (tokens, admins, QA unless ``ui.qa_team_scoped``) sees all."""
    if principal.teams is None or (not alert.agent and not alert.queue):
        return True
    return in_scope(principal, ui, alert.queue, alert.agent)


class SpyService:
    """Spy sessions; feed it the monitor's events (``Monitor.on_event``)."""

    #: how long a request waits for Redis to confirm its audit entry before it is refused
    audit_timeout_s = 3.0

    def __init__(self, ui: UiConfig, monitor: Monitor, audit: AuditLog, originate: Originate | None,
                 wall: Callable[[], float], keep: int = 1000) -> None:
        self.ui = ui
        self.monitor = monitor
        self.audit = audit
        self.originate = originate
        self._wall = wall
        self._keep = keep
        self.sessions: OrderedDict[str, SpySession] = OrderedDict()
        self._ids = itertools.count(1)
        self._listeners: list[MonitoringListener] = []
        self._changes: list[Callable[[SpySession], None]] = []
        #: sessions whose originate is in flight -> the PBX's events for them meanwhile (a fast
        #: failure or start can come before the originate returns: replayed once it has)
        self._in_flight: dict[str, list[SpyStarted | SpyStopped]] = {}
        monitor.on_event(self.on_event)

    def on_monitoring(self, listener: MonitoringListener) -> None:
        self._listeners.append(listener)

    def on_change(self, listener: Callable[[SpySession], None]) -> None:
        """Told after a session became active or ended (the console shows the state)."""
        self._changes.append(listener)

    def _changed(self, s: SpySession) -> None:
        for listener in self._changes:
            try:
                listener(s)
            except Exception:
                log.exception("spy change listener failed")

    async def start(self, principal: Principal, call_id: str, mode: str, qa: str | None = None,
                    agent: str | None = None) -> SpySession:
        if not principal.can("calls:spy"):
            raise SpyError(403, "forbidden", "当前角色无权监听", "your role may not listen in on calls")
        if mode not in SPY_MODES:
            raise SpyError(422, "bad_mode", "mode 应为 listen、whisper 或 barge",
                           "mode must be listen, whisper or barge")
        if qa is not None and qa not in QA_KINDS:
            raise SpyError(422, "bad_qa", "qa 应为 random 或 onsite", "qa must be random or onsite")
        call = self.monitor.calls.get(call_id)
        if call is None:
            raise SpyError(404, "not_found", f"没有进行中的通话 {call_id[:60]}", f"no live call {call_id[:60]}")
        target = agent or call.talking_agent
        queue = call.current_queue or call.queue
        if not in_scope(principal, self.ui, queue, target):
            raise SpyError(403, "not_your_team", "该通话不属于您的班组", "this call is not in your teams")
        if target is None or call.state != "talking":
            raise SpyError(409, "not_talking", "通话尚未接通,无法监听", "the call is not being talked on yet")
        if not principal.phone:
            raise SpyError(422, "no_phone", "未为您配置话机(ui.users[].phone)", "no phone is configured for you "
                           "(ui.users[].phone)")
        if self.originate is None:
            raise SpyError(501, "not_supported", "当前 PBX 不支持监听", "this PBX adapter cannot listen in")
        m: SpyMode = mode  # type: ignore[assignment]  # checked above
        kind: QaKind = qa if qa is not None else ("random" if m == "listen" else "onsite")  # type: ignore[assignment]
        s = SpySession(f"S{next(self._ids)}", principal.name, target, call_id, m, kind, principal.phone, self._wall())
        self._keep_session(s)
        details = {"mode": m, "agent": target, "qa": kind, "spy": s.id}
        # no listening in that the audit trail does not already hold: the request is in Redis first
        if not await self.audit.record_durable(principal.name, "spy.request", call_id, details,
                                               timeout_s=self.audit_timeout_s):
            s.state = "failed"
            self.audit.record(principal.name, "spy.failed", call_id, {**details, "reason": "audit_unavailable"})
            log.error("spy %s by %s refused: the audit trail could not be written", s.id, principal.name)
            raise SpyError(503, "audit_unavailable", "审计记录无法写入,已拒绝监听",
                           "the audit trail cannot be written: listening refused")
        self._in_flight[s.id] = []
        try:
            s.channel = await self.originate(principal.phone, call_id, target, m, self.ui.spy_options, s.id)
        except LookupError:
            self._in_flight.pop(s.id, None)
            s.state = "failed"
            self.audit.record(principal.name, "spy.failed", call_id, {**details, "reason": "no_channel"})
            raise SpyError(409, "no_channel", "找不到该坐席在此通话中的话路",
                           "the agent has no channel in this call") from None
        except Exception as e:
            self._in_flight.pop(s.id, None)
            s.state = "failed"
            self.audit.record(principal.name, "spy.failed", call_id, {**details, "reason": type(e).__name__})
            log.warning("spy %s by %s failed: %s", s.id, principal.name, type(e).__name__)
            raise SpyError(502, "pbx_refused", "PBX 未能发起监听", "the PBX did not start the call") from None
        except BaseException:  # cancelled: nothing more is recorded for it
            self._in_flight.pop(s.id, None)
            raise
        for ev in self._in_flight.pop(s.id, []):
            self.on_event(ev)
        return s

    def _keep_session(self, s: SpySession) -> None:
        self.sessions[s.id] = s
        while len(self.sessions) > self._keep:
            self.sessions.popitem(last=False)

    def active(self) -> list[SpySession]:
        return [s for s in self.sessions.values() if s.state in ("requested", "active")]

    def on_event(self, ev: DomainEvent) -> None:
        if not isinstance(ev, SpyStarted | SpyStopped) or ev.spy_id is None:
            return
        held = self._in_flight.get(ev.spy_id)
        if held is not None:
            held.append(ev)
            return
        s = self.sessions.get(ev.spy_id)
        if s is None:
            return
        now = self._wall()
        details = {"mode": s.mode, "agent": s.agent, "qa": s.qa, "spy": s.id}
        if isinstance(ev, SpyStarted):
            if s.state != "requested":
                return
            s.state, s.started_at = "active", now
            self.audit.record(s.by, "spy.start", s.call_id, {**details, "start": round(now, 3)})
            for listener in self._listeners:
                try:
                    listener(s.agent, s.qa, s.by, s.call_id, now)
                except Exception:
                    log.exception("monitoring listener failed")
            self._changed(s)
        elif s.state in ("requested", "active"):
            s.state, s.ended_at = "ended", now
            self.audit.record(s.by, "spy.end", s.call_id, {**details, "start": _r(s.started_at),
                                                            "end": round(now, 3)})
            self._changed(s)
