"""Forecast at the current pace and a daily budget. Pure: no I/O, no clock.

The pace is the cycle's average so far (used / elapsed), not a recent rate: one large download
should not make the forecast swing wildly, and it is the figure a person can check by hand.
All arithmetic is in whole microseconds and bytes, so tests can assert exact results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

_DAY_US = 86_400 * 1_000_000


@dataclass(frozen=True)
class Forecast:
    # When the allowance runs out at the current pace; None when it lasts the cycle. If it has
    # already run out this is `now`.
    runs_out_at: datetime | None
    lasts_cycle: bool
    # What can be used per day from now on and still last: remaining / days left, where days
    # left is rounded up to whole days (at least one) and the result rounded down, so that
    # spending the budget every day never overruns.
    daily_budget_bytes: int
    remaining_bytes: int
    # Real time left in the cycle, in units of 24 h (a DST day is not special here).
    days_left: float


def _us(delta: timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def forecast(
    used: int, allowance: int, cycle_start: datetime, cycle_end: datetime, now: datetime
) -> Forecast:
    """Where the cycle is heading if usage goes on at its average pace so far."""
    for t, what in ((cycle_start, "cycle_start"), (cycle_end, "cycle_end"), (now, "now")):
        if t.tzinfo is None or t.utcoffset() is None:
            raise ValueError(f"{what} must be timezone-aware")
    now = now.astimezone(UTC)
    remaining = max(allowance - used, 0)
    elapsed_us = max(_us(now - cycle_start), 0)
    left_us = max(_us(cycle_end - now), 0)
    whole_days = max(1, math.ceil(left_us / _DAY_US))
    budget = remaining // whole_days
    days_left = left_us / _DAY_US

    if remaining == 0:
        return Forecast(now, False, budget, remaining, days_left)
    if used <= 0 or elapsed_us == 0:
        # No pace yet: nothing suggests it will run out.
        return Forecast(None, True, budget, remaining, days_left)
    # time to run out = remaining / (used / elapsed), rounded down to the microsecond.
    out_us = remaining * elapsed_us // used
    if out_us >= left_us:
        return Forecast(None, True, budget, remaining, days_left)
    return Forecast(now + timedelta(microseconds=out_us), False, budget, remaining, days_left)
