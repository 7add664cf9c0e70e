"""Websocket fan-out: N connected clients, U updates/s through ``WebSocketHub.publish`` (the KPI path);
delivery latency p50 / p99 over every (client, update), and one stalled client (a raw socket that
completes the handshake, then never reads, with a tiny receive buffer) that must not delay the others.

    .venv/bin/python bench/bench_ws_fanout.py --clients 500 --rate 100 --seconds 10

Loopback only; bounded in count and time.  The 500 clients run in the same process and loop as the
server (2-core machine), so the figures include the clients' own work.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
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


async def client(session: aiohttp.ClientSession, url: str, lat: list[float], ready: asyncio.Event,
                 counter: list[int], n: int) -> None:
    async with session.ws_connect(url, headers={"Authorization": f"Bearer {TOKEN}"}, max_msg_size=0) as ws:
        await ws.receive()  # hello
        await ws.send_str(json.dumps({"type": "subscribe", "topics": ["kpi"]}))
        counter[0] += 1
        if counter[0] == n:
            ready.set()
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
            data = msg.data
            if data.startswith('{"type":"kpi"'):  # cheap: the send time is the second field
                now = time.perf_counter()
                lat.append(now - float(data[21:data.index(",", 21)]))
                if '"last":true' in data:
                    break


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


async def main(clients: int, rate: float, seconds: float, pad: int, queue: int) -> dict[str, Any]:
    hub = AlertHub(time.monotonic)
    ws_hub = WebSocketHub(hub, TokenStore([(TOKEN, "bench", "wallboard")]),
                          HttpConfig(websocket_queue=queue), heartbeat_s=None)
    app = web.Application()
    app.router.add_get("/ws", ws_hub.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=2048)
    await site.start()
    port = runner.addresses[0][1]
    url = f"http://127.0.0.1:{port}/ws"
    lat: list[float] = []
    ready = asyncio.Event()
    counter = [0]
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as session:
        tasks = [asyncio.create_task(client(session, url, lat, ready, counter, clients)) for _ in range(clients)]
        async with asyncio.timeout(60):
            await ready.wait()
        stalled = await asyncio.to_thread(stalled_client, port)
        await asyncio.sleep(0.2)
        updates = int(rate * seconds)
        padding = "x" * pad
        t0 = time.perf_counter()
        publish_cost: list[float] = []
        for i in range(updates):
            target = t0 + i / rate
            delay = target - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            p0 = time.perf_counter()
            ws_hub.publish({"type": "kpi", "sent": time.perf_counter(), "seq": i, "pad": padding,
                            "last": i == updates - 1}, lambda p: True)
            publish_cost.append(time.perf_counter() - p0)
        async with asyncio.timeout(30):
            await asyncio.gather(*tasks, return_exceptions=True)
        elapsed = time.perf_counter() - t0
        stalled.close()
    dropped = ws_hub.dropped
    await ws_hub.shutdown()
    await runner.cleanup()
    lat.sort()
    expected = clients * updates
    return {
        "clients": clients, "updates": updates, "rate_per_s": rate, "frame_bytes": pad + 80,
        "delivered": len(lat), "expected": expected, "elapsed_s": round(elapsed, 2),
        "p50_ms": round(statistics.median(lat) * 1000, 2), "p99_ms": round(lat[int(len(lat) * 0.99) - 1] * 1000, 2),
        "max_ms": round(lat[-1] * 1000, 2), "publish_p50_us": round(statistics.median(publish_cost) * 1e6, 1),
        "stalled_client_dropped": dropped >= 1, "dropped": dropped,
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clients", type=int, default=500)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--pad", type=int, default=600, help="bytes of padding per frame (a KPI frame is ~1-2 KB)")
    ap.add_argument("--queue", type=int, default=256, help="http.websocket_queue")
    args = ap.parse_args()
    print(json.dumps(asyncio.run(main(args.clients, args.rate, args.seconds, args.pad, args.queue)), indent=1))
