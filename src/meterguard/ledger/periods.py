"""Calendar periods in a plan's own time zone, as UTC instants. Pure: no I/O, no clock.

A local day is [first instant of the date, first instant of the next date). Working from
local dates and converting each boundary separately is what keeps DST right: the day the
clocks go forward is 23 h long, the day they go back 25 h, and nothing is derived by adding
24 h to an instant.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

Period = Literal["day", "week", "month"]


def local_day_start(day: date, tz: ZoneInfo) -> datetime:
    """The first instant of `day` in `tz`, in UTC.

    In zones whose clocks jump at midnight (America/Santiago, Asia/Beirut...) 00:00 may not
    exist. zoneinfo gives a non-existent time (fold=0) the offset from before the jump, which
    maps it to the instant of the jump: the first instant that really carries that date. When
    midnight happens twice, fold=0 picks the first, which is again where the date begins.
    """
    return datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(UTC)


def _first_of_month(year: int, month0: int) -> date:
    # month0 counts months from year 0 so that offsets wrap across years with one divmod.
    y, m = divmod(year * 12 + month0, 12)
    return date(y, m + 1, 1)


def period_bounds(
    period: Period, now: datetime, tz: ZoneInfo, *, offset: int = 0
) -> tuple[datetime, datetime]:
    """[start, end) of the calendar period that contains `now` in `tz`, as UTC datetimes.

    Weeks start on Monday (ISO 8601). `offset` moves whole periods: -1 is the previous one.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware; a naive time has no place on the timeline")
    today = now.astimezone(tz).date()
    if period == "day":
        first = today + timedelta(days=offset)
        after = first + timedelta(days=1)
    elif period == "week":
        first = today - timedelta(days=today.weekday()) + timedelta(weeks=offset)
        after = first + timedelta(weeks=1)
    elif period == "month":
        first = _first_of_month(today.year, today.month - 1 + offset)
        after = _first_of_month(today.year, today.month + offset)
    else:
        raise ValueError(f"unknown period {period!r} (known: day, week, month)")
    return local_day_start(first, tz), local_day_start(after, tz)


def period_seconds(
    period: Period, now: datetime, tz: ZoneInfo, *, offset: int = 0
) -> tuple[int, int]:
    """`period_bounds` as unix seconds, the form `Ledger.totals` takes."""
    start, end = period_bounds(period, now, tz, offset=offset)
    return int(start.timestamp()), int(end.timestamp())
