"""The web UI and its API: wallboard, supervisor console, QA view; login, spy, QA, audit, KPIs.

Pages (plain HTML/JS/CSS from ``monitor/static``, no build step; zh-CN with an English switch):
``/wallboard`` (read-only, for a TV; a ``wallboard`` token in the URL *fragment*
``#token=...`` — never sent to the server, so never logged — or a session), ``/console``,
``/qa``, ``/login``.  Pages send a strict Content-Security-Policy (scripts and styles from
``/static`` only).

Routes (JSON errors ``{"error", "message": {"zh", "en"}}`` like the rest of the API):

* ``POST /api/v1/session`` ``{"name", "password"}``: log in (``ui.users``); sets the session
  cookie (``rw_session``: Secure per ``ui.cookie_secure``, HttpOnly, SameSite=Strict) and
  returns ``{"name", "role", "teams", "csrf"}``.  5 failures for a name lock it for 30 s.
* ``GET /api/v1/session``: who am I (+ the CSRF token of a cookie session).
* ``DELETE /api/v1/session``: log out.
* ``GET /api/v1/kpi`` (``kpi:read``): the wallboard snapshot (also pushed as ``kpi`` frames).
* ``POST /api/v1/calls/{id}/spy`` (``calls:spy``) ``{"mode": "listen"|"whisper"|"barge",
  "qa"?: "random"|"onsite"}``; ``GET /api/v1/spy``: sessions (own teams).
* ``GET /api/v1/qa/week`` (``qa:read``), ``GET /api/v1/qa/samples?day&agent&state&overdue&format=csv``,
  ``POST /api/v1/qa/samples/run`` ``{"day"}`` (``qa:review``),
  ``POST /api/v1/qa/samples/{call}/review`` (score card), ``.../appeal`` ``{"reason"}``.
* ``GET /api/v1/audit?limit&action&actor&since`` (``audit:read``, admins).
* ``GET /api/v1/openapi.json``: the OpenAPI document of the whole HTTP API.

A cookie session must send ``X-CSRF-Token`` on every POST / DELETE (``monitor.auth``).

``python -m monitor.ui hash-password`` reads a password on stdin and prints the hash for
``ui.users[].password_hash``.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import logging
import re
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from config.schema import Config
from monitor.audit import AuditLog, audit_key
from monitor.auth import (
    SESSION_COOKIE,
    Principal,
    SessionStore,
    UserDirectory,
    authenticate_request,
    authorize,
    error_class,
    hash_password,
    json_error,
    json_response,
)
from monitor.kpi import KpiPublisher, Wallboard
from monitor.qa import QaError, QaService, Sample, samples_csv
from monitor.spy import Originate, SpyError, SpyService, SpySession, agent_teams, in_scope

log = logging.getLogger(__name__)

STATIC_DIR: Final = Path(__file__).with_name("static")
PAGES: Final = {"/wallboard": "wallboard.html", "/console": "console.html", "/qa": "qa.html", "/login": "login.html"}
CONTENT_TYPES: Final = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".png": "image/png",
                        ".svg": "image/svg+xml"}
CSP: Final = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
              "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
LOCKOUT_FAILURES: Final = 5
LOCKOUT_S: Final = 30.0
_DAY: Final = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass(slots=True)
class UiRuntime:
    """Everything the UI routes share; one per app (``UI`` key)."""

    cfg: Config
    users: UserDirectory
    sessions: SessionStore
    audit: AuditLog
    wallboard: Wallboard
    publisher: KpiPublisher
    spy: SpyService
    qa: QaService
    failures: dict[str, tuple[int, float]] = field(default_factory=dict)  # name -> (failures, locked until)

    def use_redis(self, client: Any, prefix: str) -> None:
        """Keep the audit trail, the QA state and the browser sessions in Redis (the commitments'
        server) instead of memory only; before start.  Audit entries Redis cannot take wait in
        ``<data_dir>/audit-spill.jsonl``."""
        self.audit.client = client
        self.audit.key = audit_key(prefix)
        self.audit.spill_path = self.cfg.data_dir / "audit-spill.jsonl"
        self.qa.use_redis(client, prefix)
        self.sessions.use_redis(client, prefix, self.users)

    def set_originate(self, originate: Originate | None) -> None:
        self.spy.originate = originate


UI: Final = web.AppKey("ui", UiRuntime)


class StoreCollector(Collector):
    """The Redis writers of the audit trail, QA state and browser sessions: what waits, what failed,
    what was lost or spilled to disk (in-memory counters only; labels: ``writer``)."""

    def __init__(self, rt: UiRuntime) -> None:
        self._rt = rt

    def collect(self) -> list[Metric]:
        queue = GaugeMetricFamily("ringwatch_store_write_queue", "Writes waiting for Redis", labels=["writer"])
        failures = CounterMetricFamily("ringwatch_store_write_failures", "Redis writes that failed and are retried",
                                       labels=["writer"])
        lost = CounterMetricFamily("ringwatch_store_writes_lost", "Writes given up (queue full, nothing to keep "
                                   "them in)", labels=["writer"])
        spilled = CounterMetricFamily("ringwatch_audit_spilled", "Audit entries kept in the local spill file "
                                      "because Redis could not take them")
        audit = self._rt.audit
        queue.add_metric(["audit"], audit.pending)
        failures.add_metric(["audit"], audit.failures)
        lost.add_metric(["audit"], audit.dropped)
        qa, sessions = self._rt.qa, self._rt.sessions.writer
        # QA changes that found the queue full are kept and queued later: waiting, not lost
        queue.add_metric(["qa"], (qa.writer.pending if qa.writer is not None else 0) + qa.unqueued)
        failures.add_metric(["qa"], qa.writer.failures if qa.writer is not None else 0)
        lost.add_metric(["qa"], 0)
        queue.add_metric(["sessions"], sessions.pending if sessions is not None else 0)
        failures.add_metric(["sessions"], sessions.failures if sessions is not None else 0)
        lost.add_metric(["sessions"], sessions.dropped if sessions is not None else 0)  # a login to redo
        spilled.add_metric([], audit.spilled)
        return [queue, failures, lost, spilled]


def add_ui(app: web.Application) -> UiRuntime:
    """Register the UI on an app built by ``monitor.web.build_app`` (it calls this)."""
    from monitor.web import ALERTS, CONFIG, MONITOR, REGISTRY, TOKENS, WS_HUB

    cfg, monitor, hub, tokens, ws_hub = app[CONFIG], app[MONITOR], app[ALERTS], app[TOKENS], app[WS_HUB]
    clock = monitor.clock

    def wall() -> float:
        return clock.wall(clock.now())

    sessions = SessionStore(cfg.ui.session_ttl_min * 60)
    tokens.sessions = sessions
    audit = AuditLog(None, audit_key(cfg.commitments.key_prefix), now=wall)
    wallboard = Wallboard(cfg, monitor, hub)

    def push_kpi(frame: dict[str, Any]) -> None:
        ws_hub.publish(frame, lambda p: p.can("kpi:read"), latest=True)

    async def callbacks() -> tuple[int, int]:
        from monitor.commitments_api import COMMITMENTS

        service = app.get(COMMITMENTS)
        if service is None:
            raise LookupError("no commitments")
        due = await service.query(state="open", kind="callback")
        overdue = await service.query(state="overdue", kind="callback")
        return len(due), len(overdue)

    publisher = KpiPublisher(wallboard, push_kpi, cfg.ui.kpi_push_interval_s, callbacks)
    spy = SpyService(cfg.ui, monitor, audit, None, wall)
    qa = QaService(cfg, monitor, audit, wall)
    spy.on_monitoring(qa.record_monitoring)
    users = UserDirectory(cfg.ui.users, qa_team_scoped=cfg.ui.qa_team_scoped)
    rt = UiRuntime(cfg, users, sessions, audit, wallboard, publisher, spy, qa)
    app[REGISTRY].register(StoreCollector(rt))
    app[UI] = rt

    spy.on_change(lambda s: _push_spy(ws_hub, cfg, s))

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        hub.add_sink(audit)
        if audit.client is not None:
            await audit.start()
        await sessions.start()
        await publisher.start()
        await qa.start()
        try:
            yield
        finally:
            await qa.stop()
            await publisher.stop()
            await sessions.stop()
            hub.remove_sink(audit)
            await audit.stop()

    app.cleanup_ctx.append(lifecycle)
    r = app.router
    r.add_get("/", index)
    for path in PAGES:
        r.add_get(path, page)
    r.add_get("/static/{name}", static)
    r.add_post("/api/v1/session", login)
    r.add_get("/api/v1/session", whoami)
    r.add_delete("/api/v1/session", logout)
    r.add_get("/api/v1/kpi", get_kpi)
    r.add_post("/api/v1/calls/{id}/spy", post_spy)
    r.add_get("/api/v1/spy", list_spy)
    r.add_get("/api/v1/qa/week", qa_week)
    r.add_get("/api/v1/qa/samples", qa_samples)
    r.add_post("/api/v1/qa/samples/run", qa_run)
    r.add_post("/api/v1/qa/samples/{id}/review", qa_review)
    r.add_post("/api/v1/qa/samples/{id}/appeal", qa_appeal)
    r.add_get("/api/v1/audit", get_audit)
    from monitor.openapi import openapi_handler

    r.add_get("/api/v1/openapi.json", openapi_handler)
    return rt


def _push_spy(ws_hub: Any, cfg: Config, s: SpySession) -> None:
    teams = agent_teams(cfg.ui, s.agent)

    def allow(p: Principal) -> bool:
        return p.can("calls:spy") and (p.teams is None or bool(p.teams & teams) or p.name == s.by)

    ws_hub.publish({"type": "spy", "session": s.to_json()}, allow)


# -- helpers ---------------------------------------------------------------------------------




async def _body(request: web.Request, allowed: set[str]) -> dict[str, Any]:
    raw = await request.read()
    try:
        body = json.loads(raw) if raw.strip() else {}
    except (ValueError, UnicodeDecodeError):
        raise json_error(web.HTTPBadRequest, "bad_json", "请求体不是有效的 JSON",
                         "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise json_error(web.HTTPBadRequest, "bad_json", "请求体必须是 JSON 对象", "the body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise json_error(web.HTTPBadRequest, "bad_field", f"不支持字段 {unknown[0][:40]}",
                         f"unknown field {unknown[0][:40]} (known: {', '.join(sorted(allowed))})")
    return body


def _bad(name: str, zh: str, en: str) -> web.HTTPException:
    return json_error(web.HTTPBadRequest, "bad_request", f"参数 {name} 无效:{zh}", f"invalid {name}: {en}")


def _check_query(request: web.Request, known: set[str]) -> None:
    unknown = sorted(set(request.query) - known)
    if unknown:
        raise _bad(unknown[0][:40], "不支持该参数", f"unknown parameter (known: {', '.join(sorted(known))})")


# -- pages -----------------------------------------------------------------------------------


async def index(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/console")


def _file_response(path: Path) -> web.Response:
    headers = {"Content-Security-Policy": CSP, "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
               "Cache-Control": "no-cache"}
    ctype = CONTENT_TYPES.get(path.suffix, "application/octet-stream")
    return web.Response(body=path.read_bytes(), content_type=ctype,
                        charset="utf-8" if ctype.startswith("text") else None, headers=headers)


async def page(request: web.Request) -> web.Response:
    return _file_response(STATIC_DIR / PAGES[request.path])


async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if not re.fullmatch(r"[a-z0-9_-]+\.(?:js|css|png|svg|html)", name) or not (STATIC_DIR / name).is_file():
        raise json_error(web.HTTPNotFound, "not_found", "没有这个文件", "no such file")
    return _file_response(STATIC_DIR / name)


# -- session ---------------------------------------------------------------------------------


def _principal_json(p: Principal) -> dict[str, Any]:
    return {"name": p.name, "role": p.role, "teams": None if p.teams is None else sorted(p.teams),
            "permissions": p.permissions, "phone": bool(p.phone)}


async def login(request: web.Request) -> web.Response:
    rt = request.app[UI]
    if request.content_type != "application/json":  # a cross-site form cannot send JSON without a preflight
        raise json_error(web.HTTPUnsupportedMediaType, "unsupported_media_type", "请以 JSON 提交",
                         "send application/json")
    body = await _body(request, {"name", "password"})
    name, password = body.get("name"), body.get("password")
    if not isinstance(name, str) or not isinstance(password, str) or not name or len(name) > 64 \
            or len(password) > 1024:
        raise _bad("name/password", "应为非空字符串", "expected non-empty strings")
    now = time.monotonic()
    fails, until = rt.failures.get(name, (0, 0.0))
    if until > now:
        raise json_error(web.HTTPTooManyRequests, "locked", "登录失败次数过多,请稍后再试",
                         "too many failed logins: try again later", {"Retry-After": str(int(until - now) + 1)})
    principal = await rt.users.verify(name, password)
    if principal is None:
        fails += 1
        rt.failures[name[:64]] = (0, now + LOCKOUT_S) if fails >= LOCKOUT_FAILURES else (fails, 0.0)
        while len(rt.failures) > 10_000:
            del rt.failures[next(iter(rt.failures))]
        rt.audit.record(name[:64], "login.failed", "ui", {})
        raise json_error(web.HTTPUnauthorized, "bad_credentials", "用户名或密码错误", "wrong name or password")
    rt.failures.pop(name, None)
    sid, session = rt.sessions.create(principal)
    rt.audit.record(principal.name, "login", "ui", {"role": principal.role})
    resp = json_response({**_principal_json(principal), "csrf": session.csrf})
    resp.set_cookie(SESSION_COOKIE, sid, httponly=True, secure=rt.cfg.ui.cookie_secure, samesite="Strict", path="/",
                    max_age=int(rt.cfg.ui.session_ttl_min * 60))
    return resp


async def whoami(request: web.Request) -> web.Response:
    rt = request.app[UI]
    principal = authenticate_request(request, request.app[_tokens_key()])
    out = _principal_json(principal)
    session = rt.sessions.get(request.cookies.get(SESSION_COOKIE)) if principal.via == "session" else None
    if session is not None:
        out["csrf"] = session.csrf
    return json_response(out)


async def logout(request: web.Request) -> web.Response:
    rt = request.app[UI]
    principal = authenticate_request(request, request.app[_tokens_key()])  # CSRF-checked for a session
    rt.sessions.delete(request.cookies.get(SESSION_COOKIE))
    resp = json_response({"logged_out": principal.name})
    resp.del_cookie(SESSION_COOKIE, path="/")
    return resp


def _tokens_key() -> Any:
    from monitor.web import TOKENS

    return TOKENS


def _authorize(request: web.Request, permission: Any) -> Principal:
    return authorize(request, request.app[_tokens_key()], permission)


# -- KPIs, spy -------------------------------------------------------------------------------


async def get_kpi(request: web.Request) -> web.Response:
    _authorize(request, "kpi:read")
    return json_response(request.app[UI].wallboard.snapshot())


async def post_spy(request: web.Request) -> web.Response:
    principal = _authorize(request, "calls:spy")
    rt = request.app[UI]
    body = await _body(request, {"mode", "qa", "agent"})
    mode, qa, agent = body.get("mode", "listen"), body.get("qa"), body.get("agent")
    if not isinstance(mode, str) or not (qa is None or isinstance(qa, str)) or not (agent is None or
                                                                                      isinstance(agent, str)):
        raise _bad("mode/qa/agent", "应为字符串", "expected strings")
    try:
        s = await rt.spy.start(principal, request.match_info["id"], mode, qa, agent)
    except SpyError as e:
        raise json_error(error_class(e.status), e.code, e.zh, e.en) from None
    from monitor.web import WS_HUB

    _push_spy(request.app[WS_HUB], rt.cfg, s)
    return json_response({"spy": s.to_json()}, status=201)


async def list_spy(request: web.Request) -> web.Response:
    principal = _authorize(request, "calls:spy")
    rt = request.app[UI]
    rows = [s.to_json() for s in rt.spy.sessions.values()
            if principal.teams is None or s.by == principal.name or in_scope(principal, rt.cfg.ui, None, s.agent)]
    return json_response({"sessions": rows[-200:], "count": len(rows)})


# -- QA --------------------------------------------------------------------------------------


def _scope_agents(principal: Principal, rt: UiRuntime) -> set[str] | None:
    if principal.teams is None:
        return None
    return {a for t in principal.teams if t in rt.cfg.ui.teams for a in rt.cfg.ui.teams[t].agents}


async def qa_week(request: web.Request) -> web.Response:
    principal = _authorize(request, "qa:read")
    _check_query(request, {"week"})
    rt = request.app[UI]
    week = request.query.get("week")
    if week is not None and not re.fullmatch(r"\d{4}-W\d{2}", week):
        raise _bad("week", "格式为 YYYY-Www", "expected YYYY-Www")
    scope = _scope_agents(principal, rt)
    agents = set(rt.spy.monitor.agents) | {a for t in rt.cfg.ui.teams.values() for a in t.agents}
    if scope is not None:
        agents &= scope
    out = rt.qa.week(agents, week)
    if scope is not None:
        out["agents"] = [r for r in out["agents"] if r["agent"] in scope]
    return json_response(out)


async def qa_samples(request: web.Request) -> web.Response:
    principal = _authorize(request, "qa:read")
    _check_query(request, {"day", "agent", "state", "overdue", "format"})
    q = request.query
    day, state, overdue, fmt = q.get("day"), q.get("state"), q.get("overdue"), q.get("format", "json")
    if day is not None and not _DAY.match(day):
        raise _bad("day", "格式为 YYYY-MM-DD", "expected YYYY-MM-DD")
    if state is not None and state not in ("due", "reviewed", "appealed", "rereviewed"):
        raise _bad("state", "应为 due、reviewed、appealed 或 rereviewed",
                   "expected due, reviewed, appealed or rereviewed")
    if overdue is not None and overdue not in ("true", "false"):
        raise _bad("overdue", "应为 true 或 false", "expected true or false")
    if fmt not in ("json", "csv"):
        raise _bad("format", "应为 json 或 csv", "expected json or csv")
    rt = request.app[UI]
    rows = rt.qa.query(day=day, agent=q.get("agent"), state=state,
                       overdue=None if overdue is None else overdue == "true", agents=_scope_agents(principal, rt))
    if fmt == "csv":
        return web.Response(body=("\ufeff" + samples_csv(rows)).encode("utf-8"), content_type="text/csv",
                            charset="utf-8", headers={"Content-Disposition": 'attachment; filename="qa-samples.csv"'})
    return json_response({"samples": rows, "count": len(rows)})


async def qa_run(request: web.Request) -> web.Response:
    principal = _authorize(request, "qa:review")
    rt = request.app[UI]
    body = await _body(request, {"day"})
    day = body.get("day") or rt.qa.day_of(rt.spy._wall() - 86400)
    if not isinstance(day, str) or not _DAY.match(day):
        raise _bad("day", "格式为 YYYY-MM-DD", "expected YYYY-MM-DD")
    try:
        dt.date.fromisoformat(day)
    except ValueError:
        raise _bad("day", "不是有效日期", "not a valid date") from None
    samples = rt.qa.run_sample(day)
    rt.audit.record(principal.name, "qa.sample", day, {"samples": len(samples)})
    return json_response({"day": day, "count": len(samples)}, status=201)


async def qa_review(request: web.Request) -> web.Response:
    principal = _authorize(request, "qa:review")
    rt = request.app[UI]
    body = await _body(request, {"attitude", "norms", "skills", "bonus", "fatal", "comment"})
    try:
        s = rt.qa.review(request.match_info["id"], principal.name, body)
    except QaError as e:
        raise json_error(error_class(e.status), e.code, e.zh, e.en) from None
    return await _saved(rt, s)


async def qa_appeal(request: web.Request) -> web.Response:
    principal = _authorize(request, "qa:read")
    rt = request.app[UI]
    body = await _body(request, {"reason"})
    reason = body.get("reason")
    if not isinstance(reason, str) or not reason.strip() or len(reason) > 2000:
        raise _bad("reason", "请写明申诉理由(不超过 2000 字)", "give the reason (at most 2000 characters)")
    try:
        s = rt.qa.appeal(request.match_info["id"], principal.name, reason)
    except QaError as e:
        raise json_error(error_class(e.status), e.code, e.zh, e.en) from None
    return await _saved(rt, s)


async def _saved(rt: UiRuntime, s: Sample) -> web.Response:
    """200 once the review / appeal is in Redis; 202 (``persisted: false``) when Redis has not confirmed
    it within a few seconds — it is kept, queued and written when Redis answers again."""
    persisted = await rt.qa.persisted()
    body: dict[str, Any] = {"sample": s.to_json(rt.spy._wall(), rt.qa.tz), "persisted": persisted}
    if not persisted:
        body["message"] = {"zh": "已记录,存储暂不可用,恢复后自动写入", "en": "recorded; the store is unavailable "
                           "and it is written when the store is back"}
    return json_response(body, status=200 if persisted else 202)


# -- audit -----------------------------------------------------------------------------------


async def get_audit(request: web.Request) -> web.Response:
    _authorize(request, "audit:read")
    _check_query(request, {"limit", "action", "actor", "since"})
    q = request.query
    try:
        limit = int(q.get("limit", "100"))
        since = float(q["since"]) if "since" in q else None
    except ValueError:
        raise _bad("limit/since", "应为数字", "expected numbers") from None
    if not 1 <= limit <= 10_000 or (since is not None and not since == since):  # NaN
        raise _bad("limit", "应为 1 到 10000", "expected 1..10000")
    audit = request.app[UI].audit
    try:
        rows = await audit.query(limit=limit, action=q.get("action"), actor=q.get("actor"), since=since)
    except Exception as e:
        log.warning("audit: read failed (%s)", type(e).__name__)
        raise json_error(web.HTTPServiceUnavailable, "store_unavailable", "审计存储暂时不可用",
                         "the audit store is unavailable", {"Retry-After": "5"}) from None
    return json_response({"entries": rows, "count": len(rows), "pending": audit.pending})


# -- CLI -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None, read: Callable[[], str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args != ["hash-password"]:
        print("usage: python -m monitor.ui hash-password   (the password is read from stdin / the terminal)",
              file=sys.stderr)
        return 2
    if read is None:
        password = getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
    else:
        password = read()
    if len(password) < 8:
        print("a password needs at least 8 characters", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
