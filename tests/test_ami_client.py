"""The asyncio AMI client against a scripted Asterisk over real loopback TCP (port 0).

No test sleeps to let things settle: each waits for a condition (a callback, a
server counter) under a timeout.  Reconnect delays are injected and short.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from alerts.hub import AlertChange, AlertHub
from alerts.model import Alert
from config.schema import AmiConfig, Config
from monitor.clock import LoopClock
from monitor.engine import Monitor
from telephony.ami.client import (
    AmiActionError,
    AmiClient,
    AmiConnection,
    AmiNotConnected,
    backoff,
)
from telephony.ami.codec import Message, encode_message
from telephony.ami.server import BANNER, ScriptedAmiServer
from telephony.ami.tracker import AmiTracker
from telephony.events import DomainEvent, ResyncDone
from telephony.loopback import Conditions

pytestmark = pytest.mark.usefixtures("no_leftover_tasks")

USER = "rw-monitor"
SECRET = "Sup3r-S3cret-9f2c"
_MD5_HEX = re.compile(r"\b[0-9a-f]{32}\b")


class Recorder:
    """Client callbacks and an alert sink that a test can await on."""

    name = "test-recorder"

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.links: list[int] = []
        self.connected = 0
        self.reasons: list[str] = []
        self.alerts: list[Alert] = []
        self._conditions = Conditions()

    def on_message(self, msg: Message, conn: AmiConnection) -> None:
        self.messages.append(msg)
        self.links.append(conn.number)
        self.wake()

    def on_connected(self) -> None:
        self.connected += 1
        self.wake()

    def on_disconnected(self, reason: str) -> None:
        self.reasons.append(reason)
        self.wake()

    def offer(self, change: AlertChange) -> None:
        if change.kind == "opened":
            self.alerts.append(change.alert)
            self.wake()

    def events(self, name: str) -> list[Message]:
        return [m for m in self.messages if m.event == name]

    def wake(self) -> None:
        self._conditions.changed()

    async def until(self, predicate: Callable[[], bool], timeout_s: float = 3.0) -> None:
        await self._conditions.wait(predicate, timeout_s)


def fixed(*delays: float) -> Callable[[], Iterator[float]]:
    """A delay factory: these delays, then the last one forever."""
    return lambda: itertools.chain(delays, itertools.repeat(delays[-1]))


def make_client(server: ScriptedAmiServer, rec: Recorder, **kw: Any) -> AmiClient:
    params: dict[str, Any] = {
        "host": server.host, "port": server.port, "username": USER, "secret": SECRET, "auth": "plain",
        "connect_timeout_s": 2.0, "login_timeout_s": 2.0, "action_timeout_s": 2.0,
        "ping_interval_s": 60.0, "auth_retry_min_s": 0.0, "delays": fixed(0.01),
        "on_message": rec.on_message, "on_connected": rec.on_connected, "on_disconnected": rec.on_disconnected,
    }
    params.update(kw)
    return AmiClient(**params)


@pytest.fixture
async def server() -> AsyncIterator[ScriptedAmiServer]:
    async with ScriptedAmiServer(username=USER, secret=SECRET) as srv:
        yield srv


def assert_no_credentials(records: list[logging.LogRecord]) -> None:
    for r in records:
        text = " ".join([r.getMessage(), repr(r.args), r.exc_text or ""])
        assert SECRET not in text, f"secret logged by {r.name}: {r.getMessage()}"
        assert not _MD5_HEX.search(text), f"MD5 key logged by {r.name}: {r.getMessage()}"


# -- login -------------------------------------------------------------------------------


@pytest.mark.parametrize("auth", ["plain", "md5"])
async def test_login_then_resync(server: ScriptedAmiServer, auth: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    rec = Recorder()
    async with make_client(server, rec, auth=auth) as client:
        await rec.until(lambda: bool(rec.events("CoreShowChannelsComplete")))
        assert client.connected
        assert server.logins == 1
        assert server.login_kinds == [auth]
        assert server.actions["Challenge"] == (1 if auth == "md5" else 0)
        # after every login: on_connected, then the snapshot, QueueStatus first
        assert rec.connected == 1
        assert [m.event for m in rec.messages] == [
            "FullyBooted", "QueueStatusComplete", "CoreShowChannelsComplete"]
        assert client.connection is not None
        assert client.connection.banner == BANNER
        assert client.stats.connects == 1
        assert client.stats.reconnects == 0
        assert client.stats.events_received == 3
        assert client.last_error is None
    assert not client.connected
    assert rec.reasons == ["stopped"]
    assert server.actions["Logoff"] == 1
    assert_no_credentials(caplog.records)
    assert SECRET not in repr(client)


async def test_bad_secret_is_loud_and_backs_off(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    rec = Recorder()
    async with ScriptedAmiServer(username=USER, secret="the-right-one") as srv:
        # injected delays 0.05, 0.3, 0.02...; auth failures wait at least 0.1
        client = make_client(srv, rec, auth="md5", delays=fixed(0.05, 0.3, 0.02), auth_retry_min_s=0.1)
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
    assert USER in err
    assert "Authentication failed" in err
    loud = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "telephony.ami.client"]
    assert len(loud) >= 3
    assert f"127.0.0.1:{srv.port}" in loud[0].getMessage()
    assert USER in loud[0].getMessage()
    assert_no_credentials(caplog.records)


async def test_from_config_takes_the_secret_from_the_environment(
    server: ScriptedAmiServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("RW_TEST_AMI_SECRET", SECRET)
    cfg = AmiConfig(host=server.host, port=server.port, username=USER, secret_env="RW_TEST_AMI_SECRET")
    rec = Recorder()
    client = AmiClient.from_config(cfg, on_connected=rec.on_connected, resync_actions=())
    async with client:
        await rec.until(lambda: rec.connected == 1)
    assert server.login_kinds == ["md5"]  # the configured default
    assert_no_credentials(caplog.records)


async def test_refused_connections_are_retried(server: ScriptedAmiServer) -> None:
    server.refuse(3)
    rec = Recorder()
    async with make_client(server, rec) as client:
        await rec.until(lambda: rec.connected == 1)
        assert server.refused == 3
        assert client.stats.connect_attempts == 4
        assert client.stats.connects == 1
        assert "closed by the server" in (client.last_error or "")


def test_default_backoff_is_jittered_capped_exponential() -> None:
    top = iter(backoff(0.5, 4.0, 2.0, rng=lambda: 1.0))
    assert [next(top) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    low = iter(backoff(0.5, 4.0, 2.0, rng=lambda: 0.0))
    assert [next(low) for _ in range(3)] == [0.0, 0.0, 0.0]
    for d in itertools.islice(backoff(0.5, 4.0, 2.0), 50):
        assert 0.0 <= d <= 4.0


# -- link loss and resync ----------------------------------------------------------------

# A call in progress as Asterisk lists it (fields as in the S13 trace): a caller
# waiting 4 s in queue support while member Agent 7003 has been ringing for 3 s.
LINKEDID = "1795295160.8"
_CALLER = [("CallerIDNum", "+8613912345678"), ("CallerIDName", "张三"),
           ("ConnectedLineNum", "+8613912345678"), ("ConnectedLineName", "张三")]


def _channel(name: str, state: str, desc: str, uid: str, app: str, data: str, duration: str,
             context: str, exten: str) -> list[tuple[str, str]]:
    return [("Event", "CoreShowChannel"), ("Channel", name), ("ChannelState", state), ("ChannelStateDesc", desc),
            *_CALLER, ("Language", "en"), ("AccountCode", ""), ("Context", context), ("Exten", exten),
            ("Priority", "1"), ("Uniqueid", uid), ("Linkedid", LINKEDID), ("Application", app),
            ("ApplicationData", data), ("Duration", duration), ("BridgeId", "")]


RINGING_CALL = [
    _channel("Local/5000@inbound-00000004;1", "6", "Up", "1795295160.8", "Wait", "3600", "00:00:04",
             "inbound", "5000"),
    _channel("Local/5000@inbound-00000004;2", "6", "Up", "1795295160.9", "Queue", "support,tT", "00:00:04",
             "inbound", "5000"),
    _channel("Local/7003@agents-00000005;2", "4", "Ring", "1795295160.11", "Wait", "999", "00:00:03",
             "agents", "7003"),
    _channel("Local/7003@agents-00000005;1", "5", "Ringing", "1795295160.10", "AppQueue", "(Outgoing Line)",
             "00:00:03", "agents", "5000"),
    [("Event", "QueueParams"), ("Queue", "support"), ("Max", "0"), ("Strategy", "rrmemory"), ("Calls", "1"),
     ("Holdtime", "0"), ("TalkTime", "0"), ("Completed", "0"), ("Abandoned", "0"), ("ServiceLevel", "15"),
     ("ServicelevelPerf", "0.0"), ("ServicelevelPerf2", "0.0"), ("Weight", "0")],
    [("Event", "QueueMember"), ("Queue", "support"), ("Name", "Agent 7003"), ("Location", "Local/7003@agents/n"),
     ("StateInterface", "Local/7003@agents/n"), ("Membership", "static"), ("Penalty", "0"), ("CallsTaken", "0"),
     ("LastCall", "0"), ("LastPause", "0"), ("LoginTime", "1795295153"), ("InCall", "0"), ("Status", "2"),
     ("Paused", "0"), ("PausedReason", ""), ("Wrapuptime", "0")],
    [("Event", "QueueEntry"), ("Queue", "support"), ("Position", "1"), ("Channel", "Local/5000@inbound-00000004;2"),
     ("Uniqueid", "1795295160.9"), *_CALLER, ("Wait", "4"), ("Priority", "0")],
]


async def test_dropped_link_reconnects_and_resync_restores_a_ringing_call(server: ScriptedAmiServer) -> None:
    cfg = Config.model_validate({"rules": {"IN-ANSWER": {"ring_limit_s": 5}}})
    clock = LoopClock(scale=10.0)  # 5 s of ringing take 0.5 s of real time
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
    tracker = AmiTracker(monitor.handle)

    def on_message(msg: Message, conn: AmiConnection) -> None:
        tracker.handle(msg, conn.received_at)
        rec.on_message(msg, conn)

    def on_connected() -> None:
        tracker.link_up(clock.now())
        rec.on_connected()

    def on_disconnected(reason: str) -> None:
        tracker.link_down(clock.now(), reason)
        rec.on_disconnected(reason)

    client = make_client(server, rec, now=clock.now, wanted_events=AmiTracker.WANTED, on_message=on_message,
                         on_connected=on_connected, on_disconnected=on_disconnected)
    async with client:
        await rec.until(lambda: len(resyncs) == 1)
        assert not monitor.calls
        # the call starts while the link is down
        server.set_snapshot(RINGING_CALL)
        assert await server.drop() == 1
        await rec.until(lambda: len(resyncs) == 2)
        assert len(rec.reasons) == 1
        assert rec.reasons[0].startswith(("eof", "connection error"))
        assert client.stats.reconnects == 1
        assert monitor.link.connects == 2
        assert server.actions["QueueStatus"] == server.actions["CoreShowChannels"] == 2
        resync_at = resyncs[1].at
        assert resyncs[1].added == 1
        call = monitor.calls[LINKEDID]
        assert call.caller == "+8613912345678"
        assert call.caller_name == "张三"
        assert call.queue == "support"
        assert call.queued_since == pytest.approx(resync_at - 4.0)  # QueueEntry Wait
        (ring,) = call.live_rings.values()
        assert ring.agent == "Agent 7003"
        assert ring.start == pytest.approx(resync_at - 3.0)  # CoreShowChannel Duration
        assert not rec.alerts  # 2 s of ring time to go
        await rec.until(lambda: bool(rec.alerts))
    (alert,) = rec.alerts
    assert (alert.rule, alert.agent, alert.call) == ("IN-ANSWER", "Agent 7003", LINKEDID)
    assert alert.at == pytest.approx(ring.start + 5.0, abs=0.2)


async def test_unanswered_ping_kills_the_link(server: ScriptedAmiServer) -> None:
    rec = Recorder()
    async with make_client(server, rec, ping_interval_s=0.05, ping_timeout_s=0.1) as client:
        await server.wait_until(lambda: server.actions["Ping"] >= 3)
        assert client.stats.ping_timeouts == 0  # answered pings keep the link
        assert server.logins == 1
        server.answer_pings = False
        await rec.until(lambda: client.stats.reconnects >= 1)
        assert client.stats.ping_timeouts == 1
        assert rec.reasons == ["no reply to Ping within 0.1s"]
        assert "Ping" in (client.last_error or "")
        assert server.logins == 2


async def test_shutdown_event_reconnects(server: ScriptedAmiServer) -> None:
    rec = Recorder()
    async with make_client(server, rec) as client:
        await rec.until(lambda: rec.connected == 1)
        await server.shutdown()
        await rec.until(lambda: rec.connected == 2)
        assert rec.reasons == ["shutdown"]
        assert [m.get("Shutdown") for m in rec.events("Shutdown")] == ["Cleanly"]
        assert client.stats.reconnects == 1


# -- requests -----------------------------------------------------------------------------


async def test_list_actions_are_correlated_by_action_id(server: ScriptedAmiServer) -> None:
    server.set_snapshot(RINGING_CALL)
    rec = Recorder()
    async with make_client(server, rec, resync_actions=()) as client:
        with pytest.raises(AmiNotConnected):
            await client.action("Ping")
        await rec.until(lambda: rec.connected == 1)
        foreign = [("Event", "OriginateResponse"), ("ActionID", "drv-2"), ("Response", "Success"),
                   ("Channel", "Local/5000@inbound-00000004;1"), ("Reason", "4")]
        status, channels, pong, pushed = await asyncio.gather(
            client.list_action("QueueStatus"), client.list_action("CoreShowChannels"), client.action("Ping"),
            server.push(foreign))
        assert [m.event for m in status] == ["QueueParams", "QueueMember", "QueueEntry"]
        assert [m.event for m in channels] == ["CoreShowChannel"] * 4
        assert len({m.action_id for m in status}) == len({m.action_id for m in channels}) == 1
        assert status[0].action_id != channels[0].action_id
        assert pong.get("Ping") == "Pong"
        assert pushed == 1
        # every event reached on_message too, list events and the foreign one alike
        await rec.until(lambda: bool(rec.events("OriginateResponse")))
        assert len(rec.events("CoreShowChannel")) == 4
        assert [m.get("ListItems") for m in rec.events("QueueStatusComplete")] == ["3"]
        assert {m.get("CallerIDName") for m in rec.events("CoreShowChannel")} == {"张三"}
        with pytest.raises(AmiActionError, match="Invalid/unknown command"):
            await client.action("NoSuchAction", {"Foo": "bar"})
        server.answer_pings = False
        with pytest.raises(TimeoutError):
            await client.action("Ping", timeout_s=0.05)
        assert client.connected  # one slow reply is not a dead link; the keepalive decides


async def test_chinese_caller_name_split_across_reads(server: ScriptedAmiServer) -> None:
    rec = Recorder()
    async with make_client(server, rec, resync_actions=()):
        await rec.until(lambda: rec.connected == 1)
        data = encode_message([("Event", "QueueCallerJoin"), ("Channel", "Local/5000@inbound-00000009;2"),
                               ("CallerIDNum", "+8613912345678"), ("CallerIDName", "张三(平安客户)"),
                               ("Queue", "support")])
        cut = data.index("张".encode()) + 1  # inside the first character's UTF-8 bytes
        await server.push_raw(data[:cut])
        await server.push_raw(data[cut:])
        await rec.until(lambda: bool(rec.events("QueueCallerJoin")))
    (msg,) = rec.events("QueueCallerJoin")
    assert msg.get("CallerIDName") == "张三(平安客户)"
