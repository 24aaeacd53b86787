"""Alerts and notes into the event log, alerts on to the notifier.

The event log's unique key is what makes a threshold fire exactly once per cycle, across
restarts: an alert whose key is already recorded is neither recorded nor sent again.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Protocol

from meterguard.core.guard import Alert
from meterguard.core.leaks import Finding
from meterguard.ledger.events import EventLevel
from meterguard.notify.message import AlertMessage, Delivery

log = logging.getLogger(__name__)


class EventStore(Protocol):
    def add_event(
        self, at: int, kind: str, level: EventLevel, title: str, body: str, *,
        key: str | None = None, data: dict[str, object] | None = None,
    ) -> int | None: ...

    def event_keys(self, prefix: str) -> set[str]: ...

    def mark_delivered(
        self, event_id: int, channel: str, ok: bool, detail: str, *, at: int | None = None
    ) -> None: ...


class AlertSender(Protocol):
    def send(self, alert: AlertMessage) -> None: ...

    def poll_results(self) -> list[Delivery]: ...


class LedgerEventSink:
    def __init__(self, store: EventStore, sender: AlertSender | None) -> None:
        self._store = store
        self._sender = sender

    def alert(self, alert: Alert, at: datetime) -> bool:
        event_id = self._store.add_event(
            int(at.timestamp()), "alert", alert.level, alert.title, alert.body, key=alert.key,
            data={"threshold": alert.threshold.label,
                  "cycle_start": alert.cycle_start.isoformat()},
        )
        if event_id is None:
            return False
        log.info("alert: %s: %s", alert.title, alert.body)
        if self._sender is not None:
            self._sender.send(AlertMessage.from_alert(alert, event_id=event_id, at=at))
        return True

    def finding(self, finding: Finding, at: datetime) -> bool:
        """Record a leak finding once (its key) and send it as an alert; False if known."""
        body = f"{finding.title}. Fix: {finding.fix}"
        event_id = self._store.add_event(
            int(at.timestamp()), "leak", finding.level, finding.title, body, key=finding.key,
            data={"kind": finding.kind, "app": finding.app, "network": finding.network,
                  "evidence": finding.evidence, "fix": finding.fix,
                  "period_start": finding.period_start.isoformat()},
        )
        if event_id is None:
            return False
        if self._sender is not None:
            self._sender.send(AlertMessage(finding.title, body, finding.level, finding.key,
                                           event_id, at.timestamp()))
        return True

    def fired(self, prefix: str) -> frozenset[str]:
        return frozenset(self._store.event_keys(prefix))

    def note(
        self, kind: str, level: str, title: str, body: str, at: datetime,
        *, key: str | None = None,
    ) -> None:
        """Record an event; with a `key`, only the first time (a hint, a finding)."""
        lvl: EventLevel = "critical" if level == "critical" else (
            "warning" if level == "warning" else "info")
        if self._store.add_event(int(at.timestamp()), kind, lvl, title, body, key=key):
            log.info("%s: %s", title, body)

    def record_deliveries(self) -> list[Delivery]:
        """Store what the notifier reports back (each channel, ok or why not)."""
        if self._sender is None:
            return []
        done = self._sender.poll_results()
        for d in done:
            if d.event_id is not None:
                self._store.mark_delivered(d.event_id, d.channel, d.ok, d.detail, at=int(d.at))
            if not d.ok:
                log.warning("alert not delivered to %s: %s", d.channel, d.detail)
        return done
