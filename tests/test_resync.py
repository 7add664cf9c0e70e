"""A monitor that starts (or reconnects) while calls are up rebuilds them from the
PBX's snapshot (QueueStatus, then CoreShowChannels), as the client requests it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.replaytools import FIXTURES, replay_lines

S13 = FIXTURES / "S13_resync_snapshot.jsonl"


def snapshot_start(tmp: Path) -> Path:
    """S13 as seen by a monitor that connected at 8.5 s: banner, QueueStatus, CoreShowChannels, the rest."""
    items = [json.loads(line) for line in S13.read_text(encoding="utf-8").splitlines()]
    def aid(o: dict[str, Any]) -> str | None:
        return next((v for k, v in o.get("msg", []) if k == "ActionID"), None)
    queue_status = [o for o in items if aid(o) == "mon-3"]
    channels = [o for o in items if aid(o) == "mon-2"]
    later = [o for o in items if o["t"] > 8.52 and "msg" in o and aid(o) is None]
    out = tmp / "S13_late_start.jsonl"
    lines = [{"t": 8.5, "banner": "Asterisk Call Manager/11.0.0"}, *queue_status, *channels, *later,
             {"t": 14.531, "eof": True}]
    out.write_text("".join(json.dumps(o, ensure_ascii=False) + "\n" for o in lines), encoding="utf-8")
    return out


def test_late_start_adopts_calls_in_progress(tmp_path: Path) -> None:
    lines = replay_lines(snapshot_start(tmp_path))
    calls = sorted((o for o in lines if o["type"] == "call"), key=lambda c: c["id"])
    assert len(calls) == 3
    one, two, three = calls
    # two were talking at the snapshot: answered, agent known from the bridge
    assert one["answered_at"] is not None
    assert one["agent"] == "Agent 7001"
    assert two["answered_at"] is not None
    assert two["agent"] == "Agent 7002"
    assert one["first_hangup"] == two["first_hangup"] == "customer"
    # the third was waiting (QueueEntry Wait=3) with Agent 7003 ringing for ~3 s (Duration)
    assert three["answered_at"] is None
    assert three["abandoned"] is True
    assert three["rings"][0]["agent"] == "Agent 7003"
    assert three["rings"][0]["start"] == pytest.approx(8.52 - 3, abs=1.0)
    assert three["offered_at"] == pytest.approx(8.52 - 3, abs=1.0)


def test_ring_adopted_from_a_snapshot_alerts_at_its_real_deadline(tmp_path: Path) -> None:
    # the third caller's abandon is dropped: 7003 keeps ringing past 15 s of ring time
    src = snapshot_start(tmp_path)
    kept = []
    for line in src.read_text(encoding="utf-8").splitlines():
        o = json.loads(line)
        ids = dict(o.get("msg", []))
        if ids.get("Uniqueid", "").startswith("1795295160.") and "ActionID" not in ids:
            continue
        kept.append(o)
    kept[-1]["t"] = 30.0
    src.write_text("".join(json.dumps(o) + "\n" for o in kept), encoding="utf-8")
    lines = replay_lines(src)
    alerts = [o for o in lines if o["type"] == "alert" and o["rule"] == "IN-ANSWER"]
    assert len(alerts) == 1
    assert alerts[0]["agent"] == "Agent 7003"
    assert alerts[0]["at"] == pytest.approx(8.52 - 3 + 15, abs=1.0)


def test_calls_that_ended_while_the_link_was_down_are_closed(tmp_path: Path) -> None:
    # S01 with the link down from 10 s to 20 s: the caller hung up at 15.5 s unseen.
    items = [json.loads(line) for line in (FIXTURES / "S01_answered_caller_hangs_up.jsonl").read_text().splitlines()]
    head = [o for o in items if o["t"] <= 10.0]
    tail = [
        {"t": 10.0, "eof": True},
        {"t": 20.0, "banner": "Asterisk Call Manager/11.0.0"},
        {"t": 20.0, "msg": [["Response", "Success"], ["ActionID", "r1"], ["EventList", "start"]]},
        {"t": 20.0, "msg": [["Event", "CoreShowChannelsComplete"], ["ActionID", "r1"], ["EventList", "Complete"],
                            ["ListItems", "0"]]},
    ]
    path = tmp_path / "S01_gap.jsonl"
    path.write_text("".join(json.dumps(o) + "\n" for o in head + tail), encoding="utf-8")
    lines = replay_lines(path)
    calls = [o for o in lines if o["type"] == "call"]
    assert len(calls) == 1
    assert calls[0]["lost"] is True
    assert calls[0]["ended_at"] == pytest.approx(20.0)
    assert calls[0]["answered_at"] == pytest.approx(5.51, abs=0.01)
