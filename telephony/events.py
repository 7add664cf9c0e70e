"""ringwatch's own domain events: what happened to calls and agents.

These are the only things a PBX adapter hands to the rest of ringwatch.  They
carry no PBX vocabulary (no channel names, no AMI headers): calls are known by
a stable ``call_id``, ringing legs by a ``leg_id``, agents by their display
name.  Times are seconds on ringwatch's clock (see ``monitor.clock``).

``since`` on an event is when the thing really started; it equals ``at`` for
live events and lies in the past for state rebuilt by a resync after a
(re)connect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Direction = Literal["inbound", "outbound", "internal"]
RingOutcome = Literal["answered", "noanswer", "cancelled"]
HangupSide = Literal["agent", "customer"]
TransferKind = Literal["blind", "attended"]
TransferEnd = Literal["returned", "hangup", "failed"]
AgentState = Literal["available", "ringing", "talking", "paused", "offline", "unknown"]


@dataclass(frozen=True, slots=True)
class LinkUp:
    at: float
    pbx: str


@dataclass(frozen=True, slots=True)
class LinkDown:
    at: float
    reason: str


@dataclass(frozen=True, slots=True)
class ResyncDone:
    """A snapshot from the PBX has been reconciled with the tracked state."""

    at: float
    calls: int
    closed: int
    added: int


@dataclass(frozen=True, slots=True)
class CallOffered:
    """A new call reached the contact centre (inbound: first queue join)."""

    at: float
    call_id: str
    direction: Direction
    caller: str
    caller_name: str
    since: float
    agent: str | None = None  # outbound: the agent who dialled
    #: the PBX line the customer's leg uses (``PJSIP/trunk-telecom``: technology/resource, no unique suffix),
    #: when the adapter knows it; ``monitor.lines`` maps it to a configured trunk (connect rate per trunk)
    trunk: str | None = None


@dataclass(frozen=True, slots=True)
class QueueJoined:
    """The caller waits in a queue (again, after a transfer into another queue)."""

    at: float
    call_id: str
    queue: str
    since: float


@dataclass(frozen=True, slots=True)
class AgentRinging:
    at: float
    call_id: str
    leg_id: str
    agent: str
    queue: str | None
    since: float


@dataclass(frozen=True, slots=True)
class AgentRingEnded:
    at: float
    call_id: str
    leg_id: str
    agent: str
    queue: str | None
    outcome: RingOutcome


@dataclass(frozen=True, slots=True)
class CallAnswered:
    """A person (agent) answered for the caller."""

    at: float
    call_id: str
    leg_id: str
    agent: str
    queue: str | None


@dataclass(frozen=True, slots=True)
class CallAbandoned:
    """The caller hung up while waiting in a queue."""

    at: float
    call_id: str
    queue: str


@dataclass(frozen=True, slots=True)
class FirstHangup:
    """Who ended the conversation, known as soon as the PBX says so."""

    at: float
    call_id: str
    side: HangupSide
    agent: str | None


@dataclass(frozen=True, slots=True)
class CallEnded:
    """The caller's side is gone.  ``lost``: ended while the PBX link was down."""

    at: float
    call_id: str
    lost: bool = False


@dataclass(frozen=True, slots=True)
class AgentStateChanged:
    at: float
    agent: str
    queue: str | None
    state: AgentState
    paused: bool
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class AgentRemoved:
    at: float
    agent: str
    queue: str


@dataclass(frozen=True, slots=True)
class TransferStarted:
    """The caller is handed off (blind) or put on hold for a consult (attended, ``since``)."""

    at: float
    call_id: str
    kind: TransferKind
    since: float
    from_agent: str | None
    to: str | None


@dataclass(frozen=True, slots=True)
class TransferAnswered:
    """A person answers for the transferred caller again."""

    at: float
    call_id: str
    agent: str


@dataclass(frozen=True, slots=True)
class TransferEnded:
    """A transfer that was never answered: the caller came back, hung up, or it failed."""

    at: float
    call_id: str
    outcome: TransferEnd


@dataclass(frozen=True, slots=True)
class RecordingStarted:
    at: float
    call_id: str


@dataclass(frozen=True, slots=True)
class CommitmentRequested:
    """The agent promised something on the call (a callback, an escalation, ...), signalled by the PBX."""

    at: float
    call_id: str
    kind: str
    customer: str
    agent: str | None
    team: str | None = None
    note: str | None = None


@dataclass(frozen=True, slots=True)
class DispositionReceived:
    """The agent's wrap-up outcome for a call (from the PBX; the HTTP API goes to the monitor directly)."""

    at: float
    call_id: str
    tag: str
    note: str
    agent: str | None
    source: str


LineAspect = Literal["reachability", "registration"]


@dataclass(frozen=True, slots=True)
class LineStateChanged:
    """A PBX line (trunk or endpoint) became reachable / registered, or stopped being so.

    ``line`` is technology/resource (``PJSIP/trunk-telecom``, ``SIP/provider``) or
    ``registration/<name>`` for an outbound registration that names no endpoint.  A line
    has up to two aspects (reachability: qualify / contacts / device state; registration:
    outbound REGISTER); it is up when every aspect it reported is up.  Sent on a change,
    and again for every line after a (re)connect's resync.
    """

    at: float
    line: str
    up: bool
    detail: str = ""
    aspect: LineAspect = "reachability"
    source: str = ""  # what told us (PBX event / list name), for the API and the logs
    rtt_ms: float | None = None


@dataclass(frozen=True, slots=True)
class CallLineSeen:
    """The PBX line a call uses, seen on one of its legs (``call_id`` as in :class:`CallOffered`).

    Until the adapter fills ``CallOffered.trunk`` itself, this is how the line monitor
    learns which trunk a call came in on / went out through."""

    at: float
    call_id: str
    line: str


LineEvent = LineStateChanged | CallLineSeen
"""Line events go to ``monitor.lines.LineMonitor``, not to ``Monitor.handle``."""


@dataclass(frozen=True, slots=True)
class SpyStarted:
    """A supervisor's phone started listening to a call (silently, whispering to the agent, or barged in)."""

    at: float
    call_id: str = ""  # "" when the spied channel belongs to no tracked call
    agent: str | None = None  # whose leg is spied on
    spy_id: str | None = None  # the id ringwatch gave the request (monitor.spy); None: started elsewhere


@dataclass(frozen=True, slots=True)
class SpyStopped:
    """That listening ended (the supervisor hung up, or the call ended)."""

    at: float
    call_id: str = ""
    agent: str | None = None
    spy_id: str | None = None


DomainEvent = (
    LinkUp
    | LinkDown
    | ResyncDone
    | CallOffered
    | QueueJoined
    | AgentRinging
    | AgentRingEnded
    | CallAnswered
    | CallAbandoned
    | FirstHangup
    | CallEnded
    | AgentStateChanged
    | AgentRemoved
    | TransferStarted
    | TransferAnswered
    | TransferEnded
    | RecordingStarted
    | DispositionReceived
    | SpyStarted
    | SpyStopped
    | CommitmentRequested
)
