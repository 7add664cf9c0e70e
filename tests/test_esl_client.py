"""The asyncio ESL client against a scripted FreeSWITCH over real loopback TCP (port 0).

No test sleeps to let things settle: each waits for a condition (a callback, a server
counter) under a timeout.  Reconnect delays are injected and short; liveness and ring
limits are shortened or run on a scaled clock.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from alerts.hub import AlertChange, AlertHub
from alerts.model import Alert
from config.schema import Config, EslConfig, load_config
from monitor.auth import TokenStore
from monitor.clock import LoopClock
from monitor.daemon import Daemon
from monitor.engine import Monitor
from telephony.esl.adapter import FreeSwitchAdapter, eavesdrop_command
from telephony.esl.client import EslClient, EslCommandError, EslNotConnected, backoff
from telephony.esl.codec import EslEvent, encode_event, parse_event_headers
from telephony.esl.server import FsStateModel, ScriptedEslServer
from telephony.esl.trace import read_esl_trace
from telephony.esl.tracker import FsTracker
from telephony.events import CallOffered, DomainEvent, ResyncDone
from telephony.loopback import Conditions

pytestmark = pytest.mark.usefixtures("no_leftover_tasks")

PASSWORD = "Esl-S3cret-7c1d"
FIXTURES = Path(__file__).parent / "fixtures" / "esl"


class Recorder:
    """Client callbacks and an alert sink that a test can await on."""

    name = "test-recorder"

    def __init__(self) -> None:
        self.events: list[EslEvent] = []
        self.connected = 0
        self.reasons: list[str] = []
        self.errors: list[str] = []
        self.alerts: list[Alert] = []
        self.resyncs: list[float] = []
        self.replies: list[tuple[str, str]] = []
        self._conditions = Conditions()

    def on_event(self, ev: EslEvent, received_at: float) -> None:
        self.events.append(ev)
        self.wake()

    def on_connected(self) -> None:
        self.connected += 1
        self.wake()

    def on_disconnected(self, reason: str) -> None:
        self.reasons.append(reason)
        self.wake()

    def on_error(self, text: str) -> None:
        self.errors.append(text)
        self.wake()

    def on_resync_reply(self, command: str, body: str, now: float) -> None:
        self.replies.append((command, body))

    def on_resync_done(self, now: float) -> None:
        self.resyncs.append(now)
        self.wake()

    def offer(self, change: AlertChange) -> None:
        if change.kind == "opened":
            self.alerts.append(change.alert)
            self.wake()

    def named(self, name: str) -> list[EslEvent]:
        return [e for e in self.events if e.name == name]

    def wake(self) -> None:
        self._conditions.changed()

    async def until(self, predicate: Callable[[], bool], timeout_s: float = 3.0) -> None:
        await self._conditions.wait(predicate, timeout_s)


def fixed(*delays: float) -> Callable[[], Iterator[float]]:
    """A delay factory: these delays, then the last one forever."""
    return lambda: itertools.chain(delays, itertools.repeat(delays[-1]))


def make_client(server: ScriptedEslServer, rec: Recorder, **kw: Any) -> EslClient:
    params: dict[str, Any] = {
        "host": server.host, "port": server.port, "password": PASSWORD,
        "connect_timeout_s": 2.0, "login_timeout_s": 2.0, "command_timeout_s": 2.0, "heartbeat_timeout_s": 60.0,
        "auth_retry_min_s": 0.0, "delays": fixed(0.01),
        "on_event": rec.on_event, "on_connected": rec.on_connected, "on_disconnected": rec.on_disconnected,
        "on_error": rec.on_error, "on_resync_reply": rec.on_resync_reply, "on_resync_done": rec.on_resync_done,
    }
    params.update(kw)
    return EslClient(**params)


@pytest.fixture
async def server() -> AsyncIterator[ScriptedEslServer]:
    async with ScriptedEslServer(password=PASSWORD) as srv:
        yield srv


def assert_no_password(records: list[logging.LogRecord]) -> None:
    for r in records:
        text = " ".join([r.getMessage(), repr(r.args), r.exc_text or ""])
        assert PASSWORD not in text, f"password logged by {r.name}: {r.getMessage()}"


# -- login, subscription, resync ---------------------------------------------------------------


async def test_login_subscribes_narrowly_then_resyncs(server: ScriptedEslServer,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    server.model.queues.update({"support@default", "claims@default"})
    rec = Recorder()
    async with make_client(server, rec) as client:
        await rec.until(lambda: len(rec.resyncs) == 1)
        assert client.connected
        assert (server.logins, rec.connected) == (1, 1)
        # exactly what the tracker reads: channel events, recordings, liveness, bgapi, callcenter
        assert server.subscriptions == [FsTracker.subscription()]
        assert server.subscriptions[0] == (
            "event plain CHANNEL_CREATE CHANNEL_ANSWER CHANNEL_BRIDGE CHANNEL_HANGUP CHANNEL_EXECUTE RECORD_START "
            "HEARTBEAT BACKGROUND_JOB CUSTOM callcenter::info ringwatch::disposition ringwatch::commitment")
        # the snapshot: the switch's clock, channels, calls, callcenter lists, then every queue's members
        assert [c for c, _ in rec.replies] == [
            "api strmicroepoch", "api show channels as json", "api show calls as json",
            "api callcenter_config tier list", "api callcenter_config agent list", "api callcenter_config queue list",
            "api callcenter_config queue list members claims@default",
            "api callcenter_config queue list members support@default"]
        assert client.stats.resyncs == 1
        assert client.stats.connects == 1
        assert client.last_error is None
        assert PASSWORD not in repr(client)
    assert not client.connected
    assert rec.reasons == ["stopped"]
    assert server.commands["exit"] == 1
    assert_no_password(caplog.records)


async def test_bad_password_is_loud_clear_and_backs_off(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    rec = Recorder()
    async with ScriptedEslServer(password="the-right-one") as srv:
        # injected delays 0.05, 0.3, 0.02...; a refused password waits at least 0.1
        client = make_client(srv, rec, delays=fixed(0.05, 0.3, 0.02), auth_retry_min_s=0.1)
        async with client:
            await srv.wait_until(lambda: srv.failed_logins >= 4)
            assert not client.connected
            assert client.stats.auth_failures >= 3
            assert rec.connected == 0
            assert rec.reasons == []  # never logged in: nothing to disconnect
    gaps = [b - a for a, b in itertools.pairwise(srv.connect_times[:4])]
    for gap, expected in zip(gaps, [0.1, 0.3, 0.1], strict=True):
        assert expected <= gap < expected + 1.0
    assert srv.logins == 0
    err = client.last_error or ""
    assert f"127.0.0.1:{srv.port}" in err
    assert "-ERR invalid" in err
    assert "wrong password" in err
    loud = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "telephony.esl.client"]
    assert len(loud) >= 3
    assert "password" in loud[0].getMessage()
    assert f"127.0.0.1:{srv.port}" in loud[0].getMessage()
    assert_no_password(caplog.records)


async def test_a_password_with_a_line_break_is_refused_without_being_logged(
        server: ScriptedEslServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    rec = Recorder()
    async with make_client(server, rec, password=PASSWORD + "\nexit", auth_retry_min_s=60.0) as client:
        await rec.until(lambda: bool(rec.errors))
        assert client.stats.auth_failures == 1
    assert "line break" in rec.errors[0]
    assert server.commands["auth"] == 0  # never sent
    assert_no_password(caplog.records)


async def test_acl_refusal_is_loud(caplog: pytest.LogCaptureFixture) -> None:
    rec = Recorder()
    async with ScriptedEslServer(password=PASSWORD, acl_deny=True) as srv, \
            make_client(srv, rec, auth_retry_min_s=60.0) as client:
        await rec.until(lambda: bool(rec.errors))
        assert client.stats.auth_failures == 1
    assert "apply-inbound-acl" in rec.errors[0]
    assert "Access Denied" in rec.errors[0]


async def test_from_config_takes_the_password_from_the_environment(
    server: ScriptedEslServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("RW_TEST_ESL_PASSWORD", PASSWORD)
    cfg = EslConfig(host=server.host, port=server.port, password_env="RW_TEST_ESL_PASSWORD")
    rec = Recorder()
    async with EslClient.from_config(cfg, on_connected=rec.on_connected, resync_commands=()):
        await rec.until(lambda: rec.connected == 1)
    assert server.logins == 1
    assert_no_password(caplog.records)


def test_default_backoff_is_jittered_capped_exponential() -> None:
    top = iter(backoff(0.5, 4.0, 2.0, rng=lambda: 1.0))
    assert [next(top) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    low = iter(backoff(0.5, 4.0, 2.0, rng=lambda: 0.0))
    assert [next(low) for _ in range(3)] == [0.0, 0.0, 0.0]
    for d in itertools.islice(backoff(0.5, 4.0, 2.0), 50):
        assert 0.0 <= d <= 4.0


# -- liveness and link loss -----------------------------------------------------------------


async def test_missing_heartbeats_kill_the_link(server: ScriptedEslServer) -> None:
    server.heartbeat_interval_s = 0.05
    rec = Recorder()
    async with make_client(server, rec, heartbeat_timeout_s=0.3) as client:
        await rec.until(lambda: len(rec.named("HEARTBEAT")) >= 8)  # 0.4 s: longer than the timeout
        assert client.stats.heartbeat_timeouts == 0  # beats keep the link
        assert client.stats.heartbeats >= 8
        server.heartbeats = False  # a switch that stopped talking, TCP still up
        await rec.until(lambda: client.stats.reconnects >= 1)
        assert client.stats.heartbeat_timeouts == 1
        assert rec.reasons == ["no HEARTBEAT or other data within 0.3s"]
        assert "HEARTBEAT" in (client.last_error or "")
        assert server.logins == 2


async def test_dropped_link_reconnects_with_backoff(server: ScriptedEslServer) -> None:
    rec = Recorder()
    async with make_client(server, rec, delays=fixed(0.05)) as client:
        await rec.until(lambda: len(rec.resyncs) == 1)
        assert await server.drop() == 1
        await rec.until(lambda: len(rec.resyncs) == 2)  # logged in again, and resynced again
        assert rec.reasons[0].startswith(("eof", "connection error"))
        assert client.stats.reconnects == 1
        assert server.connect_times[1] - server.connect_times[0] >= 0.05
        # (FreeSWITCH writes Event-Subclass first; this order is judged on the whole body)
        await server.push([("Event-Name", "CUSTOM"), ("Event-Subclass", "callcenter::info"),
                           ("CC-Action", "agent-state-change"), ("CC-Agent", "1001@default")])
        await rec.until(lambda: bool(rec.named("CUSTOM")))


async def test_disconnect_notice_ends_the_link(server: ScriptedEslServer) -> None:
    rec = Recorder()
    async with make_client(server, rec) as client:
        await rec.until(lambda: rec.connected == 1)
        await server.push_raw(b"Content-Type: text/disconnect-notice\nContent-Length: 4\n\nbye\n")
        await rec.until(lambda: rec.connected == 2)
        assert rec.reasons == ["disconnected by FreeSWITCH (disconnect-notice)"]
        assert client.stats.reconnects == 1


# -- the tracker behind the client: a call in progress comes back after a reconnect ----------------


def f02_state_at(t_cut: float) -> tuple[FsStateModel, float]:
    """F02 (李娜, 1001 rings 20 s) as FreeSWITCH knows it at trace time ``t_cut``, and the epoch at ``t_cut``."""
    model = FsStateModel()
    epoch = 0.0
    for item in read_esl_trace(FIXTURES / "F02_slow_answer_20s.jsonl"):
        if item.kind != "frame" or item.t > t_cut or item.body is None or not item.body.startswith("Event-"):
            continue
        ev = EslEvent(parse_event_headers(item.body.split("\n\n", 1)[0]))
        model.apply(ev)
        ts = ev.get("Event-Date-Timestamp")
        if ts:
            epoch = int(ts) / 1e6 + (t_cut - item.t)
    return model, epoch


async def test_resync_restores_a_ringing_call_whose_alert_fires_on_time(server: ScriptedEslServer) -> None:
    cfg = Config.model_validate({"rules": {"IN-ANSWER": {"ring_limit_s": 15}}})
    clock = LoopClock(scale=20.0)  # 15 s of ringing take 0.75 s of real time
    hub = AlertHub(clock.now)
    monitor = Monitor(cfg, clock, hub)
    rec = Recorder()
    hub.add_sink(rec)
    resyncs: list[ResyncDone] = []

    def on_event(ev: DomainEvent) -> None:
        if isinstance(ev, ResyncDone):
            resyncs.append(ev)
            rec.wake()

    monitor.on_event(on_event)
    # F02 seen by FreeSWITCH at trace t = 10: 1001 has rung since t = 0.085 (10 s ago); the switch's
    # clock runs with ours, so the ring's real deadline is clock time now - 9.915 + 15
    model, epoch10 = f02_state_at(10.0)
    c0 = clock.now()  # = trace t 10
    offset = epoch10 - c0
    server.epoch = lambda: offset + clock.now()
    adapter = FreeSwitchAdapter(EslConfig(host=server.host, port=server.port), monitor.handle, clock.now,
                                password=PASSWORD, delays=fixed(0.01), connect_timeout_s=2.0,
                                login_timeout_s=2.0)
    await adapter.start()
    try:
        await rec.until(lambda: len(resyncs) >= 1)
        assert not monitor.calls
        # the call starts while the link is down; the switch knows it when we come back
        server.model = model
        assert await server.drop() == 1
        await rec.until(lambda: len(resyncs) == 2)
        assert adapter.stats.reconnects == 1
        assert monitor.link.connects == 2
        assert resyncs[1].added == 1
        (call,) = monitor.calls.values()
        assert (call.caller, call.caller_name, call.queue) == ("13900139002", "李娜", "support@default")
        (ring,) = call.live_rings.values()
        assert ring.agent == "1001@default"
        true_start = c0 - (10.0 - 0.085)  # agent-offering at trace t 0.085
        # snapshot epochs are whole seconds, rounded up: the rebuilt ring never starts early
        assert true_start - 0.05 <= ring.start <= true_start + 1.0
        assert not rec.alerts  # ~5 s of ring time to go
        await rec.until(lambda: bool(rec.alerts), timeout_s=3.0)
        (alert,) = rec.alerts
        assert (alert.rule, alert.agent, alert.call) == ("IN-ANSWER", "1001@default", call.id)
        assert alert.at == pytest.approx(ring.start + 15.0, abs=0.3)  # on time, within loop latency x 20
    finally:
        await adapter.stop()
        monitor.close()


# -- commands --------------------------------------------------------------------------------


async def test_api_and_bgapi_replies_are_correlated(server: ScriptedEslServer) -> None:
    server.responses.update({"status": "UP 0 years\n", "version": "FreeSWITCH Version 1.10.12\n",
                             "originate loopback/1000 &park()": "+OK 11111111-2222\n"})
    rec = Recorder()
    async with make_client(server, rec, resync_commands=()) as client:
        with pytest.raises(EslNotConnected):
            await client.api("status")
        await rec.until(lambda: rec.connected == 1)
        status, version, job, epoch = await asyncio.gather(
            client.api("status"), client.api("version"), client.bgapi("originate loopback/1000 &park()"),
            client.api("strmicroepoch"))
        assert (status, version, job) == ("UP 0 years\n", "FreeSWITCH Version 1.10.12\n", "+OK 11111111-2222\n")
        assert epoch.isdigit()
        assert rec.named("BACKGROUND_JOB")  # the job's event reached on_event too
        with pytest.raises(EslCommandError, match="Command not found"):
            await client.api("no_such_command")
        reply = await client.command("filter Event-Name HEARTBEAT")
        assert reply.reply_text == "+OK"


async def test_chinese_caller_name_split_across_reads(server: ScriptedEslServer) -> None:
    rec = Recorder()
    async with make_client(server, rec, resync_commands=()):
        await rec.until(lambda: rec.connected == 1)
        data = encode_event([("Event-Subclass", "callcenter::info"), ("Event-Name", "CUSTOM"),
                             ("CC-Action", "member-queue-start"), ("CC-Member-CID-Name", "张三(平安客户)")])
        cut = data.index(b"%E5%BC") + 2  # inside the URL-encoded first character
        await server.push_raw(data[:cut])
        await server.push_raw(data[cut:])
        await rec.until(lambda: bool(rec.named("CUSTOM")))
    (ev,) = rec.named("CUSTOM")
    assert ev.get("CC-Member-CID-Name") == "张三(平安客户)"


def test_eavesdrop_command_for_each_mode() -> None:
    agent = "781b24fa-4193-4408-8768-850804749f36"
    listen = eavesdrop_command(agent, "user/8001")
    assert listen.startswith("originate {")
    assert listen.endswith(f"}}user/8001 &eavesdrop({agent})")
    for flag in ("eavesdrop_enable_dtmf=false", "eavesdrop_bridge_aleg=true", "eavesdrop_bridge_bleg=true",
                 "eavesdrop_whisper_aleg=false", "eavesdrop_whisper_bleg=false"):
        assert flag in listen
    whisper = eavesdrop_command(agent, "sofia/internal/8001@pbx", "whisper")
    assert "eavesdrop_whisper_aleg=true" in whisper  # the agent hears the supervisor ...
    assert "eavesdrop_whisper_bleg=false" in whisper  # ... the caller does not
    barge = eavesdrop_command(agent, "user/8001", "barge")
    assert "eavesdrop_whisper_aleg=true" in barge
    assert "eavesdrop_whisper_bleg=true" in barge  # three-way
    for bad in ("x y", "a,b", "{evil=1}", "", "a\nb"):
        with pytest.raises(ValueError, match="Unique-ID"):
            eavesdrop_command(bad, "user/8001")
    for bad in ("user/8001 &park()", "{x=1}user/8001", "user/8001,user/8002"):
        with pytest.raises(ValueError, match="dial string"):
            eavesdrop_command(agent, bad)
    with pytest.raises(ValueError, match="listen, whisper or barge"):
        eavesdrop_command(agent, "user/8001", "spy")  # type: ignore[arg-type]


# -- the daemon picks the adapter by pbx.kind, with the RINGWATCH_* contract ------------------------


async def test_daemon_attaches_to_freeswitch_when_configured(server: ScriptedEslServer,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RINGWATCH_ESL_PASSWORD", PASSWORD)
    cfg = load_config(env={"RINGWATCH_PBX_KIND": "freeswitch", "RINGWATCH_ESL_HOST": server.host,
                           "RINGWATCH_ESL_PORT": str(server.port), "RINGWATCH_HTTP_PORT": "0"})
    cfg = cfg.model_copy(update={"commitments": cfg.commitments.model_copy(update={"enabled": False})})
    assert (cfg.pbx.kind, cfg.pbx.esl.host, cfg.pbx.esl.port) == ("freeswitch", server.host, server.port)
    daemon = Daemon(cfg, TokenStore([]), delays=fixed(0.01))
    await daemon.start()
    try:
        assert isinstance(daemon.pbx, FreeSwitchAdapter)
        assert daemon.monitor is not None
        offered, resynced = asyncio.Event(), asyncio.Event()
        daemon.monitor.on_event(lambda ev: offered.set() if isinstance(ev, CallOffered) else None)
        daemon.monitor.on_event(lambda ev: resynced.set() if isinstance(ev, ResyncDone) else None)
        async with asyncio.timeout(3):
            await resynced.wait()  # logged in, subscribed, and the (empty) snapshot reconciled
        assert server.subscriptions == [FsTracker.subscription()]
        await server.push([("Event-Subclass", "callcenter::info"), ("Event-Name", "CUSTOM"),
                           ("CC-Action", "member-queue-start"), ("CC-Queue", "support@default"),
                           ("CC-Member-UUID", "q9"), ("CC-Member-Session-UUID", "m9"),
                           ("CC-Member-CID-Number", "13800000009"), ("CC-Member-CID-Name", "王五")])
        async with asyncio.timeout(3):
            await offered.wait()
        assert "m9" in daemon.monitor.calls
        async with aiohttp.ClientSession() as http:
            health = await (await http.get(f"http://127.0.0.1:{daemon.http_port}/healthz")).json()
        assert (health["pbx"], health["pbx_connected"], health["ami_connected"]) == ("freeswitch", True, True)
        assert health["live_calls"] == 1, health
    finally:
        await daemon.stop()
    assert server.commands["exit"] == 1


def test_the_readme_states_the_subscription_ringwatch_sends() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    stated = [line.strip() for line in readme.splitlines() if line.startswith("event plain ")]
    assert stated == [FsTracker.subscription()]
