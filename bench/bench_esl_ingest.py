"""FreeSWITCH ingest benchmark: ESL bytes -> codec -> tracker -> rules, on a virtual clock.

Builds a large stream from the recorded FreeSWITCH burst (F11: 15 queue calls, recorded with
``event plain ALL``) by copying it with fresh Unique-IDs (``telephony.esl.demo_pbx.renumber``),
each copy ``--gap`` seconds after the previous one, and the switch's clock moved to the copy's
time (``Event-Date-Timestamp`` is this benchmark's time source).  Two streams are measured:

* ``all``: every recorded event, as a monitor subscribed with ``event plain ALL`` would receive;
* ``narrow``: only what ringwatch subscribes to (``FsTracker.subscription()``), what production
  receives.

For each: frames/s and MB/s through ringwatch's codec (with the tracker's filter: events it never
reads are dropped undecoded), tracker and rules, in 64 KiB reads; then a second pass under
tracemalloc for the state held at the busiest moment, per 1,000 live calls.

Run: ``.venv/bin/python bench/bench_esl_ingest.py [--copies 40] [--gap 0.5]``
(the `all` stream is ~6 MB per copy, held in memory)
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alerts.hub import AlertHub  # noqa: E402
from bench.bench_ingest import cpu_model  # noqa: E402
from config.schema import load_config  # noqa: E402
from monitor.clock import VirtualClock  # noqa: E402
from monitor.engine import Monitor  # noqa: E402
from telephony.esl.codec import EslDecoder, EslEvent, encode_event  # noqa: E402
from telephony.esl.demo_pbx import load_scenario, renumber, restamp  # noqa: E402
from telephony.esl.tracker import FsTracker  # noqa: E402

SRC = ROOT / "tests" / "fixtures" / "esl" / "F11_burst_15_calls.jsonl"
EPOCH_US = 1_795_000_000 * 1_000_000
CHUNK = 64 * 1024


def build(copies: int, gap: float, narrow: bool) -> tuple[bytes, int]:
    script = load_scenario(SRC)
    first = script[0][0]
    wanted = set(FsTracker.EVENTS)
    subclasses = set(FsTracker.SUBCLASSES)
    frames: list[tuple[float, int, bytes]] = []
    for copy in range(copies):
        for i, (t, pairs) in enumerate(script):
            d = dict(pairs)
            name = d.get("Event-Name", "")
            if narrow and name not in wanted and not (name == "CUSTOM" and d.get("Event-Subclass") in subclasses):
                continue
            at = copy * gap + (t - first)
            frames.append((at, copy * 100_000 + i, encode_event(restamp(renumber(pairs, copy + 1),
                                                                        EPOCH_US + int(at * 1e6)))))
    frames.sort()
    return b"".join(f for _, _, f in frames), len(frames)


def run(stream: bytes, memory: bool) -> tuple[float, int, int, float]:
    """(seconds, events handled, most live calls, bytes of traced memory per 1,000 live calls)."""
    clock = VirtualClock()
    monitor = Monitor(load_config(env={}), clock, AlertHub(clock.now, history_limit=1_000_000))
    tracker = FsTracker(monitor.handle)
    decoder = EslDecoder(event_filter=FsTracker.FILTER)
    handled = most = 0
    peak_per_k = 0.0
    if memory:
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    for off in range(0, len(stream), CHUNK):
        for item in decoder.feed(stream[off:off + CHUNK]):
            if not isinstance(item, EslEvent):
                continue
            now = (int(item.get("Event-Date-Timestamp") or EPOCH_US) - EPOCH_US) / 1e6
            clock.advance_to(max(now, clock.now()))
            tracker.handle(item, clock.now())
            handled += 1
        live = tracker.live_calls
        if live > most:
            most = live
            if memory:
                peak_per_k = (tracemalloc.get_traced_memory()[0] - base) / live * 1000
    elapsed = time.perf_counter() - t0
    if memory:
        tracemalloc.stop()
    monitor.close()
    return elapsed, handled, most, peak_per_k


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, default=40, help="copies of the 15-call burst")
    ap.add_argument("--gap", type=float, default=0.5, help="seconds between copies")
    args = ap.parse_args()
    print(f"cpu: {cpu_model()}  python {sys.version.split()[0]}")
    for kind in ("all", "narrow"):
        stream, frames = build(args.copies, args.gap, kind == "narrow")
        elapsed, handled, most, _ = run(stream, memory=False)
        _, _, _, per_k = run(stream, memory=True)
        print(f"{kind:6s}: {frames:,} frames, {len(stream) / 1e6:.0f} MB, {handled:,} events read by the tracker, "
              f"{frames / elapsed:,.0f} frames/s, {len(stream) / 1e6 / elapsed:.1f} MB/s, "
              f"up to {most:,} live calls, {per_k / 1e6:.1f} MB per 1,000 live calls (tracemalloc)")


if __name__ == "__main__":
    main()
