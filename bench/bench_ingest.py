"""Ingest benchmark: AMI bytes -> codec -> tracker -> rules, on a virtual clock.

Builds a large stream from the recorded burst (S12: 20 calls, 2698 messages) by
copying it with fresh ids (Uniqueid, Linkedid, channel names) and interleaving
the copies in time, adds a ``Timestamp`` header to every message (the time
source, as with ``timestampevents=yes``), then measures in one process:

* ringwatch: codec + tracker + rules (IN-ANSWER, IN-WAIT), AMI messages/s;
* panoramisk's parser alone (its ``data_received`` framing + ``Message.from_line``)
  on the same bytes, messages/s — the reference;
* peak RSS, and RSS per 1,000 live calls at the busiest moment.

Run: ``.venv/bin/python bench/bench_ingest.py [--copies 60] [--gap 2.0]``

Simulator mode (``--sim 1000,10000,100000``): the stream of the call-centre simulator
(``telephony.ami.simulator``) at speed 0 with N calls live at once (N agents, all calls arrive
within a minute and talk for 5-15 min, ``Timestamp`` headers on).  A child process generates and
encodes it into a temporary capture file first (untimed); then this process, pinned to one core,
reads it in 64 KiB chunks like the client does and feeds them to ringwatch (codec + tracker +
rules), then reads the same bytes again through panoramisk's parser, timing the parsing with its
CPU clock (reads excluded).  Peak RSS per 1,000 live
calls is this process's RSS at the busiest moment minus its RSS before the first byte.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import platform
import resource
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import os  # noqa: E402
import subprocess  # noqa: E402

from alerts.hub import AlertHub  # noqa: E402
from config.schema import Config, load_config  # noqa: E402
from monitor.clock import VirtualClock  # noqa: E402
from monitor.engine import Monitor  # noqa: E402
from telephony.ami.codec import AmiDecoder, Message  # noqa: E402
from telephony.ami.trace import read_trace, renumber  # noqa: E402
from telephony.ami.tracker import AmiTracker  # noqa: E402

SRC = ROOT / "tests" / "fixtures" / "ami" / "S12_burst_20_calls.jsonl"
EPOCH = 1_795_000_000.0


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def build_stream(copies: int, gap: float) -> tuple[bytes, int]:
    base = [(it.t, it.pairs) for it in read_trace(SRC) if it.kind == "msg"]
    items: list[tuple[float, int, int, tuple[tuple[str, str], ...]]] = []
    for k in range(copies):
        for i, (t, pairs) in enumerate(base):
            items.append((t + k * gap, k, i, pairs))
    items.sort(key=lambda x: (x[0], x[1], x[2]))
    out = bytearray(b"Asterisk Call Manager/11.0.0\r\n")
    for t, k, _, pairs in items:
        lines = []
        for key, val in renumber(pairs, k):
            lines.append(f"{key}: {val}\r\n")
            if key == "Event" and len(lines) == 1:
                lines.append(f"Timestamp: {EPOCH + t:.6f}\r\n")
        out += "".join(lines).encode("utf-8") + b"\r\n"
    return bytes(out), len(items)


def chunks(data: bytes, size: int = 65536) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def run_ringwatch(parts: list[bytes], trace_mem: bool = False) -> tuple[float, int, int, int, int, int]:
    """Returns elapsed s, messages, records, peak live calls, alerts, bytes held at the peak (trace_mem)."""
    cfg = load_config(env={})
    clock = VirtualClock()
    hub = AlertHub(clock.now, history_limit=1_000_000)
    monitor = Monitor(cfg, clock, hub)
    records = 0

    def on_record(_c: object, _r: object) -> None:
        nonlocal records
        records += 1

    monitor.on_record(on_record)
    tracker = AmiTracker(monitor.handle)
    decoder = AmiDecoder(wanted_events=AmiTracker.WANTED)
    peak_live = 0
    mem_at_peak = 0
    base_mem = 0
    if trace_mem:
        tracemalloc.start()
        base_mem = tracemalloc.get_traced_memory()[0]
    handle = tracker.handle
    advance = clock.advance_to
    t0 = time.perf_counter()
    for part in parts:
        for msg in decoder.feed(part):
            if not isinstance(msg, Message):
                continue
            ts = msg.get("Timestamp")
            if ts is not None:
                now = float(ts) - EPOCH
                advance(now)
            else:
                now = clock.now()
            handle(msg, now)
        live = len(monitor.calls)
        if live > peak_live:
            peak_live = live
            if trace_mem:
                mem_at_peak = tracemalloc.get_traced_memory()[0] - base_mem
    elapsed = time.perf_counter() - t0
    if trace_mem:
        tracemalloc.stop()
    n = decoder.stats.messages + decoder.stats.filtered
    return elapsed, n, records, peak_live, len(hub.alerts()), mem_at_peak


def run_panoramisk(parts: list[bytes]) -> tuple[float, int]:
    from panoramisk.message import Message as PMessage

    eol2 = "\r\n\r\n"
    pending = ""
    n = 0
    t0 = time.perf_counter()
    for part in parts:
        data = pending + part.decode("utf-8", "ignore")
        lines = data.split(eol2)
        pending = lines.pop(-1)
        for line in lines:
            msg = PMessage.from_line(line.strip())
            if msg is not None:
                n += 1
    return time.perf_counter() - t0, n


SIM_EPOCH = 1_795_294_870.0


def sim_config(calls: int, seed: int = 1) -> object:
    from telephony.ami.simulator import QueueSpec, SimConfig

    return SimConfig(seed=seed, queues=(QueueSpec("support", agents=calls + calls // 10),
                                        QueueSpec("claims", "ringall", timeout_s=300.0, agents=5, exten="3000")),
                     arrivals_per_min=float(calls), outbound_per_min=calls / 50.0, max_calls=calls,
                     talk_mean_s=300.0, talk_min_s=300.0, patience_mean_s=0.0, pauses_per_agent_h=0.0,
                     logouts_per_agent_h=0.0, timestamps=True, keep_truth=False, epoch=SIM_EPOCH)


def emit_sim(calls: int) -> None:
    """Child process: the simulator's stream for ``calls`` live calls, as bytes on stdout."""
    from telephony.ami.codec import encode_message
    from telephony.ami.simulator import SimConfig, Simulator

    with contextlib.suppress(OSError, AttributeError):
        os.sched_setaffinity(0, {1 % (os.cpu_count() or 1)})
    cfg = sim_config(calls)
    assert isinstance(cfg, SimConfig)
    sim = Simulator(cfg)
    out = sys.stdout.buffer
    out.write(b"Asterisk Call Manager/11.0.0\r\n")
    buf: list[bytes] = []
    size = 0
    for _t, pairs in sim.events():
        data = encode_message(pairs)
        buf.append(data)
        size += len(data)
        if size >= 1 << 20:
            out.write(b"".join(buf))
            buf.clear()
            size = 0
    out.write(b"".join(buf))
    out.flush()


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_sim(calls: int) -> dict[str, float]:
    """Ingest the simulator's stream for ``calls`` live calls; ringwatch and panoramisk timed per chunk."""
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setaffinity(0, {0})
    # past calls.keep_ended (20,000) a late disposition finds no call: one warning each, not the point here
    logging.getLogger("monitor.engine").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="rw-bench-") as tmp:
        capture = Path(tmp) / f"sim-{calls}.raw"
        with capture.open("wb") as fh:  # generated first, untimed: the ingest then runs alone on its core
            subprocess.run([sys.executable, __file__, "--emit", str(calls)], stdout=fh, check=True)
        with capture.open("rb", buffering=0) as fh:
            result = _ingest(calls, fh.read)
        with capture.open("rb", buffering=0) as fh:  # the same bytes again, through panoramisk
            result.update(_panoramisk(fh.read))
        return result


def _ingest(calls: int, read: Callable[[int], bytes]) -> dict[str, float]:
    """Pass 1: ringwatch (codec + tracker + rules), CPU time of the parsing only, RSS at the peak."""
    cfg = Config()  # the defaults (the same values as config/default.yaml)
    clock = VirtualClock()
    hub = AlertHub(clock.now, history_limit=1_000_000)
    monitor = Monitor(cfg, clock, hub)
    tracker = AmiTracker(monitor.handle)
    decoder = AmiDecoder(wanted_events=AmiTracker.WANTED)
    handle, advance = tracker.handle, clock.advance_to
    rss0 = _rss()
    rw_cpu = 0.0
    peak_live = 0
    rss_peak = rss0
    total_bytes = 0
    n_chunks = 0
    cpu = time.process_time
    while True:
        part = read(65536)
        if not part:
            break
        total_bytes += len(part)
        n_chunks += 1
        t0 = cpu()
        for msg in decoder.feed(part):
            if not isinstance(msg, Message):
                continue
            ts = msg.get("Timestamp")
            if ts is not None:
                now = float(ts) - SIM_EPOCH
                advance(now)
            else:
                now = clock.now()
            handle(msg, now)
        rw_cpu += cpu() - t0
        live = len(monitor.calls)
        if live > peak_live:
            peak_live = live
            if n_chunks % 8 == 0 or live >= calls * 0.98:
                rss_peak = max(rss_peak, _rss())
    n = decoder.stats.messages + decoder.stats.filtered
    return {"calls": calls, "messages": n, "bytes": total_bytes, "rw_rate": n / rw_cpu, "rw_cpu": rw_cpu,
            "peak_live": peak_live, "alerts": len(hub.alerts()), "records": monitor.ended_records,
            "mb_per_1000": (rss_peak - rss0) / 1e6 / max(peak_live, 1) * 1000, "rss_peak_mb": rss_peak / 1e6}


def _panoramisk(read: Callable[[int], bytes]) -> dict[str, float]:
    """Pass 2: panoramisk's framing + ``Message.from_line`` on the same chunks, CPU time of the parsing."""
    from panoramisk.message import Message as PMessage

    pm_cpu = 0.0
    pm_n = 0
    pending = ""
    cpu = time.process_time
    while part := read(65536):
        t0 = cpu()
        data = pending + part.decode("utf-8", "ignore")
        lines = data.split("\r\n\r\n")
        pending = lines.pop(-1)
        for line in lines:
            if PMessage.from_line(line.strip()) is not None:
                pm_n += 1
        pm_cpu += cpu() - t0
    return {"pm_rate": pm_n / pm_cpu, "pm_cpu": pm_cpu}


def main_sim(sizes: list[int]) -> None:
    print(f"cpu: {cpu_model()}  python {platform.python_version()}  (ringwatch and panoramisk on one core, "
          f"timed by CPU clock)")
    print(f"{'live calls':>10} {'messages':>11} {'MB':>7} {'ringwatch msg/s':>16} {'panoramisk msg/s':>17} "
          f"{'ratio':>6} {'MB/1k live':>10} {'alerts':>7}")
    for calls in sizes:
        r = run_sim(calls)
        print(f"{r['peak_live']:>10,.0f} {r['messages']:>11,.0f} {r['bytes'] / 1e6:>7.0f} {r['rw_rate']:>16,.0f} "
              f"{r['pm_rate']:>17,.0f} {r['rw_rate'] / r['pm_rate']:>5.2f}x {r['mb_per_1000']:>10.1f} "
              f"{r['alerts']:>7,.0f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=60, help="copies of the 20-call burst (default 60 = 1,200 calls)")
    ap.add_argument("--gap", type=float, default=2.0, help="seconds between the copies' starts")
    ap.add_argument("--sim", help="simulator mode: comma-separated live-call counts, e.g. 1000,10000,100000")
    ap.add_argument("--emit", type=int, help=argparse.SUPPRESS)  # the child process of --sim
    args = ap.parse_args()
    if args.emit:
        emit_sim(args.emit)
        return
    if args.sim:
        main_sim([int(x) for x in args.sim.split(",")])
        return
    data, n_msgs = build_stream(args.copies, args.gap)
    parts = chunks(data)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    el, n, records, peak_live, alerts, _ = run_ringwatch(parts)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    pel, pn = run_panoramisk(parts)
    *_, mem_peak = run_ringwatch(parts, trace_mem=True)
    print(f"cpu: {cpu_model()}  python {platform.python_version()}")
    print(f"stream: {len(data) / 1e6:.1f} MB, {n_msgs} AMI messages, {args.copies * 20} calls")
    print(f"ringwatch codec+tracker+rules: {n / el:,.0f} msg/s ({el:.2f} s; {records} call records, "
          f"{alerts} alerts, peak {peak_live} live calls)")
    print(f"panoramisk parser alone:       {pn / pel:,.0f} msg/s ({pel:.2f} s)")
    print(f"ratio ringwatch / panoramisk:  {(n / el) / (pn / pel):.2f}x")
    print(f"peak RSS: {rss1 / 1024:.1f} MB (before ingest {rss0 / 1024:.1f} MB: the stream is held in memory)")
    print(f"state held at the busiest moment (tracemalloc): {mem_peak / 1e6:.2f} MB for {peak_live} live calls "
          f"= {mem_peak / 1e6 / max(peak_live, 1) * 1000:.1f} MB per 1,000 live calls")


if __name__ == "__main__":
    main()
