"""A tiny script language for hand-built AMI event sequences: what the recordings lack.

Channels here are PJSIP (not Local) so the tracker is also exercised on a
trunk-and-phones site: caller ``PJSIP/trunk-0000000a``, agents ``PJSIP/70xx-...``.
"""

from __future__ import annotations

from typing import Any

from alerts.hub import AlertChange, AlertHub
from config.schema import Config
from monitor.calls import Call
from monitor.clock import VirtualClock
from monitor.engine import Monitor
from telephony.ami.adapter import channel_rules
from telephony.ami.codec import Message
from telephony.ami.tracker import AmiTracker


def ch(name: str, leg: str) -> str:
    """A channel name with an Asterisk-like hex unique suffix (``PJSIP/7001-6131``)."""
    return f"PJSIP/{name}-{leg.encode().hex()}"


class Sink:
    name = "test"

    def __init__(self) -> None:
        self.opened: list[dict[str, Any]] = []

    def offer(self, change: AlertChange) -> None:
        if change.kind == "opened":
            self.opened.append(change.alert.to_json())


class Pbx:
    def __init__(self, cfg: Config | None = None) -> None:
        self.cfg = cfg or Config()
        self.clock = VirtualClock()
        self.hub = AlertHub(self.clock.now)
        self.monitor = Monitor(self.cfg, self.clock, self.hub)
        self.sink = Sink()
        self.hub.add_sink(self.sink)
        self.records: list[dict[str, Any]] = []
        self.outputs: list[dict[str, Any]] = []
        self.monitor.on_record(lambda _c, r: self.records.append(r))
        self.monitor.on_output(self.outputs.append)
        self.tracker = AmiTracker(self.monitor.handle, channel_rules(self.cfg))

    def ev(self, t: float, event: str, **fields: str) -> None:
        self.clock.advance_to(t)
        self.tracker.handle(Message([("Event", event), *fields.items()]), t)

    def until(self, t: float) -> None:
        self.clock.advance_to(t)

    def alerts(self, rule: str | None = None) -> list[dict[str, Any]]:
        return [a for a in self.sink.opened if a["kind"] == "violation" and (rule is None or a["rule"] == rule)]

    def record(self, call_id: str) -> dict[str, Any]:
        return next(r for r in self.records if r["id"] == call_id)

    def call(self, call_id: str) -> Call:
        c = self.monitor.call(call_id)
        assert c is not None
        return c

    # -- building blocks -------------------------------------------------------------------

    def inbound(self, t: float, uid: str, queue: str = "support", number: str = "13912345678",
                name: str = "张三") -> str:
        self.ev(t, "QueueCallerJoin", Channel=ch("trunk", uid), Uniqueid=uid, Linkedid=uid, Queue=queue,
                CallerIDNum=number, CallerIDName=name, Position="1", Count="1")
        return uid

    def ring(self, t: float, call: str, agent_ext: str, leg: str, queue: str = "support",
             name: str | None = None) -> None:
        self.ev(t, "AgentCalled", Channel=ch("trunk", call), Uniqueid=call, Linkedid=call,
                DestChannel=ch(agent_ext, leg), DestUniqueid=leg, DestLinkedid=call, Queue=queue,
                Interface=f"PJSIP/{agent_ext}", MemberName=name or f"坐席{agent_ext}")

    def connect(self, t: float, call: str, agent_ext: str, leg: str, queue: str = "support",
                name: str | None = None) -> None:
        self.ev(t, "AgentConnect", Channel=ch("trunk", call), Uniqueid=call, Linkedid=call,
                DestChannel=ch(agent_ext, leg), DestUniqueid=leg, DestLinkedid=call, Queue=queue,
                Interface=f"PJSIP/{agent_ext}", MemberName=name or f"坐席{agent_ext}", HoldTime="1", RingTime="1")

    def complete(self, t: float, call: str, agent_ext: str, leg: str, reason: str, queue: str = "support") -> None:
        self.ev(t, "AgentComplete", Channel=ch("trunk", call), Uniqueid=call, Linkedid=call,
                DestChannel=ch(agent_ext, leg), Queue=queue, Interface=f"PJSIP/{agent_ext}",
                MemberName=f"坐席{agent_ext}", Reason=reason)

    def blind(self, t: float, call: str, agent_ext: str, leg: str, exten: str = "3000") -> None:
        self.ev(t, "BlindTransfer", Result="Success", TransfererChannel=ch(agent_ext, leg),
                TransfererUniqueid=leg, TransfereeChannel=ch("trunk", call), TransfereeUniqueid=call,
                TransfereeLinkedid=call, Context="xfer", Extension=exten, IsExternal="Yes")

    def hangup(self, t: float, chan: str, uid: str, linkedid: str, request: bool = True) -> None:
        if request:
            self.ev(t, "HangupRequest", Channel=chan, Uniqueid=uid, Linkedid=linkedid, Cause="16")
        self.ev(t, "Hangup", Channel=chan, Uniqueid=uid, Linkedid=linkedid, Cause="16")

    def caller_hangs_up(self, t: float, call: str) -> None:
        self.hangup(t, ch("trunk", call), call, call)
