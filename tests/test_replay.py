"""Every recorded Asterisk trace, replayed at speed 0 through the real codec,
tracker and rules, gives the calls and IN-ANSWER alerts its ground truth lists."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from config.schema import Config
from tests.replaytools import FIXTURES, WITH_TRUTH, judge, replay_lines


@pytest.mark.parametrize("scope", ["A", "B"])
@pytest.mark.parametrize("name", WITH_TRUTH)
def test_trace_matches_ground_truth(name: str, scope: str, tmp_path: Path) -> None:
    """Scope A: inbound calls and IN-ANSWER; scope B adds transfers, recordings, IN-XFER, IN-HANGUP."""
    lines = replay_lines(FIXTURES / f"{name}.jsonl")
    res = judge(FIXTURES / f"{name}.truth.json", lines, tmp_path, scope)
    assert res.returncode == 0, res.stdout + res.stderr


def test_long_transfer_wait_alerts_at_the_limit_and_only_there() -> None:
    for name in WITH_TRUTH:
        lines = replay_lines(FIXTURES / f"{name}.jsonl")
        xfer = [o for o in lines if o["type"] == "alert" and o["rule"] == "IN-XFER"]
        if name == "S07_blind_transfer_long_wait":
            call = next(o for o in lines if o["type"] == "call")
            [t] = call["transfers"]
            assert [a["at"] for a in xfer] == [pytest.approx(t["at"] + 120.0, abs=1e-6)]
            assert xfer[0]["at"] < t["answered_at"]  # live, while the caller still waits
            assert t["wait_s"] == pytest.approx(130.098, abs=0.5)
        else:
            assert not xfer, name


def test_recorded_call_and_outbound_call_records() -> None:
    s10 = next(o for o in replay_lines(FIXTURES / "S10_recorded_call_mixmonitor.jsonl") if o["type"] == "call")
    assert s10["recorded"] is True
    lines = replay_lines(FIXTURES / "S08_outbound_click_to_call.jsonl")
    s08 = next(o for o in lines if o["type"] == "call")
    assert (s08["direction"], s08["agent"], s08["caller"]) == ("outbound", "Agent 7001", "5****34")
    assert s08["ring_s"] == pytest.approx(8.004, abs=0.01)
    assert s08["first_hangup"] == "customer"
    assert not [o for o in lines if o["type"] == "alert" and o["rule"].startswith("IN-")]


def _truth(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.truth.json").read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def test_slow_answer_alert_fires_at_the_deadline_before_the_answer() -> None:
    lines = replay_lines(FIXTURES / "S02_slow_answer_20s.jsonl")
    alerts = [o for o in lines if o["type"] == "alert" and o["rule"] == "IN-ANSWER"]
    notices = [o for o in lines if o["type"] == "notice"]
    call = next(o for o in lines if o["type"] == "call")
    assert [a["rule"] for a in alerts] == ["IN-ANSWER"]
    alert = alerts[0]
    exp = _truth("S02_slow_answer_20s")["expected"][0]
    assert alert["at"] == pytest.approx(exp["rings"][0]["start_t"] + 15.0, abs=1e-6)
    assert alert["at"] < call["answered_at"]
    assert alert["agent"] == "Agent 7001"
    assert alert["queue"] == "support"
    assert "致歉" not in alert["text"]["zh"]
    assert "15" in alert["text"]["zh"]
    # the late answer tells the agent to apologise
    assert len(notices) == 1
    assert "致歉" in notices[0]["text"]["zh"]
    assert notices[0]["at"] == pytest.approx(call["answered_at"])
    # alerts come out in time order, before the record of the call they concern
    assert lines.index(alert) < lines.index(call)


def test_ring_no_answer_counts_for_the_first_agent_only() -> None:
    lines = replay_lines(FIXTURES / "S04_ringnoanswer_then_second_agent.jsonl")
    alerts = [o for o in lines if o["type"] == "alert" and o["rule"] == "IN-ANSWER"]
    call = next(o for o in lines if o["type"] == "call")
    assert [(a["rule"], a["agent"]) for a in alerts] == [("IN-ANSWER", "Agent 7001")]
    rings = [(r["agent"], r["outcome"]) for r in call["rings"]]
    assert rings == [("Agent 7001", "noanswer"), ("Agent 7002", "answered")]
    assert call["ring_s"] == pytest.approx(4.0, abs=0.1)
    assert call["wait_s"] == pytest.approx(36.0, abs=0.1)
    # no apology: the answering agent picked up in time
    assert not [o for o in lines if o["type"] == "notice"]


def test_abandoned_caller_gets_no_ring_alert_under_the_limit() -> None:
    lines = replay_lines(FIXTURES / "S03_abandoned_in_queue.jsonl")
    call = next(o for o in lines if o["type"] == "call")
    assert call["abandoned"] is True
    assert call["answered_at"] is None
    assert call["rings"][0]["outcome"] == "cancelled"
    assert call["first_hangup"] == "customer"
    assert not [o for o in lines if o["type"] == "alert"]


def test_callers_are_masked_by_default_and_shown_when_configured() -> None:
    masked = replay_lines(FIXTURES / "S02_slow_answer_20s.jsonl")
    call = next(o for o in masked if o["type"] == "call")
    alert = next(o for o in masked if o["type"] == "alert")
    assert call["caller"] == "+155****0001"
    assert "+15550100001" not in json.dumps(masked)
    assert "+155****0001" in alert["text"]["zh"]
    cfg = Config.model_validate({"privacy": {"mask_callers": False}})
    shown = replay_lines(FIXTURES / "S02_slow_answer_20s.jsonl", cfg)
    assert next(o for o in shown if o["type"] == "call")["caller"] == "+15550100001"


def test_ring_limit_comes_from_config() -> None:
    cfg = Config.model_validate({"rules": {"IN-ANSWER": {"ring_limit_s": 3}}})
    lines = replay_lines(FIXTURES / "S01_answered_caller_hangs_up.jsonl", cfg)
    alerts = [o for o in lines if o["type"] == "alert" and o["rule"] == "IN-ANSWER"]
    assert len(alerts) == 1
    assert alerts[0]["at"] == pytest.approx(0.505 + 3, abs=0.01)
    off = Config.model_validate({"rules": {"IN-ANSWER": {"enabled": False}}})
    s02 = replay_lines(FIXTURES / "S02_slow_answer_20s.jsonl", off)
    assert not [o for o in s02 if o["type"] == "alert" and o["rule"] == "IN-ANSWER"]


def test_in_wait_fires_when_a_caller_waits_too_long() -> None:
    cfg = Config.model_validate({"rules": {"IN-WAIT": {"max_wait_s": 30}}})
    lines = replay_lines(FIXTURES / "S04_ringnoanswer_then_second_agent.jsonl", cfg)
    waits = [o for o in lines if o["type"] == "alert" and o["rule"] == "IN-WAIT"]
    assert len(waits) == 1
    assert waits[0]["at"] == pytest.approx(0.504 + 30, abs=0.01)
    # S01 is answered after 5 s: no IN-WAIT
    s01 = replay_lines(FIXTURES / "S01_answered_caller_hangs_up.jsonl", cfg)
    assert not [o for o in s01 if o.get("rule") == "IN-WAIT"]


def test_burst_records_and_alerts_are_deterministic() -> None:
    a = replay_lines(FIXTURES / "S12_burst_20_calls.jsonl")
    b = replay_lines(FIXTURES / "S12_burst_20_calls.jsonl")
    assert a == b
    calls = [o for o in a if o["type"] == "call"]
    assert len(calls) == 20
    assert sum(1 for c in calls if c["answered_at"] is not None) == 14
    assert sum(1 for c in calls if c["abandoned"]) == 6
