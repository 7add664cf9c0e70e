"""Call rules on hand-built AMI sequences: the cases the recordings lack (IN-XFER, IN-HANGUP,
OUT-WRAPUP, IN-SIMPLE, SYS-REC, QA flags), on a PJSIP trunk-and-phones site."""

from __future__ import annotations

import pytest

from config.schema import Config
from monitor.engine import DispositionError
from tests.pbxscript import Pbx, ch


def answered_call(p: Pbx, t: float, uid: str = "c1", ext: str = "7001", leg: str = "a1", **kw: str) -> str:
    p.inbound(t, uid, **kw)
    p.ring(t, uid, ext, leg)
    p.connect(t + 3, uid, ext, leg)
    return uid


def test_transfer_never_answered_alerts_at_the_limit_and_ends_with_the_hangup() -> None:
    p = Pbx()
    answered_call(p, 0.0)
    p.blind(10.0, "c1", "7001", "a1")
    p.complete(10.0, "c1", "7001", "a1", "transfer")
    p.hangup(10.0, ch("7001", "a1"), "a1", "c1")
    p.inbound(10.01, "c1", queue="claims")  # same caller channel, next queue: nobody answers
    p.until(129.9)
    assert not p.alerts("IN-XFER")
    p.until(130.0)
    [alert] = p.alerts("IN-XFER")
    assert alert["at"] == pytest.approx(130.0)
    assert alert["agent"] == "坐席7001"  # who transferred
    assert "盲转" in alert["text"]["zh"]
    p.ev(140.0, "QueueCallerAbandon", Channel=ch("trunk", "c1"), Uniqueid="c1", Linkedid="c1", Queue="claims")
    p.caller_hangs_up(140.0, "c1")
    rec = p.record("c1")
    [t] = rec["transfers"]
    assert t["kind"] == "blind"
    assert t["to"] == "3000@xfer"
    assert t["from_agent"] == "坐席7001"
    assert t["completed"] is False
    assert t["answered_at"] is None
    assert t["outcome"] == "hangup"
    assert t["wait_s"] == pytest.approx(130.0)
    assert rec["answered_at"] == pytest.approx(3.0)  # the first answer stays the call's answer
    assert rec["abandoned"] is True
    assert rec["first_hangup"] == "customer"


def test_transfer_to_a_busy_queue_answered_late_and_its_ring_legs() -> None:
    p = Pbx()
    answered_call(p, 0.0)
    p.blind(10.0, "c1", "7001", "a1")
    p.complete(10.0, "c1", "7001", "a1", "transfer")
    p.inbound(10.0, "c1", queue="claims")
    # every claims agent busy for 140 s, then 7007 rings 10 s and answers
    p.ring(150.0, "c1", "7007", "b7", queue="claims")
    p.connect(160.0, "c1", "7007", "b7", queue="claims")
    [alert] = p.alerts("IN-XFER")
    assert alert["at"] == pytest.approx(130.0)
    p.complete(170.0, "c1", "7007", "b7", "agent", queue="claims")
    p.caller_hangs_up(170.0, "c1")
    rec = p.record("c1")
    [t] = rec["transfers"]
    assert t["completed"] is True
    assert t["answered_by"] == "坐席7007"
    assert t["wait_s"] == pytest.approx(150.0)
    assert rec["first_hangup"] == "agent"  # 7007 hung up first: IN-HANGUP
    [hang] = p.alerts("IN-HANGUP")
    assert hang["agent"] == "坐席7007"


def test_attended_transfer_cancelled_returns_the_caller_without_an_xfer_alert() -> None:
    p = Pbx()
    answered_call(p, 0.0)
    p.ev(10.0, "MusicOnHoldStart", Channel=ch("trunk", "c1"), Uniqueid="c1", Linkedid="c1")
    p.ev(10.2, "DialBegin", Channel=ch("7001", "a1"), Uniqueid="a1", Linkedid="c1",
         DestChannel=ch("7003", "k1"), DestUniqueid="k1", DestLinkedid="c1", DestExten="7003")
    p.ev(14.0, "DialEnd", Channel=ch("7001", "a1"), Uniqueid="a1", Linkedid="c1",
         DestChannel=ch("7003", "k1"), DestUniqueid="k1", DestLinkedid="c1", DialStatus="ANSWER")
    p.hangup(20.0, ch("7003", "k1"), "k1", "c1")  # the consult ends: 7001 goes back to the caller
    p.ev(20.0, "MusicOnHoldStop", Channel=ch("trunk", "c1"), Uniqueid="c1", Linkedid="c1")
    p.until(200.0)
    assert not p.alerts("IN-XFER")
    p.complete(200.0, "c1", "7001", "a1", "caller")
    p.caller_hangs_up(200.0, "c1")
    rec = p.record("c1")
    [t] = rec["transfers"]
    assert t["kind"] == "attended"
    assert t["completed"] is False
    assert t["outcome"] == "returned"
    assert t["at"] == pytest.approx(10.0)
    assert t["wait_s"] == pytest.approx(10.0)
    # the consult leg rang 3.8 s and was answered; it is a ring of this call, not a queue one
    consult = [r for r in rec["rings"] if r["queue"] is None]
    assert [(r["agent"], r["outcome"]) for r in consult] == [("7003", "answered")]
    assert rec["first_hangup"] == "customer"
    assert not p.alerts("IN-HANGUP")


def test_a_plain_hold_is_not_a_transfer() -> None:
    p = Pbx()
    answered_call(p, 0.0)
    p.ev(10.0, "MusicOnHoldStart", Channel=ch("trunk", "c1"), Uniqueid="c1", Linkedid="c1")
    p.ev(50.0, "MusicOnHoldStop", Channel=ch("trunk", "c1"), Uniqueid="c1", Linkedid="c1")
    p.complete(60.0, "c1", "7001", "a1", "caller")
    p.caller_hangs_up(60.0, "c1")
    assert p.record("c1")["transfers"] == []


def test_second_transfer_of_the_same_call() -> None:
    p = Pbx()
    answered_call(p, 0.0)
    p.blind(10.0, "c1", "7001", "a1")
    p.complete(10.0, "c1", "7001", "a1", "transfer")
    p.inbound(10.0, "c1", queue="claims")
    p.ring(10.0, "c1", "7007", "b7", queue="claims")
    p.connect(20.0, "c1", "7007", "b7", queue="claims")
    p.blind(40.0, "c1", "7007", "b7", exten="4000")
    p.complete(40.0, "c1", "7007", "b7", "transfer", queue="claims")
    p.hangup(40.0, ch("7007", "b7"), "b7", "c1")
    p.inbound(40.0, "c1", queue="vip")
    p.ring(40.0, "c1", "7009", "v9", queue="vip")
    p.connect(45.0, "c1", "7009", "v9", queue="vip")
    p.complete(60.0, "c1", "7009", "v9", "caller", queue="vip")
    p.caller_hangs_up(60.0, "c1")
    rec = p.record("c1")
    assert [(t["from_agent"], t["answered_by"], t["wait_s"]) for t in rec["transfers"]] == [
        ("坐席7001", "坐席7007", pytest.approx(10.0)), ("坐席7007", "坐席7009", pytest.approx(5.0))]
    assert rec["first_hangup"] == "customer"  # transferers leaving is not hanging up on the caller
    assert not p.alerts("IN-HANGUP")
    assert not p.alerts("IN-XFER")


def outbound(p: Pbx, t: float, uid: str = "o1", number: str = "13800138000", answer_after: float | None = 6.0,
             ext: str = "7001") -> str:
    p.ev(t, "DialBegin", Channel=ch(ext, f"p{uid}"), Uniqueid=f"p{uid}", Linkedid=f"p{uid}", Context="outbound",
         Exten=number, CallerIDName=f"坐席{ext}", DestChannel=ch("carrier-trunk", uid), DestUniqueid=uid,
         DestLinkedid=f"p{uid}", DestExten=number)
    if answer_after is not None:
        p.ev(t + answer_after, "DialEnd", Channel=ch(ext, f"p{uid}"), Uniqueid=f"p{uid}", Linkedid=f"p{uid}",
             DestChannel=ch("carrier-trunk", uid), DestUniqueid=uid, DestLinkedid=f"p{uid}", DialStatus="ANSWER")
    return f"p{uid}"


def test_outbound_call_tracked_with_ring_answer_and_who_hung_up() -> None:
    p = Pbx()
    cid = outbound(p, 100.0)
    p.hangup(130.0, ch("7001", "po1"), "po1", "po1")  # the agent hangs up first
    p.hangup(130.0, ch("carrier-trunk", "o1"), "o1", "po1", request=False)
    rec = p.record(cid)
    assert rec["direction"] == "outbound"
    assert rec["agent"] == "坐席7001"
    assert rec["offered_at"] == pytest.approx(100.0)
    assert rec["ring_s"] == pytest.approx(6.0)
    assert rec["wait_s"] is None
    assert rec["talk_s"] == pytest.approx(24.0)
    assert rec["first_hangup"] == "agent"
    assert not p.alerts("IN-HANGUP")  # outbound: off by default
    p2 = Pbx(Config.model_validate({"rules": {"IN-HANGUP": {"outbound": True}}}))
    cid = outbound(p2, 0.0)
    p2.hangup(30.0, ch("7001", "po1"), "po1", "po1")
    p2.hangup(30.0, ch("carrier-trunk", "o1"), "o1", "po1", request=False)
    assert [a["rule"] for a in p2.alerts("IN-HANGUP")] == ["IN-HANGUP"]


def test_wrapup_overdue_alerts_and_a_disposition_before_the_end_prevents_it() -> None:
    p = Pbx()
    late = outbound(p, 0.0, uid="o1")
    p.hangup(20.0, ch("carrier-trunk", "o1"), "o1", late)
    done = outbound(p, 0.0, uid="o2", number="13800138001")
    p.ev(15.0, "UserEvent", UserEvent="RingwatchDisposition", Linkedid=done, Tag="valid", Note="已约定回访时间")
    p.hangup(20.0, ch("carrier-trunk", "o2"), "o2", done)
    p.until(319.9)
    assert not p.alerts("OUT-WRAPUP")
    p.until(320.0)
    [alert] = p.alerts("OUT-WRAPUP")
    assert alert["call"] == late
    assert alert["at"] == pytest.approx(320.0)
    assert p.record(done)["disposition"]["tag"] == "valid"
    assert p.record(done)["disposition"]["late"] is False
    # the overdue one is logged late through the API path: accepted, marked late, published
    call = p.monitor.dispose(late, "refused", "客户拒绝", by="坐席7001")
    assert call.disposition is not None
    assert call.disposition["late"] is True
    assert p.outputs[-1] == {"type": "disposition", "call": late, "at": 320.0, "tag": "refused", "late": True,
                             "by": "坐席7001", "source": "api", "complaint": False}


def test_unanswered_outbound_attempt_still_needs_a_disposition() -> None:
    p = Pbx()
    cid = outbound(p, 0.0, answer_after=None)
    p.ev(30.0, "DialEnd", Channel=ch("7001", "po1"), Uniqueid="po1", Linkedid="po1",
         DestChannel=ch("carrier-trunk", "o1"), DestUniqueid="o1", DestLinkedid="po1", DialStatus="NOANSWER")
    p.hangup(30.0, ch("carrier-trunk", "o1"), "o1", cid, request=False)
    rec = p.record(cid)
    assert rec["answered_at"] is None
    assert rec["ring_s"] is None
    p.until(330.0)
    assert [a["call"] for a in p.alerts("OUT-WRAPUP")] == [cid]


def test_disposition_from_a_wrapup_pause() -> None:
    p = Pbx()
    cid = outbound(p, 0.0)
    p.hangup(20.0, ch("carrier-trunk", "o1"), "o1", cid)
    p.ev(25.0, "QueueMemberPause", Queue="support", MemberName="坐席7001", Interface="PJSIP/7001", Paused="1",
         PausedReason="wrapup:invalid")
    p.ev(60.0, "QueueMemberPause", Queue="support", MemberName="坐席7001", Interface="PJSIP/7001", Paused="0")
    p.until(400.0)
    assert not p.alerts("OUT-WRAPUP")
    assert p.call(cid).disposition == {"tag": "invalid", "note": "", "at": 60.0, "late": False, "by": "坐席7001",
                                       "source": "pbx-pause"}


def test_disposition_errors() -> None:
    p = Pbx()
    cid = outbound(p, 0.0)
    with pytest.raises(DispositionError) as e:
        p.monitor.dispose(cid, "maybe")
    assert e.value.code == "unknown_tag"
    assert "valid" in e.value.en
    with pytest.raises(DispositionError) as e:
        p.monitor.dispose("no-such-call", "valid")
    assert e.value.code == "unknown_call"


def test_inbound_wrapup_when_configured() -> None:
    p = Pbx(Config.model_validate({"rules": {"OUT-WRAPUP": {"inbound": True}}}))
    answered_call(p, 0.0)
    p.complete(30.0, "c1", "7001", "a1", "caller")
    p.caller_hangs_up(30.0, "c1")
    p.until(330.0)
    assert [a["call"] for a in p.alerts("OUT-WRAPUP")] == ["c1"]


def test_simple_enquiry_over_the_limit() -> None:
    p = Pbx(Config.model_validate({"rules": {"IN-SIMPLE": {"queues": ["policy"], "simple_talk_limit_s": 300}}}))
    p.inbound(0.0, "c1", queue="policy")
    p.ring(0.0, "c1", "7001", "a1", queue="policy")
    p.connect(5.0, "c1", "7001", "a1", queue="policy")
    answered_call(p, 0.0, uid="c2", leg="a2", ext="7002")  # support is not a simple queue
    p.until(304.9)
    assert not p.alerts("IN-SIMPLE")
    p.until(305.0)
    [alert] = p.alerts("IN-SIMPLE")
    assert alert["call"] == "c1"
    assert alert["queue"] == "policy"
    p.until(1000.0)
    assert len(p.alerts("IN-SIMPLE")) == 1


def test_unrecorded_answered_call_is_flagged_and_a_recorded_one_is_not() -> None:
    p = Pbx()
    answered_call(p, 0.0, uid="c1", leg="a1")
    answered_call(p, 0.0, uid="c2", leg="a2", ext="7002", number="13700000000")
    p.ev(4.0, "MixMonitorStart", Channel=ch("trunk", "c2"), Uniqueid="c2", Linkedid="c2")
    p.until(13.0)
    [alert] = p.alerts("SYS-REC")
    assert alert["call"] == "c1"
    assert alert["at"] == pytest.approx(13.0)
    assert p.call("c2").recorded is True


def test_qa_special_flags() -> None:
    p = Pbx(Config.model_validate({"rules": {"QA-SPECIAL": {"long_call_s": 900}}}))
    # a late answer (ring 20 s), an extra-long call, then the same number again: repeat caller
    p.inbound(0.0, "c1")
    p.ring(0.0, "c1", "7001", "a1")
    p.connect(20.0, "c1", "7001", "a1")
    p.complete(1000.0, "c1", "7001", "a1", "caller")
    p.caller_hangs_up(1000.0, "c1")
    assert p.record("c1")["flags"] == ["late_answer", "long_call"]
    answered_call(p, 3600.0, uid="c2", leg="a2")
    p.complete(3700.0, "c2", "7001", "a2", "caller")
    p.caller_hangs_up(3700.0, "c2")
    assert p.record("c2")["flags"] == ["repeat_caller"]
    p.monitor.dispose("c2", "valid", "客户投诉理赔进度", complaint=True)
    assert "complaint" in p.call("c2").flags
    # a day later the same number is no longer a repeat
    answered_call(p, 3700.0 + 25 * 3600, uid="c3", leg="a3")
    assert "repeat_caller" not in p.call("c3").flags


def test_agent_state_follows_the_call_even_when_the_pbx_says_only_in_use() -> None:
    """Local members report INUSE/InCall=0 from the first ring and nothing at the answer."""
    p = Pbx()
    p.inbound(0.0, "c1")
    p.ev(0.0, "QueueMemberStatus", Queue="support", MemberName="坐席7001", Interface="PJSIP/7001", Status="2",
         InCall="0", Paused="0")
    p.ring(0.0, "c1", "7001", "a1")
    assert p.monitor.agents["坐席7001"].state == "ringing"
    p.connect(4.0, "c1", "7001", "a1")
    agent = p.monitor.agents["坐席7001"]
    assert (agent.state, agent.since) == ("talking", 4.0)
    p.complete(20.0, "c1", "7001", "a1", "caller")
    p.caller_hangs_up(20.0, "c1")
    assert p.monitor.agents["坐席7001"].state == "available"


def test_redirect_of_the_bridged_caller_is_a_blind_transfer() -> None:
    """AMI Redirect (no BlindTransfer event): the caller leaves the agent's bridge alive, the agent's
    leg is hung up by the PBX, then the caller joins another queue."""
    p = Pbx()
    answered_call(p, 0.0)
    p.ev(10.0, "BridgeLeave", Channel=ch("trunk", "c1"), Uniqueid="c1", Linkedid="c1", BridgeUniqueid="br1")
    p.hangup(10.0, ch("7001", "a1"), "a1", "c1")  # plumbing, not the agent hanging up on the caller
    p.complete(10.0, "c1", "7001", "a1", "caller")  # whatever reason app_queue gives, nobody hung up
    p.inbound(10.01, "c1", queue="claims")
    p.ring(10.01, "c1", "7007", "b7", queue="claims")
    p.connect(40.0, "c1", "7007", "b7", queue="claims")
    p.complete(60.0, "c1", "7007", "b7", "caller", queue="claims")
    p.caller_hangs_up(60.0, "c1")
    rec = p.record("c1")
    [t] = rec["transfers"]
    assert (t["kind"], t["to"], t["from_agent"], t["answered_by"]) == ("blind", "claims", "坐席7001", "坐席7007")
    assert t["at"] == pytest.approx(10.0)
    assert t["wait_s"] == pytest.approx(30.0)
    assert rec["first_hangup"] == "customer"
    assert not p.alerts("IN-HANGUP")


def test_redirect_to_an_extension_is_answered_by_the_dialled_agent() -> None:
    p = Pbx()
    answered_call(p, 0.0)
    p.ev(10.0, "BridgeLeave", Channel=ch("trunk", "c1"), Uniqueid="c1", Linkedid="c1", BridgeUniqueid="br1")
    p.hangup(10.0, ch("7001", "a1"), "a1", "c1")
    p.ev(12.0, "DialBegin", Channel=ch("trunk", "c1"), Uniqueid="c1", Linkedid="c1",
         DestChannel=ch("7003", "k3"), DestUniqueid="k3", DestLinkedid="c1")
    p.ev(17.0, "DialEnd", Channel=ch("trunk", "c1"), Uniqueid="c1", Linkedid="c1",
         DestChannel=ch("7003", "k3"), DestUniqueid="k3", DestLinkedid="c1", DialStatus="ANSWER")
    p.hangup(30.0, ch("7003", "k3"), "k3", "c1")  # now the new agent hangs up first
    p.caller_hangs_up(30.0, "c1")
    rec = p.record("c1")
    [t] = rec["transfers"]
    assert (t["kind"], t["completed"], t["answered_by"]) == ("blind", True, "7003")
    assert t["wait_s"] == pytest.approx(7.0)
    assert rec["first_hangup"] == "agent"


def test_the_caller_hanging_up_is_not_a_redirect() -> None:
    p = Pbx()
    answered_call(p, 0.0)
    p.ev(20.0, "HangupRequest", Channel=ch("trunk", "c1"), Uniqueid="c1", Linkedid="c1", Cause="16")
    p.ev(20.0, "BridgeLeave", Channel=ch("trunk", "c1"), Uniqueid="c1", Linkedid="c1", BridgeUniqueid="br1")
    p.complete(20.0, "c1", "7001", "a1", "caller")
    p.hangup(20.0, ch("trunk", "c1"), "c1", "c1", request=False)
    rec = p.record("c1")
    assert rec["transfers"] == []
    assert rec["first_hangup"] == "customer"
