"""The alert hub: dedup, state (open / acked / resolved) and fan-out to sinks.

Sinks implement :class:`Sink`: ``offer`` must never block or raise; a sink owns
its own bounded queue and sender task (see ``alerts.webhook`` and the websocket
fan-out in ``alerts.ws``), so a slow consumer never stalls the rule engine.
"""

from __future__ import annotations

import itertools
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from alerts.model import Alert

log = logging.getLogger(__name__)

ChangeKind = Literal["opened", "acked", "resolved"]


@dataclass(frozen=True, slots=True)
class AlertChange:
    kind: ChangeKind
    alert: Alert
    by: str | None = None


class Sink(Protocol):
    name: str

    def offer(self, change: AlertChange) -> None:
        """Accept a change without blocking (queue it, or drop and count)."""


class AlertError(Exception):
    """A supervisor's request about an alert cannot be carried out."""


class AlertNotFound(AlertError):
    """No alert with that id (or it has aged out of the history)."""


class AlertStateError(AlertError):
    """The alert is not in a state that allows the request (e.g. ack of a resolved alert)."""


class AlertHub:
    def __init__(self, now: Callable[[], float], history_limit: int = 10_000, id_prefix: str = "A") -> None:
        self._now = now
        self._limit = history_limit
        self._alerts: OrderedDict[str, Alert] = OrderedDict()
        self._by_key: dict[str, str] = {}
        self._sinks: list[Sink] = []
        self._ids = itertools.count(1)
        self._prefix = id_prefix
        self.deduplicated = 0

    def next_id(self) -> str:
        return f"{self._prefix}{next(self._ids)}"

    def add_sink(self, sink: Sink) -> None:
        self._sinks.append(sink)

    def remove_sink(self, sink: Sink) -> None:
        if sink in self._sinks:
            self._sinks.remove(sink)

    def raise_alert(self, alert: Alert) -> Alert | None:
        """Open ``alert`` unless one with the same key exists; returns it, or None if a duplicate."""
        if alert.key in self._by_key:
            self.deduplicated += 1
            return None
        self._alerts[alert.id] = alert
        self._by_key[alert.key] = alert.id
        while len(self._alerts) > self._limit:
            _, old = self._alerts.popitem(last=False)
            self._by_key.pop(old.key, None)
        self._publish(AlertChange("opened", alert))
        return alert

    def get(self, alert_id: str) -> Alert | None:
        return self._alerts.get(alert_id)

    def has_key(self, key: str) -> bool:
        return key in self._by_key

    def alerts(self, state: str | None = None) -> list[Alert]:
        return [a for a in self._alerts.values() if state is None or a.state == state]

    def ack(self, alert_id: str, by: str) -> Alert:
        alert = self._require(alert_id)
        if alert.state != "open":
            raise AlertStateError(f"alert {alert_id} is {alert.state}, not open")
        alert.state, alert.acked_by, alert.acked_at = "acked", by, self._now()
        self._publish(AlertChange("acked", alert, by))
        return alert

    def resolve(self, alert_id: str, by: str) -> Alert:
        alert = self._require(alert_id)
        if alert.state == "resolved":
            raise AlertStateError(f"alert {alert_id} is already resolved")
        alert.state, alert.resolved_by, alert.resolved_at = "resolved", by, self._now()
        self._publish(AlertChange("resolved", alert, by))
        return alert

    def _require(self, alert_id: str) -> Alert:
        alert = self._alerts.get(alert_id)
        if alert is None:
            raise AlertNotFound(f"no alert {alert_id}")
        return alert

    def _publish(self, change: AlertChange) -> None:
        for sink in self._sinks:
            try:
                sink.offer(change)
            except Exception:  # a broken sink must not break the others
                log.exception("alert sink %s failed", getattr(sink, "name", sink))
