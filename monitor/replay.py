"""``ringwatch replay``: play a recorded trace through the real codec, tracker and rules.

AMI traces (first line a ``banner``/``msg``) go through ``telephony.ami``; ESL traces
(first line a FreeSWITCH frame, ``headers``) through ``telephony.esl``, at both speeds.

``speed == 0``: a virtual clock follows the trace's timestamps, as fast as the
CPU allows; deterministic.  ``speed > 0``: the trace is served over a loopback
TCP AMI server at recorded pace (divided by ``speed``) and the real client
connects to it; the clock runs ``speed`` times faster than real time so rule
limits keep their meaning.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from alerts.hub import AlertChange, AlertHub
from config.schema import Config
from monitor.calls import Call
from monitor.clock import Clock, LoopClock, Timer, VirtualClock
from monitor.engine import Monitor
from telephony.ami.adapter import channel_rules, replay_trace, replay_trace_tcp
from telephony.ami.trace import TraceError, read_trace
from telephony.esl.adapter import (
    EslTraceError,
    esl_channel_rules,
    is_esl_trace,
    load_esl_trace,
    replay_esl_trace,
    replay_esl_trace_tcp,
)

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
    monitor.on_output(out)


def replay_virtual(path: str | Path, cfg: Config, out: Output,
                   setup: Callable[[Monitor], None] | None = None, *, wall_origin: float = 0.0) -> Monitor:
    """Replay at speed 0 on a virtual clock; returns the monitor (for inspection).

    ``setup`` is called with the monitor before the first event (to attach
    metrics or other observers).  ``wall_origin``: the Unix time of the trace's t = 0
    (``--start-at``); the default, the Unix epoch, means "no wall-clock time" (OUT-HOURS is
    not judged)."""
    clock = VirtualClock(wall_origin=wall_origin)
    hub = AlertHub(clock.now, cfg.alerts.history_limit)
    monitor = Monitor(cfg, clock, hub)
    attach_output(monitor, hub, out)
    if setup is not None:
        setup(monitor)
    if is_esl_trace(path):  # a FreeSWITCH (ESL) recording: its first line is a frame, not an AMI banner
        try:
            replay_esl_trace(path, clock.advance_to, monitor.handle, cfg.pbx.esl.max_frame_bytes,
                             esl_channel_rules(cfg))
        except EslTraceError as e:
            raise TraceError(str(e)) from e
        return monitor
    replay_trace(path, clock.advance_to, monitor.handle, cfg.pbx.ami.max_message_bytes, channel_rules(cfg))
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
        elif obj["type"] in ("alert", "notice"):
            self.stream.write(f"[{obj['at']:>9.3f}] {obj['type']} {obj['rule']} {obj['text']['zh']} | "
                              f"{obj['text']['en']}\n")
        else:
            self.stream.write(f"[{obj.get('at', 0):>9.3f}] {obj['type']} "
                              f"{json.dumps(obj, ensure_ascii=False)}\n")



class _OwnedTimers:
    """A clock adapter that remembers its armed timers, so a replay can cancel them all
    when it ends (nothing may fire into ``out`` after :func:`replay_tcp` returns)."""

    def __init__(self, clock: Clock, wall_origin: float | None = None) -> None:
        self._clock = clock
        self._wall_origin = wall_origin  # --start-at: the wall time of clock 0 (trace t = 0)
        self._armed: dict[int, Timer] = {}
        self._seq = 0

    def rebase(self, clock: Clock) -> None:
        """Use ``clock`` from now on (before anything is armed: a replay's clock 0 moves to now)."""
        self._clock = clock

    def now(self) -> float:
        return self._clock.now()

    def wall(self, t: float) -> float:
        return self._clock.wall(t) if self._wall_origin is None else self._wall_origin + t

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        self._seq += 1
        key = self._seq

        def run() -> None:
            self._armed.pop(key, None)
            callback()

        timer = self._clock.call_at(when, run)
        self._armed[key] = timer
        return timer

    def cancel_all(self) -> None:
        armed, self._armed = self._armed, {}
        for timer in armed.values():
            timer.cancel()


async def replay_tcp(path: str | Path, cfg: Config, out: Output, speed: float,
                     wall_origin: float | None = None) -> Monitor:
    """Replay at ``speed`` > 0 through the real network path; returns the monitor.

    The trace is served by a loopback AMI server at recorded pace / ``speed`` and
    read by the real client (login, resync, keepalive); rules run on a
    ``LoopClock(scale=speed)`` whose origin is the server's trace t = 0, so
    clock time ~= trace time and the output matches :func:`replay_virtual`
    within network latency x ``speed``.  Returns once the whole trace was served
    and the link saw its final EOF; by then every task is stopped and every
    armed deadline cancelled.
    """
    if speed <= 0:
        raise ValueError("replay_tcp needs speed > 0 (speed 0 is replay_virtual)")
    # read the whole trace first: recordings start within milliseconds of t = 0, and a client that
    # logs in after the first events are due would see them before its resync's snapshot
    esl_items = None
    ami_items = None
    if is_esl_trace(path):
        try:
            esl_items = load_esl_trace(path)
        except EslTraceError as e:
            raise TraceError(str(e)) from e
    else:
        ami_items = list(read_trace(path))
    loop = asyncio.get_running_loop()
    clock = _OwnedTimers(LoopClock(loop, scale=speed), wall_origin)
    hub = AlertHub(clock.now, cfg.alerts.history_limit)
    monitor = Monitor(cfg, clock, hub)
    attach_output(monitor, hub, out)
    # clock 0 == trace t = 0 == now: building the monitor (the first one loads calendars, ~0.4 s)
    # must not eat into the trace's first seconds
    base = LoopClock(loop, scale=speed)
    clock.rebase(base)
    origin = loop.time() - base.now() / speed  # the loop time of clock 0 == trace t = 0
    try:
        if esl_items is not None:  # served by a loopback ESL server, read by the real ESL client
            await replay_esl_trace_tcp(esl_items, speed, monitor.handle, clock.now, origin, cfg.pbx.esl,
                                       esl_channel_rules(cfg))
        else:
            assert ami_items is not None
            await replay_trace_tcp(ami_items, speed, monitor.handle, clock.now, origin, cfg.pbx.ami,
                                   channel_rules(cfg))
    finally:
        clock.cancel_all()
    return monitor
