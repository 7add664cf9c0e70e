"""Metrics of the call rules: transfer waits, dispositions, violations by rule."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from config.schema import load_config
from monitor.engine import Monitor
from monitor.metrics import Metrics
from monitor.replay import replay_virtual
from tests.pbxscript import Pbx, ch
from tests.replaytools import FIXTURES


def samples(reg: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(generate_latest(reg).decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_transfer_waits_are_in_the_histogram() -> None:
    cfg = load_config(env={})
    reg = CollectorRegistry()
    metrics = Metrics(reg, cfg)

    def setup(m: Monitor) -> None:
        metrics.attach(m)

    replay_virtual(FIXTURES / "S05_blind_transfer_to_claims.jsonl", cfg, lambda _o: None, setup=setup)
    got = samples(reg)
    blind = (("kind", "blind"), ("outcome", "answered"))
    assert got[("ringwatch_transfer_wait_seconds_count", blind)] == 1.0
    assert abs(got[("ringwatch_transfer_wait_seconds_sum", blind)] - 30.02) < 0.5
    # 30 s: over the 10 s bucket, inside the 30.0-60 s ones
    def bucket(le: str) -> float:
        return got[("ringwatch_transfer_wait_seconds_bucket", (("kind", "blind"), ("le", le), ("outcome", "answered")))]

    assert bucket("30.0") == 0
    assert bucket("60.0") == 1


def test_dispositions_and_violations_by_rule() -> None:
    p = Pbx()
    reg = CollectorRegistry()
    Metrics(reg, p.cfg).attach(p.monitor)
    for uid, t in (("o1", 0.0), ("o2", 0.0)):
        p.ev(t, "DialBegin", Channel=ch("7001", "p" + uid), Uniqueid="p" + uid, Linkedid="p" + uid,
             Context="outbound", Exten="13800138000", DestChannel=ch("carrier-trunk", uid), DestUniqueid=uid,
             DestLinkedid="p" + uid)
        p.hangup(t + 20, ch("carrier-trunk", uid), uid, "p" + uid)
    p.monitor.dispose("po1", "valid")
    p.until(400.0)
    p.monitor.dispose("po2", "invalid")  # after OUT-WRAPUP fired: late
    got = samples(reg)
    assert got[("ringwatch_dispositions_total", (("result", "on_time"),))] == 1
    assert got[("ringwatch_dispositions_total", (("result", "late"),))] == 1
    assert got[("ringwatch_violations_total", (("queue", "none"), ("rule", "OUT-WRAPUP")))] == 1
