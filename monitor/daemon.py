"""The daemon's lifecycle: PBX link, monitor, alert sinks and web server, one
asyncio loop, every task owned and stopped on SIGTERM / SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from alerts.hub import AlertHub
from config.schema import Config
from monitor.auth import TokenStore
from monitor.clock import Clock, LoopClock
from monitor.commitments_api import CommitmentsRuntime
from monitor.engine import Monitor
from monitor.inspection import LinesRuntime
from monitor.outbound_api import OutboundRuntime
from monitor.ui import UI
from monitor.web import AccessLogger, build_app
from telephony.ami.adapter import AsteriskAdapter, channel_rules
from telephony.esl.adapter import FreeSwitchAdapter, esl_channel_rules

log = logging.getLogger(__name__)


class Daemon:
    """ringwatch attached to one PBX.  ``start()`` returns once the HTTP server
    listens (the PBX link connects in the background, with backoff);
    ``stop()`` ends everything in reverse order."""

    def __init__(self, cfg: Config, tokens: TokenStore | None = None, clock_scale: float = 1.0,
                 clock: Clock | None = None, **ami_overrides: Any) -> None:
        """``clock_scale`` > 1 only for a PBX that plays faster than real time (the demo at speed S)."""
        self.cfg = cfg
        self.clock_scale = clock_scale
        self.tokens = tokens if tokens is not None else TokenStore.from_config(cfg.auth)
        self._ami_overrides = ami_overrides
        self.clock: Clock | None = None
        self._given_clock = clock  # tests: a VirtualClock the test moves (None: the loop's clock)
        self.hub: AlertHub | None = None
        self.monitor: Monitor | None = None
        self.pbx: AsteriskAdapter | FreeSwitchAdapter | None = None
        self.registry = CollectorRegistry()
        self._runner: web.AppRunner | None = None
        self.http_port: int | None = None
        self.commitments: CommitmentsRuntime | None = None  # Redis (embedded or redis.url), store, service
        self.lines: LinesRuntime | None = None  # SYS-LINES: line monitor, inspection scheduler, probe worker
        self.outbound: OutboundRuntime | None = None  # OUT-HOURS / OUT-DNC: DNC list, permit check, status

    async def start(self) -> None:
        cfg = self.cfg
        self.clock = clock = self._given_clock or LoopClock(scale=self.clock_scale)
        self.hub = hub = AlertHub(clock.now, cfg.alerts.history_limit)
        self.monitor = monitor = Monitor(cfg, clock, hub)
        self.lines = LinesRuntime(cfg, clock, hub, monitor, self.registry) if cfg.lines.enabled else None
        pbx: AsteriskAdapter | FreeSwitchAdapter
        if cfg.pbx.kind == "freeswitch":  # the overrides (host, port, password, ...) go to the ESL client
            pbx = FreeSwitchAdapter(cfg.pbx.esl, monitor.handle, clock.now, esl_channel_rules(cfg),
                                    **self._ami_overrides)
        else:
            pbx = AsteriskAdapter(cfg.pbx.ami, monitor.handle, clock.now, channel_rules(cfg),
                                  lines=self.lines.tracker if self.lines is not None else None, **self._ami_overrides)
        self.pbx = pbx
        if len(self.tokens) == 0:
            log.warning("no API token is configured (auth.tokens, RINGWATCH_ADMIN_TOKEN): every endpoint "
                        "but /healthz will answer 401 / 未配置访问令牌")
        app = build_app(monitor, hub, cfg, self.registry, link_stats=pbx.stats, tokens=self.tokens)
        if cfg.commitments.enabled:
            self.commitments = CommitmentsRuntime(cfg, clock, hub, monitor, self.registry)
            await self.commitments.start(app)  # never fails for Redis: the API answers 503 until it is back
        ui = app[UI]  # the web UI: audit trail in the commitments' Redis; listen/whisper/barge through the PBX
        if self.commitments is not None and self.commitments.store is not None:
            ui.use_redis(self.commitments.store.client, cfg.commitments.key_prefix)
        ui.set_originate(pbx.spy)  # ChanSpy on Asterisk, eavesdrop on FreeSWITCH
        if cfg.outbound.enabled:  # the DNC list in the commitments' Redis when there is one (else its own)
            self.outbound = OutboundRuntime(cfg, clock, monitor, self.registry)
            await self.outbound.start(app, self.commitments.store.client
                                      if self.commitments is not None and self.commitments.store is not None else None)
        if self.lines is not None:  # inspection reports in the same Redis as the commitments, when there is one
            embedded = self.commitments.embedded if self.commitments is not None else None
            await self.lines.start(app, cfg.redis.url or (embedded.url if embedded is not None else None))
            ui.wallboard.line_connect = self.lines.monitor.connect_today  # the wallboard's 接通率 tile
        self._runner = runner = web.AppRunner(app, access_log_class=AccessLogger, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, cfg.http.host, cfg.http.port)
        await site.start()
        server = site._server  # aiohttp exposes the bound port only there
        sockets = getattr(server, "sockets", None) or []
        self.http_port = sockets[0].getsockname()[1] if sockets else cfg.http.port
        link = cfg.pbx.esl if cfg.pbx.kind == "freeswitch" else cfg.pbx.ami
        host = self._ami_overrides.get("host", link.host)  # the demo's loopback PBX overrides the config
        port = self._ami_overrides.get("port", link.port)
        if cfg.pbx.kind == "freeswitch":
            log.info("HTTP on %s:%s; attaching to FreeSWITCH ESL %s:%s", cfg.http.host, self.http_port, host, port)
        else:
            log.info("HTTP on %s:%s; attaching to AMI %s:%s as %s", cfg.http.host, self.http_port, host, port,
                     self._ami_overrides.get("username", cfg.pbx.ami.username))
        await pbx.start()

    async def stop(self) -> None:
        if self.pbx is not None:
            await self.pbx.stop()
        if self._runner is not None:
            await self._runner.cleanup()  # closes websockets (1001), drains webhooks
            self._runner = None
        if self.lines is not None:
            await self.lines.stop()  # scheduler and a running probe (its worker is killed), then the report store
            self.lines = None
        if self.outbound is not None:
            await self.outbound.stop()  # DNC sync and sweep, before the Redis client they use goes
            self.outbound = None
        if self.commitments is not None:
            await self.commitments.stop()  # scheduler and pending worker, then the store, then the embedded Redis
            self.commitments = None
        if self.monitor is not None:
            self.monitor.close()
        log.info("ringwatch stopped")

    async def __aenter__(self) -> Daemon:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def wait_for_signal() -> None:
    """Return on SIGTERM or SIGINT (what Docker and Ctrl-C send)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.remove_signal_handler(sig)


async def run_daemon(cfg: Config) -> int:
    daemon = Daemon(cfg)
    try:
        await daemon.start()
    except OSError as e:
        log.error("cannot listen on %s:%s: %s", cfg.http.host, cfg.http.port, e.strerror)
        await daemon.stop()
        return 1
    try:
        await wait_for_signal()
    finally:
        await daemon.stop()
    return 0
