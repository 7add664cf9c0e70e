"""The commitments' durable store: Redis through ``redis.asyncio``.

Keys (``p`` = ``commitments.key_prefix``, default ``ringwatch:``):

=========================  ============  ==============================================
``p c:<id>``               hash          ``d``: the commitment (JSON), ``v``: its version
``p h:<id>``               stream        its history, append-only (``XADD``; field ``e``: JSON)
``p due``                  sorted set    id -> Unix time of its next timed step (reminder,
                                         due, escalation); absent when none is left
``p all``                  sorted set    id -> created (Unix time): listing, newest first
``p kind:<kind>``          sorted set    id -> due (Unix time): the monthly report
``p state:<state>``        set           ids by state (open / overdue / fulfilled / cancelled)
``p num:<number>``         set           open auto-fulfilling ids by customer number
``p stats``                hash          ``<state>:<kind>`` counters for the metrics
``p seq``                  string        id counter (``INCR``)
``p idem:<key>``           string        id created with that idempotency key (30 days)
=========================  ============  ==============================================

Every change of a commitment is **one Lua script** (:data:`_SAVE`): a compare-
and-set on the version, the new body, every index, the stats and the history
entry, all or nothing.  Concurrent writers (two ringwatch instances, the API
and the scheduler) cannot overwrite each other: the loser gets
:class:`Conflict`, re-reads and decides again.

Durability: a write is acknowledged (HTTP 201/200) only after Redis answered
the script.  The embedded server runs ``appendfsync always``, so that answer
comes after the AOF was fsynced.  For a configured server ringwatch relies on
the server's own ``appendonly``/``appendfsync`` (checked and warned about at
start, where ``CONFIG GET`` is allowed), and can additionally confirm every
write with ``WAITAOF 1 N`` (``redis.wait_aof``; Redis >= 7.2: fsynced locally
and on N replicas) or ``WAIT N`` (``redis.wait_replicas``; replicated, not
necessarily fsynced).  A write whose confirmation falls short raises
:class:`StoreUnavailable`: it *may* be stored, so the API answers 503 and the
client must re-read before retrying.

Deadline ownership across instances: :meth:`CommitmentStore.claim` is an
atomic Lua step "if the deadline is due, push it forward by a lease and
return 1": one instance owns a due deadline; if it dies mid-way the deadline
comes back when the lease ends.  The transition it then makes is a CAS on the
version, so even a lease that ran out cannot make a second instance fire it.

Every Redis failure (connection refused, timeout, loading, read-only replica)
surfaces as :class:`StoreUnavailable`; nothing here retries on its own beyond
one reconnect.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    BusyLoadingError,
    MasterDownError,
    ReadOnlyError,
    RedisError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from config.schema import RedisConfig

log = logging.getLogger(__name__)

#: how long an idempotency key (``Idempotency-Key`` header, PBX call + kind) is remembered
IDEMPOTENCY_TTL_S: Final = 30 * 86400

_UNAVAILABLE: Final = (RedisConnectionError, RedisTimeoutError, BusyLoadingError, ReadOnlyError, MasterDownError,
                       TryAgainError, OSError, TimeoutError)


class StoreUnavailable(Exception):
    """Redis cannot be reached, or did not confirm a write as durable."""


class Conflict(Exception):
    """The commitment changed since it was read (compare-and-set failed)."""


class Duplicate(Exception):
    """A commitment was already created with this idempotency key; ``existing`` is its id."""

    def __init__(self, existing: str) -> None:
        super().__init__(existing)
        self.existing = existing


@dataclass(frozen=True, slots=True)
class Stored:
    data: dict[str, Any]
    version: int


@dataclass(frozen=True, slots=True)
class Change:
    """What one save writes besides the body: indices, counters, the history entry."""

    history: dict[str, Any]
    next_wall: float | None  # next timed step; None removes the id from the due index
    created_wall: float
    due_wall: float
    kind: str
    number: str  # normalised customer number (auto-fulfil index)
    in_number_index: bool
    old_stat: str | None  # "<state>:<kind>" counted before, None for a new commitment
    new_stat: str
    old_state: str | None
    new_state: str
    idempotency_key: str | None = None  # creation only: a second create with the same key is refused


# KEYS: 1 body, 2 due, 3 history, 4 all, 5 kind, 6 num, 7 stats, 8 old state set, 9 new state set,
#       10 idempotency key (or the body key when none)
# ARGV: 1 expected version, 2 body, 3 next due ('' = none), 4 history entry, 5 id, 6 created, 7 due,
#       8 number index '1'/'0', 9 old stat ('' = none), 10 new stat, 11 old state ('' = none), 12 new state,
#       13 idempotency '1'/'0', 14 idempotency key lifetime (s)
# Returns the new version; -1: the version changed (CAS failed); -2: the idempotency key is taken.
_SAVE: Final = """
local v = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if v ~= tonumber(ARGV[1]) then return -1 end
if ARGV[13] == '1' then
  if redis.call('EXISTS', KEYS[10]) == 1 then return -2 end
  redis.call('SET', KEYS[10], ARGV[5], 'EX', ARGV[14])
end
redis.call('HSET', KEYS[1], 'd', ARGV[2], 'v', v + 1)
if ARGV[3] == '' then redis.call('ZREM', KEYS[2], ARGV[5]) else redis.call('ZADD', KEYS[2], ARGV[3], ARGV[5]) end
redis.call('XADD', KEYS[3], '*', 'e', ARGV[4])
redis.call('ZADD', KEYS[4], ARGV[6], ARGV[5])
redis.call('ZADD', KEYS[5], ARGV[7], ARGV[5])
if ARGV[8] == '1' then redis.call('SADD', KEYS[6], ARGV[5]) else redis.call('SREM', KEYS[6], ARGV[5]) end
if ARGV[9] ~= '' then redis.call('HINCRBY', KEYS[7], ARGV[9], -1) end
redis.call('HINCRBY', KEYS[7], ARGV[10], 1)
if ARGV[11] ~= '' then redis.call('SREM', KEYS[8], ARGV[5]) end
redis.call('SADD', KEYS[9], ARGV[5])
return v + 1
"""

# KEYS: 1 due; ARGV: 1 id, 2 now, 3 now + lease
_CLAIM: Final = """
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not s or tonumber(s) > tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
"""


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _strs(items: Iterable[Any]) -> list[str]:
    """Members as str (the client decodes responses; the stubs cannot know)."""
    return [x if isinstance(x, str) else x.decode() for x in items]


def client_from_config(url: str, cfg: RedisConfig) -> aioredis.Redis:
    """A client for ``url`` with the password (from ``password_env``), TLS and timeouts of ``cfg``."""
    kwargs: dict[str, Any] = {
        "decode_responses": True,
        "socket_connect_timeout": cfg.connect_timeout_s,
        "socket_timeout": cfg.command_timeout_s,
        "retry": Retry(NoBackoff(), 1),  # one reconnect (a pooled connection the server closed)
    }
    if cfg.username:
        kwargs["username"] = cfg.username
    password = cfg.password()
    if password:
        kwargs["password"] = password
    if cfg.tls and url.startswith("redis://"):
        url = "rediss://" + url.removeprefix("redis://")
    if url.startswith("rediss://"):
        kwargs["ssl_cert_reqs"] = "required" if cfg.tls_verify else "none"
        if cfg.tls_ca_file:
            kwargs["ssl_ca_certs"] = str(cfg.tls_ca_file)
        if cfg.tls_cert_file:
            kwargs["ssl_certfile"] = str(cfg.tls_cert_file)
        if cfg.tls_key_file:
            kwargs["ssl_keyfile"] = str(cfg.tls_key_file)
    return aioredis.from_url(url, **kwargs)


class CommitmentStore:
    def __init__(self, client: aioredis.Redis, prefix: str = "ringwatch:", *, wait_aof: bool = False,
                 wait_replicas: int = 0, wait_timeout_ms: int = 1000) -> None:
        self.client = client
        self.p = prefix
        self._wait_aof = wait_aof
        self._wait_replicas = wait_replicas
        self._wait_timeout = wait_timeout_ms
        self._save = client.register_script(_SAVE)
        self._claim = client.register_script(_CLAIM)
        self.available = True  # the last operation reached Redis
        self.failures = 0

    @classmethod
    def from_config(cls, url: str, cfg: RedisConfig, prefix: str) -> CommitmentStore:
        return cls(client_from_config(url, cfg), prefix, wait_aof=cfg.wait_aof, wait_replicas=cfg.wait_replicas,
                   wait_timeout_ms=cfg.wait_timeout_ms)

    async def close(self) -> None:
        await self.client.aclose()

    @asynccontextmanager
    async def _op(self, what: str) -> AsyncIterator[None]:
        try:
            yield
        except _UNAVAILABLE as e:
            if self.available:
                log.warning("commitments store: Redis unavailable (%s): %s", what, type(e).__name__)
            self.available = False
            self.failures += 1
            raise StoreUnavailable(f"Redis unavailable ({type(e).__name__})") from e
        self.available = True

    # -- checks ----------------------------------------------------------------------

    async def ping(self) -> bool:
        try:
            async with self._op("ping"):
                await self.client.ping()
        except StoreUnavailable:
            return False
        return True

    async def durability_warning(self) -> str | None:
        """Why an acknowledged write might not survive a crash of the server, or None if it does (or we
        cannot tell: ``CONFIG`` disabled)."""
        if self._wait_aof:
            return None
        try:
            async with self._op("config"):
                got = await self.client.config_get("append*")
        except RedisError:  # CONFIG renamed/forbidden (managed services): nothing to check
            return None
        if got.get("appendonly") != "yes" or got.get("appendfsync") != "always":
            return (f"Redis runs appendonly={got.get('appendonly')} appendfsync={got.get('appendfsync')}: "
                    "an acknowledged commitment can be lost if Redis crashes; use appendonly yes + appendfsync "
                    "always, or redis.wait_aof")
        return None

    # -- writes ----------------------------------------------------------------------

    def _key(self, *parts: str) -> str:
        return self.p + ":".join(parts)

    async def new_id(self) -> str:
        async with self._op("id"):
            n = await self.client.incr(self._key("seq"))
        return f"C{n}"

    async def save(self, cid: str, data: dict[str, Any], expected_version: int, change: Change) -> int:
        """Write ``data`` if the stored version is still ``expected_version`` (0: new); the new version."""
        keys = [self._key("c", cid), self._key("due"), self._key("h", cid), self._key("all"),
                self._key("kind", change.kind), self._key("num", change.number), self._key("stats"),
                self._key("state", change.old_state or change.new_state), self._key("state", change.new_state),
                self._key("idem", change.idempotency_key) if change.idempotency_key else self._key("c", cid)]
        nxt = "" if change.next_wall is None else repr(change.next_wall)
        args: list[str | int | float] = [
            expected_version, _dumps(data), nxt, _dumps(change.history), cid, repr(change.created_wall),
            repr(change.due_wall), "1" if change.in_number_index else "0", change.old_stat or "", change.new_stat,
            change.old_state or "", change.new_state, "1" if change.idempotency_key else "0", IDEMPOTENCY_TTL_S]
        async with self._op("save"):
            version = int(await self._save(keys=keys, args=args))
            if version > 0:
                await self._confirm()
            elif version == -2 and change.idempotency_key:
                existing = await self.client.get(self._key("idem", change.idempotency_key))
                raise Duplicate(str(existing))
        if version < 0:
            raise Conflict(cid)
        return version

    async def reschedule(self, cid: str, next_wall: float | None) -> None:
        """Fix the due index of ``cid`` without changing it (a stale or released deadline)."""
        async with self._op("reschedule"):
            if next_wall is None:
                await self.client.zrem(self._key("due"), cid)
            else:
                await self.client.zadd(self._key("due"), {cid: next_wall})

    async def _confirm(self) -> None:
        if self._wait_aof:
            local, replicas = await self.client.execute_command(  # type: ignore[no-untyped-call]
                "WAITAOF", 1, self._wait_replicas, self._wait_timeout)
            if int(local) < 1 or int(replicas) < self._wait_replicas:
                raise StoreUnavailable(f"write not confirmed durable (WAITAOF: local {local}, replicas {replicas})")
        elif self._wait_replicas:
            n = await self.client.execute_command(  # type: ignore[no-untyped-call]
                "WAIT", self._wait_replicas, self._wait_timeout)
            if int(n) < self._wait_replicas:
                raise StoreUnavailable(f"write reached {n} of {self._wait_replicas} replicas")

    async def claim(self, cid: str, now_wall: float, lease_s: float) -> bool:
        """Own the due deadline of ``cid`` for ``lease_s``: True for exactly one caller while it is due."""
        async with self._op("claim"):
            got = await self._claim(keys=[self._key("due")], args=[cid, repr(now_wall), repr(now_wall + lease_s)])
        return bool(int(got))

    # -- reads ------------------------------------------------------------------------

    async def load(self, cid: str) -> Stored | None:
        async with self._op("load"):
            got = await self.client.hmget(self._key("c", cid), ["d", "v"])
        if got[0] is None:
            return None
        return Stored(json.loads(got[0]), int(got[1] or 0))

    async def load_many(self, ids: Sequence[str]) -> list[Stored]:
        if not ids:
            return []
        async with self._op("load"), self.client.pipeline(transaction=False) as pipe:
            for cid in ids:
                pipe.hmget(self._key("c", cid), ["d", "v"])
            rows = await pipe.execute()
        return [Stored(json.loads(d), int(v or 0)) for d, v in rows if d is not None]

    async def ids(self, *, state: str | None = None, kind: str | None = None, number: str | None = None,
                  due_from: float | None = None, due_to: float | None = None, limit: int = 1000) -> list[str]:
        """Ids: by customer number, by kind and due range, by state (no order), else all newest first."""
        async with self._op("ids"):
            if number is not None:
                return sorted(_strs(await self.client.smembers(self._key("num", number))))
            if kind is not None and (due_from is not None or due_to is not None):
                lo = "-inf" if due_from is None else repr(due_from)
                hi = "+inf" if due_to is None else f"({due_to!r}"
                return _strs(await self.client.zrangebyscore(self._key("kind", kind), lo, hi))
            if state is not None:
                return sorted(_strs(await self.client.smembers(self._key("state", state))))
            return _strs(await self.client.zrevrange(self._key("all"), 0, limit - 1))

    async def due(self, now_wall: float, limit: int = 100) -> list[str]:
        async with self._op("due"):
            return _strs(await self.client.zrangebyscore(self._key("due"), "-inf", repr(now_wall), start=0, num=limit))

    async def next_due(self) -> float | None:
        async with self._op("next"):
            got = await self.client.zrange(self._key("due"), 0, 0, withscores=True)
        return float(got[0][1]) if got else None

    async def history(self, cid: str) -> list[dict[str, Any]]:
        async with self._op("history"):
            rows: list[Any] = list(await self.client.xrange(self._key("h", cid)) or [])
        return [json.loads(fields["e"]) for _id, fields in rows]

    async def stats(self) -> dict[str, int]:
        async with self._op("stats"):
            got = await self.client.hgetall(self._key("stats"))
        return {str(k): int(v) for k, v in got.items()}
