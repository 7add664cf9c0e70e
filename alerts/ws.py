"""Live alerts over websockets: the fan-out to supervisor screens and wallboards.

:class:`WebSocketHub` is an alert-hub :class:`~alerts.hub.Sink`.  A frame is
serialised once — JSON, UTF-8 and the RFC 6455 frame header (``websockets.frames``)
— and the same bytes are handed to every client's transport (``transport.write``,
which never waits): no per-client JSON, encoding, compression, queue or task
wake-up, so a fan-out to 500 screens costs 500 buffered writes, ``FANOUT_CHUNK`` per turn
of the event loop.  Each client's
backlog is bounded in bytes: the kernel's socket buffer (``http.websocket_socket_buffer_kib``,
set on the connection) plus at most ``http.websocket_buffer_kib`` waiting in the transport (a
single frame to a client with nothing waiting always goes, however large).  A client past that
is too slow: it is dropped (closed with 1013 "try again later",
counted in ``dropped``) and the others carry on.  A client that cannot even take
the close frame within ``close_timeout_s`` gets its TCP connection aborted, so a
stuck browser costs nothing after that.  Frames are not compressed (permessage-deflate
would cost one zlib stream per client per frame; KPI and alert frames are 1–2 KB).

Protocol (JSON text frames):

* server -> client: ``{"type": "hello", "name", "role", "permissions", "open_alerts": [...]}``
  once authenticated (open and acknowledged, not yet resolved, violations;
  taken in the same step as the client is registered, so no change falls in
  between); then ``{"type": "alert" | "notice", "change": "opened" | "acked" |
  "resolved", "by", ...Alert.to_json()}``; replies ``{"type": "pong"}`` and
  ``{"type": "error", "code", "message": {"zh", "en"}}``; other frame types through
  :meth:`WebSocketHub.publish`: ``{"type": "kpi", ...}`` (wallboard KPIs, coalesced, at most a few
  per second) and ``{"type": "spy", "session": {...}}`` (listen / whisper / barge state).
* client -> server: ``{"type": "subscribe", "topics": ["kpi", "spy"]}`` (then those frames
  come too, the latest ``kpi`` at once), ``{"type": "ack" | "resolve", "id": "A12"}`` (permission
  ``alerts:ack``; the result reaches every client as an ``acked``/``resolved``
  change), ``{"type": "ping"}``.

Authentication: ``Authorization: Bearer <token>`` on the upgrade request (a bad
token is refused with HTTP 401 before the upgrade), a logged-in browser's session
cookie (same origin only), or, for browsers, which
cannot set headers, a first frame ``{"type": "auth", "token": ...}`` within
``auth_timeout_s`` (otherwise closed with 4401).  Tokens are never accepted in
the URL, where access logs and proxies would record them.  Alert frames go to
roles with ``alerts:read``; notices to roles with ``notices:read``.

Team scoping: :attr:`WebSocketHub.scope` (``monitor.web.build_app`` sets it from ``ui.teams``, see
:func:`monitor.spy.alert_in_scope`) decides which alerts and notices a client sees — in the hello
snapshot and live — and which it may ack / resolve (another team's: ``forbidden``).  A principal
without teams (tokens, admins, QA by default) sees everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import socket
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import WSCloseCode, WSMsgType, web
from websockets.frames import Frame, Opcode

from alerts.hub import AlertChange, AlertError, AlertHub
from alerts.model import Alert
from config.schema import HttpConfig
from monitor.auth import (
    SESSION_COOKIE,
    Permission,
    Principal,
    TokenStore,
    bearer_token,
    json_error,
    same_origin,
    unauthorized,
)

log = logging.getLogger(__name__)

CLOSE_UNAUTHORIZED: Final = 4401
CLOSE_TOO_SLOW: Final = int(WSCloseCode.TRY_AGAIN_LATER)  # 1013
CLOSE_GOING_AWAY: Final = int(WSCloseCode.GOING_AWAY)  # 1001

#: Frame types a client may subscribe to (``{"type": "subscribe", "topics": ["kpi"]}``).
SUBSCRIBABLE: Final = frozenset({"kpi", "spy"})

#: Most alerts sent in the hello snapshot (the newest are kept).
SNAPSHOT_LIMIT: Final = 1000

#: Clients written to per turn of the event loop in a fan-out (~13 µs each on this project's box).
FANOUT_CHUNK = 256

#: may this principal see (and ack / resolve) this alert?  (team scoping)
AlertScope = Callable[[Principal, Alert], bool]


def _everyone(principal: Principal, alert: Alert) -> bool:
    return True


def change_frame(change: AlertChange) -> dict[str, Any]:
    """The JSON object for one alert change (websocket frame and webhook body)."""
    obj = change.alert.to_json()
    obj["type"] = "notice" if change.alert.kind == "notice" else "alert"
    obj["change"] = change.kind
    obj["by"] = change.by
    return obj


def _dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def text_frame(obj: dict[str, Any]) -> bytes:
    """``obj`` as one complete, unmasked websocket text frame (server to client), ready for the wire."""
    return Frame(Opcode.TEXT, _dumps(obj).encode()).serialize(mask=False)


_PONG: Final = text_frame({"type": "pong"})


def _error(code: str, zh: str, en: str, **extra: object) -> bytes:
    return text_frame({"type": "error", "code": code, "message": {"zh": zh, "en": en}, **extra})


@dataclass(eq=False, slots=True)
class _Client:
    id: int
    principal: Principal
    ws: web.WebSocketResponse
    request: web.Request
    transport: asyncio.Transport
    closer: asyncio.Task[None] | None = None
    closing: bool = False
    topics: set[str] = field(default_factory=set)  # frame types asked for with {"type": "subscribe"}


class WebSocketHub:
    """Alert sink and ``/ws`` handler.  ``offer`` never blocks; ``shutdown`` closes every socket (1001)."""

    name = "websocket"

    def __init__(self, alerts: AlertHub, tokens: TokenStore, cfg: HttpConfig, *,
                 auth_timeout_s: float = 5.0, close_timeout_s: float = 2.0,
                 heartbeat_s: float | None = 30.0, max_frame_bytes: int = 64 * 1024) -> None:
        self._alerts = alerts
        self._tokens = tokens
        self._max_backlog = cfg.websocket_buffer_kib * 1024
        self._sndbuf = cfg.websocket_socket_buffer_kib * 1024
        self._auth_timeout = auth_timeout_s
        self._close_timeout = close_timeout_s
        self._heartbeat = heartbeat_s
        self._max_frame = max_frame_bytes
        self._clients: set[_Client] = set()
        self._sockets: weakref.WeakSet[web.WebSocketResponse] = weakref.WeakSet()
        self._tasks: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)
        self._closing = False
        self._latest: dict[str, tuple[bytes, Callable[[Principal], bool]]] = {}  # publish(latest=True)
        self.scope: AlertScope = _everyone  # team scoping of alert / notice frames and acks
        self.sent = 0
        self.dropped = 0  # clients dropped for being too slow
        self.refused = 0  # connections refused for a missing/bad token

    @property
    def clients(self) -> int:
        """Authenticated clients connected now."""
        return len(self._clients)

    # -- Sink ------------------------------------------------------------------------

    def offer(self, change: AlertChange) -> None:
        frame = text_frame(change_frame(change))
        perm: Permission = "notices:read" if change.alert.kind == "notice" else "alerts:read"
        self._fan_out(frame, [c for c in self._clients
                              if c.principal.can(perm) and self.scope(c.principal, change.alert)], 0)

    def _fan_out(self, frame: bytes, targets: list[_Client], start: int) -> None:
        """Write ``frame`` to ``targets[start:]``, ``FANOUT_CHUNK`` clients per turn of the event loop, so a
        fan-out to thousands of screens never holds the loop for long.  Each client still gets every frame
        in order: the next chunk of an earlier frame is always scheduled before that of a later one."""
        end = start + FANOUT_CHUNK
        for client in targets[start:end]:
            self._enqueue(client, frame)
        if end < len(targets):
            asyncio.get_running_loop().call_soon(self._fan_out, frame, targets, end)

    def publish(self, frame: dict[str, Any], allow: Callable[[Principal], bool], *, latest: bool = False) -> int:
        """Put another kind of frame (``{"type": "kpi", ...}``, ``{"type": "spy", ...}``) to
        every client that subscribed to its type and that ``allow`` accepts; never blocks.  Coalesce at
        the source (at most a few per second): a client too slow for those is dropped like for alerts.
        ``latest``: kept (one per type) and sent to a client when it subscribes.  Returns how many got it."""
        text = text_frame(frame)
        if latest:
            self._latest[str(frame.get("type"))] = (text, allow)
        kind = str(frame.get("type"))
        targets = [c for c in self._clients if kind in c.topics and allow(c.principal)]
        self._fan_out(text, targets, 0)
        return len(targets)

    def _enqueue(self, client: _Client, frame: bytes) -> None:
        """Hand ``frame`` (complete frame bytes, shared by every client) to the client's transport, or drop
        the client when its backlog would pass the limit.  Never waits.  Frames from here and aiohttp's own
        (pings, close) never interleave: each is one synchronous ``write``."""
        if client.closing or client.ws.closed:  # never a frame after a close frame
            return
        transport = client.transport
        if transport.is_closing():  # the peer went away; the read loop notices and finishes the client
            return
        backlog = transport.get_write_buffer_size()
        # the limit is on what piles up: one frame to a client with nothing waiting always goes (a
        # hello carrying a busy floor's open alerts may alone be larger than the limit)
        if backlog and backlog + len(frame) > self._max_backlog:
            self.dropped += 1
            log.warning("websocket client #%d (%s) too slow: %d bytes waiting; dropped",
                        client.id, client.principal.name, backlog)
            self._drop(client, CLOSE_TOO_SLOW, "too slow: send buffer full")
            return
        transport.write(frame)
        self.sent += 1

    # -- connection ------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The ``GET /ws`` handler."""
        if self._closing:
            raise json_error(web.HTTPServiceUnavailable, "shutting_down", "服务正在关闭", "server is shutting down")
        principal: Principal | None = None
        header = request.headers.get("Authorization")
        if header is not None:
            principal = self._tokens.authenticate(bearer_token(header))
            if principal is None:
                self.refused += 1
                raise unauthorized(invalid=True)
        elif self._tokens.sessions is not None and SESSION_COOKIE in request.cookies:
            # a logged-in browser (monitor.ui): its session cookie, from our own origin only
            session = self._tokens.sessions.get(request.cookies.get(SESSION_COOKIE))
            if session is None or not same_origin(request):
                self.refused += 1
                raise unauthorized(invalid=True)
            principal = session.principal
        ws = web.WebSocketResponse(timeout=self._close_timeout, heartbeat=self._heartbeat,
                                   max_msg_size=self._max_frame, compress=False)
        await ws.prepare(request)
        self._sockets.add(ws)
        if principal is None:
            principal = await self._first_frame_auth(ws)
            if principal is None:
                return ws
        if self._closing:
            await ws.close(code=CLOSE_GOING_AWAY, message=b"server shutdown")
            return ws
        client = self._register(principal, ws, request)
        try:
            await self._read_loop(client)
        finally:
            await self._finish(client)
        return ws

    async def _first_frame_auth(self, ws: web.WebSocketResponse) -> Principal | None:
        try:
            msg = await ws.receive(timeout=self._auth_timeout)
        except TimeoutError:
            await self._refuse(ws, "authentication timeout")
            return None
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            return None
        token: object = None
        if msg.type is WSMsgType.TEXT:
            with contextlib.suppress(ValueError):
                obj = json.loads(msg.data)
                if isinstance(obj, dict) and obj.get("type") == "auth":
                    token = obj.get("token")
        principal = self._tokens.authenticate(token) if isinstance(token, str) else None
        if principal is None:
            await self._refuse(ws, "unauthorized")
        return principal

    async def _refuse(self, ws: web.WebSocketResponse, reason: str) -> None:
        self.refused += 1
        with contextlib.suppress(Exception):
            await ws.send_str(_dumps({"type": "error", "code": "unauthorized",
                                      "message": {"zh": "未认证:请先发送有效令牌",
                                                  "en": "not authenticated: send a valid token"}}))
        try:
            async with asyncio.timeout(self._close_timeout):
                await ws.close(code=CLOSE_UNAUTHORIZED, message=reason.encode())
        except TimeoutError:
            pass

    def _register(self, principal: Principal, ws: web.WebSocketResponse, request: web.Request) -> _Client:
        # snapshot and registration in one synchronous step: no change can fall in between
        transport = request.transport
        assert transport is not None  # prepared: the connection is open
        if self._sndbuf:
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._sndbuf)
        client = _Client(next(self._ids), principal, ws, request, transport)
        open_alerts: list[dict[str, Any]] = []
        if principal.can("alerts:read"):
            unresolved = [a for a in self._alerts.alerts()
                          if a.kind == "violation" and a.state != "resolved" and self.scope(principal, a)]
            open_alerts = [a.to_json() for a in unresolved[-SNAPSHOT_LIMIT:]]
        self._clients.add(client)
        self._enqueue(client, text_frame({"type": "hello", "name": principal.name, "role": principal.role,
                                          "permissions": principal.permissions, "open_alerts": open_alerts}))
        log.info("websocket client #%d connected (%s, role %s)", client.id, principal.name, principal.role)
        return client

    async def _read_loop(self, client: _Client) -> None:
        async for msg in client.ws:
            if msg.type is WSMsgType.TEXT:
                self._on_text(client, msg.data)
            elif msg.type is WSMsgType.BINARY:
                self._enqueue(client, _error("bad_frame", "只接受 JSON 文本帧", "only JSON text frames are accepted"))
            elif msg.type is WSMsgType.ERROR:
                exc = client.ws.exception()
                log.info("websocket client #%d: receive failed (%s)", client.id,
                         type(exc).__name__ if exc is not None else "error")
                break
            if client.closing:
                break

    def _on_text(self, client: _Client, data: str) -> None:
        try:
            obj = json.loads(data)
        except ValueError:
            obj = None
        if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
            self._enqueue(client, _error("bad_request", "帧必须是带 type 字段的 JSON 对象",
                                         'a frame must be a JSON object with a "type"'))
            return
        kind = obj["type"]
        if kind == "ping":
            self._enqueue(client, _PONG)
        elif kind in ("ack", "resolve"):
            self._on_ack(client, kind, obj.get("id"))
        elif kind == "subscribe":
            self._on_subscribe(client, obj.get("topics"))
        elif kind == "auth":
            self._enqueue(client, _error("already_authenticated", "已认证", "already authenticated"))
        else:
            self._enqueue(client, _error("unknown_type", f"未知的帧类型:{kind[:40]}",
                                         f"unknown frame type: {kind[:40]}"))

    def _on_subscribe(self, client: _Client, topics: object) -> None:
        if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
            self._enqueue(client, _error("bad_request", "topics 应为字符串列表", '"topics" must be a list of strings'))
            return
        for topic in topics[:16]:
            if topic in client.topics or topic not in SUBSCRIBABLE:
                continue
            client.topics.add(topic)
            latest = self._latest.get(topic)
            if latest is not None and latest[1](client.principal):
                self._enqueue(client, latest[0])

    def _on_ack(self, client: _Client, kind: str, alert_id: object) -> None:
        if not client.principal.can("alerts:ack"):
            self._enqueue(client, _error("forbidden", "当前角色无权确认或解除告警",
                                         "your role may not acknowledge or resolve alerts", request=kind))
            return
        if not isinstance(alert_id, str) or not alert_id:
            self._enqueue(client, _error("bad_request", "缺少告警 id", 'missing alert "id"', request=kind))
            return
        alert = self._alerts.get(alert_id)
        if alert is None:
            self._enqueue(client, _error("not_found", f"告警 {alert_id[:40]} 不存在",
                                         f"no alert {alert_id[:40]}", request=kind, id=alert_id[:40]))
            return
        if not self.scope(client.principal, alert):
            self._enqueue(client, _error("forbidden", f"告警 {alert_id} 不属于你的班组",
                                         f"alert {alert_id} belongs to another team", request=kind, id=alert_id))
            return
        try:
            if kind == "ack":
                self._alerts.ack(alert_id, by=client.principal.name)
            else:
                self._alerts.resolve(alert_id, by=client.principal.name)
        except AlertError:
            zh_state = {"open": "未处理", "acked": "已确认", "resolved": "已解除"}[alert.state]
            zh_verb = "确认" if kind == "ack" else "解除"
            self._enqueue(client, _error("conflict", f"告警 {alert_id} 当前状态为{zh_state},无法{zh_verb}",
                                         f"alert {alert_id} is {alert.state}: cannot {kind}",
                                         request=kind, id=alert_id, state=alert.state))

    # -- closing ---------------------------------------------------------------------

    def _drop(self, client: _Client, code: int, reason: str) -> None:
        """Stop sending to ``client`` and close it in a task of its own (never waits here)."""
        if client.closing:
            return
        client.closing = True
        self._clients.discard(client)
        client.closer = self._spawn(self._close_client(client, code, reason), f"ws-close-{client.id}")

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())

    async def _close_client(self, client: _Client, code: int, reason: str) -> None:
        await self._close_socket(client.ws, code, reason, client.request)

    async def _close_socket(self, ws: web.WebSocketResponse, code: int, reason: str,
                            request: web.Request | None) -> None:
        try:
            async with asyncio.timeout(self._close_timeout):
                await ws.close(code=code, message=reason.encode())
        except TimeoutError:
            # the peer does not read: its buffers are full; do not wait for them to drain
            transport = request.transport if request is not None else None
            if transport is not None:
                transport.abort()
        except Exception as exc:
            log.debug("websocket close failed: %s", type(exc).__name__)

    async def _finish(self, client: _Client) -> None:
        if not client.closing:  # the client went away (or broke the protocol)
            client.closing = True
            self._clients.discard(client)
        if client.closer is not None:
            await asyncio.wait([client.closer])
        log.info("websocket client #%d disconnected (%s)", client.id, client.principal.name)

    async def shutdown(self) -> None:
        """Close every socket with 1001 (going away) and wait for it; later connections get 503."""
        self._closing = True
        by_socket = {c.ws: c for c in self._clients}
        for ws in list(self._sockets):
            client = by_socket.get(ws)
            if client is not None:
                self._drop(client, CLOSE_GOING_AWAY, "server shutdown")
            elif not ws.closed:  # still authenticating, or already being closed
                self._spawn(self._close_socket(ws, CLOSE_GOING_AWAY, "server shutdown", None),
                            "ws-close-unauthenticated")
        while self._tasks:
            await asyncio.wait(list(self._tasks))
