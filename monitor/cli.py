"""The ``ringwatch`` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from config.schema import ConfigError, load_config
from telephony.ami.trace import TraceError

log = logging.getLogger("ringwatch")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _cmd_check_config(args: argparse.Namespace) -> int:
    cfg = load_config(args.file)
    print(f"{args.file}: OK (AMI {cfg.pbx.ami.host}:{cfg.pbx.ami.port}, HTTP {cfg.http.host}:{cfg.http.port}, "
          f"IN-ANSWER {cfg.rules.in_answer.ring_limit_s:g}s, IN-WAIT {cfg.rules.in_wait.max_wait_s:g}s)")
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    from monitor.replay import JsonLinesOutput, SummaryOutput, replay_virtual

    cfg = load_config(args.config)
    if args.speed < 0:
        print("--speed must be 0 (virtual clock) or > 0", file=sys.stderr)
        return 2
    out = JsonLinesOutput(sys.stdout) if args.json else SummaryOutput(sys.stdout)
    start_at: float | None = None
    if args.start_at:
        from zoneinfo import ZoneInfo

        from monitor.dnc import parse_time

        try:  # ISO 8601 (no offset: the outbound time zone) or Unix seconds
            start_at = parse_time(args.start_at, ZoneInfo(cfg.outbound.timezone or cfg.timezone))
        except ValueError:
            print(f"--start-at {args.start_at!r}: expected ISO 8601 (2026-03-02T08:29:58+08:00) or Unix seconds",
                  file=sys.stderr)
            return 2
    try:
        if args.speed == 0:
            replay_virtual(Path(args.trace), cfg, out, wall_origin=start_at or 0.0)
        else:
            from monitor.replay import replay_tcp

            asyncio.run(replay_tcp(Path(args.trace), cfg, out, args.speed, wall_origin=start_at))
    except TraceError as e:
        print(f"ringwatch replay: {e}", file=sys.stderr)
        return 2
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from monitor.daemon import run_daemon

    cfg = load_config(args.config)
    return asyncio.run(run_daemon(cfg))


def _cmd_demo(args: argparse.Namespace) -> int:
    from monitor.demo import run_demo

    cfg = load_config(args.config)
    return asyncio.run(run_demo(cfg, speed=args.speed, loops=args.loops, recordings=args.recordings,
                                seed=args.seed, rate=args.rate, pbx_kind=args.pbx))


def _cmd_simulate(args: argparse.Namespace) -> int:
    """The call-centre simulator alone: an AMI server for a ringwatch elsewhere, or a capture."""
    from monitor.simulate import run_simulate

    return run_simulate(args)


def _cmd_report_complaints(args: argparse.Namespace) -> int:
    import json
    import time
    from zoneinfo import ZoneInfo

    from monitor.commitments import CommitmentError, StoreUnavailable, month_range, previous_month, report_csv
    from monitor.commitments_api import report_from_store
    from monitor.redis_embedded import EmbeddedRedisError

    cfg = load_config(args.config)
    tz = ZoneInfo(cfg.timezone)
    month = args.month or previous_month(time.time(), tz)
    try:
        month_range(month, tz)
        report = asyncio.run(report_from_store(cfg, month, time.time()))
    except CommitmentError as e:
        print(f"ringwatch report: {e.en} / {e.zh}", file=sys.stderr)
        return 2
    except (StoreUnavailable, EmbeddedRedisError) as e:
        print(f"ringwatch report: the commitments store is unavailable: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(report_csv(report) if args.csv else json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    return 0


def _cmd_calendar(args: argparse.Namespace) -> int:
    """The Chinese calendar of a year as ringwatch sees it (library + overrides): check it against the notice."""
    from monitor.outbound import OutboundPolicy
    from monitor.workcal import CalendarDataError

    cfg = load_config(args.config)
    try:
        cal = OutboundPolicy(cfg).calendar
    except CalendarDataError as e:
        print(f"ringwatch calendar: {e}", file=sys.stderr)
        return 2
    for year in args.year:
        print("\n".join(cal.describe_year(year)))
    return 0 if all(cal.known(y) for y in args.year) else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ringwatch", description="Real-time contact-centre call monitoring (实时话务监控)")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    sub = p.add_subparsers(dest="cmd", required=True)

    run = sub.add_parser("run", help="run the daemon (attach to the PBX, serve HTTP/websocket/metrics)")
    run.add_argument("--config", help="YAML file over the defaults")
    run.set_defaults(fn=_cmd_run)

    rp = sub.add_parser("replay", help="replay a recorded AMI trace (.jsonl, or a raw byte capture .raw) "
                        "through the real code")
    rp.add_argument("trace")
    rp.add_argument("--speed", type=float, default=0.0,
                    help="0: virtual clock, as fast as possible (default); S>0: over loopback TCP at S x recorded pace")
    rp.add_argument("--json", action="store_true", help="one JSON object per line on stdout")
    rp.add_argument("--start-at", metavar="ISO-8601", help="the wall-clock time of the trace's t = 0 (no offset: "
                    "the outbound time zone); without it the trace has no time of day and OUT-HOURS is not judged")
    rp.add_argument("--config", help="YAML file over the defaults")
    rp.set_defaults(fn=_cmd_replay)

    cal = sub.add_parser("calendar", help="the holiday breaks and make-up workdays of a year (OUT-HOURS): "
                         "exit 1 when a year has no official data")
    cal.add_argument("year", type=int, nargs="+")
    cal.add_argument("--config", help="YAML file over the defaults (outbound.calendar_overrides, holiday_policy)")
    cal.set_defaults(fn=_cmd_calendar)

    cc = sub.add_parser("check-config", help="validate a configuration file")
    cc.add_argument("file")
    cc.set_defaults(fn=_cmd_check_config)

    demo = sub.add_parser("demo", help="a simulated call centre over real AMI (or --recordings), daemon and HTTP up")
    demo.add_argument("--config", help="YAML file over the defaults")
    demo.add_argument("--speed", type=float, default=1.0)
    demo.add_argument("--loops", type=int, default=0, help="with --recordings: 0 = forever")
    demo.add_argument("--recordings", action="store_true",
                      help="play the recorded Asterisk 22 calls in a loop instead of the simulator")
    demo.add_argument("--pbx", choices=("asterisk", "freeswitch"), default="asterisk",
                      help="freeswitch: the recorded FreeSWITCH 1.10 calls over an event socket (ESL) in a loop")
    demo.add_argument("--seed", type=int, default=1, help="simulator: random seed (same seed, same calls)")
    demo.add_argument("--rate", type=float, default=5.0, help="simulator: inbound calls per minute")
    demo.set_defaults(fn=_cmd_demo)

    sim = sub.add_parser("simulate", help="a simulated call centre speaking Asterisk AMI (server or .raw capture)")
    sim.add_argument("--host", default="127.0.0.1", help="listen address (loopback by default)")
    sim.add_argument("--port", type=int, default=5038)
    sim.add_argument("--username", default="ringwatch")
    sim.add_argument("--secret-env", default="RINGWATCH_AMI_SECRET", help="environment variable holding the secret")
    sim.add_argument("--speed", type=float, default=1.0, help="simulated seconds per real second; 0: as fast as "
                     "the client reads")
    sim.add_argument("--seed", type=int, default=1)
    sim.add_argument("--rate", type=float, default=5.0, help="inbound calls per minute")
    sim.add_argument("--outbound-rate", type=float, default=1.0, help="outbound dials per minute")
    sim.add_argument("--agents", type=int, default=10, help="support agents (plus 2 dynamic, 3 in claims)")
    sim.add_argument("--duration", type=float, default=None, help="simulated seconds of arrivals (default: forever)")
    sim.add_argument("--timestamps", action="store_true", help="a Timestamp header on every event")
    sim.add_argument("--write", metavar="FILE.raw", help="write a raw AMI capture instead of serving "
                     "(needs --duration; Timestamp headers on)")
    sim.set_defaults(fn=_cmd_simulate)

    report = sub.add_parser("report", help="reports from the commitments store")
    rsub = report.add_subparsers(dest="report", required=True)
    rc = rsub.add_parser("complaints", help="CMP-MONTHLY: a month's overdue complaint commitments with reasons")
    rc.add_argument("--month", help="YYYY-MM (default: last month, in the configured timezone)")
    rc.add_argument("--csv", action="store_true", help="CSV instead of JSON")
    rc.add_argument("--config", help="YAML file over the defaults")
    rc.set_defaults(fn=_cmd_report_complaints)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level)
    try:
        return int(args.fn(args))
    except ConfigError as e:  # every command: a clear message naming the key, exit 2
        print(e, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
