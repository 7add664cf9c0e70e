"""FreeSWITCH events (ESL) -> ringwatch domain events, the same ones the Asterisk tracker emits.

A dispatch table ``{event name: handler}`` (and ``{CC-Action: handler}`` for
``CUSTOM callcenter::info``) over in-memory state.  What it relies on was observed
in the recordings of ``tests/fixtures/esl/README.md`` (FreeSWITCH 1.10.12, mod_callcenter):

* everything is keyed on ``Unique-ID`` (channel names repeat: ``loopback/phone1001-a``
  for every call to 1001).  A call is its member session (``CC-Member-Session-UUID``,
  the caller's leg); a queue leg is a ``CC-Member-UUID`` (a blind transfer into
  another queue is the same session with a new member UUID, announced *before* the
  old leg's end events);
* queue join = ``member-queue-start``; ringing = ``agent-offering`` (the agent contact
  leg's ``CHANNEL_CREATE`` carries ``cc_agent``/``cc_member_uuid``: its Unique-ID is
  kept); answer = ``bridge-agent-start`` (its ``CC-Agent-UUID`` is the agent's channel);
  ring end without answer = ``bridge-agent-fail`` with the originate cause;
  abandon = the caller's leg hanging up while queued, or ``member-queue-end``
  ``Cancel``/``BREAK_OUT`` (it comes *after* the hang-up);
* who hung up first: the first ``CHANNEL_HANGUP`` among the caller's legs and the
  connected agent's legs (a loopback leg counts for its pair through
  ``variable_other_loopback_leg_uuid``).  The agent contact legs that mod_callcenter
  drops at answer (loopback plumbing) are never the agent's legs.  An agent-side
  hang-up is held until the caller's leg either re-enters a queue (that was a blind
  transfer) or goes too (the agent was first); a customer-side one is final at once;
* attended transfer: ``CHANNEL_EXECUTE`` of ``att_xfer`` on the agent's channel, the
  consult leg is the ``CHANNEL_CREATE`` whose ``Other-Leg-Unique-ID`` is that channel,
  and the caller is with the target when its leg's ``CHANNEL_BRIDGE`` names the consult
  leg; the transferer hanging up meanwhile is the hand-off, not a hang-up;
* outbound: the ``CHANNEL_CREATE`` of a trunk leg (``outbound_patterns``) bridged from
  another channel; answered = its ``CHANNEL_ANSWER``;
* recordings: ``RECORD_START`` on any leg of the call;
* dispositions and commitments: ``CUSTOM ringwatch::disposition`` (``Tag``, ``Note``) and
  ``CUSTOM ringwatch::commitment`` (``Kind``, ``Customer``, ``Team``, ``Note``), fired by the
  dialplan's ``event`` application on a leg of the call (its ``Unique-ID`` names the call) or by
  ``sendevent`` from the agent desktop with ``Call-ID`` or ``Agent`` (that agent's last call);
* supervisors listening in: ``CHANNEL_EXECUTE`` of ``eavesdrop`` (its data: the spied
  leg's Unique-ID) on the supervisor's channel starts it, that channel's ``CHANNEL_HANGUP``
  ends it.  A spy ringwatch asked for (:meth:`FsTracker.expect_spy`) is known by the
  channel's ``origination_uuid`` (``ringwatch_spy`` variable as a fallback); a failed
  ``originate`` (its ``BACKGROUND_JOB`` says ``-ERR``) ends it before it started.

Time is the receive time handed to :meth:`FsTracker.handle` (never ``Event-Date-*``).
Every handler is O(1) in the number of live calls.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from telephony.esl.codec import EslEvent, EventFilter
from telephony.events import (
    AgentRingEnded,
    AgentRinging,
    AgentState,
    AgentStateChanged,
    CallAbandoned,
    CallAnswered,
    CallEnded,
    CallOffered,
    CommitmentRequested,
    Direction,
    DispositionReceived,
    DomainEvent,
    FirstHangup,
    HangupSide,
    LinkDown,
    LinkUp,
    QueueJoined,
    RecordingStarted,
    ResyncDone,
    RingOutcome,
    SpyStarted,
    SpyStopped,
    TransferAnswered,
    TransferEnded,
    TransferKind,
    TransferStarted,
)

log = logging.getLogger(__name__)

CC_SUBCLASS = "callcenter::info"
#: the site's own events (``event`` application / ``sendevent``): the equivalents of the AMI UserEvents
DISPOSITION_SUBCLASS = "ringwatch::disposition"
COMMITMENT_SUBCLASS = "ringwatch::commitment"
_UNKNOWN_CID = {"", "unknown", "<unknown>", "anonymous", "outbound call", "default", "0000000000"}
_NOANSWER_CAUSES = {"NO_ANSWER", "ALLOTTED_TIMEOUT", "NO_USER_RESPONSE", "PROGRESS_TIMEOUT", "MEDIA_TIMEOUT"}
_VARS = re.compile(r"^(?:\{[^}]*\}|\[[^\]]*\]|<[^>]*>)+")

Emit = Callable[[DomainEvent], None]


def _known(cid: str | None) -> str:
    return "" if cid is None or cid.strip().lower() in _UNKNOWN_CID else cid


def _int(text: str | None, default: int = 0) -> int:
    try:
        return int(text) if text else default
    except ValueError:
        return default


def dial_target(data: str) -> str:
    """``{sim_call=1}loopback/phone1003/default`` -> ``loopback/phone1003/default`` (variables dropped)."""
    return _VARS.sub("", data.strip()).split(" ", 1)[0]


@dataclass(frozen=True, slots=True)
class FsChannelRules:
    """Site rules: which channels are agents' phones (group ``ext``) and which dials are outbound."""

    agent_patterns: tuple[re.Pattern[str], ...] = (
        re.compile(r"^loopback/(?:phone|agent|handset)(?P<ext>\d+)(?:/[^-]*)?-[ab]$"),
        re.compile(r"^sofia/[^/]+/(?:sip:)?(?P<ext>\d{3,6})(?:@|$)"),
        re.compile(r"^user/(?P<ext>\d{3,6})(?:@|$)"),
    )
    outbound_contexts: frozenset[str] = frozenset({"outbound"})
    outbound_patterns: tuple[re.Pattern[str], ...] = (
        re.compile(r"^sofia/gateway/"),
        re.compile(r"^loopback/customer\d+-a$"),
    )

    @classmethod
    def build(cls, agent_patterns: list[str], outbound_contexts: list[str],
              outbound_patterns: list[str]) -> FsChannelRules:
        return cls(tuple(re.compile(p) for p in agent_patterns), frozenset(outbound_contexts),
                   tuple(re.compile(p) for p in outbound_patterns))


@dataclass(slots=True)
class _Ring:
    leg_id: str
    agent: str
    queue: str | None
    since: float
    contact: str | None = None  # the agent contact leg's Unique-ID, once seen


@dataclass(slots=True)
class _Xfer:
    kind: TransferKind
    since: float
    from_leg: str | None = None  # attended: the transferer's channel
    consult: str | None = None  # attended: the consult leg
    consult_agent: str | None = None
    completed: bool = False  # attended: the transferer has left


@dataclass(slots=True)
class _Spy:
    """A supervisor's channel eavesdropping (or about to) on an agent's leg."""

    spy_id: str | None  # ringwatch's request id (None: started elsewhere)
    call_id: str
    agent: str | None
    job: str | None = None  # the originate's bgapi Job-UUID, until its result is in
    started: bool = False


@dataclass(slots=True)
class _Call:
    call_id: str
    anchor: str  # the caller's leg (member session) / the customer leg of an outbound call
    born: int  # tracker event count when first seen (resync: what the channel list can know)
    direction: Direction = "inbound"
    customer_legs: set[str] = field(default_factory=set)
    agent_legs: dict[str, str] = field(default_factory=dict)  # Unique-ID -> agent
    rings: dict[str, _Ring] = field(default_factory=dict)  # "<member uuid>|<agent>" (queue) / leg Unique-ID
    member: str | None = None  # current queue leg (CC-Member-UUID)
    queue: str | None = None
    in_queue: bool = False
    answered: bool = False
    connected_agent: str | None = None
    first_hangup_done: bool = False
    pending_hangup: tuple[HangupSide, str | None, float] | None = None
    left_at: float | None = None  # when the connected agent's legs went away
    caller_gone_at: float | None = None  # the caller's side hung up while queued
    abandoned: bool = False
    xfer: _Xfer | None = None
    recorded: bool = False


class FsTracker:
    """Feed it ESL events with their receive time; it emits domain events."""

    #: Every event the tracker (and the client's liveness and bgapi) reads: subscribe to these only.
    EVENTS: tuple[str, ...] = (
        "CHANNEL_CREATE",
        "CHANNEL_ANSWER",
        "CHANNEL_BRIDGE",
        "CHANNEL_HANGUP",
        "CHANNEL_EXECUTE",
        "RECORD_START",  # (RECORD_STOP is not read: no domain event needs it)
        "HEARTBEAT",
        "BACKGROUND_JOB",
    )
    SUBCLASSES: tuple[str, ...] = (CC_SUBCLASS, DISPOSITION_SUBCLASS, COMMITMENT_SUBCLASS)
    #: the codec drops the rest undecoded: CHANNEL_EXECUTE other than att_xfer / eavesdrop, members-count
    FILTER = EventFilter(
        frozenset(EVENTS),
        frozenset(SUBCLASSES),
        require={"CHANNEL_EXECUTE": (b"\nApplication: att_xfer\n", b"\nApplication: eavesdrop\n")},
        exclude={CC_SUBCLASS: b"\nCC-Action: members-count\n"},
    )

    def __init__(self, emit: Emit, rules: FsChannelRules | None = None) -> None:
        self._emit = emit
        self.rules = rules or FsChannelRules()
        self.calls: dict[str, _Call] = {}
        self._by_leg: dict[str, _Call] = {}  # anchor, agent legs, consult legs -> call
        self._agents_by_ext: dict[str, str] = {}
        #: agent name / extension -> (its last call, the agent's name): a disposition after the call
        self._last_call_of_agent: dict[str, tuple[str, str]] = {}
        self._status: dict[str, str] = {}  # agent -> CC-Agent-Status
        self._state: dict[str, str] = {}  # agent -> CC-Agent-State
        self._legs = itertools.count(1)
        self._seq = 0  # events handled
        self._server_clock: tuple[float, float] | None = None  # (FreeSWITCH epoch s, our time) of the last event
        self._snap: dict[str, Any] = {}
        self._snap_seq = 0
        self._handlers: dict[str, Callable[[EslEvent, float], None]] = {
            "CHANNEL_CREATE": self._on_create,
            "CHANNEL_ANSWER": self._on_answer,
            "CHANNEL_BRIDGE": self._on_bridge,
            "CHANNEL_HANGUP": self._on_hangup,
            "CHANNEL_EXECUTE": self._on_execute,
            "RECORD_START": self._on_record_start,
            "BACKGROUND_JOB": self._on_background_job,
        }
        #: supervisor channel Unique-ID -> its spy (expected by :meth:`expect_spy`, or seen eavesdropping)
        self.spies: dict[str, _Spy] = {}
        self._spy_jobs: dict[str, str] = {}  # bgapi Job-UUID -> supervisor channel Unique-ID
        self._cc: dict[str, Callable[[EslEvent, float], None]] = {
            "member-queue-start": self._on_member_start,
            "member-queue-end": self._on_member_end,
            "agent-offering": self._on_offering,
            "bridge-agent-start": self._on_bridge_start,
            "bridge-agent-fail": self._on_bridge_fail,
            "agent-state-change": self._on_agent_state,
            "agent-status-change": self._on_agent_status,
        }

    @classmethod
    def subscription(cls) -> str:
        """The ``event plain ...`` command for exactly what is read (CUSTOM subclasses last)."""
        return "event plain " + " ".join([*cls.EVENTS, "CUSTOM", *cls.SUBCLASSES])

    # -- link ------------------------------------------------------------------

    def link_up(self, now: float, pbx: str = "freeswitch") -> None:
        self._snap = {}
        self._emit(LinkUp(now, pbx))

    def link_down(self, now: float, reason: str) -> None:
        self._emit(LinkDown(now, reason))

    @property
    def live_calls(self) -> int:
        return len(self.calls)

    # -- dispatch --------------------------------------------------------------

    def handle(self, ev: EslEvent, now: float) -> None:
        self._seq += 1
        ts = ev.get("Event-Date-Timestamp")
        if ts:
            us = _int(ts)
            if us > 0:
                self._server_clock = (us / 1e6, now)
        name = ev.name
        if name == "CUSTOM":
            if ev.subclass == CC_SUBCLASS:
                handler = self._cc.get(ev.get("CC-Action") or "")
                if handler is not None:
                    handler(ev, now)
            elif ev.subclass == DISPOSITION_SUBCLASS:
                self._on_disposition(ev, now)
            elif ev.subclass == COMMITMENT_SUBCLASS:
                self._on_commitment(ev, now)
            return
        handler = self._handlers.get(name)
        if handler is not None:
            handler(ev, now)

    # -- agents ------------------------------------------------------------------

    def _learn_agent(self, agent: str) -> None:
        ext = agent.split("@", 1)[0]
        if ext and self._agents_by_ext.get(ext) != agent:
            self._agents_by_ext[ext] = agent

    def _agent_for_channel(self, name: str, cid_name: str | None = None) -> str | None:
        """The agent whose phone ``name`` is (agent patterns), by the callcenter name when known."""
        for pattern in self.rules.agent_patterns:
            m = pattern.match(name)
            if m:
                ext = m.groupdict().get("ext")
                if not ext:
                    return name
                known = self._agents_by_ext.get(ext)
                if known is not None:
                    return known
                return _known(cid_name) or ext
        return None

    def _on_agent_status(self, ev: EslEvent, now: float) -> None:
        agent = ev.get("CC-Agent")
        if agent:
            self._learn_agent(agent)
            self._status[agent] = ev.get("CC-Agent-Status") or ""
            self._agent_changed(agent, now)

    def _on_agent_state(self, ev: EslEvent, now: float) -> None:
        agent = ev.get("CC-Agent")
        if agent:
            self._learn_agent(agent)
            self._state[agent] = ev.get("CC-Agent-State") or ""
            self._agent_changed(agent, now)

    def _agent_changed(self, agent: str, now: float) -> None:
        status = self._status.get(agent, "Available")
        cc_state = self._state.get(agent, "Waiting")
        state: AgentState
        paused, reason = False, None
        if status == "Logged Out":
            state = "offline"
        elif status == "On Break":
            state, paused, reason = "paused", True, "On Break"
        elif cc_state == "Idle":  # "does nothing, no calls will be given"
            state, paused, reason = "paused", True, "Idle"
        elif cc_state == "Receiving":
            state = "ringing"
        elif cc_state == "In a queue call":
            state = "talking"
        elif cc_state == "Waiting":
            state = "available"
        else:
            state = "unknown"
        self._emit(AgentStateChanged(now, agent, None, state, paused, reason))

    # -- the site's own events: dispositions, commitments ------------------------------

    def _remember_last_call(self, agent: str, channel: str | None, call_id: str) -> None:
        """An agent's last call, by its name and by its extension (a desktop may know either)."""
        ext = agent.split("@", 1)[0]
        for pattern in self.rules.agent_patterns if channel else ():
            m = pattern.match(channel or "")
            if m and m.groupdict().get("ext"):
                ext = m.group("ext")
                break
        self._last_call_of_agent[agent] = (call_id, agent)
        if ext:
            self._last_call_of_agent[ext] = (call_id, agent)

    def _site_event_call(self, ev: EslEvent) -> tuple[str | None, str | None]:
        """(call id, agent) of a ``ringwatch::*`` event: ``Call-ID``, else the call of the leg that fired
        it (``Unique-ID``), else the last call of ``Agent`` (name or extension) / of the firing phone."""
        call = self._by_leg.get(ev.get("Unique-ID") or "")
        named = ev.get("Agent") or None
        agent: str | None
        if named is not None:
            agent = self._agents_by_ext.get(named, named)
        else:
            name = ev.get("Channel-Name")
            agent = self._agent_for_channel(name, ev.get("Caller-Caller-ID-Name")) if name else None
        if call is not None and (agent is None or named is None):
            agent = call.connected_agent or agent
        call_id = ev.get("Call-ID") or (call.call_id if call is not None else None)
        if call_id is None:
            for key in (agent, named):
                last = self._last_call_of_agent.get(key) if key else None
                if last is not None:
                    call_id, agent = last
                    break
        return call_id, agent

    def _on_disposition(self, ev: EslEvent, now: float) -> None:
        call_id, agent = self._site_event_call(ev)
        if not call_id:
            log.warning("esl.tracker: %s without Call-ID, a call's Unique-ID or a known Agent ignored",
                        DISPOSITION_SUBCLASS)
            return
        self._emit(DispositionReceived(now, call_id, (ev.get("Tag") or "").strip(), ev.get("Note") or "", agent,
                                       "pbx-event"))

    def _on_commitment(self, ev: EslEvent, now: float) -> None:
        call_id, agent = self._site_event_call(ev)
        kind = (ev.get("Kind") or "").strip()
        if not call_id or not kind:
            log.warning("esl.tracker: %s without a call or Kind ignored", COMMITMENT_SUBCLASS)
            return
        self._emit(CommitmentRequested(now, call_id, kind, ev.get("Customer") or "", agent, ev.get("Team") or None,
                                       ev.get("Note") or None))

    # -- queue callers -----------------------------------------------------------------

    def _call_of(self, ev: EslEvent) -> _Call | None:
        session = ev.get("CC-Member-Session-UUID")
        return self._by_leg.get(session) if session else None

    def _new_inbound(self, session: str, caller: str, name: str, now: float, since: float) -> _Call:
        call = _Call(session, session, self._seq, "inbound", {session})
        self.calls[session] = call
        self._by_leg[session] = call
        self._emit(CallOffered(now, session, "inbound", _known(caller), _known(name), since))
        return call

    def _on_member_start(self, ev: EslEvent, now: float) -> None:
        session = ev.get("CC-Member-Session-UUID")
        queue = ev.get("CC-Queue") or "unknown"
        if not session:
            return
        call = self._by_leg.get(session)
        if call is None or call.anchor != session:
            call = self._new_inbound(session, ev.get("CC-Member-CID-Number") or "",
                                     ev.get("CC-Member-CID-Name") or "", now, now)
        elif call.answered and call.xfer is None:
            # the same caller's leg enters a queue again after talking to an agent: a blind transfer
            since = call.left_at if call.left_at is not None else now
            from_agent = call.connected_agent
            call.pending_hangup = None  # the agent leaving was the hand-off
            self._drop_agent(call, from_agent)
            call.xfer = _Xfer("blind", since)
            self._emit(TransferStarted(now, call.call_id, "blind", since, from_agent, queue))
        self._end_rings(call, now, "cancelled")  # a queue leg of the past
        call.member = ev.get("CC-Member-UUID")
        call.queue = queue
        call.in_queue = True
        self._emit(QueueJoined(now, call.call_id, queue, now))

    def _on_member_end(self, ev: EslEvent, now: float) -> None:
        call = self._call_of(ev)
        if call is None or ev.get("CC-Member-UUID") != call.member:
            return  # an unknown caller, or a queue leg the caller has left (blind transfer)
        if ev.get("CC-Cause") != "Cancel":
            return  # Terminated: the bridge ended; the channels say who hung up
        reason = ev.get("CC-Cancel-Reason") or ""
        if reason == "BREAK_OUT":  # the caller hung up while queued
            self._abandon(call, now)
        else:  # TIMEOUT, NO_AGENT_TIMEOUT, EXIT_WITH_KEY: out of the queue, still on the line
            call.in_queue = False
            self._end_rings(call, now, "cancelled")

    def _abandon(self, call: _Call, now: float) -> None:
        if call.abandoned:
            return
        call.abandoned = True
        call.in_queue = False
        self._end_rings(call, now, "cancelled")
        self._emit(CallAbandoned(now, call.call_id, call.queue or "unknown"))
        if not call.first_hangup_done:
            self._decide(call, "customer", None, call.caller_gone_at if call.caller_gone_at is not None else now)

    # -- agent legs ------------------------------------------------------------------------

    def _on_offering(self, ev: EslEvent, now: float) -> None:
        call = self._call_of(ev)
        agent = ev.get("CC-Agent")
        member = ev.get("CC-Member-UUID")
        if call is None or not agent or not member:
            return
        self._learn_agent(agent)
        self._start_ring(call, f"{member}|{agent}", f"{member}:{agent}:{next(self._legs)}", agent,
                         ev.get("CC-Queue") or call.queue, now, now)

    def _start_ring(self, call: _Call, key: str, leg_id: str, agent: str, queue: str | None,
                    now: float, since: float) -> _Ring | None:
        if key in call.rings:
            return None
        ring = _Ring(leg_id, agent, queue, since)
        call.rings[key] = ring
        self._emit(AgentRinging(now, call.call_id, leg_id, agent, queue, since))
        return ring

    def _finish_ring(self, call: _Call, key: str, now: float, outcome: RingOutcome) -> _Ring | None:
        ring = call.rings.pop(key, None)
        if ring is None:
            return None
        if ring.queue is None and self._by_leg.get(key) is call and outcome != "answered":
            del self._by_leg[key]  # a consult leg that never answered
        self._emit(AgentRingEnded(now, call.call_id, ring.leg_id, ring.agent, ring.queue, outcome))
        return ring

    def _end_rings(self, call: _Call, now: float, outcome: RingOutcome) -> None:
        for key in list(call.rings):
            self._finish_ring(call, key, now, outcome)

    def _on_bridge_start(self, ev: EslEvent, now: float) -> None:
        call = self._call_of(ev)
        agent = ev.get("CC-Agent")
        if call is None or not agent:
            return
        self._learn_agent(agent)
        leg = ev.get("CC-Agent-UUID") or ""
        ring = self._finish_ring(call, f"{ev.get('CC-Member-UUID')}|{agent}", now, "answered")
        leg_id = ring.leg_id if ring is not None else (leg or f"{call.member}:{agent}")
        self._connect(call, leg, agent, ev.get("CC-Queue") or call.queue, leg_id, now)

    def _connect(self, call: _Call, leg: str, agent: str, queue: str | None, leg_id: str, now: float) -> None:
        call.in_queue = False
        call.answered = True
        call.pending_hangup = None
        call.left_at = None
        call.connected_agent = agent
        self._remember_last_call(agent, None, call.call_id)
        if leg:
            call.agent_legs[leg] = agent
            self._by_leg[leg] = call
        if call.xfer is not None:
            self._transfer_answered(call, leg, agent, now)
        self._emit(CallAnswered(now, call.call_id, leg_id, agent, queue))

    def _on_bridge_fail(self, ev: EslEvent, now: float) -> None:
        call = self._call_of(ev)
        agent = ev.get("CC-Agent")
        if call is None or not agent:
            return
        cause = ev.get("CC-Hangup-Cause") or ""
        outcome: RingOutcome = "noanswer" if cause in _NOANSWER_CAUSES else "cancelled"
        self._finish_ring(call, f"{ev.get('CC-Member-UUID')}|{agent}", now, outcome)

    def _drop_agent(self, call: _Call, agent: str | None) -> None:
        """The agent is no longer with the caller: its legs stop counting for the call."""
        for leg in [leg for leg, a in call.agent_legs.items() if a == agent]:
            del call.agent_legs[leg]
            if self._by_leg.get(leg) is call:
                del self._by_leg[leg]

    # -- channels ----------------------------------------------------------------------------

    def _on_create(self, ev: EslEvent, now: float) -> None:
        uid = ev.get("Unique-ID") or ""
        if ev.get("variable_cc_side") == "agent":
            # the contact leg mod_callcenter dials for an offer: remember it (resync)
            call = self._by_leg.get(ev.get("variable_cc_member_session_uuid") or "")
            if call is not None:
                ring = call.rings.get(f"{ev.get('variable_cc_member_uuid')}|{ev.get('variable_cc_agent')}")
                if ring is not None and ring.contact is None:
                    ring.contact = uid
            return
        other = ev.get("Other-Leg-Unique-ID")
        if not uid or not other:
            return
        call = self._by_leg.get(other)
        if call is not None:
            x = call.xfer
            name = ev.get("Channel-Name") or ""
            if x is not None and x.kind == "attended" and x.consult is None and other == x.from_leg:
                x.consult = uid
                x.consult_agent = self._agent_for_channel(name) or name
                self._by_leg[uid] = call
                self._start_ring(call, uid, uid, x.consult_agent, None, now, now)
            elif other == call.anchor and call.answered and not call.in_queue and (
                    call.pending_hangup is not None or (x is not None and x.kind == "blind")):
                self._dial_after_agent_left(call, uid, name, now)
            return
        if self._is_outbound(ev):
            self._start_outbound(ev, uid, other, now)

    def _dial_after_agent_left(self, call: _Call, uid: str, name: str, now: float) -> None:
        """The caller's leg dials a colleague after its agent left: a blind transfer to an extension."""
        agent = self._agent_for_channel(name)
        if agent is None:
            return  # not a person (the agent patterns say): the agent's hang-up stands
        x = call.xfer
        if x is None:
            since = call.left_at if call.left_at is not None else now
            from_agent = call.connected_agent
            call.pending_hangup = None  # the agent leaving was the hand-off
            self._drop_agent(call, from_agent)
            x = call.xfer = _Xfer("blind", since)
            self._emit(TransferStarted(now, call.call_id, "blind", since, from_agent, name))
        x.consult, x.consult_agent = uid, agent
        self._by_leg[uid] = call
        self._start_ring(call, uid, uid, agent, None, now, now)

    def _is_outbound(self, ev: EslEvent) -> bool:
        if (ev.get("Other-Leg-Context") or "") in self.rules.outbound_contexts:
            return True
        name = ev.get("Channel-Name") or ""
        return any(p.match(name) for p in self.rules.outbound_patterns)

    def _start_outbound(self, ev: EslEvent, uid: str, origin: str, now: float, since: float | None = None) -> _Call:
        call_id = origin if origin not in self.calls else f"{origin}/{uid}"
        call = _Call(call_id, uid, self._seq, "outbound", {uid})
        chan = ev.get("Other-Leg-Channel-Name") or ""
        cid_name = _known(ev.get("Other-Leg-Orig-Caller-ID-Name")) or _known(ev.get("Other-Leg-Caller-ID-Name"))
        agent = self._agent_for_channel(chan, cid_name) or cid_name or chan
        call.agent_legs[origin] = agent
        call.connected_agent = agent
        self._remember_last_call(agent, chan, call_id)
        self.calls[call_id] = call
        self._by_leg[uid] = call
        self._by_leg[origin] = call
        number = ev.get("Other-Leg-Destination-Number") or ""
        if not number[-4:].isdigit():
            dest = ev.get("Caller-Destination-Number") or ""
            number = re.sub(r"^\D+", "", dest) or _known(ev.get("Caller-Callee-ID-Number"))
        self._emit(CallOffered(now, call_id, "outbound", number, "", now if since is None else since, agent))
        return call

    def _on_answer(self, ev: EslEvent, now: float) -> None:
        uid = ev.get("Unique-ID") or ""
        call = self._by_leg.get(uid)
        if call is None:
            return
        if call.direction == "outbound":
            if uid == call.anchor and not call.answered:
                call.answered = True
                self._emit(CallAnswered(now, call.call_id, uid, call.connected_agent or "unknown", None))
        elif uid in call.rings:
            self._finish_ring(call, uid, now, "answered")  # the consult / transfer target picked up
            x = call.xfer
            if x is not None and x.kind == "blind" and x.consult == uid:
                self._transfer_answered(call, uid, x.consult_agent or uid, now)

    def _on_bridge(self, ev: EslEvent, now: float) -> None:
        # either side may carry the event (F01: the caller's leg; F06: the consult leg)
        uid = ev.get("Unique-ID") or ""
        other = ev.get("Other-Leg-Unique-ID") or ""
        call = self._by_leg.get(uid) or self._by_leg.get(other)
        if call is None or call.anchor not in (uid, other):
            return
        peer = other if uid == call.anchor else uid
        x = call.xfer
        if x is not None and x.kind == "attended" and peer and peer == x.consult:
            # the caller's leg is bridged to the consult target: the attended transfer is done
            self._finish_ring(call, peer, now, "answered")
            self._transfer_answered(call, peer, x.consult_agent or peer, now)
        elif peer and x is None and call.pending_hangup is not None and peer not in call.agent_legs:
            # the agent left and the caller is bridged to someone else's phone at once: a hand-off the
            # phones did themselves (SIP REFER with Replaces), not the agent hanging up on the caller
            name = (ev.get("Other-Leg-Channel-Name") if uid == call.anchor else ev.get("Channel-Name")) or ""
            agent = self._agent_for_channel(name)
            if agent is None:
                return
            since = call.left_at if call.left_at is not None else now
            from_agent = call.connected_agent
            call.pending_hangup = None
            self._drop_agent(call, from_agent)
            call.xfer = _Xfer("attended", since, consult=peer, consult_agent=agent, completed=True)
            self._emit(TransferStarted(now, call.call_id, "attended", since, from_agent, name))
            self._transfer_answered(call, peer, agent, now)

    def _transfer_answered(self, call: _Call, leg: str, agent: str, now: float) -> None:
        call.xfer = None
        call.connected_agent = agent
        call.pending_hangup = None
        call.left_at = None
        if leg:
            call.agent_legs[leg] = agent
            self._by_leg[leg] = call
        self._emit(TransferAnswered(now, call.call_id, agent))

    def _on_execute(self, ev: EslEvent, now: float) -> None:
        app = ev.get("Application")
        if app == "eavesdrop":
            self._on_eavesdrop(ev, now)
            return
        if app != "att_xfer":
            return
        uid = ev.get("Unique-ID") or ""
        call = self._by_leg.get(uid)
        if call is None or uid not in call.agent_legs or not call.answered or call.xfer is not None:
            return
        from_agent = call.agent_legs[uid]
        target = dial_target(ev.get("Application-Data") or "")
        call.xfer = _Xfer("attended", now, from_leg=uid)
        self._emit(TransferStarted(now, call.call_id, "attended", now, from_agent, target or None))

    def _on_record_start(self, ev: EslEvent, now: float) -> None:
        call = self._by_leg.get(ev.get("Unique-ID") or "")
        if call is None:
            call = self._by_leg.get(ev.get("variable_other_loopback_leg_uuid") or "")
        if call is not None and not call.recorded:
            call.recorded = True
            self._emit(RecordingStarted(now, call.call_id))

    # -- supervisors listening in (eavesdrop) --------------------------------------------------

    def agent_channel(self, call_id: str, agent: str) -> str | None:
        """The Unique-ID of ``agent``'s leg of call ``call_id`` (what ``eavesdrop`` should spy on), or None.
        The latest leg wins (after a transfer back to the same agent)."""
        call = self.calls.get(call_id)
        if call is None:
            return None
        for leg, name in reversed(list(call.agent_legs.items())):
            if name == agent:
                return leg
        return None

    def expect_spy(self, channel_uuid: str, spy_id: str | None, call_id: str, agent: str,
                   job: str | None = None) -> None:
        """ringwatch asked FreeSWITCH to ring a supervisor into ``eavesdrop`` on a channel it
        creates with Unique-ID ``channel_uuid`` (``origination_uuid``); ``job``: the bgapi's Job-UUID."""
        self.spies[channel_uuid] = _Spy(spy_id, call_id, agent, job)
        if job is not None:
            self._spy_jobs[job] = channel_uuid

    def forget_spy(self, channel_uuid: str) -> None:
        """The request never reached FreeSWITCH: nothing will come for it."""
        spy = self.spies.pop(channel_uuid, None)
        if spy is not None and spy.job is not None:
            self._spy_jobs.pop(spy.job, None)

    def _on_eavesdrop(self, ev: EslEvent, now: float) -> None:
        uid = ev.get("Unique-ID") or ""
        spy = self.spies.get(uid)
        if spy is None:
            wanted = ev.get("variable_ringwatch_spy")
            spy = next((s for s in self.spies.values() if wanted and s.spy_id == wanted and not s.started), None)
            if spy is not None:  # the originate's uuid was not ours after all: re-key on the real one
                self.spies = {k: v for k, v in self.spies.items() if v is not spy}
        if spy is None:  # started elsewhere (a dialplan feature code, fs_cli): still shown, not ringwatch's
            target = (ev.get("Application-Data") or "").strip()
            call = self._by_leg.get(target)
            spy = _Spy(None, call.call_id if call is not None else "",
                       call.agent_legs.get(target) if call is not None else None)
        self.spies[uid] = spy
        if spy.started:
            return
        spy.started = True
        self._emit(SpyStarted(now, spy.call_id, spy.agent, spy.spy_id))

    def _on_background_job(self, ev: EslEvent, now: float) -> None:
        uid = self._spy_jobs.pop(ev.get("Job-UUID") or "", None)
        if uid is None:
            return
        spy = self.spies.get(uid)
        if spy is None:
            return
        spy.job = None
        if (ev.body or "").startswith("-ERR") and not spy.started:
            # the supervisor's phone did not answer (or could not be rung): no eavesdrop, no hang-up to come
            del self.spies[uid]
            self._spy_ended(spy, now)

    def _spy_ended(self, spy: _Spy, now: float) -> None:
        if spy.job is not None:
            self._spy_jobs.pop(spy.job, None)
        self._emit(SpyStopped(now, spy.call_id, spy.agent, spy.spy_id))

    # -- hang-ups ----------------------------------------------------------------------------

    def _on_hangup(self, ev: EslEvent, now: float) -> None:
        uid = ev.get("Unique-ID") or ""
        spy = self.spies.pop(uid, None)
        if spy is not None:
            self._spy_ended(spy, now)
            return
        via = uid
        call = self._by_leg.get(uid)
        if call is None:
            # the other half of a loopback pair counts for the leg we know
            via = ev.get("variable_other_loopback_leg_uuid") or ""
            call = self._by_leg.get(via) if via else None
            if call is None:
                return
        if via in call.customer_legs:
            self._customer_hung_up(call, now)
        elif via in call.agent_legs:
            self._agent_hung_up(call, via, now)
        elif via in call.rings:
            self._finish_ring(call, via, now, "cancelled")
        x = call.xfer
        if x is not None and x.consult == via:
            if self._by_leg.get(via) is call:
                del self._by_leg[via]
            if x.kind == "blind":
                x.consult = None  # that target did not answer; the caller still waits
            elif not x.completed:
                # the consult leg went away before the hand-off: the caller is back with the transferer
                call.xfer = None
                self._emit(TransferEnded(now, call.call_id, "returned"))
        if uid == call.anchor:
            if call.in_queue and call.direction == "inbound":
                self._abandon(call, now)
            self._close(call, now, lost=False)

    def _customer_hung_up(self, call: _Call, now: float) -> None:
        if call.first_hangup_done:
            return
        if not call.answered:
            if call.caller_gone_at is None:
                call.caller_gone_at = now
            return
        if call.pending_hangup is not None:
            side, agent, at = call.pending_hangup
            self._decide(call, side, agent, at)
        else:
            self._decide(call, "customer", None, now)

    def _agent_hung_up(self, call: _Call, leg: str, now: float) -> None:
        agent = call.agent_legs.get(leg)
        x = call.xfer
        if x is not None and x.kind == "attended" and leg == x.from_leg:
            x.completed = True  # the transferer hands the caller over: not a hang-up on the customer
            self._drop_agent(call, agent)
            return
        if (call.answered and not call.first_hangup_done and call.pending_hangup is None
                and agent == call.connected_agent):
            # held: a blind transfer looks the same until the caller's leg re-enters a queue
            call.pending_hangup = ("agent", agent, now)
            call.left_at = now
        del call.agent_legs[leg]
        if self._by_leg.get(leg) is call:
            del self._by_leg[leg]

    def _decide(self, call: _Call, side: HangupSide, agent: str | None, at: float) -> None:
        call.first_hangup_done = True
        call.pending_hangup = None
        self._emit(FirstHangup(at, call.call_id, side, agent))

    def _close(self, call: _Call, now: float, lost: bool) -> None:
        self._end_rings(call, now, "cancelled")
        if call.xfer is not None:
            call.xfer = None
            self._emit(TransferEnded(now, call.call_id, "hangup"))
        if call.answered and not call.first_hangup_done and call.pending_hangup is not None:
            side, agent, at = call.pending_hangup
            self._decide(call, side, agent, at)
        self.calls.pop(call.call_id, None)
        for leg in (call.anchor, *call.customer_legs, *call.agent_legs, *call.rings):
            if self._by_leg.get(leg) is call:
                del self._by_leg[leg]
        self._emit(CallEnded(now, call.call_id, lost))

    # -- resync ---------------------------------------------------------------------------------

    #: what a resync asks for (the client sends these after every login, then one
    #: ``callcenter_config queue list members <queue>`` per queue found)
    RESYNC_COMMANDS: tuple[str, ...] = (
        "api strmicroepoch",
        "api show channels as json",
        "api show calls as json",
        "api callcenter_config queue list",
        "api callcenter_config tier list",
        "api callcenter_config agent list",
    )

    def resync_reply(self, command: str, body: str, now: float) -> None:
        """Take one reply of the snapshot; call it in stream order (events before it handled)."""
        cmd = command.strip()
        if cmd.startswith("api "):
            cmd = cmd[4:].strip()
        snap = self._snap
        if body.startswith(("-ERR", "-USAGE")):
            # a refused part of the snapshot says nothing: never take it for "no channels" / "no members"
            log.warning("esl.tracker: resync %s refused: %s", cmd.split(" ", 1)[0], body.strip()[:120])
            return
        if cmd == "strmicroepoch":
            us = _int(body.strip())
            if us > 0:
                snap["epoch"] = (us / 1e6, now)
        elif cmd == "show channels as json":
            rows = _json_rows(body)
            if rows is not None:
                snap["channels"] = {r.get("uuid", ""): r for r in rows}
                self._snap_seq = self._seq
        elif cmd == "show calls as json":
            snap["calls"] = _json_rows(body) or []
        elif cmd.startswith("callcenter_config queue list members "):
            snap.setdefault("members", []).extend(pipe_rows(body))
            snap.setdefault("member_queues", set()).add(cmd.rsplit(" ", 1)[1])
        elif cmd == "callcenter_config agent list":
            snap["agents"] = {r.get("name", ""): r for r in pipe_rows(body)}
        elif cmd == "callcenter_config tier list":
            snap["tiers"] = pipe_rows(body)
        elif cmd == "callcenter_config queue list":
            snap["queues"] = [r.get("name", "") for r in pipe_rows(body)]

    def resync_done(self, now: float) -> None:
        """Reconcile the tracked state with the snapshot taken by :meth:`resync_reply`."""
        snap, self._snap = self._snap, {}
        channels: dict[str, dict[str, str]] | None = snap.get("channels")
        if channels is None:
            log.warning("esl.tracker: resync without a channel list: nothing reconciled")
            return
        members: dict[str, dict[str, str]] = {}
        for row in snap.get("members", []):
            if row.get("state") in ("Waiting", "Trying", "Answered"):
                members[row.get("session_uuid", "")] = row
        agents: dict[str, dict[str, str]] = snap.get("agents", {})
        member_queues: set[str] = snap.get("member_queues", set())  # queues whose member list came
        server_now = self._server_now(snap, now)

        def local(epoch_text: str | None) -> float:
            epoch = _int(epoch_text)
            if server_now is None or epoch <= 0:
                return now
            # whole seconds, rounded up: a rebuilt ring never alerts before its time
            return now - max(0.0, server_now - (epoch + 1))

        closed = added = 0
        for call in list(self.calls.values()):
            if call.born > self._snap_seq:
                continue  # first seen after the channel list was taken
            if call.anchor not in channels:
                self._close(call, now, lost=True)
                closed += 1
                continue
            if call.direction == "inbound" and call.queue in member_queues:
                self._reconcile_queue(call, members.get(call.anchor), agents, channels, now, local)
        for session, row in members.items():
            if session in self._by_leg or session not in channels:
                continue
            chan = channels[session]
            call = self._new_inbound(session, row.get("cid_number", ""), row.get("cid_name", ""), now,
                                     local(chan.get("created_epoch")))
            added += 1
            queue = row.get("queue") or "unknown"
            call.member, call.queue, call.in_queue = row.get("uuid"), queue, True
            self._emit(QueueJoined(now, call.call_id, queue, local(row.get("joined_epoch"))))
            self._reconcile_queue(call, row, agents, channels, now, local)
        added += self._adopt_outbound(channels, snap.get("calls") or [], now, local)
        for name, row in agents.items():
            if not name:
                continue
            self._learn_agent(name)
            self._status[name] = row.get("status", "")
            self._state[name] = row.get("state", "")
            self._agent_changed(name, now)
        self._emit(ResyncDone(now, len(self.calls), closed, added))

    def _adopt_outbound(self, channels: Mapping[str, dict[str, str]], calls: list[dict[str, str]], now: float,
                        local: Callable[[str | None], float]) -> int:
        """Outbound dials in progress that we did not see start: a customer leg (``outbound_patterns``, or
        dialled from an ``outbound_contexts`` context) unknown to us, with the channel that dialled it
        (its ``call_uuid``, else its pair in ``show calls``).  Answered when its callstate is ``ACTIVE``."""
        peer_of = {r.get("b_uuid", ""): r.get("uuid", "") for r in calls if r.get("b_uuid")}
        added = 0
        for uid, row in channels.items():
            if not uid or uid in self._by_leg:
                continue
            origin = row.get("call_uuid", "")
            if not origin or origin == uid:
                origin = peer_of.get(uid, "")
            dialer = channels.get(origin)
            if dialer is None or origin in self._by_leg:
                continue
            name = row.get("name", "")
            if not (any(p.match(name) for p in self.rules.outbound_patterns)
                    or dialer.get("context", "") in self.rules.outbound_contexts):
                continue
            dest = dialer.get("dest", "")
            fake = EslEvent([
                ("Event-Name", "CHANNEL_CREATE"), ("Unique-ID", uid), ("Channel-Name", name),
                ("Caller-Destination-Number", row.get("dest", "")), ("Other-Leg-Unique-ID", origin),
                ("Other-Leg-Channel-Name", dialer.get("name", "")),
                ("Other-Leg-Caller-ID-Name", dialer.get("cid_name", "")),
                ("Other-Leg-Destination-Number", dest if re.fullmatch(r"\+?\d+", dest) else ""),
            ])
            call = self._start_outbound(fake, uid, origin, now, since=local(row.get("created_epoch")))
            added += 1
            if row.get("callstate") == "ACTIVE":
                call.answered = True
                self._emit(CallAnswered(now, call.call_id, uid, call.connected_agent or "unknown", None))
        return added

    def _reconcile_queue(self, call: _Call, row: dict[str, str] | None, agents: Mapping[str, dict[str, str]],
                         channels: Mapping[str, dict[str, str]], now: float,
                         local: Callable[[str | None], float]) -> None:
        state = row.get("state") if row else None
        serving = row.get("serving_agent", "") if row else ""
        member = row.get("uuid") if row else None
        for key, ring in list(call.rings.items()):
            if ring.queue is None:  # a consult leg
                leg = channels.get(key)
                if leg is None:
                    self._finish_ring(call, key, now, "cancelled")
                elif leg.get("callstate") == "ACTIVE":
                    self._finish_ring(call, key, now, "answered")
                continue
            ring_member, _, agent = key.partition("|")
            if ring_member == member and agent == serving and state == "Trying":
                continue  # still ringing
            answered = ring_member == member and agent == serving and state == "Answered"
            self._finish_ring(call, key, now, "answered" if answered else "cancelled")
            if answered and not call.answered:
                self._connect(call, agents.get(agent, {}).get("uuid", ""), agent, ring.queue, ring.leg_id, now)
        if row is None or not serving or not member:
            return
        queue = row.get("queue") or call.queue
        if state == "Trying" and f"{member}|{serving}" not in call.rings:
            since = local(agents.get(serving, {}).get("last_offered_call") or row.get("joined_epoch"))
            self._start_ring(call, f"{member}|{serving}", f"{member}:{serving}:{next(self._legs)}", serving,
                             queue, now, since)
        elif state == "Answered" and not call.answered:
            agent_leg = agents.get(serving, {}).get("uuid", "")
            self._connect(call, agent_leg, serving, queue, agent_leg or f"{member}:{serving}", now)

    def _server_now(self, snap: Mapping[str, Any], now: float) -> float | None:
        """FreeSWITCH's clock (epoch s) at our ``now``: from ``strmicroepoch``, else from the last event."""
        ref = snap.get("epoch") or self._server_clock
        if ref is None:
            return None
        epoch, at = ref
        return float(epoch) + (now - float(at))


def is_resync_command(command: str) -> bool:
    """Whether ``command`` is one of a resync's snapshot requests (its reply goes to :meth:`FsTracker.resync_reply`)."""
    cmd = command.strip()
    if not cmd.startswith("api "):
        return False
    cmd = cmd[4:].strip()
    return cmd in _RESYNC or cmd.startswith("callcenter_config queue list members ")


_RESYNC = frozenset(c[4:] for c in FsTracker.RESYNC_COMMANDS)


def _json_rows(body: str) -> list[dict[str, str]] | None:
    """Rows of ``show ... as json`` (``{"row_count": n, "rows": [...]}``; no rows: ``{"row_count": 0}``);
    None when the reply is not that document."""
    try:
        doc = json.loads(body)
    except ValueError:
        log.warning("esl.tracker: a `show ... as json` reply is not JSON (%d chars)", len(body))
        return None
    if not isinstance(doc, dict) or "row_count" not in doc:
        return None
    rows = doc.get("rows") or []
    if not isinstance(rows, list):
        return None
    return [{str(k): "" if v is None else str(v) for k, v in r.items()} for r in rows if isinstance(r, dict)]


def pipe_rows(body: str) -> list[dict[str, str]]:
    """A ``callcenter_config ... list`` reply: a ``|``-separated header line, rows, then ``+OK``."""
    lines = [line for line in body.splitlines() if line.strip()]
    if not lines or lines[0].startswith(("+OK", "-ERR")):
        return []
    header = lines[0].split("|")
    out = []
    for line in lines[1:]:
        if line.startswith(("+OK", "-ERR")):
            break
        cells = line.split("|")
        out.append(dict(zip(header, cells, strict=False)))
    return out
