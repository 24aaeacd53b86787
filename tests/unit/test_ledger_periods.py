"""Calendar periods in a zone, as UTC instants: DST, odd offsets, offsets across years."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterguard.ledger.periods import Period, period_bounds, period_seconds

LONDON = ZoneInfo("Europe/London")
HONG_KONG = ZoneInfo("Asia/Hong_Kong")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def test_london_spring_forward_day_is_23_hours() -> None:
    now = datetime(2026, 3, 29, 12, 0, tzinfo=LONDON)
    start, end = period_bounds("day", now, LONDON)
    # Midnight is still GMT; the next midnight is already BST (UTC+1).
    assert (start, end) == (utc(2026, 3, 29, 0, 0), utc(2026, 3, 29, 23, 0))
    assert end - start == timedelta(hours=23)


def test_london_fall_back_day_is_25_hours() -> None:
    now = datetime(2026, 10, 25, 1, 30, tzinfo=LONDON)
    start, end = period_bounds("day", now, LONDON)
    assert (start, end) == (utc(2026, 10, 24, 23, 0), utc(2026, 10, 26, 0, 0))
    assert end - start == timedelta(hours=25)


def test_the_day_after_spring_forward_is_24_hours_again() -> None:
    now = datetime(2026, 3, 29, 12, 0, tzinfo=LONDON)
    start, end = period_bounds("day", now, LONDON, offset=1)
    assert (start, end) == (utc(2026, 3, 29, 23, 0), utc(2026, 3, 30, 23, 0))


def test_hong_kong_day_starts_at_16_utc_the_evening_before() -> None:
    # 2026-05-01 02:00 UTC is 10:00 in Hong Kong on 1 May.
    now = utc(2026, 5, 1, 2, 0)
    assert period_bounds("day", now, HONG_KONG) == (utc(2026, 4, 30, 16), utc(2026, 5, 1, 16))
    # 17:00 UTC on 1 May is already 2 May in Hong Kong.
    later = utc(2026, 5, 1, 17, 0)
    assert period_bounds("day", later, HONG_KONG) == (utc(2026, 5, 1, 16), utc(2026, 5, 2, 16))


def test_hong_kong_month_and_previous_month() -> None:
    now = utc(2026, 3, 10, 4, 0)
    assert period_bounds("month", now, HONG_KONG) == (utc(2026, 2, 28, 16), utc(2026, 3, 31, 16))
    prev = period_bounds("month", now, HONG_KONG, offset=-1)
    assert prev == (utc(2026, 1, 31, 16), utc(2026, 2, 28, 16))


def test_month_across_dst_in_london() -> None:
    now = datetime(2026, 3, 15, tzinfo=LONDON)
    start, end = period_bounds("month", now, LONDON)
    assert (start, end) == (utc(2026, 3, 1, 0), utc(2026, 3, 31, 23))


def test_month_offsets_wrap_across_years() -> None:
    now = utc(2026, 1, 15, 12)
    assert period_bounds("month", now, HONG_KONG, offset=-1)[0] == utc(2025, 11, 30, 16)
    assert period_bounds("month", now, HONG_KONG, offset=11)[0] == utc(2026, 11, 30, 16)
    assert period_bounds("month", now, HONG_KONG, offset=12)[0] == utc(2026, 12, 31, 16)


def test_week_starts_on_monday() -> None:
    # Sunday 2026-03-29 in London belongs to the week that began on Monday 23 March (GMT).
    now = datetime(2026, 3, 29, 20, 0, tzinfo=LONDON)
    start, end = period_bounds("week", now, LONDON)
    assert (start, end) == (utc(2026, 3, 23, 0), utc(2026, 3, 29, 23))
    assert end - start == timedelta(days=7, hours=-1)
    prev = period_bounds("week", now, LONDON, offset=-1)
    assert prev == (utc(2026, 3, 16, 0), utc(2026, 3, 23, 0))


def test_midnight_that_does_not_exist_starts_the_day_at_the_jump() -> None:
    # America/Santiago moved its clocks from 00:00 to 01:00 on 2024-09-08: that date begins
    # at 01:00 local (-03), the instant of the jump, 04:00 UTC.
    santiago = ZoneInfo("America/Santiago")
    now = datetime(2024, 9, 8, 12, 0, tzinfo=santiago)
    start, end = period_bounds("day", now, santiago)
    assert (start, end) == (utc(2024, 9, 8, 4), utc(2024, 9, 9, 3))


def test_quarter_hour_zone_bounds_are_on_quarter_hours() -> None:
    kathmandu = ZoneInfo("Asia/Kathmandu")  # UTC+5:45
    start, end = period_seconds("day", utc(2026, 6, 1, 12), kathmandu)
    assert start == int(utc(2026, 5, 31, 18, 15).timestamp())
    assert end - start == 86_400
    assert start % 900 == 0


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        period_bounds("day", datetime(2026, 1, 1), LONDON)


def test_unknown_period_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown period"):
        period_bounds("year", utc(2026, 1, 1), LONDON)  # type: ignore[arg-type]


ZONES = [
    "Europe/London",
    "Asia/Hong_Kong",
    "America/Santiago",
    "Asia/Kathmandu",
    "Australia/Lord_Howe",
    "America/St_Johns",
    "UTC",
]


@settings(deadline=None, max_examples=300)
@given(
    instant=st.integers(min_value=946_684_800, max_value=2_524_608_000),
    zone=st.sampled_from(ZONES),
    period=st.sampled_from(["day", "week", "month"]),
    offset=st.integers(min_value=-30, max_value=30),
)
def test_periods_contain_now_abut_and_start_at_a_local_date_change(
    instant: int, zone: str, period: Period, offset: int
) -> None:
    tz = ZoneInfo(zone)
    now = datetime.fromtimestamp(instant, UTC)
    start, end = period_bounds(period, now, tz)
    assert start <= now < end
    # Consecutive periods share their boundary: no gap, no overlap.
    assert (
        period_bounds(period, now, tz, offset=offset)[1]
        == period_bounds(period, now, tz, offset=offset + 1)[0]
    )
    s, e = period_bounds(period, now, tz, offset=offset)
    # The instant just before a start is on an earlier local date than the start itself.
    assert (s - timedelta(seconds=1)).astimezone(tz).date() < s.astimezone(tz).date()
    assert s.astimezone(tz).day == 1 or period != "month"
    assert s.astimezone(tz).weekday() == 0 or period != "week"
    # Every zone today has a quarter-hour offset, which the 15-minute buckets rely on.
    assert s.timestamp() % 900 == 0 and e.timestamp() % 900 == 0
