"""The monitor: domain events in; live call/agent state, rule deadlines, alerts and records out.

One instance per PBX.  It owns the deadlines (on the injected clock), feeds
every rule, keeps the live call book and the agents' states, and hands finished
call records to listeners.  All work per event is O(1) in the number of live
calls.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from alerts.hub import AlertHub
from alerts.model import Alert, Severity
from config.schema import Config
from monitor.calls import Call, Ring, Transfer
from monitor.clock import Clock, Timer
from monitor.outbound import OutboundCompliance
from monitor.privacy import mask_name, mask_number
from monitor.rules import InAnswer, InHangup, InSimple, InWait, InXfer, OutWrapup, Rule, SysRec
from telephony.events import (
    AgentRemoved,
    AgentRingEnded,
    AgentRinging,
    AgentStateChanged,
    CallAbandoned,
    CallAnswered,
    CallEnded,
    CallOffered,
    DispositionReceived,
    DomainEvent,
    FirstHangup,
    LinkDown,
    LinkUp,
    QueueJoined,
    RecordingStarted,
    ResyncDone,
    TransferAnswered,
    TransferEnded,
    TransferStarted,
)

log = logging.getLogger(__name__)

RecordListener = Callable[[Call, dict[str, Any]], None]
OutputListener = Callable[[dict[str, Any]], None]


class DispositionError(Exception):
    """A disposition cannot be accepted (bad tag, unknown call)."""

    def __init__(self, code: str, zh: str, en: str) -> None:
        super().__init__(en)
        self.code, self.zh, self.en = code, zh, en
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
        if cfg.rules.in_xfer.enabled:
            self.rules.append(InXfer(cfg.rules.in_xfer))
        if cfg.rules.in_hangup.enabled:
            self.rules.append(InHangup(cfg.rules.in_hangup))
        if cfg.rules.out_wrapup.enabled:
            self.rules.append(OutWrapup(cfg.rules.out_wrapup))
        if cfg.rules.in_simple.enabled and cfg.rules.in_simple.queues:
            self.rules.append(InSimple(cfg.rules.in_simple))
        if cfg.rules.sys_rec.enabled:
            self.rules.append(SysRec(cfg.rules.sys_rec))
        if cfg.outbound.enabled:  # OUT-HOURS / OUT-DNC on every outbound dial (monitor.outbound)
            self.rules.append(OutboundCompliance(cfg, clock))
        #: ended calls, oldest first, kept for late dispositions and the API (bounded)
        self.ended: OrderedDict[str, Call] = OrderedDict()
        self._last_seen: OrderedDict[str, float] = OrderedDict()  # caller number -> last offered (wall s)
        self._output_listeners: list[OutputListener] = []
        self._record_listeners: list[RecordListener] = []
        self._event_listeners: list[EventListener] = []
        self.ended_records = 0

    # -- listeners -------------------------------------------------------------

    def on_record(self, listener: RecordListener) -> None:
        self._record_listeners.append(listener)

    def on_event(self, listener: EventListener) -> None:
        self._event_listeners.append(listener)

    def on_output(self, listener: OutputListener) -> None:
        """Other outputs than call records and alerts (late dispositions, ...)."""
        self._output_listeners.append(listener)

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
        """A live call, or one that ended recently."""
        call = self.calls.get(call_id)
        return call if call is not None else self.ended.get(call_id)

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
        call = self.call(call_id) if call_id else None
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
        if isinstance(ev, DispositionReceived):
            try:
                self.dispose(ev.call_id, ev.tag, ev.note, by=ev.agent, source=ev.source)
            except DispositionError as e:
                log.warning("disposition from the PBX refused: %s", e.en)
            return
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
            new = Call(ev.call_id, ev.direction, ev.caller, ev.caller_name, ev.since)
            if ev.agent:
                new.agent = new.talking_agent = ev.agent
            self._seen(new)
            self.calls[ev.call_id] = new
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
        call_id = getattr(ev, "call_id", None)
        call = self.calls.get(call_id) if isinstance(call_id, str) else None
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
            self._set_state(ev.agent, "ringing", ev.at)
        elif isinstance(ev, AgentRingEnded):
            ended = call.live_rings.pop(ev.leg_id, None)
            if ended is not None:
                ended.end, ended.outcome = ev.at, ev.outcome
            if ev.outcome != "answered":
                agent = self.agents.get(ev.agent)
                if agent is not None and agent.current_call == call.id:
                    agent.current_call = None
                    self._set_state(ev.agent, "available", ev.at)
        elif isinstance(ev, CallAnswered):
            if call.answered_at is None:
                call.answered_at = ev.at
                call.agent = ev.agent
                if call.first_queued_at is not None:
                    call.wait_s = ev.at - call.first_queued_at
                answering = next((r for r in reversed(call.rings) if r.leg_id == ev.leg_id), None)
                if answering is not None:
                    call.ring_s = ev.at - answering.start
                elif call.direction == "outbound":
                    call.ring_s = ev.at - call.offered_at  # the customer's phone rang from the dial
                if call.ring_s is not None and call.direction == "inbound" and \
                        call.ring_s >= self.cfg.rules.in_answer.ring_limit_s:
                    call.flags.add("late_answer")
            call.queued_since = None
            call.talking_agent = ev.agent
            self._agent(ev.agent).current_call = call.id
            self._set_state(ev.agent, "talking", ev.at)
        elif isinstance(ev, CallAbandoned):
            call.abandoned = True
            call.queued_since = None
        elif isinstance(ev, FirstHangup):
            if call.first_hangup is None:
                call.first_hangup = ev.side
                call.first_hangup_at = ev.at
        elif isinstance(ev, TransferStarted):
            call.transfers.append(Transfer(ev.kind, ev.since, ev.from_agent, ev.to))
        elif isinstance(ev, TransferAnswered):
            t = call.open_transfer
            if t is not None:
                t.answered_at, t.wait_s, t.completed, t.agent = ev.at, ev.at - t.at, True, ev.agent
            call.talking_agent = ev.agent
            call.queued_since = None
            self._agent(ev.agent).current_call = call.id
            self._set_state(ev.agent, "talking", ev.at)
        elif isinstance(ev, TransferEnded):
            t = call.open_transfer
            if t is not None:
                t.wait_s, t.completed, t.outcome = ev.at - t.at, False, ev.outcome
        elif isinstance(ev, RecordingStarted):
            call.recorded = True
        elif isinstance(ev, CallEnded):
            call.ended_at = ev.at
            call.lost = ev.lost
            call.queued_since = None
            for ring in call.live_rings.values():
                ring.end, ring.outcome = ev.at, "cancelled"
            call.live_rings.clear()
            talk = call.talk_s
            if talk is not None and talk > self.cfg.rules.qa_special.long_call_s:
                call.flags.add("long_call")

    def _finish(self, call_id: str) -> None:
        call = self.calls.pop(call_id, None)
        if call is None:
            return
        for name in {r.agent for r in call.rings} | ({call.talking_agent} if call.talking_agent else set()):
            a = self.agents.get(name)
            if a is not None and a.current_call == call_id:
                a.current_call = None
                self._set_state(name, "available", call.ended_at or self.clock.now())
        self.ended_records += 1
        self._keep_ended(call)
        record = call.to_record(self.shown(call.caller))
        for listener in self._record_listeners:
            try:
                listener(call, record)
            except Exception:
                log.exception("record listener failed")

    def _set_state(self, name: str, state: str, at: float) -> None:
        """Agent state from the calls themselves: Local queue members report "in use" while merely
        ringing and send nothing at the answer, so QueueMemberStatus alone cannot say ringing vs
        talking.  A paused agent stays paused; the PBX's own status events still win when they come."""
        info = self._agent(name)
        if info.paused or info.state == state:
            return
        if state == "available" and info.state == "offline":
            return
        info.state, info.since = state, at

    def _keep_ended(self, call: Call) -> None:
        ended = self.ended
        ended[call.id] = call
        ended.move_to_end(call.id)
        horizon = self.clock.now() - self.cfg.calls.keep_ended_h * 3600
        keep = self.cfg.calls.keep_ended
        while ended:
            first = next(iter(ended.values()))
            if len(ended) <= keep and (first.ended_at or 0.0) >= horizon:
                break
            ended.popitem(last=False)

    def _seen(self, call: Call) -> None:
        """QA-SPECIAL repeat callers: the same number again within the window."""
        number = call.caller
        if not number:
            return
        seen = self._last_seen
        now = self.clock.wall(call.offered_at)
        window = self.cfg.rules.qa_special.repeat_window_h * 3600
        while seen:
            oldest_number, oldest = next(iter(seen.items()))
            if now - oldest <= window:
                break
            del seen[oldest_number]
        if number in seen and call.direction == "inbound":
            call.flags.add("repeat_caller")
        seen[number] = now
        seen.move_to_end(number)

    # -- dispositions (OUT-WRAPUP) -----------------------------------------------------

    def dispose(self, call_id: str, tag: str, note: str = "", by: str | None = None, source: str = "api",
                complaint: bool = False) -> Call:
        """Record the wrap-up outcome of a call, live or ended (late ones are accepted and marked)."""
        tags = self.cfg.rules.out_wrapup.tags
        if tag not in tags:
            raise DispositionError("unknown_tag", f"未知的结果标签 {tag!r};可用: {', '.join(tags)}",
                                   f"unknown disposition tag {tag!r}; use one of: {', '.join(tags)}")
        call = self.call(call_id)
        if call is None:
            raise DispositionError("unknown_call", f"找不到通话 {call_id}", f"no call {call_id} (live or recent)")
        now = self.clock.now()
        limit = self.cfg.rules.out_wrapup.wrapup_limit_s
        late = call.ended_at is not None and now - call.ended_at >= limit
        call.disposition = {"tag": tag, "note": note, "at": round(now, 3), "late": late, "by": by,
                            "source": source}
        if complaint:
            call.flags.add("complaint")
        self.cancel(f"OUT-WRAPUP:{call_id}")
        ev = DispositionReceived(now, call_id, tag, note, by, source)
        for listener in self._event_listeners:
            try:
                listener(ev)
            except Exception:
                log.exception("event listener failed on a disposition")
        if call.ended_at is not None:  # its record is out already: publish the update
            update = {"type": "disposition", "call": call_id, "at": round(now, 3), "tag": tag, "late": late,
                      "by": by, "source": source, "complaint": complaint}
            for out in self._output_listeners:
                try:
                    out(update)
                except Exception:
                    log.exception("output listener failed")
        return call

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
