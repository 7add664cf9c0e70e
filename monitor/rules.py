"""Rules: small units fed domain events that arm and cancel deadlines on the clock.

A rule never reads the time or sleeps: it asks its :class:`RuleContext` to arm a
deadline (``ctx.arm``) and to raise alerts.  The same code runs live (loop
clock) and in replay (virtual clock).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from alerts.model import Severity
from config.schema import InAnswerRule, InWaitRule
from monitor.calls import Call
from telephony.events import (
    AgentRingEnded,
    AgentRinging,
    CallAbandoned,
    CallAnswered,
    CallEnded,
    DomainEvent,
    QueueJoined,
)


class RuleContext(Protocol):
    def now(self) -> float: ...

    def arm(self, key: str, when: float, callback: Callable[[], None]) -> None:
        """Arm (or re-arm) the deadline ``key``."""

    def cancel(self, key: str) -> bool:
        """Cancel deadline ``key``; True if it was still armed."""

    def call(self, call_id: str) -> Call | None: ...

    def violation(self, rule: str, key: str, severity: Severity, call: str | None, agent: str | None,
                  queue: str | None, text_zh: str, text_en: str, **details: object) -> bool:
        """Raise a violation alert (deduplicated on ``key``); True if it is new."""

    def notice(self, rule: str, key: str, call: str | None, agent: str | None, queue: str | None,
               text_zh: str, text_en: str) -> None:
        """Tell an agent / supervisor something (not a violation)."""


class Rule(Protocol):
    rule_id: str

    def on_event(self, ev: DomainEvent, ctx: RuleContext) -> None: ...


class InAnswer:
    """IN-ANSWER: an agent picks up within ``ring_limit_s`` (3 rings).

    Fires *at* the deadline while the leg still rings.  A late answer also tells
    the agent to apologise.  A ring that ends unanswered at/after the limit is a
    violation for that agent even when the timer could not fire first.
    """

    rule_id = "IN-ANSWER"

    def __init__(self, cfg: InAnswerRule) -> None:
        self.limit = cfg.ring_limit_s

    def on_event(self, ev: DomainEvent, ctx: RuleContext) -> None:
        if isinstance(ev, AgentRinging):
            call = ctx.call(ev.call_id)
            if call is None or call.direction != "inbound":
                return
            key = f"IN-ANSWER:{ev.leg_id}"
            deadline = ev.since + self.limit

            def fire(ev: AgentRinging = ev, key: str = key, deadline: float = deadline) -> None:
                self._violate(ctx, ev.call_id, ev.leg_id, ev.agent, ev.queue, key, deadline)

            ctx.arm(key, deadline, fire)
        elif isinstance(ev, AgentRingEnded):
            key = f"IN-ANSWER:{ev.leg_id}"
            ctx.cancel(key)
            call = ctx.call(ev.call_id)
            if call is None or call.direction != "inbound":
                return
            ring = next((r for r in reversed(call.rings) if r.leg_id == ev.leg_id), None)
            if ring is not None and ev.at - ring.start >= self.limit:
                self._violate(ctx, ev.call_id, ev.leg_id, ev.agent, ev.queue, key, ring.start + self.limit)
                if ev.outcome == "answered":
                    ctx.notice(
                        "IN-ANSWER", f"APOLOGY:{ev.leg_id}", ev.call_id, ev.agent, ev.queue,
                        f"超过3声(振铃 {ev.at - ring.start:.0f} 秒)才接起:请先向客户致歉",
                        f"Answered after {ev.at - ring.start:.0f}s of ringing (over 3 rings): apologise to the caller",
                    )

    def _violate(self, ctx: RuleContext, call_id: str, leg_id: str, agent: str, queue: str | None,
                 key: str, deadline: float) -> None:
        call = ctx.call(call_id)
        caller = call.caller if call else ""
        lim = f"{self.limit:g}"
        ctx.violation(
            "IN-ANSWER", key, "warning", call_id, agent, queue,
            f"坐席 {agent} 振铃超过 {lim} 秒(3声)仍未接听 — 队列 {queue or '-'},来电 {caller}",
            f"{agent} has let a call ring over {lim}s (3 rings) without answering"
            f" — queue {queue or '-'}, caller {caller}",
            leg=leg_id, deadline=round(deadline, 3),
        )


class InWait:
    """IN-WAIT: live alert when a caller has waited ``max_wait_s`` in a queue."""

    rule_id = "IN-WAIT"

    def __init__(self, cfg: InWaitRule) -> None:
        self.limit = cfg.max_wait_s

    def on_event(self, ev: DomainEvent, ctx: RuleContext) -> None:
        if isinstance(ev, QueueJoined):
            key = f"IN-WAIT:{ev.call_id}:{ev.queue}:{ev.since:.3f}"
            ctx.cancel(self._live_key(ev.call_id))

            def fire(ev: QueueJoined = ev, key: str = key) -> None:
                call = ctx.call(ev.call_id)
                caller = call.caller if call else ""
                mins = f"{self.limit / 60:g}"
                ctx.violation(
                    "IN-WAIT", key, "critical", ev.call_id, None, ev.queue,
                    f"来电 {caller} 在队列 {ev.queue} 已等待超过 {mins} 分钟,仍无人接听",
                    f"Caller {caller} has waited over {mins} min in queue {ev.queue} with no answer",
                )

            ctx.arm(self._live_key(ev.call_id), ev.since + self.limit, fire)
        elif isinstance(ev, CallAnswered | CallAbandoned | CallEnded):
            ctx.cancel(self._live_key(ev.call_id))

    @staticmethod
    def _live_key(call_id: str) -> str:
        return f"IN-WAIT:{call_id}"
