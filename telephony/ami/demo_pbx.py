"""A demo PBX: real Asterisk 22 recordings played over real AMI/TCP, in a loop.

``ringwatch demo --recordings`` plays this instead of the call-centre simulator: the recorded
scenarios (answered, slow answer, abandon, ring-no-answer, transfers, agent
hang-up first, recorded call, a 20-call burst) are started one after another,
overlapping, each copy with fresh Uniqueids / Linkedids / channel names so
every loop is new calls.  Only the events are played (the recorder's own
logins, list replies and security events are left out); the server answers
Login, Ping and the resync lists itself.
"""

from __future__ import annotations

import logging
from pathlib import Path

from telephony.ami.server import ScriptedAmiServer
from telephony.ami.trace import read_trace, renumber
from telephony.playback import Pairs, RecordingLoop, Script

log = logging.getLogger(__name__)

DEFAULT_TRACES = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "ami"
SCENARIOS = (
    "S01_answered_caller_hangs_up",
    "S02_slow_answer_20s",
    "S03_abandoned_in_queue",
    "S04_ringnoanswer_then_second_agent",
    "S05_blind_transfer_to_claims",
    "S09_agent_hangs_up_first",
    "S06_attended_transfer",
    "S10_recorded_call_mixmonitor",
    "S12_burst_20_calls",
    "S07_blind_transfer_long_wait",
)
_SKIP_EVENTS = frozenset({"SuccessfulAuth", "FullyBooted", "InvalidPassword", "InvalidAccountID"})


def load_scenario(path: Path) -> Script:
    out: Script = []
    for item in read_trace(path):
        if item.kind != "msg" or not item.pairs or item.pairs[0][0] != "Event":
            continue
        if item.pairs[0][1] in _SKIP_EVENTS or any(k == "ActionID" for k, _ in item.pairs):
            continue
        out.append((item.t, item.pairs))
    return out


def load_scenarios(traces: Path) -> list[Script]:
    return [load_scenario(traces / f"{name}.jsonl") for name in SCENARIOS if (traces / f"{name}.jsonl").exists()]


class DemoPbx(RecordingLoop):
    """Loopback AMI server playing the Asterisk recordings in real time / ``speed``."""

    def __init__(self, *, username: str, secret: str, speed: float = 1.0, loops: int = 0,
                 spacing_s: float = 12.0, traces: Path = DEFAULT_TRACES, port: int = 0) -> None:
        server = ScriptedAmiServer(username=username, secret=secret, port=port)
        super().__init__(server, lambda: load_scenarios(traces), renumber, speed=speed, loops=loops,
                         spacing_s=spacing_s)
        self.server: ScriptedAmiServer = server

    def _ready(self) -> bool:
        return self.server.logins > 0

    async def _send(self, pairs: Pairs) -> None:
        await self.server.push(pairs)
