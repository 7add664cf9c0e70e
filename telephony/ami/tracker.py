"""AMI messages -> ringwatch domain events.

A dispatch table ``{event name: handler}`` over in-memory state.  The tracker
knows Asterisk (channel names, Local ``;1``/``;2`` halves, queue events and
their quirks); it knows nothing of rules.  Observations it relies on are listed
in ``tests/fixtures/ami/README.md`` (recorded from Asterisk 22):

* calls are grouped by ``Linkedid``; the queue caller channel is the call's
  anchor and can join several queues (blind transfer into another queue);
* a member reached through ``Local/...`` is still that member: ``AgentCalled``
  names the member ``;1`` half, the agent's phone is the ``;2`` half; both
  share a base name (``Local/7001@agents-00000001``), which is how hang-up
  requests are attributed;
* ``AgentRingNoAnswer`` reports ``RingTime`` in milliseconds, and is followed by
  a duplicate ``DialEnd`` (NOANSWER then CANCEL): the first end wins;
* who hung up first comes from ``AgentComplete.Reason``; otherwise from the
  first ``HangupRequest``/``SoftHangupRequest`` after the answer, never from
  the order of ``Hangup`` events.  ``AgentComplete`` may come without channel
  fields; it is then matched by ``Interface``/``MemberName``.

Every handler is O(1) in the number of live calls.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from telephony.ami.codec import Message
from telephony.events import (
    AgentRemoved,
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

_UNIQUE_SUFFIX = re.compile(r"-[0-9a-fA-F]+(;\d)?$")
_UNKNOWN_CID = {"", "<unknown>", "unknown"}


def channel_base(name: str) -> str:
    """``Local/7001@agents-00000001;2`` -> ``Local/7001@agents``; ``PJSIP/7001-0000a`` -> ``PJSIP/7001``."""
    return _UNIQUE_SUFFIX.sub("", name)


def local_pair(name: str) -> str:
    """Both halves of a Local channel share this key: the name without ``;1``/``;2``."""
    return name[:-2] if len(name) > 2 and name[-2] == ";" else name


def interface_base(interface: str) -> str:
    """Queue member interface ``Local/7001@agents/n`` -> ``Local/7001@agents``."""
    if interface.startswith("Local/"):
        return "Local/" + interface[6:].split("/", 1)[0]
    return interface


_TRUNK_TECHS = ("PJSIP/", "SIP/", "IAX2/", "DAHDI/")


def trunk_of(channel: str) -> str | None:
    """The line a call uses, from its PBX-side channel: ``PJSIP/carrier-0000001a`` -> ``PJSIP/carrier``.
    Local channels are plumbing, not lines: None."""
    return channel_base(channel) if channel.startswith(_TRUNK_TECHS) else None


def _duration_s(text: str | None) -> float:
    """``HH:MM:SS`` (CoreShowChannel Duration) -> seconds."""
    if not text:
        return 0.0
    try:
        parts = [int(p) for p in text.split(":")]
    except ValueError:
        return 0.0
    total = 0
    for p in parts:
        total = total * 60 + p
    return float(total)


def _int(text: str | None, default: int = 0) -> int:
    try:
        return int(text) if text is not None else default
    except ValueError:
        return default


@dataclass(slots=True)
class _Ring:
    call_id: str
    leg_id: str
    agent: str
    queue: str | None
    since: float
    member_key: str  # local_pair of the member channel


@dataclass(frozen=True, slots=True)
class ChannelRules:
    """Site-specific recognition of agents, outbound dials and dispositions (from config)."""

    agent_patterns: tuple[re.Pattern[str], ...] = (
        re.compile(r"^Local/(?P<ext>\d+)@agents?(-phone)?$"),
        re.compile(r"^(?:PJSIP|SIP|IAX2)/(?P<ext>\d{3,6})$"),
    )
    outbound_contexts: frozenset[str] = frozenset({"outbound"})
    outbound_patterns: tuple[re.Pattern[str], ...] = (
        re.compile(r"^Local/\d+@customers$"),
        re.compile(r"^(?:PJSIP|SIP)/[^/]*trunk"),
    )
    disposition_userevent: str = "RingwatchDisposition"
    wrapup_pause_prefix: str = "wrapup:"
    commitment_userevent: str = "RingwatchCommitment"

    @classmethod
    def build(cls, agent_patterns: list[str], outbound_contexts: list[str], outbound_patterns: list[str],
              disposition_userevent: str, wrapup_pause_prefix: str,
              commitment_userevent: str = "RingwatchCommitment") -> ChannelRules:
        return cls(tuple(re.compile(p) for p in agent_patterns), frozenset(outbound_contexts),
                   tuple(re.compile(p) for p in outbound_patterns), disposition_userevent, wrapup_pause_prefix,
                   commitment_userevent)


@dataclass(slots=True)
class _Xfer:
    kind: TransferKind
    since: float
    consult: str | None = None  # the consult leg's dest channel (attended)
    completed: bool = False  # AttendedTransfer seen
    dest_bridge: str | None = None


@dataclass(slots=True)
class _Call:
    call_id: str
    anchor_uid: str  # queue caller channel (inbound) / customer leg (outbound) Uniqueid
    linkedids: set[str]
    customer_keys: set[str]
    direction: Direction = "inbound"
    agent_keys: dict[str, str] = field(default_factory=dict)  # member pair key -> agent
    rings: dict[str, _Ring] = field(default_factory=dict)  # member channel name -> ring
    queue: str | None = None
    in_queue: bool = False
    answered: bool = False
    connected_agent: str | None = None
    queue_connected: bool = False  # AgentComplete will tell who hung up
    first_hangup_done: bool = False
    pending_hangup: tuple[HangupSide, str | None, float] | None = None
    bridge: str | None = None  # the anchor channel's bridge
    hold_since: float | None = None
    xfer: _Xfer | None = None
    recorded: bool = False
    out_dest: str | None = None  # outbound: the customer leg channel
    caller_hangup: bool = False  # a hang-up request on the caller's side was seen
    left_bridge_at: float | None = None  # the caller left the agent's bridge with no hang-up: a Redirect?


Emit = Callable[[DomainEvent], None]


class AmiTracker:
    """Feed it AMI messages with their receive time; it emits domain events."""

    #: Everything the tracker reads.  Pass it to the codec so that the rest of a
    #: stream (VarSet, Newexten, ... about half of it) is dropped undecoded.
    WANTED: frozenset[str] = frozenset(
        {
            "QueueCallerJoin",
            "QueueCallerAbandon",
            "AgentCalled",
            "AgentConnect",
            "AgentRingNoAnswer",
            "AgentComplete",
            "AgentDump",
            "DialEnd",
            "HangupRequest",
            "SoftHangupRequest",
            "Hangup",
            "QueueMemberStatus",
            "QueueMemberPause",
            "QueueMemberAdded",
            "QueueMemberRemoved",
            "QueueMember",
            "QueueEntry",
            "CoreShowChannel",
            "CoreShowChannelsComplete",
            "QueueStatusComplete",
            "FullyBooted",
            "Shutdown",
            "DialBegin",
            "BlindTransfer",
            "AttendedTransfer",
            "BridgeEnter",
            "BridgeLeave",
            "MusicOnHoldStart",
            "MusicOnHoldStop",
            "MixMonitorStart",
            "UserEvent",
            "ChanSpyStart",
            "ChanSpyStop",
        }
    )

    def __init__(self, emit: Emit, rules: ChannelRules | None = None) -> None:
        self._emit = emit
        self.rules = rules or ChannelRules()
        self._last_call_of_agent: dict[str, str] = {}  # agent -> last call id (wrap-up by pause)
        self._wrapup_tag: dict[str, str] = {}  # agent -> tag of the wrap-up pause in progress
        self.calls: dict[str, _Call] = {}
        self._by_uid: dict[str, _Call] = {}  # anchor Uniqueid -> call
        self._by_linkedid: dict[str, _Call] = {}
        self._by_agent: dict[str, _Call] = {}  # agent currently connected -> call
        self._members: dict[str, str] = {}  # interface base -> member name
        self._members_by_ext: dict[str, str] = {}  # extension (agent pattern "ext") -> member name
        self._ringing_agents: dict[str, int] = {}
        self._snap_channels: list[Message] = []
        self._snap_entries: dict[str, float] = {}  # queue caller Uniqueid -> wait s
        self.unknown_events = 0
        self._handlers: dict[str, Callable[[Message, float], None]] = {
            "QueueCallerJoin": self._on_queue_join,
            "QueueCallerAbandon": self._on_abandon,
            "AgentCalled": self._on_agent_called,
            "AgentConnect": self._on_agent_connect,
            "AgentRingNoAnswer": self._on_ring_noanswer,
            "AgentComplete": self._on_agent_complete,
            "AgentDump": self._on_agent_dump,
            "DialEnd": self._on_dial_end,
            "HangupRequest": self._on_hangup_request,
            "SoftHangupRequest": self._on_hangup_request,
            "Hangup": self._on_hangup,
            "QueueMemberStatus": self._on_member_status,
            "QueueMember": self._on_member_status,
            "QueueMemberAdded": self._on_member_status,
            "QueueMemberPause": self._on_member_status,
            "QueueMemberRemoved": self._on_member_removed,
            "QueueEntry": self._on_queue_entry,
            "CoreShowChannel": self._on_show_channel,
            "CoreShowChannelsComplete": self._on_show_channels_complete,
            "DialBegin": self._on_dial_begin,
            "BlindTransfer": self._on_blind_transfer,
            "AttendedTransfer": self._on_attended_transfer,
            "BridgeEnter": self._on_bridge_enter,
            "BridgeLeave": self._on_bridge_leave,
            "MusicOnHoldStart": self._on_moh_start,
            "MusicOnHoldStop": self._on_moh_stop,
            "MixMonitorStart": self._on_mixmonitor,
            "UserEvent": self._on_user_event,
            "ChanSpyStart": self._on_chanspy,
            "ChanSpyStop": self._on_chanspy,
        }
        #: spyer channel base (the supervisor's phone, ``PJSIP/8001``) -> the id of ringwatch's spy request
        self.spy_ids: dict[str, str] = {}

    # -- link ------------------------------------------------------------------

    def link_up(self, now: float, pbx: str = "asterisk") -> None:
        self._snap_channels.clear()
        self._emit(LinkUp(now, pbx))

    def link_down(self, now: float, reason: str) -> None:
        self._emit(LinkDown(now, reason))

    @property
    def live_calls(self) -> int:
        return len(self.calls)

    # -- dispatch --------------------------------------------------------------

    def handle(self, msg: Message, now: float) -> None:
        name = msg.event
        if name is None:
            return
        handler = self._handlers.get(name)
        if handler is not None:
            handler(msg, now)

    def _agent_name(self, msg: Message) -> str:
        name = msg.get("MemberName") or msg.get("Name")
        iface = msg.get("Interface") or msg.get("Location") or msg.get("StateInterface") or ""
        if name:
            if iface:
                base = interface_base(iface)
                if self._members.get(base) != name:
                    self._learn_member(base, name)
            return name
        return self._members.get(interface_base(iface), iface or "unknown")

    def _learn_member(self, base: str, name: str) -> None:
        self._members[base] = name
        for pattern in self.rules.agent_patterns:
            m = pattern.match(base)
            if m and m.groupdict().get("ext"):
                self._members_by_ext[m.group("ext")] = name
                break

    def _call_for(self, msg: Message) -> _Call | None:
        uid = msg.get("Uniqueid")
        call = self._by_uid.get(uid) if uid else None
        if call is None:
            lid = msg.get("Linkedid")
            if lid:
                call = self._by_linkedid.get(lid)
        return call

    # -- queue caller ------------------------------------------------------------

    def _on_queue_join(self, msg: Message, now: float) -> None:
        self._join(msg, now, since=now)

    def _join(self, msg: Message, now: float, since: float, call_since: float | None = None) -> _Call:
        uid = msg.get("Uniqueid") or msg.get("Channel") or ""
        queue = msg.get("Queue") or "unknown"
        call = self._call_for(msg)
        if call is None:
            lid = msg.get("Linkedid") or uid
            call_id = lid if lid not in self.calls else f"{lid}/{uid}"
            channel = msg.get("Channel") or ""
            call = _Call(call_id, uid, {lid}, {local_pair(channel)})
            self.calls[call_id] = call
            self._by_uid[uid] = call
            self._by_linkedid[lid] = call
            caller = msg.get("CallerIDNum") or ""
            name = msg.get("CallerIDName") or ""
            self._emit(
                CallOffered(
                    now,
                    call_id,
                    "inbound",
                    "" if caller in _UNKNOWN_CID else caller,
                    "" if name in _UNKNOWN_CID else name,
                    since if call_since is None else call_since,
                    trunk=trunk_of(channel),
                )
            )
        if call.left_bridge_at is not None and call.xfer is None:
            self._redirected(call, queue, now)
        call.queue = queue
        call.in_queue = True
        call.queue_connected = False
        self._emit(QueueJoined(now, call.call_id, queue, since))
        return call

    def _on_abandon(self, msg: Message, now: float) -> None:
        call = self._call_for(msg)
        if call is None:
            return
        call.in_queue = False
        self._end_rings(call, now, "cancelled")
        self._emit(CallAbandoned(now, call.call_id, msg.get("Queue") or call.queue or "unknown"))
        if not call.first_hangup_done:
            call.first_hangup_done = True
            self._emit(FirstHangup(now, call.call_id, "customer", None))

    def _on_queue_entry(self, msg: Message, now: float) -> None:
        uid = msg.get("Uniqueid")
        if uid:
            self._snap_entries[uid] = float(_int(msg.get("Wait")))

    # -- agent legs ----------------------------------------------------------------

    def _on_agent_called(self, msg: Message, now: float) -> None:
        call = self._call_for(msg)
        dest = msg.get("DestChannel")
        if call is None or not dest:
            return
        self._start_ring(call, dest, msg.get("DestUniqueid") or dest, self._agent_name(msg),
                         msg.get("Queue") or call.queue, now, now)

    def _start_ring(self, call: _Call, dest: str, leg_id: str, agent: str,
                    queue: str | None, now: float, since: float) -> None:
        if dest in call.rings:
            return
        ring = _Ring(call.call_id, leg_id, agent, queue, since, local_pair(dest))
        call.rings[dest] = ring
        self._ringing_agents[agent] = self._ringing_agents.get(agent, 0) + 1
        self._emit(AgentRinging(now, call.call_id, leg_id, agent, queue, since))

    def _finish_ring(self, call: _Call, dest: str, now: float, outcome: RingOutcome) -> _Ring | None:
        ring = call.rings.pop(dest, None)
        if ring is None:
            return None
        n = self._ringing_agents.get(ring.agent, 1) - 1
        if n > 0:
            self._ringing_agents[ring.agent] = n
        else:
            self._ringing_agents.pop(ring.agent, None)
        self._emit(AgentRingEnded(now, call.call_id, ring.leg_id, ring.agent, ring.queue, outcome))
        return ring

    def _end_rings(self, call: _Call, now: float, outcome: RingOutcome) -> None:
        for dest in list(call.rings):
            self._finish_ring(call, dest, now, outcome)

    def _on_agent_connect(self, msg: Message, now: float) -> None:
        call = self._call_for(msg)
        dest = msg.get("DestChannel")
        if call is None or not dest:
            return
        agent = self._agent_name(msg)
        ring = self._finish_ring(call, dest, now, "answered")
        leg_id = ring.leg_id if ring else (msg.get("DestUniqueid") or dest)
        self._connect(call, dest, agent, msg.get("Queue") or call.queue, leg_id, now)

    def _connect(self, call: _Call, dest: str, agent: str, queue: str | None, leg_id: str, now: float) -> None:
        call.in_queue = False
        call.answered = True
        call.queue_connected = True
        call.pending_hangup = None
        call.connected_agent = agent
        call.agent_keys[local_pair(dest)] = agent
        self._by_agent[agent] = call
        self._last_call_of_agent[agent] = call.call_id
        if call.xfer is not None:
            self._transfer_answered(call, dest, agent, now)
        self._emit(CallAnswered(now, call.call_id, leg_id, agent, queue))

    def _on_ring_noanswer(self, msg: Message, now: float) -> None:
        call = self._call_for(msg)
        dest = msg.get("DestChannel")
        if call is not None and dest:
            self._finish_ring(call, dest, now, "noanswer")

    def _on_dial_end(self, msg: Message, now: float) -> None:
        dest = msg.get("DestChannel")
        if not dest:
            return
        status = msg.get("DialStatus")
        call = self._call_for(msg)
        if call is None:
            lid = msg.get("DestLinkedid")
            call = self._by_linkedid.get(lid) if lid else None
        if call is None:
            return
        if call.direction == "outbound" and dest == call.out_dest:
            if status == "ANSWER" and not call.answered:
                call.answered = True
                self._emit(CallAnswered(now, call.call_id, call.anchor_uid, call.connected_agent or "unknown", None))
            return
        ring = call.rings.get(dest)
        if ring is None:
            return
        if status != "ANSWER":
            self._finish_ring(call, dest, now, "noanswer" if status == "NOANSWER" else "cancelled")
            return
        if ring.queue is not None:
            return  # a queue leg: AgentConnect follows and says more
        self._finish_ring(call, dest, now, "answered")
        x = call.xfer
        if x is not None and (x.kind == "blind" or (x.completed and x.consult == dest)):
            # blind transfer to an extension, or the consult target of a transfer whose
            # transferer left before it answered ("blonde"): a person has the caller again
            self._transfer_answered(call, dest, ring.agent, now)

    # -- hang-ups ------------------------------------------------------------------

    def _on_agent_complete(self, msg: Message, now: float) -> None:
        call = self._call_for(msg)
        agent = self._agent_name(msg)
        if call is None:
            call = self._by_agent.get(agent)
        if call is None:
            return
        if self._by_agent.get(agent) is call:
            del self._by_agent[agent]
        call.queue_connected = False
        reason = msg.get("Reason")
        if call.left_bridge_at is not None and not call.caller_hangup:
            reason = "transfer"  # the caller left the bridge alive (a Redirect): nobody hung up on anybody
        if reason == "transfer":
            # The transferer leaving is not hanging up on the customer: forget its legs.
            call.pending_hangup = None
            for key in [k for k, a in call.agent_keys.items() if a == agent]:
                del call.agent_keys[key]
            return
        if call.first_hangup_done:
            return
        if reason == "caller":
            self._decide(call, "customer", None, now)
        elif reason == "agent":
            self._decide(call, "agent", agent, now)

    def _on_agent_dump(self, msg: Message, now: float) -> None:
        call = self._call_for(msg)
        if call is not None and not call.first_hangup_done:
            self._decide(call, "agent", self._agent_name(msg), now)

    def _decide(self, call: _Call, side: HangupSide, agent: str | None, now: float) -> None:
        call.first_hangup_done = True
        call.pending_hangup = None
        self._emit(FirstHangup(now, call.call_id, side, agent))

    def _on_hangup_request(self, msg: Message, now: float) -> None:
        lid = msg.get("Linkedid")
        call = self._by_linkedid.get(lid) if lid else None
        if call is None:
            return
        key = local_pair(msg.get("Channel") or "")
        if key in call.customer_keys:
            call.caller_hangup = True
        if not call.answered or call.first_hangup_done or call.pending_hangup:
            return
        if key in call.customer_keys:
            side: HangupSide = "customer"
            agent = None
        elif key in call.agent_keys:
            if call.left_bridge_at is not None:
                return  # the caller was redirected away: the agent's leg ending now is plumbing
            side = "agent"
            agent = call.agent_keys[key]
        else:
            return
        if call.queue_connected:
            # AgentComplete follows and is authoritative; keep this as a fallback.
            call.pending_hangup = (side, agent, now)
        else:
            self._decide(call, side, agent, now)

    def _on_hangup(self, msg: Message, now: float) -> None:
        uid = msg.get("Uniqueid") or ""
        call = self._by_uid.get(uid)
        if call is None:
            # a ringing member leg that went away, or the consult leg of an attended transfer
            lid = msg.get("Linkedid")
            other = self._by_linkedid.get(lid) if lid else None
            if other is None:
                return
            chan = msg.get("Channel") or ""
            if chan in other.rings:
                self._finish_ring(other, chan, now, "cancelled")
            x = other.xfer
            if x is not None and x.consult == chan and not x.completed:
                other.xfer = None
                self._emit(TransferEnded(now, other.call_id, "returned"))
            return
        self._close(call, now, lost=False)

    def _close(self, call: _Call, now: float, lost: bool) -> None:
        self._end_rings(call, now, "cancelled")
        if call.xfer is not None:
            call.xfer = None
            self._emit(TransferEnded(now, call.call_id, "hangup"))
        if call.answered and not call.first_hangup_done and call.pending_hangup is not None:
            side, agent, at = call.pending_hangup
            self._decide(call, side, agent, at)
        self.calls.pop(call.call_id, None)
        self._by_uid.pop(call.anchor_uid, None)
        for lid in call.linkedids:
            if self._by_linkedid.get(lid) is call:
                del self._by_linkedid[lid]
        if call.connected_agent and self._by_agent.get(call.connected_agent) is call:
            del self._by_agent[call.connected_agent]
        self._emit(CallEnded(now, call.call_id, lost))

    # -- agents ----------------------------------------------------------------------

    def _on_member_status(self, msg: Message, now: float) -> None:
        agent = self._agent_name(msg)
        paused = msg.get("Paused") == "1"
        status = _int(msg.get("Status"))
        state: AgentState
        if paused:
            state = "paused"
        elif status in (4, 5):
            state = "offline"
        elif status in (6, 7):
            state = "ringing"
        elif status in (2, 3, 8):
            if msg.get("InCall") == "1":
                state = "talking"
            elif agent in self._ringing_agents:
                state = "ringing"
            else:
                state = "talking"
        elif status == 1:
            state = "available"
        else:
            state = "unknown"
        reason = msg.get("PausedReason") or msg.get("Reason") or None
        self._emit(AgentStateChanged(now, agent, msg.get("Queue"), state, paused, reason if paused else None))
        if msg.event == "QueueMemberPause":
            self._wrapup_pause(agent, paused, reason, now)

    def _wrapup_pause(self, agent: str, paused: bool, reason: str | None, now: float) -> None:
        prefix = self.rules.wrapup_pause_prefix
        if paused and reason and prefix and reason.startswith(prefix):
            self._wrapup_tag[agent] = reason[len(prefix):].strip()
        elif not paused and agent in self._wrapup_tag:
            tag = self._wrapup_tag.pop(agent)
            call_id = self._last_call_of_agent.get(agent)
            if call_id is not None:
                self._emit(DispositionReceived(now, call_id, tag, "", agent, "pbx-pause"))

    def _on_member_removed(self, msg: Message, now: float) -> None:
        self._emit(AgentRemoved(now, self._agent_name(msg), msg.get("Queue") or ""))

    # -- agents' channels, outbound calls, transfers, recordings ------------------------

    def _agent_for_channel(self, name: str, cid_name: str | None = None) -> str | None:
        """The agent whose phone ``name`` is: a known queue member, else by the agent patterns
        (then the member with that extension, else the phone's caller-ID name, else the extension)."""
        base = channel_base(name)
        agent = self._members.get(base)
        if agent is not None:
            return agent
        for pattern in self.rules.agent_patterns:
            m = pattern.match(base)
            if m:
                ext = m.groupdict().get("ext")
                if not ext:
                    return base
                known = self._members_by_ext.get(ext)
                if known is not None:
                    return known
                return cid_name if cid_name and cid_name not in _UNKNOWN_CID else ext
        return None

    def _is_outbound(self, msg: Message, dest: str) -> bool:
        if msg.get("Context") in self.rules.outbound_contexts:
            return True
        base = channel_base(dest)
        return any(p.match(base) for p in self.rules.outbound_patterns)

    def _on_dial_begin(self, msg: Message, now: float) -> None:
        dest = msg.get("DestChannel")
        if not dest:
            return
        lid = msg.get("DestLinkedid") or msg.get("Linkedid") or ""
        call = self._by_linkedid.get(lid)
        chan = msg.get("Channel")
        if call is not None:
            if dest in call.rings or call.direction != "inbound":
                return
            agent = self._agent_for_channel(dest)
            if agent is None:
                return
            leg = msg.get("DestUniqueid") or dest
            if chan and local_pair(chan) in call.customer_keys:
                if call.left_bridge_at is not None and call.xfer is None:
                    self._redirected(call, agent, now)
                self._start_ring(call, dest, leg, agent, None, now, now)  # the caller dials an extension
            elif call.xfer is None and call.answered and call.hold_since is not None:
                # the agent consults a colleague while the caller waits on hold: an attended transfer
                call.xfer = _Xfer("attended", call.hold_since, consult=dest)
                self._emit(TransferStarted(now, call.call_id, "attended", call.hold_since, call.connected_agent,
                                           agent))
                self._start_ring(call, dest, leg, agent, None, now, now)
            elif call.xfer is not None:
                self._start_ring(call, dest, leg, agent, None, now, now)
            return
        if not chan or not self._is_outbound(msg, dest):
            return
        self._start_outbound(msg, chan, dest, now)

    def _start_outbound(self, msg: Message, chan: str, dest: str, now: float, since: float | None = None) -> _Call:
        uid = msg.get("DestUniqueid") or dest
        lid = msg.get("Linkedid") or uid
        call_id = lid if lid not in self.calls else f"{lid}/{uid}"
        call = _Call(call_id, uid, {lid}, {local_pair(dest)}, direction="outbound")
        cid_name = msg.get("CallerIDName") or ""
        agent = (self._agent_for_channel(chan, cid_name) or ("" if cid_name in _UNKNOWN_CID else cid_name)
                 or channel_base(chan))
        call.agent_keys[local_pair(chan)] = agent
        call.connected_agent = agent
        call.out_dest = dest
        self.calls[call_id] = call
        self._by_uid[uid] = call
        self._by_linkedid[lid] = call
        self._last_call_of_agent[agent] = call_id
        exten = msg.get("Exten") or ""
        number = exten if exten[-4:].isdigit() else (msg.get("DestCallerIDNum") or msg.get("DestExten") or "")
        self._emit(CallOffered(now, call_id, "outbound", number, "", now if since is None else since, agent,
                               trunk=trunk_of(dest)))
        return call

    def _on_blind_transfer(self, msg: Message, now: float) -> None:
        if msg.get("Result") != "Success":
            return
        uid = msg.get("TransfereeUniqueid") or ""
        call = self._by_uid.get(uid)
        if call is None:
            lid = msg.get("TransfereeLinkedid")
            call = self._by_linkedid.get(lid) if lid else None
        if call is None or call.direction != "inbound":
            return
        from_agent = call.agent_keys.get(local_pair(msg.get("TransfererChannel") or ""))
        ext, ctx = msg.get("Extension") or "", msg.get("Context") or ""
        call.xfer = _Xfer("blind", now)
        call.hold_since = None
        self._emit(TransferStarted(now, call.call_id, "blind", now, from_agent, f"{ext}@{ctx}" if ctx else ext))

    def _on_attended_transfer(self, msg: Message, now: float) -> None:
        if msg.get("Result") != "Success":
            return
        call = self._by_uid.get(msg.get("TransfereeUniqueid") or "")
        if call is None:
            lid = msg.get("OrigTransfererLinkedid") or msg.get("TransfereeLinkedid")
            call = self._by_linkedid.get(lid) if lid else None
        if call is None or call.direction != "inbound":
            return
        x = call.xfer
        if x is None or x.kind != "attended":
            since = call.hold_since if call.hold_since is not None else now
            x = call.xfer = _Xfer("attended", since)
            self._emit(TransferStarted(now, call.call_id, "attended", since, call.connected_agent, None))
        x.completed = True
        x.dest_bridge = msg.get("DestBridgeUniqueid") or call.bridge
        for key in ("OrigTransfererChannel", "SecondTransfererChannel"):
            call.agent_keys.pop(local_pair(msg.get(key) or ""), None)

    def _on_bridge_enter(self, msg: Message, now: float) -> None:
        uid = msg.get("Uniqueid") or ""
        bridge = msg.get("BridgeUniqueid")
        call = self._by_uid.get(uid)
        if call is not None:
            call.bridge = bridge
            call.left_bridge_at = None
            return
        lid = msg.get("Linkedid")
        call = self._by_linkedid.get(lid) if lid else None
        if call is None or call.xfer is None or not call.xfer.completed or bridge != call.xfer.dest_bridge:
            return
        chan = msg.get("Channel") or ""
        agent = self._agent_for_channel(chan)
        if agent is not None and chan not in call.rings:
            self._transfer_answered(call, chan, agent, now)

    def _on_bridge_leave(self, msg: Message, now: float) -> None:
        """The caller leaving the agent's bridge with nobody hanging up is a Redirect (a blind
        transfer done with AMI ``Redirect``): confirmed when the caller next joins a queue or dials."""
        call = self._by_uid.get(msg.get("Uniqueid") or "")
        if (call is None or call.direction != "inbound" or not call.answered or call.in_queue
                or call.xfer is not None or call.caller_hangup or call.pending_hangup is not None
                or call.first_hangup_done):
            return
        call.left_bridge_at = now

    def _redirected(self, call: _Call, to: str, now: float) -> None:
        """Confirm a Redirect as a blind transfer handed off when the caller left the bridge."""
        since = call.left_bridge_at if call.left_bridge_at is not None else now
        call.left_bridge_at = None
        from_agent = call.connected_agent
        for key in [k for k, a in call.agent_keys.items() if a == from_agent]:
            del call.agent_keys[key]
        call.xfer = _Xfer("blind", since)
        self._emit(TransferStarted(now, call.call_id, "blind", since, from_agent, to))

    def _transfer_answered(self, call: _Call, chan: str, agent: str, now: float) -> None:
        call.xfer = None
        call.hold_since = None
        call.agent_keys[local_pair(chan)] = agent
        call.connected_agent = agent
        self._last_call_of_agent[agent] = call.call_id
        self._emit(TransferAnswered(now, call.call_id, agent))

    def _on_moh_start(self, msg: Message, now: float) -> None:
        call = self._by_uid.get(msg.get("Uniqueid") or "")
        if call is not None and call.answered and not call.in_queue and call.hold_since is None:
            call.hold_since = now

    def _on_moh_stop(self, msg: Message, now: float) -> None:
        call = self._by_uid.get(msg.get("Uniqueid") or "")
        if call is not None and call.xfer is None:
            call.hold_since = None

    def _on_mixmonitor(self, msg: Message, now: float) -> None:
        call = self._call_for(msg)
        if call is not None and not call.recorded:
            call.recorded = True
            self._emit(RecordingStarted(now, call.call_id))

    def _on_user_event(self, msg: Message, now: float) -> None:
        name = msg.get("UserEvent")
        if name == self.rules.commitment_userevent:
            self._on_commitment_event(msg, now)
            return
        if name != self.rules.disposition_userevent:
            return
        tag = (msg.get("Tag") or "").strip()
        call_id = msg.get("CallID")
        if not call_id:
            call = self._call_for(msg)
            call_id = call.call_id if call is not None else msg.get("Linkedid")
        if not call_id:
            log.warning("ami.tracker: %s without CallID/Linkedid ignored", self.rules.disposition_userevent)
            return
        chan = msg.get("Channel")
        agent = msg.get("Agent") or (self._agent_for_channel(chan) if chan else None)
        self._emit(DispositionReceived(now, call_id, tag, msg.get("Note") or "", agent, "pbx-userevent"))

    def _on_commitment_event(self, msg: Message, now: float) -> None:
        """``UserEvent(RingwatchCommitment,Kind: callback,Customer: 138...,Note: ...)`` on the call's channel."""
        call = self._call_for(msg)
        call_id = msg.get("CallID") or (call.call_id if call is not None else msg.get("Linkedid"))
        kind = (msg.get("Kind") or "").strip()
        if not call_id or not kind:
            log.warning("ami.tracker: %s without a call or Kind ignored", self.rules.commitment_userevent)
            return
        chan = msg.get("Channel")
        agent = msg.get("Agent") or (self._agent_for_channel(chan) if chan else None) or \
            (call.connected_agent if call is not None else None)
        customer = msg.get("Customer") or ""  # empty: the monitor uses the call's customer
        self._emit(CommitmentRequested(now, call_id, kind, customer, agent, msg.get("Team") or None,
                                       msg.get("Note") or None))

    # -- supervisors listening in (ChanSpy) ---------------------------------------------

    def agent_channel(self, call_id: str, agent: str) -> str | None:
        """The channel of ``agent``'s leg of call ``call_id`` (what ChanSpy should spy on), or None.
        A Local member is spied on at its ``;1`` half, the one bridged with the caller."""
        call = self.calls.get(call_id)
        if call is None:
            return None
        for key, name in reversed(list(call.agent_keys.items())):
            if name == agent:
                return key + ";1" if key.startswith("Local/") else key
        return None

    def _on_chanspy(self, msg: Message, now: float) -> None:
        spyee = msg.get("SpyeeChannel") or ""
        lid = msg.get("SpyeeLinkedid")
        call = self._by_linkedid.get(lid) if lid else None
        agent = call.agent_keys.get(local_pair(spyee)) if call is not None else None
        if agent is None and spyee:
            agent = self._agent_for_channel(spyee)
        spyer = channel_base(msg.get("SpyerChannel") or "")
        spy_id = self.spy_ids.get(spyer) or self.spy_ids.get(spyer.split(";", 1)[0])
        cls = SpyStarted if msg.event == "ChanSpyStart" else SpyStopped
        if cls is SpyStopped and spy_id is not None:
            self.spy_ids.pop(spyer, None)
        self._emit(cls(now, call.call_id if call is not None else "", agent, spy_id))

    # -- resync ------------------------------------------------------------------------

    def _on_show_channel(self, msg: Message, now: float) -> None:
        self._snap_channels.append(msg)

    def _on_show_channels_complete(self, msg: Message, now: float) -> None:
        snapshot, self._snap_channels = self._snap_channels, []
        entries, self._snap_entries = self._snap_entries, {}
        self.reconcile(snapshot, entries, now)

    def reconcile(self, channels: list[Message], entries: dict[str, float], now: float) -> None:
        """Make the tracked state agree with a full channel list from the PBX.

        Calls whose anchor channel is gone ended while we were away; rings whose
        member channel is gone ended (or were answered, if the member is up);
        queue callers and ringing members we did not know are adopted, with
        ``since`` taken from the PBX's own durations.
        """
        by_uid = {m.get("Uniqueid"): m for m in channels}
        by_name = {m.get("Channel"): m for m in channels}
        closed = added = 0
        for call in list(self.calls.values()):
            if call.anchor_uid not in by_uid:
                self._close(call, now, lost=True)
                closed += 1
                continue
            for dest in list(call.rings):
                m = by_name.get(dest)
                if m is None:
                    self._finish_ring(call, dest, now, "cancelled")
                elif m.get("ChannelStateDesc") == "Up":
                    ring = self._finish_ring(call, dest, now, "answered")
                    if ring is not None:
                        self._connect(call, dest, ring.agent, ring.queue, ring.leg_id, now)
        # adopt queue callers first, then their agent legs
        bridged: dict[str, list[Message]] | None = None
        for m in channels:
            uid = m.get("Uniqueid") or ""
            if m.get("Application") != "Queue" or uid in self._by_uid:
                continue
            duration = _duration_s(m.get("Duration"))
            queue = (m.get("ApplicationData") or "unknown").split(",")[0]
            fake = Message([
                ("Event", "QueueCallerJoin"),
                ("Channel", m.get("Channel") or ""),
                ("Uniqueid", uid),
                ("Linkedid", m.get("Linkedid") or uid),
                ("CallerIDNum", m.get("CallerIDNum") or ""),
                ("CallerIDName", m.get("CallerIDName") or ""),
                ("Queue", queue),
            ])
            wait = entries.get(uid, duration)
            call = self._join(fake, now, since=now - wait, call_since=now - duration)
            added += 1
            if m.get("BridgeId"):
                # already talking: find the member leg in the same bridge
                if bridged is None:  # built once per reconcile: O(channels), not calls x channels
                    bridged = {}
                    for c in channels:
                        if c.get("BridgeId"):
                            bridged.setdefault(c.get("BridgeId") or "", []).append(c)
                self._adopt_connected(call, m, bridged, now)
        for m in channels:
            if m.get("Application") != "AppQueue" or m.get("ChannelStateDesc") not in ("Ringing", "Ring"):
                continue
            lid = m.get("Linkedid") or ""
            owner = self._by_linkedid.get(lid)
            name = m.get("Channel") or ""
            if owner is None or name in owner.rings or (owner.answered and not owner.in_queue):
                continue
            agent = self._members.get(channel_base(name), channel_base(name))
            since = now - _duration_s(m.get("Duration"))
            self._start_ring(owner, name, m.get("Uniqueid") or name, agent, owner.queue, now, since)
        added += self._adopt_outbound(channels, now)
        self._emit(ResyncDone(now, len(self.calls), closed, added))

    def _adopt_outbound(self, channels: list[Message], now: float) -> int:
        """Outbound dials in progress that we did not see start (ringwatch started, or the link was down):
        a customer leg (``outbound_patterns``; a Local channel's ``;1`` half) of a Linkedid we do not know,
        dialled by the channel of the same Linkedid that runs ``Dial`` (its ``Exten`` is the number)."""
        dialers: dict[str, Message] = {}  # Linkedid -> the channel running Dial: O(channels) per reconcile
        for c in channels:
            if c.get("Application") == "Dial" and c.get("Linkedid"):
                dialers.setdefault(c.get("Linkedid") or "", c)
        added = 0
        for m in channels:
            name = m.get("Channel") or ""
            uid = m.get("Uniqueid") or ""
            lid = m.get("Linkedid") or uid
            if name.endswith(";2") or uid in self._by_uid or lid in self._by_linkedid:
                continue
            dialer = dialers.get(lid)
            if dialer is None or dialer is m or local_pair(dialer.get("Channel") or "") == local_pair(name):
                continue  # nobody dials it: not a call ringwatch can attribute
            base = channel_base(name)
            if not (any(p.match(base) for p in self.rules.outbound_patterns)
                    or (dialer.get("Context") in self.rules.outbound_contexts
                        and self._agent_for_channel(name) is None)):
                continue
            chan = dialer.get("Channel") or ""
            fake = Message([
                ("Event", "DialBegin"),
                ("Channel", chan),
                ("CallerIDName", dialer.get("CallerIDName") or ""),
                ("Context", dialer.get("Context") or ""),
                ("Exten", dialer.get("Exten") or ""),
                ("Linkedid", lid),
                ("DestChannel", name),
                ("DestUniqueid", uid),
                ("DestCallerIDNum", m.get("Exten") or ""),
            ])
            call = self._start_outbound(fake, chan, name, now, since=now - _duration_s(m.get("Duration")))
            added += 1
            if m.get("ChannelStateDesc") == "Up":
                call.answered = True
                self._emit(CallAnswered(now, call.call_id, call.anchor_uid, call.connected_agent or "unknown", None))
        return added

    def _adopt_connected(self, call: _Call, caller: Message, bridged: dict[str, list[Message]], now: float) -> None:
        for m in bridged.get(caller.get("BridgeId") or "", ()):
            if m is caller:
                continue
            name = m.get("Channel") or ""
            agent = self._members.get(channel_base(name))
            if agent is None and m.get("Application") != "AppQueue":
                continue
            self._connect(call, name, agent or channel_base(name), call.queue, m.get("Uniqueid") or name, now)
            return
