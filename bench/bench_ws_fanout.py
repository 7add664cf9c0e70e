"""Websocket fan-out: N connected clients, U updates/s through ``WebSocketHub.publish`` (the KPI path);
delivery latency p50 / p99 / max over every (client, update), and one stalled client that must be
dropped (1013, the slow-client path) without delaying the others.

    .venv/bin/python bench/bench_ws_fanout.py --clients 500 --rate 100 --seconds 10 --procs 2

The server (the hub and aiohttp) runs alone in this process; the N clients run in ``--procs``
separate worker processes (spawned, one event loop each), so the figures measure the server, not
the clients' parsing.  Latency = receive time in the worker - send time stamped in the frame, both
``time.monotonic()`` (CLOCK_MONOTONIC: one clock for every process of the machine).

The stalled client is a raw socket (in a thread of this process: it does nothing) that completes
the handshake, subscribes, then never reads, with the smallest receive buffer the kernel allows.
With frames of ``--pad`` bytes its socket buffer (``--sndbuf`` KiB, set by the hub) fills, then the
transport's backlog passes ``--queue`` KiB and the hub drops it; ``stalled_client_dropped_after_s``
says when, and the latency of the other clients is reported separately for the updates sent while
the stalled client was still connected (``while_stalled_*``) and after it was dropped.  Loopback
only; bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing as mp
import os
import socket
import statistics
import time
from typing import Any

import aiohttp
from aiohttp import web

from alerts.hub import AlertHub
from alerts.ws import WebSocketHub
from config.schema import HttpConfig
from monitor.auth import TokenStore

TOKEN = "bench-token-0123456789"


# -- the clients: worker processes -------------------------------------------------------------


async def _client(session: aiohttp.ClientSession, url: str, lat: list[float], seqs: list[int],
                  connected: list[int], n: int, all_in: asyncio.Event) -> None:
    async with session.ws_connect(url, headers={"Authorization": f"Bearer {TOKEN}"}, max_msg_size=0) as ws:
        await ws.receive()  # hello
        await ws.send_str(json.dumps({"type": "subscribe", "topics": ["kpi"]}))
        await ws.send_str('{"type":"ping"}')
        while (await ws.receive()).data != '{"type":"pong"}':  # subscribed now
            pass
        connected[0] += 1
        if connected[0] == n:
            all_in.set()
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
            data = msg.data
            if data.startswith('{"type":"kpi"'):  # cheap: the send time is the second field, seq the third
                comma = data.index(",", 21)
                lat.append(time.monotonic() - float(data[21:comma]))
                seqs.append(int(data[comma + 7:data.index(",", comma + 7)]))
                if '"last":true' in data:
                    break


async def _worker(port: int, n: int, ready: Any, results: Any) -> None:
    url = f"http://127.0.0.1:{port}/ws"
    lat: list[float] = []
    seqs: list[int] = []
    connected = [0]
    all_in = asyncio.Event()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        tasks = [asyncio.create_task(_client(session, url, lat, seqs, connected, n, all_in)) for _ in range(n)]
        async with asyncio.timeout(60):
            await all_in.wait()
        ready.put(n)
        try:
            async with asyncio.timeout(120):
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            results.put((lat, seqs))


def worker_main(port: int, n: int, ready: Any, results: Any) -> None:
    asyncio.run(_worker(port, n, ready, results))


# -- the stalled client ------------------------------------------------------------------------


def stalled_client(port: int) -> socket.socket:
    """Handshake, subscribe, then never read again (receive buffer as small as the kernel allows)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    s.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {TOKEN}\r\n\r\n")
              .encode())
    s.recv(1024)  # 101 (and maybe the hello)
    payload = json.dumps({"type": "subscribe", "topics": ["kpi"]}).encode()
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    s.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
    return s


# -- the server --------------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float | None:
    return round(values[max(0, int(len(values) * q) - 1)] * 1000, 2) if values else None


async def main(clients: int, rate: float, seconds: float, pad: int, queue: int, sndbuf: int,
               procs: int) -> dict[str, Any]:
    hub = AlertHub(time.monotonic)
    ws_hub = WebSocketHub(hub, TokenStore([(TOKEN, "bench", "wallboard")]),
                          HttpConfig(websocket_buffer_kib=queue, websocket_socket_buffer_kib=sndbuf), heartbeat_s=None)
    app = web.Application()
    app.router.add_get("/ws", ws_hub.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=2048)
    await site.start()
    port = runner.addresses[0][1]
    ctx = mp.get_context("spawn")
    ready, results = ctx.Queue(), ctx.Queue()
    shares = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    workers = [ctx.Process(target=worker_main, args=(port, n, ready, results), daemon=True) for n in shares if n]
    for w in workers:
        w.start()
    for _ in workers:
        await asyncio.to_thread(ready.get, True, 90)
    stalled = await asyncio.to_thread(stalled_client, port)
    await asyncio.sleep(0.3)  # its subscribe frame is read
    assert ws_hub.clients == clients + 1, ws_hub.clients
    updates = int(rate * seconds)
    padding = "x" * pad
    publish_cost: list[float] = []
    dropped_at: float | None = None
    dropped_seq = updates
    t0 = time.monotonic()
    for i in range(updates):
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        p0 = time.monotonic()
        ws_hub.publish({"type": "kpi", "sent": time.monotonic(), "seq": i, "pad": padding,
                        "last": i == updates - 1}, lambda p: True)
        publish_cost.append(time.monotonic() - p0)
        if dropped_at is None and ws_hub.dropped:
            dropped_at, dropped_seq = time.monotonic() - t0, i
    lat: list[float] = []
    before: list[float] = []
    after: list[float] = []
    for _ in workers:
        got, seqs = await asyncio.to_thread(results.get, True, 150)
        lat.extend(got)
        for value, seq in zip(got, seqs, strict=True):
            (before if seq <= dropped_seq else after).append(value)
    elapsed = time.monotonic() - t0
    for w in workers:
        await asyncio.to_thread(w.join, 10)
    stalled.close()
    dropped = ws_hub.dropped
    await ws_hub.shutdown()
    await runner.cleanup()
    lat.sort()
    before.sort()
    after.sort()
    try:
        cpu = os.getloadavg()[0]
    except OSError:
        cpu = -1.0
    return {
        "clients": clients, "worker_processes": len(workers), "cpus": os.cpu_count(), "updates": updates,
        "rate_per_s": rate, "frame_bytes": pad + 80, "backlog_kib": queue, "sndbuf_kib": sndbuf,
        "delivered": len(lat), "expected": clients * updates, "elapsed_s": round(elapsed, 2),
        "p50_ms": _pct(lat, 0.5), "p99_ms": _pct(lat, 0.99), "max_ms": _pct(lat, 1.0),
        "while_stalled_p50_ms": _pct(before, 0.5), "while_stalled_p99_ms": _pct(before, 0.99),
        "after_drop_p50_ms": _pct(after, 0.5), "after_drop_p99_ms": _pct(after, 0.99),
        "publish_p50_us": round(statistics.median(publish_cost) * 1e6, 1),
        "publish_max_us": round(max(publish_cost) * 1e6, 1),
        "stalled_client_dropped": dropped >= 1, "dropped": dropped,
        "stalled_client_dropped_after_s": None if dropped_at is None else round(dropped_at, 2),
        "loadavg_1m": round(cpu, 2),
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=500)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--pad", type=int, default=1500, help="bytes of padding per frame (a KPI frame is ~1-2 KB)")
    ap.add_argument("--queue", type=int, default=256, help="http.websocket_buffer_kib (per-client backlog)")
    ap.add_argument("--sndbuf", type=int, default=64, help="http.websocket_socket_buffer_kib (SO_SNDBUF)")
    ap.add_argument("--procs", type=int, default=2, help="client worker processes")
    args = ap.parse_args()
    out = asyncio.run(main(args.clients, args.rate, args.seconds, args.pad, args.queue, args.sndbuf,
                         args.procs))
    print(json.dumps(out, indent=1))
