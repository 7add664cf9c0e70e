"""QA: sampling (QA-SAMPLE, QA-SPECIAL) over many calls, reproducibility, the score card, quotas."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from alerts.hub import AlertHub
from config.schema import Config
from monitor.audit import AuditLog
from monitor.clock import VirtualClock
from monitor.engine import Monitor
from monitor.qa import SPECIAL_FLAGS, Finished, QaError, QaService, sample_calls, samples_csv, score_card

RATIOS = {"inbound_ratio": 0.10, "outbound_ratio": 0.05, "special_ratio": 0.10}


def simulated_calls(n: int, seed: int = 7) -> list[Finished]:
    rng = random.Random(seed)
    agents = [f"Agent 70{i:02d}" for i in range(1, 31)]
    out = []
    for i in range(n):
        flags = frozenset(f for f in sorted(SPECIAL_FLAGS) if rng.random() < 0.04)
        out.append(Finished(f"{1_800_000_000 + i}.{i % 7}", rng.choice(agents),
                            "inbound" if rng.random() < 0.75 else "outbound", flags, 1_800_000_000.0 + i))
    return out


def test_ten_thousand_calls_every_agent_meets_the_minimums() -> None:
    calls = simulated_calls(10_000)
    picked = sample_calls(calls, seed=42, day="2026-11-20", **RATIOS)
    chosen = {c.id for c, _ in picked}
    for agent in {c.agent for c in calls}:
        for direction, ratio in (("inbound", 0.10), ("outbound", 0.05)):
            mine = [c for c in calls if c.agent == agent and c.direction == direction]
            got = sum(c.id in chosen for c in mine)
            assert got >= ratio * len(mine), (agent, direction, got, len(mine))
            assert got <= math.ceil(ratio * len(mine)) + sum(bool(c.flags) for c in mine)  # no oversampling
    specials = [c for c in calls if c.flags & SPECIAL_FLAGS]
    assert len(specials) > 1000
    assert sum(c.id in chosen for c in specials) >= 0.10 * len(specials)
    for agent in {c.agent for c in specials}:  # per agent too
        mine = [c for c in specials if c.agent == agent]
        assert sum(c.id in chosen for c in mine) >= 0.10 * len(mine)
    reasons = Counter(r for _, rs in picked for r in rs)
    assert set(reasons) == {"inbound", "outbound", "special"}


def test_same_seed_same_sample_whatever_the_order_and_another_seed_differs() -> None:
    calls = simulated_calls(10_000)
    a = sample_calls(calls, seed=42, day="2026-11-20", **RATIOS)
    shuffled = list(calls)
    random.Random(1).shuffle(shuffled)
    b = sample_calls(shuffled, seed=42, day="2026-11-20", **RATIOS)
    assert [(c.id, r) for c, r in a] == [(c.id, r) for c, r in b]
    c = sample_calls(calls, seed=43, day="2026-11-20", **RATIOS)
    assert {x.id for x, _ in a} != {x.id for x, _ in c}


def test_the_sample_is_fair_each_call_equally_likely() -> None:
    """Over many seeds every one of an agent's 20 inbound calls is drawn about equally often."""
    calls = [Finished(f"c{i:02d}", "Agent 7001", "inbound") for i in range(20)]
    counts = Counter(c.id for seed in range(2000) for c, _ in sample_calls(calls, seed=seed, day="d", **RATIOS))
    assert len(counts) == 20
    assert max(counts.values()) - min(counts.values()) < 90  # expected 200 each (2 of 20 per draw)


@pytest.mark.parametrize(("card", "score"), [
    ({}, 100.0),
    ({"attitude": 5, "norms": 10, "skills": 20, "bonus": 3}, 68.0),
    ({"attitude": 20, "norms": 30, "skills": 50}, 0.0),
    ({"attitude": 0, "bonus": 10}, 110.0),
    ({"skills": 5, "fatal": True}, 0.0),
])
def test_score_card(card: dict[str, object], score: float) -> None:
    assert score_card(card)["score"] == score


@pytest.mark.parametrize("card", [{"attitude": 21}, {"norms": -1}, {"bonus": 11}, {"skills": True}, {"x": 1},
                                  {"fatal": "yes"}])
def test_bad_score_cards_are_refused(card: dict[str, object]) -> None:
    with pytest.raises(QaError):
        score_card(card)


def test_review_appeal_rereview_quota_and_csv() -> None:
    cfg = Config.model_validate({"ui": {"qa": {"seed": 1}}})
    clock = VirtualClock(wall_origin=1_795_000_000.0)
    hub = AlertHub(clock.now)
    monitor = Monitor(cfg, clock, hub)
    audit = AuditLog(None)
    qa = QaService(cfg, monitor, audit, lambda: clock.wall(clock.now()))
    day = qa.day_of(1_795_000_000.0)
    for c in simulated_calls(300):
        qa.add(Finished(c.id, c.agent, c.direction, c.flags, 1_795_000_000.0 + 10))
    samples = qa.run_sample(day)
    assert samples
    assert qa.run_sample(day) == samples  # idempotent
    first = samples[0].call.id
    s = qa.review(first, "qa1", {"attitude": 2})
    assert (s.state, s.score) == ("reviewed", 98.0)
    with pytest.raises(QaError):
        qa.review(first, "qa1", {})
    assert qa.appeal(first, "Agent", "录音听错了").state == "appealed"
    s = qa.review(first, "qa2", {})
    assert (s.state, s.score) == ("rereviewed", 100.0)
    assert [f["action"] for _, f in audit._memory] == ["qa.review", "qa.appeal", "qa.review"]
    clock.advance(3 * 86400)  # QA-TIMELY: due within 2 days
    rows = qa.query(day=day)
    assert all(r["overdue"] for r in rows if r["state"] == "due")
    text = samples_csv(rows)
    assert text.splitlines()[0].startswith("call,agent,direction")
    qa.record_monitoring("Agent 7001", "random", "sup1", "c1", clock.wall(clock.now()))
    week = {r["agent"]: r for r in qa.week({"Agent 7001", "Agent 7002"})["agents"]}
    assert (week["Agent 7001"]["random"], week["Agent 7001"]["below_quota"]) == (1, True)
    assert week["Agent 7002"]["random"] == 0
