"""A data plan: quota, billing cycle, thresholds and what to do at the cap. Pure: no I/O.

The config layer builds a `Plan` from its TOML table with `parse_cycle`, `parse_threshold`,
`parse_free_window` and `parse_size`; the daemon asks this module for the cycle, the allowance
and the free-window intervals the ledger must leave out, and hands the sums to the guard.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from fractions import Fraction
from typing import Literal
from zoneinfo import ZoneInfo

from meterguard.core.cycles import (
    Bounds,
    CycleSpec,
    Daily,
    Every,
    cycle_bounds,
    local_to_utc,
)
from meterguard.core.units import format_bytes, parse_size

CapAction = Literal["pause", "alert", "block-others", "disconnect"]
CAP_ACTIONS: tuple[CapAction, ...] = ("pause", "alert", "block-others", "disconnect")


@dataclass(frozen=True)
class Percent:
    """Fires when `p` percent of the allowance is used (0 < p <= 100)."""

    p: float

    def __post_init__(self) -> None:
        if not 0 < self.p <= 100:
            raise ValueError(f"a percentage threshold is above 0 and at most 100, got {self.p}")

    @property
    def label(self) -> str:
        return f"{self.p:g}%"

    def trigger_bytes(self, allowance: int) -> int:
        # Fraction keeps 80% of an odd byte count exact: the threshold is the first whole byte
        # at or past the percentage, never one byte early through float rounding.
        exact = Fraction(self.p) * allowance / 100
        return -(-exact.numerator // exact.denominator)


@dataclass(frozen=True)
class BytesLeft:
    """Fires when no more than `n` bytes of the allowance are left."""

    n: int

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError(f"a bytes-left threshold cannot be negative, got {self.n}")

    @property
    def label(self) -> str:
        # Exact bytes in the key, so two thresholds that print alike never share a key.
        return f"{self.n}B-left"

    def trigger_bytes(self, allowance: int) -> int:
        return max(allowance - self.n, 0)


Threshold = Percent | BytesLeft
DEFAULT_THRESHOLDS: tuple[Threshold, ...] = (Percent(50), Percent(80), Percent(90), Percent(100))
CAP_THRESHOLD = Percent(100)


@dataclass(frozen=True)
class Rollover:
    """Unused data of the previous cycle carries over, up to `max_bytes`."""

    max_bytes: int

    def __post_init__(self) -> None:
        if self.max_bytes < 0:
            raise ValueError(f"a rollover cap cannot be negative, got {self.max_bytes}")


@dataclass(frozen=True)
class FreeWindow:
    """Local wall times [start, end) whose traffic does not count; wraps midnight if end < start."""

    start: time
    end: time

    def __post_init__(self) -> None:
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise ValueError("a free window is in local wall time and carries no time zone")
        if self.start == self.end:
            raise ValueError(f"a free window needs two different times, got {self.start} twice")


@dataclass(frozen=True)
class Plan:
    name: str
    quota_bytes: int
    cycle: CycleSpec
    tz: ZoneInfo
    rollover: Rollover | None = None
    free_window: FreeWindow | None = None
    # Fair use inside a longer plan: at most this much per local day (midnight to midnight).
    daily_limit_bytes: int | None = None
    thresholds: tuple[Threshold, ...] = DEFAULT_THRESHOLDS
    cap_action: CapAction = "pause"
    # App names exempt from the block under cap_action "block-others".
    allow_list: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a plan needs a name")
        if self.quota_bytes < 0:
            raise ValueError(f"a quota cannot be negative, got {self.quota_bytes}")
        if self.daily_limit_bytes is not None and self.daily_limit_bytes < 0:
            raise ValueError(f"a daily limit cannot be negative, got {self.daily_limit_bytes}")
        if self.cap_action not in CAP_ACTIONS:
            raise ValueError(
                f"unknown cap action {self.cap_action!r} (known: {', '.join(CAP_ACTIONS)})"
            )


# --- parsing for the config layer ------------------------------------------------------------

_PERCENT_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")
_LEFT_RE = re.compile(r"^\s*(.+?)\s+left\s*$", re.IGNORECASE)
_WINDOW_RE = re.compile(r"^\s*(\d{1,2}:\d{2})\s*[-–]\s*(\d{1,2}:\d{2})\s*$")


def parse_threshold(value: str | int | float) -> Threshold:
    """`80`, `"80%"` -> Percent(80); `"500 MB left"` -> BytesLeft(500_000_000)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return Percent(value)
    if isinstance(value, str):
        if m := _PERCENT_RE.match(value):
            return Percent(float(m.group(1)))
        if m := _LEFT_RE.match(value):
            return BytesLeft(parse_size(m.group(1)))
    raise ValueError(
        f"not a threshold: {value!r} (expected a percentage such as '80%' or "
        "a size left such as '500 MB left')"
    )


def parse_free_window(text: str) -> FreeWindow:
    """`"01:00-07:00"` (local wall times; `"23:00-06:00"` wraps midnight)."""
    m = _WINDOW_RE.match(text)
    if m is None:
        raise ValueError(
            f"not a free window: {text!r} (expected 'HH:MM-HH:MM', e.g. '01:00-07:00')"
        )
    start, end = (time.fromisoformat(t.zfill(5)) for t in m.groups())
    return FreeWindow(start, end)


# --- cycles, allowance and free windows -------------------------------------------------------


def plan_cycle(plan: Plan, now: datetime, *, offset: int = 0) -> Bounds | None:
    """The plan's billing cycle containing `now` (None outside a pass's validity)."""
    return cycle_bounds(plan.cycle, now, plan.tz, offset=offset)


def day_bounds(plan: Plan, now: datetime) -> Bounds:
    """The local day containing `now`: the period of a daily fair-use limit."""
    bounds = cycle_bounds(Daily(), now, plan.tz)
    assert bounds is not None  # a daily cycle always exists
    return bounds


def period_key(plan: Plan, period_start: datetime) -> str:
    """e.g. "hk-monthly@2026-11-15T00:00+08:00": the plan and a period, by its local start.

    Alert keys start with it, so a fired threshold is never confused with the same threshold
    in another cycle (or day), and the daemon can persist keys as plain strings.
    """
    local = period_start.astimezone(plan.tz).isoformat(timespec="minutes")
    return f"{plan.name}@{local}"


def threshold_key(plan: Plan, cycle_start: datetime, threshold: Threshold) -> str:
    """e.g. "hk-monthly@2026-11-15T00:00+08:00:80%": one key per threshold per cycle."""
    return f"{period_key(plan, cycle_start)}:{threshold.label}"


def allowance(plan: Plan, cycle_start: datetime, previous_cycle_used: int | None) -> int:
    """The bytes the cycle starting at `cycle_start` may use: quota plus capped rollover.

    Only the base quota left unused rolls over (what rolled in does not roll again), and nothing
    rolls into a pass or into the first period after activation: there was no previous cycle.
    `previous_cycle_used` None means the previous cycle's usage is unknown: nothing rolls over.
    """
    if plan.rollover is None or previous_cycle_used is None:
        return plan.quota_bytes
    spec = plan.cycle
    if isinstance(spec, Every) and (spec.ends_plan or cycle_start <= spec.anchor):
        return plan.quota_bytes
    unused = max(plan.quota_bytes - previous_cycle_used, 0)
    return plan.quota_bytes + min(unused, plan.rollover.max_bytes)


def free_window_intervals(plan: Plan, start: datetime, end: datetime) -> list[Bounds]:
    """The free-window intervals inside [start, end), in UTC, sorted and disjoint.

    Window edges are local wall times and follow the cycle rules: a start or end inside a
    spring-forward gap moves to the jump, one inside a fall-back fold means its first
    occurrence. So the window that ends at 01:30 on a night when 01:00-02:00 happens twice ends
    at the first 01:30, and the repeated half hour counts.
    """
    window = plan.free_window
    if window is None or end <= start:
        return []
    first = start.astimezone(plan.tz).date() - timedelta(days=1)
    last = end.astimezone(plan.tz).date()
    wraps = window.end < window.start
    out: list[Bounds] = []
    day = first
    while day <= last:
        lo = local_to_utc(datetime.combine(day, window.start), plan.tz)
        end_day = day + timedelta(days=1) if wraps else day
        hi = local_to_utc(datetime.combine(end_day, window.end), plan.tz)
        lo, hi = max(lo, start.astimezone(UTC)), min(hi, end.astimezone(UTC))
        if lo < hi:
            if out and out[-1][1] >= lo:
                out[-1] = (out[-1][0], max(out[-1][1], hi))
            else:
                out.append((lo, hi))
        day += timedelta(days=1)
    return out


def counts_at(plan: Plan, t: datetime) -> bool:
    """Whether traffic at instant `t` counts against the plan (False inside the free window).

    Defined through `free_window_intervals`, so the two can never disagree.
    """
    if plan.free_window is None:
        return True
    return not free_window_intervals(plan, t, t + timedelta(microseconds=1))


def used_in_cycle(
    samples: Iterable[tuple[int, int]], plan: Plan, start: datetime, end: datetime
) -> int:
    """Sum of per-minute samples (unix seconds UTC, bytes) in [start, end) outside free windows.

    A sample stands for the minute that starts at its timestamp and is judged by that instant.
    """
    lo, hi = start.timestamp(), end.timestamp()
    free = free_window_intervals(plan, start, end)
    free_starts = [a.timestamp() for a, _ in free]
    free_ends = [b.timestamp() for _, b in free]
    total = 0
    for ts, nbytes in samples:
        if not lo <= ts < hi:
            continue
        i = bisect.bisect_right(free_starts, ts) - 1
        if i >= 0 and ts < free_ends[i]:
            continue
        total += nbytes
    return total


def describe_threshold(threshold: Threshold) -> str:
    """For people: "80%" or "500 MB left"."""
    if isinstance(threshold, Percent):
        return threshold.label
    return f"{format_bytes(threshold.n)} left"
