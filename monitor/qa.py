"""Quality inspection (质检): QA-LIVE quotas, QA-SAMPLE / QA-SPECIAL sampling, QA-TIMELY, QA-SCORE.

* **QA-LIVE**: monitorings per agent per ISO week (local time): ``random`` (a silent listen
  started from the console, 随机监听) and ``onsite`` (the agent is aware: whisper / barge, 现场监听);
  ``monitor.spy`` reports each session that really started.  Targets ``ui.qa.random_per_week`` /
  ``onsite_per_week``.
* **QA-SAMPLE / QA-SPECIAL**: :func:`sample_calls`: for each agent, an unbiased random sample of
  ``ceil(ratio x n)`` of the day's inbound calls and of the outbound calls (so every agent meets
  both minimums), plus special calls (complaint, repeat caller, long call, late answer) until
  ``ceil(special_ratio x specials)`` of that agent's special calls are in.  The random stream is
  seeded with ``(seed, day, agent, direction)`` over the calls sorted by id: the same seed and
  calls give the same sample, whatever their arrival order.
* **QA-TIMELY**: each sampled call is due for review ``review_within_days`` after it ended;
  overdue ones are flagged.
* **QA-SCORE**: :func:`score_card`: attitude 20, norms 30, skills 50 (deductions, each section down
  to zero), bonus up to 10, any fatal error -> 0.  An appeal sends the call back for re-review.

State is in memory, and in Redis when there is one (:meth:`QaService.use_redis`, the commitments'
server; written behind through ``monitor.persist``, loaded back at start), so samples, reviews,
appeals and the week's monitorings survive a restart.  Keys (``p`` = ``commitments.key_prefix``):

=====================  ==========  ======================================================
``p qa:sample``        hash        call id -> the sample (JSON: call, day, reasons, due,
                                   state, reviews, appeals)
``p qa:mon``           list        the monitorings (JSON), oldest first (last 100 000)
``p qa:days``          set         the days sampled
``p qa:fin:<day>``     list        the day's finished calls (JSON), expiring after ``keep_days``
=====================  ==========  ======================================================

Every review and appeal is in the audit trail too.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime as dt
import io
import json
import logging
import math
import random
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo

import redis.asyncio as aioredis

from config.schema import Config, QaConfig
from monitor.audit import AuditLog
from monitor.calls import Call
from monitor.engine import Monitor
from monitor.persist import RedisWriter

log = logging.getLogger(__name__)

SPECIAL_FLAGS: Final = frozenset({"complaint", "repeat_caller", "long_call", "late_answer"})
SCORE_SECTIONS: Final = {"attitude": 20, "norms": 30, "skills": 50}
MAX_BONUS: Final = 10
SampleState = Literal["due", "reviewed", "appealed", "rereviewed"]
MonitoringKind = Literal["random", "onsite"]
MONITORINGS_KEPT: Final = 100_000


class QaError(Exception):
    def __init__(self, status: int, code: str, zh: str, en: str) -> None:
        super().__init__(en)
        self.status, self.code, self.zh, self.en = status, code, zh, en


@dataclass(frozen=True, slots=True)
class Finished:
    """A finished call as QA needs it."""

    id: str
    agent: str
    direction: str
    flags: frozenset[str] = frozenset()
    ended_wall: float = 0.0
    queue: str | None = None
    caller: str | None = None  # masked per privacy

    def to_store(self) -> dict[str, Any]:
        return {"id": self.id, "agent": self.agent, "direction": self.direction, "flags": sorted(self.flags),
                "ended_wall": self.ended_wall, "queue": self.queue, "caller": self.caller}

    @classmethod
    def from_store(cls, d: dict[str, Any]) -> Finished:
        return cls(str(d["id"]), str(d["agent"]), str(d["direction"]), frozenset(d.get("flags") or ()),
                   float(d.get("ended_wall", 0.0)), d.get("queue"), d.get("caller"))


def sample_calls(calls: Iterable[Finished], *, seed: int, day: str, inbound_ratio: float, outbound_ratio: float,
                 special_ratio: float) -> list[tuple[Finished, list[str]]]:
    """The day's sample: ``(call, reasons)`` with reasons among ``inbound``, ``outbound``, ``special``."""
    by_agent: dict[str, list[Finished]] = defaultdict(list)
    for c in calls:
        if c.agent and c.direction in ("inbound", "outbound"):
            by_agent[c.agent].append(c)
    out: list[tuple[Finished, list[str]]] = []
    for agent in sorted(by_agent):
        chosen: dict[str, list[str]] = {}
        mine = sorted(by_agent[agent], key=lambda c: c.id)
        for direction, ratio in (("inbound", inbound_ratio), ("outbound", outbound_ratio)):
            pool = [c for c in mine if c.direction == direction]
            k = min(len(pool), math.ceil(ratio * len(pool) - 1e-9)) if ratio > 0 else 0
            rng = random.Random(f"{seed}:{day}:{agent}:{direction}")
            for c in rng.sample(pool, k):
                chosen.setdefault(c.id, []).append(direction)
        specials = [c for c in mine if c.flags & SPECIAL_FLAGS]
        need = min(len(specials), math.ceil(special_ratio * len(specials) - 1e-9)) if special_ratio > 0 else 0
        have = [c for c in specials if c.id in chosen]
        for c in have:
            chosen[c.id].append("special")
        rest = [c for c in specials if c.id not in chosen]
        rng = random.Random(f"{seed}:{day}:{agent}:special")
        for c in rng.sample(rest, max(0, need - len(have))):
            chosen[c.id] = ["special"]
        index = {c.id: c for c in mine}
        out.extend((index[cid], reasons) for cid, reasons in sorted(chosen.items()))
    return out


def score_card(card: dict[str, Any]) -> dict[str, Any]:
    """QA-SCORE from ``{"attitude", "norms", "skills"}`` (points deducted), ``bonus`` (0..10),
    ``fatal`` (bool), ``comment``; raises :class:`QaError` (422) on a bad card."""
    unknown = sorted(set(card) - {*SCORE_SECTIONS, "bonus", "fatal", "comment"})
    if unknown:
        raise QaError(422, "bad_card", f"评分卡不支持字段 {unknown[0][:40]}",
                      f"unknown score card field {unknown[0][:40]}")
    sections: dict[str, float] = {}
    for name, full in SCORE_SECTIONS.items():
        d = card.get(name, 0)
        if isinstance(d, bool) or not isinstance(d, int | float) or not 0 <= d <= full:
            raise QaError(422, "bad_card", f"{name} 扣分应为 0 到 {full}", f"{name}: deduction must be 0..{full}")
        sections[name] = round(full - float(d), 2)
    bonus = card.get("bonus", 0)
    if isinstance(bonus, bool) or not isinstance(bonus, int | float) or not 0 <= bonus <= MAX_BONUS:
        raise QaError(422, "bad_card", f"加分应为 0 到 {MAX_BONUS}", f"bonus must be 0..{MAX_BONUS}")
    fatal = card.get("fatal", False)
    comment = card.get("comment", "")
    if not isinstance(fatal, bool) or not isinstance(comment, str) or len(comment) > 2000:
        raise QaError(422, "bad_card", "fatal 为布尔值,comment 为不超过 2000 字的文本",
                      "fatal is a boolean, comment a text of at most 2000 characters")
    total = 0.0 if fatal else round(sum(sections.values()) + float(bonus), 2)
    return {"sections": sections, "bonus": float(bonus), "fatal": fatal, "comment": comment, "score": total}


@dataclass(slots=True)
class Sample:
    call: Finished
    day: str
    reasons: list[str]
    due_wall: float
    state: SampleState = "due"
    reviews: list[dict[str, Any]] = field(default_factory=list)
    appeals: list[dict[str, Any]] = field(default_factory=list)

    @property
    def score(self) -> float | None:
        return self.reviews[-1]["score"] if self.reviews and self.state in ("reviewed", "rereviewed") else None

    def to_store(self) -> dict[str, Any]:
        return {"call": self.call.to_store(), "day": self.day, "reasons": self.reasons, "due": self.due_wall,
                "state": self.state, "reviews": self.reviews, "appeals": self.appeals}

    @classmethod
    def from_store(cls, d: dict[str, Any]) -> Sample:
        return cls(Finished.from_store(d["call"]), str(d["day"]), list(d.get("reasons") or []), float(d["due"]),
                   d.get("state", "due"), list(d.get("reviews") or []), list(d.get("appeals") or []))

    def to_json(self, now_wall: float, tz: ZoneInfo) -> dict[str, Any]:
        c = self.call
        return {"call": c.id, "agent": c.agent, "direction": c.direction, "queue": c.queue, "caller": c.caller,
                "flags": sorted(c.flags), "reasons": self.reasons, "day": self.day,
                "ended_at": round(c.ended_wall, 3), "due_at": round(self.due_wall, 3),
                "due_local": _local(self.due_wall, tz), "state": self.state, "score": self.score,
                "overdue": self.state in ("due", "appealed") and now_wall > self.due_wall,
                "reviews": self.reviews, "appeals": self.appeals}


def _str(x: str | bytes) -> str:
    return x if isinstance(x, str) else x.decode("utf-8", "replace")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _local(wall: float, tz: ZoneInfo) -> str:
    return dt.datetime.fromtimestamp(wall, tz).strftime("%Y-%m-%d %H:%M")


CSV_COLUMNS: Final = ("call", "agent", "direction", "queue", "caller", "flags", "reasons", "day", "due_local",
                      "state", "score", "overdue")


def samples_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(CSV_COLUMNS)
    for r in rows:
        w.writerow(["|".join(r[k]) if isinstance(r[k], list) else "" if r[k] is None else r[k] for k in CSV_COLUMNS])
    return buf.getvalue()


class QaService:
    """Finished calls of the last days, the samples, the reviews and the week's monitorings."""

    def __init__(self, cfg: Config, monitor: Monitor, audit: AuditLog, wall: Callable[[], float],
                 keep_days: int = 8) -> None:
        self.cfg = cfg
        self.q: QaConfig = cfg.ui.qa
        self.tz = ZoneInfo(cfg.timezone)
        self.audit = audit
        self.monitor = monitor
        self._wall = wall
        self._keep_days = keep_days
        self.finished: OrderedDict[str, list[Finished]] = OrderedDict()  # day -> calls
        self.samples: OrderedDict[str, Sample] = OrderedDict()  # call id -> sample
        self._unqueued: set[str] = set()  # samples whose last change found the Redis writer's queue full
        self.sampled_days: set[str] = set()
        self.monitorings: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None
        self.writer: RedisWriter | None = None  # use_redis: changes written behind to Redis
        self.prefix = "ringwatch:"
        monitor.on_record(self.on_record)

    # -- persistence ---------------------------------------------------------------------------

    def use_redis(self, client: aioredis.Redis, prefix: str) -> None:
        """Keep samples, reviews, monitorings (and the last days' finished calls) in Redis; before start."""
        self.writer = RedisWriter(client, "qa")
        self.prefix = prefix

    def _k(self, name: str) -> str:
        return f"{self.prefix}qa:{name}"

    #: how long a review / appeal answer waits for Redis to confirm the write (then 202)
    persist_timeout_s = 3.0

    async def persisted(self) -> bool:
        """True once every change made so far is in Redis (or there is no Redis: memory only); False while
        a sample's change could not even be queued (the writer's queue full: Redis down for long)."""
        if self.writer is None:
            return True
        if not self._resubmit_unqueued():
            return False
        return await self.writer.settled(self.persist_timeout_s)

    @property
    def unqueued(self) -> int:
        """Samples whose last change is waiting for room in the Redis writer's queue."""
        return len(self._unqueued)

    def _save_sample(self, s: Sample) -> None:
        if self.writer is None:
            return
        self._resubmit_unqueued()
        if not self._submit_sample(s):
            self._unqueued.add(s.call.id)  # written as it is then, once the queue has room

    def _submit_sample(self, s: Sample) -> bool:
        assert self.writer is not None
        key, value = self._k("sample"), _dumps(s.to_store())
        return self.writer.submit(lambda r: r.hset(key, s.call.id, value))

    def _resubmit_unqueued(self) -> bool:
        """Queue the samples whose saves found the queue full, in their current state; True when none is left."""
        for call_id in list(self._unqueued):
            sample = self.samples.get(call_id)
            if sample is not None and not self._submit_sample(sample):
                return False
            self._unqueued.discard(call_id)
        return True

    async def load(self) -> None:
        """Read the state back from Redis (start; raises on a Redis failure)."""
        assert self.writer is not None
        r = self.writer.client
        raw_samples = await r.hgetall(self._k("sample"))
        samples = []
        for cid, raw in raw_samples.items():
            try:
                samples.append(Sample.from_store(json.loads(raw)))
            except (ValueError, KeyError, TypeError):
                log.warning("qa: stored sample %s unreadable; skipped", str(cid)[:60])
        for s in sorted(samples, key=lambda s: (s.due_wall, s.call.id)):
            self.samples.setdefault(s.call.id, s)
        raw_mon = await r.lrange(self._k("mon"), -MONITORINGS_KEPT, -1)
        loaded = []
        for raw in raw_mon:
            with contextlib.suppress(ValueError):
                m = json.loads(raw)
                if isinstance(m, dict):
                    loaded.append(m)
        self.monitorings[:0] = loaded
        del self.monitorings[:-MONITORINGS_KEPT]
        days = await r.smembers(self._k("days"))
        self.sampled_days |= {_str(d) for d in days}
        today = dt.date.fromisoformat(self.day_of(self._wall()))
        for back in range(self._keep_days - 1, -1, -1):
            day = (today - dt.timedelta(days=back)).isoformat()
            raw_fin = await r.lrange(self._k(f"fin:{day}"), 0, -1)
            if not raw_fin:
                continue
            have = {c.id for c in self.finished.get(day, [])}
            calls = []
            for raw in raw_fin:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    c = Finished.from_store(json.loads(raw))
                    if c.id not in have:
                        calls.append(c)
            self.finished[day] = calls + self.finished.get(day, [])
            self.finished.move_to_end(day)
        self.finished = OrderedDict(sorted(self.finished.items()))
        while len(self.finished) > self._keep_days:
            self.finished.popitem(last=False)
        log.info("qa: loaded %d samples, %d monitorings from Redis", len(samples), len(loaded))

    # -- inputs --------------------------------------------------------------------------------

    def day_of(self, wall: float) -> str:
        return dt.datetime.fromtimestamp(wall, self.tz).date().isoformat()

    def week_of(self, wall: float) -> str:
        y, w, _ = dt.datetime.fromtimestamp(wall, self.tz).isocalendar()
        return f"{y}-W{w:02d}"

    def on_record(self, call: Call, record: dict[str, Any]) -> None:
        agent = call.agent or call.talking_agent
        if not agent or call.answered_at is None or call.ended_at is None:
            return
        self.add(Finished(call.id, agent, call.direction, frozenset(call.flags),
                          self.monitor.clock.wall(call.ended_at), call.queue, record.get("caller")))

    def add(self, c: Finished) -> None:
        day = self.day_of(c.ended_wall)
        self.finished.setdefault(day, []).append(c)
        while len(self.finished) > self._keep_days:
            self.finished.popitem(last=False)
        if self.writer is not None:
            key, value, ttl = self._k(f"fin:{day}"), _dumps(c.to_store()), (self._keep_days + 1) * 86400

            async def op(r: aioredis.Redis) -> None:
                async with r.pipeline(transaction=True) as p:
                    p.rpush(key, value)
                    p.expire(key, ttl)
                    await p.execute()

            self.writer.submit(op)

    def record_monitoring(self, agent: str, kind: MonitoringKind, by: str, call_id: str, wall: float) -> None:
        m = {"agent": agent, "kind": kind, "by": by, "call": call_id, "at": round(wall, 3), "week": self.week_of(wall)}
        self.monitorings.append(m)
        del self.monitorings[:-MONITORINGS_KEPT]
        if self.writer is not None:
            key, value = self._k("mon"), _dumps(m)

            async def op(r: aioredis.Redis) -> None:
                async with r.pipeline(transaction=True) as p:
                    p.rpush(key, value)
                    p.ltrim(key, -MONITORINGS_KEPT, -1)
                    await p.execute()

            self.writer.submit(op)

    # -- sampling ------------------------------------------------------------------------------

    def run_sample(self, day: str) -> list[Sample]:
        """Sample ``day``'s finished calls (again: the same calls give the same sample; reviews are kept)."""
        picked = sample_calls(self.finished.get(day, []), seed=self.q.seed, day=day,
                              inbound_ratio=self.q.inbound_ratio, outbound_ratio=self.q.outbound_ratio,
                              special_ratio=self.q.special_ratio)
        out = []
        for c, reasons in picked:
            s = self.samples.get(c.id)
            if s is None:
                s = self.samples[c.id] = Sample(c, day, reasons, c.ended_wall + self.q.review_within_days * 86400)
                self._save_sample(s)
            out.append(s)
        self.sampled_days.add(day)
        if self.writer is not None:
            days_key = self._k("days")
            self.writer.submit(lambda r: r.sadd(days_key, day))
        log.info("qa: sampled %d of %d calls of %s", len(out), len(self.finished.get(day, [])), day)
        return out

    def query(self, *, day: str | None = None, agent: str | None = None, state: str | None = None,
              overdue: bool | None = None, agents: set[str] | None = None) -> list[dict[str, Any]]:
        now = self._wall()
        rows = []
        for s in self.samples.values():
            if (day and s.day != day) or (agent and s.call.agent != agent) or (state and s.state != state):
                continue
            if agents is not None and s.call.agent not in agents:
                continue
            j = s.to_json(now, self.tz)
            if overdue is not None and j["overdue"] != overdue:
                continue
            rows.append(j)
        rows.sort(key=lambda r: (r["due_at"], r["call"]))
        return rows

    def _sample(self, call_id: str) -> Sample:
        s = self.samples.get(call_id)
        if s is None:
            raise QaError(404, "not_found", f"通话 {call_id[:60]} 不在抽检样本中",
                          f"call {call_id[:60]} is not sampled")
        return s

    def review(self, call_id: str, by: str, card: dict[str, Any]) -> Sample:
        s = self._sample(call_id)
        if s.state in ("reviewed", "rereviewed"):
            raise QaError(409, "already_reviewed", "该通话已评分;如有异议请先申诉", "already scored: appeal first")
        result = score_card(card)
        result.update({"by": by, "at": round(self._wall(), 3), "re_review": s.state == "appealed"})
        s.reviews.append(result)
        s.state = "rereviewed" if s.state == "appealed" else "reviewed"
        self._save_sample(s)
        self.audit.record(by, "qa.review", call_id, {"agent": s.call.agent, "score": result["score"],
                                                      "fatal": result["fatal"], "re_review": result["re_review"]})
        return s

    def appeal(self, call_id: str, by: str, reason: str) -> Sample:
        s = self._sample(call_id)
        if s.state != "reviewed":
            raise QaError(409, "cannot_appeal", "只能对已评分且未复核的通话申诉", "only a scored, not re-reviewed call "
                          "can be appealed")
        s.appeals.append({"by": by, "at": round(self._wall(), 3), "reason": reason})
        s.state = "appealed"
        self._save_sample(s)
        self.audit.record(by, "qa.appeal", call_id, {"agent": s.call.agent, "reason": reason[:500]})
        return s

    # -- the week ------------------------------------------------------------------------------

    def week(self, agents: Iterable[str], week: str | None = None) -> dict[str, Any]:
        now = self._wall()
        week = week or self.week_of(now)
        done: dict[str, dict[str, int]] = defaultdict(lambda: {"random": 0, "onsite": 0})
        for m in self.monitorings:
            if m["week"] == week:
                done[m["agent"]][m["kind"]] += 1
        due: dict[str, int] = defaultdict(int)
        overdue: dict[str, int] = defaultdict(int)
        for s in self.samples.values():
            if s.state in ("due", "appealed"):
                due[s.call.agent] += 1
                if now > s.due_wall:
                    overdue[s.call.agent] += 1
        rows = []
        for a in sorted(set(agents) | set(done)):
            r, o = done[a]["random"], done[a]["onsite"]
            rows.append({"agent": a, "random": r, "random_target": self.q.random_per_week, "onsite": o,
                         "onsite_target": self.q.onsite_per_week, "reviews_due": due[a], "reviews_overdue": overdue[a],
                         "below_quota": r < self.q.random_per_week or o < self.q.onsite_per_week})
        return {"week": week, "agents": rows}

    # -- the daily run -------------------------------------------------------------------------

    async def start(self) -> None:
        if self.writer is not None:
            try:
                await self.load()
            except Exception as e:  # Redis down at start: carry on in memory; changes are still written behind
                log.error("qa: could not load the QA state from Redis (%s); starting without it", type(e).__name__)
            await self.writer.start()
        self._task = asyncio.create_task(self._daily(), name="qa-daily-sample")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.writer is not None:
            if not self._resubmit_unqueued():
                log.error("qa: %d sample changes could not be queued for Redis before stopping", len(self._unqueued))
            await self.writer.stop()

    def next_run(self, now_wall: float) -> float:
        h, m = (int(x) for x in self.q.sample_at.split(":"))
        local = dt.datetime.fromtimestamp(now_wall, self.tz)
        at = local.replace(hour=h % 24, minute=m, second=0, microsecond=0)
        if at.timestamp() <= now_wall:
            at += dt.timedelta(days=1)
        return at.timestamp()

    async def _daily(self) -> None:
        while True:
            now = self._wall()
            await asyncio.sleep(max(self.next_run(now) - now, 1.0))
            yesterday = self.day_of(self._wall() - 86400)
            try:
                self.run_sample(yesterday)
            except Exception:
                log.exception("qa: the daily sample failed")
