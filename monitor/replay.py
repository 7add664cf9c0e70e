"""``ringwatch replay``: play a recorded trace through the real codec, tracker and rules.

``speed == 0``: a virtual clock follows the trace's timestamps, as fast as the
CPU allows; deterministic.  ``speed > 0``: the trace is served over a loopback
TCP AMI server at recorded pace (divided by ``speed``) and the real client
connects to it; the clock runs ``speed`` times faster than real time so rule
limits keep their meaning.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from alerts.hub import AlertChange, AlertHub
from config.schema import Config
from monitor.calls import Call
from monitor.clock import VirtualClock
from monitor.engine import Monitor
from telephony.ami.adapter import replay_trace

Output = Callable[[dict[str, Any]], None]


class JsonLinesOutput:
    """Prints records and alerts as JSON lines (the ``--json`` format)."""

    name = "json-lines"

    def __init__(self, stream: TextIO = sys.stdout) -> None:
        self.stream = stream

    def __call__(self, obj: dict[str, Any]) -> None:
        self.stream.write(json.dumps(obj, ensure_ascii=False) + "\n")


class _HubToOutput:
    name = "replay-output"

    def __init__(self, out: Output) -> None:
        self.out = out

    def offer(self, change: AlertChange) -> None:
        if change.kind == "opened":
            obj = change.alert.to_json()
            if change.alert.kind == "notice":
                obj["type"] = "notice"
            self.out(obj)


def attach_output(monitor: Monitor, hub: AlertHub, out: Output) -> None:
    hub.add_sink(_HubToOutput(out))

    def on_record(_call: Call, record: dict[str, Any]) -> None:
        out(record)

    monitor.on_record(on_record)


def replay_virtual(path: str | Path, cfg: Config, out: Output) -> Monitor:
    """Replay at speed 0 on a virtual clock; returns the monitor (for inspection)."""
    clock = VirtualClock()
    hub = AlertHub(clock.now, cfg.alerts.history_limit)
    monitor = Monitor(cfg, clock, hub)
    attach_output(monitor, hub, out)
    replay_trace(path, clock.advance_to, monitor.handle, cfg.pbx.ami.max_message_bytes)
    return monitor


class SummaryOutput:
    """Human-readable replay output (without ``--json``)."""

    name = "summary"

    def __init__(self, stream: TextIO = sys.stdout) -> None:
        self.stream = stream

    def __call__(self, obj: dict[str, Any]) -> None:
        if obj["type"] == "call":
            ans = "answered" if obj["answered_at"] is not None else ("abandoned" if obj["abandoned"] else "unanswered")
            self.stream.write(
                f"[{obj['ended_at']:>9.3f}] call {obj['id']} {obj['direction']} queue={obj['queue']} "
                f"caller={obj['caller']} {ans} agent={obj['agent']} wait={obj['wait_s']} ring={obj['ring_s']} "
                f"first_hangup={obj['first_hangup']}\n"
            )
        else:
            self.stream.write(f"[{obj['at']:>9.3f}] {obj['type']} {obj['rule']} {obj['text']['zh']} | "
                              f"{obj['text']['en']}\n")
