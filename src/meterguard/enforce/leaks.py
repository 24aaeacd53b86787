"""The leak detector at work: gathers each metered network's hour from the ledger and
the daemon's own observations, runs the pure rules (`core.leaks`), and records findings.

A finding is an event with a unique key (one per app, kind and hour or day), so it is
recorded and sent once however often the detector runs; `meterguard leaks` lists them.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from meterguard.core.leaks import Finding, LeakInput, find_leaks
from meterguard.core.policy import SessionState
from meterguard.ledger.model import AppRow, GroupBy, ReportRow, SeriesRow, UsageDelta

log = logging.getLogger(__name__)

HISTORY_DAYS = 7
HOUR = 3600
NOT_APPS = frozenset({"unattributed", "forwarded", "vpn-overhead"})


class LeakLedger(Protocol):
    def totals(
        self, start: int, end: int, *, by: GroupBy, network: str | None = None
    ) -> list[ReportRow]: ...

    def series(
        self, start: int, end: int, *, step_seconds: int, by: GroupBy,
        network: str | None = None,
    ) -> list[SeriesRow]: ...

    def apps(self) -> list[AppRow]: ...


class FindingSink(Protocol):
    def finding(self, finding: Finding, at: datetime) -> bool: ...


@dataclass
class LeakWatcher:
    ledger: LeakLedger
    sink: FindingSink
    hourly_limit: int | None = None
    roaming_allowed: frozenset[str] = frozenset()
    # Bytes per (network, app) moved this hour while the session was away / while roaming.
    _idle: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))
    _roaming: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))
    _hour: int = 0

    def observe(
        self, now: datetime, rows: Sequence[UsageDelta], session: SessionState,
        roaming: frozenset[str],
    ) -> None:
        hour = int(now.timestamp()) // HOUR * HOUR
        if hour != self._hour:
            self._hour = hour
            self._idle.clear()
            self._roaming.clear()
        away = session.known and (session.idle or session.locked)
        for r in rows:
            if r.app in NOT_APPS:
                continue
            n = r.bytes_up + r.bytes_down
            if away:
                self._idle[r.network][r.app] = self._idle[r.network].get(r.app, 0) + n
            if r.network in roaming:
                self._roaming[r.network][r.app] = self._roaming[r.network].get(r.app, 0) + n

    def check(
        self, now: datetime, networks: Sequence[str], session: SessionState,
        roaming: frozenset[str],
    ) -> list[Finding]:
        hour_start = int(now.timestamp()) // HOUR * HOUR
        hour = (datetime.fromtimestamp(hour_start, UTC),
                datetime.fromtimestamp(hour_start + HOUR, UTC))
        first_seen = {a.app: datetime.fromtimestamp(a.first_seen, UTC)
                      for a in self.ledger.apps()}
        end_minute = int(now.timestamp()) // 60 * 60 + 60
        found: list[Finding] = []
        for network in networks:
            rows = self.ledger.totals(hour_start, end_minute, by="app", network=network)
            history: dict[str, list[int]] = defaultdict(list)
            for s in self.ledger.series(hour_start - HISTORY_DAYS * 86400, hour_start,
                                        step_seconds=HOUR, by="app", network=network):
                if s.app is not None:
                    history[s.app].append(s.bytes_background)
            inp = LeakInput(
                now=now, hour=hour, network=network,
                background_bytes={r.app: r.bytes_background for r in rows
                                  if r.app and r.app not in NOT_APPS},
                foreground_bytes={r.app: r.bytes_total - r.bytes_background for r in rows
                                  if r.app and r.app not in NOT_APPS},
                history=history,
                first_seen={a: t for a, t in first_seen.items()
                            if t >= now - timedelta(days=1)},
                hourly_limit=self.hourly_limit, session=session,
                idle_bytes=dict(self._idle.get(network, {})),
                roaming=network in roaming,
                roaming_bytes=dict(self._roaming.get(network, {})),
                roaming_allowed=self.roaming_allowed,
            )
            for finding in find_leaks(inp):
                if self.sink.finding(finding, now):
                    log.warning("leak: %s (%s)", finding.title, finding.fix)
                    found.append(finding)
        return found
