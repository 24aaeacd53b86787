"""Guard decisions: (plan, cycle, usage, state, now) -> what to alert and enforce. Pure.

The daemon calls `decide` on every poll with the sums it read from the ledger and the little
state it persists (fired threshold keys, whether the cap action is in force, the last cycle
start seen, top-ups and resume grants), applies the kernel decisions in one batch and hands
the alerts to notify. Then it adds each alert's key to `fired` once the alert is recorded, so a
restart never fires it again.

What `decide` returns, in this order:

1. at most one enforcement change: `Pause`, `BlockOthers` or `Disconnect` when the cap is
   reached and the action is not in force yet; `Resume` when it is in force and no longer due
   (a new cycle or day, a top-up, a resume grant, an alert-only plan);
2. exactly one kernel quota decision, on every call: `SetCap(remaining)` keeps the kernel
   quota equal to what may still be used (0 at the cap), so the cap holds while the daemon is
   dead; `NoCap` says no quota should drop anything (an alert-only plan, or a timed resume with
   no size);
3. the alerts newly due, ordered by the usage at which they trigger.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from meterguard.core.cycles import Bounds
from meterguard.core.forecast import forecast
from meterguard.core.plans import (
    CAP_THRESHOLD,
    BytesLeft,
    Percent,
    Plan,
    Threshold,
    describe_threshold,
    period_key,
    threshold_key,
)
from meterguard.core.units import format_bytes

Level = Literal["info", "warning", "critical"]


@dataclass(frozen=True)
class DailyLimit:
    """The trigger of the alert at a plan's daily fair-use limit."""

    limit_bytes: int

    @property
    def label(self) -> str:
        return "daily-limit"


@dataclass(frozen=True, kw_only=True)
class GuardInput:
    plan: Plan
    cycle: Bounds
    # Bytes counted in the cycle, free window already left out, as re-anchored by set-used.
    used: int
    # `plans.allowance(...)`: quota plus rollover. Top-ups come separately, below.
    allowance: int
    now: datetime
    # Keys of the alerts already recorded. Keys name their cycle (or day), so keys of earlier
    # cycles simply never match and need not be removed (see `prune_fired`).
    fired: frozenset[str] = frozenset()
    # Bytes counted today (local day) and that day's bounds, for a daily fair-use limit.
    used_today: int | None = None
    day_bounds: Bounds | None = None
    # Sum of the top-ups bought for THIS cycle; the daemon drops them at rollover.
    topup_bytes: int = 0
    # A `plan resume --for` grant (see `resume_grant`): the pause is lifted until this time
    # passes and/or until `used` reaches `resume_bytes`. The daemon drops it at rollover.
    resume_until: datetime | None = None
    resume_bytes: int | None = None
    # Whether the cap action (pause, block-others, disconnect) is in force as last applied.
    paused: bool = False
    # The cycle start of the previous call, as persisted; a different one means a rollover.
    previous_cycle_start: datetime | None = None


@dataclass(frozen=True)
class Alert:
    key: str
    level: Level
    title: str
    body: str
    threshold: Threshold | DailyLimit
    # The start of the period the alert belongs to: the cycle, or the day for a daily limit.
    cycle_start: datetime


@dataclass(frozen=True)
class SetCap:
    """Keep the kernel quota at exactly this many bytes from now on."""

    remaining_bytes: int


@dataclass(frozen=True)
class NoCap:
    """No kernel quota should drop traffic, until `until` if given (then decide again)."""

    reason: str
    until: datetime | None = None


@dataclass(frozen=True)
class Pause:
    reason: str


@dataclass(frozen=True)
class Resume:
    reason: str


@dataclass(frozen=True)
class BlockOthers:
    """Block every app not in `allow`; the kernel quota then applies to those apps only."""

    allow: tuple[str, ...]
    reason: str = ""


@dataclass(frozen=True)
class Disconnect:
    """Take the plan's links down (NetworkManager); the kernel quota stays as a backstop."""

    reason: str = ""


Decision = Alert | SetCap | NoCap | Pause | Resume | BlockOthers | Disconnect


def resume_grant(
    now: datetime, used: int, *, size: int | None = None, duration: timedelta | None = None
) -> tuple[datetime | None, int | None]:
    """`(resume_until, resume_bytes)` for `plan resume --for SIZE|DURATION` given now."""
    if size is None and duration is None:
        raise ValueError("resume needs a size or a duration")
    if (size is not None and size <= 0) or (duration is not None and duration <= timedelta(0)):
        raise ValueError("a resume size or duration must be positive")
    return (None if duration is None else now + duration, None if size is None else used + size)


def prune_fired(plan: Plan, fired: frozenset[str], *periods: datetime) -> frozenset[str]:
    """The keys of `fired` that belong to the periods starting at `periods` (cycle, day)."""
    prefixes = tuple(f"{period_key(plan, start)}:" for start in periods)
    return frozenset(k for k in fired if k.startswith(prefixes))


def _local(plan: Plan, t: datetime, fmt: str = "%Y-%m-%d %H:%M %Z") -> str:
    return t.astimezone(plan.tz).strftime(fmt)


def _level(threshold: Threshold, allowance: int) -> Level:
    if threshold.trigger_bytes(allowance) >= allowance:
        return "critical"
    if isinstance(threshold, BytesLeft) or threshold.p >= 80:
        return "warning"
    return "info"


def _override_active(inp: GuardInput) -> bool:
    if inp.resume_until is None and inp.resume_bytes is None:
        return False
    in_time = inp.resume_until is None or inp.now < inp.resume_until
    in_size = inp.resume_bytes is None or inp.used < inp.resume_bytes
    return in_time and in_size


def _action_phrase(plan: Plan, override: bool, until: str) -> str:
    """What the cap means for the user right now, e.g. "data is paused until ..."."""
    if override:
        return "data stays on: resumed on request"
    if plan.cap_action == "pause":
        return f"data is paused until {until}"
    if plan.cap_action == "block-others":
        allowed = ", ".join(plan.allow_list) or "no app"
        return f"only {allowed} may use data until {until}"
    if plan.cap_action == "disconnect":
        return f"the link is disconnected until {until}"
    return "further use may be billed extra or slowed"


def _at_cap_phrase(inp: GuardInput, override: bool) -> str:
    until = f"the next cycle starts at {_local(inp.plan, inp.cycle[1])}"
    return _action_phrase(inp.plan, override, until)


def _pace_phrase(inp: GuardInput, allowance: int, override: bool) -> str:
    if inp.used >= allowance:
        return _at_cap_phrase(inp, override)
    fc = forecast(inp.used, allowance, inp.cycle[0], inp.cycle[1], inp.now)
    if fc.runs_out_at is not None:
        return f"runs out around {_local(inp.plan, fc.runs_out_at, '%Y-%m-%d')} at this pace"
    return f"lasts the cycle at this pace (next cycle {_local(inp.plan, inp.cycle[1])})"


def _threshold_alert(
    inp: GuardInput, threshold: Threshold, key: str, allowance: int, override: bool
) -> Alert:
    plan = inp.plan
    left = format_bytes(max(allowance - inp.used, 0))
    pace = _pace_phrase(inp, allowance, override)
    level = _level(threshold, allowance)
    if level == "critical":
        title = f"{plan.name}: data cap reached"
    else:
        title = f"{plan.name}: {describe_threshold(threshold)}" + (
            " used" if isinstance(threshold, Percent) else ""
        )
    if isinstance(threshold, Percent):
        body = f"{threshold.label} of {format_bytes(allowance)} used on {plan.name}: {left} left"
    else:
        body = f"{left} of {format_bytes(allowance)} left on {plan.name}"
    return Alert(key, level, title, f"{body}, {pace}", threshold, inp.cycle[0])


def _all_thresholds(plan: Plan) -> list[Threshold]:
    # 100% always fires, whatever the configured list says: a cap is never silent.
    thresholds = list(plan.thresholds)
    if CAP_THRESHOLD not in thresholds:
        thresholds.append(CAP_THRESHOLD)
    return thresholds


def next_trigger(plan: Plan, used: int, allowance: int) -> int | None:
    """The byte count at which the next threshold (or the cap) will be crossed, if any.

    The daemon polls sooner when this is near at the current rate, so an alert follows its
    crossing within a second whatever the poll interval.
    """
    ahead = [t.trigger_bytes(allowance) for t in _all_thresholds(plan)]
    later = [b for b in ahead if b > used]
    return min(later) if later else None


def _threshold_alerts(inp: GuardInput, allowance: int, override: bool) -> list[Alert]:
    plan = inp.plan
    thresholds = _all_thresholds(plan)
    due: list[tuple[int, int, Threshold]] = []
    for i, threshold in enumerate(thresholds):
        trigger = threshold.trigger_bytes(allowance)
        if inp.used >= trigger:
            due.append((trigger, i, threshold))
    alerts: list[Alert] = []
    seen: set[str] = set()
    for _, _, threshold in sorted(due, key=lambda d: (d[0], d[1])):
        key = threshold_key(plan, inp.cycle[0], threshold)
        if key in inp.fired or key in seen:
            continue
        seen.add(key)
        alerts.append(_threshold_alert(inp, threshold, key, allowance, override))
    return alerts


def _daily_alert(inp: GuardInput, limit: int, day: Bounds, override: bool) -> Alert | None:
    trigger = DailyLimit(limit)
    key = f"{period_key(inp.plan, day[0])}:{trigger.label}"
    if key in inp.fired:
        return None
    follow = _action_phrase(inp.plan, override, _local(inp.plan, day[1]))
    return Alert(
        key,
        "critical",
        f"{inp.plan.name}: daily limit reached",
        f"{format_bytes(limit)} daily fair-use limit used on {inp.plan.name}, {follow}",
        trigger,
        day[0],
    )


def _cap_action(inp: GuardInput, reason: str) -> Decision:
    if inp.plan.cap_action == "block-others":
        return BlockOthers(inp.plan.allow_list, reason)
    if inp.plan.cap_action == "disconnect":
        return Disconnect(reason)
    return Pause(reason)


def decide(inp: GuardInput) -> list[Decision]:
    """The decisions for this moment; see the module docstring for their order and meaning."""
    if inp.now.tzinfo is None or inp.now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    plan = inp.plan
    allowance = inp.allowance + inp.topup_bytes
    override = _override_active(inp)
    cycle_remaining = allowance - inp.used

    daily: tuple[int, int, Bounds] | None = None  # (limit, remaining today, day bounds)
    if plan.daily_limit_bytes is not None and inp.used_today is not None:
        if inp.day_bounds is None:
            raise ValueError("used_today needs day_bounds (plans.day_bounds)")
        limit = plan.daily_limit_bytes
        daily = (limit, limit - inp.used_today, inp.day_bounds)

    remaining = min(cycle_remaining, daily[1]) if daily else cycle_remaining
    remaining = max(remaining, 0)
    cycle_capped = cycle_remaining <= 0
    day_capped = daily is not None and daily[1] <= 0
    enforce = (cycle_capped or day_capped) and not override and plan.cap_action != "alert"

    out: list[Decision] = []
    if enforce and not inp.paused:
        if cycle_capped:
            reason = (
                f"{plan.name} used its {format_bytes(allowance)} allowance; "
                f"{_at_cap_phrase(inp, override)}"
            )
        else:
            assert daily is not None
            reason = (
                f"{plan.name} used its {format_bytes(daily[0])} daily fair-use limit; "
                f"{_action_phrase(plan, override, _local(plan, daily[2][1]))}"
            )
        out.append(_cap_action(inp, reason))
    elif inp.paused and not enforce:
        out.append(Resume(_resume_reason(inp, remaining, override)))

    if plan.cap_action == "alert":
        out.append(NoCap(f"{plan.name} only alerts at its cap"))
    elif override and inp.resume_bytes is None:
        out.append(NoCap("resumed on request", inp.resume_until))
    elif override:
        assert inp.resume_bytes is not None
        out.append(SetCap(max(remaining, inp.resume_bytes - inp.used)))
    else:
        out.append(SetCap(remaining))

    if daily is not None and daily[1] <= 0:
        alert = _daily_alert(inp, daily[0], daily[2], override)
        if alert is not None:
            out.append(alert)
    out.extend(_threshold_alerts(inp, allowance, override))
    return out


def _resume_reason(inp: GuardInput, remaining: int, override: bool) -> str:
    plan = inp.plan
    start = inp.cycle[0]
    if inp.previous_cycle_start is not None and inp.previous_cycle_start != start:
        return f"a new cycle of {plan.name} started at {_local(plan, start)}"
    if override:
        parts = []
        if inp.resume_until is not None:
            parts.append(f"until {_local(plan, inp.resume_until)}")
        if inp.resume_bytes is not None:
            parts.append(f"for {format_bytes(inp.resume_bytes - inp.used)} more")
        return f"data resumed on request {' or '.join(parts)}"
    if plan.cap_action == "alert":
        return f"{plan.name} only alerts at its cap"
    return f"{plan.name} is below its cap again: {format_bytes(remaining)} left"
