"""A FreeSWITCH demo PBX: the real FreeSWITCH 1.10 recordings played over a real event socket, in a loop.

The recorded scenarios (answered, slow answer, abandon, no answer then a second agent, blind and
attended transfers, click-to-call, agent hang-up first, recorded call, agent states, a burst) are
started one after another, overlapping, each copy with fresh Unique-IDs so every loop is new calls,
and with FreeSWITCH's own clocks (``Event-Date-Timestamp``, ``Caller-Channel-*-Time``,
``CC-*-Time``) moved to the moment each event is sent (the demo switch's clock runs at ``speed``,
as the daemon's does) — so a (re)connecting ringwatch's resync reads a snapshot
(``show channels``, ``callcenter_config``) that agrees with the events.  Only the
switch's events are played: the recorder's own commands and their ``API`` / ``BACKGROUND_JOB``
events are left out, and ``HEARTBEAT`` comes from the server itself (every ``heartbeat_s``).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from pathlib import Path

from telephony.esl.codec import parse_event_headers
from telephony.esl.server import ScriptedEslServer
from telephony.esl.trace import read_esl_trace
from telephony.playback import Pairs, RecordingLoop, Script

log = logging.getLogger(__name__)

DEFAULT_TRACES = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "esl"
SCENARIOS = (
    "F01_answered_caller_hangs_up",
    "F02_slow_answer_20s",
    "F03_abandoned_in_queue",
    "F04_noanswer_then_second_agent",
    "F05_blind_transfer_to_claims",
    "F08_agent_hangs_up_first",
    "F06_attended_transfer",
    "F09_recorded_call",
    "F07_outbound_click_to_call",
    "F11_burst_15_calls",
)
#: the recorder's commands and their echoes, and what the server makes itself
_SKIP_EVENTS = frozenset({"API", "BACKGROUND_JOB", "HEARTBEAT", "RE_SCHEDULE"})
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_NAMESPACE = uuid.UUID("6f1c2a5e-5d0b-4c8e-9a57-1b8f0f3d2c11")
_KEEP = frozenset({"Core-UUID"})  # the switch's own id: one switch, every copy


def load_scenario(path: Path) -> Script:
    """The recorded events of one trace, with their receive times."""
    out: Script = []
    for item in read_esl_trace(path):
        if item.kind != "frame" or item.content_type != "text/event-plain" or item.body is None:
            continue
        pairs = tuple(parse_event_headers(item.body.split("\n\n", 1)[0]))
        name = next((v for k, v in pairs if k == "Event-Name"), "")
        if name and name not in _SKIP_EVENTS:
            out.append((item.t, pairs))
    return out


def renumber(pairs: Pairs, copy: int) -> Pairs:
    """The same event for copy ``copy``: every Unique-ID-like value mapped to a fresh, stable one."""
    def fresh(m: re.Match[str]) -> str:
        return str(uuid.uuid5(_NAMESPACE, f"{copy}/{m.group(0)}"))

    return tuple((k, v if k in _KEEP or "-" not in v else _UUID.sub(fresh, v)) for k, v in pairs)


def restamp(pairs: Pairs, now_us: int) -> Pairs:
    """Move the event's FreeSWITCH clocks so that it happens at ``now_us`` (µs since the epoch):
    ``Event-Date-Timestamp`` becomes ``now_us`` and every other epoch (µs ``*-Time`` headers,
    seconds ``CC-*-Time`` headers) moves by as much; zero (never happened) stays zero."""
    recorded = next((int(v) for k, v in pairs if k == "Event-Date-Timestamp" and v.isdigit()), None)
    if recorded is None:
        return pairs
    shift_us = now_us - recorded
    out = []
    for k, v in pairs:
        if k == "Event-Date-Timestamp":
            v = str(now_us)
        elif (k.endswith("-Time") or k.endswith("-Epoch")) and v.isdigit() and int(v) > 0:
            n = int(v)
            v = str(n + shift_us) if n > 10**14 else str(n + shift_us // 1_000_000) if n > 10**8 else v
        out.append((k, v))
    return tuple(out)


class EslDemoPbx(RecordingLoop):
    """Loopback event socket playing the FreeSWITCH recordings in real time / ``speed``."""

    task_name = "esl-demo-pbx-player"

    def __init__(self, *, password: str, speed: float = 1.0, loops: int = 0, spacing_s: float = 12.0,
                 heartbeat_s: float = 20.0, traces: Path = DEFAULT_TRACES, port: int = 0) -> None:
        # the switch's clock runs at the demo's speed (as the daemon's does): its epochs in events,
        # HEARTBEAT and strmicroepoch agree with the daemon's time, so a resync places rings right
        self._epoch0 = time.time()
        self._t0: float | None = None
        server = ScriptedEslServer(password=password, heartbeat_interval_s=heartbeat_s / max(speed, 1e-9), port=port,
                                   epoch=self.epoch)
        super().__init__(server, lambda: load_scenarios(traces), renumber, speed=speed, loops=loops,
                         spacing_s=spacing_s)
        self.server: ScriptedEslServer = server

    def epoch(self) -> float:
        """The demo switch's clock (epoch seconds): real time at start, then ``speed`` times as fast."""
        loop_now = time.monotonic()
        if self._t0 is None:
            self._t0 = loop_now
        return self._epoch0 + (loop_now - self._t0) * self.speed

    def _ready(self) -> bool:
        return bool(self.server.subscriptions)  # logged in and subscribed

    async def _send(self, pairs: Pairs) -> None:
        await self.server.push(restamp(pairs, int(self.epoch() * 1e6)))


def load_scenarios(traces: Path) -> list[Script]:
    return [load_scenario(traces / f"{name}.jsonl") for name in SCENARIOS if (traces / f"{name}.jsonl").exists()]
