"""Alert changes to chat group robots: WeCom (企业微信), DingTalk (钉钉) and Feishu (飞书).

Each sink is a :class:`~alerts.webhook.WebhookSink` (bounded queue, one named
sender task, retries with capped exponential backoff and jitter, ``stop()``
drains) that changes only *what* is sent and *how the answer is read*:

* :meth:`ChatSink.request` renders the alert in zh-CN (rule, agent, queue,
  the caller as the alert already carries it, masked; time; a link to the
  console) in the provider's message shape, and signs every attempt afresh;
* :meth:`ChatSink.refusal` reads the answer: these robots say HTTP 200 with
  ``errcode`` / ``code`` != 0 when they refuse.  Their rate-limit codes are
  retried like a 5xx; any other code is a final failure.

Before anything is queued, ``offer`` applies the sink's filters (rule, minimum
severity, kind, change, queue) and a token bucket (``rate_limit``).  A change
over the limit is **dropped and counted** (``rate_limited``), and the next
message that does go out says how many were held back since the previous one
("另有 N 条告警因限流未推送"), so the group learns of the gap and the console
has the details.  ``offer`` stays O(1) and never waits: a dead robot never
stalls the websocket fan-out or the other sinks.

Message shapes (the providers' group-robot documentation):

* WeCom:   ``{"msgtype": "markdown", "markdown": {"content"}}`` (≤ 4096 bytes) or
  ``{"msgtype": "text", "text": {"content"}}`` (≤ 2048 bytes); unsigned, the key is in the URL;
  ``errcode`` 45009 = rate limited.
* DingTalk: ``{"msgtype": "markdown", "markdown": {"title", "text"}}`` or ``{"msgtype": "text", ...}``;
  signed (加签): ``sign = urlencode(base64(HMAC-SHA256(key=secret, msg=f"{ms}\\n{secret}")))``,
  sent as the query parameters ``timestamp`` (ms) and ``sign``; ``errcode`` 130101 = rate limited.
* Feishu:  ``{"msg_type": "text", "content": {"text"}}`` or ``{"msg_type": "interactive", "card"}``;
  signed (签名校验): ``sign = base64(HMAC-SHA256(key=f"{s}\\n{secret}", msg=b""))``, sent in the
  body as ``timestamp`` (seconds, a string) and ``sign``; ``code`` 9499 / 11232 = rate limited.

The robot URL holds the robot's access token and is never logged (the base
class logs the sink's name only); so is the signing secret.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, ClassVar, Final
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from alerts.hub import AlertChange
from alerts.webhook import Retryable, SessionFactory, WebhookSink, default_session
from config.schema import ChatConfig, WebhookConfig

log = logging.getLogger(__name__)

SEVERITY_RANK: Final = {"info": 0, "warning": 1, "critical": 2}
SEVERITY_ZH: Final = {"info": "提示", "warning": "警告", "critical": "严重"}
CHANGE_ZH: Final = {"opened": "告警", "acked": "已确认", "resolved": "已解除"}
#: zh-CN names of the rules (RULES.md); an unknown rule is shown by its id only.
RULE_ZH: Final = {
    "IN-ANSWER": "振铃超时未接(3声/15秒)",
    "IN-WAIT": "客户等待超时",
    "IN-SIMPLE": "简单咨询超时",
    "IN-XFER": "转接等待超时",
    "IN-ESCALATE": "投诉回电超时",
    "IN-HANGUP": "坐席先于客户挂机",
    "OUT-HOURS": "非允许时段外呼",
    "OUT-DNC": "呼叫拒绝外呼号码",
    "OUT-HARASS": "骚扰投诉未按时记录",
    "OUT-WRAPUP": "话后小结超时",
    "SYS-LINES": "线路故障",
    "SYS-REC": "通话未录音",
}
_NO_URL: Final = "http://robot-url-missing.invalid/"


class TokenBucket:
    """``burst`` tokens, refilled at ``per_minute`` / 60 per second of ``now()``."""

    def __init__(self, per_minute: float, burst: int, now: Callable[[], float]) -> None:
        self._rate = per_minute / 60.0
        self._burst = float(burst)
        self._now = now
        self._tokens = float(burst)
        self._at = now()

    def take(self) -> bool:
        t = self._now()
        self._tokens = min(self._burst, self._tokens + (t - self._at) * self._rate)
        self._at = t
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


@dataclass(frozen=True, slots=True)
class _Queued(AlertChange):
    """A change as queued by a chat sink: with the number held back by the rate limit before it."""

    held_back: int = 0


@dataclass(frozen=True, slots=True)
class Rendered:
    """One alert change, rendered in zh-CN, before the provider's shape."""

    title: str
    summary: str  # the alert's own zh-CN text
    fields: tuple[tuple[str, str], ...]
    note: str | None
    link: str | None
    severity: str
    change: str

    def markdown(self) -> str:
        """WeCom / DingTalk markdown: a heading, the text, the fields quoted, the console link."""
        lines = [f"### {self.title}", self.summary, ""]
        lines += [f"> {k}:{v}" for k, v in self.fields]
        if self.note:
            lines += ["", self.note]
        if self.link:
            lines += ["", f"[打开控制台]({self.link})"]
        return "\n".join(lines)

    def lark_md(self) -> str:
        """The body of a Feishu card (lark_md has no headings or quotes; the title is the card's header)."""
        lines = [self.summary, "", *(f"**{k}**:{v}" for k, v in self.fields)]
        if self.note:
            lines += ["", self.note]
        return "\n".join(lines)

    def text(self) -> str:
        lines = [self.title, self.summary, *(f"{k}:{v}" for k, v in self.fields)]
        if self.note:
            lines.append(self.note)
        if self.link:
            lines.append(f"控制台:{self.link}")
        return "\n".join(lines)


def _zone(name: str) -> tuple[timezone | ZoneInfo, str]:
    try:
        return ZoneInfo(name), ""
    except (ZoneInfoNotFoundError, ValueError):
        if name == "Asia/Shanghai":  # no tz database in the image: China has no DST
            return timezone(timedelta(hours=8)), ""
        return UTC, " UTC"


def _one_line(v: str) -> str:
    return " ".join(v.split())


def _code(v: object) -> int:
    if isinstance(v, bool):
        return -1
    if isinstance(v, int):
        return v
    if isinstance(v, str) and v.lstrip("-").isdigit():
        return int(v)
    return -1


def fit_utf8(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` of UTF-8 (never inside a character), marked with …"""
    raw = text.encode("utf-8")
    if len(raw) <= max_bytes:
        return text
    return raw[: max_bytes - 3].decode("utf-8", errors="ignore") + "…"


def render(change: AlertChange, *, zone: str = "Asia/Shanghai", console_url: str | None = None,
           held_back: int = 0) -> Rendered:
    a = change.alert
    rule_zh = RULE_ZH.get(a.rule)
    what = "提醒" if a.kind == "notice" and change.kind == "opened" else CHANGE_ZH[change.kind]
    title = f"ringwatch {what} · {a.rule}" + (f" {rule_zh}" if rule_zh else "")
    tz, suffix = _zone(zone)
    fields: list[tuple[str, str]] = []
    if a.agent:
        fields.append(("坐席", _one_line(a.agent)))
    if a.queue:
        fields.append(("队列", _one_line(a.queue)))
    if a.caller:
        fields.append(("来电", a.caller))  # masked by the monitor, per privacy.mask_callers
    fields.append(("级别", SEVERITY_ZH.get(a.severity, a.severity)))
    fields.append(("时间", datetime.fromtimestamp(a.opened_wall, tz).strftime("%Y-%m-%d %H:%M:%S") + suffix))
    if change.kind != "opened" and change.by:
        fields.append(("处理人", _one_line(change.by)))
    fields.append(("编号", a.id))
    note = f"另有 {held_back} 条告警因限流未推送,请到控制台查看。" if held_back else None
    link = console_url.replace("{alert_id}", quote(a.id, safe="")) if console_url else None
    return Rendered(title, _one_line(a.text_zh), tuple(fields), note, link, a.severity, change.kind)


class ChatSink(WebhookSink):
    """A group robot; subclasses give the message shape, the signature and the refusal codes."""

    provider: ClassVar[str]
    #: answer codes that mean "rate limited": retried with backoff
    RATE_LIMIT_CODES: ClassVar[frozenset[int]] = frozenset()
    #: the provider's size limits, in bytes of UTF-8
    MARKDOWN_MAX: ClassVar[int] = 16_000
    TEXT_MAX: ClassVar[int] = 16_000

    def __init__(self, cfg: ChatConfig, session_factory: SessionFactory = default_session, *,
                 zone: str = "Asia/Shanghai", now: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, rng: random.Random | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        url = cfg.robot_url()
        problem = None
        if url is None:
            problem = "no robot URL (url_env / url_file unset or empty)"
        elif not url.startswith(("https://", "http://")):
            problem = "the robot URL does not start with http(s)://"
        secret = cfg.secret()
        if (cfg.secret_env or cfg.secret_file) and not secret:
            problem = problem or "the signing secret (secret_env / secret_file) is unset or empty"
        hook = WebhookConfig(name=cfg.name, url=_NO_URL if problem or url is None else url, timeout_s=cfg.timeout_s,
                             max_queue=cfg.max_queue, max_retries=cfg.max_retries,
                             backoff_initial_s=cfg.backoff_initial_s, backoff_max_s=cfg.backoff_max_s)
        super().__init__(hook, session_factory, rng=rng, sleep=sleep)
        self.chat = cfg
        self.problem = problem  # not None: the sink cannot deliver; every accepted change counts as failed
        self._secret = secret
        self._zone = zone
        self._wall = wall
        self._bucket = TokenBucket(cfg.rate_limit.per_minute, cfg.rate_limit.burst, now)
        self._held_back = 0  # rate-limited since the last change that went into the queue
        self.filtered = 0  # not for this sink (filters); not a failure
        self.rate_limited = 0  # over the rate limit: dropped, counted, mentioned in the next message
        self.refused: dict[int, int] = {}  # provider error code -> times seen (final or retried)

    # -- Sink ------------------------------------------------------------------------

    def wants(self, change: AlertChange) -> bool:
        f, a = self.chat.filters, change.alert
        return ((not f.rules or a.rule in f.rules)
                and SEVERITY_RANK.get(a.severity, 0) >= SEVERITY_RANK[f.min_severity]
                and a.kind in f.kinds
                and change.kind in f.changes
                and (not f.queues or a.queue in f.queues))

    def offer(self, change: AlertChange) -> None:
        if not self.wants(change):
            self.filtered += 1
            return
        if self.problem is not None:
            self.failed += 1
            if self.failed == 1 or self.failed % 100 == 0:
                log.error("chat %s (%s): cannot deliver: %s (%d alert changes lost so far)", self.name,
                          self.provider, self.problem, self.failed)
            return
        if not self._bucket.take():
            self.rate_limited += 1
            self._held_back += 1
            if self.rate_limited == 1 or self.rate_limited % 100 == 0:
                log.warning("chat %s (%s): over the rate limit (%g/min, burst %d): alert change dropped "
                            "(%d so far)", self.name, self.provider, self.chat.rate_limit.per_minute,
                            self.chat.rate_limit.burst, self.rate_limited)
            return
        held, self._held_back = self._held_back, 0
        super().offer(_Queued(change.kind, change.alert, change.by, held))

    async def start(self) -> None:
        await super().start()
        if self.problem is not None:
            log.error("chat %s (%s): cannot deliver: %s", self.name, self.provider, self.problem)

    # -- WebhookSink hooks -----------------------------------------------------------

    def request(self, change: AlertChange) -> tuple[str, bytes, dict[str, str]]:
        held = change.held_back if isinstance(change, _Queued) else 0
        msg = render(change, zone=self._zone, console_url=self.chat.console_url, held_back=held)
        url, payload = self.sign(self.cfg.url, self.payload(msg))
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        return url, body, {"Content-Type": "application/json; charset=utf-8"}

    def refusal(self, status: int, answer: bytes) -> str | None:
        refused = super().refusal(status, answer)  # raises Retryable on 5xx / 408 / 429
        if refused is not None:
            return refused
        try:
            obj = json.loads(answer)
        except ValueError:
            return f"HTTP {status} with an answer that is not JSON"
        if not isinstance(obj, dict):
            return f"HTTP {status} with an unexpected answer"
        code, msg = self.answer_code(obj)
        if code == 0:
            return None
        self.refused[code] = self.refused.get(code, 0) + 1
        text = _one_line(str(msg))[:160]
        if code in self.RATE_LIMIT_CODES:
            raise Retryable(f"code {code} (rate limited): {text}")
        return f"code {code}: {text}"

    # -- per provider ----------------------------------------------------------------

    def payload(self, msg: Rendered) -> dict[str, Any]:
        raise NotImplementedError

    def sign(self, url: str, payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The URL and payload of one attempt, signed when the robot has a secret."""
        return url, payload

    @staticmethod
    def answer_code(obj: dict[str, Any]) -> tuple[int, object]:
        """The provider's result code (0 = accepted) and message in an answer."""
        return _code(obj.get("errcode", 0)), obj.get("errmsg", "")


class WeComSink(ChatSink):
    """企业微信群机器人: ``.../cgi-bin/webhook/send?key=...``; no signature (the key is the secret)."""

    provider = "wecom"
    RATE_LIMIT_CODES = frozenset({45009})  # api freq out of limit (20 messages a minute per robot)
    MARKDOWN_MAX = 4096
    TEXT_MAX = 2048

    def payload(self, msg: Rendered) -> dict[str, Any]:
        if self.chat.message == "markdown":
            return {"msgtype": "markdown", "markdown": {"content": fit_utf8(msg.markdown(), self.MARKDOWN_MAX)}}
        return {"msgtype": "text", "text": {"content": fit_utf8(msg.text(), self.TEXT_MAX)}}


def dingtalk_sign(secret: str, timestamp_ms: str) -> str:
    """DingTalk 加签 (before URL encoding): base64(HMAC-SHA256(key=secret, msg=timestamp + "\\n" + secret))."""
    digest = hmac.new(secret.encode("utf-8"), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


class DingTalkSink(ChatSink):
    """钉钉自定义机器人: ``.../robot/send?access_token=...`` (+ ``&timestamp=&sign=`` when 加签)."""

    provider = "dingtalk"
    RATE_LIMIT_CODES = frozenset({130101})  # send too fast, exceed 20 times per minute
    MARKDOWN_MAX = TEXT_MAX = 18_000

    def payload(self, msg: Rendered) -> dict[str, Any]:
        if self.chat.message == "markdown":
            return {"msgtype": "markdown",
                    "markdown": {"title": msg.title, "text": fit_utf8(msg.markdown(), self.MARKDOWN_MAX)}}
        return {"msgtype": "text", "text": {"content": fit_utf8(msg.text(), self.TEXT_MAX)}}

    def sign(self, url: str, payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        if not self._secret:
            return url, payload
        ts = str(int(self._wall() * 1000))
        query = urlencode({"timestamp": ts, "sign": dingtalk_sign(self._secret, ts)})
        return f"{url}{'&' if '?' in url else '?'}{query}", payload


def feishu_sign(secret: str, timestamp_s: str) -> str:
    """Feishu 签名校验: base64(HMAC-SHA256(key=timestamp + "\\n" + secret, msg=b""))."""
    digest = hmac.new(f"{timestamp_s}\n{secret}".encode(), b"", hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


class FeishuSink(ChatSink):
    """飞书自定义机器人: ``.../open-apis/bot/v2/hook/<token>``; signature in the body."""

    provider = "feishu"
    RATE_LIMIT_CODES = frozenset({9499, 11232})  # too many request / frequency limited
    MARKDOWN_MAX = TEXT_MAX = 18_000
    _TEMPLATE: ClassVar[dict[str, str]] = {"critical": "red", "warning": "orange", "info": "blue"}

    def payload(self, msg: Rendered) -> dict[str, Any]:
        if self.chat.message == "text":
            return {"msg_type": "text", "content": {"text": fit_utf8(msg.text(), self.TEXT_MAX)}}
        elements: list[dict[str, Any]] = [
            {"tag": "div", "text": {"tag": "lark_md", "content": fit_utf8(msg.lark_md(), self.MARKDOWN_MAX)}}]
        if msg.link:
            elements.append({"tag": "action", "actions": [
                {"tag": "button", "text": {"tag": "plain_text", "content": "打开控制台"}, "type": "primary",
                 "url": msg.link}]})
        template = "green" if msg.change == "resolved" else self._TEMPLATE.get(msg.severity, "blue")
        return {"msg_type": "interactive", "card": {
            "config": {"wide_screen_mode": True},
            "header": {"title": {"tag": "plain_text", "content": msg.title}, "template": template},
            "elements": elements}}

    def sign(self, url: str, payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        if not self._secret:
            return url, payload
        ts = str(int(self._wall()))
        return url, {"timestamp": ts, "sign": feishu_sign(self._secret, ts), **payload}

    @staticmethod
    def answer_code(obj: dict[str, Any]) -> tuple[int, object]:
        code = obj.get("code", obj.get("StatusCode", 0))  # older answers: StatusCode / StatusMessage
        return _code(code), obj.get("msg", obj.get("StatusMessage", ""))


PROVIDERS: Final[dict[str, type[ChatSink]]] = {"wecom": WeComSink, "dingtalk": DingTalkSink,
                                               "feishu": FeishuSink}


def chat_sinks(configs: Iterable[ChatConfig], session_factory: SessionFactory = default_session, *,
               zone: str = "Asia/Shanghai") -> list[ChatSink]:
    """One sink per configured robot (``alerts.chat``)."""
    return [PROVIDERS[c.provider](c, session_factory, zone=zone) for c in configs]


class ChatCollector(Collector):
    """The chat sinks' counters at scrape time (in-memory only)."""

    def __init__(self, sinks: list[ChatSink]) -> None:
        self._sinks = sinks

    def collect(self) -> list[Metric]:
        results = CounterMetricFamily(
            "ringwatch_chat_deliveries", "Alert changes offered to chat robots, by result "
            "(delivered, failed, dropped: queue full or shutdown, rate_limited: over the sink's rate limit)",
            labels=["chat", "provider", "result"])
        retries = CounterMetricFamily("ringwatch_chat_retries", "Chat robot deliveries retried (5xx, network, "
                                      "provider rate limit)", labels=["chat", "provider"])
        queued = GaugeMetricFamily("ringwatch_chat_queue", "Alert changes waiting for a chat robot",
                                   labels=["chat", "provider"])
        for s in self._sinks:
            for result, n in (("delivered", s.delivered), ("failed", s.failed), ("dropped", s.dropped),
                              ("rate_limited", s.rate_limited)):
                results.add_metric([s.name, s.provider, result], n)
            retries.add_metric([s.name, s.provider], s.retries)
            queued.add_metric([s.name, s.provider], s.pending)
        return [results, retries, queued]
