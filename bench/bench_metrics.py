"""/metrics render time with 2,000 agents in 200 queues.

The call-centre simulator (``telephony.ami.simulator``) runs 200 queues of 10 agents each for
an hour of traffic through the real codec, tracker and monitor (virtual clock), with the
Prometheus metrics attached as the daemon attaches them; then the text exposition of the
whole registry (``generate_latest``, what ``GET /metrics`` returns) is rendered repeatedly.

Run: ``.venv/bin/python bench/bench_metrics.py [--queues 200] [--agents-per-queue 10] [--renders 50]``
Target: well under a scrape interval; reported as p50 / p99 / max milliseconds.

Then the event loop's longest stall while a scrape is served: a 1 ms ticker task runs on the
loop while ``monitor.web.render_metrics`` (what ``GET /metrics`` does: collectors on the loop,
formatting in a worker thread) renders, compared with rendering all of it on the loop.  A stall
delays every alert due meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402

from alerts.hub import AlertHub  # noqa: E402
from bench.bench_ingest import cpu_model  # noqa: E402
from config.schema import load_config  # noqa: E402
from monitor.clock import VirtualClock  # noqa: E402
from monitor.engine import Monitor  # noqa: E402
from monitor.metrics import Metrics  # noqa: E402
from monitor.web import render_metrics  # noqa: E402
from telephony.ami.codec import AmiDecoder, Message, encode_message  # noqa: E402
from telephony.ami.simulator import QueueSpec, SimConfig, Simulator  # noqa: E402
from telephony.ami.tracker import AmiTracker  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--queues", type=int, default=200)
    ap.add_argument("--agents-per-queue", type=int, default=10)
    ap.add_argument("--renders", type=int, default=50)
    ap.add_argument("--minutes", type=float, default=60.0, help="simulated traffic before rendering")
    args = ap.parse_args()
    queues = tuple(QueueSpec(f"q{i:03d}", agents=args.agents_per_queue) for i in range(args.queues))
    agents = args.queues * args.agents_per_queue
    sim = Simulator(SimConfig(queues=queues, inbound_queue="*", arrivals_per_min=agents * 0.5,
                              outbound_per_min=agents * 0.02, duration_s=args.minutes * 60, keep_truth=False,
                              transfer_queue="", blind_transfer_share=0.0))
    cfg = load_config(env={})
    clock = VirtualClock()
    monitor = Monitor(cfg, clock, AlertHub(clock.now, history_limit=1_000_000))
    registry = CollectorRegistry()
    Metrics(registry, cfg).attach(monitor)
    tracker = AmiTracker(monitor.handle)
    decoder = AmiDecoder(wanted_events=AmiTracker.WANTED, expect_banner=False)
    t0 = time.perf_counter()
    end = args.minutes * 60 * 0.5  # render in the middle of the day: calls live, agents in every state
    for t, pairs in sim.events(until=end):
        clock.advance_to(t)
        for m in decoder.feed(encode_message(pairs)):
            if isinstance(m, Message):
                tracker.handle(m, t)
    fed = time.perf_counter() - t0
    times = []
    size = 0
    for _ in range(args.renders):
        r0 = time.perf_counter()
        body = generate_latest(registry)
        times.append((time.perf_counter() - r0) * 1000)
        size = len(body)
    times.sort()
    series = sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))
    print(f"cpu: {cpu_model()}  python {sys.version.split()[0]}")
    print(f"state: {len(monitor.agents)} agents, {args.queues} queues, {len(monitor.calls)} live calls, "
          f"{monitor.ended_records} calls ended ({fed:.1f} s to simulate and ingest)")
    print(f"/metrics: {size / 1024:.0f} KiB, {series} series; render p50 {statistics.median(times):.1f} ms, "
          f"p99 {times[int(len(times) * 0.99) - 1]:.1f} ms, max {times[-1]:.1f} ms ({args.renders} renders)")
    inline, split = asyncio.run(loop_stalls(registry, args.renders))
    print(f"longest event-loop stall during a scrape: all on the loop p50 {statistics.median(inline):.1f} ms "
          f"max {max(inline):.1f} ms; as served (formatting in a thread) p50 {statistics.median(split):.1f} ms "
          f"max {max(split):.1f} ms")


async def loop_stalls(registry: CollectorRegistry, renders: int) -> tuple[list[float], list[float]]:
    """Longest gap between a 1 ms ticker's wake-ups while one scrape is rendered, per render (ms)."""
    async def render_inline(reg: CollectorRegistry) -> bytes:
        return generate_latest(reg)

    async def ticker(gaps: list[float], stop: asyncio.Event) -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    out: list[list[float]] = []
    for render in (render_inline, render_metrics):
        stalls = []
        for _ in range(renders):
            gaps = [0.0]
            stop = asyncio.Event()
            task = asyncio.create_task(ticker(gaps, stop), name="bench-ticker")
            await asyncio.sleep(0.01)
            await render(registry)
            stop.set()
            await task
            stalls.append(max(gaps) * 1000)
        out.append(stalls)
    return out[0], out[1]


if __name__ == "__main__":
    main()
