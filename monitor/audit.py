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
call.  Nothing recorded is lost to a Redis outage either: with a ``spill_path`` (``<data_dir>/
audit-spill.jsonl``), entries that find the write queue full, and those still queued when the
service stops, are appended to that local file (in a worker thread); the next start writes them
into the stream first, oldest first, and removes the file once Redis has them.  A crash between
that write and the removal can repeat entries (each carries its ``ts``), never lose them.
:meth:`AuditLog.record` never blocks (a bounded queue and one writer task, retried with
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
import itertools
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
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
                 retry_max_s: float = 30.0, spill_path: Path | None = None, stop_timeout_s: float = 5.0) -> None:
        self.key = key
        self._stop_timeout = stop_timeout_s
        self._now = now
        self.spill_path = spill_path
        self._pending: collections.deque[dict[str, str]] = collections.deque()  # queued for Redis, in order
        self._overflow: list[dict[str, str]] = []  # found the queue full: to the spill file
        self._spiller: asyncio.Task[None] | None = None  # appends overflowing entries to the spill file
        self._replayer: asyncio.Task[None] | None = None  # removes the replayed file once Redis has it all
        self.spilled = 0  # entries written to the spill file
        self._writer_dropped = 0
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
    def dropped(self) -> int:  # lost: the queue full (Redis down too long) and no spill file
        return self._writer_dropped

    @property
    def failures(self) -> int:
        return self._writer.failures if self._writer is not None else 0

    @property
    def pending(self) -> int:
        return self._writer.pending if self._writer is not None else 0

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self._writer is None:
            return
        await self._writer.start()
        if self.spill_path is not None:
            await self._replay_spill(self.spill_path)

    async def stop(self) -> None:
        """Write what is queued (a few seconds at most), then stop the writer; what Redis did not take
        goes to the spill file."""
        if self._writer is None:
            return
        await self._writer.stop(timeout_s=self._stop_timeout)
        replaying = self._replayer is not None and not self._replayer.done()
        if self._replayer is not None:
            self._replayer.cancel()
            await asyncio.gather(self._replayer, return_exceptions=True)
            self._replayer = None
        if self._spiller is not None:
            await asyncio.wait([self._spiller])
        left = [*self._pending, *self._overflow]
        self._pending.clear()
        self._overflow.clear()
        if left:
            await self._spill(left)
        if replaying and self.spill_path is not None:
            # the replayed entries Redis did not take are among ``left``, now in the spill file again
            await asyncio.to_thread(self._replaying_path(self.spill_path).unlink, missing_ok=True)

    @staticmethod
    def _replaying_path(path: Path) -> Path:
        return path.with_suffix(path.suffix + ".replaying")

    async def _spill(self, entries: list[dict[str, str]]) -> None:
        if self.spill_path is None:
            self._writer_dropped += len(entries)
            log.error("audit: %d entries not written to Redis and no spill file: lost", len(entries))
            return
        lines = "".join(json.dumps(e, ensure_ascii=False, separators=(",", ":")) + "\n" for e in entries)
        path = self.spill_path

        def append() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as f:
                f.write(lines)
                f.flush()
                os.fsync(f.fileno())

        await asyncio.to_thread(append)
        self.spilled += len(entries)
        log.warning("audit: %d entries kept in %s until Redis takes them", len(entries), path)

    async def _replay_spill(self, path: Path) -> None:
        """Entries a previous run could not write: into the stream first (oldest first), then the file goes."""
        replaying = self._replaying_path(path)

        def take() -> list[dict[str, str]]:
            if path.exists():  # a replay cut short leaves .replaying: both are read, nothing is lost
                with replaying.open("a", encoding="utf-8") as dst:
                    dst.write(path.read_text(encoding="utf-8"))
                path.unlink()
            if not replaying.exists():
                return []
            rows = []
            for line in replaying.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except ValueError:
                    log.error("audit: unreadable line in %s kept out of the stream: %.80s", replaying, line)
                    continue
                if isinstance(row, dict):
                    rows.append({str(k): str(v) for k, v in row.items()})
            return sorted(rows, key=lambda r: float(r.get("ts") or 0.0))

        rows = await asyncio.to_thread(take)
        if not rows:
            return
        log.info("audit: writing %d entries kept in %s while Redis was away", len(rows), path)
        for row in rows:
            self._submit(row)
        self._replayer = asyncio.create_task(self._forget_replayed(replaying), name="audit-spill-replay")

    async def _forget_replayed(self, replaying: Path) -> None:
        assert self._writer is not None
        while not await self._writer.settled(60.0):
            pass  # Redis still away: the entries stay queued (and go back to the file at stop)
        await asyncio.to_thread(replaying.unlink, missing_ok=True)

    # -- writing -----------------------------------------------------------------------------

    def record(self, actor: str, action: str, target: str, details: dict[str, Any] | None = None) -> bool:
        """Queue an entry (never blocks, never raises); written in order.  False: the queue was full (the
        entry goes to the spill file, or, without one, is lost and logged)."""
        e = entry(actor, action, target, details, self._now())
        if self._writer is None:
            self._store_memory(e)
            return True
        return self._submit(e)

    def _submit(self, e: dict[str, str]) -> bool:
        assert self._writer is not None
        key, pending = self.key, self._pending

        async def write(r: aioredis.Redis) -> None:
            await r.xadd(key, e)  # type: ignore[arg-type]  # str -> str is a field map
            pending.popleft()  # ops run in order: this entry is the oldest pending one

        if self._writer.submit(write):
            pending.append(e)
            return True
        self._overflow.append(e)
        if self._spiller is None or self._spiller.done():
            self._spiller = asyncio.get_running_loop().create_task(self._spill_overflow(), name="audit-spill")
        return False

    async def _spill_overflow(self) -> None:
        while self._overflow:
            batch, self._overflow = self._overflow, []
            await self._spill(batch)

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
        """Wait until every recorded entry is written (and a replayed spill file is gone)."""
        if self._writer is not None:
            await self._writer.flush()
        if self._replayer is not None:
            await asyncio.wait([self._replayer])

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
