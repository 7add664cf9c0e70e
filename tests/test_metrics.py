"""Prometheus metrics: recorded traces replayed through the real code, then scraped over HTTP."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from alerts.hub import AlertHub
from config.schema import Config
from monitor.auth import TokenStore
from monitor.clock import VirtualClock
from monitor.engine import Monitor
from monitor.metrics import Metrics
from monitor.replay import attach_output, replay_virtual
from monitor.web import AccessLogger, build_app
from telephony.ami.adapter import replay_trace
from telephony.events import AgentStateChanged, CallOffered, LinkUp, QueueJoined

pytestmark = pytest.mark.usefixtures("no_leftover_tasks")

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "ami"
TOKEN = "metrics-token-0123456789abcdef"


@dataclass
class Replayed:
    monitor: Monitor
    metrics: Metrics
    registry: CollectorRegistry
    out: list[dict[str, Any]]


def replay(name: str, cfg: Config | None = None) -> Replayed:
    """What ``replay_virtual`` does, with metrics attached before the first event."""
    cfg = cfg or Config()
    clock = VirtualClock()
    hub = AlertHub(clock.now, cfg.alerts.history_limit)
    monitor = Monitor(cfg, clock, hub)
    out: list[dict[str, Any]] = []
    attach_output(monitor, hub, out.append)
    registry = CollectorRegistry()
    metrics = Metrics(registry, cfg)
    metrics.attach(monitor)
    replay_trace(FIXTURES / f"{name}.jsonl", clock.advance_to, monitor.handle, cfg.pbx.ami.max_message_bytes)
    return Replayed(monitor, metrics, registry, out)


def samples(text: str) -> list[Sample]:
    return [s for fam in text_string_to_metric_families(text) for s in fam.samples]


def value(text: str, name: str, **labels: str) -> float:
    found = [s.value for s in samples(text) if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert found, f"no sample {name}{labels}"
    return sum(found)


Serve = Callable[..., Any]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Replayed, Config | None], Any]]:
    runners: list[web.AppRunner] = []

    async def start(r: Replayed, cfg: Config | None = None) -> str:
        app = build_app(r.monitor, r.monitor.hub, cfg or r.monitor.cfg, r.registry, metrics=r.metrics,
                        tokens=TokenStore([(TOKEN, "prometheus", "agent")]))
        runner = web.AppRunner(app, access_log_class=AccessLogger)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for runner in runners:
        await runner.cleanup()


async def scrape(base: str, token: str | None = TOKEN) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics", headers=headers) as resp:
        return resp.status, await resp.text()


async def test_burst_of_20_calls(serve: Any) -> None:
    r = replay("S12_burst_20_calls")
    calls = [o for o in r.out if o["type"] == "call"]
    answered = [c for c in calls if c["answered_at"] is not None]
    in_answer = [o for o in r.out if o["type"] == "alert" and o["rule"] == "IN-ANSWER"]
    assert (len(calls), len(answered), len(in_answer)) == (20, 14, 8)
    faithful: list[dict[str, Any]] = []
    replay_virtual(FIXTURES / "S12_burst_20_calls.jsonl", Config(), faithful.append)
    assert r.out == faithful  # the helper replays exactly as ``replay_virtual`` does
    base = await serve(r)
    status, text = await scrape(base)
    assert status == 200
    assert value(text, "ringwatch_ring_to_answer_seconds_count", queue="support") == len(answered) == 14
    assert value(text, "ringwatch_calls_offered_total", queue="support") == 20
    assert value(text, "ringwatch_calls_answered_total", queue="support") == 14
    assert value(text, "ringwatch_calls_abandoned_total", queue="support") == 6
    assert value(text, "ringwatch_violations_total", rule="IN-ANSWER", queue="support") == len(in_answer)
    assert value(text, "ringwatch_queue_wait_seconds_count", outcome="answered") == 14
    assert value(text, "ringwatch_queue_wait_seconds_count", outcome="abandoned") == 6
    # the histogram agrees with the call records (ring_s of each answered call)
    assert value(text, "ringwatch_ring_to_answer_seconds_sum") == pytest.approx(sum(c["ring_s"] for c in answered),
                                                                              abs=0.01)
    assert value(text, "ringwatch_queue_wait_seconds_sum", outcome="answered") == pytest.approx(
        sum(c["wait_s"] for c in answered), abs=0.01)
    over_15 = sum(1 for c in answered if c["ring_s"] > 15)
    assert value(text, "ringwatch_ring_to_answer_seconds_bucket", le="15.0") == 14 - over_15
    # live state after the trace: nothing waiting, link down, agents known
    assert value(text, "ringwatch_calls_waiting", queue="support") == 0
    assert value(text, "ringwatch_live_calls") == 0
    assert value(text, "ringwatch_ami_connected") == 0
    assert value(text, "ringwatch_agents", state="available") == 5
    assert value(text, "ringwatch_ami_events_total") > 0


async def test_slow_answer_trace(serve: Any) -> None:
    r = replay("S02_slow_answer_20s")
    _, text = await scrape(await serve(r))
    assert value(text, "ringwatch_violations_total", rule="IN-ANSWER") == 1
    assert value(text, "ringwatch_ring_to_answer_seconds_count") == 1
    assert value(text, "ringwatch_ring_to_answer_seconds_sum") == pytest.approx(20.015, abs=0.01)
    assert value(text, "ringwatch_ring_to_answer_seconds_bucket", le="16.0") == 0
    assert value(text, "ringwatch_ring_to_answer_seconds_bucket", le="20.0") == 0
    assert value(text, "ringwatch_ring_to_answer_seconds_bucket", le="30.0") == 1


@pytest.mark.parametrize("name", ["S05_blind_transfer_to_claims", "S12_burst_20_calls", "S13_resync_snapshot"])
def test_labels_are_bounded_no_numbers_no_call_ids(name: str) -> None:
    r = replay(name)
    text = generate_latest(r.registry).decode()
    ids = {o["id"] for o in r.out} | {o.get("call") for o in r.out}
    allowed = {"queue", "rule", "outcome", "state", "le", "webhook", "result", "kind"}  # kind: transfer kind
    for s in samples(text):
        assert set(s.labels) <= allowed, s
        for v in s.labels.values():
            assert v not in ids, s
            assert not re.search(r"\d{4,}", v), f"number-like label value in {s}"


def test_transfer_counts_each_queue() -> None:
    r = replay("S05_blind_transfer_to_claims")
    text = generate_latest(r.registry).decode()
    for q in ("support", "claims"):
        assert value(text, "ringwatch_calls_offered_total", queue=q) == 1
        assert value(text, "ringwatch_calls_answered_total", queue=q) == 1
    # the claims wait is measured from the join into claims (~30 s), not from the first join
    assert value(text, "ringwatch_queue_wait_seconds_sum", queue="claims") == pytest.approx(30.02, abs=0.1)


def test_live_gauges_read_state_at_scrape_time() -> None:
    cfg = Config()
    clock = VirtualClock()
    monitor = Monitor(cfg, clock, AlertHub(clock.now))
    registry = CollectorRegistry()
    Metrics(registry, cfg).attach(monitor)
    monitor.handle(LinkUp(0.0, "asterisk"))
    monitor.handle(AgentStateChanged(0.0, "Agent 7001", "support", "paused", True, "lunch"))
    for i in range(3):
        monitor.handle(CallOffered(i, f"c{i}", "inbound", f"+861391234567{i}", "x", float(i)))
        monitor.handle(QueueJoined(i, f"c{i}", "support", float(i)))
    clock.advance_to(10.0)
    text = generate_latest(registry).decode()
    assert value(text, "ringwatch_calls_waiting", queue="support") == 3
    assert value(text, "ringwatch_longest_wait_seconds", queue="support") == 10.0
    assert value(text, "ringwatch_live_calls") == 3
    assert value(text, "ringwatch_ami_connected") == 1
    assert value(text, "ringwatch_agents", state="paused") == 1
    assert value(text, "ringwatch_agents", state="talking") == 0
    clock.advance_to(12.5)
    assert value(generate_latest(registry).decode(), "ringwatch_longest_wait_seconds", queue="support") == 12.5


def test_link_stats_from_the_ami_client() -> None:
    class Stats:
        connected = True
        events_received = 1234
        reconnects = 3

    cfg = Config()
    clock = VirtualClock()
    monitor = Monitor(cfg, clock, AlertHub(clock.now))
    registry = CollectorRegistry()
    Metrics(registry, cfg).attach(monitor, Stats())
    text = generate_latest(registry).decode()
    assert value(text, "ringwatch_ami_connected") == 1
    assert value(text, "ringwatch_ami_events_total") == 1234
    assert value(text, "ringwatch_ami_reconnects_total") == 3


def test_a_fresh_registry_per_instance() -> None:
    cfg = Config()
    clock = VirtualClock()
    a, b = CollectorRegistry(), CollectorRegistry()
    Metrics(a, cfg).attach(Monitor(cfg, clock, AlertHub(clock.now)))
    Metrics(b, cfg).attach(Monitor(cfg, clock, AlertHub(clock.now)))  # no clash: nothing global
    with pytest.raises(ValueError, match="Duplicated"):
        Metrics(a, cfg)


async def test_metrics_needs_a_token_unless_configured_open(serve: Any) -> None:
    r = replay("S02_slow_answer_20s")
    base = await serve(r)
    status, _ = await scrape(base, token=None)
    assert status == 401
    status, _ = await scrape(base, token="wrong")
    assert status == 401
    open_cfg = Config.model_validate({"http": {"metrics_require_token": False}})
    r2 = replay("S02_slow_answer_20s", open_cfg)
    status, text = await scrape(await serve(r2, open_cfg), token=None)
    assert status == 200
    assert "ringwatch_violations_total" in text


async def test_healthz_needs_no_token(serve: Any) -> None:
    r = replay("S02_slow_answer_20s")
    async with aiohttp.ClientSession() as http, http.get(f"{await serve(r)}/healthz") as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "degraded", "pbx": "asterisk", "pbx_connected": False,
                                      "ami_connected": False, "live_calls": 0}
