"""How Asterisk 22 spells things on the AMI wire: the simulator's event builders.

Pure functions from the simulator's objects (channels, bridges, queue members)
to header lists, in the order and with the header sets recorded from a real
Asterisk 22.10 (``tests/fixtures/ami/README.md``; ``tests/test_simulator.py``
compares them structurally).  Every channel-carrying event repeats the same
13-header channel block, optionally prefixed (``Dest``, ``LocalOne``,
``Transferee``, ...); bridges a 7-header block.  No I/O, no clock, no randomness:
the caller passes every value.
"""

from __future__ import annotations

from collections.abc import Sequence

Pair = tuple[str, str]
Pairs = tuple[Pair, ...]

STATE_DESC: dict[int, str] = {0: "Down", 4: "Ring", 5: "Ringing", 6: "Up"}
CALL = "call,all"
DIALPLAN = "dialplan,all"
AGENT = "agent,all"
SYSTEM = "system,all"
USER = "user,all"


class Chan:
    """One Asterisk channel as the AMI shows it (the fields of the channel block)."""

    __slots__ = ("app", "appdata", "bridge", "cid_name", "cid_num", "cl_name", "cl_num", "context", "created",
                 "exten", "lid", "name", "priority", "state", "uid")

    def __init__(self, name: str, uid: str, lid: str, state: int, context: str, exten: str, created: float,
                 cid_num: str = "<unknown>", cid_name: str = "<unknown>") -> None:
        self.name = name
        self.uid = uid
        self.lid = lid
        self.state = state
        self.context = context
        self.exten = exten
        self.priority = 1
        self.cid_num = cid_num
        self.cid_name = cid_name
        self.cl_num = "<unknown>"
        self.cl_name = "<unknown>"
        self.created = created
        self.app = ""
        self.appdata = ""
        self.bridge: Bridge | None = None

    def block(self, p: str = "") -> list[Pair]:
        return [
            (p + "Channel", self.name),
            (p + "ChannelState", str(self.state)),
            (p + "ChannelStateDesc", STATE_DESC.get(self.state, "Unknown")),
            (p + "CallerIDNum", self.cid_num),
            (p + "CallerIDName", self.cid_name),
            (p + "ConnectedLineNum", self.cl_num),
            (p + "ConnectedLineName", self.cl_name),
            (p + "Language", "en"),
            (p + "AccountCode", ""),
            (p + "Context", self.context),
            (p + "Exten", self.exten),
            (p + "Priority", str(self.priority)),
            (p + "Uniqueid", self.uid),
            (p + "Linkedid", self.lid),
        ]

    def __repr__(self) -> str:
        return f"<Chan {self.name} {self.uid}>"


class Bridge:
    __slots__ = ("members", "uid")

    def __init__(self, uid: str) -> None:
        self.uid = uid
        self.members: list[Chan] = []

    def block(self, p: str = "Bridge") -> list[Pair]:
        return [
            (p + "Uniqueid", self.uid),
            (p + "Type", "basic"),
            (p + "Technology", "simple_bridge"),
            (p + "Creator", "<unknown>"),
            (p + "Name", "<unknown>"),
            (p + "NumChannels", str(len(self.members))),
            (p + "VideoSourceMode", "none"),
        ]


class Member:
    """A queue member (an agent's interface in one queue)."""

    __slots__ = ("calls_taken", "dynamic", "in_call", "interface", "last_call", "last_pause", "login_time",
                 "name", "paused", "reason", "state_interface", "status")

    def __init__(self, name: str, interface: str, login_time: int, dynamic: bool = False) -> None:
        self.name = name
        self.interface = interface
        self.state_interface = interface if not dynamic else interface.rsplit("/", 1)[0]
        self.dynamic = dynamic
        self.calls_taken = 0
        self.last_call = 0
        self.last_pause = 0
        self.login_time = login_time
        self.in_call = False
        self.status = 1  # 1 NOT_INUSE, 2 INUSE (Local members report INUSE while merely ringing)
        self.paused = False
        self.reason = ""


# -- events -----------------------------------------------------------------------------


def head(event: str, privilege: str) -> list[Pair]:
    return [("Event", event), ("Privilege", privilege)]


def chan_event(event: str, c: Chan, privilege: str = CALL, *more: Pair) -> list[Pair]:
    out = [("Event", event), ("Privilege", privilege), *c.block()]
    out.extend(more)
    return out


def newexten(c: Chan, app: str, data: str) -> list[Pair]:
    return chan_event("Newexten", c, DIALPLAN, ("Extension", c.exten), ("Application", app), ("AppData", data))


def varset(c: Chan, var: str, value: str) -> list[Pair]:
    return chan_event("VarSet", c, DIALPLAN, ("Variable", var), ("Value", value))


def newcallerid(c: Chan) -> list[Pair]:
    return chan_event("NewCallerid", c, CALL, ("CID-CallingPres", "0 (Presentation Allowed, Not Screened)"))


def hangup(c: Chan, cause: int) -> list[Pair]:
    return chan_event("Hangup", c, CALL, ("Cause", str(cause)), ("Cause-txt", CAUSE_TXT.get(cause, "Unknown")))


CAUSE_TXT = {0: "Unknown", 16: "Normal Clearing", 17: "User busy", 19: "No user responding",
             26: "Answered elsewhere", 21: "Call Rejected"}


def hangup_request(c: Chan, cause: int, soft: bool = False) -> list[Pair]:
    return chan_event("SoftHangupRequest" if soft else "HangupRequest", c, CALL, ("Cause", str(cause)))


def device_state(device: str, state: str) -> list[Pair]:
    return [("Event", "DeviceStateChange"), ("Privilege", CALL), ("Device", device), ("State", state)]


def local_bridge(one: Chan, two: Chan) -> list[Pair]:
    return [("Event", "LocalBridge"), ("Privilege", CALL), *one.block("LocalOne"), *two.block("LocalTwo"),
            ("Context", two.context), ("Exten", two.exten), ("LocalOptimization", "No")]


def local_optimization(event: str, one: Chan, two: Chan, source: Chan | None, dest_uid: str,
                       oid: str, success: bool = True) -> list[Pair]:
    out = [("Event", event), ("Privilege", CALL), *one.block("LocalOne"), *two.block("LocalTwo")]
    if source is not None:
        out += [*source.block("Source"), ("DestUniqueId", dest_uid), ("Id", oid)]
    else:
        out += [("Success", "Yes" if success else "No"), ("Id", oid)]
    return out


def dial(event: str, src: Chan | None, dest: Chan, *more: Pair) -> list[Pair]:
    out = [("Event", event), ("Privilege", CALL)]
    if src is not None:
        out += src.block()
    out += dest.block("Dest")
    out.extend(more)
    return out


def queue_caller(event: str, c: Chan, queue: str, *more: Pair) -> list[Pair]:
    return chan_event(event, c, AGENT, ("Queue", queue), *more)


def agent_event(event: str, caller: Chan, member_chan: Chan, queue: str, m: Member, *more: Pair) -> list[Pair]:
    out = [("Event", event), ("Privilege", AGENT), *caller.block(), *member_chan.block("Dest"),
           ("Queue", queue), ("Interface", m.interface), ("MemberName", m.name)]
    out.extend(more)
    return out


def member_event(event: str, queue: str, m: Member) -> list[Pair]:
    return [
        ("Event", event), ("Privilege", AGENT), ("Queue", queue), ("MemberName", m.name),
        ("Interface", m.interface), ("StateInterface", m.state_interface),
        ("Membership", "dynamic" if m.dynamic else "static"), ("Penalty", "0"),
        ("CallsTaken", str(m.calls_taken)), ("LastCall", str(m.last_call)), ("LastPause", str(m.last_pause)),
        ("LoginTime", str(m.login_time)), ("InCall", "1" if m.in_call else "0"), ("Status", str(m.status)),
        ("Paused", "1" if m.paused else "0"), ("PausedReason", m.reason), ("Ringinuse", "0"),
        ("Wrapuptime", "0"),
    ]


def bridge_event(event: str, b: Bridge, c: Chan | None = None, swap: str | None = None) -> list[Pair]:
    out = [("Event", event), ("Privilege", CALL), *b.block()]
    if c is not None:
        out += c.block()
    if swap is not None:
        out.append(("SwapUniqueid", swap))
    return out


def blind_transfer(transferer: Chan, transferee: Chan, b: Bridge, context: str, exten: str) -> list[Pair]:
    return [("Event", "BlindTransfer"), ("Privilege", CALL), ("Result", "Success"),
            *transferer.block("Transferer"), *transferee.block("Transferee"), *b.block(),
            ("IsExternal", "No"), ("Context", context), ("Extension", exten)]


def attended_transfer(orig: Chan, orig_bridge: Bridge, second: Chan, second_bridge: Bridge,
                      transferee: Chan) -> list[Pair]:
    return [("Event", "AttendedTransfer"), ("Privilege", CALL), ("Result", "Success"),
            *orig.block("OrigTransferer"), *orig_bridge.block("OrigBridge"),
            *second.block("SecondTransferer"), *second_bridge.block("SecondBridge"),
            *transferee.block("Transferee"), ("IsExternal", "No"), ("DestType", "Bridge"),
            ("DestBridgeUniqueid", orig_bridge.uid)]


def bridge_merge(to: Bridge, frm: Bridge) -> list[Pair]:
    return [("Event", "BridgeMerge"), ("Privilege", CALL), *to.block("ToBridge"), *frm.block("FromBridge")]


def dtmf_end(c: Chan, digit: str) -> list[Pair]:
    return chan_event("DTMFEnd", c, "dtmf,all", ("Digit", digit), ("DurationMs", "100"), ("Direction", "Received"))


def originate_response(action_id: str, c: Chan, reason: int, *, app: tuple[str, str] | None = None,
                       dest: tuple[str, str] | None = None, cid: tuple[str, str] = ("", "")) -> list[Pair]:
    out = [("Event", "OriginateResponse"), ("Privilege", CALL), ("ActionID", action_id),
           ("Response", "Success" if reason == 4 else "Failure"), ("Channel", c.name)]
    if app is not None:
        out += [("Application", app[0]), ("Data", app[1])]
    elif dest is not None:
        out += [("Context", dest[0]), ("Exten", dest[1])]
    out += [("Reason", str(reason)), ("Uniqueid", c.uid), ("CallerIDNum", cid[0]), ("CallerIDName", cid[1])]
    return out


def spy_event(event: str, spyer: Chan, spyee: Chan) -> list[Pair]:
    return [("Event", event), ("Privilege", CALL), *spyer.block("Spyer"), *spyee.block("Spyee")]


def user_event(name: str, c: Chan | None, fields: Sequence[Pair]) -> list[Pair]:
    """``UserEvent()`` from the dialplan: the channel block, then ``UserEvent`` and the app's headers."""
    out = [("Event", "UserEvent"), ("Privilege", USER)]
    if c is not None:
        out += c.block()
    out.append(("UserEvent", name))
    out.extend(fields)
    return out


# -- list items (responses to CoreShowChannels / QueueStatus) ------------------------------


def _hms(seconds: float) -> str:
    s = max(0, int(seconds))
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def core_show_channel(c: Chan, now: float) -> list[Pair]:
    return [("Event", "CoreShowChannel"), *c.block(), ("Application", c.app), ("ApplicationData", c.appdata),
            ("Duration", _hms(now - c.created)), ("BridgeId", c.bridge.uid if c.bridge else "")]


def queue_params(queue: str, strategy: str, calls: int, holdtime: int, talktime: int, completed: int,
                 abandoned: int, service_level: int, perf: float) -> list[Pair]:
    return [("Event", "QueueParams"), ("Queue", queue), ("Max", "0"), ("Strategy", strategy),
            ("Calls", str(calls)), ("Holdtime", str(holdtime)), ("TalkTime", str(talktime)),
            ("Completed", str(completed)), ("Abandoned", str(abandoned)), ("ServiceLevel", str(service_level)),
            ("ServicelevelPerf", f"{perf:.1f}"), ("ServicelevelPerf2", f"{perf:.1f}"), ("Weight", "0")]


def queue_member(queue: str, m: Member) -> list[Pair]:
    return [("Event", "QueueMember"), ("Queue", queue), ("Name", m.name), ("Location", m.interface),
            ("StateInterface", m.state_interface), ("Membership", "dynamic" if m.dynamic else "static"),
            ("Penalty", "0"), ("CallsTaken", str(m.calls_taken)), ("LastCall", str(m.last_call)),
            ("LastPause", str(m.last_pause)), ("LoginTime", str(m.login_time)), ("InCall", "1" if m.in_call else "0"),
            ("Status", str(m.status)), ("Paused", "1" if m.paused else "0"), ("PausedReason", m.reason),
            ("Wrapuptime", "0")]


def queue_entry(queue: str, position: int, c: Chan, wait: float) -> list[Pair]:
    return [("Event", "QueueEntry"), ("Queue", queue), ("Position", str(position)), ("Channel", c.name),
            ("Uniqueid", c.uid), ("CallerIDNum", c.cid_num), ("CallerIDName", c.cid_name),
            ("ConnectedLineNum", c.cl_num), ("ConnectedLineName", c.cl_name), ("Wait", str(int(wait))),
            ("Priority", "0")]


def queue_summary(queue: str, logged_in: int, available: int, callers: int, holdtime: int, talktime: int,
                  longest: int) -> list[Pair]:
    return [("Event", "QueueSummary"), ("Queue", queue), ("LoggedIn", str(logged_in)),
            ("Available", str(available)), ("Callers", str(callers)), ("HoldTime", str(holdtime)),
            ("TalkTime", str(talktime)), ("LongestHoldTime", str(longest))]
