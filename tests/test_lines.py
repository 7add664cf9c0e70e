"""SYS-LINES on hand-built AMI: trunk state from the PBX's events and resync lists, the outage rule
(alert at once, escalation at 30 min on the virtual clock, resolution when the trunk is back, the time
down recorded) and connect rates per trunk and hour from replayed calls.

Traces are written as ``.jsonl`` (the recordings' format) and replayed through the real codec, call
tracker and line tracker (``telephony.ami.adapter.replay_trace(..., lines=...)``)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from alerts.hub import AlertChange, AlertHub
from config.schema import Config
from monitor.clock import VirtualClock
from monitor.engine import Monitor
from monitor.lines import LineMonitor, LinesCollector
from telephony.ami.adapter import LineTracker, channel_rules, replay_trace
from telephony.ami.codec import Message, encode_message
from telephony.events import CallLineSeen, LineEvent, LineStateChanged

TZ = ZoneInfo("Asia/Shanghai")
DAY0 = dt.datetime(2026, 5, 11, 8, 0, tzinfo=TZ).timestamp()  # trace t = 0 is 08:00 local


def at(hh: int, mm: int = 0, ss: float = 0.0) -> float:
    """Trace time of a local wall-clock time on the replayed day."""
    return (hh - 8) * 3600 + mm * 60 + ss


# -- the line tracker alone --------------------------------------------------------------------


def _tracker() -> tuple[LineTracker, list[LineEvent]]:
    out: list[LineEvent] = []
    return LineTracker(out.append), out


def msg(event: str, **fields: str) -> Message:
    return Message([("Event", event), *fields.items()])


def states(events: list[LineEvent]) -> list[tuple[str, bool, str]]:
    return [(e.line, e.up, e.aspect) for e in events if isinstance(e, LineStateChanged)]


def test_contact_status_aggregates_the_contacts_of_an_endpoint() -> None:
    tr, out = _tracker()
    tr.handle(msg("ContactStatus", URI="sip:a@10.0.0.1:5060", ContactStatus="Reachable", AOR="telecom",
                  EndpointName="telecom", RoundtripUsec="12345"), 1.0)
    tr.handle(msg("ContactStatus", URI="sip:b@10.0.0.2:5060", ContactStatus="Unreachable", AOR="telecom",
                  EndpointName="telecom", RoundtripUsec="0"), 2.0)
    assert states(out) == [("PJSIP/telecom", True, "reachability")]  # one contact still answers
    first = out[0]
    assert isinstance(first, LineStateChanged)
    assert first.rtt_ms == pytest.approx(12.345)
    tr.handle(msg("ContactStatus", URI="sip:a@10.0.0.1:5060", ContactStatus="Unreachable", AOR="telecom",
                  EndpointName="telecom"), 3.0)
    assert states(out)[-1] == ("PJSIP/telecom", False, "reachability")
    last = out[-1]
    assert isinstance(last, LineStateChanged)
    assert last.at == 3.0
    assert "unreachable" in last.detail
    # a dynamic contact that goes away entirely: down ("no contact registered"), back with a new one
    tr.handle(msg("ContactStatus", URI="sip:x@1.2.3.4", ContactStatus="Created", EndpointName="branch-trunk"), 4.0)
    tr.handle(msg("ContactStatus", URI="sip:x@1.2.3.4", ContactStatus="Removed", EndpointName="branch-trunk"), 5.0)
    assert states(out)[-2:] == [("PJSIP/branch-trunk", True, "reachability"),
                                ("PJSIP/branch-trunk", False, "reachability")]
    assert out[-1].detail == "no contact registered"  # type: ignore[union-attr]
    # Unknown says nothing either way
    n = len(out)
    tr.handle(msg("ContactStatus", URI="sip:y@1.2.3.5", ContactStatus="Unknown", EndpointName="other"), 6.0)
    assert len(out) == n


def test_device_states_and_peers_only_for_line_technologies_and_only_on_a_change() -> None:
    tr, out = _tracker()
    for i, state in enumerate(["NOT_INUSE", "INUSE", "NOT_INUSE", "RINGING", "UNAVAILABLE", "UNKNOWN", "INUSE"]):
        tr.handle(msg("DeviceStateChange", Device="PJSIP/telecom", State=state), float(i))
    tr.handle(msg("DeviceStateChange", Device="Queue:support", State="RINGING"), 10.0)
    tr.handle(msg("DeviceStateChange", Device="Local/5000@inbound", State="INUSE"), 10.0)
    tr.handle(msg("DeviceStateChange", Device="Custom:night", State="INUSE"), 10.0)
    assert [(e.line, e.up, e.at) for e in out if isinstance(e, LineStateChanged)] == [
        ("PJSIP/telecom", True, 0.0), ("PJSIP/telecom", False, 4.0), ("PJSIP/telecom", True, 6.0)]
    out.clear()
    tr.handle(msg("PeerStatus", ChannelType="SIP", Peer="SIP/provider", PeerStatus="Unreachable", Time="-1"), 11.0)
    tr.handle(msg("PeerStatus", ChannelType="SIP", Peer="SIP/provider", PeerStatus="Lagged"), 12.0)
    tr.handle(msg("PeerEntry", Channeltype="SIP", ObjectName="backup", Status="UNREACHABLE"), 13.0)
    tr.handle(msg("PeerEntry", Channeltype="SIP", ObjectName="backup2", Status="OK (12 ms)"), 13.0)
    tr.handle(msg("PeerEntry", Channeltype="SIP", ObjectName="phone", Status="Unmonitored"), 13.0)
    assert states(out) == [("SIP/provider", False, "reachability"), ("SIP/provider", True, "reachability"),
                           ("SIP/backup", False, "reachability"), ("SIP/backup2", True, "reachability")]


def test_outbound_registrations_from_the_resync_list_and_the_live_registry_event() -> None:
    tr, out = _tracker()
    tr.handle(msg("OutboundRegistrationDetail", ObjectType="registration", ObjectName="telecom-reg",
                  ClientUri="sip:02112345@ims.example", ServerUri="sip:ims.example", Endpoint="telecom",
                  Status="Registered"), 1.0)
    tr.handle(msg("OutboundRegistrationDetail", ObjectType="registration", ObjectName="lonely",
                  ClientUri="sip:9@other.example", ServerUri="sip:other.example", Status="Rejected"), 1.0)
    tr.handle(msg("Registry", ChannelType="PJSIP", Username="sip:02112345@ims.example", Domain="sip:ims.example",
                  Status="Rejected", Cause="403 Forbidden"), 2.0)
    tr.handle(msg("Registry", ChannelType="SIP", Username="0755", Domain="sbc.example", Status="Registered"), 3.0)
    assert states(out) == [("PJSIP/telecom", True, "registration"), ("registration/lonely", False, "registration"),
                           ("PJSIP/telecom", False, "registration"),
                           ("registration/SIP/0755@sbc.example", True, "registration")]
    assert "403 Forbidden" in out[2].detail  # type: ignore[union-attr]


def test_a_contact_snapshot_replaces_what_was_known_and_a_new_login_reports_again() -> None:
    tr, out = _tracker()
    tr.handle(msg("ContactStatus", URI="sip:a@1.1.1.1", ContactStatus="Reachable", EndpointName="telecom"), 1.0)
    tr.handle(msg("ContactStatus", URI="sip:b@2.2.2.2", ContactStatus="Reachable", EndpointName="unicom"), 1.0)
    tr.link_down(2.0, "eof")
    tr.link_up(5.0)
    # after the login: telecom's contact is unreachable now, unicom's is gone
    tr.handle(msg("ContactList", ObjectType="contact", ObjectName="telecom;@abc", Endpoint="telecom",
                  Uri="sip:a@1.1.1.1", Status="Unreachable"), 5.1)
    tr.handle(msg("ContactListComplete", EventList="Complete", ListItems="1"), 5.2)
    assert states(out)[2:] == [("PJSIP/telecom", False, "reachability"), ("PJSIP/unicom", False, "reachability")]


def test_calls_on_lines_are_reported_with_their_line() -> None:
    tr, out = _tracker()
    tr.handle(msg("QueueCallerJoin", Channel="PJSIP/telecom-0000001a", Uniqueid="u1", Linkedid="u1",
                  Queue="support"), 1.0)
    tr.handle(msg("QueueCallerJoin", Channel="Local/5000@inbound-00000000;1", Uniqueid="u2", Linkedid="u2",
                  Queue="support"), 1.0)
    tr.handle(msg("DialBegin", Channel="PJSIP/7001-00000002", DestChannel="PJSIP/unicom-00000003",
                  Linkedid="u3", DestLinkedid="u3", Context="outbound"), 2.0)
    seen = [(e.call_id, e.line) for e in out if isinstance(e, CallLineSeen)]
    assert seen == [("u1", "PJSIP/telecom"), ("u3", "PJSIP/7001"), ("u3", "PJSIP/unicom")]


# -- traces: the outage rule and connect rates --------------------------------------------------


class Trace:
    """A hand-built ``.jsonl`` trace (banner, messages, eof)."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.n = 0

    def banner(self, t: float) -> None:
        self.items.append({"t": t, "banner": "Asterisk Call Manager/11.0.0"})

    def eof(self, t: float) -> None:
        self.items.append({"t": t, "eof": True})

    def ev(self, t: float, event: str, **fields: str) -> None:
        self.items.append({"t": t, "msg": [["Event", event], *[[k, v] for k, v in fields.items()]]})

    def device(self, t: float, device: str, state: str) -> None:
        self.ev(t, "DeviceStateChange", Device=device, State=state)

    def inbound(self, t: float, trunk: str, *, answer_after: float | None, talk: float = 60.0,
                recorded: bool = True, hangup_after: float = 20.0) -> str:
        """A call in on ``trunk``: queue join, an agent rings and answers (or the caller abandons)."""
        self.n += 1
        uid, leg = f"in{self.n}", f"ag{self.n}"
        chan, agent = f"PJSIP/{trunk}-{self.n:08x}", f"PJSIP/7001-{self.n:08x}"
        common = {"Channel": chan, "Uniqueid": uid, "Linkedid": uid}
        self.ev(t, "QueueCallerJoin", **common, Queue="support", CallerIDNum=f"1391234{self.n:04d}",
                CallerIDName="客户", Position="1", Count="1")
        self.ev(t, "AgentCalled", **common, DestChannel=agent, DestUniqueid=leg, DestLinkedid=uid, Queue="support",
                Interface="PJSIP/7001", MemberName="坐席7001")
        if answer_after is None:
            self.ev(t + hangup_after, "QueueCallerAbandon", **common, Queue="support")
            self.ev(t + hangup_after, "Hangup", **common, Cause="16")
            return uid
        ta = t + answer_after
        self.ev(ta, "AgentConnect", **common, DestChannel=agent, DestUniqueid=leg, DestLinkedid=uid, Queue="support",
                Interface="PJSIP/7001", MemberName="坐席7001", HoldTime="1", RingTime="1")
        if recorded:
            self.ev(ta + 0.5, "MixMonitorStart", **common)
        self.ev(ta + talk, "AgentComplete", **common, DestChannel=agent, Queue="support", Interface="PJSIP/7001",
                MemberName="坐席7001", Reason="caller")
        self.ev(ta + talk, "HangupRequest", **common, Cause="16")
        self.ev(ta + talk, "Hangup", **common, Cause="16")
        return uid

    def outbound(self, t: float, trunk: str, *, answered: bool, talk: float = 30.0) -> str:
        """An agent's call out through ``trunk`` (dialplan context ``outbound``)."""
        self.n += 1
        lid, dest_uid = f"out{self.n}", f"cust{self.n}"
        agent, dest = f"PJSIP/7002-{self.n:08x}", f"PJSIP/{trunk}-{self.n:08x}"
        self.ev(t, "DialBegin", Channel=agent, Uniqueid=lid, Linkedid=lid, DestChannel=dest, DestUniqueid=dest_uid,
                DestLinkedid=lid, Context="outbound", Exten="013900001111", CallerIDName="坐席7002")
        status = "ANSWER" if answered else "NOANSWER"
        end = t + (8.0 if answered else 30.0)
        self.ev(t + 8.0 if answered else end, "DialEnd", Channel=agent, Uniqueid=lid, Linkedid=lid, DestChannel=dest,
                DestUniqueid=dest_uid, DestLinkedid=lid, DialStatus=status)
        if answered:
            end = t + 8.0 + talk
            self.ev(t + 8.5, "MixMonitorStart", Channel=dest, Uniqueid=dest_uid, Linkedid=lid)
        self.ev(end, "Hangup", Channel=dest, Uniqueid=dest_uid, Linkedid=lid, Cause="16")
        self.ev(end, "Hangup", Channel=agent, Uniqueid=lid, Linkedid=lid, Cause="16")
        return lid

    def write(self, path: Path) -> Path:
        items = sorted(self.items, key=lambda o: o["t"])  # stable: same-time items keep their order
        path.write_text("".join(json.dumps(o, ensure_ascii=False) + "\n" for o in items), encoding="utf-8")
        return path


class Rig:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.clock = VirtualClock(wall_origin=DAY0)
        self.hub = AlertHub(self.clock.now)
        self.changes: list[AlertChange] = []
        self.hub.add_sink(self)
        self.monitor = Monitor(cfg, self.clock, self.hub)
        self.lines = LineMonitor(cfg, self.clock, self.hub)
        self.lines.attach(self.monitor)
        self.tracker = LineTracker(self.lines.handle, tuple(cfg.lines.resync_actions))
        self.records: list[dict[str, Any]] = []
        self.monitor.on_record(lambda _c, r: self.records.append(r))

    name = "test"

    def offer(self, change: AlertChange) -> None:
        self.changes.append(change)

    def replay(self, trace: Trace, path: Path) -> None:
        replay_trace(trace.write(path), self.clock.advance_to, self.monitor.handle, rules=channel_rules(self.cfg),
                     lines=self.tracker)

    def opened(self, kind: str = "violation") -> list[dict[str, Any]]:
        return [c.alert.to_json() for c in self.changes
                if c.kind == "opened" and c.alert.kind == kind and c.alert.rule == "SYS-LINES"]


def trunk_cfg(**lines: Any) -> Config:
    return Config.model_validate({"lines": {
        "trunks": [{"name": "telecom", "lines": ["^PJSIP/telecom$", "^registration/telecom-reg$"]},
                   {"name": "unicom", "lines": ["^PJSIP/unicom$"]}],
        "escalation_targets": ["网络值班", "carrier-desk"], **lines}})


def test_trunk_unreachable_alerts_at_once_escalates_at_30_min_and_resolves_when_back(tmp_path: Path) -> None:
    rig = Rig(trunk_cfg())
    tr = Trace()
    tr.banner(0.0)
    tr.device(0.1, "PJSIP/telecom", "NOT_INUSE")
    tr.device(0.1, "PJSIP/unicom", "NOT_INUSE")
    tr.device(0.1, "PJSIP/7001", "NOT_INUSE")  # an agent's phone: a line, not a trunk
    tr.ev(100.0, "ContactStatus", URI="sip:ims.example:5060", ContactStatus="Unreachable", AOR="telecom",
          EndpointName="telecom", RoundtripUsec="0")
    tr.device(100.0, "PJSIP/telecom", "UNAVAILABLE")  # the same news again: no second alert
    # the PBX link drops for 10 minutes and comes back; the resync still lists the trunk as unavailable
    tr.eof(600.0)
    tr.banner(1200.0)
    tr.device(1200.2, "PJSIP/telecom", "UNAVAILABLE")
    tr.device(1200.2, "PJSIP/unicom", "NOT_INUSE")
    tr.ev(1200.3, "DeviceStateListComplete", EventList="Complete", ListItems="2")
    tr.ev(2500.0, "ContactStatus", URI="sip:ims.example:5060", ContactStatus="Reachable", AOR="telecom",
          EndpointName="telecom", RoundtripUsec="20000")
    tr.device(2500.0, "PJSIP/telecom", "NOT_INUSE")
    tr.ev(2600.0, "Registry", ChannelType="PJSIP", Username="sip:x@y", Domain="sip:y", Status="Registered")
    path = tr.write(tmp_path / "outage.jsonl")

    # replay up to just before the escalation deadline
    items = path.read_text().splitlines()
    head = [line for line in items if json.loads(line)["t"] < 1900.0]
    (tmp_path / "head.jsonl").write_text("\n".join(head) + "\n")
    replay_trace(tmp_path / "head.jsonl", rig.clock.advance_to, rig.monitor.handle, rules=channel_rules(rig.cfg),
                 lines=rig.tracker)
    [down] = rig.opened()
    assert down["at"] == pytest.approx(100.0)  # at once
    assert down["severity"] == "warning"
    assert down["details"]["trunk"] == "telecom"
    assert down["details"]["lines"] == ["PJSIP/telecom"]
    assert down["details"]["down_since"] == "2026-05-11T08:01:40+08:00"
    assert "30 分钟内切换至备用线路" in down["text"]["zh"]
    assert rig.lines.trunks["telecom"].state == "down"
    assert rig.lines.trunks["unicom"].state == "up"
    assert rig.lines.lines["PJSIP/7001"].trunk is None
    rig.clock.advance_to(1899.999)
    assert len(rig.opened()) == 1  # not yet
    rig.clock.advance_to(1900.0)
    [_, esc] = rig.opened()
    assert esc["at"] == pytest.approx(1900.0)  # 100 s + 30 min, on the virtual clock
    assert esc["severity"] == "critical"
    assert esc["details"]["escalated"] is True
    assert esc["details"]["escalate_to"] == ["网络值班", "carrier-desk"]
    assert "网络值班、carrier-desk" in esc["text"]["zh"]
    assert all(rig.hub.get(a["id"]).state == "open" for a in (down, esc))  # type: ignore[union-attr]

    # the rest: the trunk comes back at 2500 s
    tail = [line for line in items if json.loads(line)["t"] >= 1900.0]  # the same connection goes on
    (tmp_path / "tail.jsonl").write_text("\n".join(tail) + "\n")
    replay_trace(tmp_path / "tail.jsonl", rig.clock.advance_to, rig.monitor.handle, rules=channel_rules(rig.cfg),
                 lines=rig.tracker)
    resolved = [c for c in rig.changes if c.kind == "resolved"]
    assert sorted(c.alert.id for c in resolved) == sorted([down["id"], esc["id"]])
    assert all(c.alert.resolved_at == pytest.approx(2500.0) and c.by == "ringwatch" for c in resolved)
    [restored] = rig.opened("notice")
    assert restored["at"] == pytest.approx(2500.0)
    assert "中断 40.0 分钟" in restored["text"]["zh"]
    [outage] = rig.lines.outages
    j = outage.to_json(rig.clock.now(), TZ)
    assert j["down_at"] == "2026-05-11T08:01:40+08:00"
    assert j["up_at"] == "2026-05-11T08:41:40+08:00"
    assert j["down_s"] == pytest.approx(2400.0)  # the time down, recorded
    assert j["escalated"] is True
    assert j["ongoing"] is False
    assert rig.lines.trunks["telecom"].state == "up"
    assert rig.lines.trunks["telecom"].outages == 1
    assert len(rig.opened()) == 2  # nothing more


def test_short_outage_is_resolved_before_any_escalation_and_each_outage_alerts_again(tmp_path: Path) -> None:
    rig = Rig(trunk_cfg(line_recovery_limit_min=30))
    tr = Trace()
    tr.banner(0.0)
    tr.device(10.0, "PJSIP/unicom", "UNAVAILABLE")
    tr.device(70.0, "PJSIP/unicom", "NOT_INUSE")
    tr.device(4000.0, "PJSIP/unicom", "UNAVAILABLE")
    rig.replay(tr, tmp_path / "flap.jsonl")
    rig.clock.advance_to(4000.0 + 1800.0)
    opened = rig.opened()
    assert [(a["at"], a["severity"]) for a in opened] == [(10.0, "warning"), (4000.0, "warning"),
                                                          (5800.0, "critical")]
    assert rig.hub.get(opened[0]["id"]).state == "resolved"  # type: ignore[union-attr]
    assert rig.lines.outages[0].down_s(0) == pytest.approx(60.0)
    assert rig.lines.outages[0].escalated_at is None


def test_a_trunk_of_two_lines_is_down_when_its_registration_fails(tmp_path: Path) -> None:
    rig = Rig(trunk_cfg())
    tr = Trace()
    tr.banner(0.0)
    tr.ev(0.1, "OutboundRegistrationDetail", ObjectType="registration", ObjectName="telecom-reg",
          ClientUri="sip:021@ims.example", ServerUri="sip:ims.example", Status="Registered")
    tr.ev(0.1, "OutboundRegistrationDetailComplete", EventList="Complete", ListItems="1")
    tr.device(0.2, "PJSIP/telecom", "NOT_INUSE")
    tr.ev(50.0, "Registry", ChannelType="PJSIP", Username="sip:021@ims.example", Domain="sip:ims.example",
          Status="Rejected", Cause="403 Forbidden")
    rig.replay(tr, tmp_path / "reg.jsonl")
    [down] = rig.opened()
    assert down["at"] == pytest.approx(50.0)
    assert down["details"]["lines"] == ["registration/telecom-reg"]
    assert "403 Forbidden" in down["text"]["en"]


def test_connect_rate_per_trunk_and_hour_matches_the_replayed_calls(tmp_path: Path) -> None:
    rig = Rig(trunk_cfg())
    tr = Trace()
    tr.banner(0.0)
    # 09:00-10:00: telecom 3 in (2 answered, 1 abandoned); unicom 1 in answered
    tr.inbound(at(9, 5), "telecom", answer_after=5)
    tr.inbound(at(9, 20), "telecom", answer_after=12)
    tr.inbound(at(9, 40), "telecom", answer_after=None, hangup_after=30)
    tr.inbound(at(9, 50), "unicom", answer_after=4, recorded=False)
    # 10:00-11:00: telecom 1 in answered; out through telecom 2 attempted, 1 answered; a call at 10:59:50
    # that is answered at 11:00:05 still counts for 10:00 (the hour it was offered in)
    tr.inbound(at(10, 10), "telecom", answer_after=6)
    tr.outbound(at(10, 30), "telecom", answered=True)
    tr.outbound(at(10, 45), "telecom", answered=False)
    tr.inbound(at(10, 59, 50), "unicom", answer_after=15)
    rig.replay(tr, tmp_path / "calls.jsonl")
    assert len(rig.records) == 8
    stats = rig.lines.stats
    h9, h10, h11 = (dt.datetime(2026, 5, 11, h, tzinfo=TZ).timestamp() for h in (9, 10, 11))
    assert stats.connect_rate(h9, h10, "telecom") == {
        "inbound": {"offered": 3, "answered": 2, "rate": pytest.approx(2 / 3, abs=1e-4)},
        "outbound": {"attempted": 0, "answered": 0, "rate": None}}
    assert stats.connect_rate(h9, h10, "unicom")["inbound"] == {"offered": 1, "answered": 1, "rate": 1.0}
    assert stats.connect_rate(h10, h11, "telecom") == {
        "inbound": {"offered": 1, "answered": 1, "rate": 1.0},
        "outbound": {"attempted": 2, "answered": 1, "rate": 0.5}}
    assert stats.connect_rate(h10, h11, "unicom")["inbound"] == {"offered": 1, "answered": 1, "rate": 1.0}
    assert stats.connect_rate(h9, h11, None) == {
        "inbound": {"offered": 6, "answered": 5, "rate": pytest.approx(5 / 6, abs=1e-4)},
        "outbound": {"attempted": 2, "answered": 1, "rate": 0.5}}
    hourly = {(r["hour"][11:16], r["trunk"], r["direction"]): (r["offered"], r["answered"])
              for r in stats.hourly(h9, h11)}
    assert hourly == {("09:00", "telecom", "inbound"): (3, 2), ("09:00", "unicom", "inbound"): (1, 1),
                      ("10:00", "telecom", "inbound"): (1, 1), ("10:00", "telecom", "outbound"): (2, 1),
                      ("10:00", "unicom", "inbound"): (1, 1)}
    # SYS-REC for the inspection: 6 answered calls that day, the one on unicom at 09:50 not recorded
    rec = stats.recording("2026-05-11")
    assert (rec["answered"], rec["recorded"]) == (6, 5)
    assert rec["unrecorded_calls"] == ["in4"]

    # the same figures as Prometheus metrics
    reg = CollectorRegistry()
    reg.register(LinesCollector(rig.lines))
    rig.clock.advance_to(at(11, 30))
    from prometheus_client import generate_latest

    fams = {f.name: f for f in text_string_to_metric_families(generate_latest(reg).decode())}
    offered = {(s.labels["trunk"], s.labels["direction"]): s.value
               for s in fams["ringwatch_trunk_calls_offered"].samples if s.name.endswith("_total")}
    answered = {(s.labels["trunk"], s.labels["direction"]): s.value
                for s in fams["ringwatch_trunk_calls_answered"].samples if s.name.endswith("_total")}
    assert offered == {("telecom", "inbound"): 4, ("telecom", "outbound"): 2, ("unicom", "inbound"): 2}
    assert answered == {("telecom", "inbound"): 3, ("telecom", "outbound"): 1, ("unicom", "inbound"): 2}
    ratio = {(s.labels["trunk"], s.labels["direction"], s.labels["window"]): s.value
             for s in fams["ringwatch_trunk_connect_ratio"].samples}
    assert ratio[("telecom", "outbound", "last_hour")] == 0.5
    assert ratio[("telecom", "inbound", "today")] == pytest.approx(0.75)
    assert ("telecom", "inbound", "this_hour") not in ratio  # nothing offered since 11:00


def test_the_trunk_given_by_the_adapter_on_call_offered_wins(tmp_path: Path) -> None:
    from telephony.events import CallEnded, CallOffered

    rig = Rig(trunk_cfg())
    rig.lines.handle(CallLineSeen(1.0, "c1", "PJSIP/unicom"))
    rig.monitor.handle(CallOffered(1.0, "c1", "inbound", "13900000000", "", 1.0, trunk="PJSIP/telecom"))
    rig.monitor.handle(CallEnded(2.0, "c1"))
    rig.monitor.handle(CallOffered(3.0, "c2", "inbound", "13900000001", "", 3.0))  # no line known at all
    rig.monitor.handle(CallEnded(4.0, "c2"))
    assert {k[:2]: v for k, v in rig.lines.stats.totals.items()} == {("telecom", "inbound"): [1, 0],
                                                                     ("unknown", "inbound"): [1, 0]}


def test_lines_api_snapshot_shows_trunks_lines_outages_and_rates(tmp_path: Path) -> None:
    rig = Rig(trunk_cfg())
    tr = Trace()
    tr.banner(0.0)
    tr.device(1.0, "PJSIP/telecom", "NOT_INUSE")
    tr.device(2.0, "PJSIP/unicom", "UNAVAILABLE")
    tr.device(3.0, "PJSIP/7001", "INUSE")
    tr.inbound(at(8, 30), "telecom", answer_after=3)
    rig.replay(tr, tmp_path / "snap.jsonl")
    snap = rig.lines.snapshot(hours=2)
    assert snap["ami_connected"] is True
    trunks = {t["name"]: t for t in snap["trunks"]}
    assert trunks["telecom"]["state"] == "up"
    assert trunks["unicom"]["state"] == "down"
    assert trunks["unicom"]["outage"]["ongoing"] is True
    assert trunks["unicom"]["down_s"] == pytest.approx(rig.clock.now() - 2.0, abs=0.1)
    assert trunks["telecom"]["connect_rate"]["this_hour"]["inbound"] == {"offered": 1, "answered": 1, "rate": 1.0}
    assert [li["line"] for li in snap["other_lines"]] == ["PJSIP/7001"]
    assert snap["connect_rate"]["hourly"][0]["hour"] == "2026-05-11T08:00:00+08:00"


# -- live: the adapter over loopback AMI/TCP ---------------------------------------------------------


class _MiniAmi:
    """Just enough of an AMI server: plain login, list actions answered from ``lists`` (others refused),
    and live events pushed by the test."""

    def __init__(self, lists: dict[str, list[list[tuple[str, str]]]]) -> None:
        self.lists = lists
        self.actions: list[str] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for w in self.writers:
            w.close()
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    def push(self, pairs: list[tuple[str, str]]) -> None:
        for w in self.writers:
            w.write(encode_message(pairs))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        writer.write(b"Asterisk Call Manager/11.0.0\r\n")
        try:
            while True:
                raw = await reader.readuntil(b"\r\n\r\n")
                fields = dict(line.split(": ", 1) for line in raw.decode().strip().split("\r\n") if ": " in line)
                name, aid = fields.get("Action", ""), fields.get("ActionID", "")
                self.actions.append(name)
                if name in ("Login", "Ping", "Logoff"):
                    writer.write(encode_message([("Response", "Success"), ("ActionID", aid)]))
                elif name in self.lists or name in ("QueueStatus", "CoreShowChannels"):
                    writer.write(encode_message([("Response", "Success"), ("ActionID", aid), ("EventList", "start")]))
                    items = self.lists.get(name, [])
                    for item in items:
                        writer.write(encode_message([*item, ("ActionID", aid)]))
                    done = {"DeviceStateList": "DeviceStateListComplete"}.get(name, f"{name}Complete")
                    writer.write(encode_message([("Event", done), ("ActionID", aid), ("EventList", "Complete"),
                                                 ("ListItems", str(len(items)))]))
                else:
                    writer.write(encode_message([("Response", "Error"), ("ActionID", aid),
                                                 ("Message", "Permission denied")]))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass


@pytest.mark.usefixtures("no_leftover_tasks")
async def test_the_live_adapter_asks_for_the_line_lists_and_follows_live_events(
        caplog: pytest.LogCaptureFixture) -> None:
    from monitor.clock import LoopClock
    from telephony.ami.adapter import AsteriskAdapter

    caplog.set_level(logging.INFO, logger="telephony.ami.adapter")
    server = _MiniAmi({"DeviceStateList": [
        [("Event", "DeviceStateChange"), ("Device", "PJSIP/telecom"), ("State", "NOT_INUSE")],
        [("Event", "DeviceStateChange"), ("Device", "PJSIP/unicom"), ("State", "UNAVAILABLE")]]})
    await server.start()
    cfg = trunk_cfg()
    clock = LoopClock()
    hub = AlertHub(clock.now)
    changes: asyncio.Queue[AlertChange] = asyncio.Queue()

    class Sink:
        name = "q"

        def offer(self, change: AlertChange) -> None:
            changes.put_nowait(change)

    hub.add_sink(Sink())
    monitor = Monitor(cfg, clock, hub)
    lines = LineMonitor(cfg, clock, hub)
    lines.attach(monitor)
    adapter = AsteriskAdapter(cfg.pbx.ami, monitor.handle, clock.now, channel_rules(cfg),
                              lines=LineTracker(lines.handle, tuple(cfg.lines.resync_actions)),
                              host="127.0.0.1", port=server.port, secret="s", auth="plain", sweep_interval_s=0)
    try:
        await adapter.start()
        async with asyncio.timeout(5):
            opened = await changes.get()  # from the resync list: unicom is down
            assert (opened.kind, opened.alert.details["trunk"]) == ("opened", "unicom")
            server.push([("Event", "DeviceStateChange"), ("Device", "PJSIP/unicom"), ("State", "NOT_INUSE")])
            kinds = [(await changes.get()).kind for _ in range(2)]  # resolved, then the restored notice
            assert kinds == ["resolved", "opened"]
        assert lines.trunks["telecom"].state == "up"
        assert lines.trunks["unicom"].state == "up"
        assert {"QueueStatus", "CoreShowChannels", "DeviceStateList", "PJSIPShowRegistrationsOutbound"} \
            <= set(server.actions)
        # the refused PJSIP list costs its own states only: the calls' resync is not marked failed
        assert adapter.stats.resync_failures == 0
        resync = adapter._lines_resync_task  # the line lists run apart from the calls' resync: let them end
        assert resync is not None
        async with asyncio.timeout(5):
            await asyncio.shield(resync)
        assert any("lines_resync_refused action=PJSIPShowRegistrationsOutbound" in r.getMessage()
                   for r in caplog.records)
    finally:
        await adapter.stop()
        await server.stop()
        lines.close()
        monitor.close()
