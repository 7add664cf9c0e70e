"""Listen / whisper / barge on FreeSWITCH: the console's spy through ``bgapi originate ... &eavesdrop``.

The daemon attached (pbx.kind=freeswitch) to a scripted switch over loopback TCP; a call in
progress is hand-built from mod_callcenter events; supervisors log in and spy over HTTP.  The
switch records what it is asked (``received``); the supervisor's channel executing ``eavesdrop``
and hanging up are pushed back.  No sleeps: every wait is for a condition, under a timeout.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from config.schema import Config
from monitor.auth import TokenStore, hash_password
from monitor.daemon import Daemon
from monitor.ui import UI
from telephony.esl.adapter import FreeSwitchAdapter, eavesdrop_command
from telephony.esl.codec import EslEvent
from telephony.esl.server import ScriptedEslServer
from telephony.esl.tracker import FsTracker
from telephony.events import CallAnswered, DomainEvent, ResyncDone, SpyStarted, SpyStopped
from tests.test_esl_client import PASSWORD, fixed

pytestmark = pytest.mark.usefixtures("no_leftover_tasks")

UI_PASSWORD = "correct horse battery"
AGENT = "1001@default"
AGENT_LEG = "a1b2c3d4-0000-4000-8000-000000000001"  # the agent's channel (CC-Agent-UUID)
CALLER = "c1b2c3d4-0000-4000-8000-000000000002"  # the member session: the call's id


class Rig:
    def __init__(self, daemon: Daemon, server: ScriptedEslServer, http: aiohttp.ClientSession) -> None:
        self.daemon, self.server, self.http = daemon, server, http
        self.seen: list[DomainEvent] = []
        self._wake = asyncio.Event()
        assert daemon.monitor is not None
        daemon.monitor.on_event(self._on_event)
        self.base = f"http://127.0.0.1:{daemon.http_port}"

    def _on_event(self, ev: DomainEvent) -> None:
        self.seen.append(ev)
        self._wake.set()

    async def until(self, predicate: Callable[[], bool], timeout_s: float = 3.0) -> None:
        async with asyncio.timeout(timeout_s):
            while not predicate():
                self._wake.clear()
                await self._wake.wait()

    @property
    def ui(self) -> Any:
        runner = self.daemon._runner
        assert runner is not None
        return runner.app[UI]

    def originates(self) -> list[str]:
        return [c for c in self.server.received if c.startswith("bgapi originate ")]

    async def login(self, name: str) -> str:
        self.http.cookie_jar.clear()
        r = await self.http.post(f"{self.base}/api/v1/session", json={"name": name, "password": UI_PASSWORD})
        assert r.status == 200, await r.text()
        csrf: str = (await r.json())["csrf"]
        return csrf

    async def spy(self, csrf: str, mode: str, call: str = CALLER) -> aiohttp.ClientResponse:
        return await self.http.post(f"{self.base}/api/v1/calls/{call}/spy", json={"mode": mode},
                                    headers={"X-CSRF-Token": csrf})


def cc(action: str, **fields: str) -> list[tuple[str, str]]:
    return [("Event-Subclass", "callcenter::info"), ("Event-Name", "CUSTOM"), ("CC-Action", action),
            *((f"CC-{k.replace('_', '-')}", v) for k, v in fields.items())]


def chan(name: str, uid: str, **fields: str) -> list[tuple[str, str]]:
    return [("Event-Name", name), ("Unique-ID", uid), *((k.replace("_", "-"), v) for k, v in fields.items())]


def originate_answer(refuse: set[str]) -> Callable[[str], str | None]:
    """The switch's answer to ``originate``: +OK with the channel's uuid, or -ERR NO_ANSWER for a
    supervisor dial string in ``refuse``."""
    def answer(command: str) -> str | None:
        if not command.startswith("originate "):
            return None
        m = re.search(r"origination_uuid=([^,}]+)", command)
        if any(f"}}{dial} " in command for dial in refuse):
            return "-ERR NO_ANSWER\n"
        return f"+OK {m.group(1) if m else 'x'}\n"
    return answer


@pytest.fixture
async def rig(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Rig]:
    h = hash_password(UI_PASSWORD)
    async with ScriptedEslServer(password=PASSWORD, answer=originate_answer({"user/8009"})) as server:
        cfg = Config.model_validate({
            "pbx": {"kind": "freeswitch", "esl": {"host": server.host, "port": server.port}},
            "http": {"host": "127.0.0.1", "port": 0},
            "commitments": {"enabled": False},
            "ui": {"cookie_secure": False, "users": [
                {"name": "sup-a", "role": "supervisor", "teams": ["a"], "phone": "user/8001", "password_hash": h},
                {"name": "sup-b", "role": "supervisor", "teams": ["b"], "phone": "user/8002", "password_hash": h},
                {"name": "sup-mute", "role": "supervisor", "teams": ["a"], "phone": "user/8009", "password_hash": h}],
                "teams": {"a": {"agents": [AGENT], "queues": ["support@default"]},
                          "b": {"agents": ["1002@default"], "queues": ["claims@default"]}}},
        })
        daemon = Daemon(cfg, TokenStore([]), password=PASSWORD, delays=fixed(0.01))
        await daemon.start()
        try:
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
                r = Rig(daemon, server, http)
                await r.until(lambda: any(isinstance(e, ResyncDone) for e in r.seen))
                # a call in progress: queued, offered to 1001, answered on leg AGENT_LEG
                await server.push(cc("member-queue-start", Queue="support@default", Member_UUID="q1",
                                     Member_Session_UUID=CALLER, Member_CID_Number="13800000000",
                                     Member_CID_Name="张三"))
                await server.push(cc("agent-offering", Queue="support@default", Agent=AGENT, Member_UUID="q1",
                                     Member_Session_UUID=CALLER))
                await server.push(cc("bridge-agent-start", Queue="support@default", Agent=AGENT,
                                     Agent_UUID=AGENT_LEG, Member_UUID="q1", Member_Session_UUID=CALLER))
                await r.until(lambda: any(isinstance(e, CallAnswered) for e in r.seen))
                yield r
        finally:
            await daemon.stop()


async def test_a_supervisor_listens_whispers_and_barges_through_eavesdrop_audited(rig: Rig) -> None:
    csrf = await rig.login("sup-a")
    for mode in ("listen", "whisper", "barge"):
        r = await rig.spy(csrf, mode)
        assert r.status == 201, await r.text()
    sent = rig.originates()
    assert len(sent) == 3
    flags = {"listen": ("false", "false"), "whisper": ("true", "false"), "barge": ("true", "true")}
    uuids = []
    for command, (mode, (aleg, bleg)) in zip(sent, flags.items(), strict=True):
        assert command.endswith(f"}}user/8001 &eavesdrop({AGENT_LEG})"), command  # the agent's leg, by uuid
        assert f"eavesdrop_whisper_aleg={aleg}," in command
        assert f"eavesdrop_whisper_bleg={bleg}" in command
        assert f"ringwatch_eavesdrop={mode}," in command
        m = re.search(r"origination_uuid=([0-9a-f-]{36}),", command)
        assert m is not None, command
        uuids.append(m.group(1))
    sessions = (await (await rig.http.get(f"{rig.base}/api/v1/spy")).json())["sessions"]
    assert {s["state"] for s in sessions} == {"requested"}
    ids = [s["id"] for s in sorted(sessions, key=lambda s: s["id"])]
    assert all(f"ringwatch_spy={i}," in c for i, c in zip(ids, sent, strict=True))

    # the listen: the supervisor answers, their channel runs eavesdrop, then hangs up
    await rig.server.push(chan("CHANNEL_EXECUTE", uuids[0], Application="eavesdrop", Application_Data=AGENT_LEG))
    await rig.until(lambda: any(isinstance(e, SpyStarted) for e in rig.seen))
    await rig.server.push(chan("CHANNEL_HANGUP", uuids[0], Hangup_Cause="NORMAL_CLEARING"))
    await rig.until(lambda: any(isinstance(e, SpyStopped) for e in rig.seen))
    (started,) = [e for e in rig.seen if isinstance(e, SpyStarted)]
    (stopped,) = [e for e in rig.seen if isinstance(e, SpyStopped)]
    assert (started.call_id, started.agent, started.spy_id) == (CALLER, AGENT, ids[0])
    assert (stopped.call_id, stopped.agent, stopped.spy_id) == (CALLER, AGENT, ids[0])
    # the whisper starts too (and is still on)
    await rig.server.push(chan("CHANNEL_EXECUTE", uuids[1], Application="eavesdrop", Application_Data=AGENT_LEG))
    await rig.until(lambda: len([e for e in rig.seen if isinstance(e, SpyStarted)]) == 2)

    entries = await rig.ui.audit.query(limit=100, action="spy")
    got = [(e["action"], e["actor"], e["target"], e["details"]["mode"], e["details"]["spy"])
           for e in reversed(entries)]
    assert got == [("spy.request", "sup-a", CALLER, "listen", ids[0]),
                   ("spy.request", "sup-a", CALLER, "whisper", ids[1]),
                   ("spy.request", "sup-a", CALLER, "barge", ids[2]),
                   ("spy.start", "sup-a", CALLER, "listen", ids[0]),
                   ("spy.end", "sup-a", CALLER, "listen", ids[0]),
                   ("spy.start", "sup-a", CALLER, "whisper", ids[1])]
    assert all(e["details"]["agent"] == AGENT for e in entries)
    states = {s["id"]: s["state"] for s in (await (await rig.http.get(f"{rig.base}/api/v1/spy")).json())["sessions"]}
    assert states == {ids[0]: "ended", ids[1]: "active", ids[2]: "requested"}


async def test_a_supervisor_outside_the_team_is_refused_and_nothing_is_sent(rig: Rig) -> None:
    csrf = await rig.login("sup-b")
    before = list(rig.server.received)
    r = await rig.spy(csrf, "listen")
    assert r.status == 403
    assert (await r.json())["error"] == "not_your_team"
    r = await rig.spy(csrf, "barge", call="no-such-call")
    assert r.status == 404
    assert rig.server.received == before  # nothing reached the switch
    assert rig.originates() == []
    assert await rig.ui.audit.query(limit=100, action="spy") == []


async def test_a_supervisor_who_does_not_answer_ends_the_request_without_a_start(rig: Rig) -> None:
    csrf = await rig.login("sup-mute")
    r = await rig.spy(csrf, "listen")
    assert r.status == 201, await r.text()
    (command,) = rig.originates()
    assert command.endswith(f"}}user/8009 &eavesdrop({AGENT_LEG})")
    # the originate's BACKGROUND_JOB says -ERR NO_ANSWER: the session ends, never started
    await rig.until(lambda: any(isinstance(e, SpyStopped) for e in rig.seen))
    assert not any(isinstance(e, SpyStarted) for e in rig.seen)
    entries = await rig.ui.audit.query(limit=100, action="spy")
    assert [e["action"] for e in reversed(entries)] == ["spy.request", "spy.end"]
    assert entries[0]["details"]["start"] is None


async def test_the_agent_has_no_leg_any_more_409_and_nothing_is_sent(rig: Rig) -> None:
    csrf = await rig.login("sup-a")
    pbx = rig.daemon.pbx
    assert isinstance(pbx, FreeSwitchAdapter)
    pbx.tracker.calls[CALLER].agent_legs.clear()  # the monitor still thinks the agent talks
    r = await rig.spy(csrf, "listen")
    assert r.status == 409
    assert (await r.json())["error"] == "no_channel"
    assert rig.originates() == []
    entries = await rig.ui.audit.query(limit=100, action="spy")
    assert [(e["action"], e["details"].get("reason")) for e in reversed(entries)] == [
        ("spy.request", None), ("spy.failed", "no_channel")]


def test_an_eavesdrop_started_elsewhere_is_seen_without_a_request_id() -> None:
    seen: list[DomainEvent] = []
    tracker = FsTracker(seen.append)
    tracker.handle(EslEvent(cc("member-queue-start", Queue="support@default", Member_UUID="q1",
                                Member_Session_UUID="m1")), 0.0)
    tracker.handle(EslEvent(cc("bridge-agent-start", Queue="support@default", Agent=AGENT, Agent_UUID="a1",
                                Member_UUID="q1", Member_Session_UUID="m1")), 1.0)
    tracker.handle(EslEvent(chan("CHANNEL_EXECUTE", "s1", Application="eavesdrop", Application_Data="a1")), 2.0)
    tracker.handle(EslEvent(chan("CHANNEL_HANGUP", "s1")), 5.0)
    spies = [e for e in seen if isinstance(e, SpyStarted | SpyStopped)]
    assert spies == [SpyStarted(2.0, "m1", AGENT, None), SpyStopped(5.0, "m1", AGENT, None)]
    assert tracker.spies == {}
    # the codec keeps CHANNEL_EXECUTE of eavesdrop (and att_xfer), drops the rest undecoded
    assert FsTracker.FILTER.body_ok("CHANNEL_EXECUTE", b"Event-Name: CHANNEL_EXECUTE\nApplication: eavesdrop\n")
    assert FsTracker.FILTER.body_ok("CHANNEL_EXECUTE", b"Event-Name: CHANNEL_EXECUTE\nApplication: att_xfer\n")
    assert not FsTracker.FILTER.body_ok("CHANNEL_EXECUTE", b"Event-Name: CHANNEL_EXECUTE\nApplication: answer\n")


def test_eavesdrop_command_carries_the_channel_uuid_and_the_request_id() -> None:
    agent = "781b24fa-4193-4408-8768-850804749f36"
    mine = "0f6d2f3c-6a4e-4d0f-9d55-7b2f7c0c2a11"
    cmd = eavesdrop_command(agent, "user/8001", "whisper", origination_uuid=mine, spy_id="S12")
    assert f"origination_uuid={mine}," in cmd
    assert "ringwatch_spy=S12," in cmd
    assert cmd.endswith(f"}}user/8001 &eavesdrop({agent})")
    assert "origination_uuid" not in eavesdrop_command(agent, "user/8001")  # unchanged without them
    with pytest.raises(ValueError, match="Unique-ID"):
        eavesdrop_command(agent, "user/8001", origination_uuid="x,y=1")
    with pytest.raises(ValueError, match="spy id"):
        eavesdrop_command(agent, "user/8001", spy_id="S1,origination_uuid=evil")
