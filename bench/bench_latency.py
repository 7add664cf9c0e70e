"""Alert latency: from a rule's deadline to the frame at a websocket client, with 10,000 live calls
and 100 supervisor clients.

Three processes on loopback:

* the PBX: the call-centre simulator (``telephony.ami.simulator``) in real time; it brings
  ``--calls`` calls up within 30 s (answered at once, talking for 15 min), then sends a trickle of
  new calls (5 per s for 60 s) of which a third ring 18 s before an agent answers: each of those
  is an IN-ANSWER alert at ring start + 15 s, while 10,000 calls are live;
* ringwatch: the real daemon (client, tracker, rules, alert hub, websocket fan-out), this process;
* the supervisors: ``--clients`` websocket clients in one process, each stamping every IN-ANSWER
  frame on arrival with the wall clock.

Latency = arrival (wall) - the deadline's wall time (``opened_wall - (at - details.deadline)``:
the daemon's clock maps to the wall clock, one machine, one clock).

Run: ``.venv/bin/python bench/bench_latency.py [--calls 10000] [--clients 100]``
Target: p99 <= 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_ingest import cpu_model  # noqa: E402

SECRET = "bench-secret"
TOKEN = "bench-token"
RAMP_S = 30.0
TRICKLE_S = 60.0


def pbx_main(calls: int) -> None:
    """Child: the simulated PBX; prints its port, serves until killed."""
    from telephony.ami.simulator import CallPlan, QueueSpec, SimConfig, SimulatedPbx, Simulator

    spare = 2000
    agents = calls + spare
    sim = Simulator(SimConfig(queues=(QueueSpec("support", agents=agents),), arrivals_per_min=calls / RAMP_S * 60,
                              max_calls=calls, outbound_per_min=0.0, talk_mean_s=900.0, talk_min_s=900.0,
                              patience_mean_s=0.0, slow_answer_share=0.0, no_answer_share=0.0, ring_s=(1.0, 3.0),
                              blind_transfer_share=0.0, attended_transfer_share=0.0, agent_hangs_up_first_share=0.0,
                              recorded_share=1.0, pauses_per_agent_h=0.0, logouts_per_agent_h=0.0,
                              inbound_disposition_share=0.0, keep_truth=False))
    exts = [str(7001 + i) for i in range(agents)]
    slow = dict.fromkeys(exts, 18.0)
    fast = dict.fromkeys(exts, 2.0)
    n = int(TRICKLE_S * 5)
    for i in range(n):
        sim.place_call(RAMP_S + 10.0 + i * TRICKLE_S / n,
                       CallPlan(caller=f"+86138{i:08d}", ring_s=slow if i % 3 == 0 else fast, talk_s=600.0,
                                record=True))

    async def serve() -> None:
        pbx = SimulatedPbx(sim, username="ringwatch", secret=SECRET, speed=1.0)
        await pbx.start()
        print(pbx.port, flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())


def clients_main(url: str, clients: int, seconds: float) -> None:
    """Child: ``clients`` websocket supervisors; prints one JSON list of latencies (ms) at the end."""
    from websockets.asyncio.client import connect

    lat: list[float] = []

    async def one() -> None:
        async with connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"}, proxy=None,
                           max_queue=None) as ws:
            deadline = time.monotonic() + seconds
            while (left := deadline - time.monotonic()) > 0:
                try:
                    raw = await asyncio.wait_for(ws.recv(), left)
                except TimeoutError:
                    break
                now = time.time()
                frame = json.loads(raw)
                if frame.get("type") == "alert" and frame.get("rule") == "IN-ANSWER" and frame.get("change") == \
                        "opened":
                    due = frame["opened_wall"] - (frame["at"] - frame["details"]["deadline"])
                    lat.append((now - due) * 1000)

    async def all_clients() -> None:
        await asyncio.gather(*(one() for _ in range(clients)))

    asyncio.run(all_clients())
    print(json.dumps(lat))


async def daemon_main(calls: int, clients: int) -> None:
    from config.schema import Config
    from monitor.auth import TokenStore
    from monitor.daemon import Daemon

    pbx = await asyncio.create_subprocess_exec(sys.executable, __file__, "--pbx", str(calls),
                                               stdout=asyncio.subprocess.PIPE)
    assert pbx.stdout is not None
    port = int((await pbx.stdout.readline()).decode())
    cfg = Config.model_validate({"http": {"port": 0}, "commitments": {"enabled": False},
                                 "rules": {"SYS-REC": {"enabled": False}}})
    daemon = Daemon(cfg, TokenStore([(TOKEN, "bench", "supervisor")]), host="127.0.0.1", port=port, secret=SECRET,
                    sweep_interval_s=0.0)
    await daemon.start()
    assert daemon.monitor is not None
    seconds = RAMP_S + TRICKLE_S + 30.0
    sup = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--client-proc", f"ws://127.0.0.1:{daemon.http_port}/ws", str(clients),
        str(seconds), stdout=asyncio.subprocess.PIPE)
    live_seen: list[int] = []

    async def watch() -> None:
        while True:
            await asyncio.sleep(1.0)
            live_seen.append(len(daemon.monitor.calls) if daemon.monitor else 0)

    watcher = asyncio.create_task(watch(), name="bench-watch")
    out, _ = await sup.communicate()
    watcher.cancel()
    await asyncio.gather(watcher, return_exceptions=True)
    await daemon.stop()
    pbx.kill()
    await pbx.wait()
    lat = sorted(json.loads(out.decode()))
    print(f"cpu: {cpu_model()}  python {sys.version.split()[0]}  ({os.cpu_count()} cores: PBX, daemon, clients "
          "in three processes)")
    if not lat:
        print("no IN-ANSWER frame arrived")
        return
    print(f"live calls while alerts fired: up to {max(live_seen):,}; {clients} websocket clients; "
          f"{len(lat):,} IN-ANSWER frames")
    print(f"deadline -> frame at a client: p50 {statistics.median(lat):.1f} ms, "
          f"p99 {lat[int(len(lat) * 0.99) - 1]:.1f} ms, max {lat[-1]:.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=10_000)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--pbx", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--client-proc", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.pbx:
        pbx_main(args.pbx)
    elif args.client_proc:
        url, n, seconds = args.client_proc
        clients_main(url, int(n), float(seconds))
    else:
        asyncio.run(daemon_main(args.calls, args.clients))


if __name__ == "__main__":
    main()
