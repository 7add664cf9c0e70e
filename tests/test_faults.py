"""Faults: the PBX link drops, refuses, restarts with calls in progress, goes silent; events are
lost; the daemon gets SIGTERM; the codec gets garbage.  The PBX is the call-centre simulator
(real AMI over loopback TCP), the PBX side of ringwatch the real adapter (client + tracker),
the calls scripted so that each test knows what must come out.

The simulator plays at speed 0 up to a chosen simulated time (``play_until``) and then holds,
so a fault happens at a known point of every call without any sleep; the client's timers
(ping, backoff, sweep) are set to tens of milliseconds and every wait is on a condition.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alerts.hub import AlertHub
from config.schema import Config
from monitor.calls import Call
from monitor.clock import LoopClock
from monitor.engine import Monitor
from telephony.ami.adapter import AsteriskAdapter, channel_rules
from telephony.ami.client import backoff
from telephony.ami.codec import AmiDecoder, Banner, Message, encode_message
from telephony.ami.simulator import CallPlan, OutboundPlan, QueueSpec, SimConfig, SimulatedPbx, Simulator
from telephony.ami.simwire import Pairs

pytestmark = pytest.mark.usefixtures("no_leftover_tasks")
ROOT = Path(__file__).resolve().parents[1]
SITE = SimConfig(
    queues=(QueueSpec("support", agents=5), QueueSpec("claims", "ringall", timeout_s=300.0, agents=2, exten="3000")),
    arrivals_per_min=0.0, outbound_per_min=0.0, pauses_per_agent_h=0.0, logouts_per_agent_h=0.0,
)
#: A talks with 7001 from ~2.5 s to ~32.5 s; B rings 7002 from ~1.5 s, answered at ~21.5 s, talks 100 s
CALL_A = CallPlan(caller="+8613900000001", ring_s={"7001": 2.0}, talk_s=30.0)
CALL_B = CallPlan(caller="+8613900000002", ring_s={"7002": 20.0}, talk_s=100.0)


@dataclass
class Rig:
    pbx: SimulatedPbx
    adapter: AsteriskAdapter
    monitor: Monitor
    records: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def tracker_live(self) -> int:
        return self.adapter.tracker.live_calls

    def by_caller(self, number: str) -> dict[str, Any]:
        return next(r for r in self.records.values() if r["caller"].endswith(number[-4:]))

    async def until(self, predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
        """Wait for a condition of the rig (checked whenever the PBX's state changes, and every 10 ms)."""
        async with asyncio.timeout(timeout_s):
            while not predicate():
                with_pbx = asyncio.ensure_future(self.pbx.wait_until(predicate, timeout_s))
                try:
                    await asyncio.wait([with_pbx], timeout=0.01)
                finally:
                    with_pbx.cancel()
                    await asyncio.gather(with_pbx, return_exceptions=True)

    async def play(self, t: float | None) -> None:
        """Play the call centre on to simulated time ``t`` (as fast as the link takes it)."""
        self.pbx.play_until(t)
        await self.until(lambda: self.pbx.finished)


def _delays(first: float = 0.02, cap: float = 0.16) -> Callable[[], Any]:
    """Deterministic backoff for tests: first, 2 x first, ... capped (no jitter)."""
    return functools.partial(backoff, first, cap, 2.0, rng=lambda: 1.0)


@pytest.fixture
async def make_rig() -> AsyncIterator[Callable[..., Any]]:
    rigs: list[Rig] = []

    async def make(sim: Simulator, **client: Any) -> Rig:
        cfg = Config()
        pbx = SimulatedPbx(sim, username="ringwatch", secret="s3cret", speed=0.0, until=0.0)
        await pbx.start()
        clock = LoopClock()
        hub = AlertHub(clock.now)
        monitor = Monitor(cfg, clock, hub)
        options: dict[str, Any] = {"host": pbx.host, "port": pbx.port, "secret": "s3cret", "delays": _delays(),
                                   "ping_interval_s": 5.0, "ping_timeout_s": 1.0, "sweep_interval_s": 0.0,
                                   "auth": "plain"}
        options.update(client)
        adapter = AsteriskAdapter(cfg.pbx.ami, monitor.handle, clock.now, channel_rules(cfg), **options)
        rig = Rig(pbx, adapter, monitor)

        def on_record(_c: Call, record: dict[str, Any]) -> None:
            rig.records[record["id"]] = record

        monitor.on_record(on_record)
        rigs.append(rig)
        await adapter.start()
        await rig.until(lambda: adapter.connected and monitor.link.resyncs >= 1)
        return rig

    yield make
    for rig in rigs:
        await rig.adapter.stop()
        await rig.pbx.stop()
        rig.monitor.close()


def _two_calls() -> Simulator:
    sim = Simulator(SITE)
    sim.place_call(0.0, CALL_A)
    sim.place_call(1.0, CALL_B)
    return sim


async def test_link_drop_reconnect_resync_closes_the_call_that_ended_meanwhile(make_rig: Any) -> None:
    rig: Rig = await make_rig(_two_calls())
    await rig.play(10.0)  # A talks, B rings
    assert rig.tracker_live == 2
    rig.pbx.refuse(None)  # nobody gets back in until we say so
    await rig.pbx.drop()
    await rig.until(lambda: not rig.adapter.connected)
    await rig.play(40.0)  # while ringwatch is away: A ends, B is answered by 7002
    assert rig.tracker_live == 2  # it saw none of that
    rig.pbx.allow()
    await rig.until(lambda: rig.adapter.connected and rig.monitor.link.resyncs >= 2)
    a = rig.by_caller(CALL_A.caller)
    assert a["lost"] is True  # closed by the resync: ended while the link was down
    assert a["agent"] == "Agent 7001"
    assert rig.tracker_live == 1
    b = rig.monitor.calls[next(iter(rig.monitor.calls))]
    assert b.answered_at is not None  # the resync saw 7002's leg up: answered
    await rig.play(None)  # B ends, seen live
    await rig.until(lambda: rig.tracker_live == 0)
    b_rec = rig.by_caller(CALL_B.caller)
    assert (b_rec["lost"], b_rec["agent"], b_rec["first_hangup"]) == (False, "Agent 7002", "customer")
    assert rig.adapter.stats.reconnects == 1


async def test_an_outbound_call_dialled_while_the_link_was_down_is_adopted_at_the_resync(make_rig: Any) -> None:
    sim = Simulator(SITE)
    # 7003 clicks to call 13912345678 at 12 s: its phone answers at 14 s, the customer at 20 s, talks 30 s
    sim.place_outbound(12.0, OutboundPlan("7003", "13912345678", agent_ring_s=2.0, ring_s=6.0, talk_s=30.0))
    rig: Rig = await make_rig(sim)
    await rig.play(10.0)
    rig.pbx.refuse(None)
    await rig.pbx.drop()
    await rig.until(lambda: not rig.adapter.connected)
    await rig.play(25.0)  # dialled and answered while ringwatch was away
    assert rig.tracker_live == 0
    rig.pbx.allow()
    await rig.until(lambda: rig.adapter.connected and rig.monitor.link.resyncs >= 2)
    assert rig.tracker_live == 1
    (live,) = rig.monitor.calls.values()
    assert (live.direction, live.caller, live.agent) == ("outbound", "13912345678", "Agent 7003")
    assert live.answered_at is not None  # the customer's leg was up in the snapshot
    # the customer's leg was dialled at 14 s: offered that long before the snapshot (whole seconds)
    assert live.answered_at - live.offered_at == pytest.approx(sim.now - 14.0, abs=1.0)
    await rig.play(None)  # the customer hangs up at 50 s, seen live
    await rig.until(lambda: rig.tracker_live == 0)
    rec = rig.by_caller("13912345678")
    assert (rec["direction"], rec["lost"], rec["first_hangup"], rec["agent"]) == (
        "outbound", False, "customer", "Agent 7003")


async def test_refused_connections_back_off_exponentially_then_resync(make_rig: Any) -> None:
    rig: Rig = await make_rig(_two_calls())
    await rig.play(10.0)
    rig.pbx.refuse(None)
    await rig.pbx.drop()
    refused_before = rig.pbx.refused
    await rig.until(lambda: rig.pbx.refused >= refused_before + 5)
    times = rig.pbx.connect_times[-5:]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # 0.04, 0.08, 0.16, 0.16 s (first, x2 ... capped), each at least its delay: no tight loop
    for gap, want in zip(gaps, (0.04, 0.08, 0.16, 0.16), strict=True):
        assert gap >= want * 0.9, gaps
    assert gaps[2] > gaps[0]
    await rig.play(40.0)
    rig.pbx.allow()
    await rig.until(lambda: rig.adapter.connected and rig.monitor.link.resyncs >= 2)
    assert rig.by_caller(CALL_A.caller)["lost"] is True
    assert rig.tracker_live == 1


async def test_pbx_restart_with_calls_in_progress(make_rig: Any) -> None:
    rig: Rig = await make_rig(_two_calls())
    await rig.play(10.0)
    assert rig.tracker_live == 2
    await rig.pbx.restart()  # every link cut, every channel gone, refused until it is back up
    await rig.until(lambda: not rig.adapter.connected)
    sim = rig.pbx.sim
    assert sim.live_calls == 0
    anyone = {f"700{n}": 3.0 for n in range(1, 6)}
    sim.place_call(sim.now + 5.0, CallPlan(caller="+8613900000003", ring_s=anyone, talk_s=20.0))
    await rig.play(sim.now + 10.0)  # the new call is talking by the time ringwatch is back
    rig.pbx.allow()
    await rig.until(lambda: rig.adapter.connected and rig.monitor.link.resyncs >= 2)
    assert rig.by_caller(CALL_A.caller)["lost"] is True
    assert rig.by_caller(CALL_B.caller)["lost"] is True
    assert rig.tracker_live == 1  # the call that began after the restart, adopted by the resync
    await rig.play(None)
    await rig.until(lambda: rig.tracker_live == 0)
    c = rig.by_caller("+8613900000003")
    assert (c["lost"], c["agent"]) == (False, "Agent 7001")  # the first free agent after the restart


async def test_half_open_link_is_found_by_ping_and_replaced(make_rig: Any) -> None:
    rig: Rig = await make_rig(_two_calls(), ping_interval_s=0.05, ping_timeout_s=0.1)
    await rig.play(10.0)
    rig.pbx.refuse(None)
    rig.pbx.go_silent()  # the socket stays open, nothing comes back: no FIN, no RST
    await rig.play(40.0)  # A ends; the silent link carries none of it
    await rig.until(lambda: rig.adapter.stats.ping_timeouts >= 1 and not rig.adapter.connected)
    rig.pbx.allow()
    await rig.until(lambda: rig.adapter.connected and rig.monitor.link.resyncs >= 2)
    assert rig.by_caller(CALL_A.caller)["lost"] is True
    assert rig.tracker_live == 1
    await rig.play(None)
    await rig.until(lambda: rig.tracker_live == 0)


async def test_a_lost_hangup_does_not_keep_a_call_open_past_the_sweep(make_rig: Any) -> None:
    rig: Rig = await make_rig(_two_calls(), sweep_interval_s=0.05)
    await rig.play(10.0)
    sim = rig.pbx.sim
    anchor = {c.c2.uid for c in sim.calls.values() if c.truth.caller == CALL_A.caller}  # type: ignore[union-attr]

    def lose(pairs: Pairs) -> bool:  # the Hangup of A's queue caller channel never reaches ringwatch
        return pairs[0][1] == "Hangup" and dict(pairs).get("Uniqueid") in anchor

    rig.pbx.lose = lose
    await rig.play(None)
    assert rig.pbx.lost == 1
    await rig.until(lambda: rig.tracker_live == 0)
    a, b = rig.by_caller(CALL_A.caller), rig.by_caller(CALL_B.caller)
    assert a["lost"] is True  # closed by the sweep: the PBX no longer had its channel
    assert a["answered_at"] is not None
    assert b["lost"] is False
    assert rig.adapter.sweeps >= 1
    assert not rig.monitor.calls


async def test_a_busy_centre_survives_drops_and_ends_with_nothing_open(make_rig: Any) -> None:
    """Random traffic, the link cut three times while calls are up: every call the simulator
    finished is a record in the end, and nothing stays open."""
    sim = Simulator(SimConfig(seed=11, arrivals_per_min=20.0, outbound_per_min=2.0, duration_s=600.0,
                              queues=(QueueSpec("support", agents=12), QueueSpec("claims", "ringall", agents=3,
                                                                                  timeout_s=300.0, exten="3000"))))
    rig: Rig = await make_rig(sim, sweep_interval_s=0.2)
    for n, t in enumerate((150.0, 300.0, 450.0), 2):
        await rig.play(t)
        assert rig.tracker_live > 0
        rig.pbx.refuse(None)
        await rig.pbx.drop()
        await rig.until(lambda: not rig.adapter.connected)
        rig.pbx.allow()
        await rig.until(lambda n=n: rig.adapter.connected and rig.monitor.link.resyncs >= n)
    await rig.play(None)
    await rig.until(lambda: rig.tracker_live == 0 and not rig.monitor.calls, timeout_s=10)
    assert len(rig.records) == len(sim.truth) > 150
    assert rig.adapter.stats.reconnects == 3


# -- SIGTERM ------------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_sigterm_delivers_in_flight_alerts_and_exits_0(tmp_path: Path) -> None:
    """``ringwatch demo`` as a process with a webhook: SIGTERM while alerts flow; every alert it
    printed was delivered to the webhook before it exited 0, within a few seconds."""
    received: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    cfg = tmp_path / "ringwatch.yaml"
    cfg.write_text(json.dumps({"alerts": {"webhooks": [{"name": "t", "url": f"http://127.0.0.1:{port}/hook"}]},
                               "commitments": {"enabled": False}}), encoding="utf-8")
    env = {**os.environ, "RINGWATCH_HTTP_PORT": "0", "RINGWATCH_ADMIN_TOKEN": "t0k", "RINGWATCH_DATA_DIR":
           str(tmp_path / "data")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "monitor.cli", "demo", "--speed", "40", "--rate", "30", "--config", str(cfg),
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stderr is not None
    printed = 0
    try:
        async with asyncio.timeout(30):
            while printed < 5:
                line = (await proc.stdout.readline()).decode()
                assert line, "the demo stopped early"
                printed += line.startswith("[告警")
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        out, err = await asyncio.wait_for(proc.communicate(), timeout=15)
        took = time.monotonic() - sent
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await runner.cleanup()
    printed += out.decode().count("[告警")
    text = err.decode()
    assert proc.returncode == 0, text[-2000:]
    assert took < 8.0
    assert "ringwatch stopped" in text
    opened = [r for r in received if r.get("change") == "opened" and r.get("type") == "alert"]
    assert len(opened) == printed  # nothing the console showed was lost on the way out
    assert "Task was destroyed" not in text
    assert "Traceback" not in text


# -- the codec against garbage --------------------------------------------------------------------------

FUZZ_EXAMPLES = int(os.environ.get("RINGWATCH_FUZZ_EXAMPLES", "60"))
_BANNER = b"Asterisk Call Manager/11.0.0\r\n"
_SIM_MESSAGES = [p for _, p in Simulator(SimConfig(seed=2, duration_s=120.0)).events()]
_SIM_CHUNKS = [encode_message(p) for p in _SIM_MESSAGES]
_SIM_BYTES = b"".join(_SIM_CHUNKS)
_SIM_ENDS = [len(_BANNER) + n for n in itertools.accumulate(len(c) for c in _SIM_CHUNKS)]


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cuts=st.lists(st.integers(0, len(_SIM_BYTES)), max_size=40),
       flips=st.lists(st.tuples(st.integers(0, len(_SIM_BYTES) - 1), st.integers(0, 255)), max_size=20),
       junk=st.lists(st.tuples(st.integers(0, len(_SIM_BYTES)), st.binary(max_size=300)), max_size=5),
       cap=st.sampled_from([256, 4096, 65536]))
def test_codec_survives_a_corrupted_real_stream(cuts: list[int], flips: list[tuple[int, int]],
                                                junk: list[tuple[int, bytes]], cap: int) -> None:
    """A real simulator stream, bytes flipped, junk spliced in, cut anywhere: the codec never raises,
    keeps its buffer bounded, and every message before the first damage comes out intact, in order.
    Longer run: ``RINGWATCH_FUZZ_EXAMPLES=20000 pytest tests/test_faults.py -k codec`` (README)."""
    data = bytearray(_BANNER + _SIM_BYTES)
    damage = len(data)
    for pos, byte in flips:
        data[len(_BANNER) + pos] = byte
        damage = min(damage, len(_BANNER) + pos)
    for pos, blob in sorted(junk, reverse=True):
        data[len(_BANNER) + pos:len(_BANNER) + pos] = blob
        if blob:
            damage = min(damage, len(_BANNER) + pos)
    bounds = sorted({0, len(data), *[min(c, len(data)) for c in cuts]})
    dec = AmiDecoder(max_message_bytes=cap)
    out: list[Message | Banner] = []
    for a, b in itertools.pairwise(bounds):
        out.extend(dec.feed(bytes(data[a:b])))
        assert dec.buffered <= cap + (b - a)
    if cap < 65536:
        return  # real messages over the cap are dropped by design
    clean = [p for p, end in zip(_SIM_MESSAGES, _SIM_ENDS, strict=True) if end <= damage]
    got = [m.pairs for m in out if isinstance(m, Message)]
    assert got[:len(clean)] == clean
    if damage == len(data):
        assert got == _SIM_MESSAGES
