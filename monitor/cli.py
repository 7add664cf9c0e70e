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
    try:
        cfg = load_config(args.file)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    print(f"{args.file}: OK (AMI {cfg.pbx.ami.host}:{cfg.pbx.ami.port}, HTTP {cfg.http.host}:{cfg.http.port}, "
          f"IN-ANSWER {cfg.rules.in_answer.ring_limit_s:g}s, IN-WAIT {cfg.rules.in_wait.max_wait_s:g}s)")
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    from monitor.replay import JsonLinesOutput, SummaryOutput, replay_virtual

    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    if args.speed < 0:
        print("--speed must be 0 (virtual clock) or > 0", file=sys.stderr)
        return 2
    out = JsonLinesOutput(sys.stdout) if args.json else SummaryOutput(sys.stdout)
    try:
        if args.speed == 0:
            replay_virtual(Path(args.trace), cfg, out)
        else:
            from monitor.replay import replay_tcp

            asyncio.run(replay_tcp(Path(args.trace), cfg, out, args.speed))
    except TraceError as e:
        print(f"ringwatch replay: {e}", file=sys.stderr)
        return 2
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from monitor.daemon import run_daemon

    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    return asyncio.run(run_daemon(cfg))


def _cmd_demo(args: argparse.Namespace) -> int:
    from monitor.demo import run_demo

    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    return asyncio.run(run_demo(cfg, speed=args.speed, loops=args.loops))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ringwatch", description="Real-time contact-centre call monitoring (实时话务监控)")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    sub = p.add_subparsers(dest="cmd", required=True)

    run = sub.add_parser("run", help="run the daemon (attach to the PBX, serve HTTP/websocket/metrics)")
    run.add_argument("--config", help="YAML file over the defaults")
    run.set_defaults(fn=_cmd_run)

    rp = sub.add_parser("replay", help="replay a recorded AMI trace (.jsonl) through the real code")
    rp.add_argument("trace")
    rp.add_argument("--speed", type=float, default=0.0,
                    help="0: virtual clock, as fast as possible (default); S>0: over loopback TCP at S x recorded pace")
    rp.add_argument("--json", action="store_true", help="one JSON object per line on stdout")
    rp.add_argument("--config", help="YAML file over the defaults")
    rp.set_defaults(fn=_cmd_replay)

    cc = sub.add_parser("check-config", help="validate a configuration file")
    cc.add_argument("file")
    cc.set_defaults(fn=_cmd_check_config)

    demo = sub.add_parser("demo", help="replay the bundled recordings over real AMI in a loop, daemon and HTTP up")
    demo.add_argument("--config", help="YAML file over the defaults")
    demo.add_argument("--speed", type=float, default=1.0)
    demo.add_argument("--loops", type=int, default=0, help="0 = forever")
    demo.set_defaults(fn=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level)
    try:
        return int(args.fn(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
