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

import collections
import itertools
import json
import logging
import time
from collections.abc import Callable
from typing import Any, Final

import redis.asyncio as aioredis

from alerts.hub import AlertChange
from monitor.persist import RedisWriter

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
    """Append-only audit trail in Redis (or in memory without a client).  Writes go through a
    :class:`monitor.persist.RedisWriter` (bounded, in order, retried while Redis is down)."""

    name = "audit"

    def __init__(self, client: aioredis.Redis | None, key: str = "ringwatch:audit", *,
                 now: Callable[[], float] = time.time, queue_limit: int = 10_000, memory_limit: int = 100_000,
                 retry_max_s: float = 30.0) -> None:
        self.key = key
        self._now = now
        self._queue_limit = queue_limit
        self._retry_max = retry_max_s
        self._memory: collections.deque[tuple[str, dict[str, str]]] = collections.deque(maxlen=memory_limit)
        self._seq = itertools.count()
        self._memory_written = 0
        self._writer: RedisWriter | None = None
        self.client = client

    @property
    def client(self) -> aioredis.Redis | None:
        return None if self._writer is None else self._writer.client

    @client.setter
    def client(self, client: aioredis.Redis | None) -> None:
        """Set before :meth:`start` (``UiRuntime.use_redis``)."""
        self._writer = None if client is None else RedisWriter(client, "audit", queue_limit=self._queue_limit,
                                                                 retry_max_s=self._retry_max)

    @property
    def written(self) -> int:
        return self._memory_written + (self._writer.written if self._writer is not None else 0)

    @property
    def dropped(self) -> int:  # queue full (Redis down too long)
        return self._writer.dropped if self._writer is not None else 0

    @property
    def failures(self) -> int:
        return self._writer.failures if self._writer is not None else 0

    @property
    def pending(self) -> int:
        return self._writer.pending if self._writer is not None else 0

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self._writer is not None:
            await self._writer.start()

    async def stop(self) -> None:
        """Write what is queued (a few seconds at most), then stop the writer."""
        if self._writer is not None:
            await self._writer.stop(timeout_s=5.0)

    # -- writing -----------------------------------------------------------------------------

    def record(self, actor: str, action: str, target: str, details: dict[str, Any] | None = None) -> bool:
        """Queue an entry (never blocks, never raises); written in order.  False: dropped (queue full)."""
        e = entry(actor, action, target, details, self._now())
        if self._writer is None:
            self._store_memory(e)
            return True
        key = self.key

        async def write(r: aioredis.Redis) -> None:
            await r.xadd(key, e)  # type: ignore[arg-type]  # str -> str is a field map

        return self._writer.submit(write)

    async def record_durable(self, actor: str, action: str, target: str, details: dict[str, Any] | None = None,
                             *, timeout_s: float = 3.0) -> bool:
        """Record an entry and wait until it is in Redis (True), at most ``timeout_s`` (False: Redis down or
        slow, or the queue full; a queued entry is written when Redis answers).  Without Redis: True (memory)."""
        if not self.record(actor, action, target, details):
            return False
        return True if self._writer is None else await self._writer.settled(timeout_s)

    def _store_memory(self, e: dict[str, str]) -> str:
        entry_id = f"{int(float(e['ts']) * 1000)}-{next(self._seq)}"
        self._memory.append((entry_id, e))
        self._memory_written += 1
        return entry_id

    async def flush(self) -> None:
        """Wait until every recorded entry is written."""
        if self._writer is not None:
            await self._writer.flush()

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
