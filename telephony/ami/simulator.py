"""A call-centre simulator that speaks Asterisk 22 AMI: for the demo, the tests and the benchmarks.

Two layers:

* :class:`Simulator` -- a **pure** discrete-event model on its own clock: queues
  (``rrmemory`` / ``ringall``), agents logging in and out and pausing, Poisson
  arrivals, ring and talk times, abandons, blind and attended transfers,
  outbound click-to-call dials, wrap-up dispositions (``UserEvent`` or a
  ``wrapup:<tag>`` pause), MixMonitor recordings -- and, on purpose, a share of
  misses of every rule (slow answers, agent hang-ups first, unrecorded calls,
  missing or late dispositions, long transfer waits, dials outside calling
  hours).  A seeded :class:`random.Random` makes it deterministic: the same
  :class:`SimConfig` gives the same ``(t, message)`` stream, byte for byte.
  :meth:`Simulator.step` runs the next scheduled action and returns the messages
  it produced; :meth:`Simulator.events` is the generator over all of them.  The
  messages are what Asterisk 22 sends (event names, header sets and order, Local
  ``;1``/``;2`` pairs, Linkedid, ms ``RingTime``, duplicate ``DialEnd``...), built
  by :mod:`telephony.ami.simwire`; ``tests/test_simulator.py`` compares them with
  the recordings in ``tests/fixtures/ami/``.
* :class:`SimulatedPbx` -- a thin loopback AMI server around it (login, Ping,
  CoreShowChannels / QueueStatus / QueueSummary from the model's live state,
  Originate of a ChanSpy) that plays the stream in real time, ``speed`` times
  faster, or as fast as the socket drains (``speed=0``); with fault knobs for
  tests (drop, refuse, restart with calls in progress, go silent, lose events).

Channels follow the recordings' site: callers ``Local/5000@inbound`` (``;1``
the customer's handset, ``;2`` the PBX side that runs ``Queue()``), queue
members ``Local/70xx@agents/n``, transfers through context ``xfer``,
click-to-call ``Local/70xx@agent-phone`` dialling ``Local/<number>@customers``.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import math
import random
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Literal

from telephony.ami import simwire as w
from telephony.ami.codec import Message, encode_message
from telephony.ami.server import BANNER, ScriptedAmiServer, _Session, list_reply, response
from telephony.ami.simwire import Bridge, Chan, Member, Pairs

log = logging.getLogger(__name__)

Side = Literal["customer", "agent"]
Emitted = tuple[float, Pairs]

_QUEUE_VARS = ("QUEUENAME", "QUEUEMAX", "QUEUESTRATEGY", "QUEUECALLS", "QUEUEHOLDTIME", "QUEUETALKTIME",
               "QUEUECOMPLETED", "QUEUEABANDONED", "QUEUESRVLEVEL", "QUEUESRVLEVELPERF")
_SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
_GIVEN = ("伟", "芳", "娜", "秀英", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "娟", "涛", "明", "超")
_PREFIXES = ("139", "138", "137", "136", "135", "186", "185", "158", "150", "177", "189", "199")
_PAUSE_REASONS = ("Lunch break", "Coaching", "Toilet", "Training", "小休")


# -- configuration -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueueSpec:
    name: str
    strategy: Literal["rrmemory", "ringall"] = "rrmemory"
    timeout_s: float = 30.0  # ring a member at most this long, then RINGNOANSWER
    retry_s: float = 2.0
    service_level_s: int = 15
    agents: int = 5  # static members (queues.conf), logged in from the start
    dynamic_agents: int = 0  # members that log in (QueueAdd) at t = 0 and may log out and back in
    exten: str = ""  # the xfer-context extension that reaches this queue (blind transfers)


@dataclass(frozen=True, slots=True)
class SimConfig:
    """The call centre and its people.  Rates are per minute; shares are probabilities."""

    seed: int = 1
    queues: tuple[QueueSpec, ...] = (
        QueueSpec("support", agents=8, dynamic_agents=2),
        QueueSpec("claims", "ringall", timeout_s=300.0, service_level_s=60, agents=3, exten="3000"),
    )
    first_ext: int = 7001
    inbound_queue: str = "support"  # "*": callers spread over every queue without an xfer extension
    arrivals_per_min: float = 6.0  # Poisson arrivals of inbound callers
    outbound_per_min: float = 0.5  # click-to-call dials by idle agents
    duration_s: float | None = None  # no new arrivals after this (calls in progress finish)
    max_calls: int | None = None  # no new arrivals after this many (inbound + outbound)
    # agents answering
    ring_s: tuple[float, float] = (2.0, 10.0)  # uniform ring before an agent answers
    slow_answer_share: float = 0.08  # rings 15-25 s before answering (IN-ANSWER missed)
    no_answer_share: float = 0.05  # lets it ring until the queue's timeout (RINGNOANSWER)
    # callers
    patience_mean_s: float = 150.0  # exponential; a caller still waiting after it abandons
    talk_mean_s: float = 90.0  # exponential, at least talk_min_s
    talk_min_s: float = 5.0
    agent_hangs_up_first_share: float = 0.08  # IN-HANGUP missed
    blind_transfer_share: float = 0.05
    attended_transfer_share: float = 0.03
    transfer_queue: str = "claims"
    slow_transfer_share: float = 0.3  # the transfer target lets it ring 130-180 s (IN-XFER missed)
    recorded_share: float = 0.97  # MixMonitor on answered calls (the rest: SYS-REC missed)
    # outbound
    outbound_answer_share: float = 0.7
    outbound_ring_s: tuple[float, float] = (4.0, 20.0)
    # wrap-up dispositions (after outbound calls; after inbound ones with inbound_disposition_share)
    inbound_disposition_share: float = 0.3
    disposition_by_pause_share: float = 0.5  # QueuePause "wrapup:<tag>" then unpause; else UserEvent
    disposition_delay_s: tuple[float, float] = (5.0, 120.0)
    disposition_missing_share: float = 0.05  # OUT-WRAPUP missed: never
    disposition_late_share: float = 0.05  # OUT-WRAPUP missed: 5-10 min after the call
    tags: tuple[str, ...] = ("valid", "invalid", "refused")
    disposition_event: str = "RingwatchDisposition"
    # breaks and shifts
    pauses_per_agent_h: float = 0.5
    pause_mean_s: float = 300.0
    logouts_per_agent_h: float = 0.2  # dynamic agents only
    logout_mean_s: float = 600.0
    # wire
    epoch: float = 1_795_294_870.0  # Unix time of t = 0 (Uniqueids, LastCall, Timestamp)
    timestamps: bool = False  # manager.conf timestampevents: a Timestamp header on every event
    verbose: bool = True  # VarSet / Newexten / DeviceStateChange / NewCallerid as Asterisk sends them
    originated_callers: bool = True  # callers arrive as in the recordings: an Originate of Local/5000@inbound
    keep_truth: bool = True  # keep a ground-truth record of every finished call (tests)


# -- per-call plans (what the people will do; random unless a test scripts them) ---------------------


@dataclass(slots=True)
class TransferPlan:
    kind: Literal["blind", "attended"]
    after_s: float  # talk before the transfer
    target: str  # blind: a queue name; attended: an agent extension ("" = any free agent)
    consult_s: float = 4.0  # attended: talk with the target before the transferer hangs up
    talk_after_s: float = 10.0  # the caller with the new person, then the caller hangs up


@dataclass(slots=True)
class DispositionPlan:
    tag: str
    delay_s: float
    by_pause: bool


@dataclass(slots=True)
class CallPlan:
    """An inbound call.  ``ring_s`` maps an agent extension to how long it rings
    before that agent answers (``None``: never); agents not listed draw at random."""

    queue: str = "support"
    caller: str = "+8613900000000"
    caller_name: str = "<unknown>"
    patience_s: float = math.inf
    ring_s: dict[str, float | None] = field(default_factory=dict)
    talk_s: float = 10.0
    hangup: Side = "customer"
    transfer: TransferPlan | None = None
    record: bool = False
    disposition: DispositionPlan | None = None


@dataclass(slots=True)
class OutboundPlan:
    agent: str  # extension
    number: str = "5551234"
    agent_ring_s: float = 2.0  # the agent's handset answers the click-to-call
    ring_s: float = 8.0
    answered: bool = True
    talk_s: float = 10.0
    hangup: Side = "customer"
    disposition: DispositionPlan | None = None


@dataclass(slots=True)
class CallTruth:
    """What really happened to one call (the simulator's ground truth)."""

    linkedid: str
    direction: Literal["inbound", "outbound"]
    queue: str | None
    caller: str
    start: float
    end: float | None = None
    answered_by: str | None = None
    answered_at: float | None = None
    abandoned: bool = False
    rings: list[tuple[str, float, float, str]] = field(default_factory=list)  # agent, start, end, outcome
    first_hangup: Side | None = None
    transfers: list[str] = field(default_factory=list)
    recorded: bool = False
    disposition: str | None = None
    lost: bool = False  # the PBX restarted under it


@dataclass(slots=True)
class SimStats:
    messages: int = 0
    offered: int = 0
    answered: int = 0
    abandoned: int = 0
    outbound: int = 0
    transfers: int = 0
    slow_answers: int = 0
    no_answers: int = 0
    agent_first: int = 0
    unrecorded: int = 0
    dispositions: int = 0
    dispositions_missing: int = 0
    spies: int = 0


# -- the model's objects -------------------------------------------------------------------------


class _Job:
    __slots__ = ("args", "cancelled", "fn")

    def __init__(self, fn: Callable[..., None], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class _Agent:
    __slots__ = ("call", "device", "ext", "interface", "members", "name", "queues", "state")

    def __init__(self, ext: str) -> None:
        self.ext = ext
        self.name = f"Agent {ext}"
        self.interface = f"Local/{ext}@agents/n"
        self.device = f"Local/{ext}@agents"
        self.members: dict[str, Member] = {}  # queue -> membership
        self.queues: list[_Queue] = []
        self.state = "idle"  # idle | ringing | busy | paused | offline
        self.call: _InCall | _OutCall | None = None


class _Leg:
    """A queue member (or transfer target) being rung: the Local ;1/;2 pair."""

    __slots__ = ("agent", "c1", "c2", "job", "queue", "ring_s", "start")

    def __init__(self, agent: _Agent, c1: Chan, c2: Chan, queue: _Queue | None, start: float) -> None:
        self.agent = agent
        self.c1 = c1
        self.c2 = c2
        self.queue = queue
        self.start = start
        self.ring_s = 0.0
        self.job: _Job | None = None


class _Queue:
    def __init__(self, spec: QueueSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.agents: list[_Agent] = []
        self.idle: deque[_Agent] = deque()
        self.waiting: dict[_InCall, None] = {}  # callers in the queue, in order of arrival
        self.pending: deque[_InCall] = deque()  # callers that want an agent rung (not ringing one now)
        # positions in O(log n): a Fenwick tree over the join order (a queue may hold thousands)
        self._size = 64
        self._tree = [0] * (self._size + 1)
        self._next = 0
        self.completed = 0
        self.abandoned = 0
        self.hold_total = 0.0
        self.talk_total = 0.0
        self.in_sl = 0

    def _add(self, i: int, d: int) -> None:
        i += 1
        tree, n = self._tree, self._size
        while i <= n:
            tree[i] += d
            i += i & -i

    def position(self, call: _InCall) -> int:
        i, s, tree = call.seq + 1, 0, self._tree
        while i > 0:
            s += tree[i]
            i -= i & -i
        return s

    def join(self, call: _InCall) -> None:
        call.seq = self._next
        self._next += 1
        if call.seq >= self._size:
            self._size *= 2
            self._tree = [0] * (self._size + 1)
            for c in self.waiting:
                self._add(c.seq, 1)
        self.waiting[call] = None
        self._add(call.seq, 1)

    def leave(self, call: _InCall) -> int:
        """Take the caller out of the queue; its position there."""
        pos = self.position(call)
        self._add(call.seq, -1)
        del self.waiting[call]
        return pos

    def clear(self) -> None:
        self.waiting.clear()
        self.pending.clear()
        self._tree = [0] * (self._size + 1)

    def holdtime(self) -> int:
        return round(self.hold_total / self.completed) if self.completed else 0

    def talktime(self) -> int:
        return round(self.talk_total / self.completed) if self.completed else 0

    def perf(self) -> float:
        total = self.completed + self.abandoned
        return 100.0 * self.in_sl / total if total else 0.0


class _InCall:
    def __init__(self, plan: CallPlan, c1: Chan, c2: Chan, truth: CallTruth) -> None:
        self.plan = plan
        self.c1 = c1  # the customer's handset
        self.c2 = c2  # the queue caller channel
        self.truth = truth
        self.queue: _Queue | None = None
        self.join_t = 0.0
        self.position = 0
        self.seq = 0
        self.legs: dict[str, _Leg] = {}  # agent ext -> leg ringing
        self.abandon_job: _Job | None = None
        self.leg: _Leg | None = None  # the connected member
        self.agent: _Agent | None = None
        self.bridge: Bridge | None = None
        self.connect_t = 0.0
        self.job: _Job | None = None
        self.transfers = 0
        self.ended = False
        self.xfer: _Consult | None = None


class _Consult:
    """An attended transfer's consult call: the xfer Local pair, its bridge, the target's leg."""

    __slots__ = ("b2", "b3", "leg", "x1", "x2")

    def __init__(self, x1: Chan, x2: Chan, b2: Bridge, leg: _Leg) -> None:
        self.x1 = x1
        self.x2 = x2
        self.b2 = b2
        self.leg = leg
        self.b3: Bridge | None = None


class _OutCall:
    def __init__(self, plan: OutboundPlan, agent: _Agent, p1: Chan, p2: Chan, truth: CallTruth) -> None:
        self.plan = plan
        self.agent = agent
        self.p1 = p1
        self.p2 = p2
        self.k1: Chan | None = None
        self.k2: Chan | None = None
        self.bridge: Bridge | None = None
        self.truth = truth
        self.job: _Job | None = None
        self.ended = False
        self.action_id = ""
        self.connect_t = 0.0


# -- the model -----------------------------------------------------------------------------------


class Simulator:
    """The call centre as a pure generator of ``(t, message pairs)`` on its own clock."""

    def __init__(self, cfg: SimConfig | None = None) -> None:
        self.cfg = cfg = cfg or SimConfig()
        self.rng = random.Random(cfg.seed)
        self.now = 0.0
        self.last_event_t = 0.0
        self.stats = SimStats()
        self.truth: list[CallTruth] = []
        self._heap: list[tuple[float, int, _Job]] = []
        self._seq = itertools.count()
        self._out: list[Emitted] = []
        self._epoch = cfg.epoch
        self._uids = itertools.count()
        self._locals = itertools.count()
        self._originates = itertools.count(1)
        self.channels: dict[str, Chan] = {}  # live channels by Uniqueid
        self.calls: dict[str, _InCall | _OutCall] = {}  # live calls by Linkedid
        self.queues: dict[str, _Queue] = {}
        self.agents: dict[str, _Agent] = {}
        self._spies: dict[str, tuple[Chan, Chan | None]] = {}
        self._build()

    # -- public API ---------------------------------------------------------------------------

    @property
    def live_calls(self) -> int:
        return len(self.calls)

    def next_time(self) -> float | None:
        heap = self._heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def step(self) -> list[Emitted]:
        """Run the next scheduled action; return the messages it produced (maybe none)."""
        heap = self._heap
        while heap:
            t, _, job = heapq.heappop(heap)
            if job.cancelled:
                continue
            if t > self.now:
                self.now = t
            job.fn(*job.args)
            out, self._out = self._out, []
            if out:
                self.stats.messages += len(out)
                self.last_event_t = self.now
            return out
        return []

    def events(self, until: float | None = None) -> Iterator[Emitted]:
        """Every message in time order (until the model runs dry, or up to ``until``)."""
        while True:
            t = self.next_time()
            if t is None or (until is not None and t > until):
                return
            yield from self.step()

    def run_until(self, t: float) -> list[Emitted]:
        """Every message up to ``t``; the clock then stands at ``t``."""
        out = list(self.events(until=t))
        self.now = max(self.now, t)
        return out

    def call_at(self, t: float, fn: Callable[..., None], *args: Any) -> _Job:
        job = _Job(fn, args)
        heapq.heappush(self._heap, (max(t, self.now), next(self._seq), job))
        return job

    def place_call(self, at: float, plan: CallPlan) -> None:
        """Script an inbound call (tests): it arrives at ``at``."""
        self.call_at(at, self._arrive, plan)

    def place_outbound(self, at: float, plan: OutboundPlan) -> None:
        self.call_at(at, self._dial_out, plan)

    def pause(self, at: float, ext: str, reason: str, duration_s: float) -> None:
        self.call_at(at, self._pause, self.agents[ext], reason, duration_s)

    def restart(self) -> None:
        """Asterisk restarts: every channel and call vanishes without an event, counters start again."""
        for call in self.calls.values():
            call.truth.lost = True
            call.truth.end = self.now
            call.ended = True
        self.calls.clear()
        self.channels.clear()
        self._spies.clear()
        keep = (self._next_arrival, self._next_outbound, self._break, self._end_break, self._login, self._unpause,
                self._user_event)
        self._heap = [(t, s, j) for t, s, j in self._heap if j.fn in keep]
        heapq.heapify(self._heap)
        self._uids = itertools.count()
        self._locals = itertools.count()
        for q in self.queues.values():
            q.clear()
            q.idle.clear()
        for a in self.agents.values():
            a.call = None
            if a.state in ("ringing", "busy"):
                a.state = "idle"
            for m in a.members.values():
                m.status, m.in_call = 1, False
            if a.state == "idle":
                for q in a.queues:
                    q.idle.append(a)

    # -- responses to list actions ---------------------------------------------------------------

    def snapshot(self, action: str) -> list[list[tuple[str, str]]]:
        """The list items Asterisk answers ``action`` with, from the live state."""
        now = self.now
        name = action.lower()
        if name == "coreshowchannels":
            return [w.core_show_channel(c, now) for c in self.channels.values()]
        if name == "queuestatus":
            out: list[list[tuple[str, str]]] = []
            for q in self.queues.values():
                out.append(w.queue_params(q.name, q.spec.strategy, len(q.waiting), q.holdtime(), q.talktime(),
                                          q.completed, q.abandoned, q.spec.service_level_s, q.perf()))
                out.extend(w.queue_member(q.name, a.members[q.name]) for a in q.agents if q.name in a.members)
                out.extend(w.queue_entry(q.name, i, call.c2, now - call.join_t)
                           for i, call in enumerate(q.waiting, 1))
            return out
        if name == "queuesummary":
            res = []
            for q in self.queues.values():
                logged = [a for a in q.agents if q.name in a.members]
                avail = sum(1 for a in logged if a.state == "idle")
                longest = max((now - c.join_t for c in q.waiting), default=0.0)
                res.append(w.queue_summary(q.name, len(logged), avail, len(q.waiting), q.holdtime(), q.talktime(),
                                           int(longest)))
            return res
        return []

    # -- originate (a supervisor's silent monitoring: ChanSpy) ------------------------------------------

    def originate(self, fields: dict[str, str], action_id: str) -> tuple[bool, str]:
        """Accept an ``Originate`` the way Asterisk does: ``Application: ChanSpy`` (spy on an
        agent's channel) or a click-to-call (``Context``/``Exten`` from an agent's phone)."""
        chan = fields.get("Channel") or ""
        app = fields.get("Application") or ""
        if not chan:
            return False, "Channel not specified"
        if app.lower() == "chanspy":
            self.call_at(self.now, self._spy, chan, fields.get("Data") or "", action_id)
            return True, "Originate successfully queued"
        ext = chan.split("/", 1)[-1].split("@", 1)[0]
        if fields.get("Exten") and ext in self.agents:
            plan = self._random_outbound(self.agents[ext])
            plan.number = fields["Exten"]
            self.call_at(self.now, self._dial_out, plan, action_id)
            return True, "Originate successfully queued"
        return False, "Originate failed"

    # -- building blocks -------------------------------------------------------------------------

    def _build(self) -> None:
        cfg = self.cfg
        ext = cfg.first_ext
        login = int(cfg.epoch) - 1
        for spec in cfg.queues:
            q = self.queues[spec.name] = _Queue(spec)
            for i in range(spec.agents + spec.dynamic_agents):
                a = self.agents[str(ext)] = _Agent(str(ext))
                ext += 1
                a.queues.append(q)
                q.agents.append(a)
                if i < spec.agents:
                    a.members[q.name] = Member(a.name, a.interface, login)
                    q.idle.append(a)
                else:
                    a.state = "offline"
                    self.call_at(0.0, self._login, a, q)
        self._inbound_queues = [q.name for q in cfg.queues if not q.exten]
        if cfg.arrivals_per_min > 0:
            self.call_at(self.rng.expovariate(cfg.arrivals_per_min / 60.0), self._next_arrival)
        if cfg.outbound_per_min > 0:
            self.call_at(self.rng.expovariate(cfg.outbound_per_min / 60.0), self._next_outbound)
        if cfg.pauses_per_agent_h > 0 or cfg.logouts_per_agent_h > 0:
            for a in self.agents.values():
                self._schedule_break(a)

    def _ev(self, pairs: list[tuple[str, str]]) -> None:
        if self.cfg.timestamps:
            pairs.insert(2, ("Timestamp", f"{self._epoch + self.now:.6f}"))
        self._out.append((self.now, tuple(pairs)))

    def _noise(self, pairs: list[tuple[str, str]]) -> None:
        if self.cfg.verbose:
            self._ev(pairs)

    def _uid(self) -> str:
        return f"{int(self._epoch + self.now)}.{next(self._uids)}"

    def _epoch_now(self) -> int:
        return int(self._epoch + self.now)

    def _secs(self, since: float) -> str:
        """A duration as Asterisk reports it: whole epoch seconds now minus whole epoch seconds then."""
        return str(int(self._epoch + self.now) - int(self._epoch + since))

    def _vars(self, c: Chan, *pairs: tuple[str, str]) -> None:
        if self.cfg.verbose:
            for var, val in pairs:
                self._ev(w.varset(c, var, val))

    def _dial_vars(self, c: Chan, status: str, peer: Chan | None, dialstring: str, start: float,
                   answered: float | None) -> None:
        """What Dial() leaves on the calling channel when it returns."""
        if not self.cfg.verbose:
            return
        ms = int((self.now - start) * 1000)
        ans_ms = int((self.now - answered) * 1000) if answered is not None else 0
        self._vars(c, ("ANSWEREDTIME", str(ans_ms // 1000)), ("ANSWEREDTIME_MS", str(ans_ms)),
                   ("DIALEDTIME", str(ms // 1000)), ("DIALEDTIME_MS", str(ms)), ("DIALSTATUS", status),
                   ("DIALEDPEERNAME", peer.name if peer is not None else ""), ("DIALEDPEERNUMBER", dialstring))

    def _local_pair(self, exten: str, context: str, lid: str | None, cid: tuple[str, str] | None = None
                    ) -> tuple[Chan, Chan]:
        n = next(self._locals)
        base = f"Local/{exten}@{context}-{n:08x}"
        uid1 = self._uid()
        one = Chan(base + ";1", uid1, lid or uid1, 0, context, exten, self.now)
        two = Chan(base + ";2", self._uid(), lid or uid1, 4, context, exten, self.now)
        self.channels[one.uid] = one
        self.channels[two.uid] = two
        self._ev(w.chan_event("Newchannel", one))
        self._ev(w.chan_event("Newchannel", two))
        return one, two

    def _bridge(self) -> Bridge:
        return Bridge(str(uuid.UUID(int=self.rng.getrandbits(128), version=4)))

    def _enter(self, b: Bridge, c: Chan, swap: str | None = None) -> None:
        b.members.append(c)
        c.bridge = b
        self._ev(w.bridge_event("BridgeEnter", b, c, swap))

    def _leave(self, b: Bridge, c: Chan) -> None:
        if c in b.members:
            b.members.remove(c)
        c.bridge = None
        self._ev(w.bridge_event("BridgeLeave", b, c))

    def _gone(self, c: Chan, cause: int) -> None:
        self.channels.pop(c.uid, None)
        self._ev(w.hangup(c, cause))

    def _state(self, c: Chan, state: int) -> None:
        c.state = state
        self._ev(w.chan_event("Newstate", c))

    def _member_status(self, a: _Agent, status: int, in_call: bool = False) -> None:
        for qname, m in a.members.items():
            m.status, m.in_call = status, in_call
            self._ev(w.member_event("QueueMemberStatus", qname, m))

    def _queue_vars(self, c: Chan, q: _Queue) -> None:
        if not self.cfg.verbose:
            return
        values = (q.name, "0", q.spec.strategy, str(len(q.waiting)), str(q.holdtime()), str(q.talktime()),
                  str(q.completed), str(q.abandoned), str(q.spec.service_level_s), f"{q.perf():.1f}")
        for var, val in zip(_QUEUE_VARS, values, strict=True):
            self._ev(w.varset(c, var, val))

    # -- arrivals ------------------------------------------------------------------------------------

    def _open(self) -> bool:
        cfg = self.cfg
        if cfg.duration_s is not None and self.now >= cfg.duration_s:
            return False
        return cfg.max_calls is None or self.stats.offered + self.stats.outbound < cfg.max_calls

    def _next_arrival(self) -> None:
        if not self._open():
            return
        self._arrive(self._random_call())
        self.call_at(self.now + self.rng.expovariate(self.cfg.arrivals_per_min / 60.0), self._next_arrival)

    def _next_outbound(self) -> None:
        if not self._open():
            return
        agent = self._take_idle_agent()
        if agent is not None:
            self._dial_out(self._random_outbound(agent))
        self.call_at(self.now + self.rng.expovariate(self.cfg.outbound_per_min / 60.0), self._next_outbound)

    def _caller(self) -> tuple[str, str]:
        r = self.rng
        number = f"+86{r.choice(_PREFIXES)}{r.randrange(10**8):08d}"
        roll = r.random()
        if roll < 0.6:
            name = r.choice(_SURNAMES) + r.choice(_GIVEN)
        elif roll < 0.8:
            name = f"Customer {r.randrange(1000, 9999)}"
        else:
            name = "<unknown>"
        return number, name

    def _disposition(self, outbound: bool) -> DispositionPlan | None:
        cfg, r = self.cfg, self.rng
        if not outbound and r.random() >= cfg.inbound_disposition_share:
            return None
        roll = r.random()
        if roll < cfg.disposition_missing_share:
            self.stats.dispositions_missing += 1
            return None
        if roll < cfg.disposition_missing_share + cfg.disposition_late_share:
            delay = r.uniform(310.0, 600.0)
        else:
            delay = r.uniform(*cfg.disposition_delay_s)
        return DispositionPlan(r.choice(cfg.tags), delay, r.random() < cfg.disposition_by_pause_share)

    def _random_call(self) -> CallPlan:
        cfg, r = self.cfg, self.rng
        number, name = self._caller()
        transfer: TransferPlan | None = None
        roll = r.random()
        talk = max(cfg.talk_min_s, r.expovariate(1.0 / cfg.talk_mean_s))
        if roll < cfg.blind_transfer_share and cfg.transfer_queue in self.queues:
            transfer = TransferPlan("blind", r.uniform(5.0, 60.0), cfg.transfer_queue,
                                    talk_after_s=max(cfg.talk_min_s, r.expovariate(1.0 / cfg.talk_mean_s)))
        elif roll < cfg.blind_transfer_share + cfg.attended_transfer_share:
            transfer = TransferPlan("attended", r.uniform(5.0, 60.0), "", consult_s=r.uniform(3.0, 20.0),
                                    talk_after_s=max(cfg.talk_min_s, r.expovariate(1.0 / cfg.talk_mean_s)))
        queue = cfg.inbound_queue
        if queue == "*":  # every queue that is not a transfer target takes callers
            queue = r.choice(self._inbound_queues)
        return CallPlan(
            queue=queue,
            caller=number,
            caller_name=name,
            patience_s=r.expovariate(1.0 / cfg.patience_mean_s) if cfg.patience_mean_s > 0 else math.inf,
            talk_s=talk,
            hangup="agent" if r.random() < cfg.agent_hangs_up_first_share else "customer",
            transfer=transfer,
            record=r.random() < cfg.recorded_share,
            disposition=self._disposition(False),
        )

    def _random_outbound(self, agent: _Agent) -> OutboundPlan:
        cfg, r = self.cfg, self.rng
        answered = r.random() < cfg.outbound_answer_share
        return OutboundPlan(
            agent=agent.ext,
            number=f"{r.choice(_PREFIXES)}{r.randrange(10**8):08d}",
            agent_ring_s=r.uniform(1.0, 3.0),
            ring_s=r.uniform(*cfg.outbound_ring_s) if answered else 30.0,
            answered=answered,
            talk_s=max(cfg.talk_min_s, r.expovariate(1.0 / cfg.talk_mean_s)),
            hangup="agent" if r.random() < 0.5 else "customer",
            disposition=self._disposition(True),
        )

    def _agent_ring(self, agent: _Agent, plan: CallPlan, timeout: float) -> float | None:
        """How long this agent lets it ring before answering (None: never)."""
        if agent.ext in plan.ring_s:
            return plan.ring_s[agent.ext]
        cfg, r = self.cfg, self.rng
        roll = r.random()
        if roll < cfg.no_answer_share:
            self.stats.no_answers += 1
            return None
        if roll < cfg.no_answer_share + cfg.slow_answer_share:
            self.stats.slow_answers += 1
            return min(r.uniform(15.0, 25.0), timeout + 1.0)
        return r.uniform(*cfg.ring_s)

    # -- inbound: arrival and queue ------------------------------------------------------------------

    def _arrive(self, plan: CallPlan) -> None:
        self.stats.offered += 1
        c1, c2 = self._local_pair("5000", "inbound", None)
        lid = c1.uid
        truth = CallTruth(lid, "inbound", plan.queue, plan.caller, self.now)
        call = _InCall(plan, c1, c2, truth)
        self.calls[lid] = call
        c1.app, c1.appdata = "Wait", "3600"
        if self.cfg.originated_callers:
            self._ev(w.originate_response(f"sim-{next(self._originates)}", c1, 4, app=("Wait", "3600"),
                                          cid=(plan.caller, plan.caller_name)))
        self._noise(w.newexten(c1, "AppDial2", "(Outgoing Line)"))
        for c in (c1, c2):
            c.cid_num, c.cid_name = plan.caller, plan.caller_name
            self._noise(w.newcallerid(c))
            c.cl_num, c.cl_name = plan.caller, plan.caller_name
            self._noise(w.chan_event("NewConnectedLine", c))
        self._ev(w.local_bridge(c1, c2))
        self._ev(w.dial("DialBegin", None, c1, ("DialString", "5000@inbound/n")))
        self._noise(w.newexten(c2, "NoOp", f'Inbound call to {plan.queue} from "{plan.caller_name}" <{plan.caller}>'))
        c2.priority = 2
        self._noise(w.newexten(c2, "Answer", ""))
        self._state(c2, 6)
        self._state(c1, 6)
        self._ev(w.dial("DialEnd", None, c1, ("DialStatus", "ANSWER")))
        self._noise(w.device_state("Local/5000@inbound", "INUSE"))
        self._noise(w.device_state("Local/5000@inbound", "INUSE"))
        call.job = self.call_at(self.now + 0.5, self._join, call, self.queues[plan.queue])

    def _join(self, call: _InCall, q: _Queue) -> None:
        c2 = call.c2
        c2.priority += 1
        c2.app, c2.appdata = "Queue", f"{q.name},tT"
        self._noise(w.newexten(c2, "Queue", f"{q.name},tT"))
        if call.queue is None:
            for var in ("ANSWEREDTIME", "ANSWEREDTIME_MS", "DIALEDTIME", "DIALEDTIME_MS", "QUEUEWAIT", "QUEUEWAIT_MS"):
                self._noise(w.varset(c2, var, ""))
        call.queue = q
        call.join_t = self.now
        q.join(call)
        q.pending.append(call)
        call.position = len(q.waiting)
        if len(q.waiting) == 1:
            self._noise(w.device_state(f"Queue:{q.name}", "RINGING"))
        self._ev(w.queue_caller("QueueCallerJoin", c2, q.name, ("Position", str(call.position)),
                                ("Count", str(len(q.waiting)))))
        self._ev(w.chan_event("MusicOnHoldStart", c2, w.CALL, ("Class", "default")))
        patience = call.plan.patience_s
        if math.isfinite(patience) and call.transfers == 0:
            call.abandon_job = self.call_at(call.join_t + patience, self._abandon, call)
        self._dispatch(q)

    def _take_idle(self, q: _Queue) -> _Agent | None:
        while q.idle:
            a = q.idle.popleft()
            if a.state == "idle" and q.name in a.members:
                return a
        return None

    def _take_idle_agent(self) -> _Agent | None:
        for q in self.queues.values():
            a = self._take_idle(q)
            if a is not None:
                return a
        return None

    def _dispatch(self, q: _Queue) -> None:
        """Ring free members for the callers that want one, in queue order (O(1) per ring)."""
        pending = q.pending
        while pending:
            call = pending[0]
            if call.ended or call.leg is not None or call.legs or call not in q.waiting:
                pending.popleft()
                continue
            a = self._take_idle(q)
            if a is None:
                return
            pending.popleft()
            self._ring(call, a, q)
            if q.spec.strategy == "ringall":
                while (a := self._take_idle(q)) is not None:
                    self._ring(call, a, q)

    def _requeue(self, call: _InCall, q: _Queue) -> None:
        """After the retry pause, the caller wants the next member (ahead of later callers)."""
        if not call.ended and call.leg is None and not call.legs and call in q.waiting:
            q.pending.appendleft(call)
            self._dispatch(q)

    def _ring(self, call: _InCall, agent: _Agent, q: _Queue | None, via: Chan | None = None) -> _Leg:
        """Ring ``agent`` for ``call``: a queue leg (``q``), or a Dial from ``via`` (attended transfer)."""
        caller = call.c2 if via is None else via
        a1, a2 = self._local_pair(agent.ext, "agents", call.c1.lid)
        leg = _Leg(agent, a1, a2, q, self.now)
        agent.state = "ringing"
        agent.call = call
        call.legs[agent.ext] = leg
        a1.app, a1.appdata = "AppQueue", "(Outgoing Line)"
        self._noise(w.newexten(a1, "AppQueue", "(Outgoing Line)"))
        a1.cid_num, a1.cid_name = call.plan.caller, call.plan.caller_name
        self._noise(w.newcallerid(a1))
        self._noise(w.varset(a1, "DIALEDPEERNUMBER", f"{agent.ext}@agents/n"))
        self._noise(w.varset(a2, "DIALEDPEERNUMBER", f"{agent.ext}@agents/n"))
        a2.cid_num, a2.cid_name = a1.cid_num, a1.cid_name
        a2.cl_num, a2.cl_name = a1.cid_num, a1.cid_name
        self._noise(w.newcallerid(a2))
        self._noise(w.chan_event("NewConnectedLine", a2))
        self._ev(w.local_bridge(a1, a2))
        if q is not None:
            self._ev(w.agent_event("AgentCalled", caller, a1, q.name, agent.members[q.name]))
            self._ev(w.dial("DialBegin", caller, a1, ("DialString", f"Local/{agent.ext}@agents/n")))
            timeout = q.spec.timeout_s
        else:
            self._ev(w.dial("DialBegin", caller, a1, ("DialString", f"{agent.ext}@agents/n")))
            timeout = 60.0
        ring = self._agent_ring(agent, call.plan, timeout)
        if q is None and ring is None:  # a consult call is answered (the colleague was asked first)
            ring = self.rng.uniform(*self.cfg.ring_s)
        leg.ring_s = timeout if ring is None else min(ring, timeout)
        talk = f"{call.plan.talk_s:.0f}"
        if self.cfg.verbose:
            for prio, app, data, var in ((1, "NoOp", f"Agent {agent.ext} handset", ""),
                                         (2, "Set", f"RING={ring or 999:g}", "RING"),
                                         (3, "Set", f"TALK={talk}", "TALK"),
                                         (4, "Log", f"NOTICE,agent={agent.ext} channel={a2.name}", ""),
                                         (5, "Ringing", "", "")):
                a2.priority = prio
                self._ev(w.newexten(a2, app, data))
                if var:
                    self._ev(w.varset(a2, var, data.split("=", 1)[1]))
        a1.exten = caller.exten
        self._state(a1, 5)
        self._noise(w.newexten(a1, "AppQueue", "(Outgoing Line)"))
        a1.cl_num, a1.cl_name = caller.cid_num, caller.cid_name
        self._noise(w.chan_event("NewConnectedLine", a1))
        a2.priority = 6
        a2.app, a2.appdata = "Wait", f"{ring or 999:g}"
        self._noise(w.newexten(a2, "Wait", a2.appdata))
        self._noise(w.device_state(agent.device, "INUSE"))
        self._member_status(agent, 2)
        self._ev(w.dial("DialState", caller, a1, ("DialStatus", "RINGING")))
        if ring is None or ring >= timeout:
            leg.job = self.call_at(self.now + timeout, self._no_answer, call, leg)
        else:
            leg.job = self.call_at(self.now + ring, self._answer, call, leg)
        return leg

    def _drop_leg(self, call: _InCall, leg: _Leg, cause: int, caller: Chan, dispatch: bool = True) -> None:
        """A ringall loser: two DialEnd CANCEL, the member legs hang up with ``cause`` (26)."""
        if leg.job is not None:
            leg.job.cancel()
        call.legs.pop(leg.agent.ext, None)
        self._ev(w.dial("DialEnd", caller, leg.c1, ("DialStatus", "CANCEL")))
        self._ev(w.dial("DialEnd", caller, leg.c1, ("DialStatus", "CANCEL")))
        self._ev(w.hangup_request(leg.c2, cause))
        self._gone(leg.c1, cause)
        self._ev(w.hangup_request(leg.c2, 16, soft=True))
        self._gone(leg.c2, cause)
        self._noise(w.device_state(leg.agent.device, "NOT_INUSE"))
        call.truth.rings.append((leg.agent.name, leg.start, self.now, "cancelled"))
        self._agent_free(leg.agent, dispatch)

    def _no_answer(self, call: _InCall, leg: _Leg) -> None:
        q = leg.queue
        assert q is not None
        call.legs.pop(leg.agent.ext, None)
        self._ev(w.agent_event("AgentRingNoAnswer", call.c2, leg.c1, q.name, leg.agent.members[q.name],
                               ("RingTime", str(round((self.now - leg.start) * 1000)))))
        self._ev(w.dial("DialEnd", call.c2, leg.c1, ("DialStatus", "NOANSWER")))
        self._ev(w.dial("DialEnd", call.c2, leg.c1, ("DialStatus", "CANCEL")))
        self._ev(w.hangup_request(leg.c2, 0))
        self._gone(leg.c1, 0)
        self._ev(w.hangup_request(leg.c2, 16, soft=True))
        self._gone(leg.c2, 0)
        self._noise(w.device_state(leg.agent.device, "NOT_INUSE"))
        call.truth.rings.append((leg.agent.name, leg.start, self.now, "noanswer"))
        self._agent_free(leg.agent, dispatch=False)
        if not call.legs:
            call.job = self.call_at(self.now + q.spec.retry_s, self._requeue, call, q)
        self._dispatch(q)  # the member is free again for the callers behind

    def _agent_free(self, agent: _Agent, dispatch: bool = True, status: bool = True) -> None:
        agent.call = None
        if agent.state in ("ringing", "busy"):
            agent.state = "idle"
        if status:
            self._member_status(agent, 1)
        if agent.state == "idle":
            for q in agent.queues:
                q.idle.append(agent)
            if dispatch:
                for q in agent.queues:
                    self._dispatch(q)

    def _abandon(self, call: _InCall) -> None:
        q = call.queue
        if call.ended or call.leg is not None or q is None or call not in q.waiting:
            return
        c1, c2 = call.c1, call.c2
        self._ev(w.hangup_request(c2, 16))
        self._gone(c1, 16)
        self._noise(w.device_state("Local/5000@inbound", "NOT_INUSE"))
        self._ev(w.chan_event("MusicOnHoldStop", c2))
        legs = list(call.legs.values())
        for leg in legs:
            if leg.job is not None:
                leg.job.cancel()
            call.legs.pop(leg.agent.ext, None)
            self._ev(w.dial("DialEnd", c2, leg.c1, ("DialStatus", "CANCEL")))
            self._ev(w.dial("DialEnd", c2, leg.c1, ("DialStatus", "CANCEL")))
            self._ev(w.hangup_request(leg.c2, 0))
            self._gone(leg.c1, 0)
        wait = self.now - call.join_t
        for var, val in (("QUEUEWAIT", str(int(wait))), ("QUEUEWAIT_MS", str(int(wait * 1000))),
                         ("ANSWEREDTIME", "0"), ("ANSWEREDTIME_MS", "0")):
            self._noise(w.varset(c2, var, val))
        for leg in legs:
            self._ev(w.hangup_request(leg.c2, 16, soft=True))
        self._noise(w.varset(c2, "ABANDONED", "TRUE"))
        self._queue_vars(c2, q)
        position = q.leave(call)
        q.abandoned += 1
        self.stats.abandoned += 1
        self._ev(w.queue_caller("QueueCallerAbandon", c2, q.name, ("Position", str(position)),
                                ("OriginalPosition", str(call.position)), ("HoldTime", self._secs(call.join_t))))
        self._queue_vars(c2, q)
        if not q.waiting:
            self._noise(w.device_state(f"Queue:{q.name}", "NOT_INUSE"))
        self._ev(w.queue_caller("QueueCallerLeave", c2, q.name, ("Position", str(position)),
                                ("Count", str(len(q.waiting)))))
        self._ev(w.hangup_request(c2, 16, soft=True))
        self._gone(c2, 16)
        for leg in legs:
            self._gone(leg.c2, 0)
            self._noise(w.device_state(leg.agent.device, "NOT_INUSE"))
            call.truth.rings.append((leg.agent.name, leg.start, self.now, "cancelled"))
        call.truth.abandoned = True
        call.truth.first_hangup = "customer"
        self._end(call)
        for leg in legs:
            self._agent_free(leg.agent)

    # -- inbound: answer, talk, hang-up ----------------------------------------------------------------

    def _answer(self, call: _InCall, leg: _Leg) -> None:
        q = leg.queue
        if q is None:
            self._consult_answer(call, leg)
            return
        c2, a1, a2, agent = call.c2, leg.c1, leg.c2, leg.agent
        call.legs.pop(agent.ext, None)
        call.leg = leg
        if call.abandon_job is not None:
            call.abandon_job.cancel()
        a2.priority = 7
        self._noise(w.newexten(a2, "Answer", ""))
        self._state(a2, 6)
        self._state(a1, 6)
        self._ev(w.dial("DialEnd", c2, a1, ("DialStatus", "ANSWER")))
        losers = list(call.legs.values())
        for other in losers:
            self._drop_leg(call, other, 26, c2, dispatch=False)
        self._noise(w.device_state(agent.device, "INUSE"))
        self._noise(w.device_state(agent.device, "INUSE"))
        self._ev(w.chan_event("MusicOnHoldStop", c2))
        m = agent.members[q.name]
        if self.cfg.verbose:
            for c in (c2, a1):
                for var, val in (("MEMBERINTERFACE", m.interface), ("MEMBERNAME", m.name),
                                 ("MEMBERCALLS", str(m.calls_taken)), ("MEMBERLASTCALL", str(m.last_call)),
                                 ("MEMBERPENALTY", "0"), ("MEMBERDYNAMIC", "1" if m.dynamic else "0"),
                                 ("MEMBERREALTIME", "0")):
                    self._ev(w.varset(c, var, val))
        wait = self.now - call.join_t
        for c in (c2, a1):
            self._noise(w.varset(c, "QEHOLDTIME", str(int(wait))))
            self._noise(w.varset(c, "QEORIGINALPOS", str(call.position)))
        self._queue_vars(c2, q)
        self._queue_vars(a1, q)
        position = q.leave(call)
        if not q.waiting:
            self._noise(w.device_state(f"Queue:{q.name}", "NOT_INUSE"))
        self._ev(w.queue_caller("QueueCallerLeave", c2, q.name, ("Position", str(position)),
                                ("Count", str(len(q.waiting)))))
        self._noise(w.varset(c2, "QUEUEPOSITION", str(position)))
        self._noise(w.varset(c2, "QUEUEWAIT", str(int(wait))))
        self._noise(w.varset(c2, "QUEUEWAIT_MS", str(int(wait * 1000))))
        self._ev(w.agent_event("AgentConnect", c2, a1, q.name, m, ("HoldTime", self._secs(call.join_t)),
                               ("RingTime", self._secs(leg.start))))
        q.hold_total += wait
        if wait <= q.spec.service_level_s:
            q.in_sl += 1
        b = call.bridge = self._bridge()
        self._ev(w.bridge_event("BridgeCreate", b))
        self._enter(b, a1)
        self._noise(w.device_state(agent.device, "INUSE"))
        self._noise(w.device_state(agent.device, "INUSE"))
        self._enter(b, c2)
        self._noise(w.varset(a1, "BRIDGEPEER", c2.name))
        self._noise(w.varset(c2, "BRIDGEPEER", a1.name))
        agent.state = "busy"
        call.leg, call.agent, call.connect_t = leg, agent, self.now
        t = call.truth
        t.rings.append((agent.name, leg.start, self.now, "answered"))
        if t.answered_by is None:
            t.answered_by, t.answered_at = agent.name, self.now
            self.stats.answered += 1
        else:
            t.transfers[-1] += f"->{agent.name}"
        if call.plan.record and not t.recorded:
            t.recorded = True
            self._ev(w.chan_event("MixMonitorStart", c2))
        elif not t.recorded and call.transfers == 0:
            self.stats.unrecorded += 1
        a2.app, a2.appdata = "Wait", "3600"
        self.call_at(self.now + 0.5, self._handset_talking, a2)
        plan = call.plan
        if plan.transfer is not None and call.transfers == 0:
            x = plan.transfer
            fn = self._blind_transfer if x.kind == "blind" else self._attended_start
            call.job = self.call_at(self.now + x.after_s, fn, call)
        else:
            talk = plan.talk_s if call.transfers == 0 or plan.transfer is None else plan.transfer.talk_after_s
            side = plan.hangup if call.transfers == 0 else "customer"
            call.job = self.call_at(self.now + talk, self._hangup_queue_call, call, side)
        for other in losers:
            for lq in other.agent.queues:
                self._dispatch(lq)

    def _handset_talking(self, a2: Chan) -> None:
        if a2.uid not in self.channels or not self.cfg.verbose:
            return
        for prio, app, data in ((8, "Log", f"NOTICE,answered {a2.name}"), (9, "PlayTones", "440/300,0/700"),
                                (10, "Wait", "3600")):
            a2.priority = prio
            self._ev(w.newexten(a2, app, data))

    def _hangup_queue_call(self, call: _InCall, side: Side) -> None:
        leg, agent, q, b = call.leg, call.agent, call.queue, call.bridge
        if call.ended or leg is None or agent is None or q is None or b is None:
            return
        c1, c2, a1, a2 = call.c1, call.c2, leg.c1, leg.c2
        talk = self.now - call.connect_t
        m = agent.members.get(q.name)
        if side == "customer":
            self._ev(w.hangup_request(c2, 16))
            if m is not None:
                self._ev(w.agent_event("AgentComplete", c2, a1, q.name, m, ("HoldTime", str(
                    int(self._epoch + call.connect_t) - int(self._epoch + call.join_t))),
                    ("TalkTime", self._secs(call.connect_t)), ("Reason", "caller")))
            self._gone(c1, 16)
            self._noise(w.varset(c2, "BRIDGEPEER", ""))
            self._noise(w.varset(a1, "BRIDGEPEER", ""))
            self._leave(b, c2)
            self._count_completed(q, talk)
            self._queue_vars(c2, q)
            self._dial_vars(c2, "ANSWER", a1, "", call.join_t, call.connect_t)
            self._queue_vars(c2, q)
            self._ev(w.hangup_request(c2, 16, soft=True))
            self._gone(c2, 16)
            self._noise(w.device_state("Local/5000@inbound", "NOT_INUSE"))
            self._leave(b, a1)
            self._ev(w.hangup_request(a2, 16))
            self._gone(a1, 16)
            self._noise(w.device_state(agent.device, "NOT_INUSE"))
            self._ev(w.bridge_event("BridgeDestroy", b))
            self._ev(w.hangup_request(a2, 16, soft=True))
            self._gone(a2, 16)
        else:
            self.stats.agent_first += 1
            a2.priority = 12
            self._ev(w.hangup_request(a2, 16, soft=True))
            self._ev(w.hangup_request(a1, 16))
            if m is not None:
                self._ev(w.agent_event("AgentComplete", c2, a1, q.name, m, ("HoldTime", str(
                    int(self._epoch + call.connect_t) - int(self._epoch + call.join_t))),
                    ("TalkTime", self._secs(call.connect_t)), ("Reason", "agent")))
            self._noise(w.varset(c2, "BRIDGEPEER", ""))
            self._noise(w.varset(a1, "BRIDGEPEER", ""))
            self._leave(b, a1)
            self._leave(b, c2)
            self._count_completed(q, talk)
            self._queue_vars(c2, q)
            self._dial_vars(c2, "ANSWER", a1, "", call.join_t, call.connect_t)
            self._queue_vars(c2, q)
            self._ev(w.hangup_request(c2, 16, soft=True))
            self._ev(w.hangup_request(c1, 16))
            self._gone(c2, 16)
            self._gone(a1, 16)
            self._gone(a2, 16)
            self._ev(w.bridge_event("BridgeDestroy", b))
            self._gone(c1, 16)
            self._noise(w.device_state(agent.device, "NOT_INUSE"))
        call.truth.first_hangup = call.truth.first_hangup or side
        self._end(call)
        self._after_call(agent, call.plan.disposition, call.c1.lid)

    def _count_completed(self, q: _Queue, talk: float) -> None:
        q.completed += 1
        q.talk_total += talk

    def _end(self, call: _InCall | _OutCall) -> None:
        call.ended = True
        if call.job is not None:
            call.job.cancel()
        lid = call.truth.linkedid
        self.calls.pop(lid, None)
        call.truth.end = self.now
        if self.cfg.keep_truth:
            self.truth.append(call.truth)

    def _after_call(self, agent: _Agent, plan: DispositionPlan | None, lid: str, queue_call: bool = True) -> None:
        """The agent's wrap-up: a disposition by pause (``wrapup:<tag>`` ... unpause) or by UserEvent."""
        m_all = agent.members
        if queue_call:
            for m in m_all.values():
                m.calls_taken += 1
                m.last_call = self._epoch_now()
        if plan is None or not m_all:
            self._agent_free(agent, status=queue_call)
            return
        self.stats.dispositions += 1
        if plan.by_pause:
            agent.call = None
            agent.state = "paused"
            if queue_call:
                self._member_status(agent, 1)
            self._set_paused(agent, True, f"wrapup:{plan.tag}")
            self.call_at(self.now + plan.delay_s, self._unpause, agent)
        else:
            self._agent_free(agent, status=queue_call)
            self.call_at(self.now + plan.delay_s, self._user_event, agent, plan.tag, lid)

    def _user_event(self, agent: _Agent, tag: str, lid: str) -> None:
        self._ev(w.user_event(self.cfg.disposition_event, None,
                              (("Linkedid", lid), ("Tag", tag), ("Agent", agent.name))))

    def _set_paused(self, agent: _Agent, paused: bool, reason: str) -> None:
        for qname, m in agent.members.items():
            m.paused = paused
            m.reason = reason if paused else ""
            if paused:
                m.last_pause = self._epoch_now()
            self._ev(w.member_event("QueueMemberPause", qname, m))

    def _unpause(self, agent: _Agent) -> None:
        if agent.state != "paused":
            return
        agent.state = "idle"
        self._set_paused(agent, False, "")
        for q in agent.queues:
            if q.name in agent.members:
                q.idle.append(agent)
        for q in agent.queues:
            self._dispatch(q)

    # -- transfers ---------------------------------------------------------------------------------------

    def _blind_transfer(self, call: _InCall) -> None:
        leg, agent, q, b, x = call.leg, call.agent, call.queue, call.bridge, call.plan.transfer
        if call.ended or leg is None or agent is None or q is None or b is None or x is None:
            return
        target = self.queues.get(x.target)
        if target is None:
            call.job = self.call_at(self.now, self._hangup_queue_call, call, "customer")
            return
        c2, a1, a2 = call.c2, leg.c1, leg.c2
        talk = self.now - call.connect_t
        call.transfers += 1
        self.stats.transfers += 1
        call.truth.transfers.append(f"blind:{agent.name}->{target.name}")
        self._ev(w.chan_event("Unhold", a1))
        self._ev(w.blind_transfer(a1, c2, b, "xfer", target.spec.exten or target.name))
        m = agent.members.get(q.name)
        if m is not None:
            self._ev(w.agent_event("AgentComplete", c2, a1, q.name, m, ("HoldTime", str(
                int(self._epoch + call.connect_t) - int(self._epoch + call.join_t))),
                ("TalkTime", self._secs(call.connect_t)), ("Reason", "transfer")))
        self._count_completed(q, talk)
        self._leave(b, a1)
        self._ev(w.hangup_request(a2, 16))
        self._gone(a1, 16)
        c2.context, c2.exten, c2.priority = "xfer", target.spec.exten or target.name, 1
        self._leave(b, c2)
        self._ev(w.hangup_request(a2, 16, soft=True))
        self._ev(w.bridge_event("BridgeDestroy", b))
        self._gone(a2, 16)
        call.leg = call.agent = call.bridge = None
        self._after_call(agent, None, c2.lid)
        if call.plan.transfer is not None and self.rng.random() < self.cfg.slow_transfer_share:
            for a in target.agents:
                call.plan.ring_s.setdefault(a.ext, None if target.spec.timeout_s < 130 else
                                            self.rng.uniform(130.0, 180.0))
        self._join(call, target)

    def _attended_start(self, call: _InCall) -> None:
        leg, agent, b, x = call.leg, call.agent, call.bridge, call.plan.transfer
        if call.ended or leg is None or agent is None or b is None or x is None:
            return
        target = self.agents.get(x.target) if x.target else None
        if target is None or target.state != "idle":
            target = self._take_idle_agent()
        if target is None:
            call.job = self.call_at(self.now, self._hangup_queue_call, call, call.plan.hangup)
            return
        for q in target.queues:  # it is reserved for the consult now
            with contextlib.suppress(ValueError):
                q.idle.remove(target)
        target.state = "ringing"
        a1 = leg.c1
        self._ev(w.dtmf_end(a1, "*"))
        self._ev(w.dtmf_end(a1, "2"))
        self._ev(w.chan_event("Hold", a1))
        self._ev(w.chan_event("MusicOnHoldStart", call.c2, w.CALL, ("Class", "default")))
        for d in target.ext:
            self._ev(w.dtmf_end(a1, d))
        call.job = self.call_at(self.now + 0.5, self._attended_dial, call, target)

    def _attended_dial(self, call: _InCall, target: _Agent) -> None:
        leg, b = call.leg, call.bridge
        if call.ended or leg is None or b is None:
            self._agent_free(target)
            return
        call.transfers += 1
        self.stats.transfers += 1
        call.truth.transfers.append(f"attended:{leg.agent.name}->{target.name}")
        x1, x2 = self._local_pair(target.ext, "xfer", call.c1.lid)
        x1.cid_num, x1.cid_name = leg.agent.ext, leg.agent.name
        self._vars(leg.c1, ("TRANSFER_CONTEXT", "xfer"))
        self._vars(x1, ("TRANSFERERNAME", leg.c1.name), ("ATTENDEDTRANSFER", leg.c1.name))
        self._vars(x2, ("TRANSFERERNAME", leg.c1.name), ("ATTENDEDTRANSFER", leg.c1.name))
        self._noise(w.newexten(x2, "NoOp", f"Transfer to agent {target.ext}"))
        self._noise(w.newexten(x2, "Dial", f"Local/{target.ext}@agents/n,60,tT"))
        b2 = self._bridge()
        self._ev(w.bridge_event("BridgeCreate", b2))
        self._ev(w.local_bridge(x1, x2))
        x2.priority = 2
        x2.app, x2.appdata = "Dial", f"Local/{target.ext}@agents/n,60,tT"
        t_leg = self._ring(call, target, None, via=x2)
        self._enter(b2, x1)
        self._state(x1, 5)
        self._ev(w.dial("DialState", None, x1, ("DialStatus", "RINGING")))
        self._leave(b, leg.c1)
        self._enter(b2, leg.c1)
        call.xfer = _Consult(x1, x2, b2, t_leg)

    def _consult_answer(self, call: _InCall, t_leg: _Leg) -> None:
        xf = call.xfer
        if xf is None or call.ended:
            return
        x1, x2 = xf.x1, xf.x2
        t1, t2 = t_leg.c1, t_leg.c2
        call.legs.pop(t_leg.agent.ext, None)
        self._state(t2, 6)
        self._state(t1, 6)
        self._ev(w.dial("DialEnd", x2, t1, ("DialStatus", "ANSWER")))
        self._dial_vars(x2, "ANSWER", t1, f"{t_leg.agent.ext}@agents/n", t_leg.start, self.now)
        ring_ms = str(int((self.now - t_leg.start) * 1000))
        self._vars(x2, ("RINGTIME", self._secs(t_leg.start)), ("RINGTIME_MS", ring_ms),
                   ("PROGRESSTIME", self._secs(t_leg.start)), ("DIALSTATUS", "ANSWER"))
        self._state(x2, 6)
        b3 = self._bridge()
        self._ev(w.bridge_event("BridgeCreate", b3))
        t1.exten = ""
        self._enter(b3, t1)
        self._state(x1, 6)
        self._ev(w.dial("DialEnd", None, x1, ("DialStatus", "ANSWER")))
        self._enter(b3, x2)
        self._vars(t1, ("BRIDGEPEER", x2.name))
        self._vars(x2, ("BRIDGEPEER", t1.name))
        if self.cfg.verbose:
            for prio, app, data in ((7, "Answer", ""), (8, "Log", f"NOTICE,answered {t2.name}"),
                                    (9, "PlayTones", "440/300,0/700"), (10, "Wait", "3600")):
                t2.priority = prio
                self._ev(w.newexten(t2, app, data))
        t_leg.agent.state = "busy"
        call.truth.rings.append((t_leg.agent.name, t_leg.start, self.now, "answered"))
        xf.b3 = b3
        x = call.plan.transfer
        call.job = self.call_at(self.now + (x.consult_s if x else 4.0), self._attended_complete, call)

    def _attended_complete(self, call: _InCall) -> None:
        leg, agent, q, b, xf = call.leg, call.agent, call.queue, call.bridge, call.xfer
        if call.ended or leg is None or agent is None or q is None or b is None or xf is None:
            return
        x1, b2, t_leg = xf.x1, xf.b2, xf.leg
        a1, a2, c2 = leg.c1, leg.c2, call.c2
        talk = self.now - call.connect_t
        a2.priority = 9
        self._ev(w.hangup_request(a2, 16, soft=True))
        self._ev(w.hangup_request(a1, 16))
        self._gone(a2, 16)
        m = agent.members.get(q.name)
        for mm in agent.members.values():
            mm.calls_taken += 1
        self._member_status(agent, 1)
        self._leave(b2, a1)
        self._ev(w.chan_event("MusicOnHoldStop", c2))
        self._ev(w.bridge_merge(b, b2))
        self._leave(b2, x1)
        self._enter(b, x1)
        self._vars(c2, ("BRIDGEPEER", x1.name))
        self._vars(x1, ("BRIDGEPEER", c2.name))
        self._ev(w.attended_transfer(a1, b, a1, b2, c2))
        if m is not None:
            self._ev(w.agent_event("AgentComplete", c2, a1, q.name, m, ("HoldTime", str(
                int(self._epoch + call.connect_t) - int(self._epoch + call.join_t))),
                ("TalkTime", self._secs(call.connect_t)), ("Reason", "transfer")))
        self._count_completed(q, talk)
        self._ev(w.bridge_event("BridgeDestroy", b2))
        if a1 in b.members:
            b.members.remove(a1)
        self._gone(a1, 16)
        agent.call = None
        agent.state = "idle"
        for qq in agent.queues:
            if qq.name in agent.members:
                qq.idle.append(agent)
        call.leg, call.agent = t_leg, t_leg.agent
        call.job = self.call_at(self.now + 0.25, self._optimize, call)
        for qq in agent.queues:
            self._dispatch(qq)

    def _optimize(self, call: _InCall) -> None:
        b, xf = call.bridge, call.xfer
        if call.ended or b is None or xf is None or xf.b3 is None:
            return
        x1, x2, b3, t1 = xf.x1, xf.x2, xf.b3, xf.leg.c1
        self._ev(w.local_optimization("LocalOptimizationBegin", x1, x2, t1, x2.uid, "0"))
        self._leave(b3, t1)
        self._leave(b, x1)
        self._enter(b, t1, swap=x1.uid)
        self._vars(c2 := call.c2, ("BRIDGEPEER", t1.name))
        self._vars(t1, ("BRIDGEPEER", c2.name))
        self._ev(w.local_optimization("LocalOptimizationEnd", x1, x2, None, "", "0"))
        self._leave(b3, x2)
        self._ev(w.hangup_request(x2, 16))
        self._gone(x1, 16)
        self._ev(w.hangup_request(x2, 16, soft=True))
        self._gone(x2, 16)
        self._ev(w.bridge_event("BridgeDestroy", b3))
        call.xfer = None
        x = call.plan.transfer
        call.job = self.call_at(self.now + (x.talk_after_s if x else 10.0), self._hangup_after_attended, call)

    def _hangup_after_attended(self, call: _InCall) -> None:
        leg, agent, b = call.leg, call.agent, call.bridge
        if call.ended or leg is None or agent is None or b is None:
            return
        c1, c2, t1, t2 = call.c1, call.c2, leg.c1, leg.c2
        self._ev(w.hangup_request(c2, 16))
        self._gone(c1, 16)
        self._vars(c2, ("BRIDGEPEER", ""))
        self._vars(t1, ("BRIDGEPEER", ""))
        self._leave(b, c2)
        q = call.queue
        if q is not None:
            self._queue_vars(c2, q)
            self._dial_vars(c2, "ANSWER", None, "", call.join_t, call.connect_t)
            self._queue_vars(c2, q)
        self._leave(b, t1)
        self._ev(w.hangup_request(t2, 16))
        self._gone(t1, 16)
        self._ev(w.hangup_request(c2, 16, soft=True))
        self._gone(c2, 16)
        self._ev(w.bridge_event("BridgeDestroy", b))
        call.truth.first_hangup = call.truth.first_hangup or "customer"
        self._end(call)
        self._after_call(agent, None, c1.lid)
        self._ev(w.hangup_request(t2, 16, soft=True))
        self._gone(t2, 16)

    # -- outbound (click-to-call from an agent's phone) -------------------------------------------------

    def _dial_out(self, plan: OutboundPlan, action_id: str | None = None) -> None:
        agent = self.agents.get(plan.agent)
        if agent is None:
            return
        for q in agent.queues:
            with contextlib.suppress(ValueError):
                q.idle.remove(agent)
        agent.state = "busy"
        self.stats.outbound += 1
        p1, p2 = self._local_pair(agent.ext, "agent-phone", None)
        truth = CallTruth(p1.uid, "outbound", None, plan.number, self.now)
        call = _OutCall(plan, agent, p1, p2, truth)
        agent.call = call
        self.calls[p1.uid] = call
        call.action_id = action_id or f"sim-{next(self._originates)}"
        self._noise(w.newexten(p1, "AppDial2", "(Outgoing Line)"))
        for c in (p1, p2):
            c.cid_num, c.cid_name = agent.ext, agent.name
            self._noise(w.newcallerid(c))
            c.cl_num, c.cl_name = agent.ext, agent.name
            self._noise(w.chan_event("NewConnectedLine", c))
        self._ev(w.local_bridge(p1, p2))
        self._ev(w.dial("DialBegin", None, p1, ("DialString", f"{agent.ext}@agent-phone/n")))
        self._noise(w.newexten(p2, "NoOp", f"Agent {agent.ext} phone"))
        p2.priority = 2
        self._noise(w.newexten(p2, "Ringing", ""))
        self._state(p1, 5)
        p2.priority = 3
        self._noise(w.newexten(p2, "Wait", f"{plan.agent_ring_s:.0f}"))
        self._noise(w.device_state(f"Local/{agent.ext}@agent-phone", "INUSE"))
        self._ev(w.dial("DialState", None, p1, ("DialStatus", "RINGING")))
        call.job = self.call_at(self.now + plan.agent_ring_s, self._out_agent_answers, call)

    def _out_agent_answers(self, call: _OutCall) -> None:
        plan, p1, p2, agent = call.plan, call.p1, call.p2, call.agent
        p2.priority = 4
        self._noise(w.newexten(p2, "Answer", ""))
        self._state(p2, 6)
        self._state(p1, 6)
        self._noise(w.device_state(f"Local/{agent.ext}@agent-phone", "INUSE"))
        self._ev(w.dial("DialEnd", None, p1, ("DialStatus", "ANSWER")))
        p1.context, p1.exten, p1.priority = "outbound", plan.number, 1
        p1.cid_num, p1.cid_name = agent.ext, agent.name
        self._noise(w.newexten(p1, "NoOp", f"Outbound call to {plan.number}"))
        p1.priority = 2
        p1.app, p1.appdata = "Dial", f"Local/{plan.number}@customers/n,60,tT"
        self._noise(w.newexten(p1, "Dial", p1.appdata))
        self._vars(p1, ("DIALSTATUS", ""), ("DIALEDPEERNUMBER", ""), ("DIALEDPEERNAME", ""), ("ANSWEREDTIME", ""),
                   ("ANSWEREDTIME_MS", ""), ("DIALEDTIME", ""), ("DIALEDTIME_MS", ""), ("RINGTIME", ""),
                   ("RINGTIME_MS", ""), ("PROGRESSTIME", ""), ("PROGRESSTIME_MS", ""))
        k1, k2 = self._local_pair(plan.number, "customers", p1.lid)
        call.k1, call.k2 = k1, k2
        self._vars(k1, ("DIALEDPEERNUMBER", f"{plan.number}@customers/n"))
        self._noise(w.newexten(k1, "AppDial", "(Outgoing Line)"))
        for c in (k1, k2):
            c.cid_num, c.cid_name = agent.ext, agent.name
            self._noise(w.newcallerid(c))
            c.cl_num, c.cl_name = agent.ext, agent.name
            self._noise(w.chan_event("NewConnectedLine", c))
        self._vars(k2, ("DIALEDPEERNUMBER", f"{plan.number}@customers/n"))
        self._ev(w.local_bridge(k1, k2))
        self._ev(w.dial("DialBegin", p1, k1, ("DialString", f"{plan.number}@customers/n")))
        self._noise(w.newexten(k2, "NoOp", f"Customer {plan.number}"))
        k2.priority = 2
        self._noise(w.newexten(k2, "Ringing", ""))
        self._state(k1, 5)
        k2.priority = 3
        self._noise(w.newexten(k2, "Wait", f"{plan.ring_s:.0f}"))
        self._noise(w.device_state(f"Local/{agent.ext}@agent-phone", "INUSE"))
        self._vars(p1, ("RINGTIME", "0"), ("RINGTIME_MS", "0"))
        self._noise(w.device_state(f"Local/{plan.number}@customers", "INUSE"))
        self._ev(w.originate_response(call.action_id, p1, 4, dest=("outbound", plan.number),
                                      cid=(agent.ext, agent.name)))
        self._ev(w.dial("DialState", p1, k1, ("DialStatus", "RINGING")))
        if plan.answered:
            call.job = self.call_at(self.now + plan.ring_s, self._out_customer_answers, call)
        else:
            call.job = self.call_at(self.now + plan.ring_s, self._out_no_answer, call)

    def _out_customer_answers(self, call: _OutCall) -> None:
        p1, k1, k2 = call.p1, call.k1, call.k2
        assert k1 is not None
        assert k2 is not None
        k2.priority = 4
        self._noise(w.newexten(k2, "Answer", ""))
        self._state(k2, 6)
        self._state(k1, 6)
        self._noise(w.device_state(f"Local/{call.plan.number}@customers", "INUSE"))
        self._vars(p1, ("DIALSTATUS", "ANSWER"), ("DIALEDPEERNAME", k1.name),
                   ("DIALEDPEERNUMBER", f"{call.plan.number}@customers/n"))
        self._ev(w.dial("DialEnd", p1, k1, ("DialStatus", "ANSWER")))
        b = call.bridge = self._bridge()
        self._ev(w.bridge_event("BridgeCreate", b))
        self._noise(w.newexten(k1, "AppDial", "(Outgoing Line)"))
        self._noise(w.device_state(f"Local/{call.plan.number}@customers", "INUSE"))
        k1.exten = ""
        self._enter(b, k1)
        self._enter(b, p1)
        self._vars(k1, ("BRIDGEPEER", p1.name))
        self._vars(p1, ("BRIDGEPEER", k1.name))
        if self.cfg.verbose:
            for prio, app, data in ((5, "PlayTones", "350/500,0/500"), (6, "Wait", f"{call.plan.talk_s:.0f}")):
                k2.priority = prio
                self._ev(w.newexten(k2, app, data))
        call.connect_t = self.now
        call.truth.answered_by, call.truth.answered_at = call.agent.name, self.now
        call.job = self.call_at(self.now + call.plan.talk_s, self._out_hangup, call)

    def _out_hangup(self, call: _OutCall) -> None:
        p1, p2, k1, k2, b = call.p1, call.p2, call.k1, call.k2, call.bridge
        assert k1 is not None
        assert k2 is not None
        assert b is not None
        if call.plan.hangup == "customer":
            first, first_far, last, last_far = k2, k1, p1, p2
        else:
            first, first_far, last, last_far = p2, p1, k1, k2
            self.stats.agent_first += 1
        self._noise(w.newexten(first, "Hangup", "16"))
        self._ev(w.hangup_request(first, 16, soft=True))
        self._ev(w.hangup_request(first_far, 16))
        self._gone(first, 16)
        self._vars(first_far, ("BRIDGEPEER", ""))
        self._vars(last, ("BRIDGEPEER", ""))
        self._leave(b, first_far)
        self._gone(first_far, 16)
        self._leave(b, last)
        self._ev(w.bridge_event("BridgeDestroy", b))
        self._dial_vars(p1, "ANSWER", None, "", call.truth.start, call.connect_t)
        self._noise(w.device_state(f"Local/{call.plan.number}@customers", "NOT_INUSE"))
        self._ev(w.hangup_request(last, 16, soft=True))
        self._ev(w.hangup_request(last_far, 16))
        self._gone(last, 16)
        self._ev(w.hangup_request(last_far, 16, soft=True))
        self._gone(last_far, 16)
        self._noise(w.device_state(f"Local/{call.agent.ext}@agent-phone", "NOT_INUSE"))
        self._noise(w.device_state(f"Local/{call.agent.ext}@agent-phone", "NOT_INUSE"))
        call.truth.first_hangup = call.plan.hangup
        self._end(call)
        self._after_call(call.agent, call.plan.disposition, p1.lid, queue_call=False)

    def _out_no_answer(self, call: _OutCall) -> None:
        p1, p2, k1, k2 = call.p1, call.p2, call.k1, call.k2
        assert k1 is not None
        assert k2 is not None
        self._ev(w.dial("DialEnd", p1, k1, ("DialStatus", "NOANSWER")))
        self._ev(w.hangup_request(k2, 0))
        self._gone(k1, 0)
        self._ev(w.hangup_request(k2, 16, soft=True))
        self._gone(k2, 0)
        self._ev(w.hangup_request(p1, 16, soft=True))
        self._ev(w.hangup_request(p2, 16))
        self._gone(p1, 16)
        self._ev(w.hangup_request(p2, 16, soft=True))
        self._gone(p2, 16)
        self._end(call)
        self._after_call(call.agent, call.plan.disposition, p1.lid, queue_call=False)

    # -- agents: breaks, logins ----------------------------------------------------------------------

    def _schedule_break(self, a: _Agent) -> None:
        if not self._open():
            return
        cfg = self.cfg
        rate = cfg.pauses_per_agent_h + (cfg.logouts_per_agent_h if self._dynamic(a) else 0.0)
        if rate > 0:
            self.call_at(self.now + self.rng.expovariate(rate / 3600.0), self._break, a)

    def _dynamic(self, a: _Agent) -> bool:
        spec_q = a.queues[0].spec if a.queues else None
        if spec_q is None:
            return False
        index = a.queues[0].agents.index(a)
        return index >= spec_q.agents

    def _break(self, a: _Agent) -> None:
        if not self._open():
            return
        cfg = self.cfg
        logout = self._dynamic(a) and self.rng.random() < cfg.logouts_per_agent_h / (
            cfg.pauses_per_agent_h + cfg.logouts_per_agent_h)
        if a.state != "idle":
            self.call_at(self.now + 60.0, self._break, a)
            return
        if logout:
            self._logout(a)
            self.call_at(self.now + self.rng.expovariate(1.0 / cfg.logout_mean_s), self._login, a, a.queues[0])
        else:
            self._pause(a, self.rng.choice(_PAUSE_REASONS), self.rng.expovariate(1.0 / cfg.pause_mean_s))

    def _pause(self, a: _Agent, reason: str, duration_s: float) -> None:
        if a.state != "idle":
            return
        a.state = "paused"
        self._set_paused(a, True, reason)
        self.call_at(self.now + duration_s, self._end_break, a)

    def _end_break(self, a: _Agent) -> None:
        self._unpause(a)
        self._schedule_break(a)

    def _logout(self, a: _Agent) -> None:
        a.state = "offline"
        for qname, m in list(a.members.items()):
            self._ev(w.member_event("QueueMemberRemoved", qname, m))
        a.members.clear()

    def _login(self, a: _Agent, q: _Queue) -> None:
        if a.state != "offline":
            return
        m = a.members[q.name] = Member(a.name, a.interface, self._epoch_now(), dynamic=True)
        self._ev(w.member_event("QueueMemberAdded", q.name, m))
        a.state = "idle"
        q.idle.append(a)
        if self.now > 0:
            self._schedule_break(a)
        self._dispatch(q)

    # -- ChanSpy ---------------------------------------------------------------------------------------

    def _spy(self, chan: str, data: str, action_id: str) -> None:
        self.stats.spies += 1
        tech, _, rest = chan.partition("/")
        exten = rest.split("@", 1)[0] or "spy"
        if tech == "Local":
            context = rest.split("@", 1)[1].split("/", 1)[0] if "@" in rest else "default"
            s1, _s2 = self._local_pair(exten, context, None)
        else:
            s1 = Chan(f"{chan}-{next(self._locals):08x}", self._uid(), "", 0, "default", exten, self.now)
            s1.lid = s1.uid
            self.channels[s1.uid] = s1
            self._ev(w.chan_event("Newchannel", s1))
        self._state(s1, 6)
        s1.app, s1.appdata = "ChanSpy", data
        self._ev(w.originate_response(action_id, s1, 4, app=("ChanSpy", data), cid=("<unknown>", "<unknown>")))
        target = data.split(",", 1)[0]
        spyee = next((c for c in self.channels.values() if c.name.startswith(target) and c.state == 6
                      and c.bridge is not None and c is not s1), None) if target else None
        self._spies[s1.uid] = (s1, spyee)
        if spyee is not None:
            self._ev(w.spy_event("ChanSpyStart", s1, spyee))
        self.call_at(self.now + 30.0, self._spy_end, s1.uid)

    def _spy_end(self, uid: str) -> None:
        entry = self._spies.pop(uid, None)
        if entry is None:
            return
        s1, spyee = entry
        if spyee is not None:
            self._ev(w.spy_event("ChanSpyStop", s1, spyee))
        self._ev(w.hangup_request(s1, 16))
        self._gone(s1, 16)
        for c in list(self.channels.values()):
            if c.name.rsplit(";", 1)[0] == s1.name.rsplit(";", 1)[0] and c is not s1:
                self._gone(c, 16)


def demo_simulator(seed: int = 1, arrivals_per_min: float = 5.0, agents: int = 10) -> Simulator:
    """The demo's call centre: the default site, busier, opening with a call that rings 18 s
    (an IN-ANSWER alert ~17 s in, while it still rings), then whatever the people do."""
    cfg = SimConfig(seed=seed, arrivals_per_min=arrivals_per_min, outbound_per_min=1.0,
                    queues=(QueueSpec("support", agents=agents, dynamic_agents=2),
                            QueueSpec("claims", "ringall", timeout_s=300.0, service_level_s=60, agents=3,
                                      exten="3000")))
    sim = Simulator(cfg)
    sim.place_call(1.0, CallPlan(caller="+8613912345678", caller_name="王芳", ring_s={"7001": 18.0}, talk_s=40.0,
                                 record=True))
    return sim


# -- the server ---------------------------------------------------------------------------------------


def list_response(action: str, action_id: str | None,
                  items: list[list[tuple[str, str]]]) -> list[list[tuple[str, str]]]:
    """A list action's reply as Asterisk 22 writes it: ``ActionID`` second in ``CoreShowChannel``
    items, last in the queue items (``QueueParams``/``QueueMember``/``QueueEntry``/``QueueSummary``)."""
    out = list_reply(action, None, [])
    head, complete = out[0], out[-1]
    if action_id is not None:
        head.insert(1, ("ActionID", action_id))
        complete.insert(1, ("ActionID", action_id))
        for item in items:
            if item[0][1] == "CoreShowChannel":
                item.insert(1, ("ActionID", action_id))
            else:
                item.append(("ActionID", action_id))
    complete[-1] = ("ListItems", str(len(items)))
    return [head, *items, complete]



def encode_stream(items: Iterable[Emitted]) -> Iterator[bytes]:
    """The bytes of a stream of messages (for captures and benchmarks)."""
    for _t, pairs in items:
        yield encode_message(pairs)


def write_capture(sim: Simulator, out: BinaryIO, until: float | None = None, banner: str = BANNER) -> int:
    """Write the stream as a raw AMI byte capture (``.raw``, as ``tests/fixtures/ami/*.raw``:
    the banner line, then the messages); returns how many.  With ``SimConfig.timestamps`` the
    events carry ``Timestamp`` headers, which ``ringwatch replay`` follows."""
    out.write(banner.encode("utf-8") + b"\r\n")
    n = 0
    for _t, pairs in sim.events(until):
        out.write(encode_message(pairs))
        n += 1
    return n


class SimulatedPbx(ScriptedAmiServer):
    """A loopback Asterisk manager playing a :class:`Simulator`.

    ``speed``: simulated seconds per real second (``0``: as fast as the socket
    drains).  ``wait_for_login``: the call centre opens when the first client
    logs in (the demo), else at :meth:`start`.  While nobody is logged in the
    calls go on unseen, as on a real PBX.
    """

    def __init__(self, sim: Simulator | SimConfig | None = None, *, username: str = "ringwatch",
                 secret: str = "secret", speed: float = 1.0, wait_for_login: bool = True,
                 until: float | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(username=username, secret=secret, host=host, port=port)
        self.sim = sim if isinstance(sim, Simulator) else Simulator(sim)
        if speed < 0:
            raise ValueError("speed must be >= 0")
        self.speed = speed
        self.wait_for_login = wait_for_login
        self.until = until
        self.played = 0
        self.lost = 0
        self.lose: Callable[[Pairs], bool] | None = None  # messages for which this holds are not sent
        self._muted: set[int] = set()
        self._task: asyncio.Task[None] | None = None
        self._kick = asyncio.Event()
        self._origin = 0.0
        self._finished = asyncio.Event()

    async def __aenter__(self) -> SimulatedPbx:
        await self.start()
        return self

    async def start(self) -> None:
        await super().start()
        self._task = asyncio.create_task(self._play(), name="sim-pbx-player")
        self._task.add_done_callback(self._player_done)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await super().stop()

    def _player_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("sim.player crashed", exc_info=task.exception())

    def play_until(self, t: float | None) -> None:
        """Play on up to simulated time ``t`` (None: to the end), then wait again (tests)."""
        self.until = t
        self._finished.clear()
        self._kick.set()

    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    async def wait_finished(self) -> None:
        await self._finished.wait()

    def sim_now(self) -> float:
        if self.speed > 0 and self._origin:
            return max(self.sim.now, (asyncio.get_running_loop().time() - self._origin) * self.speed)
        return self.sim.now

    # -- faults -------------------------------------------------------------------------------------

    def go_silent(self) -> int:
        """Half-open: the current connections get nothing more (no events, no replies); new ones work."""
        for s in self._sessions:
            self._muted.add(id(s))
        return len(self._sessions)

    async def restart(self) -> None:
        """Asterisk restarts with calls in progress: every link is cut, every channel is gone, and
        connections are refused until :meth:`allow`."""
        self.refuse(None)
        await self.drop()
        self._muted.clear()
        self.sim.now = self.sim_now()
        self.sim.restart()

    # -- playing ------------------------------------------------------------------------------------

    async def _play(self) -> None:
        loop = asyncio.get_running_loop()
        if self.wait_for_login:
            await self.wait_until(lambda: self.logins > 0, timeout_s=10**9)
        sim = self.sim
        if self.speed > 0:
            self._origin = loop.time() - sim.now / self.speed
        pending = 0
        while True:
            t = sim.next_time()
            if t is None or (self.until is not None and t > self.until):
                # the programme is over (for now): answer actions, play what they start
                await self._flush_all()
                pending = 0
                t = sim.next_time()
                if t is not None and (self.until is None or t <= self.until):
                    continue  # play_until() or an action moved on while we flushed
                if not self._finished.is_set():
                    self._finished.set()
                    self.changed()
                    log.info("sim: programme finished at t=%.1f (%d messages)", sim.now, sim.stats.messages)
                self._kick.clear()
                await self._kick.wait()
                continue
            if self.speed > 0:
                delay = self._origin + t / self.speed - loop.time()
                if delay > 0:
                    await self._flush_all()
                    pending = 0
                    self._kick.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self._kick.wait()
                    continue
            batch = sim.step()
            if batch:
                pending += self._broadcast(batch)
            if pending > 256 * 1024 or (self.speed == 0 and pending > 0 and sim.stats.messages % 512 == 0):
                await self._flush_all()
                pending = 0

    def _broadcast(self, batch: list[Emitted]) -> int:
        targets = [s for s in self._sessions if s.logged_in and id(s) not in self._muted]
        size = 0
        lose = self.lose
        for _t, pairs in batch:
            if lose is not None and lose(pairs):
                self.lost += 1
                continue
            data = encode_message(pairs)
            size += len(data)
            for s in targets:
                s.send_raw(data)
            self.played += 1
        return size

    async def _flush_all(self) -> None:
        for s in list(self._sessions):
            if id(s) in self._muted:
                continue
            with contextlib.suppress(ConnectionError, OSError):
                await s.flush()

    # -- actions ------------------------------------------------------------------------------------

    async def _action(self, sess: _Session, msg: Message) -> bool:
        if id(sess) in self._muted:
            return True  # a half-open link: nothing comes back
        name = msg.get("Action") or ""
        lname = name.lower()
        aid = msg.action_id
        if sess.logged_in and lname in ("coreshowchannels", "queuestatus", "queuesummary"):
            self.actions[name] += 1
            canonical = {"coreshowchannels": "CoreShowChannels", "queuestatus": "QueueStatus",
                         "queuesummary": "QueueSummary"}[lname]
            self.sim.now = self.sim_now()
            for pairs in list_response(canonical, aid, self.sim.snapshot(canonical)):
                sess.send(pairs)
            return True
        if sess.logged_in and lname == "originate":
            self.actions[name] += 1
            self.sim.now = self.sim_now()
            fields = {k: v for k, v in msg.pairs if k not in ("Action", "ActionID")}
            ok, text = self.sim.originate(fields, aid or "")
            sess.send(response(aid, "Success" if ok else "Error", ("Message", text)))
            self._kick.set()
            return True
        return await super()._action(sess, msg)
