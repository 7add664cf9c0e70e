"""HTTP API of the commitments: ``add_commitment_routes(app, service)`` on the app of ``monitor.web``.

Routes (errors are JSON ``{"error", "message": {"zh", "en"}}`` like the rest of the API):

* ``POST /api/v1/commitments`` (``commitments:write``): ``{"kind", "customer", "owner", "team"?,
  "call_id"?, "note"?}``; with a ``call_id`` of a live call, ``customer`` and ``owner`` default to
  the call's number and agent.  201 with ``{"commitment"}`` and ``Location``; an
  ``Idempotency-Key`` header makes a retry answer 200 with the same commitment.
* ``GET /api/v1/commitments?state&kind&agent&team&due_before&limit`` (``commitments:read``);
  ``due_before``: Unix seconds or ISO 8601 (local time of ``timezone`` when it has no offset).
* ``GET /api/v1/commitments/{id}``: the commitment and its history.
* ``POST /api/v1/commitments/{id}/fulfil`` (``commitments:write``): ``{"note"?, "call_id"?,
  "overdue_reason"?}``; a complaint (``note_required``) needs a note that passes CMP-NOTE (422).
* ``POST /api/v1/commitments/{id}/cancel`` (``commitments:cancel``): ``{"reason"}``.
* ``POST /api/v1/commitments/{id}/note`` (``commitments:write``): ``{"text", "overdue_reason"?: bool}``.
* ``GET /api/v1/reports/complaints?month=YYYY-MM&format=json|csv`` (``commitments:read``):
  CMP-MONTHLY, default last month.

400 bad JSON / fields, 404 unknown id, 409 already fulfilled or cancelled, 422 refused by
CMP-NOTE, 503 while Redis is unavailable (nothing is queued for API writes: the client
retries, with the same ``Idempotency-Key`` for a create).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from typing import Any, Final

from aiohttp import web
from prometheus_client import CollectorRegistry

from alerts.hub import AlertHub
from config.schema import Config
from monitor.auth import authorize, error_class, json_error, json_response
from monitor.clock import Clock
from monitor.commitments import (
    STATES,
    Commitment,
    CommitmentCollector,
    CommitmentError,
    CommitmentService,
    StoreUnavailable,
    complaints_report,
    previous_month,
    report_csv,
)
from monitor.engine import Monitor
from monitor.redis_embedded import EmbeddedRedis, EmbeddedRedisError
from monitor.store import CommitmentStore
from monitor.web import MONITOR, TOKENS

log = logging.getLogger(__name__)

COMMITMENTS: Final = web.AppKey("commitments", CommitmentService)

_NUMBER: Final = re.compile(r"\+?[0-9][0-9 ()\-]{2,31}")
MAX_TEXT: Final = 2000


def add_commitment_routes(app: web.Application, service: CommitmentService) -> None:
    """Register the commitment routes (call before the app is started)."""
    app[COMMITMENTS] = service
    r = app.router
    r.add_post("/api/v1/commitments", create)
    r.add_get("/api/v1/commitments", list_commitments)
    r.add_get("/api/v1/commitments/{id}", get_commitment)
    r.add_post("/api/v1/commitments/{id}/fulfil", fulfil)
    r.add_post("/api/v1/commitments/{id}/cancel", cancel)
    r.add_post("/api/v1/commitments/{id}/note", note)
    r.add_get("/api/v1/reports/complaints", report_complaints)


# -- helpers ---------------------------------------------------------------------------

def _bad(field: str, zh: str, en: str) -> web.HTTPException:
    return json_error(web.HTTPBadRequest, "bad_request", f"字段 {field} 无效:{zh}", f"invalid field {field}: {en}")


def _unavailable() -> web.HTTPException:
    return json_error(web.HTTPServiceUnavailable, "store_unavailable",
                      "承诺存储(Redis)暂时不可用,本次操作未执行,请稍后重试;实时话务监控不受影响",
                      "the commitment store (Redis) is unavailable: nothing was done, retry later; "
                      "live call monitoring carries on", {"Retry-After": "5"})


def _error(e: CommitmentError) -> web.HTTPException:
    return json_error(error_class(e.status), e.code, e.zh, e.en)


async def _body(request: web.Request, allowed: set[str], *, optional: bool = False) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip() and optional:
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise json_error(web.HTTPBadRequest, "bad_json", "请求体不是有效的 JSON",
                         "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise json_error(web.HTTPBadRequest, "bad_json", "请求体应为 JSON 对象",
                         "the request body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        name = unknown[0][:40]
        raise _bad(name, f"不支持该字段(可用:{', '.join(sorted(allowed))})",
                   f"unknown field (known: {', '.join(sorted(allowed))})")
    return body


def _text(body: dict[str, Any], name: str, *, required: bool = False, limit: int = 64) -> str | None:
    v = body.get(name)
    if v is None or (isinstance(v, str) and not v.strip()):
        if required:
            raise _bad(name, "必填", "required")
        return None
    if not isinstance(v, str):
        raise _bad(name, "应为字符串", "expected a string")
    if len(v) > limit:
        raise _bad(name, f"最长 {limit} 个字符", f"at most {limit} characters")
    return v.strip()


def _shown(service: CommitmentService, c: Commitment) -> dict[str, Any]:
    return c.to_json(service.shown(c.customer), service.tz)


async def _run(coro: Any) -> Any:
    try:
        return await coro
    except StoreUnavailable:
        raise _unavailable() from None
    except CommitmentError as e:
        raise _error(e) from None


# -- handlers ------------------------------------------------------------------------------


async def create(request: web.Request) -> web.Response:
    app = request.app
    principal = authorize(request, app[TOKENS], "commitments:write")
    service = app[COMMITMENTS]
    body = await _body(request, {"kind", "customer", "owner", "team", "call_id", "note"})
    kind = _text(body, "kind", required=True)
    call_id = _text(body, "call_id")
    call = app[MONITOR].call(call_id) if call_id else None
    customer = _text(body, "customer", limit=40) or (call.caller if call is not None else None)
    owner = _text(body, "owner") or (call.agent if call is not None else None)
    if not customer:
        raise _bad("customer", "必填(或给出进行中通话的 call_id)", "required (or the call_id of a live call)")
    if not _NUMBER.fullmatch(customer):
        raise _bad("customer", "应为电话号码", "expected a phone number")
    if not owner:
        raise _bad("owner", "必填(承诺的负责坐席)", "required (the agent who owns the commitment)")
    idem = request.headers.get("Idempotency-Key")
    if idem is not None and not 1 <= len(idem) <= 128:
        raise json_error(web.HTTPBadRequest, "bad_request", "Idempotency-Key 长度应为 1 到 128",
                         "Idempotency-Key must be 1 to 128 characters")
    assert kind is not None
    c, created = await _run(service.create(
        kind, customer, owner, by=principal.name, team=_text(body, "team"), call_id=call_id,
        note=_text(body, "note", limit=MAX_TEXT), idempotency_key=f"api:{idem}" if idem else None))
    return json_response({"commitment": _shown(service, c)}, 201 if created else 200,
                 {"Location": f"/api/v1/commitments/{c.id}"})


def _due_before(raw: str, service: CommitmentService) -> float:
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise json_error(web.HTTPBadRequest, "bad_request", "参数 due_before 无效:应为 Unix 秒数或 ISO 8601 时间",
                         "invalid parameter due_before: expected Unix seconds or an ISO 8601 time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=service.tz)
    return when.timestamp()


async def list_commitments(request: web.Request) -> web.Response:
    app = request.app
    authorize(request, app[TOKENS], "commitments:read")
    service = app[COMMITMENTS]
    q = request.query
    known = {"state", "kind", "agent", "team", "due_before", "limit"}
    unknown = sorted(set(q) - known)
    if unknown:
        raise json_error(web.HTTPBadRequest, "bad_request", f"参数 {unknown[0][:40]} 无效:不支持该参数",
                         f"invalid parameter {unknown[0][:40]}: unknown (known: {', '.join(sorted(known))})")
    state = q.get("state")
    if state is not None and state not in STATES:
        raise json_error(web.HTTPBadRequest, "bad_request",
                         "参数 state 无效:应为 open、overdue、fulfilled 或 cancelled",
                         "invalid parameter state: expected open, overdue, fulfilled or cancelled")
    kind = q.get("kind")
    if kind is not None and kind not in service.ccfg.kinds:
        raise json_error(web.HTTPBadRequest, "unknown_kind", f"参数 kind 无效:未知的承诺类型 {kind[:40]}",
                         f"invalid parameter kind: unknown kind {kind[:40]}")
    due_before = _due_before(q["due_before"], service) if "due_before" in q else None
    limit = 1000
    if "limit" in q:
        limit = int(q["limit"]) if q["limit"].isdigit() else 0
        if not 1 <= limit <= 10_000:
            raise json_error(web.HTTPBadRequest, "bad_request", "参数 limit 无效:应为 1 到 10000 的整数",
                             "invalid parameter limit: expected an integer 1..10000")
    rows = await _run(service.query(state=state, kind=kind, agent=q.get("agent"), team=q.get("team"),
                                    due_before=due_before, limit=limit))
    return json_response({"commitments": [_shown(service, c) for c in rows], "count": len(rows)})


async def get_commitment(request: web.Request) -> web.Response:
    app = request.app
    authorize(request, app[TOKENS], "commitments:read")
    service = app[COMMITMENTS]
    c, history = await _run(service.get(request.match_info["id"]))
    return json_response({"commitment": _shown(service, c), "history": history})


async def fulfil(request: web.Request) -> web.Response:
    app = request.app
    principal = authorize(request, app[TOKENS], "commitments:write")
    service = app[COMMITMENTS]
    body = await _body(request, {"note", "call_id", "overdue_reason"}, optional=True)
    c = await _run(service.fulfil(request.match_info["id"], principal.name, note=_text(body, "note", limit=MAX_TEXT),
                                  call_id=_text(body, "call_id"),
                                  overdue_reason=_text(body, "overdue_reason", limit=MAX_TEXT)))
    return json_response({"commitment": _shown(service, c)})


async def cancel(request: web.Request) -> web.Response:
    app = request.app
    principal = authorize(request, app[TOKENS], "commitments:cancel")
    service = app[COMMITMENTS]
    body = await _body(request, {"reason"})
    reason = _text(body, "reason", required=True, limit=MAX_TEXT)
    assert reason is not None
    c = await _run(service.cancel(request.match_info["id"], principal.name, reason))
    return json_response({"commitment": _shown(service, c)})


async def note(request: web.Request) -> web.Response:
    app = request.app
    principal = authorize(request, app[TOKENS], "commitments:write")
    service = app[COMMITMENTS]
    body = await _body(request, {"text", "overdue_reason"})
    text = _text(body, "text", required=True, limit=MAX_TEXT)
    flag = body.get("overdue_reason", False)
    if not isinstance(flag, bool):
        raise _bad("overdue_reason", "应为 true 或 false", "expected true or false")
    assert text is not None
    c = await _run(service.add_note(request.match_info["id"], principal.name, text, overdue_reason=flag))
    return json_response({"commitment": _shown(service, c)})


async def report_complaints(request: web.Request) -> web.Response:
    app = request.app
    authorize(request, app[TOKENS], "commitments:read")
    service = app[COMMITMENTS]
    month = request.query.get("month") or previous_month(service.now_wall(), service.tz)
    fmt = request.query.get("format", "json")
    if fmt not in ("json", "csv"):
        raise json_error(web.HTTPBadRequest, "bad_request", "参数 format 无效:应为 json 或 csv",
                         "invalid parameter format: expected json or csv")
    report = await _run(service.report_complaints(month))
    if fmt == "csv":
        return web.Response(body=("\ufeff" + report_csv(report)).encode("utf-8"),  # BOM: Excel reads UTF-8
                            content_type="text/csv", charset="utf-8",
                            headers={"Content-Disposition": f'attachment; filename="complaints-{month}.csv"'})
    return json_response(report)


# -- wiring for the daemon and the CLI -------------------------------------------------------


class CommitmentsRuntime:
    """Redis (the embedded server, or ``redis.url`` as is), the store, the service, its metrics and routes.

    ``start`` never fails because of Redis: when the embedded server cannot start (or a configured
    one is down), the service runs against an unreachable store, the API answers 503 and the
    scheduler keeps retrying; live call monitoring is not affected."""

    def __init__(self, cfg: Config, clock: Clock, hub: AlertHub, monitor: Monitor, registry: CollectorRegistry) -> None:
        self.cfg = cfg
        self._clock, self._hub, self._monitor, self._registry = clock, hub, monitor, registry
        self.embedded: EmbeddedRedis | None = None
        self.store: CommitmentStore | None = None
        self.service: CommitmentService | None = None
        self._collector: CommitmentCollector | None = None

    async def start(self, app: web.Application) -> None:
        cfg = self.cfg
        url = cfg.redis.url
        if url is None:
            self.embedded = embedded_for(cfg)
            try:
                url = await self.embedded.start()
            except (EmbeddedRedisError, OSError) as e:
                log.error("commitments: the embedded redis-server did not start (%s); the commitments API "
                          "answers 503 until ringwatch is restarted with Redis available", e)
                url = f"unix://{self.embedded.socket_path}"
                self.embedded = None
        self.store = store = CommitmentStore.from_config(url, cfg.redis, cfg.commitments.key_prefix)
        self.service = service = CommitmentService(cfg, store, self._clock, self._hub)
        service.attach(self._monitor)
        await service.start()
        self._collector = CommitmentCollector(service)
        self._registry.register(self._collector)
        add_commitment_routes(app, service)

    async def stop(self) -> None:
        if self._collector is not None:
            self._registry.unregister(self._collector)
            self._collector = None
        if self.service is not None:
            await self.service.stop()
        if self.store is not None:
            await self.store.close()
        if self.embedded is not None:
            await self.embedded.stop()
            self.embedded = None


def embedded_for(cfg: Config) -> EmbeddedRedis:
    emb = cfg.redis.embedded
    return EmbeddedRedis(emb.dir or cfg.data_dir / "redis", binary=emb.binary, listen=emb.listen,
                         startup_timeout_s=emb.startup_timeout_s)


async def report_from_store(cfg: Config, month: str, now_wall: float) -> dict[str, Any]:
    """CMP-MONTHLY for the CLI: ``redis.url``, else the embedded server of a running daemon (found
    through its data directory), else a private one started just for this and stopped after."""
    embedded: EmbeddedRedis | None = None
    url = cfg.redis.url
    if url is None:
        candidate = embedded_for(cfg)
        running = await candidate.running_url()
        if running is not None:
            url = running
        else:
            embedded = candidate
            url = await embedded.start()
    store = CommitmentStore.from_config(url, cfg.redis, cfg.commitments.key_prefix)
    try:
        return await complaints_report(store, cfg, month, now_wall)
    finally:
        await store.close()
        if embedded is not None:
            await embedded.stop()
