"""AMI messages -> line events: trunk and endpoint reachability and registration (SYS-LINES).

Separate from :mod:`telephony.ami.tracker` (calls) on purpose: its own ``WANTED``
set, its own ``handle(msg, now)``, fed by the same decoder in the adapter and in
replay.  It emits :class:`~telephony.events.LineStateChanged` on a change of a
line's up/down state, per aspect, and :class:`~telephony.events.CallLineSeen`
when a call's leg is on a PBX line (the trunk of a call, for connect rates).

What Asterisk tells, and how it is read here:

* ``ContactStatus`` (PJSIP, live): ``EndpointName``/``AOR``, ``URI``,
  ``ContactStatus`` Reachable / Unreachable / Unknown / Unqualified / NonQualified /
  Created / Updated / Removed, ``RoundtripUsec``.  An endpoint is up when one of its
  contacts is Reachable (or not qualified, or just registered: Created); down when
  its contacts are all Unreachable or all gone (Removed); Unknown says nothing.
* ``ContactList`` items of ``PJSIPShowContacts`` (resync): the same per contact
  (``Endpoint``, ``Uri``, ``Status``); ``ContactListComplete`` closes the snapshot,
  which *replaces* the known contacts (a contact missing from it is gone).
* ``OutboundRegistrationDetail`` items of ``PJSIPShowRegistrationsOutbound``
  (resync): ``ObjectName``, ``Endpoint`` (when the registration names one),
  ``ClientUri``/``ServerUri``, ``Status`` Registered / Unregistered / Rejected.
* ``Registry`` (live, PJSIP and chan_sip): ``ChannelType``, ``Username`` (PJSIP:
  the client URI), ``Domain`` (PJSIP: the server URI), ``Status`` Registered /
  Unregistered / Rejected / Failed, ``Cause``.  Matched to its registration by the
  URIs learnt from the resync list, else named ``registration/<user>@<domain>``.
* ``PeerStatus`` (live, chan_sip and PJSIP): ``Peer`` (``SIP/x``, ``PJSIP/x``),
  ``PeerStatus`` Reachable / Registered / Lagged = up; Unreachable / Unregistered /
  Rejected = down.
* ``PeerEntry`` items of ``SIPpeers`` (chan_sip resync): ``ObjectName``, ``Status``
  ``OK (5 ms)`` / ``LAGGED (..)`` = up, ``UNREACHABLE`` = down, else nothing.
* ``DeviceStateChange`` (live; and the items of ``DeviceStateList``, the resync
  that needs only the ``reporting`` write class): ``Device``, ``State``
  UNAVAILABLE = down, INVALID / UNKNOWN = nothing, any other = up.  Only devices
  of a line technology (PJSIP/, SIP/, IAX2/, DAHDI/); queues, Local channels and
  custom devices are not lines.
* ``QueueCallerJoin`` (``Channel``) and ``DialBegin`` (``Channel``/``DestChannel``)
  of a call on a line technology: ``CallLineSeen`` with the call's ``Linkedid``.

Each event is O(1) in the number of lines (a contact snapshot is linear in its size).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from telephony.ami.codec import Message
from telephony.ami.tracker import channel_base
from telephony.events import CallLineSeen, LineAspect, LineEvent, LineStateChanged

log = logging.getLogger(__name__)

#: channel / device technologies that are lines (SIP trunks, phones, TDM spans)
LINE_TECH: tuple[str, ...] = ("PJSIP/", "SIP/", "IAX2/", "DAHDI/")

#: resync actions for lines after every login: both answered with list events this tracker reads.
#: DeviceStateList needs the ``reporting`` write class (as CoreShowChannels); the PJSIP lists need
#: ``system`` (docs/lines.md).  chan_sip sites add ``SIPpeers``.
DEFAULT_LINE_RESYNC: tuple[str, ...] = ("DeviceStateList", "PJSIPShowRegistrationsOutbound")

_CONTACT_UP = frozenset({"Reachable", "NonQualified", "Unqualified", "Created"})
_CONTACT_DOWN = frozenset({"Unreachable"})
_PEER_UP = frozenset({"Reachable", "Registered", "Lagged"})
_PEER_DOWN = frozenset({"Unreachable", "Unregistered", "Rejected"})
_REG_UP = frozenset({"Registered"})
_REG_DOWN = frozenset({"Unregistered", "Rejected", "Failed"})
_DEVICE_NEUTRAL = frozenset({"INVALID", "UNKNOWN", ""})

Emit = Callable[[LineEvent], None]


def is_line(name: str) -> bool:
    return name.startswith(LINE_TECH)


def _strip_sip(uri: str) -> str:
    for prefix in ("sip:", "sips:"):
        if uri.startswith(prefix):
            return uri[len(prefix):]
    return uri


def _rtt_ms(text: str | None) -> float | None:
    try:
        usec = int(text) if text else 0
    except ValueError:
        return None
    return round(usec / 1000, 3) if usec > 0 else None


class LineTracker:
    """Feed it AMI messages with their receive time; it emits line events."""

    WANTED: frozenset[str] = frozenset({
        "ContactStatus", "ContactList", "ContactListComplete",
        "OutboundRegistrationDetail", "OutboundRegistrationDetailComplete", "Registry",
        "PeerStatus", "PeerEntry", "PeerlistComplete",
        "DeviceStateChange", "DeviceStateListComplete",
        "QueueCallerJoin", "DialBegin",
    })

    def __init__(self, emit: Emit, resync_actions: tuple[str, ...] = DEFAULT_LINE_RESYNC) -> None:
        self._emit = emit
        self.resync_actions = resync_actions
        self._last: dict[tuple[str, LineAspect], bool] = {}  # what was last emitted per line and aspect
        self._contacts: dict[str, dict[str, str]] = {}  # endpoint line -> {contact URI: status}
        self._had_contacts: set[str] = set()  # endpoints that ever had a contact (none left = down)
        self._contact_snapshot: dict[str, dict[str, str]] | None = None
        self._registrations: dict[tuple[str, str], str] = {}  # (client URI, server URI) -> line
        self._handlers: dict[str, Callable[[Message, float], None]] = {
            "ContactStatus": self._on_contact_status,
            "ContactList": self._on_contact_list,
            "ContactListComplete": self._on_contact_list_complete,
            "OutboundRegistrationDetail": self._on_registration_detail,
            "Registry": self._on_registry,
            "PeerStatus": self._on_peer_status,
            "PeerEntry": self._on_peer_entry,
            "DeviceStateChange": self._on_device_state,
            "QueueCallerJoin": self._on_queue_join,
            "DialBegin": self._on_dial_begin,
        }

    # -- link ------------------------------------------------------------------

    def link_up(self, now: float) -> None:
        """A new login: the resync that follows reports every line again (and is re-emitted)."""
        self._last.clear()
        self._contact_snapshot = None

    def link_down(self, now: float, reason: str) -> None:
        self._contact_snapshot = None

    # -- dispatch ----------------------------------------------------------------

    def handle(self, msg: Message, now: float) -> None:
        name = msg.event
        if name is None:
            return
        handler = self._handlers.get(name)
        if handler is not None:
            handler(msg, now)

    def _set(self, now: float, line: str, aspect: LineAspect, up: bool, detail: str, source: str,
             rtt_ms: float | None = None) -> None:
        key = (line, aspect)
        if self._last.get(key) is up:
            return
        self._last[key] = up
        self._emit(LineStateChanged(now, line, up, detail, aspect, source, rtt_ms))

    # -- PJSIP contacts -------------------------------------------------------------

    def _on_contact_status(self, msg: Message, now: float) -> None:
        endpoint = msg.get("EndpointName") or msg.get("AOR")
        uri = msg.get("URI") or ""
        status = msg.get("ContactStatus") or ""
        if not endpoint:
            return
        line = f"PJSIP/{endpoint}"
        contacts = self._contacts.setdefault(line, {})
        if status == "Removed":
            contacts.pop(uri, None)
        elif status in ("Created", "Updated"):
            contacts.setdefault(uri, "Created")  # a (re-)registration; qualify results follow
        else:
            contacts[uri] = status
        if contacts:
            self._had_contacts.add(line)
        self._evaluate_endpoint(now, line, "ContactStatus", _rtt_ms(msg.get("RoundtripUsec")))

    def _evaluate_endpoint(self, now: float, line: str, source: str, rtt_ms: float | None = None) -> None:
        contacts = self._contacts.get(line, {})
        statuses = set(contacts.values())
        if statuses & _CONTACT_UP:
            up = sorted(statuses & _CONTACT_UP)
            self._set(now, line, "reachability", True, f"contact {', '.join(up)}", source, rtt_ms)
        elif statuses & _CONTACT_DOWN:
            self._set(now, line, "reachability", False, "every contact unreachable (qualify)", source)
        elif not contacts and line in self._had_contacts:
            self._set(now, line, "reachability", False, "no contact registered", source)

    def _on_contact_list(self, msg: Message, now: float) -> None:
        endpoint = msg.get("Endpoint") or (msg.get("ObjectName") or "").split(";")[0]
        if not endpoint:
            return
        if self._contact_snapshot is None:
            self._contact_snapshot = {}
        self._contact_snapshot.setdefault(f"PJSIP/{endpoint}", {})[msg.get("Uri") or ""] = msg.get("Status") or ""

    def _on_contact_list_complete(self, msg: Message, now: float) -> None:
        snapshot, self._contact_snapshot = self._contact_snapshot or {}, None
        before = set(self._contacts)
        self._contacts = snapshot
        self._had_contacts |= set(snapshot)
        for line in sorted(before | set(snapshot)):
            self._evaluate_endpoint(now, line, "PJSIPShowContacts")

    # -- registrations ---------------------------------------------------------------

    def _on_registration_detail(self, msg: Message, now: float) -> None:
        name = msg.get("ObjectName") or ""
        if not name:
            return
        endpoint = msg.get("Endpoint")
        line = f"PJSIP/{endpoint}" if endpoint else f"registration/{name}"
        client, server = msg.get("ClientUri") or "", msg.get("ServerUri") or ""
        if client or server:
            self._registrations[(client, server)] = line
        self._registration_status(now, line, msg.get("Status") or "", "", "PJSIPShowRegistrationsOutbound")

    def _on_registry(self, msg: Message, now: float) -> None:
        user, domain = msg.get("Username") or "", msg.get("Domain") or ""
        line = self._registrations.get((user, domain))
        if line is None:
            tech = msg.get("ChannelType") or ""
            prefix = "" if tech in ("", "PJSIP") else f"{tech}/"
            line = f"registration/{prefix}{_strip_sip(user)}@{_strip_sip(domain)}"
        self._registration_status(now, line, msg.get("Status") or "", msg.get("Cause") or "", "Registry")

    def _registration_status(self, now: float, line: str, status: str, cause: str, source: str) -> None:
        detail = f"registration {status}" + (f" ({cause})" if cause else "")
        if status in _REG_UP:
            self._set(now, line, "registration", True, detail, source)
        elif status in _REG_DOWN:
            self._set(now, line, "registration", False, detail, source)

    # -- peers and devices ------------------------------------------------------------

    def _on_peer_status(self, msg: Message, now: float) -> None:
        peer = msg.get("Peer") or ""
        status = msg.get("PeerStatus") or ""
        if not is_line(peer):
            return
        cause = msg.get("Cause") or ""
        detail = f"peer {status}" + (f" ({cause})" if cause else "")
        if status in _PEER_UP:
            self._set(now, peer, "reachability", True, detail, "PeerStatus")
        elif status in _PEER_DOWN:
            self._set(now, peer, "reachability", False, detail, "PeerStatus")

    def _on_peer_entry(self, msg: Message, now: float) -> None:
        name = msg.get("ObjectName") or ""
        tech = msg.get("Channeltype") or msg.get("ChannelType") or "SIP"
        status = msg.get("Status") or ""
        if not name:
            return
        line = f"{tech}/{name}"
        if status.startswith(("OK", "LAGGED")):
            self._set(now, line, "reachability", True, f"peer {status}", "SIPpeers")
        elif status.startswith("UNREACHABLE"):
            self._set(now, line, "reachability", False, f"peer {status}", "SIPpeers")

    def _on_device_state(self, msg: Message, now: float) -> None:
        device = msg.get("Device") or ""
        state = msg.get("State") or ""
        if not is_line(device) or state in _DEVICE_NEUTRAL:
            return
        self._set(now, device, "reachability", state != "UNAVAILABLE", f"device {state}", "DeviceStateChange")

    # -- calls on lines ------------------------------------------------------------------

    def _on_queue_join(self, msg: Message, now: float) -> None:
        self._call_line(now, msg.get("Linkedid") or msg.get("Uniqueid"), msg.get("Channel"))

    def _on_dial_begin(self, msg: Message, now: float) -> None:
        lid = msg.get("Linkedid") or msg.get("DestLinkedid")
        self._call_line(now, lid, msg.get("Channel"))
        self._call_line(now, msg.get("DestLinkedid") or lid, msg.get("DestChannel"))

    def _call_line(self, now: float, call_id: str | None, channel: str | None) -> None:
        if call_id and channel and is_line(channel):
            self._emit(CallLineSeen(now, call_id, channel_base(channel)))
