"""The whole daemon end to end: demo PBX (recordings over real AMI/TCP) -> client ->
tracker -> rules -> websocket and /metrics, as the README's main command runs it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from alerts.hub import AlertChange
from alerts.model import Alert
from config.schema import Config
from monitor.auth import TokenStore
from monitor.daemon import Daemon
from telephony.ami.adapter import DemoPbx
from telephony.esl.adapter import EslDemoPbx, FreeSwitchAdapter
from telephony.esl.demo_pbx import load_scenario as load_esl_scenario
from telephony.esl.demo_pbx import renumber, restamp

pytestmark = pytest.mark.usefixtures("no_leftover_tasks")
ROOT = Path(__file__).resolve().parents[1]
SPEED = 20.0


class FirstAlert:
    """An alert-hub sink: ``first`` resolves to (clock time, alert) of the first ``rule`` alert opened."""

    name = "first-alert"

    def __init__(self, rule: str, now: Callable[[], float]) -> None:
        self.rule = rule
        self.now = now
        self.first: asyncio.Future[tuple[float, Alert]] = asyncio.get_running_loop().create_future()

    def offer(self, change: AlertChange) -> None:
        if change.kind == "opened" and change.alert.rule == self.rule and not self.first.done():
            self.first.set_result((self.now(), change.alert))


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


async def test_daemon_follows_the_freeswitch_demo_pbx(tmp_path: Path) -> None:
    pbx = EslDemoPbx(password="demo-secret", speed=SPEED, loops=1)
    await pbx.start()
    cfg = Config.model_validate({"http": {"port": 0}, "data_dir": str(tmp_path), "pbx": {"kind": "freeswitch"}})
    daemon = Daemon(cfg, TokenStore([("tok-sup", "sup", "supervisor")]), clock_scale=SPEED,
                    host=pbx.host, port=pbx.port, password="demo-secret")
    try:
        await daemon.start()
        assert isinstance(daemon.pbx, FreeSwitchAdapter)
        assert daemon.clock is not None
        url = f"ws://127.0.0.1:{daemon.http_port}/ws"
        async with connect(url, additional_headers={"Authorization": "Bearer tok-sup"}, proxy=None) as ws:
            assert json.loads(await ws.recv())["type"] == "hello"
            async with asyncio.timeout(10):
                while True:
                    frame = json.loads(await ws.recv())
                    if frame["type"] == "alert" and frame["rule"] == "IN-ANSWER":
                        break
            received = daemon.clock.now()
            # F02 (the second scenario, 12 s in): 1001 rings 20 s; the alert at 15 s, while it rings
            assert frame["agent"] == "1001@default"
            assert frame["caller"] == "139****9002"
            assert received - frame["details"]["deadline"] < 0.1 * SPEED  # < 100 ms of real time
        async with aiohttp.ClientSession() as http:
            health = await (await http.get(f"http://127.0.0.1:{daemon.http_port}/healthz")).json()
        assert (health["pbx"], health["pbx_connected"]) == ("freeswitch", True)
        assert pbx.server.subscriptions == [daemon.pbx.client.subscription]
    finally:
        await daemon.stop()
        await pbx.stop()


async def test_freeswitch_demo_link_down_while_a_ring_starts_then_the_resync_alerts_on_time(tmp_path: Path) -> None:
    """The link is down when F02's caller is offered to 1001; at the reconnect the snapshot (the demo
    switch's `show channels` / callcenter lists, its clocks at the demo's speed) rebuilds the ring, and
    IN-ANSWER fires at the ring's real deadline (whole-second epochs: never early, ≤ 1 s late)."""
    speed = 10.0
    pbx = EslDemoPbx(password="demo-secret", speed=speed, loops=1)
    await pbx.start()
    cfg = Config.model_validate({"http": {"port": 0}, "data_dir": str(tmp_path), "pbx": {"kind": "freeswitch"},
                                 "commitments": {"enabled": False}})
    daemon = Daemon(cfg, TokenStore([]), clock_scale=speed, host=pbx.host, port=pbx.port, password="demo-secret",
                    delays=lambda: iter([0.01] * 1000))
    try:
        await daemon.start()
        assert daemon.hub is not None
        assert daemon.clock is not None
        assert daemon.monitor is not None
        clock = daemon.clock
        late = FirstAlert("IN-ANSWER", clock.now)
        daemon.hub.add_sink(late)
        server = pbx.server
        async with asyncio.timeout(10):
            await server.wait_until(lambda: any(  # F02's caller is in the queue
                m["cid_number"].endswith("9002") for m in server.model.members.values()))
        server.refuse(None)
        await server.drop()
        async with asyncio.timeout(10):
            await server.wait_until(lambda: any(  # 1001 is being offered the call, unseen by ringwatch
                m["cid_number"].endswith("9002") and m["state"] == "Trying" for m in server.model.members.values()))
        ring_epoch = pbx.epoch()
        server.allow()
        async with asyncio.timeout(10):
            await server.wait_until(lambda: len(server.subscriptions) == 2)  # back, subscribed, resynced
            at, alert = await late.first
        assert alert.agent == "1001@default"
        call = daemon.monitor.call(alert.call or "")
        assert call is not None
        (ring,) = call.rings or call.live_rings.values()
        # the rebuilt ring starts when 1001 was offered the call (the demo switch's epoch then): never
        # earlier, at most a whole second later (callcenter's epochs are whole seconds, rounded up)
        ring_start_epoch = pbx.epoch() - (clock.now() - ring.start)
        assert ring_epoch - 0.2 <= ring_start_epoch <= ring_epoch + 1.2
        assert at - ring.start == pytest.approx(15.0, abs=0.1 * speed)  # at its deadline (±100 ms real)
    finally:
        await daemon.stop()
        await pbx.stop()


def test_each_copy_of_a_recording_is_new_calls_at_the_time_it_is_played() -> None:
    f01 = load_esl_scenario(ROOT / "tests" / "fixtures" / "esl" / "F01_answered_caller_hangs_up.jsonl")
    _, create = next(e for e in f01 if dict(e[1]).get("Event-Name") == "CHANNEL_CREATE")
    one, two = dict(renumber(create, 1)), dict(renumber(create, 2))
    original = dict(create)
    assert len({original["Unique-ID"], one["Unique-ID"], two["Unique-ID"]}) == 3  # fresh per copy
    assert dict(renumber(create, 1)) == one  # and stable within one
    assert one["Core-UUID"] == original["Core-UUID"]  # one switch
    assert one["Channel-Name"] == original["Channel-Name"]  # names are not ids
    now_us = 1_900_000_000_000_000
    moved = dict(restamp(create, now_us))
    shift = now_us - int(original["Event-Date-Timestamp"])
    assert moved["Event-Date-Timestamp"] == str(now_us)
    assert int(moved["Caller-Channel-Created-Time"]) == int(original["Caller-Channel-Created-Time"]) + shift
    assert moved["Caller-Channel-Answered-Time"] == original["Caller-Channel-Answered-Time"] == "0"  # not yet


@pytest.mark.timeout(30)
@pytest.mark.parametrize("pbx", ["asterisk", "freeswitch"])
def test_ringwatch_demo_command_runs_and_stops_on_sigterm(tmp_path: Path, pbx: str) -> None:
    """The README's main job, as a process: it prints the URLs, serves /healthz, exits 0 on SIGTERM."""
    env = {**os.environ, "RINGWATCH_HTTP_PORT": "0", "RINGWATCH_ADMIN_TOKEN": "e2e-token",
           "RINGWATCH_DATA_DIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "monitor.cli", "demo", "--speed", "50", "--pbx", pbx], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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
