"""Resync: time to rebuild state from CoreShowChannels / QueueStatus for 5,000 live channels.

The call-centre simulator is brought to a moment with ``--calls`` calls up (each 4 channels:
the caller's Local pair and the agent's Local pair), 80 % talking and 20 % waiting in the queue
while an agent's phone rings; then a fresh ringwatch (real client + tracker + monitor) logs in
over loopback TCP and resyncs.  Reported: login -> ResyncDone (the whole rebuild: both list
actions over TCP, decoding, the tracker's reconcile, the monitor's state), and the reconcile
alone.

Run: ``.venv/bin/python bench/bench_resync.py [--calls 1250]``   Target: <= 2 s for 5,000 channels.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alerts.hub import AlertHub  # noqa: E402
from bench.bench_ingest import cpu_model  # noqa: E402
from config.schema import Config  # noqa: E402
from monitor.clock import LoopClock  # noqa: E402
from monitor.engine import Monitor  # noqa: E402
from telephony.ami.adapter import AsteriskAdapter, channel_rules  # noqa: E402
from telephony.ami.simulator import CallPlan, QueueSpec, SimConfig, SimulatedPbx, Simulator  # noqa: E402
from telephony.events import DomainEvent, ResyncDone  # noqa: E402


def build(calls: int) -> Simulator:
    talking = calls * 4 // 5
    sim = Simulator(SimConfig(queues=(QueueSpec("support", agents=calls),), arrivals_per_min=0.0,
                              outbound_per_min=0.0, pauses_per_agent_h=0.0, logouts_per_agent_h=0.0,
                              keep_truth=False))
    for i in range(calls):
        ext = str(7001 + i)
        ring = 1.0 if i < talking else None  # the last fifth's agents let it ring (30 s timeout)
        sim.place_call(i * 0.01, CallPlan(caller=f"+86139{i:08d}", ring_s={ext: ring}, talk_s=3600.0))
    sim.run_until(calls * 0.01 + 10.0)
    return sim


async def run(calls: int, profile: bool) -> None:
    sim = build(calls)
    channels = len(sim.channels)
    pbx = SimulatedPbx(sim, speed=0.0, until=sim.now, secret="s")
    await pbx.start()
    cfg = Config()
    clock = LoopClock()
    monitor = Monitor(cfg, clock, AlertHub(clock.now))
    done = asyncio.Event()
    marks: dict[str, float] = {}

    def emit(ev: DomainEvent) -> None:
        monitor.handle(ev)
        if isinstance(ev, ResyncDone):
            marks["done"] = time.perf_counter()
            done.set()

    adapter = AsteriskAdapter(cfg.pbx.ami, emit, clock.now, channel_rules(cfg), host=pbx.host, port=pbx.port,
                              secret="s", auth="plain", sweep_interval_s=0.0)
    reconcile = adapter.tracker.reconcile
    spent: list[float] = []

    def timed(*a: object, **k: object) -> None:
        r0 = time.perf_counter()
        reconcile(*a, **k)  # type: ignore[arg-type]
        spent.append(time.perf_counter() - r0)

    adapter.tracker.reconcile = timed  # type: ignore[method-assign]
    prof = cProfile.Profile() if profile else None
    t0 = time.perf_counter()
    if prof is not None:
        prof.enable()
    await adapter.start()
    await adapter.wait_connected()
    marks["login"] = time.perf_counter()
    await asyncio.wait_for(done.wait(), 60)
    if prof is not None:
        prof.disable()
    await adapter.stop()
    await pbx.stop()
    live = len(monitor.calls)
    print(f"cpu: {cpu_model()}  python {sys.version.split()[0]}")
    print(f"{channels} live channels ({calls} calls: {calls * 4 // 5} talking, {calls - calls * 4 // 5} ringing "
          f"in the queue); ringwatch rebuilt {live} calls")
    print(f"connect+login {(marks['login'] - t0) * 1000:.0f} ms; login -> ResyncDone "
          f"{(marks['done'] - marks['login']) * 1000:.0f} ms (of which the tracker's reconcile "
          f"{spent[0] * 1000:.0f} ms)")
    if prof is not None:
        pstats.Stats(prof).sort_stats("tottime").print_stats(12)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=1250, help="calls up (x4 channels; default 1,250 = 5,000)")
    ap.add_argument("--profile", action="store_true", help="cProfile the resync, top entries")
    args = ap.parse_args()
    asyncio.run(run(args.calls, args.profile))


if __name__ == "__main__":
    main()
