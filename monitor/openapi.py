"""The OpenAPI 3 document of ringwatch's HTTP API, served at ``GET /api/v1/openapi.json``.

Written by hand next to the routes (``monitor.web``, ``monitor.commitments_api``, ``monitor.ui``);
``tests/test_openapi.py`` checks that every registered route is documented and runs a bounded
schemathesis pass (no 5xx) against a live app.
"""

from __future__ import annotations

from typing import Any, Final

from aiohttp import web

Schema = dict[str, Any]

_ERROR: Final[Schema] = {
    "type": "object", "required": ["error", "message"],
    "properties": {"error": {"type": "string"},
                   "message": {"type": "object", "required": ["zh", "en"],
                               "properties": {"zh": {"type": "string"}, "en": {"type": "string"}}}},
}
_OBJ: Final[Schema] = {"type": "object", "additionalProperties": True}


def _resp(desc: str, schema: Schema | None = None, ctype: str = "application/json") -> Schema:
    out: Schema = {"description": desc}
    if schema is not None:
        out["content"] = {ctype: {"schema": schema}}
    return out


def _err(desc: str) -> Schema:
    return _resp(desc, {"$ref": "#/components/schemas/Error"})


def _op(summary: str, perm: str | None, ok: dict[str, Schema], *, params: list[Schema] | None = None,
        body: Schema | None = None, errors: tuple[int, ...] = (), tag: str = "api") -> Schema:
    responses: dict[str, Schema] = dict(ok)
    if perm is not None:
        responses["401"] = _err("no or unknown token / session")
        responses["403"] = _err(f"the role lacks {perm} (or a session without its CSRF token)")
    for code in errors:
        responses[str(code)] = _err({400: "bad request", 404: "not found", 409: "conflict", 415: "not JSON",
                                     422: "refused", 429: "locked", 501: "not supported by this PBX",
                                     502: "the PBX refused", 503: "store unavailable"}.get(code, "error"))
    op: Schema = {"summary": summary, "tags": [tag], "responses": responses}
    if perm is None:
        op["security"] = []
    else:
        op["description"] = f"Permission `{perm}`."
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


def _q(name: str, schema: Schema, desc: str = "") -> Schema:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": desc}


def _path(name: str = "id") -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}


def _body(props: dict[str, Schema], required: list[str] | None = None) -> Schema:
    out: Schema = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        out["required"] = required
    return out


_STR: Final[Schema] = {"type": "string"}
_DAY: Final[Schema] = {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"}


def document() -> Schema:
    """The OpenAPI 3.0 document (a fresh dict)."""
    ok = {"200": _resp("OK", _OBJ)}
    created = {"201": _resp("created", _OBJ)}
    saved = {**ok, "202": _resp("recorded, not yet confirmed by Redis (persisted: false); written when it is back",
                                _OBJ)}
    paths: dict[str, Schema] = {
        "/healthz": {"get": _op("Health: PBX link (AMI or ESL) and live calls", None, ok, tag="ops")},
        "/metrics": {"get": _op("Prometheus metrics", "metrics:read",
                                {"200": _resp("text format", _STR, "text/plain")}, tag="ops")},
        "/ws": {"get": _op("Websocket: alerts, notices, kpi and spy frames (upgrade)", "alerts:read",
                           {"101": _resp("switching protocols")}, tag="ops")},
        "/api/v1/alerts": {"get": _op("Alert history, newest last", "alerts:read", ok, params=[
            _q("state", {"type": "string", "enum": ["open", "acked", "resolved"]}),
            _q("kind", {"type": "string", "enum": ["violation", "notice"]}),
            _q("limit", {"type": "integer", "minimum": 1, "maximum": 10000})], errors=(400,))},
        "/api/v1/alerts/{id}/ack": {"post": _op("Acknowledge an alert", "alerts:ack", ok, params=[_path()],
                                                errors=(404, 409))},
        "/api/v1/alerts/{id}/resolve": {"post": _op("Resolve an alert", "alerts:ack", ok, params=[_path()],
                                                    errors=(404, 409))},
        "/api/v1/calls": {"get": _op("Live calls (a supervisor's teams only)", "calls:read", ok)},
        "/api/v1/calls/{id}": {"get": _op("One live or recent call", "calls:read", ok, params=[_path()],
                                          errors=(404,))},
        "/api/v1/calls/{id}/disposition": {"post": _op("Log the call's outcome (OUT-WRAPUP)", "calls:dispose",
                                                       created, params=[_path()], body=_body({
                                                           "tag": _STR, "note": {"type": "string", "maxLength": 2000},
                                                           "complaint": {"type": "boolean"}}, ["tag"]),
                                                       errors=(400, 404, 422))},
        "/api/v1/calls/{id}/spy": {"post": _op("Listen / whisper / barge: ring my phone into the call "
                                               "(ChanSpy / eavesdrop)",
                                               "calls:spy", created, params=[_path()], body=_body({
                                                   "mode": {"type": "string", "enum": ["listen", "whisper", "barge"]},
                                                   "qa": {"type": "string", "enum": ["random", "onsite"]},
                                                   "agent": _STR}), errors=(400, 404, 409, 422, 501, 502, 503))},
        "/api/v1/spy": {"get": _op("Spy sessions (my teams)", "calls:spy", ok)},
        "/api/v1/agents": {"get": _op("Agents: state, since, current call, violations today", "agents:read", ok)},
        "/api/v1/kpi": {"get": _op("Wallboard KPIs (also pushed as kpi frames)", "kpi:read", ok)},
        "/api/v1/session": {
            "post": _op("Log in (sets the session cookie; returns the CSRF token)", None, ok, body=_body(
                {"name": {"type": "string", "minLength": 1, "maxLength": 64},
                 "password": {"type": "string", "minLength": 1, "maxLength": 1024}}, ["name", "password"]),
                errors=(400, 401, 415, 429), tag="session"),
            "get": _op("Who am I (+ CSRF token of a session)", "any", ok, tag="session"),
            "delete": _op("Log out", "any", ok, tag="session"),
        },
        "/api/v1/qa/week": {"get": _op("QA-LIVE: monitorings per agent this week, reviews due", "qa:read", ok,
                                       params=[_q("week", {"type": "string", "pattern": r"^\d{4}-W\d{2}$"})],
                                       errors=(400,), tag="qa")},
        "/api/v1/qa/samples": {"get": _op("QA-SAMPLE / QA-SPECIAL samples (json or csv)", "qa:read", {
            "200": {"description": "samples", "content": {"application/json": {"schema": _OBJ},
                                                          "text/csv": {"schema": _STR}}}}, params=[
            _q("day", _DAY), _q("agent", _STR),
            _q("state", {"type": "string", "enum": ["due", "reviewed", "appealed", "rereviewed"]}),
            _q("overdue", {"type": "string", "enum": ["true", "false"]}),
            _q("format", {"type": "string", "enum": ["json", "csv"]})], errors=(400,), tag="qa")},
        "/api/v1/qa/samples/run": {"post": _op("Sample a day's finished calls (default yesterday)", "qa:review",
                                               created, body=_body({"day": _DAY}), errors=(400,), tag="qa")},
        "/api/v1/qa/samples/{id}/review": {"post": _op("Score a sampled call (QA-SCORE)", "qa:review", saved,
                                                       params=[_path()], body=_body({
                                                           "attitude": {"type": "number", "minimum": 0, "maximum": 20},
                                                           "norms": {"type": "number", "minimum": 0, "maximum": 30},
                                                           "skills": {"type": "number", "minimum": 0, "maximum": 50},
                                                           "bonus": {"type": "number", "minimum": 0, "maximum": 10},
                                                           "fatal": {"type": "boolean"}, "comment": _STR}),
                                                       errors=(400, 404, 409, 422), tag="qa")},
        "/api/v1/qa/samples/{id}/appeal": {"post": _op("Appeal a score (sends it to re-review)", "qa:read", saved,
                                                       params=[_path()], body=_body({"reason": _STR}, ["reason"]),
                                                       errors=(400, 404, 409), tag="qa")},
        "/api/v1/audit": {"get": _op("The audit trail, newest first", "audit:read", ok, params=[
            _q("limit", {"type": "integer", "minimum": 1, "maximum": 10000}), _q("action", _STR), _q("actor", _STR),
            _q("since", {"type": "number"})], errors=(400, 503), tag="admin")},
        "/api/v1/commitments": {
            "post": _op("Create a commitment", "commitments:write", created, body=_body({
                "kind": _STR, "customer": _STR, "owner": _STR, "team": _STR, "call_id": _STR, "note": _STR},
                ["kind"]), errors=(400, 404, 422, 503), tag="commitments"),
            "get": _op("Commitments", "commitments:read", ok, params=[
                _q("state", _STR), _q("kind", _STR), _q("agent", _STR), _q("team", _STR), _q("due_before", _STR),
                _q("limit", {"type": "integer", "minimum": 1, "maximum": 10000})], errors=(400, 503),
                tag="commitments"),
        },
        "/api/v1/commitments/{id}": {"get": _op("A commitment and its history", "commitments:read", ok,
                                                params=[_path()], errors=(404, 503), tag="commitments")},
        "/api/v1/commitments/{id}/fulfil": {"post": _op("Fulfil", "commitments:write", ok, params=[_path()], body=_body(
            {"note": _STR, "call_id": _STR, "overdue_reason": _STR}), errors=(400, 404, 409, 422, 503),
            tag="commitments")},
        "/api/v1/commitments/{id}/cancel": {"post": _op("Cancel", "commitments:cancel", ok, params=[_path()],
                                                        body=_body({"reason": _STR}, ["reason"]),
                                                        errors=(400, 404, 409, 503), tag="commitments")},
        "/api/v1/commitments/{id}/note": {"post": _op("Add a note", "commitments:write", ok, params=[_path()],
                                                      body=_body({"text": _STR, "overdue_reason": {"type": "boolean"}},
                                                                 ["text"]), errors=(400, 404, 409, 503),
                                                      tag="commitments")},
        "/api/v1/reports/complaints": {"get": _op("CMP-MONTHLY overdue complaints", "commitments:read", {
            "200": {"description": "report", "content": {"application/json": {"schema": _OBJ},
                                                         "text/csv": {"schema": _STR}}}}, params=[
            _q("month", {"type": "string", "pattern": r"^\d{4}-\d{2}$"}),
            _q("format", {"type": "string", "enum": ["json", "csv"]})], errors=(400, 503), tag="commitments")},
        "/api/v1/lines": {"get": _op("SYS-LINES: trunks, outages, connect rates", "alerts:read", ok, params=[
            _q("hours", {"type": "integer", "minimum": 1, "maximum": 400})], errors=(400, 503), tag="lines")},
        "/api/v1/inspections": {"get": _op("Daily inspection reports (json or csv)", "alerts:read", {
            "200": {"description": "reports", "content": {"application/json": {"schema": _OBJ},
                                                          "text/csv": {"schema": _STR}}}}, params=[
            _q("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
            _q("format", {"type": "string", "enum": ["json", "csv"]})], errors=(400, 503), tag="lines")},
        "/api/v1/inspections/run": {"post": _op("Run the daily inspection now", "admin:*", created,
                                                errors=(409, 503), tag="lines")},
        "/api/v1/inspections/{id}": {"get": _op("One inspection report", "alerts:read", ok, params=[_path()],
                                                errors=(404, 503), tag="lines")},
        "/api/v1/openapi.json": {"get": _op("This document", None, ok, tag="ops")},
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "ringwatch", "version": "1.0",
                 "description": "Real-time contact-centre monitoring. Errors are JSON with zh-CN and English "
                                "messages. Authenticate with `Authorization: Bearer <token>` or the session "
                                "cookie of `POST /api/v1/session` (then send `X-CSRF-Token` on POST/DELETE)."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}, {"session": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                "session": {"type": "apiKey", "in": "cookie", "name": "rw_session"}},
            "schemas": {"Error": _ERROR},
        },
        "paths": paths,
    }


async def openapi_handler(request: web.Request) -> web.Response:
    return web.json_response(document())
