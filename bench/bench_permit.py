"""The pre-dial permission check under load: p50 / p99 latency at a fixed request rate, local HTTP, keep-alive.

Two processes on loopback:

* ringwatch (``--serve``, a child process): the real web app (``monitor.web.build_app``) with the outbound
  runtime (``monitor.outbound_api.OutboundRuntime``) on a private embedded redis-server, the DNC list
  loaded with ``--dnc`` numbers through the real CSV import first;
* the dialer (this process): ``--connections`` keep-alive HTTP/1.1 connections sending
  ``GET /api/v1/outbound/permit?number=…&agent=…&campaign=…`` open-loop at ``--rate`` requests/s for
  ``--duration`` s, a third of the numbers on the list.  Each request is due at ``t0 + i / rate``; its
  latency is measured from that due time to the end of the response (a late send counts against the
  server: no coordinated omission), and also from the actual send ("service").

Run: ``.venv/bin/python bench/bench_permit.py [--rate 1000] [--duration 20] [--dnc 100000]``
Target: p99 well under 10 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TOKEN = "bench-pbx-token-0123456789"
AT = "2026-03-02T10:00:00+08:00"  # a Monday morning: the hours allow, so the DNC list decides


def _number(i: int) -> str:
    return f"139{i:08d}"


async def serve(dnc: int) -> None:
    """The ringwatch side: print the port, serve until stdin closes."""
    from aiohttp import web
    from prometheus_client import CollectorRegistry

    from alerts.hub import AlertHub
    from config.schema import Config
    from monitor.auth import TokenStore
    from monitor.clock import LoopClock
    from monitor.engine import Monitor
    from monitor.outbound_api import OutboundRuntime
    from monitor.redis_embedded import EmbeddedRedis
    from monitor.store import client_from_config
    from monitor.web import build_app

    data = Path(tempfile.mkdtemp(prefix="bench-permit-"))
    redis = EmbeddedRedis(data / "redis", use_path=False)
    url = await redis.start()
    cfg = Config.model_validate({"data_dir": str(data), "commitments": {"enabled": False}})
    clock = LoopClock()
    hub = AlertHub(clock.now)
    monitor = Monitor(cfg, clock, hub)
    registry = CollectorRegistry()
    app = build_app(monitor, hub, cfg, registry, tokens=TokenStore([(TOKEN, "asterisk", "pbx")]))
    client = client_from_config(url, cfg.redis)
    rt = OutboundRuntime(cfg, clock, monitor, registry)
    await rt.start(app, client)
    assert rt.dnc is not None
    await rt.dnc.sync_once()
    if dnc:
        rows = "number,reason\n" + "".join(f"{_number(i * 3)},bench\n" for i in range(dnc))
        body = rows.encode()

        async def chunks() -> Any:
            for i in range(0, len(body), 1 << 16):
                yield body[i:i + (1 << 16)]

        t = time.perf_counter()
        report = await rt.dnc.import_csv(chunks(), "bench")
        print(f"# loaded {report.added} DNC entries in {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
        await asyncio.sleep(3)  # let redis-server finish the AOF rewrite the import triggers (shares the 2 cores)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(runner.addresses[0][1], flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes our stdin
    count = registry.get_sample_value("ringwatch_outbound_permit_seconds_count") or 0.0
    shares = {f"<= {b * 1000:g} ms": round((registry.get_sample_value("ringwatch_outbound_permit_seconds_bucket",
                                                                   {"le": str(b)}) or 0.0) / max(count, 1), 4)
              for b in (0.0005, 0.001, 0.002, 0.005, 0.01)}
    print(json.dumps({"server_handler_requests": count, "server_handler_time_share": shares}), file=sys.stderr,
          flush=True)
    await runner.cleanup()
    await rt.stop()
    await client.aclose()
    await redis.stop()


async def drive(port: int, rate: float, duration: float, connections: int, dnc: int) -> dict[str, Any]:
    """Open-loop load over ``connections`` keep-alive HTTP/1.1 connections (a minimal client on asyncio
    streams: aiohttp's client costs more CPU per request than the server under test, on the same 2 cores)."""
    from urllib.parse import quote

    rng = random.Random(7)
    n = int(rate * duration)
    total: list[float] = []
    service: list[float] = []
    counts = {"errors": 0, "denied": 0}
    queue: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def request(number: str) -> bytes:
        return (f"GET /api/v1/outbound/permit?number={number}&agent=Agent%207001&campaign=renewal&at={quote(AT)} "
                f"HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n").encode()

    async def call(r: asyncio.StreamReader, w: asyncio.StreamWriter, number: str) -> bytes:
        w.write(request(number))
        head = await r.readuntil(b"\r\n\r\n")
        status = head[9:12]
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        body = await r.readexactly(length)
        if status != b"200":
            counts["errors"] += 1
        return body

    async def worker() -> None:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        await call(r, w, _number(0))  # warm: the connection is kept alive from here on
        while True:
            item = await queue.get()
            if item is None:
                break
            _i, due = item
            sent = loop.time()
            body = await call(r, w, _number(rng.randrange(dnc * 3 if dnc else 1_000_000)))
            done = loop.time()
            counts["denied"] += b'"allow": false' in body
            total.append(done - due)
            service.append(done - sent)
        w.close()

    workers = [asyncio.create_task(worker(), name=f"permit-client-{k}") for k in range(connections)]
    await asyncio.sleep(0.5)
    t0 = loop.time() + 0.1
    started = time.perf_counter()
    for i in range(n):
        due = t0 + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((i, due))
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    took = time.perf_counter() - started

    def pct(xs: list[float], p: float) -> float:
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] * 1000

    return {"requests": n, "ok": len(total) - counts["errors"], "errors": counts["errors"],
            "denied_dnc": counts["denied"], "achieved_rps": round(n / took),
            "p50_ms": round(pct(total, 50), 3), "p90_ms": round(pct(total, 90), 3),
            "p99_ms": round(pct(total, 99), 3), "p999_ms": round(pct(total, 99.9), 3),
            "max_ms": round(max(total) * 1000, 3),
            "service_p50_ms": round(pct(service, 50), 3), "service_p99_ms": round(pct(service, 99), 3),
            "mean_ms": round(statistics.fmean(total) * 1000, 3)}


async def main_async(args: argparse.Namespace) -> int:
    proc = await asyncio.create_subprocess_exec(sys.executable, __file__, "--serve", "--dnc", str(args.dnc),
                                                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                                                cwd=str(ROOT), env={**os.environ, "PYTHONASYNCIODEBUG": ""})
    assert proc.stdout is not None
    assert proc.stdin is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 300)
        port = int(line)
        result = await drive(port, args.rate, args.duration, args.connections, args.dnc)
    finally:
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    result.update({"rate": args.rate, "duration_s": args.duration, "connections": args.connections,
                   "dnc_entries": args.dnc, "cpus": os.cpu_count(), "python": sys.version.split()[0]})
    print(json.dumps(result, indent=2))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=1000.0, help="requests per second (open loop)")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of load")
    ap.add_argument("--connections", type=int, default=8, help="keep-alive connections")
    ap.add_argument("--dnc", type=int, default=100_000, help="numbers on the DNC list")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        asyncio.run(serve(args.dnc))
        return 0
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
