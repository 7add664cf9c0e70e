"""The audit trail: an append-only Redis stream (``<commitments.key_prefix>audit``, ``ringwatch:audit``).

Every entry has the same five fields, shared by every writer (the web UI here, the outbound
compliance module for DNC changes):

==========  ==========================================================================
``ts``      Unix time, seconds (a decimal string)
``actor``   who did it: a user or token name, ``pbx`` or ``system``
``action``  dotted verb: ``spy.start``, ``spy.end``, ``alert.ack``, ``alert.resolve``,
            ``commitment.created`` / ``.fulfilled`` / ``.cancelled`` / ``.note`` / ``.attempt``,
            ``qa.review``, ``qa.appeal``, ``dnc.add``, ``dnc.remove``, ``login``, ``login.failed``
``target``  what it was done to: a call id, an alert id, a commitment id, a number (masked)
``details`` a JSON object (string): mode, agent, start/end, ...
==========  ==========================================================================

Nothing here ever trims or deletes (no ``MAXLEN``, no ``XDEL``): retention is the operator's
call.  :meth:`AuditLog.record` never blocks (a bounded queue and one writer task, retried with
backoff while Redis is down); :meth:`AuditLog.flush` waits until what was recorded is written;
:meth:`AuditLog.record_durable` records and waits (bounded) until that entry is in Redis — for
actions that must not happen unaudited (listening in on a call).
Without Redis (``client=None``, tests, commitments disabled) entries stay in memory (bounded).

As an alert-hub sink the log records alert acks / resolves and the commitment changes the
commitment service announces (notices carrying ``details.change``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import logging
import time
from collections.abc import Callable
from typing import Any, Final

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from alerts.hub import AlertChange

log = logging.getLogger(__name__)

AUDIT_STREAM: Final = "audit"  # the key is the commitments' key prefix + this
FIELDS: Final = ("ts", "actor", "action", "target", "details")
COMMITMENT_CHANGES: Final = frozenset({"created", "fulfilled", "cancelled", "note", "attempt"})


def audit_key(prefix: str) -> str:
    return f"{prefix}{AUDIT_STREAM}"


def entry(actor: str, action: str, target: str, details: dict[str, Any] | None = None,
          ts: float | None = None) -> dict[str, str]:
    """One audit entry in the shared shape (every value a string, as stored in the stream)."""
    return {"ts": f"{time.time() if ts is None else ts:.3f}", "actor": actor[:128], "action": action[:64],
            "target": target[:256], "details": json.dumps(details or {}, ensure_ascii=False, separators=(",", ":"))}


def decode(entry_id: str, fields: dict[str, str]) -> dict[str, Any]:
    """A stored entry as the API shows it (details parsed; unknown extra fields kept as they are)."""
    out: dict[str, Any] = {"id": entry_id, **fields}
    try:
        out["ts"] = float(fields.get("ts", "0"))
    except ValueError:
        out["ts"] = 0.0
    try:
        out["details"] = json.loads(fields.get("details") or "{}")
    except ValueError:
        out["details"] = {"raw": fields.get("details")}
    return out


class AuditLog:
    """Append-only audit trail in Redis (or in memory without a client)."""

    name = "audit"

    def __init__(self, client: aioredis.Redis | None, key: str = "ringwatch:audit", *,
                 now: Callable[[], float] = time.time, queue_limit: int = 10_000, memory_limit: int = 100_000,
                 retry_max_s: float = 30.0) -> None:
        self.client = client
        self.key = key
        self._now = now
        self._queue: collections.deque[dict[str, str]] = collections.deque()
        self._queue_limit = queue_limit
        self._memory: collections.deque[tuple[str, dict[str, str]]] = collections.deque(maxlen=memory_limit)
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._retry_max = retry_max_s
        self._task: asyncio.Task[None] | None = None
        self.written = 0
        self.dropped = 0  # queue full (Redis down too long)
        self.failures = 0
        self._queued = 0  # entries ever queued for Redis
        self._progress = asyncio.Event()  # set whenever the writer has written one

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._writer(), name="audit-writer")

    async def stop(self) -> None:
        """Write what is queued (a few seconds at most), then stop the writer."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self.flush()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    # -- writing -----------------------------------------------------------------------------

    def record(self, actor: str, action: str, target: str, details: dict[str, Any] | None = None) -> int | None:
        """Queue an entry (never blocks, never raises); written in order by the writer task.  Returns its
        place in the write order (None: kept in memory only, or dropped)."""
        e = entry(actor, action, target, details, self._now())
        if self.client is None:
            self._store_memory(e)
            return None
        if len(self._queue) >= self._queue_limit:
            self.dropped += 1
            log.error("audit: queue full (%d), entry %s by %s dropped", self._queue_limit, action, actor)
            return None
        self._queue.append(e)
        self._queued += 1
        self._idle.clear()
        self._wake.set()
        return self._queued

    async def record_durable(self, actor: str, action: str, target: str, details: dict[str, Any] | None = None,
                             *, timeout_s: float = 3.0) -> bool:
        """Record an entry and wait until it is in Redis (True), at most ``timeout_s`` (False: Redis down or
        slow; the entry stays queued and is written when Redis answers).  Without Redis: True (memory)."""
        if self.client is None:
            self.record(actor, action, target, details)
            return True
        place = self.record(actor, action, target, details)
        if place is None:
            return False
        if self._task is None:
            await self.start()
        try:
            async with asyncio.timeout(timeout_s):
                while self._queued - len(self._queue) < place:
                    self._progress.clear()
                    await self._progress.wait()
        except TimeoutError:
            return False
        return True

    def _store_memory(self, e: dict[str, str]) -> str:
        entry_id = f"{int(float(e['ts']) * 1000)}-{next(self._seq)}"
        self._memory.append((entry_id, e))
        self.written += 1
        return entry_id

    async def flush(self) -> None:
        """Wait until every recorded entry is written."""
        if self.client is None:
            return
        if self._task is None:
            await self.start()
        await self._idle.wait()

    async def _writer(self) -> None:
        assert self.client is not None
        delay = 0.1
        while True:
            if not self._queue:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            e = self._queue[0]
            try:
                await self.client.xadd(self.key, e)  # type: ignore[arg-type]  # str -> str is a field map
            except (RedisError, OSError, TimeoutError) as exc:
                self.failures += 1
                log.warning("audit: Redis write failed (%s); retrying in %.1fs", type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max)
                continue
            delay = 0.1
            self._queue.popleft()
            self.written += 1
            self._progress.set()

    @property
    def pending(self) -> int:
        return len(self._queue)

    # -- reading -----------------------------------------------------------------------------

    async def query(self, *, limit: int = 100, action: str | None = None, actor: str | None = None,
                    since: float | None = None, scan: int = 100_000) -> list[dict[str, Any]]:
        """Newest first; ``action`` matches exactly or as a dotted prefix (``spy`` -> ``spy.start``)."""
        rows: list[tuple[str, dict[str, str]]]
        if self.client is None:
            rows = list(reversed(self._memory))
        else:
            rows = []
            last = "+"
            while len(rows) < scan:
                batch = await self.client.xrevrange(self.key, max=last, min="-", count=1000)
                if not batch:
                    break
                for raw_id, raw_fields in batch:
                    rows.append((_s(raw_id), {_s(k): _s(v) for k, v in (raw_fields or {}).items()}))
                last = "(" + rows[-1][0]
                if len(batch) < 1000 or _match_count(rows, action, actor, since) >= limit:
                    break
        out: list[dict[str, Any]] = []
        for row_id, row in rows:
            if not _matches(row, action, actor, since):
                continue
            out.append(decode(row_id, row))
            if len(out) >= limit:
                break
        return out

    # -- alert-hub sink ----------------------------------------------------------------------

    def offer(self, change: AlertChange) -> None:
        a = change.alert
        if change.kind in ("acked", "resolved") and a.kind == "violation":
            self.record(change.by or "?", f"alert.{'ack' if change.kind == 'acked' else 'resolve'}", a.id,
                        {"rule": a.rule, "call": a.call, "agent": a.agent, "queue": a.queue})
            return
        if change.kind != "opened" or a.kind != "notice":
            return
        what = a.details.get("change")
        c = a.details.get("commitment")
        if what not in COMMITMENT_CHANGES or not isinstance(c, dict):
            return
        actor: object = {"created": c.get("created_by"), "fulfilled": c.get("state_by"),
                         "cancelled": c.get("state_by")}.get(str(what))
        if what == "note" and c.get("notes"):
            actor = c["notes"][-1].get("by")
        if what == "attempt":
            actor = "pbx"
        self.record(str(actor or "?"), f"commitment.{what}", str(c.get("id", "?")),
                    {"kind": c.get("kind"), "owner": c.get("owner"), "team": c.get("team"),
                     "state": c.get("state"), "call_id": c.get("call_id"), "customer": c.get("customer")})


def _s(x: Any) -> str:
    if x is None:
        return ""
    return x if isinstance(x, str) else bytes(x).decode("utf-8", "replace")


def _matches(fields: dict[str, str], action: str | None, actor: str | None, since: float | None) -> bool:
    if action is not None:
        a = fields.get("action", "")
        if a != action and not a.startswith(action + "."):
            return False
    if actor is not None and fields.get("actor") != actor:
        return False
    if since is not None:
        try:
            if float(fields.get("ts", "0")) < since:
                return False
        except ValueError:
            return False
    return True


def _match_count(rows: list[tuple[str, dict[str, str]]], action: str | None, actor: str | None,
                 since: float | None) -> int:
    return sum(1 for _, f in rows if _matches(f, action, actor, since))
