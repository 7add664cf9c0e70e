"""The whole daemon end to end: demo PBX (recordings over real AMI/TCP) -> client ->
tracker -> rules -> websocket and /metrics, as the README's main command runs it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from config.schema import Config
from monitor.auth import TokenStore
from monitor.daemon import Daemon
from telephony.ami.adapter import DemoPbx

pytestmark = pytest.mark.usefixtures("no_leftover_tasks")
ROOT = Path(__file__).resolve().parents[1]
SPEED = 20.0


def _cfg(data_dir: Path) -> Config:
    return Config.model_validate({"http": {"port": 0}, "data_dir": str(data_dir)})


async def test_daemon_follows_the_demo_pbx_and_pushes_alerts(tmp_path: Path) -> None:
    pbx = DemoPbx(username="ringwatch", secret="demo-secret", speed=SPEED, loops=1)
    await pbx.start()
    daemon = Daemon(_cfg(tmp_path), TokenStore([("tok-sup", "sup", "supervisor")]), clock_scale=SPEED,
                    host=pbx.host, port=pbx.port, secret="demo-secret")
    try:
        await daemon.start()
        assert daemon.monitor is not None
        assert daemon.clock is not None
        url = f"ws://127.0.0.1:{daemon.http_port}/ws"
        async with connect(url, additional_headers={"Authorization": "Bearer tok-sup"}, proxy=None) as ws:
            hello = json.loads(await ws.recv())
            assert hello["type"] == "hello"
            async with asyncio.timeout(10):
                while True:
                    frame = json.loads(await ws.recv())
                    if frame["type"] == "alert" and frame["rule"] == "IN-ANSWER":
                        break
            received = daemon.clock.now()
            # S02 (the second scenario, started at 12 s): 7001 rings 20 s; the alert comes
            # at ring start + 15 s of recorded time, while it still rings
            deadline = frame["details"]["deadline"]
            assert frame["agent"] == "Agent 7001"
            assert received - deadline < 0.1 * SPEED  # < 100 ms of real time
            assert frame["caller"] == "+155****0001"
        async with aiohttp.ClientSession() as http:
            health = await (await http.get(f"http://127.0.0.1:{daemon.http_port}/healthz")).json()
            assert health["ami_connected"] is True
            resp = await http.get(f"http://127.0.0.1:{daemon.http_port}/metrics",
                                  headers={"Authorization": "Bearer tok-sup"})
            assert resp.status == 200
            families = {f.name: f for f in text_string_to_metric_families(await resp.text())}
        answered = sum(s.value for s in families["ringwatch_calls_answered"].samples
                       if s.name.endswith("_total"))
        assert answered >= 1
        connected = families["ringwatch_ami_connected"].samples[0].value
        assert connected == 1.0
    finally:
        await daemon.stop()
        await pbx.stop()


@pytest.mark.timeout(30)
def test_ringwatch_demo_command_runs_and_stops_on_sigterm(tmp_path: Path) -> None:
    """The README's main job, as a process: it prints the URLs, serves /healthz, exits 0 on SIGTERM."""
    env = {**os.environ, "RINGWATCH_HTTP_PORT": "0", "RINGWATCH_ADMIN_TOKEN": "e2e-token",
           "RINGWATCH_DATA_DIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "monitor.cli", "demo", "--speed", "50"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "告警 IN-ANSWER" in line:
                break
        text = "".join(lines)
        assert "/metrics" in text
        assert "ws://" in text
        assert "e2e-token" not in text  # a token from the environment is not echoed
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err[-2000:]
    assert "ringwatch stopped" in err
