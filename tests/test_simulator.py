"""The call-centre simulator against the real Asterisk 22 recordings.

Each recorded scenario is played again by the simulator with the same plan (who
rings how long, who answers, talk time, who hangs up, transfers, recording) and
compared structurally with the recording: header sets per event, the order of the
events the tracker reads, the multiset of all channel events by role, Local
``;1``/``;2`` pairs and Linkedid; then both streams go through the real codec,
tracker and rules and must give the same call records and alerts.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from telephony.ami.client import AmiClient
from telephony.ami.codec import AmiDecoder, Message, encode_message
from telephony.ami.simulator import (
    CallPlan,
    OutboundPlan,
    QueueSpec,
    SimConfig,
    SimulatedPbx,
    Simulator,
    TransferPlan,
    list_response,
)
from telephony.ami.simwire import Pairs
from telephony.ami.trace import read_trace
from tests.replaytools import FIXTURES, replay_lines

pytestmark = pytest.mark.usefixtures("no_leftover_tasks")

#: the recordings' site: 5 support agents (7001-7005), claims 7006-7007 reached through xfer,3000
SITE = SimConfig(
    queues=(QueueSpec("support", agents=5), QueueSpec("claims", "ringall", timeout_s=300.0, service_level_s=60,
                                                      agents=2, exten="3000")),
    arrivals_per_min=0.0, outbound_per_min=0.0, pauses_per_agent_h=0.0, logouts_per_agent_h=0.0,
)
CUSTOMER = {"caller": "+15550100001", "caller_name": "Customer One"}

#: scenario -> the plan that reproduces it (times from the recordings' truth files)
PLANS: dict[str, CallPlan | OutboundPlan] = {
    "S01_answered_caller_hangs_up": CallPlan(ring_s={"7001": 5.0}, talk_s=10.0, **CUSTOMER),
    "S02_slow_answer_20s": CallPlan(ring_s={"7001": 20.0}, talk_s=5.0, **CUSTOMER),
    "S03_abandoned_in_queue": CallPlan(ring_s={"7001": None}, patience_s=11.5, **CUSTOMER),
    "S04_ringnoanswer_then_second_agent": CallPlan(ring_s={"7001": None, "7002": 4.0}, talk_s=8.0, **CUSTOMER),
    "S05_blind_transfer_to_claims": CallPlan(
        ring_s={"7001": 4.0, "7006": None, "7007": 30.0},
        transfer=TransferPlan("blind", 6.0, "claims", talk_after_s=10.0), **CUSTOMER),
    "S06_attended_transfer": CallPlan(
        ring_s={"7001": 3.0, "7003": 4.0},
        transfer=TransferPlan("attended", 5.0, "7003", consult_s=4.0, talk_after_s=8.0), **CUSTOMER),
    "S08_outbound_click_to_call": OutboundPlan("7001", "5551234", agent_ring_s=2.0, ring_s=8.0, talk_s=10.5),
    "S09_agent_hangs_up_first": CallPlan(ring_s={"7001": 4.0}, talk_s=8.5, hangup="agent", **CUSTOMER),
    "S10_recorded_call_mixmonitor": CallPlan(ring_s={"7001": 4.0}, talk_s=10.0, record=True, **CUSTOMER),
}
#: the events the tracker reads, whose relative order must be the recording's
MILESTONES = frozenset({"QueueCallerJoin", "AgentCalled", "AgentConnect", "AgentRingNoAnswer", "AgentComplete",
                        "QueueCallerAbandon", "QueueCallerLeave", "DialBegin", "DialEnd", "BlindTransfer",
                        "AttendedTransfer", "MixMonitorStart", "LocalBridge", "Newchannel"})
#: compared as a multiset: Asterisk itself orders them differently from run to run (S01 vs S04)
CHANNEL_EVENTS = frozenset({"Hangup", "HangupRequest", "SoftHangupRequest", "BridgeEnter", "BridgeLeave",
                            "BridgeCreate", "BridgeDestroy", "Newstate", "MusicOnHoldStart", "MusicOnHoldStop",
                            "QueueMemberStatus", "DialState", "Hold", "Unhold", "BridgeMerge", "DTMFEnd",
                            "LocalOptimizationBegin", "LocalOptimizationEnd", "OriginateResponse"})
#: events the recordings do not contain (no such action in the recording rig), checked by other tests
NOT_RECORDED = frozenset({"UserEvent", "ChanSpyStart", "ChanSpyStop"})
_LOCAL = re.compile(r"^Local/([^@]+@[\w-]+)-([0-9a-f]{8});([12])$")
_UID = re.compile(r"^\d{10}\.\d+$")


def recorded(name: str) -> list[Pairs]:
    """The recording's events, without the recorder's own login and security events."""
    out = []
    for item in read_trace(FIXTURES / f"{name}.jsonl"):
        if item.kind != "msg" or item.pairs[0][0] != "Event":
            continue
        if item.pairs[0][1] in ("FullyBooted", "SuccessfulAuth"):
            continue
        out.append(item.pairs)
    return out


def simulated(name: str, cfg: SimConfig = SITE) -> list[Pairs]:
    sim = Simulator(cfg)
    plan = PLANS[name]
    if isinstance(plan, CallPlan):
        sim.place_call(0.003, plan)
    else:
        sim.place_outbound(0.002, plan)
    return [p for _, p in sim.events()]


class Roles:
    """Channel names -> roles by order of appearance (``inbound#0;2``), so two streams compare."""

    def __init__(self) -> None:
        self.bases: dict[str, str] = {}
        self.per_kind: Counter[str] = Counter()

    def __call__(self, name: str | None) -> str:
        if not name:
            return ""
        m = _LOCAL.match(name)
        if m is None:
            return name
        base = f"{m.group(1)}-{m.group(2)}"
        role = self.bases.get(base)
        if role is None:
            role = self.bases[base] = f"{m.group(1)}#{self.per_kind[m.group(1)]}"
            self.per_kind[m.group(1)] += 1
        return f"{role};{m.group(3)}"


_VALUES = ("Queue", "DialStatus", "Reason", "Cause", "ChannelStateDesc", "DestChannelStateDesc", "Status", "InCall",
           "Context", "Extension", "Position", "Count", "Digit")
#: whole seconds that Asterisk computes from whole epoch seconds: +-1 s with another start phase
_SECONDS = ("RingTime", "HoldTime", "TalkTime")


def key(pairs: Pairs, roles: Roles) -> tuple[str, ...]:
    d = dict(pairs)
    chans = tuple(roles(d.get(k)) for k in ("Channel", "DestChannel", "LocalOneChannel", "TransfererChannel",
                                            "TransfereeChannel", "OrigTransfererChannel") if k in d)
    return (d["Event"], *chans, *(f"{k}={d[k]}" for k in _VALUES if k in d))


def seconds(stream: list[Pairs]) -> list[tuple[str, str, int]]:
    return [(p[0][1], k, int(v)) for p in stream for k, v in p if k in _SECONDS]


def _all_recorded() -> Iterator[list[Pairs]]:
    for path in sorted(FIXTURES.glob("S*.jsonl")):
        yield [item.pairs for item in read_trace(path) if item.kind == "msg"]


def shapes(streams: Iterable[list[Pairs]]) -> dict[str, set[tuple[str, ...]]]:
    """Event name (``Response`` for responses) -> every header-name tuple seen for it."""
    out: dict[str, set[tuple[str, ...]]] = {}
    for stream in streams:
        for pairs in stream:
            name = pairs[0][1] if pairs[0][0] == "Event" else "Response"
            out.setdefault(name, set()).add(tuple(k for k, _ in pairs))
    return out


RECORDED_SHAPES = shapes(_all_recorded())


@pytest.mark.parametrize("name", sorted(PLANS))
def test_same_events_headers_and_order_as_the_recording(name: str) -> None:
    rec, sim = recorded(name), simulated(name)
    # every message has a header set (names, order) that Asterisk 22 sent for that event
    for pairs in sim:
        event = pairs[0][1]
        if event in NOT_RECORDED:
            continue
        assert tuple(k for k, _ in pairs) in RECORDED_SHAPES.get(event, set()), (name, event)
    # the events the tracker reads come in the recording's order, with the same roles and values
    r_roles, s_roles = Roles(), Roles()
    rec_keys = [key(p, r_roles) for p in rec]
    sim_keys = [key(p, s_roles) for p in sim]
    assert [k for k in sim_keys if k[0] in MILESTONES] == [k for k in rec_keys if k[0] in MILESTONES]
    sim_s, rec_s = seconds(sim), seconds(rec)
    assert [x[:2] for x in sim_s] == [x[:2] for x in rec_s]
    for (event, what, got), (_, _, want) in zip(sim_s, rec_s, strict=True):
        # AgentRingNoAnswer's RingTime is in ms (30000): exact; the others whole seconds, +-1
        assert abs(got - want) <= (0 if want >= 1000 else 1), (event, what, got, want)
    # the other channel events: the same ones (order varies between Asterisk runs too)
    assert Counter(k for k in sim_keys if k[0] in CHANNEL_EVENTS) == \
        Counter(k for k in rec_keys if k[0] in CHANNEL_EVENTS)
    # the chatter the codec drops (VarSet, Newexten, ...) is there, in a like amount
    noisy = ("VarSet", "Newexten", "DeviceStateChange", "NewCallerid", "NewConnectedLine")
    n_rec = sum(1 for p in rec if p[0][1] in noisy)
    n_sim = sum(1 for p in sim if p[0][1] in noisy)
    assert 0.6 * n_rec <= n_sim <= 1.4 * n_rec, (n_sim, n_rec)


def _channels(stream: list[Pairs]) -> Iterator[dict[str, str]]:
    for pairs in stream:
        if pairs[0][1] == "Newchannel":
            yield dict(pairs)


@pytest.mark.parametrize("name", sorted(PLANS))
def test_local_pairs_and_linkedid_as_asterisk(name: str) -> None:
    sim = simulated(name)
    new = list(_channels(sim))
    by_name = {c["Channel"]: c for c in new}
    first_uid = new[0]["Uniqueid"]
    for i, c in enumerate(new):
        assert _UID.match(c["Uniqueid"]), c["Uniqueid"]
        # one call: every channel keeps the Linkedid of the call's first channel
        assert c["Linkedid"] == first_uid
        m = _LOCAL.match(c["Channel"])
        assert m is not None
        if m.group(3) == "1":
            two = new[i + 1]["Channel"]
            assert two == c["Channel"][:-1] + "2"  # ;2 right after ;1
    bridges = [dict(p) for p in sim if p[0][1] == "LocalBridge"]
    assert len(bridges) == len(new) // 2
    for b in bridges:
        assert b["LocalOneChannel"] in by_name
        assert b["LocalTwoChannel"] == b["LocalOneChannel"][:-1] + "2"
    # the member ;1 is what AgentCalled names; the agent leg inherits the customer's number
    for pairs in sim:
        d = dict(pairs)
        if d["Event"] == "AgentCalled":
            assert d["DestChannel"].endswith(";1")
            assert d["DestCallerIDNum"] == "+15550100001"


def _as_trace(stream: Iterable[tuple[float, Pairs]], path: Path, end: float | None = None) -> Path:
    """The stream as a ``.jsonl`` trace (what ``ringwatch replay`` reads); ``end``: an eof line then."""
    with path.open("w", encoding="utf-8") as fh:
        fh.write(json.dumps({"t": 0.0, "banner": "Asterisk Call Manager/11.0.0"}) + "\n")
        for t, pairs in stream:
            fh.write(json.dumps({"t": round(t, 6), "msg": [list(p) for p in pairs]}, ensure_ascii=False) + "\n")
        if end is not None:
            fh.write(json.dumps({"t": end, "eof": True}) + "\n")
    return path


def _shape(lines: list[dict[str, Any]]) -> list[Any]:
    out: list[Any] = []
    for o in lines:
        if o["type"] == "call":
            out.append(("call", o["direction"], o["queue"], o["agent"], o["answered_at"] is not None, o["abandoned"],
                        o["first_hangup"], o["recorded"], o["lost"], [(r["agent"], r["outcome"]) for r in o["rings"]],
                        [(x["kind"], x["completed"]) for x in o.get("transfers", [])]))
        elif o["type"] in ("alert", "notice"):
            out.append((o["type"], o["rule"], o["agent"]))
    return out


@pytest.mark.parametrize("name", sorted(PLANS))
def test_ringwatch_concludes_the_same_from_both(name: str, tmp_path: Path) -> None:
    sim = Simulator(SITE)
    plan = PLANS[name]
    if isinstance(plan, CallPlan):
        sim.place_call(0.003, plan)
    else:
        sim.place_outbound(0.002, plan)
    *_, last = read_trace(FIXTURES / f"{name}.jsonl")  # the recording's clock runs on to its Logoff: so does this
    lines = replay_lines(_as_trace(sim.events(), tmp_path / "sim.jsonl", end=last.t))
    assert _shape(lines) == _shape(replay_lines(FIXTURES / f"{name}.jsonl"))


def test_deterministic_per_seed() -> None:
    cfg = SimConfig(seed=7, duration_s=600.0)
    a = [encode_message(p) for _, p in Simulator(cfg).events()]
    b = [encode_message(p) for _, p in Simulator(cfg).events()]
    c = [encode_message(p) for _, p in Simulator(SimConfig(seed=8, duration_s=600.0)).events()]
    assert a == b
    assert a != c
    assert len(a) > 2000


def test_a_busy_hour_exercises_every_rule_and_ringwatch_follows_it(tmp_path: Path) -> None:
    """An hour of the default call centre: every call the simulator finished is a record, each
    rule is missed a few times, and the tracker ends with nothing open."""
    sim = Simulator(SimConfig(seed=3, duration_s=3600.0, arrivals_per_min=8.0, outbound_per_min=1.0))
    lines = replay_lines(_as_trace(sim.events(), tmp_path / "hour.jsonl"))
    calls = [o for o in lines if o["type"] == "call"]
    assert len(calls) == len(sim.truth) > 400
    by_id = {o["id"]: o for o in calls}
    for truth in sim.truth:
        rec = by_id[truth.linkedid]
        assert rec["direction"] == truth.direction
        assert rec["abandoned"] == truth.abandoned
        assert (rec["answered_at"] is not None) == (truth.answered_by is not None)
        if truth.direction == "inbound" and truth.answered_by is not None:
            assert rec["agent"] == truth.answered_by
            assert rec["recorded"] == truth.recorded
        if truth.first_hangup is not None and truth.answered_by is not None and not truth.transfers:
            assert rec["first_hangup"] == truth.first_hangup, truth
    rules = Counter(o["rule"] for o in lines if o["type"] == "alert")
    for rule in ("IN-ANSWER", "IN-HANGUP", "IN-XFER", "OUT-WRAPUP", "SYS-REC"):
        assert rules[rule] > 0, rules
    stats = sim.stats
    assert stats.abandoned > 0
    assert stats.transfers > 0
    assert stats.outbound > 0
    names = Counter(p[0][1] for _, p in Simulator(SimConfig(seed=3, duration_s=600.0)).events())
    for event in ("QueueMemberPause", "UserEvent", "AgentRingNoAnswer", "BlindTransfer", "MixMonitorStart"):
        assert names[event] > 0, event


def test_resync_lists_answer_from_the_live_state() -> None:
    sim = Simulator(SITE)
    sim.place_call(0.0, CallPlan(ring_s={"7001": 2.0}, talk_s=100.0, caller="+8613900000001"))
    sim.place_call(1.0, CallPlan(ring_s={"7002": None, "7003": None, "7004": None, "7005": None},
                                 caller="+8613900000002"))
    sim.run_until(10.0)
    channels = sim.snapshot("CoreShowChannels")
    for action, items in (("CoreShowChannels", channels), ("QueueStatus", sim.snapshot("QueueStatus")),
                          ("QueueSummary", sim.snapshot("QueueSummary"))):
        for pairs in list_response(action, "a1", items):
            name = dict(pairs).get("Event", "Response")
            assert tuple(k for k, _ in pairs) in RECORDED_SHAPES[name], (action, name)
    apps = Counter(dict(p)["Application"] for p in channels)
    assert apps == Counter({"Wait": 4, "Queue": 2, "AppQueue": 2})
    up = [dict(p) for p in channels if dict(p)["Application"] == "Queue" and dict(p)["BridgeId"]]
    assert len(up) == 1  # the first caller talks (in a bridge), the second waits
    status = [dict(p) for p in sim.snapshot("QueueStatus")]
    entries = [s for s in status if s["Event"] == "QueueEntry"]
    assert [(e["Queue"], e["Position"], e["CallerIDNum"]) for e in entries] == [("support", "1", "+8613900000002")]
    assert int(entries[0]["Wait"]) == 8  # joined at 1.5 (after Answer), listed at 10
    members = {s["Name"]: s for s in status if s["Event"] == "QueueMember"}
    assert members["Agent 7001"]["Status"] == "2"
    assert len(members) == 7


async def test_server_answers_login_ping_lists_and_originate_like_asterisk() -> None:
    sim = Simulator(SITE)
    sim.place_call(0.0, CallPlan(ring_s={"7001": 1.0}, talk_s=600.0, caller="+8613900000001"))
    pbx = SimulatedPbx(sim, username="u", secret="s", speed=0.0, wait_for_login=True, until=30.0)
    events: list[Message] = []
    async with pbx:
        client = AmiClient(host=pbx.host, port=pbx.port, username="u", secret="s",
                           on_message=lambda m, _c: events.append(m), resync_actions=())
        async with client:
            async with asyncio.timeout(5):
                await client.wait_connected()
                await pbx.wait_finished()
                pong = await client.action("Ping")
                assert pong.get("Ping") == "Pong"
                chans = await client.list_action("CoreShowChannels")
                queue = await client.list_action("QueueStatus")
                reply = await client.action("Originate", [("Channel", "Local/8001@supervisors"),
                                                          ("Application", "ChanSpy"),
                                                          ("Data", "Local/7001@agents,q"), ("Async", "true")])
                await pbx.wait_until(lambda: any(m.event == "ChanSpyStart" for m in events))
        assert reply.get("Message") == "Originate successfully queued"
        assert len(chans) == 4
        assert {m.event for m in queue} == {"QueueParams", "QueueMember"}
        start = next(m for m in events if m.event == "ChanSpyStart")
        assert (start.get("SpyeeChannel") or "").startswith("Local/7001@agents-")
        spy_reply = next(m for m in events if m.event == "OriginateResponse" and m.get("Application") == "ChanSpy")
        assert spy_reply.action_id == reply.action_id
        assert [m.event for m in events].count("AgentConnect") == 1


def test_a_disposition_reaches_ringwatch_both_ways(tmp_path: Path) -> None:
    from telephony.ami.simulator import DispositionPlan

    sim = Simulator(SITE)
    sim.place_outbound(0.0, OutboundPlan("7001", "5551234", talk_s=30.0,
                                         disposition=DispositionPlan("valid", 20.0, by_pause=True)))
    sim.place_outbound(1.0, OutboundPlan("7002", "5551235", talk_s=30.0,
                                         disposition=DispositionPlan("refused", 30.0, by_pause=False)))
    sim.place_outbound(2.0, OutboundPlan("7003", "5551236", talk_s=30.0))
    lines = replay_lines(_as_trace(sim.events(), tmp_path / "out.jsonl", end=2000.0))  # past OUT-WRAPUP's 5 min
    disp = {o["call"]: o["tag"] for o in lines if o["type"] == "disposition"}
    calls = {o["agent"]: o["id"] for o in lines if o["type"] == "call"}
    assert disp == {calls["Agent 7001"]: "valid", calls["Agent 7002"]: "refused"}
    late = [o for o in lines if o["type"] == "alert" and o["rule"] == "OUT-WRAPUP"]
    assert [a["agent"] for a in late] == ["Agent 7003"]


def test_utf8_names_survive_the_wire() -> None:
    sim = Simulator(SimConfig(seed=5, duration_s=300.0))
    data = b"".join(encode_message(p) for _, p in sim.events())
    names = {m.get("CallerIDName") for m in AmiDecoder(expect_banner=False).feed(data) if isinstance(m, Message)}
    assert any(n and not n.isascii() for n in names)


async def test_the_demo_shows_a_live_alert_on_the_websocket_and_metrics() -> None:
    """The README's main command, in process: simulator PBX -> daemon -> websocket and /metrics.
    At 20x, the opening call (18 s of ringing) gives an IN-ANSWER alert while it still rings,
    ~1 s of real time in; the frame arrives within 100 ms (real) of its deadline."""
    import aiohttp
    from prometheus_client.parser import text_string_to_metric_families
    from websockets.asyncio.client import connect

    from config.schema import Config
    from monitor.auth import TokenStore
    from monitor.daemon import Daemon
    from telephony.ami.simulator import demo_simulator

    speed = 20.0
    pbx = SimulatedPbx(demo_simulator(seed=1), username="ringwatch", secret="demo", speed=speed)
    await pbx.start()
    cfg = Config.model_validate({"http": {"port": 0}, "commitments": {"enabled": False}})
    daemon = Daemon(cfg, TokenStore([("tok-sup", "sup", "supervisor")]), clock_scale=speed, host=pbx.host,
                    port=pbx.port, secret="demo")
    try:
        await daemon.start()
        assert daemon.clock is not None
        async with connect(f"ws://127.0.0.1:{daemon.http_port}/ws", proxy=None,
                           additional_headers={"Authorization": "Bearer tok-sup"}) as ws:
            assert json.loads(await ws.recv())["type"] == "hello"
            async with asyncio.timeout(10):
                while True:
                    frame = json.loads(await ws.recv())
                    if frame["type"] == "alert" and frame["rule"] == "IN-ANSWER":
                        break
            late = daemon.clock.now() - frame["details"]["deadline"]
            assert frame["agent"] == "Agent 7001"
            assert frame["caller"] == "+86139****5678"
            assert late < 0.1 * speed
        async with aiohttp.ClientSession() as http:
            resp = await http.get(f"http://127.0.0.1:{daemon.http_port}/metrics",
                                  headers={"Authorization": "Bearer tok-sup"})
            families = {f.name: f for f in text_string_to_metric_families(await resp.text())}
        assert families["ringwatch_ami_connected"].samples[0].value == 1.0
        assert sum(s.value for s in families["ringwatch_calls_offered"].samples if s.name.endswith("_total")) >= 1
    finally:
        await daemon.stop()
        await pbx.stop()


# -- raw captures (.raw) -----------------------------------------------------------------------------


def _calls_only(lines: list[dict[str, Any]]) -> list[Any]:
    return [x for x in _shape(lines) if x[0] == "call"]


@pytest.mark.parametrize("name", sorted(PLANS))
def test_a_raw_capture_without_timestamps_replays_with_the_clock_standing_still(name: str) -> None:
    """The recordings' exact bytes: the same calls as the .jsonl; no Timestamp header, so the
    clock never moves (every time is 0 and no deadline comes due)."""
    raw = replay_lines(FIXTURES / f"{name}.raw")
    assert _calls_only(raw) == _calls_only(replay_lines(FIXTURES / f"{name}.jsonl"))
    assert {o.get("at", 0.0) for o in raw} | {o.get("ended_at", 0.0) for o in raw if o["type"] == "call"} == {0.0}
    # no deadline comes due (IN-HANGUP is decided by an event, not by a deadline)
    assert not [o for o in raw if o["type"] == "alert" and o["rule"] != "IN-HANGUP"]


def test_a_raw_capture_with_timestamps_replays_on_its_own_clock(tmp_path: Path) -> None:
    """A simulator capture written like ``ringwatch simulate --write``: time follows Timestamp."""
    from telephony.ami.simulator import write_capture

    cfg = SimConfig(seed=4, duration_s=900.0, timestamps=True)
    with (tmp_path / "c.raw").open("wb") as fh:
        write_capture(Simulator(cfg), fh)
    raw = replay_lines(tmp_path / "c.raw")
    sim = Simulator(cfg)
    trace = _as_trace(sim.events(), tmp_path / "c.jsonl")
    ref = replay_lines(trace)
    assert _shape(raw) == _shape(ref)
    origin = trace_origin(trace)  # a raw capture counts from its first Timestamp
    alerts = [(o["rule"], o["at"]) for o in raw if o["type"] == "alert"]
    assert len(alerts) > 5
    assert alerts == [(o["rule"], pytest.approx(o["at"] - origin, abs=2e-6)) for o in ref if o["type"] == "alert"]


def trace_origin(path: Path) -> float:
    """t of the first event in a .jsonl written by _as_trace (a raw capture counts from there)."""
    return next(item.t for item in read_trace(path) if item.kind == "msg")


def test_ringwatch_replay_reads_a_raw_capture(capsys: pytest.CaptureFixture[str]) -> None:
    from monitor.cli import main

    assert main(["replay", str(FIXTURES / "S05_blind_transfer_to_claims.raw"), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    [call] = [o for o in lines if o["type"] == "call"]
    assert [x["kind"] for x in call["transfers"]] == ["blind"]
    assert call["agent"] == "Agent 7001"


def test_ringwatch_simulate_writes_a_capture_that_replays(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from monitor.cli import main

    out = tmp_path / "day.raw"
    assert main(["simulate", "--write", str(out), "--duration", "600", "--seed", "9"]) == 0
    assert out.read_bytes().startswith(b"Asterisk Call Manager/11.0.0\r\n")
    assert main(["replay", str(out), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len([o for o in lines if o["type"] == "call"]) > 30
    assert max(o["ended_at"] for o in lines if o["type"] == "call") > 600  # the clock followed Timestamp
    monkeypatch.delenv("RINGWATCH_AMI_SECRET", raising=False)
    assert main(["simulate", "--port", "0"]) == 2  # serving needs a secret
