"""Chat-robot sinks (WeCom, DingTalk, Feishu) against local robots on 127.0.0.1 port 0.

Each robot is a small aiohttp app answering with scripted (HTTP status, JSON) pairs,
the way the real ones answer: HTTP 200 with ``errcode`` / ``code`` != 0 when they refuse.
Backoff delays are recorded, not slept; ``stop()`` drains the queue, so a test offers,
stops, then reads what the robot received.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry
from websockets.asyncio.client import connect

from alerts.chat import ChatCollector, ChatSink, DingTalkSink, FeishuSink, WeComSink, chat_sinks, fit_utf8
from alerts.hub import AlertChange, AlertHub
from alerts.model import Alert
from config.schema import ChatConfig, Config, ConfigError, load_config
from monitor.auth import TokenStore
from monitor.clock import LoopClock
from monitor.engine import Monitor
from monitor.web import CHAT_SINKS, AccessLogger, build_app

pytestmark = pytest.mark.usefixtures("no_leftover_tasks")

TOKEN = "robot-access-token-7f3a9c"  # the secret inside a robot URL
SECRET = "SEC0123456789abcdef-signing-secret"
WALL = 1_795_000_000.123  # 2026-11-18 19:06:40 Asia/Shanghai
SUP = "sup-token-0123456789abcdef"


@pytest.fixture(autouse=True)
def _signing_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RW_TEST_SECRET", SECRET)  # what secret_env: RW_TEST_SECRET reads


@dataclass
class Robot:
    """A chat robot: records every POST, answers with the next scripted (status, body); the last repeats."""

    answers: list[tuple[int, dict[str, Any]]] = field(default_factory=lambda: [(200, {"errcode": 0,
                                                                                     "errmsg": "ok"})])
    port: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    arrived: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)

    def url(self, path: str = "/robot/send", query: str = f"access_token={TOKEN}") -> str:
        return f"http://127.0.0.1:{self.port}{path}" + (f"?{query}" if query else "")

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        req = {"path": request.path, "query": {k: v for k, v in request.query.items()},
               "raw_query": request.query_string, "headers": dict(request.headers), "raw": raw,
               "body": json.loads(raw)}
        self.requests.append(req)
        self.arrived.put_nowait(req)
        status, body = self.answers[min(len(self.requests) - 1, len(self.answers) - 1)]
        return web.json_response(body, status=status)


@pytest.fixture
async def robot() -> AsyncIterator[Robot]:
    rb = Robot()
    app = web.Application()
    app.router.add_post("/{tail:.*}", rb.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)  # its log would show the URL
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    rb.port = runner.addresses[0][1]
    yield rb
    await runner.cleanup()


class Delays:
    """Stands in for asyncio.sleep in the sinks' backoff: records, never waits."""

    def __init__(self) -> None:
        self.seen: list[float] = []

    async def __call__(self, d: float) -> None:
        self.seen.append(d)


class Wall:
    """A wall clock for signatures: starts at WALL, each reading 1.5 s later."""

    def __init__(self) -> None:
        self.t = WALL - 1.5

    def __call__(self) -> float:
        self.t += 1.5
        return self.t


def _cfg(provider: str, url: str, **kw: Any) -> ChatConfig:
    base: dict[str, Any] = {"provider": provider, "name": f"floor-{provider}", "url": url,
                            "console_url": "https://ringwatch.example/console?alert={alert_id}",
                            "max_retries": 3, "timeout_s": 2}
    return ChatConfig.model_validate(base | kw)


def _sink(cls: type[ChatSink], cfg: ChatConfig, delays: Delays | None = None, **kw: Any) -> ChatSink:
    return cls(cfg, wall=kw.pop("wall", Wall()), sleep=delays or Delays(), **kw)


def _change(n: int = 1, change: str = "opened", **alert: Any) -> AlertChange:
    fields: dict[str, Any] = {
        "id": f"A{n}", "rule": "IN-ANSWER", "key": f"IN-ANSWER:leg{n}", "severity": "warning", "kind": "violation",
        "at": 15.0, "opened_wall": 1_795_000_000.0, "call": f"c{n}", "agent": "Agent 7001", "queue": "support",
        "caller": "+86139****5678", "text_zh": "坐席 Agent 7001 振铃超过 15 秒(3声)仍未接听",
        "text_en": "Agent 7001 has let a call ring over 15s"}
    by = "floor-a" if change != "opened" else None
    return AlertChange(change, Alert(**(fields | alert)), by)  # type: ignore[arg-type]


MARKDOWN_A1 = (
    "### ringwatch 告警 · IN-ANSWER 振铃超时未接(3声/15秒)\n"
    "坐席 Agent 7001 振铃超过 15 秒(3声)仍未接听\n"
    "\n"
    "> 坐席:Agent 7001\n"
    "> 队列:support\n"
    "> 来电:+86139****5678\n"
    "> 级别:警告\n"
    "> 时间:2026-11-18 19:06:40\n"
    "> 编号:A1\n"
    "\n"
    "[打开控制台](https://ringwatch.example/console?alert=A1)"
)
TEXT_A1 = (
    "ringwatch 告警 · IN-ANSWER 振铃超时未接(3声/15秒)\n"
    "坐席 Agent 7001 振铃超过 15 秒(3声)仍未接听\n"
    "坐席:Agent 7001\n"
    "队列:support\n"
    "来电:+86139****5678\n"
    "级别:警告\n"
    "时间:2026-11-18 19:06:40\n"
    "编号:A1\n"
    "控制台:https://ringwatch.example/console?alert=A1"
)


async def _deliver(sink: ChatSink, *changes: AlertChange) -> None:
    await sink.start()
    for c in changes:
        sink.offer(c)
    await sink.stop()  # drains the queue


# -- exact payloads and signatures ---------------------------------------------------------


async def test_wecom_markdown_payload(robot: Robot) -> None:
    url = robot.url("/cgi-bin/webhook/send", f"key={TOKEN}")
    sink = _sink(WeComSink, _cfg("wecom", url))
    await _deliver(sink, _change(1))
    (req,) = robot.requests
    assert req["path"] == "/cgi-bin/webhook/send"
    assert req["query"] == {"key": TOKEN}
    assert req["headers"]["Content-Type"] == "application/json; charset=utf-8"
    assert req["body"] == {"msgtype": "markdown", "markdown": {"content": MARKDOWN_A1}}
    assert "\\u" not in req["raw"].decode()  # Chinese sent as UTF-8, not escaped
    assert (sink.delivered, sink.failed, sink.retries) == (1, 0, 0)


async def test_wecom_text_payload(robot: Robot) -> None:
    sink = _sink(WeComSink, _cfg("wecom", robot.url("/cgi-bin/webhook/send", f"key={TOKEN}"), message="text"))
    await _deliver(sink, _change(1))
    assert robot.requests[0]["body"] == {"msgtype": "text", "text": {"content": TEXT_A1}}


def _dingtalk_sign(secret: str, ts: str) -> str:
    """The documented algorithm, written out independently of alerts.chat."""
    mac = hmac.new(secret.encode("utf-8"), (ts + "\n" + secret).encode("utf-8"), digestmod=hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


def _feishu_sign(secret: str, ts: str) -> str:
    mac = hmac.new((ts + "\n" + secret).encode("utf-8"), b"", digestmod=hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


async def test_dingtalk_signed_markdown(robot: Robot) -> None:
    sink = _sink(DingTalkSink, _cfg("dingtalk", robot.url(), secret_env="RW_TEST_SECRET"), wall=lambda: WALL)
    await _deliver(sink, _change(1))
    (req,) = robot.requests
    assert req["body"] == {"msgtype": "markdown", "markdown": {
        "title": "ringwatch 告警 · IN-ANSWER 振铃超时未接(3声/15秒)", "text": MARKDOWN_A1}}
    q = req["query"]
    assert set(q) == {"access_token", "timestamp", "sign"}
    assert q["access_token"] == TOKEN
    assert q["timestamp"] == "1795000000123"  # milliseconds
    assert q["sign"] == _dingtalk_sign(SECRET, "1795000000123")
    # on the wire the base64 signature is URL-encoded (+ / = escaped), as DingTalk requires
    raw_sign = req["raw_query"].split("sign=")[1]
    for ch in "=+/":
        assert ch not in raw_sign
    assert parse_qs(req["raw_query"])["sign"] == [q["sign"]]


async def test_dingtalk_text_unsigned(robot: Robot) -> None:
    sink = _sink(DingTalkSink, _cfg("dingtalk", robot.url(), message="text"))
    await _deliver(sink, _change(1))
    (req,) = robot.requests
    assert req["query"] == {"access_token": TOKEN}
    assert req["body"] == {"msgtype": "text", "text": {"content": TEXT_A1}}


async def test_feishu_signed_card(robot: Robot) -> None:
    robot.answers = [(200, {"code": 0, "msg": "success", "data": {}})]
    sink = _sink(FeishuSink, _cfg("feishu", robot.url(f"/open-apis/bot/v2/hook/{TOKEN}", ""),
                                  secret_env="RW_TEST_SECRET"), wall=lambda: WALL)
    await _deliver(sink, _change(1, severity="critical"))
    (req,) = robot.requests
    assert req["path"] == f"/open-apis/bot/v2/hook/{TOKEN}"
    body = req["body"]
    assert body["timestamp"] == "1795000000"  # seconds, a string
    assert body["sign"] == _feishu_sign(SECRET, "1795000000")
    assert {k: v for k, v in body.items() if k not in ("timestamp", "sign")} == {
        "msg_type": "interactive",
        "card": {
            "config": {"wide_screen_mode": True},
            "header": {"title": {"tag": "plain_text", "content": "ringwatch 告警 · IN-ANSWER 振铃超时未接(3声/15秒)"},
                       "template": "red"},
            "elements": [
                {"tag": "div", "text": {"tag": "lark_md", "content": (
                    "坐席 Agent 7001 振铃超过 15 秒(3声)仍未接听\n\n**坐席**:Agent 7001\n**队列**:support\n"
                    "**来电**:+86139****5678\n**级别**:严重\n**时间**:2026-11-18 19:06:40\n**编号**:A1")}},
                {"tag": "action", "actions": [{"tag": "button", "text": {"tag": "plain_text", "content": "打开控制台"},
                                               "type": "primary",
                                               "url": "https://ringwatch.example/console?alert=A1"}]},
            ],
        },
    }
    assert sink.delivered == 1


async def test_feishu_text_unsigned(robot: Robot) -> None:
    robot.answers = [(200, {"StatusCode": 0, "StatusMessage": "success"})]  # the older answer shape
    sink = _sink(FeishuSink, _cfg("feishu", robot.url(f"/open-apis/bot/v2/hook/{TOKEN}", ""), message="text"))
    await _deliver(sink, _change(1))
    body = robot.requests[0]["body"]
    assert body == {"msg_type": "text", "content": {"text": TEXT_A1}}
    assert sink.delivered == 1


async def test_ack_and_notice_texts(robot: Robot) -> None:
    cfg = _cfg("wecom", robot.url("/cgi-bin/webhook/send", f"key={TOKEN}"), message="text",
               filters={"kinds": ["violation", "notice"], "changes": ["opened", "acked", "resolved"],
                        "min_severity": "info"}, console_url=None)
    sink = _sink(WeComSink, cfg)
    notice = _change(2, severity="info", kind="notice", text_zh="超过3声(振铃 20 秒)才接起:请先向客户致歉")
    await _deliver(sink, _change(1, "acked"), notice)
    acked, apology = (r["body"]["text"]["content"] for r in robot.requests)
    assert acked.startswith("ringwatch 已确认 · IN-ANSWER")
    assert "处理人:floor-a" in acked
    assert "控制台" not in acked  # no console_url configured
    assert apology.startswith("ringwatch 提醒 · IN-ANSWER")
    assert "请先向客户致歉" in apology


# -- answers: retries, rate-limit codes, refusals -------------------------------------------


async def test_5xx_is_retried_with_backoff_and_each_attempt_signed_afresh(robot: Robot) -> None:
    robot.answers = [(502, {}), (503, {}), (200, {"errcode": 0, "errmsg": "ok"})]
    delays = Delays()
    sink = _sink(DingTalkSink, _cfg("dingtalk", robot.url(), backoff_initial_s=1, backoff_max_s=60,
                                    secret_env="RW_TEST_SECRET"), delays)
    await _deliver(sink, _change(1))
    assert len(robot.requests) == 3
    stamps = [r["query"]["timestamp"] for r in robot.requests]
    assert len(set(stamps)) == 3  # a fresh timestamp per attempt ...
    for r in robot.requests:  # ... each with its own valid signature
        assert r["query"]["sign"] == _dingtalk_sign(SECRET, r["query"]["timestamp"])
    assert (sink.delivered, sink.failed, sink.retries) == (1, 0, 2)
    assert len(delays.seen) == 2
    assert 0.5 <= delays.seen[0] <= 1.0  # capped exponential, jittered to 50-100 %
    assert 1.0 <= delays.seen[1] <= 2.0


@pytest.mark.parametrize(("cls", "busy", "ok"), [
    (WeComSink, {"errcode": 45009, "errmsg": "api freq out of limit"}, {"errcode": 0, "errmsg": "ok"}),
    (DingTalkSink, {"errcode": 130101, "errmsg": "send too fast, exceed 20 times per minute"},
     {"errcode": 0, "errmsg": "ok"}),
    (FeishuSink, {"code": 9499, "msg": "too many request"}, {"code": 0, "msg": "success"}),
    (FeishuSink, {"code": 11232, "msg": "frequency limited"}, {"code": 0, "msg": "success"}),
])
async def test_provider_rate_limit_code_is_retried(robot: Robot, cls: type[ChatSink], busy: dict[str, Any],
                                                   ok: dict[str, Any]) -> None:
    robot.answers = [(200, busy), (200, ok)]
    sink = _sink(cls, _cfg(cls.provider, robot.url()))
    await _deliver(sink, _change(1))
    assert len(robot.requests) == 2
    assert (sink.delivered, sink.failed, sink.retries) == (1, 0, 1)


@pytest.mark.parametrize(("cls", "refused"), [
    (WeComSink, {"errcode": 93000, "errmsg": "invalid webhook url"}),
    (DingTalkSink, {"errcode": 310000, "errmsg": "keywords not in content"}),
    (FeishuSink, {"code": 19021, "msg": "sign match fail or timestamp is not within one hour from current time"}),
])
async def test_other_error_codes_are_final_failures(robot: Robot, cls: type[ChatSink], refused: dict[str, Any],
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    robot.answers = [(200, refused)]
    sink = _sink(cls, _cfg(cls.provider, robot.url()))
    await _deliver(sink, _change(1), _change(2))
    assert len(robot.requests) == 2  # one attempt each, never retried
    assert (sink.delivered, sink.failed, sink.retries) == (0, 2, 0)
    code = next(iter(v for k, v in refused.items() if k in ("errcode", "code")))
    assert sink.refused == {code: 2}
    text = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("alerts"))
    assert f"code {code}" in text
    assert TOKEN not in text


async def test_4xx_and_non_json_answers_fail_without_retry(robot: Robot) -> None:
    robot.answers = [(404, {"error": "no such robot"})]
    sink = _sink(WeComSink, _cfg("wecom", robot.url()))
    await _deliver(sink, _change(1))
    assert (sink.delivered, sink.failed, sink.retries, len(robot.requests)) == (0, 1, 0, 1)


async def test_network_errors_are_retried_then_counted_and_secrets_never_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    delays = Delays()
    sink = _sink(DingTalkSink, _cfg("dingtalk", f"http://127.0.0.1:{port}/robot/send?access_token={TOKEN}",
                                    max_retries=2, secret_env="RW_TEST_SECRET"), delays)
    await _deliver(sink, _change(1))
    assert (sink.delivered, sink.failed, sink.retries) == (0, 1, 2)
    assert len(delays.seen) == 2
    text = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("alerts"))
    assert "floor-dingtalk" in text
    for secret in (TOKEN, SECRET, str(port)):
        assert secret not in text


# -- filters and the rate limit ---------------------------------------------------------------


async def test_filters_by_rule_severity_kind_change_and_queue(robot: Robot) -> None:
    cfg = _cfg("wecom", robot.url(), filters={"rules": ["IN-WAIT"], "min_severity": "critical",
                                               "queues": ["claims"]})
    sink = _sink(WeComSink, cfg)
    wanted = _change(1, rule="IN-WAIT", severity="critical", queue="claims")
    others = [
        _change(2, rule="IN-ANSWER", severity="critical", queue="claims"),  # rule
        _change(3, rule="IN-WAIT", severity="warning", queue="claims"),  # severity
        _change(4, rule="IN-WAIT", severity="critical", queue="support"),  # queue
        _change(5, rule="IN-WAIT", severity="critical", queue="claims", kind="notice"),  # kind
        _change(1, "resolved", rule="IN-WAIT", severity="critical", queue="claims"),  # change
    ]
    await _deliver(sink, wanted, *others)
    assert [r["body"]["markdown"]["content"].rsplit("编号:", 1)[1][:2] for r in robot.requests] == ["A1"]
    assert (sink.delivered, sink.filtered) == (1, 5)


async def test_rate_limit_drops_counts_and_tells_the_next_message(robot: Robot) -> None:
    now = [0.0]
    cfg = _cfg("wecom", robot.url(), message="text", rate_limit={"per_minute": 6, "burst": 2})
    sink = _sink(WeComSink, cfg, now=lambda: now[0])
    await sink.start()
    t0 = time.perf_counter()
    for n in range(1, 6):  # 5 at once: the burst of 2 goes, 3 are dropped
        sink.offer(_change(n))
    assert time.perf_counter() - t0 < 0.05  # offer never waits
    assert (sink.rate_limited, sink.pending + sink.delivered) == (3, 2)
    now[0] = 9.9  # 6/min = one token per 10 s: not yet
    sink.offer(_change(6))
    now[0] = 15.0  # 1.5 tokens: A7 goes, A8 does not
    sink.offer(_change(7))
    sink.offer(_change(8))
    await sink.stop()
    bodies = [r["body"]["text"]["content"] for r in robot.requests]
    assert [b.rsplit("编号:", 1)[1].split("\n")[0] for b in bodies] == ["A1", "A2", "A7"]
    assert "另有 4 条告警因限流未推送" in bodies[2]  # A3, A4, A5, A6 held back before A7
    assert not any("限流" in b for b in bodies[:2])
    assert (sink.delivered, sink.rate_limited) == (3, 5)  # A8 over the limit too


def test_token_bucket_refills_at_the_configured_rate() -> None:
    from alerts.chat import TokenBucket

    now = [100.0]
    bucket = TokenBucket(per_minute=30, burst=3, now=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    now[0] += 2.0  # 0.5 token/s: one token
    assert [bucket.take(), bucket.take()] == [True, False]
    now[0] += 3600  # never more than the burst
    assert sum(bucket.take() for _ in range(10)) == 3


# -- configuration, secrets, wiring -------------------------------------------------------


def test_config_takes_the_url_and_secret_from_env_or_file(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RW_TEST_DINGTALK_URL", f"https://oapi.dingtalk.com/robot/send?access_token={TOKEN}")
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n", encoding="utf-8")
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(
        "alerts:\n  chat:\n"
        f"    - {{provider: dingtalk, name: floor, url_env: RW_TEST_DINGTALK_URL, secret_file: {secret_file}}}\n"
        f"    - {{provider: feishu, name: qa, url_file: {tmp_path / 'nope'}, message: text}}\n",
        encoding="utf-8")
    cfg = load_config(cfg_file, env={})
    floor, _ = cfg.alerts.chat
    assert floor.robot_url() == f"https://oapi.dingtalk.com/robot/send?access_token={TOKEN}"
    assert floor.secret() == SECRET
    sinks = chat_sinks(cfg.alerts.chat)
    assert [type(s) for s in sinks] == [DingTalkSink, FeishuSink]
    assert sinks[0].problem is None
    assert "no robot URL" in (sinks[1].problem or "")  # the file does not exist
    assert TOKEN not in repr(cfg.model_dump(exclude={"alerts"}))


@pytest.mark.parametrize(("entry", "message"), [
    ({"provider": "wecom", "name": "a"}, "exactly one of url, url_env or url_file"),
    ({"provider": "wecom", "name": "a", "url": "https://x", "url_env": "X"}, "exactly one of url"),
    ({"provider": "wecom", "name": "a", "url_env": "X", "secret_env": "Y"}, "not signed"),
    ({"provider": "slack", "name": "a", "url_env": "X"}, "alerts.chat.0.provider"),
    ({"provider": "feishu", "name": "a", "url_env": "X", "filters": {"min_severity": "loud"}},
     "alerts.chat.0.filters.min_severity"),
    ({"provider": "feishu", "name": "a", "url_env": "X", "rate_limit": {"per_minute": 0}},
     "alerts.chat.0.rate_limit.per_minute"),
])
def test_bad_chat_config_names_the_key(tmp_path: Any, entry: dict[str, Any], message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps({"alerts": {"chat": [entry]}}), encoding="utf-8")
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(path, env={})


def test_chat_robot_names_are_unique(tmp_path: Any) -> None:
    path = tmp_path / "dup.yaml"
    robot = {"provider": "wecom", "name": "floor", "url_env": "X"}
    path.write_text(json.dumps({"alerts": {"chat": [robot, robot | {"provider": "feishu"}]}}), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"names must be unique.*floor"):
        load_config(path, env={})


async def test_a_sink_without_its_url_counts_failures_and_sends_nothing(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("RW_TEST_UNSET_URL", raising=False)
    cfg = ChatConfig.model_validate({"provider": "dingtalk", "name": "floor", "url_env": "RW_TEST_UNSET_URL"})
    sink = _sink(DingTalkSink, cfg)
    await _deliver(sink, _change(1), _change(2))
    assert (sink.delivered, sink.failed, sink.pending) == (0, 2, 0)
    assert any("no robot URL" in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)


def test_markdown_is_cut_to_the_providers_byte_limit() -> None:
    long = "坐席振铃" * 2000
    cut = fit_utf8(long, 4096)
    assert len(cut.encode("utf-8")) <= 4096
    assert cut.endswith("…")
    sink = WeComSink(_cfg("wecom", "http://127.0.0.1:9/x"))
    _, body, _ = sink.request(_change(1, text_zh=long))
    assert len(json.loads(body)["markdown"]["content"].encode("utf-8")) <= 4096


# -- in the app: metrics, and a dead robot never delays the websocket -------------------------


@dataclass
class BlackHole:
    """A TCP server that accepts and reads, and never answers, until ``release()``: from then on
    every connection, open or new, is closed at once."""

    port: int = 0
    accepted: asyncio.Event = field(default_factory=asyncio.Event)
    released: asyncio.Event = field(default_factory=asyncio.Event)

    async def swallow(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted.set()
        read = asyncio.ensure_future(reader.read())  # until EOF: the client gives up
        release = asyncio.ensure_future(self.released.wait())
        await asyncio.wait([read, release], return_when=asyncio.FIRST_COMPLETED)
        for t in (read, release):
            t.cancel()
        await asyncio.gather(read, release, return_exceptions=True)
        writer.close()

    def release(self) -> None:
        self.released.set()


@pytest.fixture
async def black_hole() -> AsyncIterator[BlackHole]:
    hole = BlackHole()
    server = await asyncio.start_server(hole.swallow, "127.0.0.1", 0)
    hole.port = server.sockets[0].getsockname()[1]
    yield hole
    hole.release()
    server.close()
    await server.wait_closed()


async def test_dead_robot_does_not_delay_the_websocket_push(black_hole: BlackHole) -> None:
    cfg = Config.model_validate({"alerts": {"chat": [
        {"provider": "wecom", "name": "dead", "timeout_s": 30, "max_retries": 0,
         "url": f"http://127.0.0.1:{black_hole.port}/cgi-bin/webhook/send?key={TOKEN}"}]}})
    clock = LoopClock()
    hub = AlertHub(clock.now)
    monitor = Monitor(cfg, clock, hub)
    registry = CollectorRegistry()
    app = build_app(monitor, hub, cfg, registry, tokens=TokenStore([(SUP, "floor-a", "supervisor")]))
    runner = web.AppRunner(app, access_log_class=AccessLogger, shutdown_timeout=2)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        base = f"127.0.0.1:{runner.addresses[0][1]}"
        async with connect(f"ws://{base}/ws", additional_headers={"Authorization": f"Bearer {SUP}"},
                           proxy=None, open_timeout=5) as ws:
            assert json.loads(await ws.recv())["type"] == "hello"
            hub.raise_alert(_change(1).alert)
            async with asyncio.timeout(2):
                assert json.loads(await ws.recv())["id"] == "A1"
                await black_hole.accepted.wait()  # the chat sink is now stuck on the black hole with A1
            assert app[CHAT_SINKS][0].pending == 0
            t0 = time.perf_counter()
            hub.raise_alert(_change(2).alert)
            async with asyncio.timeout(1):
                frame = json.loads(await ws.recv())
            elapsed = time.perf_counter() - t0
            assert frame["id"] == "A2"
            assert elapsed < 0.1, f"websocket push took {elapsed * 1000:.0f} ms behind a dead chat robot"
            assert app[CHAT_SINKS][0].pending == 1  # A2 waits behind A1 in the chat sink's own queue
        async with aiohttp.ClientSession() as http, http.get(
                f"http://{base}/metrics", headers={"Authorization": f"Bearer {SUP}"}) as resp:
            text = await resp.text()
        assert 'ringwatch_chat_queue{chat="dead",provider="wecom"} 1.0' in text
        black_hole.release()  # the robot hangs up: A1 and then A2 fail (no retries), and the queue drains
    finally:
        await runner.cleanup()
    sink = app[CHAT_SINKS][0]
    assert (sink.delivered, sink.failed) == (0, 2)
    assert not [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("webhook-")]


def test_collector_counts_every_result() -> None:
    sink = WeComSink(_cfg("wecom", "http://127.0.0.1:9/x"))
    sink.delivered, sink.failed, sink.dropped, sink.rate_limited, sink.retries = 5, 2, 1, 7, 3
    registry = CollectorRegistry()
    registry.register(ChatCollector([sink]))
    get = registry.get_sample_value
    labels = {"chat": "floor-wecom", "provider": "wecom"}
    assert get("ringwatch_chat_deliveries_total", labels | {"result": "delivered"}) == 5
    assert get("ringwatch_chat_deliveries_total", labels | {"result": "failed"}) == 2
    assert get("ringwatch_chat_deliveries_total", labels | {"result": "dropped"}) == 1
    assert get("ringwatch_chat_deliveries_total", labels | {"result": "rate_limited"}) == 7
    assert get("ringwatch_chat_retries_total", labels) == 3
    assert get("ringwatch_chat_queue", labels) == 0
