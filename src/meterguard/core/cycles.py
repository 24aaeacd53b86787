"""Billing cycles in a plan's own IANA time zone. Pure: no I/O, no clock.

Three kinds of cycle cover the plans people buy:

- `Monthly(day, at)`: the cycle starts on day `day` of every month at local wall time `at`.
  Carriers that bill "on the 31st" bill on the last day of shorter months, so day 31 (or 30,
  or 29) falls on the 30th of April and on the 28th or 29th of February.
- `Every(days, anchor, ends_plan)`: N-day periods from an activation instant, as 7-, 15- and
  30-day travel passes are sold. With `ends_plan` (a pass) there is exactly one period: the
  pass's validity is the plan's, and after it there is no next cycle.
- `Daily(at)`: fair-use allowances that reset every day at local `at` (midnight by default).

Rules that every boundary follows, and that the tests check:

- A boundary is a LOCAL WALL TIME, converted to an instant on its own. Nothing is derived by
  adding 24 h to an instant, so a day is 23 h or 25 h long across a DST change and a monthly
  boundary keeps its wall time all year.
- A wall time that does not exist (the spring-forward gap) moves forward to the first instant
  that does: the instant of the jump. Daily at 02:30 in New York on 2026-03-08 starts at 03:00
  EDT. (zoneinfo's own fold=0 reading would land at 03:30, half an hour into the day.)
- A wall time that happens twice (the fall-back fold) means its first occurrence (fold=0).
- An N-day period ends at the same local wall time N calendar days later, which is N*24 h of
  wall time but N*24 h +/- the DST shift of real time when a change falls inside it. This is
  how carriers print "valid until" on a pass.
- `Every` cycles do not exist before their anchor: the plan was not active yet.
- Every instant returned is an aware datetime in UTC; every `now` taken must be aware.
"""

from __future__ import annotations

import calendar
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from zoneinfo import ZoneInfo

MIDNIGHT = time(0, 0)


def _check_wall_time(at: time, what: str) -> None:
    if at.tzinfo is not None:
        raise ValueError(f"{what} is a local wall time and must not carry a time zone: {at}")
    if at.microsecond:
        # The config grammar writes whole seconds at most; finer would not round-trip.
        raise ValueError(f"{what} is whole seconds, got {at}")


@dataclass(frozen=True)
class Monthly:
    """A cycle that starts on day `day` (1..31) of every month at local wall time `at`."""

    day: int
    at: time = MIDNIGHT

    def __post_init__(self) -> None:
        if not 1 <= self.day <= 31:
            raise ValueError(f"a monthly billing day is 1..31, got {self.day}")
        _check_wall_time(self.at, "the billing time")


@dataclass(frozen=True)
class Every:
    """N-day periods from `anchor` (aware); `ends_plan` makes it a pass with a single period."""

    days: int
    anchor: datetime
    ends_plan: bool = False

    def __post_init__(self) -> None:
        if self.days < 1:
            raise ValueError(f"a period is at least 1 day long, got {self.days}")
        _require_aware(self.anchor, "the activation time")


@dataclass(frozen=True)
class Daily:
    """A cycle of one local day, starting at wall time `at`."""

    at: time = field(default=MIDNIGHT)

    def __post_init__(self) -> None:
        _check_wall_time(self.at, "the reset time")


CycleSpec = Monthly | Every | Daily
Bounds = tuple[datetime, datetime]


def _require_aware(t: datetime, what: str) -> None:
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(
            f"{what} must be timezone-aware; a naive time has no place on the timeline"
        )


# --- local wall time -> instant -----------------------------------------------------------


def _wall_of(instant: datetime, tz: tzinfo) -> datetime:
    return instant.astimezone(tz).replace(tzinfo=None, fold=0)


def local_to_utc(wall: datetime, tz: tzinfo) -> datetime:
    """The instant at which the naive local `wall` time happens in `tz`, in UTC.

    Ambiguous (fold) times take their first occurrence; times inside a gap move forward to the
    instant of the jump, the first instant whose wall time is not earlier than `wall`.
    """
    wall = wall.replace(tzinfo=None, fold=0)
    # For a time that exists, fold=0 is its (first) occurrence and reads back unchanged.
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if _wall_of(first, tz) == wall:
        return first
    # In a gap, PEP 495 maps fold=0 with the offset from before the jump (past it) and fold=1
    # with the offset from after it (short of it): the jump lies between. Zone transitions
    # happen on whole seconds, so a bisection over whole seconds finds it exactly.
    other = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
    lo = math.floor(min(first, other).timestamp())
    hi = math.ceil(max(first, other).timestamp())
    while lo < hi:
        mid = (lo + hi) // 2
        if _wall_of(datetime.fromtimestamp(mid, UTC), tz) >= wall:
            hi = mid
        else:
            lo = mid + 1
    return datetime.fromtimestamp(lo, UTC)


# --- boundaries by index --------------------------------------------------------------------
#
# Each kind numbers its boundaries with an integer index (months since year 0, day ordinals,
# period numbers), so "the cycle containing now" is a search for k with
# boundary(k) <= now < boundary(k + 1), started from a guess taken from now's local date.


def _monthly_boundary(spec: Monthly, k: int, tz: tzinfo) -> datetime:
    year, month0 = divmod(k, 12)
    last = calendar.monthrange(year, month0 + 1)[1]
    day = date(year, month0 + 1, min(spec.day, last))
    return local_to_utc(datetime.combine(day, spec.at), tz)


def _daily_boundary(spec: Daily, k: int, tz: tzinfo) -> datetime:
    return local_to_utc(datetime.combine(date.fromordinal(k), spec.at), tz)


def _every_boundary(spec: Every, k: int, tz: tzinfo) -> datetime:
    if k == 0:
        # The activation instant itself, even when it fell in the second half of a fold.
        return spec.anchor.astimezone(UTC)
    return local_to_utc(_wall_of(spec.anchor, tz) + timedelta(days=k * spec.days), tz)


def _boundary(spec: CycleSpec, k: int, tz: tzinfo) -> datetime:
    if isinstance(spec, Monthly):
        return _monthly_boundary(spec, k, tz)
    if isinstance(spec, Daily):
        return _daily_boundary(spec, k, tz)
    return _every_boundary(spec, k, tz)


def _guess(spec: CycleSpec, now: datetime, tz: tzinfo) -> int:
    local = now.astimezone(tz)
    if isinstance(spec, Monthly):
        return local.year * 12 + local.month - 1
    if isinstance(spec, Daily):
        return local.toordinal()
    return (local.date() - spec.anchor.astimezone(tz).date()).days // spec.days


def _index(spec: CycleSpec, now: datetime, tz: tzinfo) -> int:
    """The index k of the cycle that contains `now` (ignoring whether a pass is valid)."""
    k = _guess(spec, now, tz)
    while now < _boundary(spec, k, tz):
        k -= 1
    while now >= _boundary(spec, k + 1, tz):
        k += 1
    return k


def _exists(spec: CycleSpec, k: int) -> bool:
    if isinstance(spec, Every):
        return k == 0 if spec.ends_plan else k >= 0
    return True


# --- public API -------------------------------------------------------------------------------


def cycle_bounds(spec: CycleSpec, now: datetime, tz: tzinfo, *, offset: int = 0) -> Bounds | None:
    """[start, end) in UTC of the cycle containing `now`, or None when there is none.

    None means `now` is before an `Every` anchor or after a pass's single period. `offset` moves
    whole cycles: -1 is the previous cycle (what rollover is computed from), +1 the next.
    """
    _require_aware(now, "now")
    k = _index(spec, now, tz) + offset
    if not _exists(spec, k):
        return None
    return _boundary(spec, k, tz), _boundary(spec, k + 1, tz)


def next_boundary(spec: CycleSpec, now: datetime, tz: tzinfo) -> datetime | None:
    """The next instant after `now` at which a cycle starts or ends: when to wake up next.

    Before an `Every` anchor that is the anchor; after a pass has expired it is None.
    """
    _require_aware(now, "now")
    k = _index(spec, now, tz)
    if isinstance(spec, Every) and k < 0:
        return _boundary(spec, 0, tz)
    if not _exists(spec, k):
        return None
    return _boundary(spec, k + 1, tz)


def cycles_between(spec: CycleSpec, start: datetime, end: datetime, tz: tzinfo) -> Iterator[Bounds]:
    """The whole cycles that overlap [start, end), in order (for reports by cycle).

    Cycles are not clipped to the range: the first may start before `start` and the last may
    end after `end`. Cycles that do not exist (before an anchor, after a pass) are skipped.
    """
    _require_aware(start, "start")
    _require_aware(end, "end")
    if end <= start:
        return
    k = _index(spec, start, tz)
    last = _index(spec, end - timedelta(microseconds=1), tz)
    if isinstance(spec, Every):
        k = max(k, 0)
        if spec.ends_plan:
            last = min(last, 0)
    lower = _boundary(spec, k, tz)
    while k <= last:
        upper = _boundary(spec, k + 1, tz)
        yield lower, upper
        lower = upper
        k += 1


# --- the config grammar -----------------------------------------------------------------------

_TIME = r"(\d{1,2}:\d{2}(?::\d{2})?)"
_MONTHLY_RE = re.compile(rf"monthly:(\d{{1,2}})(?:@{_TIME})?")
_DAILY_RE = re.compile(rf"daily(?:@{_TIME})?")
_EVERY_RE = re.compile(r"(every|pass):(\d{1,4})d@(\S+)", re.IGNORECASE)

CYCLE_GRAMMAR = (
    "'monthly:DAY[@HH:MM]' (DAY 1-31; 31 means the last day of shorter months), "
    "'daily[@HH:MM]', 'every:Nd@YYYY-MM-DDTHH:MM' (repeating N-day periods from that time) "
    "or 'pass:Nd@YYYY-MM-DDTHH:MM' (a single N-day pass); the activation time is in the plan's "
    "zone unless it carries an offset such as +08:00"
)


def _parse_time(text: str | None, original: str) -> time:
    if text is None:
        return MIDNIGHT
    try:
        return time.fromisoformat(text if len(text.split(":")[0]) == 2 else "0" + text)
    except ValueError:
        raise ValueError(f"not a time of day in {original!r}: {text!r} (expected HH:MM)") from None


def _parse_anchor(text: str, tz: tzinfo | None, original: str) -> datetime:
    try:
        anchor = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"not an activation time in {original!r}: {text!r} (expected YYYY-MM-DDTHH:MM)"
        ) from None
    if anchor.tzinfo is not None:
        return anchor
    if tz is None:
        raise ValueError(
            f"the activation time in {original!r} has no offset and no plan time zone was given"
        )
    return local_to_utc(anchor, tz).astimezone(tz)


def parse_cycle(text: str, tz: ZoneInfo | tzinfo | None = None) -> CycleSpec:
    """Parse a config cycle string; `tz` (the plan's zone) places an anchor without an offset.

    Raises ValueError naming what was expected (`CYCLE_GRAMMAR`).
    """
    s = text.strip().lower().replace(" ", "")
    try:
        if m := _MONTHLY_RE.fullmatch(s):
            return Monthly(int(m.group(1)), _parse_time(m.group(2), text))
        if m := _DAILY_RE.fullmatch(s):
            return Daily(_parse_time(m.group(1), text))
        if m := _EVERY_RE.fullmatch(text.strip()):
            kind, days, anchor = m.groups()
            return Every(
                int(days), _parse_anchor(anchor, tz, text), ends_plan=kind.lower() == "pass"
            )
    except ValueError as err:
        raise ValueError(f"{err}; a cycle is {CYCLE_GRAMMAR}") from None
    raise ValueError(f"not a billing cycle: {text!r}; expected {CYCLE_GRAMMAR}")


def _format_time(at: time) -> str:
    return at.isoformat(timespec="seconds" if at.second else "minutes")


def format_cycle(spec: CycleSpec) -> str:
    """The config string for `spec`; `parse_cycle(format_cycle(s)) == s`."""
    if isinstance(spec, Monthly):
        suffix = "" if spec.at == MIDNIGHT else "@" + _format_time(spec.at)
        return f"monthly:{spec.day}{suffix}"
    if isinstance(spec, Daily):
        return "daily" if spec.at == MIDNIGHT else "daily@" + _format_time(spec.at)
    kind = "pass" if spec.ends_plan else "every"
    return f"{kind}:{spec.days}d@{spec.anchor.isoformat()}"
