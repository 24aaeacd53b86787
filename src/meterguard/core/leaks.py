"""The leak detector: usage history and current facts -> findings. Pure: no I/O.

The daemon calls `find_leaks` for each metered network on every poll, with this hour's figures
so far, and records each finding under its key: a key names the finding's kind, app, network
and period, so a finding that is still true on the next poll (or after a restart) has the same
key and is alerted once. The findings:

- "new-app": an app used this network for the first time (within `new_app_window`);
- "background-above-baseline": an app's background bytes this hour are far above its own
  baseline (see below);
- "background-above-limit": an app's background bytes this hour exceed the configured limit;
- "idle-traffic": an app moved data while the session was idle or locked (keyed per day: a sync
  client that ticks over every hour of the night is one finding, not eight);
- "roaming-traffic": an app that is not allowed while roaming moved data while roaming.

The baseline: the median and the MAD (median absolute deviation) of the app's past hourly
background bytes, over every hour of the history window that had any traffic. Why this choice:

- median and MAD ignore the odd huge hour (an update day) that would drag a mean and standard
  deviation up and hide the next leak;
- every hour rather than the same hour of the day, because background sync follows timers and
  file changes more than the user's day, and same-hour baselines need weeks of history before
  they have enough samples;
- hours with no traffic are left out: most background users are silent most hours, so with the
  zeros the median would be 0 and every ordinary refresh would look like a leak.

An hour fires when bytes > median + k * max(MAD, relative_mad_floor * median, mad_floor_bytes)
and bytes >= min_bytes. The relative floor keeps a perfectly steady app (MAD near 0) from firing
on a small rise; with k = 5 and 10% the hour must be at least 1.5 times the median. The absolute
floors keep tiny noise quiet. Without the absolute floors the test is scale invariant: the same
history in kB or in GB gives the same answer. All of it is exact (Fraction), so that holds to
the byte. This hour is compared while it is still running: its bytes only grow, so a finding
never fires early on a partial hour.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from statistics import median
from typing import Literal, get_args

from meterguard.core.cycles import Bounds
from meterguard.core.guard import Level
from meterguard.core.policy import SessionState
from meterguard.core.units import format_bytes

FindingKind = Literal[
    "new-app",
    "background-above-baseline",
    "background-above-limit",
    "idle-traffic",
    "roaming-traffic",
]
FINDING_KINDS: tuple[FindingKind, ...] = get_args(FindingKind)
EvidenceValue = int | float | str | bool | None


@dataclass(frozen=True, kw_only=True)
class LeakThresholds:
    """The detector's knobs; the defaults are what `[leaks]` in the config means unset."""

    k: Fraction | int | float = 5
    relative_mad_floor: Fraction | int | float = Fraction(1, 10)
    mad_floor_bytes: int = 100_000
    # Bytes in an hour below which no baseline, new-app or idle finding fires.
    min_bytes: int = 1_000_000
    # Active hours (any traffic) the history needs before a baseline means anything.
    min_samples: int = 24
    new_app_window: timedelta = timedelta(hours=24)
    new_app_min_bytes: int = 100_000
    # After a block, up to 256 KiB already in flight may still arrive (DESIGN.md): stay above it.
    roaming_min_bytes: int = 500_000

    def __post_init__(self) -> None:
        if self.k <= 0 or self.relative_mad_floor < 0 or self.min_samples < 1:
            raise ValueError("k must be positive, floors non-negative, min_samples at least 1")


@dataclass(frozen=True)
class Baseline:
    """The robust statistics of an app's active background hours."""

    median: Fraction
    mad: Fraction
    samples: int

    def threshold(self, thresholds: LeakThresholds) -> Fraction:
        spread = max(
            self.mad,
            Fraction(thresholds.relative_mad_floor) * self.median,
            Fraction(thresholds.mad_floor_bytes),
        )
        return self.median + Fraction(thresholds.k) * spread


@dataclass(frozen=True, kw_only=True)
class LeakInput:
    """What the detector sees for one metered network, this hour so far.

    Byte maps are keyed by app name; apps missing from a map moved nothing.
    """

    now: datetime
    hour: Bounds
    network: str
    background_bytes: Mapping[str, int] = field(default_factory=dict)
    # Only for the new-app rule and the evidence: foreground use never makes a leak.
    foreground_bytes: Mapping[str, int] = field(default_factory=dict)
    # Past hourly background bytes per app (not this hour), e.g. the last 7 days.
    history: Mapping[str, Sequence[int]] = field(default_factory=dict)
    # When each app first used this network; the daemon may pass only recent ones.
    first_seen: Mapping[str, datetime] = field(default_factory=dict)
    hourly_limit: int | None = None
    session: SessionState | None = None
    # Bytes moved this hour while the session was idle or locked.
    idle_bytes: Mapping[str, int] = field(default_factory=dict)
    # The day idle findings are keyed by (the plan's local day); the UTC day if None.
    day: Bounds | None = None
    roaming: bool = False
    roaming_bytes: Mapping[str, int] = field(default_factory=dict)
    roaming_allowed: frozenset[str] = frozenset()
    thresholds: LeakThresholds = field(default_factory=LeakThresholds)

    def __post_init__(self) -> None:
        start, end = self.hour
        if start.tzinfo is None or end.tzinfo is None or self.now.tzinfo is None:
            raise ValueError("times must be timezone-aware")
        if not start < end:
            raise ValueError(f"the hour ends ({end}) before it starts ({start})")


@dataclass(frozen=True)
class Finding:
    kind: FindingKind
    app: str
    network: str
    # Same finding, same period -> same key, across polls and restarts.
    key: str
    title: str
    # The figures that justify the finding (bytes, baseline, limit, period), JSON-ready.
    evidence: dict[str, EvidenceValue] = field(hash=False)
    # One command that stops it.
    fix: str
    level: Level
    period_start: datetime


def baseline(history: Sequence[int]) -> Baseline | None:
    """Median and MAD of the active (non-zero) hours, or None for an empty history."""
    active = [Fraction(b) for b in history if b > 0]
    if not active:
        return None
    middle = median(active)
    mad = median([abs(b - middle) for b in active])
    return Baseline(median=middle, mad=mad, samples=len(active))


def above_baseline(used: int, base: Baseline, thresholds: LeakThresholds) -> bool:
    """Whether `used` bytes in an hour fire the baseline rule (see the module docstring)."""
    if base.samples < thresholds.min_samples or used < thresholds.min_bytes:
        return False
    return used > base.threshold(thresholds)


def fix_for(app: str) -> str:
    """The one-line fix every finding suggests: keep the app off metered links."""
    return f"meterguard block {shlex.quote(app)} --on metered"


def find_leaks(inp: LeakInput) -> list[Finding]:
    """Every finding true now for `inp.network`, ordered by kind, then app."""
    findings = [
        *_new_apps(inp),
        *_background(inp),
        *_idle(inp),
        *_roaming(inp),
    ]
    order = {kind: index for index, kind in enumerate(FINDING_KINDS)}
    return sorted(findings, key=lambda f: (order[f.kind], f.app))


def _new_apps(inp: LeakInput) -> list[Finding]:
    t = inp.thresholds
    out: list[Finding] = []
    for app, first in inp.first_seen.items():
        if not timedelta(0) <= inp.now - first <= t.new_app_window:
            continue
        foreground = inp.foreground_bytes.get(app, 0)
        background = inp.background_bytes.get(app, 0)
        used = foreground + background
        if used < t.new_app_min_bytes:
            continue
        # A new app is new once: key it by the hour it first appeared, not the current hour.
        start = _floor_hour(first)
        out.append(
            _finding(
                inp,
                "new-app",
                app,
                start,
                f"{app} started using metered data on {inp.network}",
                "info",
                {
                    "bytes": used,
                    "foreground_bytes": foreground,
                    "background_bytes": background,
                    "first_seen": _iso(first),
                    "min_bytes": t.new_app_min_bytes,
                },
            )
        )
    return out


def _background(inp: LeakInput) -> list[Finding]:
    t = inp.thresholds
    start, end = inp.hour
    out: list[Finding] = []
    for app, used in inp.background_bytes.items():
        period: dict[str, EvidenceValue] = {
            "bytes": used,
            "period_start": _iso(start),
            "period_end": _iso(end),
        }
        limit = inp.hourly_limit
        if limit is not None and used > limit:
            # The user's own limit is the stronger statement; a baseline finding for the same
            # hour would only repeat it.
            title = (
                f"{app} used {format_bytes(used)} in the background on {inp.network} this hour,"
                f" over the {format_bytes(limit)} hourly limit"
            )
            evidence = {**period, "limit": limit}
            out.append(
                _finding(inp, "background-above-limit", app, start, title, "warning", evidence)
            )
            continue
        base = baseline(inp.history.get(app, ()))
        if base is None or not above_baseline(used, base, t):
            continue
        threshold = base.threshold(t)
        title = (
            f"{app} used {format_bytes(used)} in the background on {inp.network} this hour,"
            f" {_ratio(used, base.median)} its usual {format_bytes(round(base.median))}"
        )
        evidence = {
            **period,
            "baseline_median": _number(base.median),
            "baseline_mad": _number(base.mad),
            "baseline_samples": base.samples,
            "threshold": _number(threshold),
            "k": _number(Fraction(t.k)),
        }
        out.append(
            _finding(inp, "background-above-baseline", app, start, title, "warning", evidence)
        )
    return out


def _idle(inp: LeakInput) -> list[Finding]:
    t = inp.thresholds
    day_start, day_end = inp.day if inp.day is not None else _utc_day(inp.hour[0])
    session = inp.session
    out: list[Finding] = []
    for app, used in inp.idle_bytes.items():
        if used < t.min_bytes:
            continue
        title = (
            f"{app} moved {format_bytes(used)} on {inp.network}"
            " while the session was idle or locked"
        )
        evidence: dict[str, EvidenceValue] = {
            "bytes": used,
            "min_bytes": t.min_bytes,
            "period_start": _iso(inp.hour[0]),
            "period_end": _iso(inp.hour[1]),
            "day_start": _iso(day_start),
            "day_end": _iso(day_end),
            "idle_now": None if session is None or not session.known else session.idle,
            "locked_now": None if session is None or not session.known else session.locked,
        }
        out.append(_finding(inp, "idle-traffic", app, day_start, title, "info", evidence))
    return out


def _roaming(inp: LeakInput) -> list[Finding]:
    t = inp.thresholds
    start, end = inp.hour
    out: list[Finding] = []
    for app, used in inp.roaming_bytes.items():
        if app in inp.roaming_allowed or used < t.roaming_min_bytes:
            continue
        title = (
            f"{app} used {format_bytes(used)} while roaming on {inp.network}"
            " and is not on the roaming allow-list"
        )
        evidence: dict[str, EvidenceValue] = {
            "bytes": used,
            "min_bytes": t.roaming_min_bytes,
            "roaming_now": inp.roaming,
            "period_start": _iso(start),
            "period_end": _iso(end),
        }
        out.append(_finding(inp, "roaming-traffic", app, start, title, "critical", evidence))
    return out


def _finding(
    inp: LeakInput,
    kind: FindingKind,
    app: str,
    period_start: datetime,
    title: str,
    level: Level,
    evidence: dict[str, EvidenceValue],
) -> Finding:
    key = f"{kind}:{app}:{inp.network}:{_iso(period_start)}"
    return Finding(kind, app, inp.network, key, title, evidence, fix_for(app), level, period_start)


def _iso(moment: datetime) -> str:
    # UTC in keys: the same instant always spells the same key, whatever zone it came in.
    return moment.astimezone(UTC).isoformat(timespec="minutes")


def _floor_hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _utc_day(moment: datetime) -> Bounds:
    start = moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return start, start + timedelta(days=1)


def _number(value: Fraction) -> int | float:
    return int(value) if value.denominator == 1 else float(value)


def _ratio(used: int, usual: Fraction) -> str:
    return f"{float(used / usual):.0f}×" if usual > 0 else "far above"
