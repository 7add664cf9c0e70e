"""Rules: small units fed domain events that arm and cancel deadlines on the clock.

A rule never reads the time or sleeps: it asks its :class:`RuleContext` to arm a
deadline (``ctx.arm``) and to raise alerts.  The same code runs live (loop
clock) and in replay (virtual clock).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from alerts.model import Severity
from config.schema import InAnswerRule, InHangupRule, InSimpleRule, InWaitRule, InXferRule, OutWrapupRule, SysRecRule
from monitor.calls import Call
from telephony.events import (
    AgentRingEnded,
    AgentRinging,
    CallAbandoned,
    CallAnswered,
    CallEnded,
    DomainEvent,
    FirstHangup,
    QueueJoined,
    RecordingStarted,
    TransferAnswered,
    TransferEnded,
    TransferStarted,
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


class InXfer:
    """IN-XFER: a transferred caller waits at most ``transfer_wait_limit_s`` for the next person."""

    rule_id = "IN-XFER"

    def __init__(self, cfg: InXferRule) -> None:
        self.limit = cfg.transfer_wait_limit_s

    def on_event(self, ev: DomainEvent, ctx: RuleContext) -> None:
        if isinstance(ev, TransferStarted):
            call = ctx.call(ev.call_id)
            n = len(call.transfers) if call else 0
            key = f"IN-XFER:{ev.call_id}:{n}"

            def fire(ev: TransferStarted = ev, key: str = key) -> None:
                c = ctx.call(ev.call_id)
                caller = c.caller if c else ""
                kind_zh = "盲转" if ev.kind == "blind" else "咨询转接"
                mins = f"{self.limit / 60:g}"
                ctx.violation(
                    "IN-XFER", key, "warning", ev.call_id, ev.from_agent, c.current_queue if c else None,
                    f"{kind_zh}后来电 {caller} 已等待超过 {mins} 分钟仍无人接听(转自 {ev.from_agent or '-'},"
                    f"转至 {ev.to or '-'})",
                    f"Caller {caller} has waited over {mins} min after a {ev.kind} transfer "
                    f"(from {ev.from_agent or '-'} to {ev.to or '-'}) with nobody answering",
                    kind=ev.kind, since=round(ev.since, 3),
                )

            ctx.arm(self._live(ev.call_id), ev.since + self.limit, fire)
        elif isinstance(ev, TransferAnswered | TransferEnded | CallEnded):
            ctx.cancel(self._live(ev.call_id))

    @staticmethod
    def _live(call_id: str) -> str:
        return f"IN-XFER:{call_id}"


class InHangup:
    """IN-HANGUP: the agent hangs up only after the customer (inbound; outbound by choice)."""

    rule_id = "IN-HANGUP"

    def __init__(self, cfg: InHangupRule) -> None:
        self.outbound = cfg.outbound

    def on_event(self, ev: DomainEvent, ctx: RuleContext) -> None:
        if not isinstance(ev, FirstHangup) or ev.side != "agent":
            return
        call = ctx.call(ev.call_id)
        if call is None or call.answered_at is None:
            return
        if call.direction != "inbound" and not (self.outbound and call.direction == "outbound"):
            return
        agent = ev.agent or call.talking_agent
        ctx.violation(
            "IN-HANGUP", f"IN-HANGUP:{ev.call_id}", "warning", ev.call_id, agent, call.queue,
            f"坐席 {agent or '-'} 先于客户挂机(来电 {call.caller}):须待客户挂断后再挂机",
            f"{agent or 'The agent'} hung up before the customer (caller {call.caller}): "
            "agents hang up only after the customer",
        )


class OutWrapup:
    """OUT-WRAPUP: a disposition (有效/无效/拒绝) within ``wrapup_limit_s`` of the call's end."""

    rule_id = "OUT-WRAPUP"

    def __init__(self, cfg: OutWrapupRule) -> None:
        self.limit = cfg.wrapup_limit_s
        self.inbound = cfg.inbound

    def on_event(self, ev: DomainEvent, ctx: RuleContext) -> None:
        if not isinstance(ev, CallEnded):
            return
        call = ctx.call(ev.call_id)
        if call is None or call.disposition is not None:
            return
        if call.direction != "outbound" and not (self.inbound and call.direction == "inbound"):
            return
        key = f"OUT-WRAPUP:{ev.call_id}"

        def fire(call_id: str = ev.call_id, key: str = key) -> None:
            c = ctx.call(call_id)
            if c is None or c.disposition is not None:
                return
            agent = c.agent or c.talking_agent
            mins = f"{self.limit / 60:g}"
            ctx.violation(
                "OUT-WRAPUP", key, "warning", call_id, agent, c.queue,
                f"坐席 {agent or '-'} 在通话结束 {mins} 分钟内未登记结果(有效/无效/拒绝),客户 {c.caller}",
                f"{agent or 'The agent'} has not logged the outcome (valid / invalid / refused) within {mins} min "
                f"of the call's end, customer {c.caller}",
            )

        ctx.arm(key, ev.at + self.limit, fire)


class InSimple:
    """IN-SIMPLE: simple enquiries on the configured queues end within ``simple_talk_limit_s``."""

    rule_id = "IN-SIMPLE"

    def __init__(self, cfg: InSimpleRule) -> None:
        self.limit = cfg.simple_talk_limit_s
        self.queues = frozenset(cfg.queues)

    def on_event(self, ev: DomainEvent, ctx: RuleContext) -> None:
        if isinstance(ev, CallAnswered) and ev.queue in self.queues:
            key = f"IN-SIMPLE:{ev.call_id}:{ev.leg_id}"

            def fire(ev: CallAnswered = ev, key: str = key) -> None:
                c = ctx.call(ev.call_id)
                mins = f"{self.limit / 60:g}"
                ctx.violation(
                    "IN-SIMPLE", key, "info", ev.call_id, ev.agent, ev.queue,
                    f"简单咨询(队列 {ev.queue})通话已超过 {mins} 分钟 — 坐席 {ev.agent},来电 {c.caller if c else ''}",
                    f"Simple enquiry on queue {ev.queue} has run over {mins} min — {ev.agent}, "
                    f"caller {c.caller if c else ''}",
                )

            ctx.arm(f"IN-SIMPLE:{ev.call_id}", ev.at + self.limit, fire)
        elif isinstance(ev, TransferStarted | CallEnded):
            ctx.cancel(f"IN-SIMPLE:{ev.call_id}")


class SysRec:
    """SYS-REC: every answered call is recorded; none started within the grace time is flagged."""

    rule_id = "SYS-REC"

    def __init__(self, cfg: SysRecRule) -> None:
        self.grace = cfg.recording_grace_s

    def on_event(self, ev: DomainEvent, ctx: RuleContext) -> None:
        if isinstance(ev, CallAnswered):
            call = ctx.call(ev.call_id)
            if call is None or call.recorded or call.answered_at != ev.at:
                return
            key = f"SYS-REC:{ev.call_id}"

            def fire(call_id: str = ev.call_id, key: str = key, agent: str = ev.agent) -> None:
                c = ctx.call(call_id)
                if c is None or c.recorded:
                    return
                ctx.violation(
                    "SYS-REC", key, "warning", call_id, agent, c.queue,
                    f"已接通话未录音:接通 {self.grace:g} 秒后仍未开始录音 — 坐席 {agent},来电 {c.caller}",
                    f"Answered call not recorded: no recording started {self.grace:g}s after the answer — "
                    f"{agent}, caller {c.caller}",
                )

            ctx.arm(key, ev.at + self.grace, fire)
        elif isinstance(ev, RecordingStarted):
            ctx.cancel(f"SYS-REC:{ev.call_id}")
