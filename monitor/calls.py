"""The call model: live calls built from domain events, and the finished call record."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from telephony.events import Direction, HangupSide, RingOutcome, TransferEnd, TransferKind

CallState = Literal["waiting", "ringing", "talking", "transferring", "ended"]


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
class Transfer:
    kind: TransferKind
    at: float  # handed off (blind) / put on hold for the consult (attended)
    from_agent: str | None
    to: str | None
    answered_at: float | None = None
    wait_s: float | None = None  # until answered, or until it ended unanswered
    completed: bool | None = None  # None while in progress
    outcome: TransferEnd | None = None
    agent: str | None = None  # who answered

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "at": _r(self.at), "from_agent": self.from_agent, "to": self.to,
                "answered_at": _r(self.answered_at), "wait_s": _r(self.wait_s), "completed": self.completed,
                "answered_by": self.agent, **({"outcome": self.outcome} if self.outcome else {})}


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
    first_hangup_at: float | None = None
    transfers: list[Transfer] = field(default_factory=list)
    recorded: bool = False
    disposition: dict[str, Any] | None = None
    flags: set[str] = field(default_factory=set)

    @property
    def talk_s(self) -> float | None:
        if self.answered_at is None:
            return None
        end = self.ended_at if self.ended_at is not None else self.answered_at
        return max(end - self.answered_at, 0.0)

    @property
    def open_transfer(self) -> Transfer | None:
        t = self.transfers[-1] if self.transfers else None
        return t if t is not None and t.completed is None else None

    @property
    def state(self) -> CallState:
        if self.ended_at is not None:
            return "ended"
        if self.open_transfer is not None:
            return "transferring"
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
            "first_hangup_at": _r(self.first_hangup_at),
            "transfers": [t.to_json() for t in self.transfers],
            "talk_s": _r(self.talk_s),
            "recorded": self.recorded,
            "disposition": self.disposition,
            "flags": sorted(self.flags),
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
            "transfer_wait_s": None if self.open_transfer is None else _r(now - self.open_transfer.at),
            "recorded": self.recorded,
            "flags": sorted(self.flags),
        }
