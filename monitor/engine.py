"""The monitor: domain events in; live call/agent state, rule deadlines, alerts and records out.

One instance per PBX.  It owns the deadlines (on the injected clock), feeds
every rule, keeps the live call book and the agents' states, and hands finished
call records to listeners.  All work per event is O(1) in the number of live
calls.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from alerts.hub import AlertHub
from alerts.model import Alert, Severity
from config.schema import Config
from monitor.calls import Call, Ring
from monitor.clock import Clock, Timer
from monitor.privacy import mask_name, mask_number
from monitor.rules import InAnswer, InWait, Rule
from telephony.events import (
    AgentRemoved,
    AgentRingEnded,
    AgentRinging,
    AgentStateChanged,
    CallAbandoned,
    CallAnswered,
    CallEnded,
    CallOffered,
    DomainEvent,
    FirstHangup,
    LinkDown,
    LinkUp,
    QueueJoined,
    ResyncDone,
)

log = logging.getLogger(__name__)

RecordListener = Callable[[Call, dict[str, Any]], None]
EventListener = Callable[[DomainEvent], None]


@dataclass(slots=True)
class AgentInfo:
    name: str
    state: str = "unknown"
    since: float = 0.0
    paused: bool = False
    reason: str | None = None
    queues: set[str] = field(default_factory=set)
    current_call: str | None = None
    violations_today: int = 0


@dataclass(slots=True)
class LinkInfo:
    connected: bool = False
    since: float | None = None
    connects: int = 0
    last_reason: str | None = None
    resyncs: int = 0


class Monitor:
    def __init__(self, cfg: Config, clock: Clock, hub: AlertHub) -> None:
        self.cfg = cfg
        self.clock = clock
        self.hub = hub
        self.calls: dict[str, Call] = {}
        self.agents: dict[str, AgentInfo] = {}
        self.link = LinkInfo()
        self._timers: dict[str, Timer] = {}
        self.rules: list[Rule] = []
        if cfg.rules.in_answer.enabled:
            self.rules.append(InAnswer(cfg.rules.in_answer))
        if cfg.rules.in_wait.enabled:
            self.rules.append(InWait(cfg.rules.in_wait))
        self._record_listeners: list[RecordListener] = []
        self._event_listeners: list[EventListener] = []
        self.ended_records = 0

    # -- listeners -------------------------------------------------------------

    def on_record(self, listener: RecordListener) -> None:
        self._record_listeners.append(listener)

    def on_event(self, listener: EventListener) -> None:
        self._event_listeners.append(listener)

    # -- RuleContext -------------------------------------------------------------

    def now(self) -> float:
        return self.clock.now()

    def arm(self, key: str, when: float, callback: Callable[[], None]) -> None:
        old = self._timers.pop(key, None)
        if old is not None:
            old.cancel()

        def run() -> None:
            self._timers.pop(key, None)
            try:
                callback()
            except Exception:
                log.exception("rule deadline %s failed", key)

        self._timers[key] = self.clock.call_at(when, run)

    def cancel(self, key: str) -> bool:
        timer = self._timers.pop(key, None)
        if timer is None:
            return False
        timer.cancel()
        return True

    def close(self) -> None:
        """Cancel every armed deadline (on shutdown)."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    @property
    def armed(self) -> int:
        return len(self._timers)

    def call(self, call_id: str) -> Call | None:
        return self.calls.get(call_id)

    def shown(self, number: str | None) -> str | None:
        return mask_number(number) if self.cfg.privacy.mask_callers else number

    def shown_name(self, name: str | None) -> str | None:
        return mask_name(name) if self.cfg.privacy.mask_callers else name

    def violation(self, rule: str, key: str, severity: Severity, call: str | None, agent: str | None,
                  queue: str | None, text_zh: str, text_en: str, **details: object) -> bool:
        return self._raise(rule, key, severity, "violation", call, agent, queue, text_zh, text_en, details)

    def notice(self, rule: str, key: str, call: str | None, agent: str | None, queue: str | None,
               text_zh: str, text_en: str) -> None:
        self._raise(rule, key, "info", "notice", call, agent, queue, text_zh, text_en, {})

    def _raise(self, rule: str, key: str, severity: Severity, kind: str, call_id: str | None,
               agent: str | None, queue: str | None, text_zh: str, text_en: str,
               details: dict[str, object]) -> bool:
        if self.hub.has_key(key):
            self.hub.deduplicated += 1
            return False
        call = self.calls.get(call_id) if call_id else None
        caller = self.shown(call.caller) if call else None
        # rule texts name the caller: never the full number where masking is on
        if call is not None and call.caller and caller != call.caller:
            text_zh = text_zh.replace(call.caller, caller or "")
            text_en = text_en.replace(call.caller, caller or "")
        now = self.clock.now()
        alert = Alert(
            id=self.hub.next_id(), rule=rule, key=key, severity=severity,
            kind="notice" if kind == "notice" else "violation",
            at=now, opened_wall=self.clock.wall(now), call=call_id, agent=agent, queue=queue,
            caller=caller, text_zh=text_zh, text_en=text_en, details=dict(details),
        )
        if alert.kind == "violation" and agent and agent in self.agents:
            self.agents[agent].violations_today += 1
        return self.hub.raise_alert(alert) is not None

    # -- events ------------------------------------------------------------------

    def handle(self, ev: DomainEvent) -> None:
        self._apply(ev)
        for rule in self.rules:
            try:
                rule.on_event(ev, self)
            except Exception:  # one broken rule must not blind the others
                log.exception("rule %s failed on %s", rule.rule_id, type(ev).__name__)
        for listener in self._event_listeners:
            try:
                listener(ev)
            except Exception:
                log.exception("event listener failed on %s", type(ev).__name__)
        if isinstance(ev, CallEnded):
            self._finish(ev.call_id)

    def _agent(self, name: str) -> AgentInfo:
        info = self.agents.get(name)
        if info is None:
            info = self.agents[name] = AgentInfo(name, since=self.clock.now())
        return info

    def _apply(self, ev: DomainEvent) -> None:
        if isinstance(ev, CallOffered):
            self.calls[ev.call_id] = Call(ev.call_id, ev.direction, ev.caller, ev.caller_name, ev.since)
            return
        if isinstance(ev, AgentStateChanged):
            info = self._agent(ev.agent)
            if ev.queue:
                info.queues.add(ev.queue)
            if info.state != ev.state:
                info.state, info.since = ev.state, ev.at
            info.paused, info.reason = ev.paused, ev.reason
            return
        if isinstance(ev, AgentRemoved):
            gone = self.agents.get(ev.agent)
            if gone is not None:
                gone.queues.discard(ev.queue)
                if not gone.queues:
                    gone.state, gone.since = "offline", ev.at
            return
        if isinstance(ev, LinkUp):
            self.link.connected, self.link.since = True, ev.at
            self.link.connects += 1
            return
        if isinstance(ev, LinkDown):
            self.link.connected, self.link.since, self.link.last_reason = False, ev.at, ev.reason
            return
        if isinstance(ev, ResyncDone):
            self.link.resyncs += 1
            return
        call = self.calls.get(ev.call_id)
        if call is None:
            return
        if isinstance(ev, QueueJoined):
            call.current_queue = ev.queue
            call.queued_since = ev.since
            if call.queue is None:
                call.queue = ev.queue
                call.first_queued_at = ev.since
        elif isinstance(ev, AgentRinging):
            ring = Ring(ev.leg_id, ev.agent, ev.queue, ev.since)
            call.rings.append(ring)
            call.live_rings[ev.leg_id] = ring
            self._agent(ev.agent).current_call = call.id
        elif isinstance(ev, AgentRingEnded):
            ended = call.live_rings.pop(ev.leg_id, None)
            if ended is not None:
                ended.end, ended.outcome = ev.at, ev.outcome
            if ev.outcome != "answered":
                agent = self.agents.get(ev.agent)
                if agent is not None and agent.current_call == call.id:
                    agent.current_call = None
        elif isinstance(ev, CallAnswered):
            if call.answered_at is None:
                call.answered_at = ev.at
                call.agent = ev.agent
                if call.first_queued_at is not None:
                    call.wait_s = ev.at - call.first_queued_at
                answering = next((r for r in reversed(call.rings) if r.leg_id == ev.leg_id), None)
                call.ring_s = (ev.at - answering.start) if answering is not None else None
            call.queued_since = None
            call.talking_agent = ev.agent
            self._agent(ev.agent).current_call = call.id
        elif isinstance(ev, CallAbandoned):
            call.abandoned = True
            call.queued_since = None
        elif isinstance(ev, FirstHangup):
            if call.first_hangup is None:
                call.first_hangup = ev.side
        elif isinstance(ev, CallEnded):
            call.ended_at = ev.at
            call.lost = ev.lost
            call.queued_since = None
            for ring in call.live_rings.values():
                ring.end, ring.outcome = ev.at, "cancelled"
            call.live_rings.clear()

    def _finish(self, call_id: str) -> None:
        call = self.calls.pop(call_id, None)
        if call is None:
            return
        for name in {r.agent for r in call.rings} | ({call.talking_agent} if call.talking_agent else set()):
            a = self.agents.get(name)
            if a is not None and a.current_call == call_id:
                a.current_call = None
        self.ended_records += 1
        record = call.to_record(self.shown(call.caller))
        for listener in self._record_listeners:
            try:
                listener(call, record)
            except Exception:
                log.exception("record listener failed")

    # -- views ---------------------------------------------------------------------

    def live_calls(self) -> list[dict[str, Any]]:
        now = self.clock.now()
        return [c.to_live(now, self.shown(c.caller), self.shown_name(c.caller_name)) for c in self.calls.values()]

    def waiting_by_queue(self) -> dict[str, tuple[int, float]]:
        """queue -> (calls waiting, longest wait s)."""
        now = self.clock.now()
        out: dict[str, tuple[int, float]] = {}
        for c in self.calls.values():
            if c.queued_since is not None and c.current_queue:
                n, longest = out.get(c.current_queue, (0, 0.0))
                out[c.current_queue] = (n + 1, max(longest, now - c.queued_since))
        return out
