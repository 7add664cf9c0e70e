"""``ringwatch demo``: the demo PBX (recordings over real AMI) + the daemon + HTTP.

A newcomer sees alerts in the terminal and on the websocket, and metrics on
``/metrics``, within a minute.  Ctrl-C stops everything cleanly.
"""

from __future__ import annotations

import os
import secrets
import sys
from typing import TextIO

from alerts.hub import AlertChange
from config.schema import Config
from monitor.auth import TokenStore
from monitor.daemon import Daemon, wait_for_signal
from telephony.ami.adapter import DemoPbx


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


async def run_demo(cfg: Config, speed: float = 1.0, loops: int = 0, stream: TextIO = sys.stdout) -> int:
    ami_secret = secrets.token_urlsafe(16)  # shared by the demo PBX and the daemon, never shown
    pbx = DemoPbx(username=cfg.pbx.ami.username, secret=ami_secret, speed=speed, loops=loops)
    token = os.environ.get("RINGWATCH_ADMIN_TOKEN") or secrets.token_urlsafe(18)
    tokens = TokenStore.from_config(cfg.auth, env={**os.environ, "RINGWATCH_ADMIN_TOKEN": token})
    await pbx.start()
    # the daemon's clock runs at the demo's speed, so a 15 s limit is 15 s of recorded time
    daemon = Daemon(cfg, tokens, clock_scale=speed, host=pbx.host, port=pbx.port, secret=ami_secret)
    try:
        await daemon.start()
        assert daemon.hub is not None
        daemon.hub.add_sink(ConsoleSink(stream))
        base = f"http://{cfg.http.host}:{daemon.http_port}"
        shown = token if "RINGWATCH_ADMIN_TOKEN" not in os.environ else "$RINGWATCH_ADMIN_TOKEN"
        stream.write(
            "\nringwatch demo — 实时话务监控演示 (recorded Asterisk 22 calls replayed over AMI)\n"
            f"  demo PBX (AMI)       127.0.0.1:{pbx.port}\n"
            f"  health               {base}/healthz\n"
            f"  metrics              {base}/metrics\n"
            f"  live calls           {base}/api/v1/calls\n"
            f"  alerts               {base}/api/v1/alerts\n"
            f"  websocket (alerts)   ws://{cfg.http.host}:{daemon.http_port}/ws\n"
            f"  admin token (demo)   {shown}\n"
            f"  try: curl -H 'Authorization: Bearer {shown}' {base}/api/v1/calls\n"
            f"  Alerts appear below as they fire (the first ~{28 / speed:.0f} s in). Ctrl-C stops.\n\n"
        )
        stream.flush()
        await wait_for_signal()
    finally:
        await daemon.stop()
        await pbx.stop()
    return 0
