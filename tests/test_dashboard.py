"""The Grafana dashboard (deploy/grafana/ringwatch.json) asks only for what ringwatch exports.

Recorded traces (S12: a burst of 20 calls, S05: a blind transfer into a second queue)
are replayed into a Monitor with Metrics, the web app serves ``/metrics`` on
127.0.0.1 port 0 (with a webhook and a chat robot configured, so their series
exist too), and every PromQL expression in the dashboard is tokenized: each
metric name must be a series in that text, each label matcher and grouping label
a label of it, each literal ``=`` / ``!=`` value one it really takes.  A panel for
a metric that does not exist yet fails here.

:func:`parse_promql` and :func:`exported` are used by ``test_prometheus_rules`` too.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from alerts.hub import AlertHub
from config.schema import Config
from monitor.clock import VirtualClock
from monitor.commitments import CommitmentCollector, CommitmentService
from monitor.engine import Monitor
from monitor.metrics import Metrics
from monitor.outbound import OutboundCollector, OutboundCompliance
from monitor.store import CommitmentStore
from monitor.web import AccessLogger, build_app
from telephony.ami.adapter import channel_rules, replay_trace

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "ringwatch.json"
FIXTURES = ROOT / "tests" / "fixtures" / "ami"
TRACES = ("S12_burst_20_calls", "S05_blind_transfer_to_claims", "S08_outbound_click_to_call")
DS = {"type": "prometheus", "uid": "${datasource}"}

# -- a small PromQL tokenizer ------------------------------------------------------------

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<var>\$\{[^}]*\}|\$\w+)
  | (?P<number>(?:0x[0-9a-fA-F]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)(?:(?:ms|[smhdwy])(?:\d+(?:ms|[smhdwy]))*)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=,(){}\[\]:@])
""", re.VERBOSE)

#: PromQL functions and aggregation operators
_FUNCTION_NAMES = """
    abs absent absent_over_time avg avg_over_time bottomk ceil changes clamp clamp_max clamp_min count
    count_over_time count_values day_of_month day_of_week days_in_month delta deriv exp floor group
    histogram_quantile holt_winters hour idelta increase irate label_join label_replace
    last_over_time ln log10 log2 max max_over_time min min_over_time minute month predict_linear
    present_over_time quantile quantile_over_time rate resets round scalar sgn sort sort_desc sqrt
    stddev stddev_over_time stdvar stdvar_over_time sum sum_over_time time timestamp topk vector year
"""
FUNCTIONS = frozenset(_FUNCTION_NAMES.split())
_GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
_KEYWORDS = _GROUPING | {"bool", "and", "or", "unless", "offset", "inf", "nan", "Inf", "NaN"}


@dataclass
class Selector:
    metric: str | None
    matchers: list[tuple[str, str, str]] = field(default_factory=list)  # (label, op, value)


@dataclass
class Parsed:
    selectors: list[Selector] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)
    functions: set[str] = field(default_factory=set)

    @property
    def metrics(self) -> set[str]:
        return {s.metric for s in self.selectors if s.metric}


def _tokens(expr: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise ValueError(f"cannot tokenize {expr[pos:pos + 20]!r} in {expr!r}")
        kind = m.lastgroup or ""
        if kind not in ("ws", "comment"):
            out.append((kind, m.group()))
        pos = m.end()
    return out


def _unquote(s: str) -> str:
    return s[1:-1] if s[0] == "`" else json.loads('"' + s[1:-1].replace('\\"', '"').replace('"', '\\"') + '"')


def parse_promql(expr: str) -> Parsed:
    """Metric selectors (with their label matchers), grouping labels and functions of ``expr``."""
    toks = _tokens(expr)
    p = Parsed()
    i = 0

    def nxt(k: int) -> str:
        return toks[k][1] if k < len(toks) else ""

    def matchers(k: int, sel: Selector) -> int:  # toks[k] == "{"
        k += 1
        while nxt(k) != "}":
            (lk, label), (_, op), (vk, value) = toks[k], toks[k + 1], toks[k + 2]
            if lk != "ident" or op not in ("=", "!=", "=~", "!~") or vk != "string":
                raise ValueError(f"bad matcher in {expr!r}")
            sel.matchers.append((label, op, _unquote(value)))
            k += 3
            if nxt(k) == ",":
                k += 1
        return k + 1

    while i < len(toks):
        kind, text = toks[i]
        if text == "[":  # a range or subquery: durations and variables only
            while nxt(i) != "]":
                i += 1
            i += 1
        elif kind == "ident" and text in _GROUPING:
            i += 1
            if nxt(i) == "(":
                i += 1
                while nxt(i) != ")":
                    if toks[i][0] == "ident":
                        p.grouping.add(toks[i][1])
                    i += 1
                i += 1
        elif kind == "ident" and text == "offset":
            i += 2
        elif kind == "ident" and text in _KEYWORDS:
            i += 1
        elif kind == "ident" and (text in FUNCTIONS or nxt(i + 1) == "("):
            p.functions.add(text)
            i += 1
        elif kind == "ident":
            sel = Selector(text)
            p.selectors.append(sel)
            i = matchers(i + 1, sel) if nxt(i + 1) == "{" else i + 1
        elif text == "{":
            sel = Selector(None)
            p.selectors.append(sel)
            i = matchers(i, sel)
        else:
            i += 1
    for sel in p.selectors:  # {__name__="..."} names the metric too
        for label, op, value in sel.matchers:
            if label == "__name__" and op == "=":
                sel.metric = value
    return p


def test_the_tokenizer() -> None:
    p = parse_promql('histogram_quantile(0.9, sum by (le, queue) (rate(a_bucket{queue=~"$queue", x="1"}[5m]))) '
                     '/ on(queue) group_left b_total{y!="q\\"z"} offset 1h > bool 0.5 and c')
    assert [s.metric for s in p.selectors] == ["a_bucket", "b_total", "c"]
    assert p.selectors[0].matchers == [("queue", "=~", "$queue"), ("x", "=", "1")]
    assert p.selectors[1].matchers == [("y", "!=", 'q"z')]
    assert p.grouping == {"le", "queue"}
    assert p.functions == {"histogram_quantile", "sum", "rate"}
    assert parse_promql("sum(x) without (instance)").grouping == {"instance"}
    with pytest.raises(ValueError, match="cannot tokenize"):
        parse_promql("rate(x[5m]) ? 1")


# -- what ringwatch exports --------------------------------------------------------------


@dataclass(frozen=True)
class Exported:
    labels: dict[str, frozenset[str]]  # series name (with _bucket/_sum/_count/_total) -> label names
    values: dict[tuple[str, str], frozenset[str]]  # (series name, label) -> values seen


#: the traces start on a Saturday evening, Beijing time: S08's dial falls outside the calling window
WALL_ORIGIN = 1795269600.0  # 2026-11-21 22:00 +08:00


def _replay(name: str, cfg: Config) -> tuple[Monitor, Metrics, CollectorRegistry]:
    clock = VirtualClock(wall_origin=WALL_ORIGIN)
    hub = AlertHub(clock.now, cfg.alerts.history_limit)
    monitor = Monitor(cfg, clock, hub)
    registry = CollectorRegistry()
    metrics = Metrics(registry, cfg)
    metrics.attach(monitor)
    # the collectors the daemon registers next to the app's: commitments (read from the service's
    # last stats; no Redis traffic at scrape time) and outbound compliance
    store = CommitmentStore(aioredis.Redis(unix_socket_path="/nonexistent/redis.sock"))
    registry.register(CommitmentCollector(CommitmentService(cfg, store, clock, hub)))
    rule = next(r for r in monitor.rules if isinstance(r, OutboundCompliance))
    registry.register(OutboundCollector(rule, rule.policy, clock))
    replay_trace(FIXTURES / f"{name}.jsonl", clock.advance_to, monitor.handle, cfg.pbx.ami.max_message_bytes,
                 channel_rules(cfg))
    return monitor, metrics, registry


async def _scrape(name: str) -> str:
    """/metrics text after replaying ``name``, served by the real app (webhook and chat robot configured)."""
    cfg = Config.model_validate({
        "http": {"metrics_require_token": False},
        "alerts": {"webhooks": [{"name": "ops", "url": "http://127.0.0.1:9/hook"}],
                   "chat": [{"provider": "dingtalk", "name": "floor", "url": "http://127.0.0.1:9/robot/send"}]},
    })
    monitor, metrics, registry = _replay(name, cfg)
    app = build_app(monitor, monitor.hub, cfg, registry, metrics=metrics)
    runner = web.AppRunner(app, access_log_class=AccessLogger)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        async with aiohttp.ClientSession() as http, \
                http.get(f"http://127.0.0.1:{runner.addresses[0][1]}/metrics") as resp:
            assert resp.status == 200
            return await resp.text()
    finally:
        await runner.cleanup()


@functools.cache
def exported() -> Exported:
    labels: dict[str, set[str]] = {}
    values: dict[tuple[str, str], set[str]] = {}
    for name in TRACES:
        text = asyncio.run(_scrape(name))
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                labels.setdefault(s.name, set()).update(s.labels)
                for k, v in s.labels.items():
                    values.setdefault((s.name, k), set()).add(v)
    return Exported({k: frozenset(v) for k, v in labels.items()}, {k: frozenset(v) for k, v in values.items()})


def check_expr(expr: str, allowed_foreign: frozenset[str] = frozenset(),
               target_labels: frozenset[str] = frozenset(), free_values: frozenset[str] = frozenset()) -> Parsed:
    """Every name, label and literal value in ``expr`` exists in ringwatch's /metrics (AssertionError if not).

    ``allowed_foreign``: series that are not ringwatch's (Prometheus' own ``up``), not checked;
    ``target_labels``: labels Prometheus adds at scrape time (``instance``, ``job``), allowed anywhere;
    ``free_values``: labels whose values are the operator's (queue or sink names), not checked.
    """
    ex = exported()
    p = parse_promql(expr)
    assert p.selectors, f"no metric in {expr!r}"
    unknown_fns = p.functions - FUNCTIONS
    assert not unknown_fns, f"unknown functions {unknown_fns} in {expr!r}"
    labels_in_play: set[str] = set()
    for sel in p.selectors:
        assert sel.metric, f"a selector without a metric name in {expr!r}"
        if sel.metric in allowed_foreign:
            continue
        assert sel.metric.startswith("ringwatch_"), f"{sel.metric} is not a ringwatch metric ({expr!r})"
        assert sel.metric in ex.labels, f"ringwatch does not export {sel.metric} ({expr!r})"
        have = ex.labels[sel.metric] | target_labels
        labels_in_play |= have
        for label, op, value in sel.matchers:
            assert label in have, f"{sel.metric} has no label {label!r} (it has {sorted(have)}) in {expr!r}"
            if op in ("=", "!=") and "$" not in value and label not in target_labels | free_values:
                seen = ex.values.get((sel.metric, label), frozenset())
                assert value in seen, f'{sel.metric}{{{label}="{value}"}} never seen (values: {sorted(seen)})'
    if not allowed_foreign & p.metrics:
        missing = p.grouping - labels_in_play
        assert not missing, f"grouping by labels {missing} that none of {sorted(p.metrics)} has ({expr!r})"
    return p


# -- the dashboard -------------------------------------------------------------------------


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def _panels(d: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in d["panels"]:
        yield p
        yield from p.get("panels", [])  # inside collapsed rows


def _substituted(expr: str, d: dict[str, Any]) -> str:
    """Custom variables replaced by their current value (so their values get checked too)."""
    for var in d["templating"]["list"]:
        if var["type"] in ("custom", "constant"):
            value = str(var["current"]["value"])
            expr = expr.replace("${" + var["name"] + "}", value).replace("$" + var["name"], value)
    return expr


def _targets(d: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(p["title"], t) for p in _panels(d) if p["type"] != "row" for t in p.get("targets", [])]


def test_every_query_uses_only_what_ringwatch_exports() -> None:
    d = _dashboard()
    targets = _targets(d)
    assert len(targets) >= 20
    for title, t in targets:
        try:
            p = check_expr(_substituted(t["expr"], d))
        except AssertionError as e:
            raise AssertionError(f"panel {title!r}: {e}") from None
        # {{label}} in a legend must be a label the result keeps
        for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", t.get("legendFormat", "")):
            kept = p.grouping or {lbl for s in p.selectors for lbl in exported().labels[s.metric or ""]}
            assert label in kept, f"panel {title!r}: legend uses {{{{{label}}}}}, not in the result"


def test_template_variables_query_real_labels() -> None:
    d = _dashboard()
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    q = variables["queue"]
    assert q["datasource"] == DS
    m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", q["query"]["query"])
    assert m, q["query"]
    check_expr(m.group(1))
    assert m.group(2) in exported().labels[m.group(1)]
    assert {"support", "claims"} <= exported().values[(m.group(1), m.group(2))]  # S12 + S05 queues
    sl = variables["sl_bucket"]  # its choices must be real buckets of the queue-wait histogram
    buckets = exported().values[("ringwatch_queue_wait_seconds_bucket", "le")]
    for opt in sl["options"]:
        assert opt["value"] in buckets, f"sl_bucket {opt['value']} is not a wait bucket ({sorted(buckets)})"


def test_the_dashboard_is_importable_as_is() -> None:
    d = _dashboard()
    assert d["uid"] == "ringwatch-overview"
    assert d["title"].startswith("ringwatch")
    assert d["schemaVersion"] >= 36
    assert "id" not in d or d["id"] is None  # an import must not overwrite another dashboard by id
    assert "__inputs" not in d  # the datasource is a variable: nothing to map on import

    def datasources(node: Any) -> Iterator[dict[str, Any]]:
        if isinstance(node, dict):
            if isinstance(node.get("datasource"), dict):
                yield node["datasource"]
            for v in node.values():
                yield from datasources(v)
        elif isinstance(node, list):
            for v in node:
                yield from datasources(v)

    for ds in datasources(d["panels"]):
        assert ds == DS, ds  # never a hard-coded datasource uid
    ids = [p["id"] for p in _panels(d)]
    assert len(ids) == len(set(ids))
    boxes = []
    for p in _panels(d):
        g = p["gridPos"]
        assert g["x"] >= 0, p["title"]
        assert g["x"] + g["w"] <= 24, p["title"]
        boxes.append((p["title"], g["x"], g["y"], g["x"] + g["w"], g["y"] + g["h"]))
        if p["type"] != "row":
            assert p["datasource"] == DS
            refs = [t["refId"] for t in p["targets"]]
            assert len(refs) == len(set(refs)), p["title"]
            assert all(t["datasource"] == DS and t["expr"].strip() for t in p["targets"]), p["title"]
    for i, a in enumerate(boxes):  # no two panels overlap
        for b in boxes[i + 1:]:
            assert a[3] <= b[1] or b[3] <= a[1] or a[4] <= b[2] or b[4] <= a[2], f"{a[0]!r} overlaps {b[0]!r}"


def test_the_dashboard_covers_the_issue() -> None:
    d = _dashboard()
    exprs = [_substituted(t["expr"], d) for _, t in _targets(d)]
    types = {p["type"] for p in _panels(d)}
    assert "heatmap" in types

    def uses(*names: str) -> bool:
        return any(all(n in parse_promql(e).metrics for n in names) for e in exprs)

    assert uses("ringwatch_queue_wait_seconds_bucket", "ringwatch_calls_offered_total")  # service level
    assert uses("ringwatch_queue_wait_seconds_sum", "ringwatch_queue_wait_seconds_count")  # ASA
    assert uses("ringwatch_calls_abandoned_total", "ringwatch_calls_offered_total")  # abandon rate
    for name in ("ringwatch_calls_waiting", "ringwatch_longest_wait_seconds", "ringwatch_ring_to_answer_seconds_bucket",
                 "ringwatch_violations_total", "ringwatch_agents", "ringwatch_ami_connected",
                 "ringwatch_ami_events_total", "ringwatch_ami_reconnects_total",
                 "ringwatch_transfer_wait_seconds_bucket", "ringwatch_commitments_open",
                 "ringwatch_commitments_overdue", "ringwatch_outbound_violations_total"):
        assert uses(name), name
    sl = next(e for e in exprs if "ringwatch_queue_wait_seconds_bucket" in e and "offered" in e)
    assert 'outcome="answered"' in sl
    assert 'le="15.0"' in sl  # the bucket of rules.IN-WAIT.service_level_s, as the Python client writes it
    assert any("histogram_quantile" in e and "ring_to_answer" in e for e in exprs)
    assert any("sum by (rule)" in e and "ringwatch_violations_total" in e for e in exprs)
    assert any("sum by (state)" in e and "ringwatch_agents" in e for e in exprs)


def test_a_panel_for_a_metric_ringwatch_lacks_would_fail() -> None:
    with pytest.raises(AssertionError, match="does not export ringwatch_commitments_lost"):
        check_expr("sum(ringwatch_commitments_lost)")  # no such metric
    with pytest.raises(AssertionError, match="has no label 'team'"):
        check_expr('sum(ringwatch_calls_waiting{team="a"})')
    with pytest.raises(AssertionError, match="never seen"):
        check_expr('ringwatch_queue_wait_seconds_bucket{le="15"}')  # the client writes 15.0
    with pytest.raises(AssertionError, match="grouping by labels"):
        check_expr("sum by (agent) (ringwatch_violations_total)")
