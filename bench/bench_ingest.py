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
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alerts.hub import AlertHub  # noqa: E402
from config.schema import load_config  # noqa: E402
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=60, help="copies of the 20-call burst (default 60 = 1,200 calls)")
    ap.add_argument("--gap", type=float, default=2.0, help="seconds between the copies' starts")
    args = ap.parse_args()
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
