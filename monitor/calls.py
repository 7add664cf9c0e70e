"""The call model: live calls built from domain events, and the finished call record."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from telephony.events import Direction, HangupSide, RingOutcome

CallState = Literal["waiting", "ringing", "talking", "ended"]


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


@dataclass(slots=True)
class Ring:
    leg_id: str
    agent: str
    queue: str | None
    start: float
    end: float | None = None
    outcome: RingOutcome | None = None

    def to_json(self) -> dict[str, Any]:
        return {"agent": self.agent, "queue": self.queue, "start": _r(self.start), "end": _r(self.end),
                "outcome": self.outcome}


@dataclass(slots=True)
class Call:
    id: str
    direction: Direction
    caller: str
    caller_name: str
    offered_at: float
    queue: str | None = None
    current_queue: str | None = None
    queued_since: float | None = None  # set while waiting in a queue
    first_queued_at: float | None = None
    agent: str | None = None
    answered_at: float | None = None
    wait_s: float | None = None
    ring_s: float | None = None
    ended_at: float | None = None
    abandoned: bool = False
    first_hangup: HangupSide | None = None
    lost: bool = False
    rings: list[Ring] = field(default_factory=list)
    live_rings: dict[str, Ring] = field(default_factory=dict)
    talking_agent: str | None = None

    @property
    def state(self) -> CallState:
        if self.ended_at is not None:
            return "ended"
        if self.talking_agent is not None and self.queued_since is None:
            return "talking"
        if self.live_rings:
            return "ringing"
        return "waiting"

    def to_record(self, caller_shown: str | None) -> dict[str, Any]:
        """The finished call as ``ringwatch replay --json`` prints it."""
        return {
            "type": "call",
            "id": self.id,
            "direction": self.direction,
            "caller": caller_shown,
            "queue": self.queue,
            "agent": self.agent,
            "offered_at": _r(self.offered_at),
            "answered_at": _r(self.answered_at),
            "ended_at": _r(self.ended_at),
            "wait_s": _r(self.wait_s),
            "ring_s": _r(self.ring_s),
            "rings": [r.to_json() for r in self.rings],
            "abandoned": self.abandoned,
            "first_hangup": self.first_hangup,
            "lost": self.lost,
        }

    def to_live(self, now: float, caller_shown: str | None, name_shown: str | None) -> dict[str, Any]:
        return {
            "id": self.id,
            "direction": self.direction,
            "caller": caller_shown,
            "caller_name": name_shown,
            "queue": self.current_queue or self.queue,
            "state": self.state,
            "agent": self.talking_agent,
            "ringing": [{"agent": r.agent, "since": _r(r.start), "ring_s": _r(now - r.start)}
                        for r in self.live_rings.values()],
            "waiting_s": None if self.queued_since is None else _r(now - self.queued_since),
            "offered_at": _r(self.offered_at),
            "answered_at": _r(self.answered_at),
        }
