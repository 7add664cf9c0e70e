"""HTTP API of OUT-HOURS / OUT-DNC, and their wiring into the daemon (:class:`OutboundRuntime`).

Routes (errors are JSON ``{"error", "message": {"zh", "en"}}`` like the rest of the API):

* ``GET /api/v1/outbound/permit?number=…&agent=…&campaign=…[&queue=…][&team=…][&at=ISO-8601][&format=text]``
  (``outbound:permit``): ``{"allow", "reasons": [{code, rule, message, …}], "next_allowed_at", "at", "day",
  "windows", "scope", "number"}``; ``format=text``: ``ALLOW`` or ``DENY:<first reason code>`` (the
  dialplan's ``CURL()``).  Always 200 when a decision was made (a deny is an answer, not an error).
* ``GET /api/v1/outbound/status[?campaign=…&queue=…&team=…]`` (``outbound:read``): allowed now or not,
  until when, why; today's day type and windows; OUT-HOURS / OUT-DNC violations today; the calendar's
  and the DNC list's health.
* ``POST /api/v1/dnc`` (``dnc:write``): ``{"number", "reason", "source_call"?, "agent"?, "requested_at"?}``
  (``number`` / ``agent`` default to the customer / agent of a live or recent ``source_call``); 201 new,
  200 renewed (the cooling period restarts).
* ``GET /api/v1/dnc/{number}`` (``dnc:read``): the entry (any spelling of the number); 404 ``not_listed``.
* ``DELETE /api/v1/dnc/{number}`` (``dnc:manage``): ``{"reason"}`` (or ``?reason=``); 200 with the removed
  entry, 404 ``not_listed``.
* ``GET /api/v1/dnc?state=active|review|expired&limit=N`` (``dnc:read``): entries, earliest end first,
  numbers masked per ``privacy.mask_callers``.
* ``POST /api/v1/dnc/import[?encoding=gbk]`` (``dnc:manage``): a CSV body (header line; columns
  ``number,reason,agent,source_call,requested_at``), streamed; 200 with ``{rows, added, renewed,
  duplicates, skipped_expired, errors: [{line, error}], errors_total, batch}``.
* ``GET /api/v1/dnc/export`` (``dnc:manage``): the whole list as CSV (UTF-8 with BOM, full numbers).

503 ``store_unavailable`` while Redis cannot be reached for a write (the permit check keeps answering
from the local copy, see :mod:`monitor.dnc`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import time
from collections import Counter
from typing import Any, Final, get_args

import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram

from config.schema import Config
from monitor.auth import authorize, json_error, json_response
from monitor.clock import Clock
from monitor.dnc import (
    MAX_REASON,
    DncService,
    DncState,
    DncStore,
    InvalidNumber,
    StoreUnavailable,
    ascii_compatible,
    normalize_number,
    parse_time,
)
from monitor.engine import Monitor
from monitor.outbound import ANCHORED_AFTER, OutboundCollector, OutboundCompliance, OutboundPolicy, outbound_rule
from monitor.redis_embedded import EmbeddedRedis, EmbeddedRedisError
from monitor.web import MONITOR, TOKENS

log = logging.getLogger(__name__)

PERMIT_PARAMS: Final = frozenset({"number", "agent", "campaign", "queue", "team", "at", "format"})
STATUS_PARAMS: Final = frozenset({"campaign", "queue", "team"})
DNC_STATES: Final = get_args(DncState)
MAX_NAME: Final = 128


class OutboundApi:
    """What the handlers share: the policy, the live rule, the DNC list, the clock, the counters."""

    def __init__(self, cfg: Config, policy: OutboundPolicy, rule: OutboundCompliance | None, dnc: DncService,
                 clock: Clock, registry: CollectorRegistry | None = None) -> None:
        self.cfg, self.policy, self.rule, self.dnc, self.clock = cfg, policy, rule, dnc, clock
        self.tz = policy.tz
        self.permits: Counter[tuple[str, str]] = Counter()
        self.latency: Histogram | None = None
        if registry is not None:
            self.latency = Histogram("ringwatch_outbound_permit_seconds", "Pre-dial permission check, request in to "
                                     "answer out (server side)", registry=registry,
                                     buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.1))

    def now_wall(self) -> float:
        return self.clock.wall(self.clock.now())

    def shown(self, number: str) -> str:
        return self.dnc.shown(number)


OUTBOUND: Final = web.AppKey("outbound", OutboundApi)


def add_outbound_routes(app: web.Application, api: OutboundApi) -> None:
    """Register the routes (before the app starts).  Fixed paths before ``{number}``."""
    app[OUTBOUND] = api
    r = app.router
    r.add_get("/api/v1/outbound/permit", permit)
    r.add_get("/api/v1/outbound/status", status)
    r.add_post("/api/v1/dnc", dnc_add)
    r.add_get("/api/v1/dnc", dnc_list)
    r.add_post("/api/v1/dnc/import", dnc_import)
    r.add_get("/api/v1/dnc/export", dnc_export)
    r.add_get("/api/v1/dnc/{number}", dnc_get)
    r.add_delete("/api/v1/dnc/{number}", dnc_delete)


# -- helpers -----------------------------------------------------------------------------------

def _bad(name: str, zh: str, en: str) -> web.HTTPException:
    return json_error(web.HTTPBadRequest, "bad_request", f"参数 {name[:40]} 无效:{zh}", f"invalid {name[:40]}: {en}")


def _unavailable() -> web.HTTPException:
    return json_error(web.HTTPServiceUnavailable, "store_unavailable",
                      "拒绝呼出名单存储(Redis)暂时不可用,本次操作未执行,请稍后重试;外呼许可检查仍按本地副本回答",
                      "the do-not-call store (Redis) is unavailable: nothing was done, retry later; the permit "
                      "check keeps answering from the local copy", {"Retry-After": "5"})


def _not_listed(number: str) -> web.HTTPException:
    return json_error(web.HTTPNotFound, "not_listed", f"号码 {number} 不在拒绝呼出名单上",
                      f"{number} is not on the do-not-call list")


def _unknown(params: frozenset[str], got: Any) -> None:
    unknown = sorted(set(got) - params)
    if unknown:
        raise _bad(unknown[0], f"不支持该参数(可用:{', '.join(sorted(params))})",
                   f"unknown parameter (known: {', '.join(sorted(params))})")


def _opt(q: Any, name: str) -> str | None:
    v = q.get(name)
    if v is None or not v.strip():
        return None
    if len(v) > MAX_NAME:
        raise _bad(name, f"最长 {MAX_NAME} 个字符", f"at most {MAX_NAME} characters")
    return str(v).strip()


def _time(raw: str, api: OutboundApi, name: str) -> float:
    try:
        return parse_time(raw, api.tz)
    except (ValueError, OverflowError):
        raise _bad(name, "应为 ISO 8601 时间(无时区时按外呼时区)或 Unix 秒数",
                   "expected an ISO 8601 time (no offset: the outbound time zone) or Unix seconds") from None


def _number(raw: str, name: str = "number") -> str:
    try:
        return normalize_number(raw)
    except InvalidNumber as e:
        raise json_error(web.HTTPBadRequest, "invalid_number", f"{name} 不是有效的电话号码",
                         f"{name} is not a valid phone number ({e})") from None


async def _body(request: web.Request, allowed: set[str], *, optional: bool = False) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip() and optional:
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise json_error(web.HTTPBadRequest, "bad_json", "请求体不是有效的 JSON",
                         "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise json_error(web.HTTPBadRequest, "bad_json", "请求体应为 JSON 对象", "the body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise _bad(unknown[0], f"不支持该字段(可用:{', '.join(sorted(allowed))})",
                   f"unknown field (known: {', '.join(sorted(allowed))})")
    for k, v in body.items():
        if v is not None and not isinstance(v, str):
            raise _bad(k, "应为字符串", "expected a string")
    return body


# -- the permission check ------------------------------------------------------------------------


async def permit(request: web.Request) -> web.Response:
    t0 = time.perf_counter()
    app = request.app
    authorize(request, app[TOKENS], "outbound:permit")
    api = app[OUTBOUND]
    q = request.query
    _unknown(PERMIT_PARAMS, q)
    number = q.get("number")
    if not number or not number.strip():
        raise _bad("number", "必填", "required")
    fmt = q.get("format", "json")
    if fmt not in ("json", "text"):
        raise _bad("format", "应为 json 或 text", "expected json or text")
    at = _time(q["at"], api, "at") if "at" in q else api.now_wall()
    d = api.policy.decide(number, at, agent=_opt(q, "agent"), campaign=_opt(q, "campaign"), queue=_opt(q, "queue"),
                          team=_opt(q, "team"), dnc=api.dnc)
    first = d.reasons[0].code if d.reasons else "none"
    api.permits[("allow" if d.allow else "deny", first)] += 1
    if fmt == "text":
        resp = web.Response(text="ALLOW" if d.allow else f"DENY:{first}", content_type="text/plain")
    else:
        resp = json_response(d.to_json(api.tz, api.shown(d.number) if d.number else None))
    if api.latency is not None:
        api.latency.observe(time.perf_counter() - t0)
    return resp


async def status(request: web.Request) -> web.Response:
    app = request.app
    authorize(request, app[TOKENS], "outbound:read")
    api = app[OUTBOUND]
    q = request.query
    _unknown(STATUS_PARAMS, q)
    now = api.now_wall()
    p = api.policy
    d = p.decide(None, now, campaign=_opt(q, "campaign"), queue=_opt(q, "queue"), team=_opt(q, "team"))
    _label, windows = p.scope(_opt(q, "campaign"), _opt(q, "queue"), _opt(q, "team"))
    until = p.window_end(now, windows) if d.allow else d.next_allowed_at
    year = d.local.year
    cal = p.calendar
    dnc = api.dnc
    body: dict[str, Any] = {
        "now": d.local.isoformat(timespec="seconds"), "timezone": str(p.tz), "allowed": d.allow,
        "until": None if until is None else dt.datetime.fromtimestamp(until, p.tz).isoformat(timespec="seconds"),
        "why": [r.to_json() for r in d.reasons], "day": d.day.to_json(), "windows": [w for w in d.to_json(p.tz)
                                                                                      ["windows"]],
        "scope": d.scope, "holiday_policy": p.ocfg.holiday_policy,
        "violations_today": api.rule.today(now) if api.rule is not None else None,
        "calendar": {"year": year, "source": cal.source_of(year), "missing_years": cal.missing_years((year, year + 1))},
        "dnc": {"available": dnc.available, "entries": len(dnc.entries), "review_due": dnc.review_due,
                "on_expiry": dnc.on_expiry, "cooling_days": p.ocfg.dnc_cooling_days},
        "pbx_fail": p.ocfg.pbx_fail,
    }
    return json_response(body)


# -- the DNC list ---------------------------------------------------------------------------------


async def dnc_add(request: web.Request) -> web.Response:
    app = request.app
    principal = authorize(request, app[TOKENS], "dnc:write")
    api = app[OUTBOUND]
    body = await _body(request, {"number", "reason", "source_call", "agent", "requested_at"})
    source_call = (body.get("source_call") or "").strip() or None
    call = app[MONITOR].call(source_call) if source_call else None
    raw = (body.get("number") or "").strip() or (call.caller if call is not None else "")
    if not raw:
        raise _bad("number", "必填(或给出进行中/最近通话的 source_call)", "required (or the source_call of a live or "
                   "recent call)")
    number = _number(raw)
    reason = (body.get("reason") or "").strip()
    if not reason:
        raise _bad("reason", "必填(客户的原话或拒绝原因)", "required (what the customer said)")
    if len(reason) > MAX_REASON:
        raise _bad("reason", f"最长 {MAX_REASON} 个字符", f"at most {MAX_REASON} characters")
    agent = (body.get("agent") or "").strip() or (call.agent if call is not None else None)
    if agent is not None and len(agent) > MAX_NAME:
        raise _bad("agent", f"最长 {MAX_NAME} 个字符", f"at most {MAX_NAME} characters")
    now = api.now_wall()
    requested = _time(body["requested_at"], api, "requested_at") if body.get("requested_at") else None
    if requested is not None and requested > now + 60:
        raise _bad("requested_at", "不能晚于当前时间", "must not be in the future")
    entry = api.dnc.new_entry(number, reason, principal.name, agent=agent, source_call=source_call,
                              requested_at=requested)
    try:
        entry, previous = await api.dnc.add(entry)
    except StoreUnavailable:
        raise _unavailable() from None
    out = entry.to_json(api.tz, now, api.dnc.on_expiry)
    return json_response({"entry": out, "created": previous is None,
                  "previous": None if previous is None else previous.to_json(api.tz, now, api.dnc.on_expiry)},
                 201 if previous is None else 200)


async def dnc_get(request: web.Request) -> web.Response:
    app = request.app
    authorize(request, app[TOKENS], "dnc:read")
    api = app[OUTBOUND]
    number = _number(request.match_info["number"])
    try:
        entry = await api.dnc.get(number)
    except StoreUnavailable:
        ok, entry = api.dnc.lookup(number)
        if not ok:
            raise _unavailable() from None
    if entry is None:
        raise _not_listed(number)
    now = api.now_wall()
    return json_response({"entry": entry.to_json(api.tz, now, api.dnc.on_expiry),
                  "blocks": entry.blocks(now, api.dnc.on_expiry)})


async def dnc_delete(request: web.Request) -> web.Response:
    app = request.app
    principal = authorize(request, app[TOKENS], "dnc:manage")
    api = app[OUTBOUND]
    number = _number(request.match_info["number"])
    body = await _body(request, {"reason"}, optional=True)
    reason = (body.get("reason") or request.query.get("reason") or "").strip()
    if not reason:
        raise _bad("reason", "必填(为何移出名单)", "required (why the number may be called again)")
    if len(reason) > MAX_REASON:
        raise _bad("reason", f"最长 {MAX_REASON} 个字符", f"at most {MAX_REASON} characters")
    try:
        removed = await api.dnc.remove(number, reason, principal.name)
    except StoreUnavailable:
        raise _unavailable() from None
    if removed is None:
        raise _not_listed(number)
    return json_response({"removed": removed.to_json(api.tz, api.now_wall(), api.dnc.on_expiry), "reason": reason,
                  "by": principal.name})


async def dnc_list(request: web.Request) -> web.Response:
    app = request.app
    authorize(request, app[TOKENS], "dnc:read")
    api = app[OUTBOUND]
    q = request.query
    _unknown(frozenset({"state", "limit"}), q)
    state = q.get("state")
    if state is not None and state not in DNC_STATES:
        raise _bad("state", "应为 active、review 或 expired", "expected active, review or expired")
    limit = int(q["limit"]) if q.get("limit", "").isdigit() else (1000 if "limit" not in q else 0)
    if not 1 <= limit <= 10_000:
        raise _bad("limit", "应为 1 到 10000 的整数", "expected an integer 1..10000")
    now = api.now_wall()
    rows = api.dnc.listing(state, limit)  # type: ignore[arg-type]  # checked against DNC_STATES above
    return json_response({"entries": [e.to_json(api.tz, now, api.dnc.on_expiry, api.shown(e.number)) for e in rows],
                  "count": len(rows), "total": len(api.dnc.entries), "available": api.dnc.available})


async def dnc_import(request: web.Request) -> web.Response:
    app = request.app
    principal = authorize(request, app[TOKENS], "dnc:manage")
    api = app[OUTBOUND]
    encoding = request.query.get("encoding") or request.charset or "utf-8"
    if not ascii_compatible(encoding):
        raise _bad("encoding", "不支持的字符编码(可用 utf-8、gbk、gb18030)",
                   "unsupported encoding (utf-8, gbk, gb18030)")

    async def chunks() -> Any:
        async for chunk in request.content.iter_chunked(1 << 16):
            yield chunk

    try:
        report = await api.dnc.import_csv(chunks(), principal.name, encoding)
    except StoreUnavailable:
        raise _unavailable() from None
    body = report.to_json()
    if report.rows == 0 and report.errors and report.errors[0]["line"] == 1:
        raise json_error(web.HTTPBadRequest, "bad_csv", report.errors[0]["error"]["zh"],
                         report.errors[0]["error"]["en"])
    return json_response(body)


async def dnc_export(request: web.Request) -> web.StreamResponse:
    app = request.app
    authorize(request, app[TOKENS], "dnc:manage")
    api = app[OUTBOUND]
    day = dt.datetime.fromtimestamp(api.now_wall(), api.tz).date().isoformat()
    gen = api.dnc.export_csv()
    try:
        first = await gen.__anext__()  # reach Redis before the status line goes out
    except StoreUnavailable:
        raise _unavailable() from None
    resp = web.StreamResponse(headers={"Content-Type": "text/csv; charset=utf-8",
                                       "Content-Disposition": f'attachment; filename="dnc-{day}.csv"',
                                       "Cache-Control": "no-store"})
    await resp.prepare(request)
    await resp.write(("\ufeff" + first).encode("utf-8"))
    try:
        async for chunk in gen:
            await resp.write(chunk.encode("utf-8"))
    except StoreUnavailable:
        log.error("dnc export: Redis became unavailable mid-way; the file is incomplete")
        raise
    await resp.write_eof()
    return resp


# -- wiring ----------------------------------------------------------------------------------------


def calendar_warnings(policy: OutboundPolicy, now_wall: float) -> list[tuple[int, str]]:
    """(logging level, message) for this year and, within ``calendar_warn_days``, the next, when the
    calendar has no official schedule for them."""
    if now_wall < ANCHORED_AFTER:
        return []
    now = dt.datetime.fromtimestamp(now_wall, policy.tz)
    out: list[tuple[int, str]] = []
    cal, o = policy.calendar, policy.ocfg
    if not cal.known(now.year):
        out.append((logging.ERROR, f"calendar: no official holiday schedule for {now.year} (holidays package or "
                    "config/calendar_overrides.yaml): outbound permit checks answer calendar_missing "
                    f"({o.missing_year}); add the State Council notice (docs/outbound.md, Calendar update)"))
    nxt = dt.datetime(now.year + 1, 1, 1, tzinfo=policy.tz)
    days = (nxt - now).total_seconds() / 86400
    if not cal.known(now.year + 1) and days <= o.calendar_warn_days:
        out.append((logging.WARNING, f"calendar: no official holiday schedule for {now.year + 1} yet, needed in "
                    f"{days:.0f} days: add the State Council notice when it is published (docs/outbound.md)"))
    return out


class OutboundRuntime:
    """The DNC list (Redis: the commitments' client, ``redis.url``, or a private embedded server), the
    live rule's link to it, metrics, routes and the daily calendar check."""

    def __init__(self, cfg: Config, clock: Clock, monitor: Monitor, registry: CollectorRegistry) -> None:
        self.cfg, self.clock, self.monitor, self.registry = cfg, clock, monitor, registry
        self.rule: OutboundCompliance | None = None
        self.dnc: DncService | None = None
        self.api: OutboundApi | None = None
        self._collector: OutboundCollector | None = None
        self._own_client: aioredis.Redis | None = None
        self._embedded: EmbeddedRedis | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, app: web.Application, client: aioredis.Redis | None = None) -> None:
        """``client``: an existing Redis client to share (the commitments'); otherwise one of its own."""
        cfg = self.cfg
        self.rule = rule = outbound_rule(self.monitor.rules)
        policy = rule.policy if rule is not None else OutboundPolicy(cfg)
        if client is None:
            client = await self._client()
        store = DncStore(client, cfg.commitments.key_prefix) if client is not None else None
        self.dnc = dnc = DncService(cfg, store, self.clock)
        await dnc.start()
        if rule is not None:
            rule.attach_dnc(dnc)
        self.api = api = OutboundApi(cfg, policy, rule, dnc, self.clock, self.registry)
        self._collector = OutboundCollector(rule, policy, self.clock, dnc, api.permits)
        self.registry.register(self._collector)
        add_outbound_routes(app, api)
        self._task = asyncio.create_task(self._calendar_check(policy), name="outbound-calendar-check")

    async def _client(self) -> aioredis.Redis | None:
        from monitor.commitments_api import embedded_for
        from monitor.store import client_from_config

        url = self.cfg.redis.url
        if url is None:
            self._embedded = embedded_for(self.cfg)
            try:
                url = await self._embedded.start()
            except (EmbeddedRedisError, OSError) as e:
                log.error("outbound: the embedded redis-server did not start (%s): the DNC list is unavailable "
                          "(permit: %s)", e, self.cfg.outbound.dnc_unavailable)
                self._embedded = None
                return None
        self._own_client = client_from_config(url, self.cfg.redis)
        return self._own_client

    async def _calendar_check(self, policy: OutboundPolicy) -> None:
        said: set[str] = set()
        while True:
            for level, msg in calendar_warnings(policy, self.clock.wall(self.clock.now())):
                if msg not in said:  # once per message (the day count in it changes daily)
                    log.log(level, "%s", msg)
                    said.add(msg)
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            def wake(f: asyncio.Future[None] = fut) -> None:
                if not f.done():
                    f.set_result(None)

            timer = self.clock.call_at(self.clock.now() + 6 * 3600, wake)
            try:
                await fut
            finally:
                timer.cancel()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.rule is not None:
            self.rule.attach_dnc(None)
        if self._collector is not None:
            self.registry.unregister(self._collector)
            self._collector = None
        if self.api is not None and self.api.latency is not None:
            self.registry.unregister(self.api.latency)
        if self.dnc is not None:
            await self.dnc.stop()
        if self._own_client is not None:
            await self._own_client.aclose()
            self._own_client = None
        if self._embedded is not None:
            await self._embedded.stop()
            self._embedded = None
