"""OUT-DNC: the do-not-call list (拒绝呼出名单) in Redis, a local copy for the pre-dial check, CSV in and out.

A customer who says "do not call me" is put on the list (API, CRM import); the number is then
refused by the permit check and any dial to it raises OUT-DNC, through the end of the cooling
period: ``outbound.dnc_cooling_days`` (90) *local days* from the request (an entry made on day 0
blocks through day 89 and stops blocking at 00:00 of day 90).  After that the entry expires
(``on_expiry: expire``: it no longer blocks and is dropped by the sweep) or waits for a person
(``review``: it keeps blocking, listed as ``review``, until it is removed or renewed).

**Numbers** are normalised so one customer is one entry (:func:`normalize_number`): ``+86 139-1234-5678``,
``0086 13912345678``, ``8613912345678``, ``013912345678`` and ``139 1234 5678`` are all ``13912345678``;
``(010) 1234-5678`` and ``+86 10 12345678`` are ``1012345678`` (the national number, no trunk 0);
other countries keep ``+`` and their country code.

**Redis keys** (``p`` = ``commitments.key_prefix``, default ``ringwatch:``):

=====================  ===========  =======================================================
``p dnc:e``            hash         number -> entry (JSON, :meth:`DncEntry.dumps`)
``p dnc:until``        sorted set   number -> end of its cooling period (Unix time)
``p dnc:changes``      stream       every change, in order: ``s`` sequence, ``op`` put/del,
                                    ``n`` number, ``e`` entry (put); trimmed to ~1,000,000
``p dnc:seq``          string       the sequence of the last change (``INCR``)
``p audit``            stream       the shared audit trail (see below)
=====================  ===========  =======================================================

Every change is one Lua script (:data:`_PUT`, :data:`_DEL`): the entry, the expiry index, the
change record and the audit entry together or not at all; removals and sweeps are
compare-and-set on the entry read before, so two instances never both expire or remove it.

**Audit.** Each change appends to the shared stream ``p audit`` (the shape of ``monitor/audit.py``:
fields ``ts`` Unix seconds, ``actor`` token / user name or ``system``, ``action``, ``target`` the
masked number, ``details`` a JSON object).  Actions: ``dnc.add`` (new entry), ``dnc.renew`` (a new
request for a listed number: the cooling period restarts), ``dnc.remove``, ``dnc.expire``,
``dnc.review_due``; a CSV import writes one entry per row (``details.batch``) and one ``dnc.import``
summary.  ``details`` carries the full normalised ``number`` (the audit stream is admin-only), the
``reason``, ``agent``, ``source_call``, ``requested_at`` / ``until`` (ISO 8601) and, for a removal,
the removal ``reason`` and the removed ``entry``.

**Local copy.** :class:`DncService` keeps the whole list in memory (a dict; ~100 k entries are a few
tens of MB) so the permit check and the live rule never wait for Redis: it loads the hash at start
(``HSCAN``) and then follows ``p dnc:changes`` (``XREAD BLOCK``), applying changes in sequence order;
a gap in the sequence (the stream was trimmed past it) reloads everything.  Writes made here are
applied at once.  While Redis is unreachable the copy keeps answering; once it is older than
``dnc_max_stale_s`` it counts as unavailable (``dnc_unavailable``: deny or allow).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime as dt
import io
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from config.schema import Config
from monitor.clock import Clock
from monitor.privacy import mask_number

log = logging.getLogger(__name__)

DncState = Literal["active", "review", "expired"]
CHANGES_MAXLEN: Final = 1_000_000
IMPORT_BATCH: Final = 1000
MAX_REASON: Final = 500
CSV_FIELDS: Final = ("number", "reason", "agent", "source_call", "requested_at", "until", "state", "by", "source")
_SEPARATORS: Final = frozenset(" -.()/\t\u00a0")


class InvalidNumber(ValueError):
    """Not a phone number ringwatch can put on the list."""


class StoreUnavailable(Exception):
    """Redis cannot be reached."""


_UNAVAILABLE: Final = (RedisError, OSError, TimeoutError)


def normalize_number(raw: str, dial_prefixes: Sequence[str] = ()) -> str:
    """The canonical form of a phone number (see the module doc); ``InvalidNumber`` if it is none.

    ``dial_prefixes``: digits the PBX dials before the number that are not part of it (an
    outside-line ``9``), stripped once — for numbers taken from dials, not from people."""
    s = raw.strip()
    if not s or len(s) > 40:
        raise InvalidNumber("empty or too long")
    plus = s.startswith("+")
    body = s[1:] if plus else s
    digits = []
    for c in body:
        if "0" <= c <= "9":
            digits.append(c)
        elif c not in _SEPARATORS:
            raise InvalidNumber(f"unexpected character {c!r}")
    d = "".join(digits)
    if not plus:
        for p in dial_prefixes:
            if d.startswith(p) and len(d) - len(p) >= 5:
                d = d[len(p):]
                break
    if plus or d.startswith("00"):
        d = d if plus else d[2:]
        if not d.startswith("86"):
            if not 6 <= len(d) <= 15:
                raise InvalidNumber("an international number has 6 to 15 digits")
            return "+" + d
        d = d[2:]
    elif d.startswith("86") and len(d) == 13 and d[2] == "1":  # 86 + a mobile number, no +
        d = d[2:]
    if d.startswith("0"):
        d = d[1:]  # the trunk prefix: 010 1234 5678 -> 10 1234 5678, 0139... -> 139...
    if not 5 <= len(d) <= 15:
        raise InvalidNumber("a number has 5 to 15 digits")
    return d


def cooling_end(requested_wall: float, days: int, tz: dt.tzinfo) -> float:
    """The end of the cooling period: 00:00 local of the ``days``-th day after the request's day."""
    day = dt.datetime.fromtimestamp(requested_wall, tz).date() + dt.timedelta(days=days)
    return dt.datetime.combine(day, dt.time(), tz).timestamp()


def _iso(wall: float | None, tz: ZoneInfo) -> str | None:
    return None if wall is None else dt.datetime.fromtimestamp(wall, tz).isoformat(timespec="seconds")


def parse_time(raw: str, tz: ZoneInfo) -> float:
    """Unix seconds, or ISO 8601 (a date, or a date and time; no offset: ``tz``)."""
    raw = raw.strip()
    try:
        return float(raw)
    except ValueError:
        pass
    when = dt.datetime.fromisoformat(raw)  # ValueError if it is not ISO 8601
    if when.tzinfo is None:
        when = when.replace(tzinfo=tz)
    return when.timestamp()


Row = tuple[str, str, float, float, str, str | None, str | None, str, float | None]


@dataclass(frozen=True, slots=True)
class DncEntry:
    number: str  # normalised
    reason: str
    requested_at: float  # Unix time of the customer's request
    until: float  # end of the cooling period (Unix time)
    by: str  # who put it on the list (token / user name, "import", "pbx")
    agent: str | None = None  # the agent the customer told
    source_call: str | None = None
    source: str = "api"  # api | import | pbx
    review_due_at: float | None = None  # review policy: when the sweep listed it for review

    def state(self, now_wall: float, on_expiry: str) -> DncState:
        if now_wall < self.until:
            return "active"
        return "review" if on_expiry == "review" else "expired"

    def blocks(self, now_wall: float, on_expiry: str) -> bool:
        return self.state(now_wall, on_expiry) != "expired"

    def row(self) -> Row:
        """As a plain tuple of strings and numbers: the garbage collector stops tracking those, so a list of
        100,000 entries adds nothing to a full collection (as dataclasses it costs ~90 ms a pass)."""
        return (self.number, self.reason, self.requested_at, self.until, self.by, self.agent, self.source_call,
                self.source, self.review_due_at)

    def dumps(self) -> str:
        d: dict[str, Any] = {"n": self.number, "r": self.reason, "q": self.requested_at, "u": self.until,
                             "b": self.by, "s": self.source}
        if self.agent:
            d["a"] = self.agent
        if self.source_call:
            d["c"] = self.source_call
        if self.review_due_at is not None:
            d["v"] = self.review_due_at
        return json.dumps(d, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def loads(cls, raw: str) -> DncEntry:
        d = json.loads(raw)
        return cls(str(d["n"]), str(d.get("r", "")), float(d["q"]), float(d["u"]), str(d.get("b", "")),
                   d.get("a"), d.get("c"), str(d.get("s", "api")), d.get("v"))

    def to_json(self, tz: ZoneInfo, now_wall: float, on_expiry: str, shown: str | None = None) -> dict[str, Any]:
        return {"number": shown if shown is not None else self.number, "reason": self.reason,
                "requested_at": _iso(self.requested_at, tz), "until": _iso(self.until, tz),
                "state": self.state(now_wall, on_expiry), "agent": self.agent, "source_call": self.source_call,
                "by": self.by, "source": self.source, "review_due_at": _iso(self.review_due_at, tz)}

    def audit_details(self, tz: ZoneInfo) -> dict[str, Any]:
        return {"number": self.number, "reason": self.reason, "agent": self.agent, "source_call": self.source_call,
                "requested_at": _iso(self.requested_at, tz), "until": _iso(self.until, tz), "source": self.source}


# KEYS: 1 entries, 2 until, 3 changes, 4 seq, 5 audit
# ARGV: 1 number, 2 entry JSON, 3 until, 4 '1' = compare-and-set on ARGV[5], 5 expected JSON ('' = absent),
#       6 changes maxlen, 7 ts, 8 actor, 9 action (new entry), 10 action (existing entry), 11 target, 12 details
# Returns {sequence of the change, previous JSON or ''}; {0, 'conflict'} when the CAS failed.
_PUT: Final = """
local old = redis.call('HGET', KEYS[1], ARGV[1]) or ''
if ARGV[4] == '1' and old ~= ARGV[5] then return {0, 'conflict'} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
local s = redis.call('INCR', KEYS[4])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*', 's', s, 'op', 'put', 'n', ARGV[1], 'e', ARGV[2])
local action = ARGV[9]
if old ~= '' then action = ARGV[10] end
redis.call('XADD', KEYS[5], '*', 'ts', ARGV[7], 'actor', ARGV[8], 'action', action, 'target', ARGV[11],
           'details', ARGV[12])
return {s, old}
"""

# KEYS as _PUT; ARGV: 1 changes maxlen, 2 ts, 3 actor, 4 action (new entry), 5 action (existing entry), then per
# entry 5 values: number, entry JSON, until, target, details.  Returns {sequence of the first change, one character
# per entry: '1' it replaced an entry, '0' it is new} (the sequences of one call are consecutive).
_PUT_MANY: Final = """
local first = 0
local flags = {}
for i = 6, #ARGV, 5 do
  local n = ARGV[i]
  local old = redis.call('HGET', KEYS[1], n) or ''
  redis.call('HSET', KEYS[1], n, ARGV[i + 1])
  redis.call('ZADD', KEYS[2], ARGV[i + 2], n)
  local s = redis.call('INCR', KEYS[4])
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[1], '*', 's', s, 'op', 'put', 'n', n, 'e', ARGV[i + 1])
  local action = ARGV[4]
  if old ~= '' then action = ARGV[5] end
  redis.call('XADD', KEYS[5], '*', 'ts', ARGV[2], 'actor', ARGV[3], 'action', action, 'target', ARGV[i + 3],
             'details', ARGV[i + 4])
  if first == 0 then first = s end
  if old ~= '' then flags[#flags + 1] = '1' else flags[#flags + 1] = '0' end
end
return {first, table.concat(flags)}
"""

# KEYS as _PUT; ARGV: 1 number, 2 expected JSON, 3 changes maxlen, 4 ts, 5 actor, 6 action, 7 target, 8 details
# Returns the sequence of the change, 0 when the entry is not (or no longer) the expected one.
_DEL: Final = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old or old ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
local s = redis.call('INCR', KEYS[4])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 's', s, 'op', 'del', 'n', ARGV[1])
redis.call('XADD', KEYS[5], '*', 'ts', ARGV[4], 'actor', ARGV[5], 'action', ARGV[6], 'target', ARGV[7],
           'details', ARGV[8])
return s
"""


def _s(x: Any) -> str:
    return x if isinstance(x, str) else bytes(x).decode("utf-8", "replace")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class Change:
    seq: int
    op: Literal["put", "del"]
    number: str
    entry: DncEntry | None


@dataclass(frozen=True, slots=True)
class Audit:
    ts: float
    actor: str
    target: str
    details: dict[str, Any]


class DncStore:
    """The list in Redis.  Every failure to reach Redis is :class:`StoreUnavailable`."""

    def __init__(self, client: aioredis.Redis, prefix: str = "ringwatch:") -> None:
        self.client = client
        self.p = prefix
        self.k_entries, self.k_until = prefix + "dnc:e", prefix + "dnc:until"
        self.k_changes, self.k_seq, self.k_audit = prefix + "dnc:changes", prefix + "dnc:seq", prefix + "audit"
        self._put = client.register_script(_PUT)
        self._del = client.register_script(_DEL)
        self._put_many = client.register_script(_PUT_MANY)

    @property
    def _keys(self) -> list[str]:
        return [self.k_entries, self.k_until, self.k_changes, self.k_seq, self.k_audit]

    def _put_args(self, e: DncEntry, a: Audit, expected: str | None, new_action: str,
                  old_action: str) -> list[str | int | float]:
        return [e.number, e.dumps(), repr(e.until), "1" if expected is not None else "0", expected or "",
                CHANGES_MAXLEN, f"{a.ts:.3f}", a.actor, new_action, old_action, a.target, _dumps(a.details)]

    async def put(self, e: DncEntry, a: Audit, *, expected: str | None = None, new_action: str = "dnc.add",
                  old_action: str = "dnc.renew") -> tuple[int, str | None] | None:
        """Write ``e``; (sequence of the change, previous JSON or None).  With ``expected`` (``""``: absent):
        only if the stored entry is still that, else None."""
        try:
            got = await self._put(keys=self._keys, args=self._put_args(e, a, expected, new_action, old_action))
        except _UNAVAILABLE as ex:
            raise StoreUnavailable(type(ex).__name__) from ex
        seq, old = int(got[0]), _s(got[1])
        if not seq:
            return None
        return seq, (old or None)

    async def put_many(self, rows: Sequence[tuple[DncEntry, Audit]], new_action: str,
                       old_action: str) -> list[tuple[int, bool]]:
        """Write every row with one script call (one audit entry each; ``ts`` and ``actor`` of the first);
        (sequence, whether it replaced an entry) of each."""
        if not rows:
            return []
        a0 = rows[0][1]
        args: list[str | int | float] = [CHANGES_MAXLEN, f"{a0.ts:.3f}", a0.actor, new_action, old_action]
        for e, a in rows:
            args += [e.number, e.dumps(), repr(e.until), a.target, _dumps(a.details)]
        try:
            got = await self._put_many(keys=self._keys, args=args)
        except _UNAVAILABLE as ex:
            raise StoreUnavailable(type(ex).__name__) from ex
        first, flags = int(got[0]), _s(got[1])
        return [(first + i, f == "1") for i, f in enumerate(flags)]

    async def delete(self, number: str, expected: str, a: Audit, action: str) -> int | None:
        """Remove ``number`` if its stored entry is still ``expected``; the change's sequence, or None."""
        try:
            got = await self._del(keys=self._keys, args=[number, expected, CHANGES_MAXLEN, f"{a.ts:.3f}", a.actor,
                                                          action, a.target, _dumps(a.details)])
        except _UNAVAILABLE as ex:
            raise StoreUnavailable(type(ex).__name__) from ex
        return int(got) or None

    async def audit(self, a: Audit, action: str) -> None:
        try:
            await self.client.xadd(self.k_audit, {"ts": f"{a.ts:.3f}", "actor": a.actor, "action": action,
                                                  "target": a.target, "details": _dumps(a.details)})
        except _UNAVAILABLE as ex:
            raise StoreUnavailable(type(ex).__name__) from ex

    async def get_raw(self, number: str) -> str | None:
        try:
            got = await self.client.hget(self.k_entries, number)
        except _UNAVAILABLE as ex:
            raise StoreUnavailable(type(ex).__name__) from ex
        return None if got is None else _s(got)

    async def seq(self) -> int:
        try:
            got = await self.client.get(self.k_seq)
        except _UNAVAILABLE as ex:
            raise StoreUnavailable(type(ex).__name__) from ex
        return int(got or 0)

    async def scan(self, count: int = 5000) -> AsyncIterator[list[tuple[str, str]]]:
        """Every (number, JSON), in batches."""
        cursor: int = 0
        try:
            while True:
                got: Any = await self.client.hscan(self.k_entries, cursor, count=count)
                cursor, batch = int(got[0]), got[1]
                yield [(_s(k), _s(v)) for k, v in batch.items()]
                if int(cursor) == 0:
                    return
        except _UNAVAILABLE as ex:
            raise StoreUnavailable(type(ex).__name__) from ex

    async def last_change_id(self) -> str:
        try:
            got = await self.client.xrevrange(self.k_changes, count=1)
        except _UNAVAILABLE as ex:
            raise StoreUnavailable(type(ex).__name__) from ex
        return _s(got[0][0]) if got else "0-0"

    async def changes(self, after: str, block_ms: int | None, count: int = 5000) -> list[tuple[str, Change]]:
        try:
            got: Any = await self.client.xread({self.k_changes: after}, count=count, block=block_ms)
        except _UNAVAILABLE as ex:
            raise StoreUnavailable(type(ex).__name__) from ex
        out: list[tuple[str, Change]] = []
        for _stream, rows in got or []:
            for raw_id, fields in rows:
                f = {_s(k): _s(v) for k, v in fields.items()}
                op: Literal["put", "del"] = "put" if f.get("op") == "put" else "del"
                entry = DncEntry.loads(f["e"]) if op == "put" and f.get("e") else None
                out.append((_s(raw_id), Change(int(f.get("s", 0)), op, f.get("n", ""), entry)))
        return out

    async def due(self, now_wall: float, limit: int = 1000) -> list[str]:
        try:
            got = await self.client.zrangebyscore(self.k_until, "-inf", repr(now_wall), start=0, num=limit)
        except _UNAVAILABLE as ex:
            raise StoreUnavailable(type(ex).__name__) from ex
        return [_s(x) for x in got]


# -- CSV import ---------------------------------------------------------------------------------


@dataclass(slots=True)
class ImportReport:
    rows: int = 0
    added: int = 0
    renewed: int = 0
    duplicates: int = 0  # the same customer again later in the file (the later row wins)
    skipped_expired: int = 0  # cooling period already over (on_expiry: expire)
    errors: list[dict[str, Any]] = field(default_factory=list)
    errors_total: int = 0
    batch: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"batch": self.batch, "rows": self.rows, "added": self.added, "renewed": self.renewed,
                "duplicates": self.duplicates, "skipped_expired": self.skipped_expired,
                "errors_total": self.errors_total, "errors": self.errors}


MAX_REPORTED_ERRORS: Final = 1000


def ascii_compatible(encoding: str) -> bool:
    """An encoding whose lines can be split on the byte ``\\n`` before decoding (UTF-8, GBK, GB18030, ...)."""
    try:
        return "number,\n".encode(encoding) == b"number,\n"
    except LookupError:
        return False


class ByteLines:
    """Bytes in, complete lines (bytes, with their end) out; ``\\n`` never occurs inside a character of an
    ASCII-compatible encoding, so each line can be decoded (and rejected) on its own."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes, final: bool = False) -> list[bytes]:
        buf = self._buf + data
        lines = buf.split(b"\n")
        self._buf = lines.pop()
        out = [line + b"\n" for line in lines]
        if final and self._buf:
            out.append(self._buf)
            self._buf = b""
        return out


class EntryView(Mapping[str, DncEntry]):
    """The local copy as number -> :class:`DncEntry`, read-only, over GC-untracked rows."""

    def __init__(self, rows: dict[str, Row]) -> None:
        self._rows = rows

    def __getitem__(self, number: str) -> DncEntry:
        return DncEntry(*self._rows[number])

    def get_entry(self, number: str) -> DncEntry | None:
        row = self._rows.get(number)
        return None if row is None else DncEntry(*row)

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, number: object) -> bool:
        return number in self._rows

    def untils(self) -> Iterable[tuple[str, float]]:
        return ((n, r[3]) for n, r in self._rows.items())


# -- the service ----------------------------------------------------------------------------


class DncService:
    """The list: Redis for truth, a local copy for lookups, the sweep of expired / review-due entries."""

    def __init__(self, cfg: Config, store: DncStore | None, clock: Clock) -> None:
        self.cfg = cfg
        self.ocfg = cfg.outbound
        self.store = store
        self.clock = clock
        self.tz = ZoneInfo(self.ocfg.timezone or cfg.timezone)
        self.on_expiry = self.ocfg.on_expiry
        self._rows: dict[str, Row] = {}
        self.entries = EntryView(self._rows)
        self._applied: dict[str, int] = {}  # number -> sequence of the change applied last
        self._tombs: dict[str, int] = {}  # removed numbers -> sequence of the removal (until sync passes it)
        self.loaded = False
        self.last_seq = 0
        self._last_id = "0-0"
        self.synced_at: float | None = None  # clock time of the last successful read from Redis
        self.store_up = False
        self.reloads = 0
        self.review_due = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._guard(self._sync_loop), name="dnc-sync"),
                       asyncio.create_task(self._guard(self._sweep_loop), name="dnc-sweep")]

    async def stop(self) -> None:
        self._stopping = True
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            while not t.done():  # see CommitmentService.stop: a cancel racing a reply can be swallowed
                await asyncio.wait({t}, timeout=1.0)
                t.cancel()
        self._tasks = []

    async def _guard(self, fn: Callable[[], Any]) -> None:
        try:
            await fn()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("dnc: %s failed", getattr(fn, "__name__", "task"))

    async def _wait(self, seconds: float) -> None:
        """Wait ``seconds`` of clock time (a clock timer, never a sleep)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not fut.done():
                fut.set_result(None)

        timer = self.clock.call_at(self.clock.now() + seconds, wake)
        try:
            await fut
        finally:
            timer.cancel()

    async def _sync_loop(self) -> None:
        delay = 0.5
        while not self._stopping:
            try:
                await self.sync_once(block_ms=1000)
                delay = 0.5
            except StoreUnavailable as e:
                if self.store_up:
                    log.warning("dnc: Redis unavailable (%s); answering from the local copy of %d entries",
                                e, len(self.entries))
                self.store_up = False
                await self._wait(delay)
                delay = min(delay * 2, 30.0)

    async def _sweep_loop(self) -> None:
        while not self._stopping:
            with contextlib.suppress(StoreUnavailable):
                await self.sweep()
            await self._wait(self.ocfg.sweep_interval_s)

    # -- the local copy ------------------------------------------------------------------------

    def now_wall(self) -> float:
        return self.clock.wall(self.clock.now())

    @property
    def available(self) -> bool:
        """The local copy may be trusted: loaded, and read from Redis within ``dnc_max_stale_s``."""
        return (self.loaded and self.synced_at is not None
                and self.clock.now() - self.synced_at <= self.ocfg.dnc_max_stale_s)

    def lookup(self, number: str) -> tuple[bool, DncEntry | None]:
        """(available, entry) for a normalised number, from the local copy (no I/O)."""
        row = self._rows.get(number)
        return self.available, (None if row is None else DncEntry(*row))

    async def load(self) -> None:
        """(Re)load the whole list from Redis."""
        if self.store is None:
            raise StoreUnavailable("no store")
        last_id = await self.store.last_change_id()
        seq = await self.store.seq()
        rows: dict[str, Row] = {}
        async for batch in self.store.scan():
            for number, raw in batch:
                try:
                    rows[number] = DncEntry.loads(raw).row()
                except (ValueError, KeyError, TypeError):
                    log.error("dnc: unreadable entry for %s ignored", mask_number(number))
        self._rows = rows
        self.entries = EntryView(rows)
        self._applied = dict.fromkeys(rows, seq)
        self._tombs = {}
        self._last_id, self.last_seq = last_id, seq
        self.loaded = True
        self.reloads += 1
        self.synced_at = self.clock.now()
        self.store_up = True
        log.info("dnc: %d entries loaded", len(rows))

    async def sync_once(self, block_ms: int | None = None) -> int:
        """Apply the changes made since the last read (loading everything first if needed); how many."""
        if self.store is None:
            raise StoreUnavailable("no store")
        if not self.loaded:
            await self.load()
            return len(self.entries)
        got = await self.store.changes(self._last_id, block_ms)
        applied = 0
        for cid, ch in got:
            if ch.seq != self.last_seq + 1 and ch.seq > self.last_seq:
                log.warning("dnc: change %d missed (got %d): reloading the list", self.last_seq + 1, ch.seq)
                await self.load()
                return len(self.entries)
            self._apply(ch)
            self.last_seq = max(self.last_seq, ch.seq)
            self._last_id = cid
            applied += 1
        for number in [n for n, s in self._tombs.items() if s <= self.last_seq]:
            del self._tombs[number]
        self.synced_at = self.clock.now()
        self.store_up = True
        return applied

    def _apply(self, ch: Change) -> None:
        n = ch.number
        if ch.seq <= max(self._applied.get(n, 0), self._tombs.get(n, 0)):
            return  # this instance already applied a later change of the number
        if ch.op == "put" and ch.entry is not None:
            self._rows[n] = ch.entry.row()
            self._applied[n] = ch.seq
            self._tombs.pop(n, None)
        else:
            self._rows.pop(n, None)
            self._applied.pop(n, None)
            self._tombs[n] = ch.seq

    def _applied_locally(self, seq: int, entry: DncEntry | None, number: str) -> None:
        """A write made here, applied to the copy at once with its sequence: a later change of the same
        number that the sync already applied wins; the same change coming back from the stream is a no-op."""
        self._apply(Change(seq, "put" if entry is not None else "del", number, entry))

    # -- writes ---------------------------------------------------------------------------------

    def _require(self) -> DncStore:
        if self.store is None:
            raise StoreUnavailable("no store")
        return self.store

    def shown(self, number: str) -> str:
        return (mask_number(number) or "") if self.cfg.privacy.mask_callers else number

    def new_entry(self, number: str, reason: str, by: str, *, agent: str | None = None,
                  source_call: str | None = None, source: str = "api", requested_at: float | None = None) -> DncEntry:
        requested = self.now_wall() if requested_at is None else requested_at
        return DncEntry(number, reason, requested, cooling_end(requested, self.ocfg.dnc_cooling_days, self.tz), by,
                        agent, source_call, source)

    async def add(self, entry: DncEntry) -> tuple[DncEntry, DncEntry | None]:
        """Put ``entry`` on the list (a listed number is renewed: its cooling period restarts); (entry, previous)."""
        store = self._require()
        a = Audit(self.now_wall(), entry.by, mask_number(entry.number) or "", entry.audit_details(self.tz))
        got = await store.put(entry, a)
        assert got is not None
        seq, old = got
        self._applied_locally(seq, entry, entry.number)
        previous = DncEntry.loads(old) if old else None
        log.info("dnc: %s %s by %s until %s", "renewed" if previous else "added", mask_number(entry.number),
                 entry.by, _iso(entry.until, self.tz))
        return entry, previous

    async def get(self, number: str) -> DncEntry | None:
        """From Redis (the truth); ``StoreUnavailable`` when it cannot be read."""
        raw = await self._require().get_raw(number)
        return DncEntry.loads(raw) if raw else None

    async def remove(self, number: str, reason: str, by: str) -> DncEntry | None:
        """Take ``number`` off the list; the removed entry, or None if it was not listed."""
        store = self._require()
        for _ in range(5):
            raw = await store.get_raw(number)
            if raw is None:
                return None
            old = DncEntry.loads(raw)
            a = Audit(self.now_wall(), by, mask_number(number) or "",
                      {"number": number, "reason": reason, "entry": old.audit_details(self.tz)})
            seq = await store.delete(number, raw, a, "dnc.remove")
            if seq is not None:
                self._applied_locally(seq, None, number)
                log.info("dnc: %s removed by %s", mask_number(number), by)
                return old
        raise StoreUnavailable("the entry kept changing")

    async def sweep(self, limit: int = 1000) -> int:
        """Entries past their cooling period: dropped (expire) or marked review-due (review), audited once."""
        store = self._require()
        now = self.now_wall()
        done = 0
        due = await store.due(now, limit)
        review = 0
        for number in due:
            raw = await store.get_raw(number)
            if raw is None:
                continue
            e = DncEntry.loads(raw)
            if e.until > now:
                continue
            details = e.audit_details(self.tz)
            target = mask_number(number) or ""
            if self.on_expiry == "expire":
                seq = await store.delete(number, raw, Audit(now, "system", target, details), "dnc.expire")
                if seq is not None:
                    self._applied_locally(seq, None, number)
                    done += 1
            else:
                review += 1
                if e.review_due_at is not None:
                    continue
                new = replace(e, review_due_at=now)
                got = await store.put(new, Audit(now, "system", target, details), expected=raw,
                                      new_action="dnc.review_due", old_action="dnc.review_due")
                if got is not None:
                    self._applied_locally(got[0], new, number)
                    done += 1
        self.review_due = review
        if done:
            log.info("dnc: %d entries %s", done, "expired" if self.on_expiry == "expire" else "due for review")
        return done

    # -- CSV --------------------------------------------------------------------------------------

    async def import_csv(self, chunks: AsyncIterator[bytes], by: str, encoding: str = "utf-8") -> ImportReport:
        """Rows ``number,reason,agent,source_call,requested_at`` (a header line naming the columns; only
        ``number`` is required) into the list.  Bad rows are reported by line and skipped; the good ones
        are written in batches.  ``StoreUnavailable`` stops the import (what was written stays)."""
        store = self._require()
        report = ImportReport(batch=uuid.uuid4().hex[:12])
        if not ascii_compatible(encoding):
            raise ValueError(f"encoding {encoding!r} is not ASCII-compatible (use UTF-8, GBK or GB18030)")
        splitter = ByteLines()
        header: list[str] | None = None
        seen: set[str] = set()
        pending: list[tuple[DncEntry, Audit]] = []
        now = self.now_wall()
        line_no = 0

        def error(line: int, zh: str, en: str) -> None:
            report.errors_total += 1
            if len(report.errors) < MAX_REPORTED_ERRORS:
                report.errors.append({"line": line, "error": {"zh": zh, "en": en}})

        async def flush() -> None:
            if not pending:
                return
            olds = await store.put_many(pending, "dnc.add", "dnc.renew")
            for (e, _a), (seq, replaced) in zip(pending, olds, strict=True):
                self._applied_locally(seq, e, e.number)
                if replaced:
                    report.renewed += 1
                else:
                    report.added += 1
            pending.clear()

        async def rows() -> AsyncIterator[tuple[int, list[str]]]:
            """(first physical line, fields) of every record; a quoted field may span lines."""
            nonlocal line_no
            record, quotes, start = "", 0, 0
            it = chunks.__aiter__()
            final = False
            while not final:
                try:
                    data = await it.__anext__()
                except StopAsyncIteration:
                    data, final = b"", True
                for raw_line in splitter.feed(data, final):
                    line_no += 1
                    if line_no == 1:
                        raw_line = raw_line.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 BOM (Excel)
                    try:
                        text = raw_line.decode(encoding)
                    except UnicodeDecodeError:
                        error(line_no, f"该行不是 {encoding} 编码(可用 ?encoding=gbk)",
                              f"the line is not {encoding} (try ?encoding=gbk)")
                        record, quotes = "", 0
                        continue
                    if not record:
                        start = line_no
                    record += text
                    quotes += text.count('"')
                    if quotes % 2 == 0:
                        yield start, next(csv.reader([record]))
                        record, quotes = "", 0
            if record:
                yield start, next(csv.reader([record]))

        try:
            async for line, row in rows():
                if header is None:
                    header = [h.strip().lower() for h in row]
                    if "number" not in header:
                        error(line, "首行应为列名,且包含 number 列", "the first line must name the columns, "
                              "number among them")
                        return report
                    continue
                if not any(c.strip() for c in row):
                    continue
                report.rows += 1
                if report.rows > self.ocfg.import_max_rows:
                    error(line, f"超过行数上限 {self.ocfg.import_max_rows},其余未导入",
                          f"more than {self.ocfg.import_max_rows} rows: the rest was not imported")
                    break
                rec = dict(zip(header, (c.strip() for c in row), strict=False))
                raw_number = rec.get("number", "")
                try:
                    number = normalize_number(raw_number)
                except InvalidNumber as e:
                    error(line, f"号码无效:{raw_number[:40]!r}", f"invalid number {raw_number[:40]!r}: {e}")
                    continue
                reason = rec.get("reason") or "imported"
                if len(reason) > MAX_REASON:
                    error(line, f"原因过长(最多 {MAX_REASON} 字)", f"reason too long (max {MAX_REASON})")
                    continue
                requested = now
                if rec.get("requested_at"):
                    try:
                        requested = parse_time(rec["requested_at"], self.tz)
                    except (ValueError, OverflowError):
                        error(line, "requested_at 应为 ISO 8601 时间或 Unix 秒数",
                              "requested_at must be an ISO 8601 time or Unix seconds")
                        continue
                    if requested > now + 86400:
                        error(line, "requested_at 在将来", "requested_at is in the future")
                        continue
                entry = DncEntry(number, reason, requested,
                                 cooling_end(requested, self.ocfg.dnc_cooling_days, self.tz), by,
                                 rec.get("agent") or None, rec.get("source_call") or None, "import")
                if entry.until <= now and self.on_expiry == "expire":
                    report.skipped_expired += 1
                    continue
                if number in seen:
                    report.duplicates += 1
                seen.add(number)
                details = {**entry.audit_details(self.tz), "batch": report.batch, "line": line}
                pending.append((entry, Audit(now, by, mask_number(number) or "", details)))
                if len(pending) >= IMPORT_BATCH:
                    await flush()
            await flush()
        except csv.Error as e:
            error(line_no + 1, "CSV 格式错误", f"malformed CSV: {e}")
            await flush()
        await store.audit(Audit(now, by, f"batch:{report.batch}", {k: v for k, v in report.to_json().items()
                                                                    if k != "errors"}), "dnc.import")
        log.info("dnc: import %s by %s: %d rows, %d added, %d renewed, %d errors", report.batch, by, report.rows,
                 report.added, report.renewed, report.errors_total)
        return report

    async def export_csv(self) -> AsyncIterator[str]:
        """The whole list from Redis as CSV text chunks (header first; full numbers)."""
        store = self._require()
        now = self.now_wall()
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\r\n")
        w.writerow(CSV_FIELDS)
        async for batch in store.scan():
            for _number, raw in batch:
                e = DncEntry.loads(raw)
                w.writerow([e.number, e.reason, e.agent or "", e.source_call or "", _iso(e.requested_at, self.tz),
                            _iso(e.until, self.tz), e.state(now, self.on_expiry), e.by, e.source])
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()

    def listing(self, state: DncState | None = None, limit: int = 1000) -> list[DncEntry]:
        """From the local copy, earliest ``until`` first."""
        now = self.now_wall()
        past: DncState = "review" if self.on_expiry == "review" else "expired"
        untils = sorted((u, n) for n, u in self.entries.untils()
                        if state is None or ("active" if now < u else past) == state)
        return [self.entries[n] for _u, n in untils[:limit]]

    def counts(self) -> dict[str, int]:
        now = self.now_wall()
        out = {"active": 0, "review": 0, "expired": 0}
        past = "review" if self.on_expiry == "review" else "expired"
        for _n, until in self.entries.untils():
            out["active" if now < until else past] += 1
        return out

