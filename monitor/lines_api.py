"""HTTP API of SYS-LINES: ``add_lines_routes(app, tokens)`` from ``monitor.web.build_app``.

Routes (errors are JSON ``{"error", "message": {"zh", "en"}}`` like the rest of the API; 503
``lines_disabled`` while no line monitor is attached, e.g. ``lines.enabled: false``):

* ``GET /api/v1/lines?hours=24`` (``alerts:read``): trunks with their lines and state (up / down /
  unknown, since, detail, ``stale`` while the PBX link is down), the ongoing and recent outages,
  connect rates per trunk (this hour, last hour, today) and per trunk and hour (last ``hours``).
* ``GET /api/v1/inspections?limit=30&format=json|csv`` (``alerts:read``): the daily inspection
  reports, newest first (CSV: one row per report and trunk).  ``stored: false`` when the store
  (Redis) is down and the reports come from memory.
* ``GET /api/v1/inspections/{id}`` (``alerts:read``): one report.
* ``POST /api/v1/inspections/run`` (admin): run the inspection now (with the probe when enabled);
  201 with the report.  409 while a probe is already running.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web

from monitor.auth import TokenStore, authorize, json_error, json_response
from monitor.inspection import LinesRuntime, reports_csv
from monitor.lines import iso

LINES: Final = web.AppKey("lines", LinesRuntime)
LINES_TOKENS: Final = web.AppKey("lines_tokens", TokenStore)
MAX_LIMIT: Final = 1000


def add_lines_routes(app: web.Application, tokens: TokenStore) -> None:
    app[LINES_TOKENS] = tokens
    app.router.add_get("/api/v1/lines", get_lines)
    app.router.add_get("/api/v1/inspections", list_inspections)
    app.router.add_post("/api/v1/inspections/run", run_inspection)
    app.router.add_get("/api/v1/inspections/{id}", get_inspection)




def _runtime(request: web.Request) -> LinesRuntime:
    runtime = request.app.get(LINES)
    if runtime is None or runtime.inspector is None:
        raise json_error(web.HTTPServiceUnavailable, "lines_disabled", "线路监测未启用",
                         "line monitoring is not enabled (lines.enabled)")
    return runtime


def _int_query(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = lo - 1
    if not lo <= value <= hi:
        raise json_error(web.HTTPBadRequest, "bad_request", f"参数 {name} 应为 {lo} 到 {hi} 的整数",
                         f"invalid parameter {name}: expected an integer {lo}..{hi}")
    return value


async def get_lines(request: web.Request) -> web.Response:
    authorize(request, request.app[LINES_TOKENS], "alerts:read")
    runtime = _runtime(request)
    hours = _int_query(request, "hours", 24, 1, 24 * runtime.cfg.lines.keep_days)
    return json_response(runtime.monitor.snapshot(hours))


async def list_inspections(request: web.Request) -> web.StreamResponse:
    authorize(request, request.app[LINES_TOKENS], "alerts:read")
    runtime = _runtime(request)
    assert runtime.inspector is not None
    limit = _int_query(request, "limit", 30, 1, MAX_LIMIT)
    fmt = request.query.get("format", "json")
    if fmt not in ("json", "csv"):
        raise json_error(web.HTTPBadRequest, "bad_request", "参数 format 应为 json 或 csv",
                         "invalid parameter format: expected json or csv")
    reports, stored = await runtime.inspector.list(limit)
    if fmt == "csv":
        return web.Response(text=reports_csv(reports), content_type="text/csv", charset="utf-8",
                            headers={"Content-Disposition": 'attachment; filename="inspections.csv"'})
    return json_response({"inspections": reports, "count": len(reports), "stored": stored,
                  "next_due": _next_due(runtime)})


def _next_due(runtime: LinesRuntime) -> str | None:
    inspector = runtime.inspector
    if inspector is None or inspector.next_inspection_wall is None:
        return None
    return iso(inspector.next_inspection_wall, inspector.tz)


async def get_inspection(request: web.Request) -> web.Response:
    authorize(request, request.app[LINES_TOKENS], "alerts:read")
    runtime = _runtime(request)
    assert runtime.inspector is not None
    report_id = request.match_info["id"]
    report = await runtime.inspector.get(report_id)
    if report is None:
        raise json_error(web.HTTPNotFound, "not_found", f"巡检报告 {report_id[:40]} 不存在",
                         f"no inspection {report_id[:40]}")
    return json_response({"inspection": report})


async def run_inspection(request: web.Request) -> web.Response:
    authorize(request, request.app[LINES_TOKENS], "admin:*")
    runtime = _runtime(request)
    assert runtime.inspector is not None
    if runtime.probe is not None and runtime.probe.running:
        raise json_error(web.HTTPConflict, "probe_running", "拨测正在进行,请稍后再试",
                         "a test call is running: try again when it has finished")
    report = await runtime.inspector.inspect("manual")
    return json_response({"inspection": report}, status=201)
