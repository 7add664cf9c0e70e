"""Commitments (承诺): callbacks, pushes to a department, harassment records, complaint closing.

IN-ESCALATE, OUT-HARASS, CMP-CLOSE, CMP-NOTE and CMP-MONTHLY of RULES.md.  An
agent (API) or the PBX promises something with a limit; ringwatch keeps the
promise in Redis (:mod:`monitor.store`), reminds the owner and the supervisors
before it is due, raises a live alert when it is overdue and a critical one if
nobody acks that, and fulfils a callback by itself when an answered outbound
call reaches the customer's number in time.

Time: every persisted time is Unix time from the injected clock
(``clock.wall(clock.now())``), so deadlines survive restarts and a
:class:`~monitor.clock.VirtualClock` with a ``wall_origin`` drives them in tests
and replay.  The scheduler waits on clock timers (never ``asyncio.sleep``).

The :class:`CommitmentService` owns three named tasks: the scheduler (arms a
clock timer for the earliest deadline in Redis, re-reads every
``poll_interval_s`` for deadlines created by other instances, claims each due
deadline atomically so one instance fires it), the pending worker (call
records, alert acks and PBX requests that must reach Redis, retried with
capped backoff while Redis is down; held in memory, bounded) and nothing else:
stats for the metrics are refreshed by the scheduler's passes.

Alerts go through the alert hub, so the websocket feed, webhooks and chat sinks
see them: reminders are notices (every role with ``notices:read``: the owner's
screen and the supervisors'); overdue is a ``warning`` violation; unacked after
``escalate_after_min`` a ``critical`` one.  Plain state changes (created,
fulfilled, cancelled, attempt, note) are notices too, with the commitment in
``details.commitment`` and the change in ``details.change``.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime as dt
import io
import logging
import re
import unicodedata
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from alerts.hub import AlertChange, AlertHub
from alerts.model import Alert, Severity
from config.schema import CommitmentKindConfig, Config
from monitor.calls import Call
from monitor.clock import Clock, Timer
from monitor.dnc import InvalidNumber
from monitor.dnc import normalize_number as dnc_normalize
from monitor.privacy import mask_number
from monitor.store import Change, CommitmentStore, Conflict, Duplicate, Stored, StoreUnavailable
from monitor.workcal import WorkCalendar
from telephony.events import CommitmentRequested

log = logging.getLogger(__name__)

State = Literal["open", "fulfilled", "overdue", "cancelled"]
STATES: Final = ("open", "fulfilled", "overdue", "cancelled")
SYSTEM: Final = "ringwatch"
#: times within this of a deadline count as at it (float rounding between clock and wall time)
EPS: Final = 1e-3


# -- errors ---------------------------------------------------------------------------


class CommitmentError(Exception):
    """A request about a commitment cannot be carried out; ``zh``/``en`` say why."""

    status = 400
    code = "bad_request"

    def __init__(self, zh: str, en: str, code: str | None = None) -> None:
        super().__init__(en)
        self.zh, self.en = zh, en
        if code is not None:
            self.code = code


class Invalid(CommitmentError):
    status, code = 400, "invalid"


class Rejected(CommitmentError):
    """Well-formed but refused by a rule (CMP-NOTE)."""

    status, code = 422, "rejected"


class NotFound(CommitmentError):
    status, code = 404, "not_found"


class WrongState(CommitmentError):
    status, code = 409, "conflict"


# -- pure helpers -----------------------------------------------------------------------


def normalize_number(number: str) -> str:
    """One customer, one form — the DNC list's normalisation (``+86``, ``0086``, the trunk ``0``,
    spaces and dashes): ``+86 139-1234-5678`` and ``013912345678`` -> ``13912345678``.
    Something that is no phone number keeps just its digits."""
    try:
        return dnc_normalize(number)
    except InvalidNumber:
        return "".join(c for c in number if c.isdigit())


def _phrase_regex(phrase: str) -> str:
    # 某部门 / 某 in a listed phrase stand for any department / name: 已转理赔部跟进 is as bare as 已转某部门跟进
    return re.escape(phrase).replace("某部门", ".{1,12}?").replace("某", ".{1,8}?")


def note_problem(text: str, phrases: Iterable[str], min_chars: int) -> tuple[str, str] | None:
    """CMP-NOTE: why ``text`` is not an acceptable closing note, as (zh, en), or None if it is."""
    stripped = text.strip()
    if not stripped:
        return ("结案必须填写结案说明:写明具体做了什么、结果如何、客户是否认可",
                "closing needs a note: say what was done, the outcome, and whether the customer accepted it")
    rest, found = stripped, []
    for p in sorted(phrases, key=len, reverse=True):
        rx = _phrase_regex(p)
        m = re.search(rx, rest)
        if m:
            found.append(m.group(0))
            rest = re.sub(rx, "", rest)
    meaningful = "".join(c for c in rest if unicodedata.category(c)[0] not in "PZSC")
    if len(meaningful) >= min_chars:
        return None
    said = "、".join(found) if found else stripped[:40]
    return (f"结案说明过于笼统(“{said}”):请写明具体做了什么(查询或处理了什么、结论是什么)、"
            f"结果如何、客户是否认可;如已转部门,写明部门名称与处理结论",
            f"closing note too vague (\"{said}\"): say what exactly was done (what was checked or handled "
            f"and the finding), the outcome and whether the customer accepted it; if passed to a department, "
            f"name it and its conclusion")


# -- the model -------------------------------------------------------------------------------


@dataclass(slots=True)
class Commitment:
    id: str
    kind: str
    rule: str
    customer: str  # the full number (masked whenever shown, per privacy.mask_callers)
    owner: str
    created_at: float  # Unix time
    created_by: str
    due_at: float  # Unix time
    team: str | None = None
    call_id: str | None = None
    source: str = "api"  # api | pbx
    state: State = "open"
    state_at: float | None = None  # when it became overdue / fulfilled / cancelled
    state_by: str | None = None
    on_time: bool | None = None  # fulfilled by due
    fulfilled_call: str | None = None
    cancel_reason: str | None = None
    overdue_reason: str | None = None
    notes: list[dict[str, Any]] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    reminders_sent: list[float] = field(default_factory=list)  # lead times (min) already reminded
    overdue_alerted_at: float | None = None
    escalated_at: float | None = None
    alert_acked_at: float | None = None
    alert_acked_by: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Commitment:
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in known})

    @property
    def stat(self) -> str:
        """The counter this commitment is in (``<state>:<kind>``; fulfilled split by punctuality)."""
        if self.state == "fulfilled":
            return f"fulfilled_{'on_time' if self.on_time else 'late'}:{self.kind}"
        return f"{self.state}:{self.kind}"

    @property
    def closed(self) -> bool:
        return self.state in ("fulfilled", "cancelled")

    def to_json(self, customer_shown: str | None, tz: ZoneInfo) -> dict[str, Any]:
        out = self.to_dict()
        out["customer"] = customer_shown
        out["created_local"] = _local(self.created_at, tz)
        out["due_local"] = _local(self.due_at, tz)
        return out


def _local(wall: float, tz: ZoneInfo) -> str:
    return dt.datetime.fromtimestamp(wall, tz).isoformat(timespec="seconds")


Event = Literal["reminder", "overdue", "escalated"]


def next_wall(c: Commitment, kind: CommitmentKindConfig, escalate_after_s: float) -> float | None:
    """Unix time of the next timed step of ``c`` (a reminder, due, an escalation), None if none."""
    if c.state == "open":
        pending = [c.due_at - m * 60 for m in kind.reminders_min if m not in c.reminders_sent]
        return min([*pending, c.due_at])
    if c.state == "overdue" and c.escalated_at is None and c.alert_acked_at is None:
        base = c.overdue_alerted_at if c.overdue_alerted_at is not None else c.due_at
        return base + escalate_after_s
    return None


def plan(c: Commitment, now: float, kind: CommitmentKindConfig, escalate_after_s: float) -> list[tuple[Event, float]]:
    """Advance ``c`` to ``now`` (in place): what to tell, as (event, reminder lead min or 0).

    Reminders that passed while ringwatch was down are not all sent late: only the
    one nearest to due, and none once it is overdue."""
    events: list[tuple[Event, float]] = []
    if c.state == "open":
        if now + EPS >= c.due_at:
            c.state, c.state_at, c.state_by = "overdue", c.due_at, SYSTEM
            c.overdue_alerted_at = now
            c.reminders_sent = sorted(set(c.reminders_sent) | set(kind.reminders_min))
            events.append(("overdue", 0.0))
        else:
            passed = [m for m in kind.reminders_min if m not in c.reminders_sent and now + EPS >= c.due_at - m * 60]
            if passed:
                events.append(("reminder", min(passed)))
                c.reminders_sent = sorted(set(c.reminders_sent) | set(passed))
    elif c.state == "overdue":
        step = next_wall(c, kind, escalate_after_s)
        if step is not None and now + EPS >= step:
            c.escalated_at = now
            events.append(("escalated", 0.0))
    return events


# -- the service ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _CallDone:
    """An ended outbound call, for auto-fulfilment (times are Unix times)."""

    call_id: str
    number: str
    answered_wall: float | None
    offered_wall: float
    agent: str | None


@dataclass(frozen=True, slots=True)
class _Acked:
    cid: str
    by: str
    at: float


@dataclass(frozen=True, slots=True)
class _PbxCreate:
    kind: str
    customer: str
    owner: str
    team: str | None
    call_id: str
    note: str | None


_Pending = _CallDone | _Acked | _PbxCreate


class CommitmentService:
    """Commitments over a :class:`CommitmentStore`, on ``clock``, alerting through ``hub``."""

    name = "commitments"  # as an alert-hub sink: it learns which overdue alerts were acked

    def __init__(self, cfg: Config, store: CommitmentStore, clock: Clock, hub: AlertHub,
                 calendar: WorkCalendar | None = None) -> None:
        self.cfg = cfg
        self.ccfg = cfg.commitments
        self.store = store
        self.clock = clock
        self.hub = hub
        self.tz = ZoneInfo(cfg.timezone)
        self.calendar = calendar or WorkCalendar(cfg.timezone, self.ccfg.work_hours,
                                                 overrides_files=cfg.outbound.calendar_overrides)
        self._escalate_s = self.ccfg.escalate_after_min * 60
        self._wake = asyncio.Event()  # the scheduler's
        self._retry = asyncio.Event()  # the pending worker's
        self._stopping = False
        self._passes = 0  # scheduler passes started
        self._done = 0  # scheduler passes finished
        self._pass_done = asyncio.Event()
        self._pending: asyncio.Queue[_Pending] = asyncio.Queue(self.ccfg.pending_limit)
        self._tasks: list[asyncio.Task[None]] = []
        self._alerts: dict[str, list[str]] = {}  # commitment id -> violation alert ids raised here
        self._overdue_alerts: dict[str, str] = {}  # overdue/escalation alert id -> commitment id
        self.stats: dict[str, int] = {}
        self.dropped = 0  # pending items dropped (queue full)
        #: the latest timed steps fired here, (id, event, clock time): for tests and debugging
        self.fired: deque[tuple[str, Event, float]] = deque(maxlen=1000)

    # -- lifecycle ------------------------------------------------------------------------

    def attach(self, monitor: Any) -> None:
        """Fulfil callbacks from ``monitor``'s ended calls (``Monitor.on_record``) and take
        commitments the PBX signals on a call (``CommitmentRequested``)."""
        monitor.on_record(self.on_record)

        def on_event(ev: object) -> None:
            if isinstance(ev, CommitmentRequested):
                call = monitor.call(ev.call_id)
                customer = ev.customer or (call.caller if call is not None else "")
                self.submit_from_pbx(ev.kind, customer, ev.agent or "", ev.call_id, team=ev.team, note=ev.note)

        monitor.on_event(on_event)

    async def start(self) -> None:
        """Start the scheduler and the pending worker.  Redis may be down: they retry."""
        self.hub.add_sink(self)
        warning = None
        with contextlib.suppress(StoreUnavailable):
            warning = await self.store.durability_warning()
        if warning:
            log.warning("commitments: %s", warning)
        self._tasks = [
            asyncio.create_task(self._guard(self._scheduler), name="commitments-scheduler"),
            asyncio.create_task(self._guard(self._worker), name="commitments-pending"),
        ]

    async def stop(self) -> None:
        self.hub.remove_sink(self)
        self._stopping = True
        self._wake.set()
        self._retry.set()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            # Python 3.11's asyncio.wait_for (inside redis-py) can swallow a cancellation that races
            # with a reply: the loops also stop on the flag, and the cancel is repeated
            while not t.done():
                await asyncio.wait({t}, timeout=1.0)
                t.cancel()
            if not t.cancelled() and t.exception() is not None:
                log.error("commitments: task %s had failed: %r", t.get_name(), t.exception())
        self._tasks = []
        if self._pending.qsize():
            log.warning("commitments: %d call records / acks not written (Redis unavailable) are lost",
                        self._pending.qsize())

    async def _guard(self, fn: Callable[[], Any]) -> None:
        try:
            await fn()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("commitments: task %s died", fn.__name__)
            raise

    def now_wall(self) -> float:
        return self.clock.wall(self.clock.now())

    def _clock_time(self, wall: float) -> float:
        now = self.clock.now()
        rate = self.clock.wall(now + 1.0) - self.clock.wall(now)  # wall seconds per clock second
        return now + (wall - self.clock.wall(now)) / rate

    async def _sleep_until(self, t: float, event: asyncio.Event) -> None:
        """Until clock time ``t`` or ``event`` (a new deadline here, a test's ``idle``, ``stop``)."""
        if self._stopping:
            return
        timer: Timer = self.clock.call_at(t, event.set)
        try:
            await event.wait()
        finally:
            timer.cancel()

    async def idle(self) -> None:
        """Run a scheduler pass now and return when it is done, and the pending queue is empty
        (tests: jump the clock, then ``await idle()``)."""
        await self._pending.join()
        want = self._passes + 1
        self._wake.set()
        while self._done < want:
            self._pass_done.clear()
            await self._pass_done.wait()

    # -- scheduler --------------------------------------------------------------------------

    async def _scheduler(self) -> None:
        backoff = 0.5
        while not self._stopping:
            self._wake.clear()
            self._passes += 1
            wait = self.ccfg.poll_interval_s
            try:
                nxt = await self._pass()
                backoff = 0.5
                if nxt is not None:
                    wait = min(wait, max(self._clock_time(nxt) - self.clock.now(), 0.0))
            except StoreUnavailable:
                wait, backoff = backoff, min(backoff * 2, self.ccfg.retry_max_s)
            except Exception:
                log.exception("commitments: scheduler pass failed")
                wait = self.ccfg.retry_max_s
            finally:
                self._done += 1
                self._pass_done.set()
            await self._sleep_until(self.clock.now() + wait, self._wake)

    async def _pass(self) -> float | None:
        now = self.now_wall()
        for _ in range(100):  # at most 10,000 steps per pass; the rest next pass
            ids = await self.store.due(now + EPS, 100)
            for cid in ids:
                if await self.store.claim(cid, now + EPS, self.ccfg.claim_lease_s):
                    try:
                        await self._step(cid)
                    except StoreUnavailable:
                        raise
                    except Exception:  # one broken commitment must not hold up the others
                        log.exception("commitments: deadline of %s failed; retried after the lease", cid)
            if len(ids) < 100:
                break
        self.stats = await self.store.stats()
        return await self.store.next_due()

    async def _step(self, cid: str) -> None:
        events: list[tuple[Event, float]] = []

        def decide(c: Commitment, now: float) -> dict[str, Any] | None:
            events.clear()  # a retry after a conflict decides afresh
            names: list[str] = []
            if c.state == "overdue" and c.alert_acked_at is None:
                by = self._acked_here(c)  # acked here, not yet written (Redis was down, or a race)
                if by is not None:
                    c.alert_acked_at, c.alert_acked_by = now, by
                    names.append("acked")
            events.extend(plan(c, now, self._kind_cfg(c), self._escalate_s))
            names += [ev if ev != "reminder" else f"reminder {lead:g} min" for ev, lead in events]
            return {"event": ",".join(names), "by": SYSTEM} if names else None

        got = await self._update(cid, decide, release=True)
        if got is not None:
            for ev, lead in events:
                self._announce(got[0], ev, lead)

    def _acked_here(self, c: Commitment) -> str | None:
        """Who acked (or resolved) an overdue alert of ``c`` in this instance's hub, if anyone did."""
        for aid in self._alerts.get(c.id, []):
            a = self.hub.get(aid)
            if a is not None and a.kind == "violation" and a.state != "open":
                return a.acked_by or a.resolved_by or "?"
        return None

    def _kind_cfg(self, c: Commitment) -> CommitmentKindConfig:
        kind = self.ccfg.kinds.get(c.kind)
        if kind is None:  # a kind removed from the configuration: keep its deadline, no reminders
            return CommitmentKindConfig(rule=c.rule, limit_min=1)
        return kind

    # -- writing ------------------------------------------------------------------------------

    async def _update(self, cid: str, decide: Callable[[Commitment, float], dict[str, Any] | None], *,
                      release: bool = False) -> tuple[Commitment, int] | None:
        """Read, ``decide`` (mutates the commitment, returns its history entry, or None for no change),
        compare-and-set, again on a conflict; (the commitment, its version), None if it changed nothing or
        does not exist.  ``release``: set the due index right when nothing changed (a claimed deadline)."""
        for _ in range(10):
            stored = await self.store.load(cid)
            if stored is None:
                if release:
                    await self.store.reschedule(cid, None)
                return None
            c = Commitment.from_dict(stored.data)
            before = (c.stat, c.state)
            entry = decide(c, self.now_wall())
            nxt = next_wall(c, self._kind_cfg(c), self._escalate_s)
            if entry is None:
                if release:
                    await self.store.reschedule(cid, nxt)
                return None
            try:
                version = await self._save(c, stored.version, entry, nxt, before=before)
            except Conflict:
                continue
            return c, version
        raise StoreUnavailable(f"commitment {cid} keeps changing under us")

    def _indexed(self, c: Commitment) -> bool:
        """In the by-number index: open (or overdue) and of a kind an outbound call fulfils."""
        kind = self.ccfg.kinds.get(c.kind)
        return bool(kind and kind.auto_fulfil and not c.closed)

    async def _save(self, c: Commitment, version: int, entry: dict[str, Any], nxt: float | None, *,
                    before: tuple[str, str] | None, idem: str | None = None) -> int:
        now = self.now_wall()
        history = {"at": now, **entry, "state": c.state}
        change = Change(history=history, next_wall=nxt, created_wall=c.created_at, due_wall=c.due_at, kind=c.kind,
                        number=normalize_number(c.customer), in_number_index=self._indexed(c),
                        old_stat=before[0] if before else None, new_stat=c.stat,
                        old_state=before[1] if before else None, new_state=c.state, idempotency_key=idem)
        return await self.store.save(c.id, c.to_dict(), version, change)

    # -- alerts ---------------------------------------------------------------------------------

    def shown(self, number: str | None) -> str | None:
        return mask_number(number) if self.cfg.privacy.mask_callers else number

    def _kind_names(self, c: Commitment) -> tuple[str, str]:
        k = self.ccfg.kinds.get(c.kind)
        return ((k.name_zh or c.kind), (k.name_en or c.kind)) if k else (c.kind, c.kind)

    def _raise(self, c: Commitment, key: str, kind: Literal["violation", "notice"], severity: Severity,
               zh: str, en: str, change: str) -> None:
        now = self.clock.now()
        alert = Alert(id=self.hub.next_id(), rule=c.rule, key=key, severity=severity, kind=kind, at=now,
                      opened_wall=self.clock.wall(now), call=c.call_id, agent=c.owner, queue=None,
                      caller=self.shown(c.customer), text_zh=zh, text_en=en,
                      details={"change": change, "commitment": c.to_json(self.shown(c.customer), self.tz)})
        if self.hub.raise_alert(alert) is not None and kind == "violation":
            self._alerts.setdefault(c.id, []).append(alert.id)
            self._overdue_alerts[alert.id] = c.id

    def _announce(self, c: Commitment, ev: Event, lead_min: float) -> None:
        self.fired.append((c.id, ev, self.clock.now()))
        zh_kind, en_kind = self._kind_names(c)
        who = f"{c.owner}" + (f"({c.team})" if c.team else "")
        cust = self.shown(c.customer)
        due = _local(c.due_at, self.tz)
        if ev == "reminder":
            left = f"{lead_min / 60:g} 小时" if lead_min >= 60 else f"{lead_min:g} 分钟"
            left_en = f"{lead_min / 60:g} h" if lead_min >= 60 else f"{lead_min:g} min"
            self._raise(c, f"commitment:{c.id}:reminder:{lead_min:g}", "notice", "info",
                        f"提醒:{who} 承诺的{zh_kind}({c.id},客户 {cust})还有 {left} 到期({due})",
                        f"reminder: {en_kind} {c.id} by {who} for {cust} is due in {left_en} ({due})", "reminder")
        elif ev == "overdue":
            self._raise(c, f"commitment:{c.id}:overdue", "violation", "warning",
                        f"承诺已超时:{who} 的{zh_kind}({c.id},客户 {cust})应于 {due} 前完成",
                        f"commitment overdue: {en_kind} {c.id} by {who} for {cust} was due {due}", "overdue")
        else:
            mins = f"{self.ccfg.escalate_after_min:g}"
            self._raise(c, f"commitment:{c.id}:escalated", "violation", "critical",
                        f"升级:承诺 {c.id}({zh_kind},{who})超时 {mins} 分钟仍无人确认",
                        f"escalation: overdue commitment {c.id} ({en_kind}, {who}) unacknowledged for {mins} min",
                        "escalated")

    def _notify(self, c: Commitment, change: str, version: int, zh: str, en: str) -> None:
        self._raise(c, f"commitment:{c.id}:v{version}", "notice", "info", zh, en, change)

    def _resolve_alerts(self, c: Commitment, by: str) -> None:
        for aid in self._alerts.pop(c.id, []):
            self._overdue_alerts.pop(aid, None)
            a = self.hub.get(aid)
            if a is not None and a.state != "resolved" and a.kind == "violation":
                self.hub.resolve(aid, by)

    # -- Sink: acks of our overdue alerts -------------------------------------------------------

    def offer(self, change: AlertChange) -> None:
        if change.kind == "opened":
            return
        cid = self._overdue_alerts.get(change.alert.id)
        if cid is not None:
            self._queue(_Acked(cid, change.by or "?", self.now_wall()))

    # -- API operations --------------------------------------------------------------------------

    async def create(self, kind: str, customer: str, owner: str, *, by: str, team: str | None = None,
                     call_id: str | None = None, note: str | None = None, source: str = "api",
                     idempotency_key: str | None = None) -> tuple[Commitment, bool]:
        """A new commitment, durable when this returns; (it, False) if ``idempotency_key`` was used before."""
        kcfg = self.ccfg.kinds.get(kind)
        if kcfg is None:
            known = ", ".join(sorted(self.ccfg.kinds))
            raise Invalid(f"未知的承诺类型 {kind[:40]}(可用:{known})", f"unknown kind {kind[:40]} (known: {known})",
                          "unknown_kind")
        customer = re.sub(r"[\s()\-]", "", customer)  # as dialled, without formatting
        if not normalize_number(customer):
            raise Invalid("客户号码无效", "invalid customer number", "invalid_number")
        now = self.now_wall()
        cid = await self.store.new_id()
        due = self.calendar.add(now, kcfg.limit_s, kcfg.time_basis)
        c = Commitment(id=cid, kind=kind, rule=kcfg.rule, customer=customer, owner=owner, team=team, call_id=call_id,
                       created_at=now, created_by=by, due_at=due, source=source,
                       reminders_sent=[m for m in kcfg.reminders_min if due - m * 60 <= now + EPS])
        if note:
            c.notes.append({"at": now, "by": by, "text": note})
        try:
            version = await self._save(c, 0, {"event": "created", "by": by, "source": source}, 
                                       next_wall(c, kcfg, self._escalate_s), before=None, idem=idempotency_key)
        except Duplicate as d:
            existing = await self.store.load(d.existing)
            if existing is None:
                raise StoreUnavailable("idempotency key points to a missing commitment") from None
            return Commitment.from_dict(existing.data), False
        log.info("commitment %s (%s) created by %s for %s, due %s", cid, kind, by, mask_number(customer),
                 _local(due, self.tz))
        zh_kind, en_kind = self._kind_names(c)
        self._notify(c, "created", version, f"新承诺 {cid}:{zh_kind},{owner},{_local(due, self.tz)} 前完成",
                     f"new commitment {cid}: {en_kind} by {owner}, due {_local(due, self.tz)}")
        self._wake.set()
        return c, True

    async def get(self, cid: str) -> tuple[Commitment, list[dict[str, Any]]]:
        stored = await self.store.load(cid)
        if stored is None:
            raise self._not_found(cid)
        return Commitment.from_dict(stored.data), await self.store.history(cid)

    def _not_found(self, cid: str) -> NotFound:
        return NotFound(f"承诺 {cid[:40]} 不存在", f"no commitment {cid[:40]}")

    async def query(self, *, state: str | None = None, kind: str | None = None, agent: str | None = None,
                   team: str | None = None, due_before: float | None = None, limit: int = 1000) -> list[Commitment]:
        ids = await self.store.ids(state=state, limit=100_000 if state is None else 1000)
        rows = [Commitment.from_dict(s.data) for s in await self.store.load_many(ids)]
        out = [c for c in rows if (state is None or c.state == state) and (kind is None or c.kind == kind)
               and (agent is None or c.owner == agent) and (team is None or c.team == team)
               and (due_before is None or c.due_at < due_before)]
        out.sort(key=lambda c: c.due_at)
        return out[:limit]

    async def _change(self, cid: str, mutate: Callable[[Commitment, float], dict[str, Any]]) -> tuple[Commitment, int]:
        """Apply a user's change (``mutate`` raises :class:`CommitmentError` to refuse it)."""
        for _ in range(10):
            stored = await self.store.load(cid)
            if stored is None:
                raise self._not_found(cid)
            c = Commitment.from_dict(stored.data)
            before = (c.stat, c.state)
            entry = mutate(c, self.now_wall())
            try:
                version = await self._save(c, stored.version, entry, next_wall(c, self._kind_cfg(c), self._escalate_s),
                                           before=before)
            except Conflict:
                continue
            self._wake.set()
            return c, version
        raise StoreUnavailable(f"commitment {cid} keeps changing under us")

    def _closed_error(self, c: Commitment, action_zh: str, action_en: str) -> WrongState:
        zh_state = {"fulfilled": "已完成", "cancelled": "已取消"}.get(c.state, c.state)
        return WrongState(f"承诺 {c.id} {zh_state},不能{action_zh}",
                          f"commitment {c.id} is {c.state}: cannot {action_en}")

    async def fulfil(self, cid: str, by: str, note: str | None = None, call_id: str | None = None,
                     overdue_reason: str | None = None) -> Commitment:
        def mutate(c: Commitment, now: float) -> dict[str, Any]:
            if c.closed:
                raise self._closed_error(c, "完成", "fulfil")
            kind = self._kind_cfg(c)
            if kind.note_required:
                problem = note_problem(note or "", self.ccfg.vague_notes, self.ccfg.min_note_chars)
                if problem is not None:
                    raise Rejected(*problem, code="vague_note" if (note or "").strip() else "note_required")
            late = now > c.due_at + EPS
            if late and kind.note_required and not (overdue_reason or c.overdue_reason):
                raise Rejected(f"承诺 {c.id} 已超时:结案时请在 overdue_reason 中写明超时原因(月度通报用)",
                               f"commitment {c.id} is overdue: give the reason in overdue_reason (monthly report)",
                               "overdue_reason_required")
            self._close(c, "fulfilled", now, by)
            c.on_time = not late
            c.fulfilled_call = call_id
            if note:
                c.notes.append({"at": now, "by": by, "text": note})
            if overdue_reason:
                c.overdue_reason = overdue_reason
            return {"event": "fulfilled", "by": by, "on_time": c.on_time, "call_id": call_id}

        c, version = await self._change(cid, mutate)
        self._after_close(c, version, by)
        return c

    def _close(self, c: Commitment, state: State, now: float, by: str) -> None:
        c.state, c.state_at, c.state_by = state, now, by

    def _after_close(self, c: Commitment, version: int, by: str) -> None:
        self._resolve_alerts(c, by)
        if c.state == "fulfilled":
            ok_zh, ok_en = ("按时", "on time") if c.on_time else ("超时", "late")
            self._notify(c, "fulfilled", version, f"承诺 {c.id} 已完成({ok_zh}),{by}",
                         f"commitment {c.id} fulfilled ({ok_en}) by {by}")
        else:
            self._notify(c, "cancelled", version, f"承诺 {c.id} 已取消:{c.cancel_reason},{by}",
                         f"commitment {c.id} cancelled by {by}: {c.cancel_reason}")

    async def cancel(self, cid: str, by: str, reason: str) -> Commitment:
        def mutate(c: Commitment, now: float) -> dict[str, Any]:
            if c.closed:
                raise self._closed_error(c, "取消", "cancel")
            self._close(c, "cancelled", now, by)
            c.cancel_reason = reason
            return {"event": "cancelled", "by": by, "reason": reason}

        c, version = await self._change(cid, mutate)
        self._after_close(c, version, by)
        return c

    async def add_note(self, cid: str, by: str, text: str, overdue_reason: bool = False) -> Commitment:
        def mutate(c: Commitment, now: float) -> dict[str, Any]:
            c.notes.append({"at": now, "by": by, "text": text, **({"overdue_reason": True} if overdue_reason else {})})
            if overdue_reason:
                c.overdue_reason = text
            return {"event": "note", "by": by, "text": text, "overdue_reason": overdue_reason}

        c, version = await self._change(cid, mutate)
        self._notify(c, "note", version, f"承诺 {c.id} 新增备注({by})", f"note added to commitment {c.id} by {by}")
        return c

    async def report_complaints(self, month: str) -> dict[str, Any]:
        return await complaints_report(self.store, self.cfg, month, self.now_wall())

    # -- from the PBX and from ended calls ------------------------------------------------------

    def submit_from_pbx(self, kind: str, customer: str, owner: str, call_id: str, *, team: str | None = None,
                        note: str | None = None) -> bool:
        """For the PBX adapter (a UserEvent / channel variable on the call; the tracker's job, not wired yet).

        Synchronous and non-blocking, like every monitor callback: queued and written by
        the pending worker, retried while Redis is down, created once per (call, kind).
        False if refused at once (unknown kind, no number, queue full)."""
        if kind not in self.ccfg.kinds or not normalize_number(customer):
            log.warning("commitments: PBX request for call %s refused (kind %r)", call_id, kind[:40])
            return False
        return self._queue(_PbxCreate(kind, customer, owner, team, call_id, note))

    def on_record(self, call: Call, record: dict[str, Any]) -> None:
        """``Monitor.on_record`` listener: an ended outbound call may fulfil a callback."""
        if call.direction != "outbound" or not call.caller:
            return
        wall = self.clock.wall
        self._queue(_CallDone(call.id, normalize_number(call.caller),
                              None if call.answered_at is None else wall(call.answered_at), wall(call.offered_at),
                              call.agent))

    def _queue(self, item: _Pending) -> bool:
        try:
            self._pending.put_nowait(item)
        except asyncio.QueueFull:
            self.dropped += 1
            log.error("commitments: %d items wait for Redis; %s dropped", self._pending.qsize(), type(item).__name__)
            return False
        return True

    @property
    def pending(self) -> int:
        return self._pending.qsize()

    async def _worker(self) -> None:
        while not self._stopping:
            item = await self._pending.get()
            backoff = 0.5
            try:
                while not self._stopping:
                    try:
                        await self._apply(item)
                        break
                    except StoreUnavailable:
                        self._retry.clear()
                        await self._sleep_until(self.clock.now() + backoff, self._retry)
                        backoff = min(backoff * 2, self.ccfg.retry_max_s)
                    except Exception:
                        log.exception("commitments: %s failed; dropped", type(item).__name__)
                        break
            finally:
                self._pending.task_done()

    async def _apply(self, item: _Pending) -> None:
        if isinstance(item, _Acked):
            ack = item

            def acked(c: Commitment, now: float) -> dict[str, Any] | None:
                if c.state != "overdue" or c.alert_acked_at is not None:
                    return None
                c.alert_acked_at, c.alert_acked_by = ack.at, ack.by
                return {"event": "acked", "by": ack.by}

            await self._update(item.cid, acked)
        elif isinstance(item, _PbxCreate):
            await self.create(item.kind, item.customer, item.owner, by="pbx", team=item.team, call_id=item.call_id,
                              note=item.note, source="pbx", idempotency_key=f"pbx:{item.call_id}:{item.kind}")
        else:
            await self._call_done(item)

    async def _call_done(self, call: _CallDone) -> None:
        if not call.number:
            return
        for cid in await self.store.ids(number=call.number):
            await self._call_for(cid, call)

    async def _call_for(self, cid: str, call: _CallDone) -> None:
        def decide(c: Commitment, now: float) -> dict[str, Any] | None:
            kind = self.ccfg.kinds.get(c.kind)
            if c.closed or kind is None or not kind.auto_fulfil or normalize_number(c.customer) != call.number:
                return None
            if any(a.get("call_id") == call.call_id for a in c.attempts) or c.fulfilled_call == call.call_id:
                return None  # already counted (a retry after a lost reply)
            if call.answered_wall is None:
                if call.offered_wall + EPS < c.created_at:
                    return None
                c.attempts.append({"at": call.offered_wall, "call_id": call.call_id, "agent": call.agent})
                return {"event": "attempt", "by": call.agent or "pbx", "call_id": call.call_id}
            if call.answered_wall + EPS < c.created_at:
                return None  # answered before the promise was made
            self._close(c, "fulfilled", call.answered_wall, call.agent or "pbx")
            c.on_time = call.answered_wall <= c.due_at + EPS
            c.fulfilled_call = call.call_id
            return {"event": "fulfilled", "by": call.agent or "pbx", "on_time": c.on_time, "call_id": call.call_id,
                    "auto": True}

        got = await self._update(cid, decide)
        if got is None:
            return
        c, version = got
        if c.state == "fulfilled":
            log.info("commitment %s fulfilled by call %s (%s)", c.id, call.call_id, "on time" if c.on_time else "late")
            self._after_close(c, version, c.state_by or "pbx")
        else:
            n = len(c.attempts)
            self._notify(c, "attempt", version, f"承诺 {c.id}:外呼客户未接通(第 {n} 次尝试,未计为完成)",
                         f"commitment {c.id}: outbound call not answered (attempt {n}, not a fulfilment)")


# -- CMP-MONTHLY ----------------------------------------------------------------------------------


def month_range(month: str, tz: ZoneInfo) -> tuple[float, float]:
    """Unix times of the first instant of ``YYYY-MM`` and of the month after, in ``tz``."""
    m = re.fullmatch(r"(\d{4})-(\d{2})", month)
    if not m or not 1 <= int(m.group(2)) <= 12:
        raise Invalid(f"月份格式应为 YYYY-MM:{month[:20]}", f"month must be YYYY-MM: {month[:20]}", "bad_month")
    y, mo = int(m.group(1)), int(m.group(2))
    start = dt.datetime(y, mo, 1, tzinfo=tz)
    end = dt.datetime(y + (mo == 12), mo % 12 + 1, 1, tzinfo=tz)
    return start.timestamp(), end.timestamp()


def previous_month(now_wall: float, tz: ZoneInfo) -> str:
    d = dt.datetime.fromtimestamp(now_wall, tz).date().replace(day=1) - dt.timedelta(days=1)
    return f"{d.year:04d}-{d.month:02d}"


REPORT_COLUMNS: Final = ("id", "kind", "customer", "owner", "team", "call_id", "created", "due", "closed", "state",
                         "late_h", "reason")


async def complaints_report(store: CommitmentStore, cfg: Config, month: str, now_wall: float) -> dict[str, Any]:
    """CMP-MONTHLY: complaint commitments (rule CMP-CLOSE) due in ``month`` that were not closed in time."""
    tz = ZoneInfo(cfg.timezone)
    lo, hi = month_range(month, tz)
    kinds = sorted(k for k, v in cfg.commitments.kinds.items() if v.rule == "CMP-CLOSE")
    rows: list[dict[str, Any]] = []
    for kind in kinds:
        for s in await store.load_many(await store.ids(kind=kind, due_from=lo, due_to=hi)):
            c = Commitment.from_dict(s.data)
            closed_at = c.state_at if c.state == "fulfilled" else None
            late = (c.state == "overdue" or (c.state == "fulfilled" and c.on_time is False)
                    or (c.state == "open" and c.due_at <= now_wall))
            if not late:
                continue
            until = closed_at if closed_at is not None else now_wall
            shown = mask_number(c.customer) if cfg.privacy.mask_callers else c.customer
            rows.append({"id": c.id, "kind": c.kind, "customer": shown, "owner": c.owner, "team": c.team,
                         "call_id": c.call_id, "created": _local(c.created_at, tz), "due": _local(c.due_at, tz),
                         "closed": _local(closed_at, tz) if closed_at is not None else None,
                         "state": c.state, "late_h": round(max(until - c.due_at, 0.0) / 3600, 2),
                         "reason": c.overdue_reason or ""})
    rows.sort(key=lambda r: (r["due"], r["id"]))
    return {"month": month, "timezone": cfg.timezone, "kinds": kinds, "count": len(rows), "items": rows}


def report_csv(report: dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=REPORT_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in report["items"]:
        w.writerow({k: "" if row.get(k) is None else row[k] for k in REPORT_COLUMNS})
    return buf.getvalue()


# -- metrics ---------------------------------------------------------------------------------------


class CommitmentCollector(Collector):
    """Gauges from the service's last stats read (refreshed by every scheduler pass; no I/O here)."""

    def __init__(self, service: CommitmentService) -> None:
        self._service = service

    def collect(self) -> list[Metric]:
        s = self._service
        open_ = GaugeMetricFamily("ringwatch_commitments_open", "Open commitments (not yet due)", labels=["kind"])
        overdue = GaugeMetricFamily("ringwatch_commitments_overdue", "Overdue commitments, not fulfilled",
                                    labels=["kind"])
        fulfilled = CounterMetricFamily("ringwatch_commitments_fulfilled", "Commitments fulfilled",
                                        labels=["kind", "on_time"])
        ratio = GaugeMetricFamily("ringwatch_commitments_fulfilled_on_time_ratio",
                                  "Fulfilled commitments that were fulfilled by their due time", labels=["kind"])
        up = GaugeMetricFamily("ringwatch_commitments_store_up", "1 while the commitments store (Redis) answers")
        pending = GaugeMetricFamily("ringwatch_commitments_pending", "Call records and acks waiting for Redis")
        kinds = sorted(set(s.ccfg.kinds) | {k.split(":", 1)[1] for k in s.stats if ":" in k})
        for kind in kinds:
            on_time = s.stats.get(f"fulfilled_on_time:{kind}", 0)
            late = s.stats.get(f"fulfilled_late:{kind}", 0)
            open_.add_metric([kind], s.stats.get(f"open:{kind}", 0))
            overdue.add_metric([kind], s.stats.get(f"overdue:{kind}", 0))
            fulfilled.add_metric([kind, "true"], on_time)
            fulfilled.add_metric([kind, "false"], late)
            if on_time + late:
                ratio.add_metric([kind], on_time / (on_time + late))
        up.add_metric([], 1 if s.store.available else 0)
        pending.add_metric([], s.pending)
        return [open_, overdue, fulfilled, ratio, up, pending]


__all__ = ["STATES", "Commitment", "CommitmentCollector", "CommitmentError", "CommitmentService", "Invalid",
           "NotFound", "Rejected", "StoreUnavailable", "Stored", "WrongState", "complaints_report", "normalize_number",
           "note_problem", "previous_month", "report_csv"]
