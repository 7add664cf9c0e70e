"""The HTTP face of ringwatch: health, Prometheus metrics, live alerts (websocket) and a small JSON API.

:func:`build_app` wires the shared objects under typed :class:`web.AppKey` s.
Lifecycles go through aiohttp: the alert sinks (websocket hub, webhooks, chat robots) are
started and stopped by a ``cleanup_ctx``; open websockets are closed with 1001
(going away) on the app's ``on_shutdown`` already, because aiohttp waits for
running handlers (a websocket is one) *before* it runs the cleanup contexts.

Routes (every error is JSON: ``{"error": code, "message": {"zh", "en"}}``):

* ``GET /healthz`` (no token): ``{status: ok|degraded, pbx, pbx_connected, ami_connected, live_calls}``
  (``ami_connected``: the same as ``pbx_connected``, kept for checks written before FreeSWITCH)
* ``GET /metrics`` (``metrics:read``; no token when ``http.metrics_require_token`` is false)
* ``GET /ws`` (any role): live alerts, see ``alerts.ws``
* ``GET /api/v1/alerts?state=open|acked|resolved&kind=violation|notice&limit=N`` (``alerts:read``):
  a principal with teams (a supervisor) sees its teams' alerts only (``monitor.spy.alert_in_scope``)
* ``POST /api/v1/alerts/{id}/ack`` and ``.../resolve`` (``alerts:ack``): 404 unknown id, 403 another
  team's alert, 409 wrong state
* ``GET /api/v1/calls`` (``calls:read``): live calls, callers masked per ``privacy``
* ``GET /api/v1/agents`` (``agents:read``): agents and their states

Run the app with ``access_log_class=AccessLogger``: aiohttp's default access log
prints the request line with its query string and chosen headers; ours prints
the path only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Final

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from alerts.chat import ChatCollector, ChatSink, chat_sinks
from alerts.hub import AlertError, AlertHub
from alerts.webhook import SessionFactory, WebhookSink, default_session
from alerts.ws import WebSocketHub
from config.schema import Config
from monitor.auth import TokenStore, authorize, json_error, json_response
from monitor.engine import DispositionError, Monitor
from monitor.lines_api import add_lines_routes
from monitor.metrics import LinkStats, Metrics
from monitor.spy import agent_teams, alert_in_scope, in_scope

log = logging.getLogger(__name__)

MONITOR: Final = web.AppKey("monitor", Monitor)
ALERTS: Final = web.AppKey("alerts", AlertHub)
CONFIG: Final = web.AppKey("config", Config)
TOKENS: Final = web.AppKey("tokens", TokenStore)
REGISTRY: Final = web.AppKey("registry", CollectorRegistry)
METRICS: Final = web.AppKey("metrics", Metrics)
WS_HUB: Final = web.AppKey("ws_hub", WebSocketHub)
WEBHOOKS: Final = web.AppKey("webhooks", list[WebhookSink])
CHAT_SINKS: Final = web.AppKey("chat_sinks", list[ChatSink])

ALERT_STATES: Final = ("open", "acked", "resolved")
ALERT_KINDS: Final = ("violation", "notice")
MAX_LIMIT: Final = 10_000


class AccessLogger(AbstractAccessLogger):
    """Access log without query strings or headers (tokens and phone numbers stay out of logs)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info("%s %s %s %d %.3fs", request.remote, request.method, request.path, response.status, time)


class _SinkCollector(Collector):
    """Gauges/counters of the websocket hub and the webhooks (in-memory counters only)."""

    def __init__(self, ws: WebSocketHub, webhooks: list[WebhookSink]) -> None:
        self._ws = ws
        self._webhooks = webhooks

    def collect(self) -> list[Metric]:
        clients = GaugeMetricFamily("ringwatch_websocket_clients", "Authenticated websocket clients connected")
        clients.add_metric([], self._ws.clients)
        dropped = CounterMetricFamily("ringwatch_websocket_dropped", "Websocket clients dropped for being too slow")
        dropped.add_metric([], self._ws.dropped)
        results = CounterMetricFamily("ringwatch_webhook_deliveries", "Alert changes by webhook and result",
                                      labels=["webhook", "result"])
        queued = GaugeMetricFamily("ringwatch_webhook_queue", "Alert changes waiting for delivery",
                                   labels=["webhook"])
        for w in self._webhooks:
            results.add_metric([w.name, "delivered"], w.delivered)
            results.add_metric([w.name, "failed"], w.failed)
            results.add_metric([w.name, "dropped"], w.dropped)
            queued.add_metric([w.name], w.pending)
        return [clients, dropped, results, queued]


def build_app(monitor: Monitor, hub: AlertHub, cfg: Config, registry: CollectorRegistry,
              link_stats: LinkStats | None = None, *, metrics: Metrics | None = None,
              tokens: TokenStore | None = None, ws_hub: WebSocketHub | None = None,
              session_factory: SessionFactory = default_session) -> web.Application:
    """The web application over ``monitor`` and its alert ``hub``.

    ``metrics``: an already attached :class:`Metrics` (e.g. attached before a
    replay; it brings its own link stats, ``link_stats`` is then unused); by
    default one is created in ``registry`` and attached to ``monitor`` with
    ``link_stats`` (None: the monitor's view of the link).  ``tokens`` default to
    ``TokenStore.from_config(cfg.auth)``; ``ws_hub`` to a hub over ``cfg.http``.
    Websocket-hub and webhook counters are registered in ``registry`` too.
    """
    if metrics is None:
        metrics = Metrics(registry, cfg)
        metrics.attach(monitor, link_stats)
    tokens = tokens if tokens is not None else TokenStore.from_config(cfg.auth)
    ws_hub = ws_hub if ws_hub is not None else WebSocketHub(hub, tokens, cfg.http)
    ws_hub.scope = lambda principal, alert: alert_in_scope(principal, cfg.ui, alert)  # team scoping
    webhooks = [WebhookSink(w, session_factory) for w in cfg.alerts.webhooks]
    registry.register(_SinkCollector(ws_hub, webhooks))
    chats = chat_sinks(cfg.alerts.chat, session_factory, zone=cfg.timezone)
    registry.register(ChatCollector(chats))

    app = web.Application(middlewares=[_json_errors])
    app[MONITOR] = monitor
    app[ALERTS] = hub
    app[CONFIG] = cfg
    app[TOKENS] = tokens
    app[REGISTRY] = registry
    app[METRICS] = metrics
    app[WS_HUB] = ws_hub
    app[WEBHOOKS] = webhooks
    app[CHAT_SINKS] = chats
    app.cleanup_ctx.append(_alert_sinks)
    app.on_shutdown.append(_close_websockets)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/ws", ws_hub.handle)
    app.router.add_get("/api/v1/alerts", list_alerts)
    app.router.add_post("/api/v1/alerts/{id}/ack", ack_alert)
    app.router.add_post("/api/v1/alerts/{id}/resolve", resolve_alert)
    app.router.add_get("/api/v1/calls", list_calls)
    app.router.add_get("/api/v1/calls/{id}", get_call)
    app.router.add_post("/api/v1/calls/{id}/disposition", post_disposition)
    app.router.add_get("/api/v1/agents", list_agents)
    add_lines_routes(app, tokens)  # SYS-LINES: /api/v1/lines, /api/v1/inspections (monitor.lines_api)
    from monitor.ui import add_ui  # the web UI, its login/spy/QA/audit/KPI API and /api/v1/openapi.json

    add_ui(app)
    return app


# -- lifecycle -----------------------------------------------------------------------


async def _alert_sinks(app: web.Application) -> AsyncIterator[None]:
    hub, ws_hub = app[ALERTS], app[WS_HUB]
    hub.add_sink(ws_hub)
    started: list[WebhookSink] = []
    try:
        for sink in [*app[WEBHOOKS], *app[CHAT_SINKS]]:  # chat sinks are webhook sinks
            await sink.start()
            started.append(sink)
            hub.add_sink(sink)
        yield
    finally:
        hub.remove_sink(ws_hub)
        for sink in started:
            hub.remove_sink(sink)
        await ws_hub.shutdown()
        for sink in started:
            await sink.stop()


async def _close_websockets(app: web.Application) -> None:
    await app[WS_HUB].shutdown()


# -- errors --------------------------------------------------------------------------

_GENERIC: Final[dict[int, tuple[str, str, str]]] = {
    400: ("bad_request", "请求无效", "bad request"),
    404: ("not_found", "没有这个地址", "no such resource"),
    405: ("method_not_allowed", "不支持该请求方法", "method not allowed"),
    413: ("too_large", "请求体过大", "request body too large"),
}


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error answers JSON with zh-CN and English messages; headers are never logged."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        code, zh, en = _GENERIC.get(exc.status, ("error", "请求失败", exc.reason.lower()))
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "www-authenticate")}
        response = _error_response(exc.status, code, zh, en)
        response.headers.update(headers)
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        response = _error_response(500, "internal_error", "服务器内部错误", "internal server error")
    if not response.prepared:
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
    return response


def _error_response(status: int, code: str, zh: str, en: str) -> web.Response:
    return json_response({"error": code, "message": {"zh": zh, "en": en}}, status)


# -- handlers ------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    app = request.app
    connected = app[METRICS].link.connected
    return json_response({"status": "ok" if connected else "degraded", "pbx": app[CONFIG].pbx.kind,
                          "pbx_connected": connected, "ami_connected": connected,
                          "live_calls": len(app[MONITOR].calls)})


async def metrics_handler(request: web.Request) -> web.Response:
    app = request.app
    if app[CONFIG].http.metrics_require_token:
        authorize(request, app[TOKENS], "metrics:read")
    return web.Response(body=await render_metrics(app[REGISTRY]), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def render_metrics(registry: CollectorRegistry) -> bytes:
    """The text exposition of ``registry``.  The collectors read live state, so they run on the loop
    (tens of ms at 2,000 agents); formatting what they returned (as long again) runs in a worker thread."""
    families = list(registry.collect())
    return await asyncio.to_thread(generate_latest, _Collected(families))


class _Collected:
    """Stands in for a registry whose collectors have already run (``generate_latest`` only calls
    ``collect``): the families are plain values, safe to format in another thread."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def _bad_query(name: str, zh_hint: str, en_hint: str) -> web.HTTPException:
    return json_error(web.HTTPBadRequest, "bad_request", f"参数 {name} 无效:{zh_hint}",
                      f"invalid parameter {name}: {en_hint}")


async def list_alerts(request: web.Request) -> web.Response:
    app = request.app
    principal = authorize(request, app[TOKENS], "alerts:read")
    q = request.query
    unknown = set(q) - {"state", "kind", "limit"}
    if unknown:
        name = sorted(unknown)[0][:40]
        raise _bad_query(name, "不支持该参数", "unknown parameter (known: state, kind, limit)")
    state = q.get("state")
    if state is not None and state not in ALERT_STATES:
        raise _bad_query("state", "应为 open、acked 或 resolved", "expected open, acked or resolved")
    kind = q.get("kind")
    if kind is not None and kind not in ALERT_KINDS:
        raise _bad_query("kind", "应为 violation 或 notice", "expected violation or notice")
    limit = 1000
    if "limit" in q:
        try:
            limit = int(q["limit"])
        except ValueError:
            limit = -1
        if not 1 <= limit <= MAX_LIMIT:
            raise _bad_query("limit", f"应为 1 到 {MAX_LIMIT} 的整数", f"expected an integer 1..{MAX_LIMIT}")
    ui = app[CONFIG].ui
    alerts = [a for a in app[ALERTS].alerts(state)
              if (kind is None or a.kind == kind) and alert_in_scope(principal, ui, a)]  # own teams only
    shown = alerts[-limit:]
    return json_response({"alerts": [a.to_json() for a in shown], "count": len(shown), "total": len(alerts)})


async def _change(request: web.Request, action: str) -> web.Response:
    app = request.app
    principal = authorize(request, app[TOKENS], "alerts:ack")
    hub = app[ALERTS]
    alert_id = request.match_info["id"]
    alert = hub.get(alert_id)
    if alert is None:
        raise json_error(web.HTTPNotFound, "not_found", f"告警 {alert_id[:40]} 不存在", f"no alert {alert_id[:40]}")
    if not alert_in_scope(principal, app[CONFIG].ui, alert):
        raise json_error(web.HTTPForbidden, "forbidden", f"告警 {alert_id} 不属于你的班组",
                         f"alert {alert_id} belongs to another team")
    try:
        alert = hub.ack(alert_id, principal.name) if action == "ack" else hub.resolve(alert_id, principal.name)
    except AlertError:
        zh_state = {"open": "未处理", "acked": "已确认", "resolved": "已解除"}[alert.state]
        zh_verb = "确认" if action == "ack" else "解除"
        raise json_error(web.HTTPConflict, "conflict", f"告警 {alert_id} 当前状态为{zh_state},无法{zh_verb}",
                         f"alert {alert_id} is {alert.state}: cannot {action}") from None
    return json_response({"alert": alert.to_json()})


async def ack_alert(request: web.Request) -> web.Response:
    return await _change(request, "ack")


async def resolve_alert(request: web.Request) -> web.Response:
    return await _change(request, "resolve")


async def list_calls(request: web.Request) -> web.Response:
    app = request.app
    principal = authorize(request, app[TOKENS], "calls:read")
    monitor = app[MONITOR]
    calls = monitor.live_calls()
    if principal.teams is not None:  # a supervisor's session: their teams only
        calls = [c for c in calls if in_scope(principal, app[CONFIG].ui, c["queue"], c["agent"])
                 or any(in_scope(principal, app[CONFIG].ui, None, r["agent"]) for r in c["ringing"])]
    return json_response({"calls": calls, "count": len(calls), "now": round(monitor.clock.now(), 3)})


async def list_agents(request: web.Request) -> web.Response:
    app = request.app
    principal = authorize(request, app[TOKENS], "agents:read")
    agents = [
        {"name": a.name, "state": a.state, "since": round(a.since, 3), "paused": a.paused, "reason": a.reason,
         "queues": sorted(a.queues), "current_call": a.current_call, "violations_today": a.violations_today}
        for a in sorted(app[MONITOR].agents.values(), key=lambda a: a.name)
        if principal.teams is None or principal.teams & agent_teams(app[CONFIG].ui, a.name)
    ]
    return json_response({"agents": agents, "count": len(agents)})


async def get_call(request: web.Request) -> web.Response:
    """One call, live or recently ended, as its record (caller masked per config)."""
    app = request.app
    authorize(request, app[TOKENS], "calls:read")
    monitor = app[MONITOR]
    call_id = request.match_info["id"]
    call = monitor.call(call_id)
    if call is None:
        raise json_error(web.HTTPNotFound, "not_found", f"找不到通话 {call_id[:60]}", f"no call {call_id[:60]}")
    body = call.to_record(monitor.shown(call.caller))
    body["state"] = call.state
    return json_response({"call": body})


async def post_disposition(request: web.Request) -> web.Response:
    """OUT-WRAPUP: ``{"tag": "valid"|"invalid"|"refused", "note": "...", "complaint": false}``."""
    app = request.app
    principal = authorize(request, app[TOKENS], "calls:dispose")
    monitor = app[MONITOR]
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise json_error(web.HTTPBadRequest, "bad_json", "请求体不是有效的 JSON",
                         "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise json_error(web.HTTPBadRequest, "bad_json", "请求体必须是 JSON 对象", "the body must be a JSON object")
    tag, note, complaint = body.get("tag"), body.get("note", ""), body.get("complaint", False)
    if not isinstance(tag, str) or not isinstance(note, str) or not isinstance(complaint, bool):
        raise json_error(web.HTTPBadRequest, "bad_field", "字段类型错误:tag 与 note 为字符串,complaint 为布尔值",
                         "wrong field types: tag and note are strings, complaint a boolean")
    if len(note) > 2000:
        raise json_error(web.HTTPBadRequest, "note_too_long", "备注过长(最多 2000 字)", "note too long (max 2000)")
    try:
        call = monitor.dispose(request.match_info["id"], tag, note, by=principal.name, source="api",
                               complaint=complaint)
    except DispositionError as e:
        status = web.HTTPNotFound if e.code == "unknown_call" else web.HTTPUnprocessableEntity
        raise json_error(status, e.code, e.zh, e.en) from None
    return json_response({"call": call.id, "disposition": call.disposition, "flags": sorted(call.flags)}, status=201)
