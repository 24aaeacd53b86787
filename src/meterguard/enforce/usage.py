"""A plan's usage in its cycle and its day, from the ledger: the figures the guard decides on.

Computed once from the ledger (at start and at each rollover), then kept current by adding
each poll's rows, so the guard costs no query per second. Bytes in the plan's free window
are left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from meterguard.core.cycles import Bounds
from meterguard.core.forecast import forecast
from meterguard.core.plans import Plan, allowance, counts_at, day_bounds, free_window_intervals
from meterguard.core.plans import plan_cycle as cycle_of
from meterguard.enforce.state import PlanState
from meterguard.ledger.model import GroupBy, ReportRow, UsageDelta


class TotalsReader(Protocol):
    def totals(
        self, start: int, end: int, *, by: GroupBy, network: str | None = None
    ) -> list[ReportRow]: ...


def _minute_floor(t: datetime) -> int:
    return int(t.timestamp()) // 60 * 60


def bytes_between(
    ledger: TotalsReader, plan: Plan, networks: Sequence[str], start: datetime, end: datetime
) -> int:
    """Bytes (up + down) of `networks` in [start, end), free-window minutes left out."""
    lo, hi = _minute_floor(start), _minute_floor(end) + 60
    if hi <= lo:
        return 0
    total = 0
    for net in networks:
        total += sum(r.bytes_total for r in ledger.totals(lo, hi, by="network", network=net))
        for w_start, w_end in free_window_intervals(plan, start, end):
            a, b = _minute_floor(w_start), _minute_floor(w_end)
            if b > a:
                total -= sum(
                    r.bytes_total for r in ledger.totals(a, b, by="network", network=net)
                )
    return max(total, 0)


@dataclass
class PlanUsage:
    """Counted bytes of one plan in its current cycle and local day."""

    plan: Plan
    networks: tuple[str, ...]
    cycle: Bounds | None = None
    day: Bounds | None = None
    cycle_bytes: int = 0
    day_bytes: int = 0

    def refresh(self, ledger: TotalsReader, now: datetime) -> None:
        self.cycle = cycle_of(self.plan, now)
        self.day = day_bounds(self.plan, now)
        self.cycle_bytes = (
            bytes_between(ledger, self.plan, self.networks, self.cycle[0], now)
            if self.cycle else 0
        )
        self.day_bytes = bytes_between(ledger, self.plan, self.networks, self.day[0], now)

    def add(self, now: datetime, rows: Sequence[UsageDelta]) -> None:
        if not counts_at(self.plan, now):
            return
        n = sum(r.bytes_up + r.bytes_down for r in rows if r.network in self.networks)
        self.cycle_bytes += n
        self.day_bytes += n

    def previous_cycle_bytes(self, ledger: TotalsReader, now: datetime) -> int | None:
        previous = cycle_of(self.plan, now, offset=-1)
        if previous is None:
            return None
        return bytes_between(ledger, self.plan, self.networks, previous[0], previous[1])


def plan_summary(usage: PlanUsage, state: PlanState, now: datetime) -> dict[str, Any]:
    """Everything `meterguard plan` shows, as plain data."""
    plan = usage.plan
    used = usage.cycle_bytes + state.adjust_bytes
    out: dict[str, Any] = {
        "plan": plan.name, "networks": list(usage.networks), "time_zone": plan.tz.key,
        "quota_bytes": plan.quota_bytes, "cap_action": plan.cap_action,
        "paused": state.paused, "topup_bytes": state.topup_bytes,
        "adjust_bytes": state.adjust_bytes, "used_bytes": used,
        "used_today_bytes": usage.day_bytes,
        "daily_limit_bytes": plan.daily_limit_bytes,
        "resume_until": state.resume_until, "resume_bytes": state.resume_bytes,
    }
    if usage.cycle is None:
        out.update(cycle=None, allowance_bytes=0, remaining_bytes=0, forecast=None)
        return out
    start, end = usage.cycle
    allowed = allowance(plan, start, state.previous_cycle_used) + state.topup_bytes
    fc = forecast(used, allowed, start, end, now)
    out.update(
        cycle={"start": start.astimezone(plan.tz).isoformat(),
               "end": end.astimezone(plan.tz).isoformat()},
        allowance_bytes=allowed,
        remaining_bytes=max(allowed - used, 0),
        percent_used=round(100 * used / allowed, 2) if allowed else 100.0,
        forecast={
            "runs_out_at": fc.runs_out_at.astimezone(plan.tz).isoformat()
            if fc.runs_out_at else None,
            "lasts_cycle": fc.lasts_cycle,
            "daily_budget_bytes": fc.daily_budget_bytes,
            "days_left": round(fc.days_left, 2),
        },
    )
    return out


def utcnow() -> datetime:
    return datetime.now(UTC)
