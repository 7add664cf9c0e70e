"""Prometheus metrics: event-driven histograms/counters plus a collector over live state.

Everything registers in an injected :class:`CollectorRegistry` (a fresh one
per test; no global registry).  Counters and histograms are fed by the
monitor's domain events (:meth:`Metrics.attach`); gauges are computed at scrape
time by :class:`_LiveCollector`, whose ``collect()`` only reads in-memory
state (no I/O, no await).

Labels are bounded: ``queue`` (the PBX's queue names), ``rule`` (rule ids),
``outcome`` and ``state`` (fixed sets).  Never a call id, a leg id, an agent's
extension or a phone number.

Definitions (they follow ``tests/fixtures/ami/README.md``, "expected"):

* ``ringwatch_ring_to_answer_seconds{queue}``: for every agent ring that ended
  *answered*, ring start -> answer (one observation per answered leg).
* ``ringwatch_queue_wait_seconds{queue,outcome}``: the caller's wait in a queue,
  queue join -> answer (``outcome="answered"``) or -> abandon
  (``outcome="abandoned"``).  A call transferred into a second queue is
  measured again there, from that join.
* ``ringwatch_calls_offered_total{queue}``: calls that joined the queue (a join
  reported again while the call still waits there, e.g. by a resync, is not
  counted twice);
  ``..._answered_total`` / ``..._abandoned_total``: answers / abandons there.
* ``ringwatch_violations_total{rule,queue}``: violation alerts opened in the
  alert hub (notices are not violations).
"""

from __future__ import annotations

import logging
import typing
from collections.abc import Iterable
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from alerts.hub import AlertChange
from config.schema import Config
from monitor.engine import Monitor
from telephony.events import (
    AgentRingEnded,
    AgentState,
    AgentStateChanged,
    CallAbandoned,
    CallAnswered,
    CallEnded,
    DispositionReceived,
    DomainEvent,
    QueueJoined,
    TransferAnswered,
    TransferEnded,
)

log = logging.getLogger(__name__)

#: Label value for "no queue" (e.g. a direct Dial leg to an agent).
NO_QUEUE = "none"

AGENT_STATES: tuple[str, ...] = typing.get_args(AgentState)


class LinkStats(Protocol):
    """What the AMI client tells about its link (read at scrape time)."""

    @property
    def connected(self) -> bool: ...

    @property
    def events_received(self) -> int: ...

    @property
    def reconnects(self) -> int: ...


class _MonitorLinkStats:
    """Fallback when there is no AMI client object: the monitor's view of the link.

    ``events_received`` then counts the domain events the monitor handled (not raw
    AMI messages) and ``reconnects`` the link-ups after the first.
    """

    def __init__(self, monitor: Monitor) -> None:
        self._monitor = monitor
        self.events = 0

    @property
    def connected(self) -> bool:
        return self._monitor.link.connected

    @property
    def events_received(self) -> int:
        return self.events

    @property
    def reconnects(self) -> int:
        return max(self._monitor.link.connects - 1, 0)


class _ViolationSink:
    """Alert-hub sink counting opened violations (never blocks: a counter increment)."""

    name = "metrics"

    def __init__(self, counter: Counter) -> None:
        self._counter = counter

    def offer(self, change: AlertChange) -> None:
        a = change.alert
        if change.kind == "opened" and a.kind == "violation":
            self._counter.labels(rule=a.rule, queue=a.queue or NO_QUEUE).inc()


class _LiveCollector(Collector):
    """Gauges over the monitor's in-memory state, computed at scrape time."""

    def __init__(self, monitor: Monitor, link: LinkStats, queues: set[str]) -> None:
        self._monitor = monitor
        self.link = link
        self._queues = queues  # every queue seen so far: they report 0 rather than vanish

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        m = self._monitor
        waiting_fam, longest_fam, agents_fam, connected, events, reconnects, live = self._families()
        waiting = m.waiting_by_queue()
        for q in sorted(self._queues | waiting.keys()):
            n, longest = waiting.get(q, (0, 0.0))
            waiting_fam.add_metric([q], n)
            longest_fam.add_metric([q], longest)
        by_state = dict.fromkeys(AGENT_STATES, 0)
        for info in m.agents.values():
            by_state[info.state] = by_state.get(info.state, 0) + 1
        for state, n in by_state.items():
            agents_fam.add_metric([state], n)
        connected.add_metric([], 1 if self.link.connected else 0)
        events.add_metric([], self.link.events_received)
        reconnects.add_metric([], self.link.reconnects)
        live.add_metric([], len(m.calls))
        return [waiting_fam, longest_fam, agents_fam, connected, events, reconnects, live]

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily,
                             CounterMetricFamily, CounterMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily("ringwatch_calls_waiting", "Callers waiting in the queue now", labels=["queue"]),
            GaugeMetricFamily("ringwatch_longest_wait_seconds", "Longest current wait in the queue",
                              labels=["queue"]),
            GaugeMetricFamily("ringwatch_agents", "Agents by state", labels=["state"]),
            GaugeMetricFamily("ringwatch_ami_connected", "1 while the AMI link is up"),
            CounterMetricFamily("ringwatch_ami_events", "Events received from the PBX"),
            CounterMetricFamily("ringwatch_ami_reconnects", "AMI reconnections after the first connect"),
            GaugeMetricFamily("ringwatch_live_calls", "Calls in progress"),
        )


class Metrics:
    """ringwatch's metrics in ``registry``; :meth:`attach` feeds them from a monitor."""

    def __init__(self, registry: CollectorRegistry, cfg: Config) -> None:
        self.registry = registry
        self.ring_to_answer = Histogram(
            "ringwatch_ring_to_answer_seconds", "Agent ring start to answer, per answered ring",
            ["queue"], buckets=cfg.metrics.ring_buckets, registry=registry,
        )
        self.queue_wait = Histogram(
            "ringwatch_queue_wait_seconds", "Queue join to answer or abandon",
            ["queue", "outcome"], buckets=cfg.metrics.wait_buckets, registry=registry,
        )
        self.offered = Counter("ringwatch_calls_offered", "Calls that joined the queue", ["queue"],
                               registry=registry)
        self.answered = Counter("ringwatch_calls_answered", "Calls answered from the queue", ["queue"],
                                registry=registry)
        self.abandoned = Counter("ringwatch_calls_abandoned", "Callers who hung up waiting in the queue",
                                 ["queue"], registry=registry)
        self.transfer_wait = Histogram(
            "ringwatch_transfer_wait_seconds", "Transfer hand-off (or consult hold) to the next answer, "
            "or to the end of a transfer never answered", ["kind", "outcome"],
            buckets=cfg.metrics.transfer_buckets, registry=registry,
        )
        self.dispositions = Counter("ringwatch_dispositions", "Call dispositions logged (OUT-WRAPUP), on time or late",
                                    ["result"], registry=registry)
        self.violations = Counter("ringwatch_violations", "Rule violations (alerts opened)", ["rule", "queue"],
                                  registry=registry)
        self.queues: set[str] = set()
        # calls waiting now (entries go at answer/abandon/end): call id -> {queue: join time}
        self._joined: dict[str, dict[str, float]] = {}
        self._monitor: Monitor | None = None
        self._collector: _LiveCollector | None = None
        self._sink: _ViolationSink | None = None
        self._fallback: _MonitorLinkStats | None = None

    @property
    def link(self) -> LinkStats:
        """The link stats the gauges read (after :meth:`attach`)."""
        if self._collector is None:
            raise RuntimeError("Metrics are not attached to a monitor")
        return self._collector.link

    def attach(self, monitor: Monitor, link_stats: LinkStats | None = None) -> None:
        """Feed the metrics from ``monitor``'s events and alerts; gauges read ``link_stats``
        (the AMI client; None: the monitor's own view of the link)."""
        if self._monitor is not None:
            raise RuntimeError("Metrics are already attached to a monitor")
        self._monitor = monitor
        link: LinkStats
        if link_stats is None:
            link = self._fallback = _MonitorLinkStats(monitor)
        else:
            link = link_stats
        self._collector = _LiveCollector(monitor, link, self.queues)
        self.registry.register(self._collector)
        self._sink = _ViolationSink(self.violations)
        monitor.hub.add_sink(self._sink)
        monitor.on_event(self._on_event)

    def detach(self) -> None:
        """Stop reading the monitor's state at scrape time (events already counted stay)."""
        if self._monitor is None:
            return
        if self._sink is not None:
            self._monitor.hub.remove_sink(self._sink)
        if self._collector is not None:
            self.registry.unregister(self._collector)
        self._collector = self._sink = None

    # -- events ------------------------------------------------------------------

    def _on_event(self, ev: DomainEvent) -> None:
        if self._fallback is not None:
            self._fallback.events += 1
        try:
            self._count(ev)
        except Exception:  # metrics must never break event handling
            log.exception("metrics: failed on %s", type(ev).__name__)

    def _count(self, ev: DomainEvent) -> None:
        if isinstance(ev, QueueJoined):
            self.queues.add(ev.queue)
            joins = self._joined.setdefault(ev.call_id, {})
            if ev.queue not in joins:
                self.offered.labels(queue=ev.queue).inc()
            joins[ev.queue] = ev.since
        elif isinstance(ev, AgentStateChanged):
            if ev.queue:
                self.queues.add(ev.queue)
        elif isinstance(ev, AgentRingEnded):
            if ev.outcome == "answered":
                self._observe_ring(ev)
        elif isinstance(ev, CallAnswered):
            queue = ev.queue or NO_QUEUE
            self.answered.labels(queue=queue).inc()
            since = self._joined.get(ev.call_id, {}).pop(queue, None)
            if since is not None:
                self.queue_wait.labels(queue=queue, outcome="answered").observe(max(ev.at - since, 0.0))
        elif isinstance(ev, CallAbandoned):
            self.abandoned.labels(queue=ev.queue).inc()
            since = self._joined.get(ev.call_id, {}).pop(ev.queue, None)
            if since is not None:
                self.queue_wait.labels(queue=ev.queue, outcome="abandoned").observe(max(ev.at - since, 0.0))
        elif isinstance(ev, CallEnded):
            self._joined.pop(ev.call_id, None)
        elif isinstance(ev, TransferAnswered | TransferEnded):
            self._observe_transfer(ev)
        elif isinstance(ev, DispositionReceived):
            call = self._monitor.call(ev.call_id) if self._monitor is not None else None
            late = bool(call and call.disposition and call.disposition.get("late"))
            self.dispositions.labels(result="late" if late else "on_time").inc()

    def _observe_transfer(self, ev: TransferAnswered | TransferEnded) -> None:
        call = self._monitor.call(ev.call_id) if self._monitor is not None else None
        if call is None or not call.transfers:
            return
        t = call.transfers[-1]
        if t.wait_s is not None:
            outcome = "answered" if isinstance(ev, TransferAnswered) else ev.outcome
            self.transfer_wait.labels(kind=t.kind, outcome=outcome).observe(max(t.wait_s, 0.0))

    def _observe_ring(self, ev: AgentRingEnded) -> None:
        assert self._monitor is not None
        call = self._monitor.call(ev.call_id)
        if call is None:
            return
        ring = next((r for r in reversed(call.rings) if r.leg_id == ev.leg_id), None)
        if ring is None:
            return
        self.ring_to_answer.labels(queue=ev.queue or NO_QUEUE).observe(max(ev.at - ring.start, 0.0))
