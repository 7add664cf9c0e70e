"""``ringwatch simulate``: the call-centre simulator alone.

Serves a simulated Asterisk (AMI on ``--host``/``--port``, loopback by default)
for a ringwatch running elsewhere, or writes ``--duration`` simulated seconds as
a raw AMI capture (``--write FILE.raw``, ``Timestamp`` headers on) that
``ringwatch replay FILE.raw`` plays on its own clock.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time

from monitor.daemon import wait_for_signal
from telephony.ami.adapter import QueueSpec, SimConfig, SimulatedPbx, Simulator, write_capture

log = logging.getLogger(__name__)


def sim_config(args: argparse.Namespace, timestamps: bool) -> SimConfig:
    return SimConfig(
        seed=args.seed,
        arrivals_per_min=args.rate,
        outbound_per_min=args.outbound_rate,
        duration_s=args.duration,
        timestamps=timestamps,
        epoch=time.time() if not args.write else 1_795_294_870.0,
        queues=(QueueSpec("support", agents=args.agents, dynamic_agents=2),
                QueueSpec("claims", "ringall", timeout_s=300.0, service_level_s=60, agents=3, exten="3000")),
    )


def run_simulate(args: argparse.Namespace) -> int:
    if args.write:
        if args.duration is None:
            print("ringwatch simulate --write needs --duration (simulated seconds)", file=sys.stderr)
            return 2
        sim = Simulator(sim_config(args, timestamps=True))
        started = time.perf_counter()
        with open(args.write, "wb") as fh:
            n = write_capture(sim, fh)
        st = sim.stats
        print(f"{args.write}: {n} AMI messages, {sim.last_event_t:.0f} simulated s, {st.offered} inbound calls "
              f"({st.answered} answered, {st.abandoned} abandoned), {st.outbound} outbound; "
              f"{time.perf_counter() - started:.1f} s", file=sys.stderr)
        return 0
    secret = os.environ.get(args.secret_env, "")
    if not secret:
        print(f"ringwatch simulate: set ${args.secret_env} to the AMI secret the simulated PBX accepts",
              file=sys.stderr)
        return 2
    if args.speed < 0:
        print("--speed must be >= 0", file=sys.stderr)
        return 2
    return asyncio.run(_serve(args, secret))


async def _serve(args: argparse.Namespace, secret: str) -> int:
    pbx = SimulatedPbx(Simulator(sim_config(args, args.timestamps)), username=args.username, secret=secret,
                       speed=args.speed, host=args.host, port=args.port)
    try:
        await pbx.start()
    except OSError as e:
        print(f"ringwatch simulate: cannot listen on {args.host}:{args.port}: {e.strerror}", file=sys.stderr)
        return 1
    print(f"simulated Asterisk AMI on {pbx.host}:{pbx.port} (user {args.username}, secret from "
          f"${args.secret_env}); calls start when a client logs in. Ctrl-C stops.", flush=True)
    try:
        await wait_for_signal()
    finally:
        await pbx.stop()
        st = pbx.sim.stats
        log.info("simulate stopped: %d messages, %d inbound, %d outbound calls", st.messages, st.offered,
                 st.outbound)
    return 0
