"""``ringwatch demo``: a simulated call centre over real AMI + the daemon (+ its embedded Redis) + HTTP.

By default the PBX is the call-centre simulator (``telephony.ami.simulator``:
Poisson callers, agents, transfers, outbound dials, dispositions, recordings
and a share of rule misses, speaking Asterisk 22 AMI); ``--recordings`` plays
the real Asterisk 22 recordings in a loop instead, and ``--pbx freeswitch`` the
real FreeSWITCH 1.10 recordings over an event socket (the daemon attached as
``pbx.kind: freeswitch``).  A newcomer sees alerts in
the terminal and on the websocket, and metrics on ``/metrics``, within a
minute.  Ctrl-C (or SIGTERM) stops everything cleanly.
"""

from __future__ import annotations

import os
import secrets
import sys
from typing import Any, TextIO

from alerts.hub import AlertChange
from config.schema import Config
from monitor.auth import TokenStore
from monitor.daemon import Daemon, wait_for_signal
from telephony.ami.adapter import DemoPbx, SimulatedPbx, demo_simulator
from telephony.esl.adapter import EslDemoPbx


class ConsoleSink:
    """Prints every opened alert / notice on the terminal (zh | en)."""

    name = "console"

    def __init__(self, stream: TextIO = sys.stdout) -> None:
        self.stream = stream

    def offer(self, change: AlertChange) -> None:
        if change.kind != "opened":
            return
        a = change.alert
        tag = "提示 notice" if a.kind == "notice" else f"告警 {a.rule}"
        self.stream.write(f"[{tag}] {a.text_zh}\n        {a.text_en}\n")
        self.stream.flush()


async def run_demo(cfg: Config, speed: float = 1.0, loops: int = 0, stream: TextIO = sys.stdout,
                   recordings: bool = False, seed: int = 1, rate: float = 5.0, pbx_kind: str = "asterisk") -> int:
    """``recordings``: the recorded-calls loop (``loops`` times, 0 = forever); else the simulator
    (``seed``, ``rate`` inbound calls per minute).  ``speed``: simulated seconds per real second.
    ``pbx_kind="freeswitch"``: the FreeSWITCH recordings over ESL (there is no FreeSWITCH simulator)."""
    ami_secret = secrets.token_urlsafe(16)  # shared by the demo PBX and the daemon, never shown
    pbx: DemoPbx | SimulatedPbx | EslDemoPbx
    link: dict[str, Any] = {"secret": ami_secret}
    wire = "AMI"
    if pbx_kind == "freeswitch":
        pbx = EslDemoPbx(password=ami_secret, speed=speed, loops=loops)
        what, first, wire = "recorded FreeSWITCH 1.10 calls replayed over ESL", 17.0, "ESL"
        cfg = cfg.model_copy(update={"pbx": cfg.pbx.model_copy(update={"kind": "freeswitch"})})
        link = {"password": ami_secret}
    elif recordings:
        pbx = DemoPbx(username=cfg.pbx.ami.username, secret=ami_secret, speed=speed, loops=loops)
        what, first = "recorded Asterisk 22 calls replayed over AMI", 28.0
    else:
        pbx = SimulatedPbx(demo_simulator(seed, rate), username=cfg.pbx.ami.username, secret=ami_secret,
                           speed=speed)
        what, first = f"simulated call centre, {rate:g} calls/min, seed {seed}, over AMI", 17.0
    token = os.environ.get("RINGWATCH_ADMIN_TOKEN") or secrets.token_urlsafe(18)
    tokens = TokenStore.from_config(cfg.auth, env={**os.environ, "RINGWATCH_ADMIN_TOKEN": token})
    await pbx.start()
    # the daemon's clock runs at the demo's speed, so a 15 s limit is 15 s of the PBX's time
    daemon = Daemon(cfg, tokens, clock_scale=speed, host=pbx.host, port=pbx.port, **link)
    try:
        await daemon.start()
        assert daemon.hub is not None
        daemon.hub.add_sink(ConsoleSink(stream))
        base = f"http://{cfg.http.host}:{daemon.http_port}"
        shown = token if "RINGWATCH_ADMIN_TOKEN" not in os.environ else "$RINGWATCH_ADMIN_TOKEN"
        store = "off (commitments.enabled: false)"
        if daemon.commitments is not None:
            embedded = daemon.commitments.embedded
            if embedded is not None:
                store = f"embedded Redis in {embedded.dir}"
            else:
                store = "redis.url" if cfg.redis.url else "unavailable (see the log)"
        stream.write(
            f"\nringwatch demo — 实时话务监控演示 ({what})\n"
            f"  demo PBX ({wire})       127.0.0.1:{pbx.port}\n"
            f"  commitments store    {store}\n"
            f"  wallboard            {base}/wallboard#token={shown}\n"
            f"  console / QA         {base}/console  {base}/qa  (log in with a ui.users account)\n"
            f"  health               {base}/healthz\n"
            f"  metrics              {base}/metrics\n"
            f"  live calls           {base}/api/v1/calls\n"
            f"  alerts               {base}/api/v1/alerts\n"
            f"  websocket (alerts)   ws://{cfg.http.host}:{daemon.http_port}/ws\n"
            f"  admin token (demo)   {shown}\n"
            f"  try: curl -H 'Authorization: Bearer {shown}' {base}/api/v1/calls\n"
            f"  Alerts appear below as they fire (the first ~{first / speed:.0f} s in). Ctrl-C stops.\n\n"
        )
        stream.flush()
        await wait_for_signal()
    finally:
        await daemon.stop()
        await pbx.stop()
    return 0
