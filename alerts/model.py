"""The alert: what a supervisor sees, acknowledges and resolves."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Severity = Literal["info", "warning", "critical"]
AlertState = Literal["open", "acked", "resolved"]
AlertKind = Literal["violation", "notice"]


@dataclass(slots=True)
class Alert:
    """One alert per rule per call leg (``key`` is the dedup key).

    ``at`` is clock time (seconds since the clock's origin; in replay, since the
    trace's start); ``opened_wall`` the Unix time of the same instant.
    """

    id: str
    rule: str
    key: str
    severity: Severity
    kind: AlertKind
    at: float
    opened_wall: float
    call: str | None
    agent: str | None
    queue: str | None
    caller: str | None  # masked per config
    text_zh: str
    text_en: str
    state: AlertState = "open"
    acked_by: str | None = None
    acked_at: float | None = None
    resolved_by: str | None = None
    resolved_at: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "alert",
            "id": self.id,
            "rule": self.rule,
            "kind": self.kind,
            "severity": self.severity,
            "at": round(self.at, 3),
            "opened_wall": round(self.opened_wall, 3),
            "call": self.call,
            "agent": self.agent,
            "queue": self.queue,
            "caller": self.caller,
            "text": {"zh": self.text_zh, "en": self.text_en},
            "state": self.state,
            "acked_by": self.acked_by,
            "acked_at": None if self.acked_at is None else round(self.acked_at, 3),
            "resolved_by": self.resolved_by,
            "resolved_at": None if self.resolved_at is None else round(self.resolved_at, 3),
            **({"details": self.details} if self.details else {}),
        }
