"""Recordings we have not seen: the same calls with Timestamp headers, Chinese
names, other timings, and an AgentComplete without channel fields."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.replaytools import FIXTURES, judge, replay_lines

Pairs = list[list[Any]]


def transform(name: str, tmp: Path, fn: Callable[[dict[str, Any]], dict[str, Any] | None]) -> Path:
    out = tmp / f"{name}.variant.jsonl"
    with (FIXTURES / f"{name}.jsonl").open(encoding="utf-8") as src, out.open("w", encoding="utf-8") as dst:
        for line in src:
            obj = fn(json.loads(line))
            if obj is not None:
                dst.write(json.dumps(obj, ensure_ascii=False) + "\n")
    return out


def with_timestamps(obj: dict[str, Any]) -> dict[str, Any]:
    if "msg" in obj and obj["msg"][0][0] == "Event":
        pairs: Pairs = obj["msg"]
        pairs.insert(2, ["Timestamp", f"{1795294870 + obj['t'] + 0.37:.6f}"])
    return obj


@pytest.mark.parametrize("name", ["S02_slow_answer_20s", "S05_blind_transfer_to_claims", "S12_burst_20_calls"])
def test_timestamp_headers_change_nothing(name: str, tmp_path: Path) -> None:
    plain = replay_lines(FIXTURES / f"{name}.jsonl")
    stamped = replay_lines(transform(name, tmp_path, with_timestamps))
    assert stamped == plain


CHINESE = {"Agent 7001": "坐席 张伟", "Agent 7002": "坐席 李娜", "Customer One": "王小明(车险理赔)"}


def chinese(obj: dict[str, Any]) -> dict[str, Any]:
    if "msg" in obj:
        obj["msg"] = [[k, CHINESE.get(v, v) if isinstance(v, str) else v] for k, v in obj["msg"]]
    return obj


def test_chinese_agent_and_caller_names(tmp_path: Path) -> None:
    lines = replay_lines(transform("S04_ringnoanswer_then_second_agent", tmp_path, chinese))
    call = next(o for o in lines if o["type"] == "call")
    alert = next(o for o in lines if o["type"] == "alert")
    assert [r["agent"] for r in call["rings"]] == ["坐席 张伟", "坐席 李娜"]
    assert alert["agent"] == "坐席 张伟"
    assert "坐席 张伟" in alert["text"]["zh"]
    truth = json.loads((FIXTURES / "S04_ringnoanswer_then_second_agent.truth.json").read_text(encoding="utf-8"))
    res = judge(FIXTURES / "S04_ringnoanswer_then_second_agent.truth.json", lines, tmp_path)
    assert res.returncode == 0, res.stdout
    assert truth["expected"][0]["answered"]


def stretch(factor: float) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def fn(obj: dict[str, Any]) -> dict[str, Any]:
        obj["t"] = round(obj["t"] * factor, 3)
        return obj

    return fn


def test_other_timings_move_the_alert_with_the_ring(tmp_path: Path) -> None:
    # S01: 7001 rings ~5 s.  Stretched 3.5x it rings ~17.5 s: now a violation, at ring start + 15.
    lines = replay_lines(transform("S01_answered_caller_hangs_up", tmp_path, stretch(3.5)))
    call = next(o for o in lines if o["type"] == "call")
    alerts = [o for o in lines if o["type"] == "alert" and o["rule"] == "IN-ANSWER"]
    ring = call["rings"][0]
    assert ring["end"] - ring["start"] == pytest.approx(17.5, abs=0.05)
    assert len(alerts) == 1
    assert alerts[0]["at"] == pytest.approx(ring["start"] + 15.0, abs=1e-6)
    # shrunk to 2.9x: ~14.5 s, just under the limit: no alert
    lines = replay_lines(transform("S01_answered_caller_hangs_up", tmp_path, stretch(2.9)))
    assert not [o for o in lines if o["type"] == "alert" and o["rule"] == "IN-ANSWER"]


def strip_agent_complete(obj: dict[str, Any]) -> dict[str, Any]:
    if "msg" in obj and obj["msg"][0] == ["Event", "AgentComplete"]:
        keep = {"Event", "Privilege", "Queue", "Interface", "MemberName", "HoldTime", "TalkTime", "Reason"}
        obj["msg"] = [p for p in obj["msg"] if p[0] in keep]
    return obj


def test_agent_complete_without_channel_fields_is_matched_by_member(tmp_path: Path) -> None:
    lines = replay_lines(transform("S09_agent_hangs_up_first", tmp_path, strip_agent_complete))
    call = next(o for o in lines if o["type"] == "call")
    assert call["first_hangup"] == "agent"


def drop_agent_complete(obj: dict[str, Any]) -> dict[str, Any] | None:
    if "msg" in obj and obj["msg"][0] == ["Event", "AgentComplete"]:
        return None
    return obj


@pytest.mark.parametrize(("name", "side"), [("S09_agent_hangs_up_first", "agent"),
                                            ("S01_answered_caller_hangs_up", "customer")])
def test_without_agent_complete_the_first_hangup_request_decides(name: str, side: str, tmp_path: Path) -> None:
    lines = replay_lines(transform(name, tmp_path, drop_agent_complete))
    assert next(o for o in lines if o["type"] == "call")["first_hangup"] == side


def drop_after(t_cut: float) -> Callable[[dict[str, Any]], dict[str, Any] | None]:
    def fn(obj: dict[str, Any]) -> dict[str, Any] | None:
        return None if obj["t"] > t_cut else obj

    return fn


def test_alert_fires_while_the_agent_still_rings_even_with_the_link_down(tmp_path: Path) -> None:
    # S02 cut at 12 s by a dropped link, the trace ending at 16 s: the agent is still
    # ringing at 15.5 s; the alert fires on time, no record yet (timers run while down)
    path = transform("S02_slow_answer_20s", tmp_path, drop_after(12.0))
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps({"t": 12.0, "eof": True}) + "\n")
        fh.write(json.dumps({"t": 16.0, "banner": "Asterisk Call Manager/11.0.0"}) + "\n")
    lines = replay_lines(path)
    assert [o["type"] for o in lines] == ["alert"]
    assert lines[0]["at"] == pytest.approx(15.505, abs=1e-6)
