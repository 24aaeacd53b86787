"""Billing cycle arithmetic: examples for the named cases, properties for the rest."""

from __future__ import annotations

import calendar
from datetime import UTC, date, datetime, time, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterguard.core.cycles import (
    CycleSpec,
    Daily,
    Every,
    Monthly,
    cycle_bounds,
    cycles_between,
    format_cycle,
    local_to_utc,
    next_boundary,
    parse_cycle,
)

HK = ZoneInfo("Asia/Hong_Kong")
LONDON = ZoneInfo("Europe/London")
NEW_YORK = ZoneInfo("America/New_York")
US = timedelta(microseconds=1)
H = timedelta(hours=1)

# DST at 01:00/02:00 (London, New York), a 30-minute DST shift (Lord Howe), DST at midnight
# (Santiago), a +5:30 zone, a +12:45 zone with DST, and Hong Kong, which has no DST.
ZONES = [
    "Asia/Hong_Kong",
    "Europe/London",
    "America/New_York",
    "Australia/Lord_Howe",
    "America/Santiago",
    "Asia/Kolkata",
    "Pacific/Chatham",
    "UTC",
]

zones = st.sampled_from(ZONES).map(ZoneInfo)
instants = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2060, 1, 1), timezones=st.just(UTC)
)
# Times inside DST gaps and folds in the zones above, plus anything at all.
wall_times = st.one_of(
    st.sampled_from([time(0), time(0, 30), time(1, 30), time(2), time(2, 30), time(23, 59)]),
    st.times().map(lambda t: t.replace(microsecond=0)),
)
monthly = st.builds(Monthly, st.integers(1, 31), wall_times)
daily = st.builds(Daily, wall_times)
every = st.builds(Every, st.integers(1, 40), instants, st.booleans())
specs: st.SearchStrategy[CycleSpec] = st.one_of(monthly, daily, every)


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, tzinfo=UTC)


def wall(t: datetime, tz: ZoneInfo) -> datetime:
    return t.astimezone(tz).replace(tzinfo=None)


# --- properties that hold for every kind of cycle ---------------------------------------------


@settings(deadline=None, max_examples=300)
@given(spec=specs, tz=zones, now=instants)
def test_now_lies_in_its_cycle_and_cycles_are_contiguous(
    spec: CycleSpec, tz: ZoneInfo, now: datetime
) -> None:
    bounds = cycle_bounds(spec, now, tz)
    if bounds is None:
        assert isinstance(spec, Every)
        assert now < spec.anchor or (spec.ends_plan and now >= cycle_end_of_pass(spec, tz))
        return
    start, end = bounds
    assert start.tzinfo is UTC and end.tzinfo is UTC
    assert start <= now < end
    assert next_boundary(spec, now, tz) == end
    # The same cycle from both of its edges, and its neighbours touch it exactly.
    assert cycle_bounds(spec, start, tz) == bounds
    assert cycle_bounds(spec, end - US, tz) == bounds
    after = cycle_bounds(spec, end, tz)
    if after is not None:
        assert after[0] == end
        assert cycle_bounds(spec, now, tz, offset=1) == after
    else:
        assert isinstance(spec, Every) and spec.ends_plan
    before = cycle_bounds(spec, now, tz, offset=-1)
    if before is not None:
        assert before[1] == start
        assert cycle_bounds(spec, start - US, tz) == before


def cycle_end_of_pass(spec: Every, tz: ZoneInfo) -> datetime:
    return local_to_utc(wall(spec.anchor, tz) + timedelta(days=spec.days), tz)


@settings(deadline=None, max_examples=200)
@given(spec=specs, tz=zones, nows=st.lists(instants, min_size=2, max_size=8))
def test_a_clock_moved_back_and_forth_sees_consistent_cycles(
    spec: CycleSpec, tz: ZoneInfo, nows: list[datetime]
) -> None:
    # The nows arrive in random order, as from a clock set backwards and forwards.
    seen = [(now, cycle_bounds(spec, now, tz)) for now in nows]
    for a, bounds_a in seen:
        for b, bounds_b in seen:
            if bounds_a is None or bounds_b is None:
                continue
            if a <= b:
                assert bounds_a[0] <= bounds_b[0]
            if bounds_b[0] <= a < bounds_b[1]:
                assert bounds_a == bounds_b


@settings(deadline=None, max_examples=200)
@given(
    spec=specs,
    tz=zones,
    start=instants,
    span=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=200)),
)
def test_cycles_between_covers_the_range_without_gaps(
    spec: CycleSpec, tz: ZoneInfo, start: datetime, span: timedelta
) -> None:
    end = start + span
    cycles = list(cycles_between(spec, start, end, tz))
    if span == timedelta(0):
        assert cycles == []
        return
    for (_, a_end), (b_start, _) in pairwise(cycles):
        assert a_end == b_start
    for lo, hi in cycles:
        assert lo < end and hi > start
        assert cycle_bounds(spec, lo, tz) == (lo, hi)
    if not isinstance(spec, Every):
        assert cycles[0][0] <= start and cycles[-1][1] >= end


# --- monthly -------------------------------------------------------------------------------------


def test_day_31_falls_on_the_last_day_of_shorter_months() -> None:
    spec = Monthly(31)
    assert cycle_bounds(spec, utc(2026, 4, 15), HK) == (utc(2026, 3, 30, 16), utc(2026, 4, 29, 16))
    # 2026 is not a leap year, 2028 is.
    assert cycle_bounds(spec, utc(2026, 2, 10), HK) == (utc(2026, 1, 30, 16), utc(2026, 2, 27, 16))
    assert cycle_bounds(spec, utc(2028, 3, 15), HK) == (utc(2028, 2, 28, 16), utc(2028, 3, 30, 16))


@settings(deadline=None)
@given(
    day=st.integers(28, 31),
    year=st.integers(2000, 2059),
    month=st.integers(1, 12),
    tz=zones,
)
def test_late_billing_days_clamp_to_month_end(
    day: int, year: int, month: int, tz: ZoneInfo
) -> None:
    last = calendar.monthrange(year, month)[1]
    expected = date(year, month, min(day, last))
    # Noon on the expected billing date is inside the cycle that starts that day.
    noon = local_to_utc(datetime.combine(expected, time(12)), tz)
    bounds = cycle_bounds(Monthly(day), noon, tz)
    assert bounds is not None
    assert bounds[0].astimezone(tz).date() == expected


def test_hk_monthly_on_day_15_with_a_time() -> None:
    assert parse_cycle("monthly:15@06:00") == Monthly(15, time(6))
    bounds = cycle_bounds(Monthly(15, time(6)), utc(2026, 11, 14, 21, 59), HK)
    assert bounds == (utc(2026, 10, 14, 22), utc(2026, 11, 14, 22))


@settings(deadline=None, max_examples=200)
@given(spec=monthly, tz=zones, now=instants)
def test_monthly_boundaries_are_the_billing_day_at_local_time(
    spec: Monthly, tz: ZoneInfo, now: datetime
) -> None:
    bounds = cycle_bounds(spec, now, tz)
    assert bounds is not None
    for edge in bounds:
        local = edge.astimezone(tz)
        # Our zones' gaps never cross midnight, so the date is the billing date.
        last = calendar.monthrange(local.year, local.month)[1]
        billing = date(local.year, local.month, min(spec.day, last))
        assert edge == local_to_utc(datetime.combine(billing, spec.at), tz)


# --- daily and DST -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tz", "day", "hours"),
    [
        (LONDON, date(2026, 3, 29), 23),
        (LONDON, date(2026, 10, 25), 25),
        (NEW_YORK, date(2026, 3, 8), 23),
        (NEW_YORK, date(2026, 11, 1), 25),
        (HK, date(2026, 3, 29), 24),
    ],
)
def test_daily_cycles_are_23_or_25_hours_across_dst(tz: ZoneInfo, day: date, hours: int) -> None:
    noon = local_to_utc(datetime.combine(day, time(12)), tz)
    bounds = cycle_bounds(Daily(), noon, tz)
    assert bounds is not None
    start, end = bounds
    assert end - start == timedelta(hours=hours)
    assert wall(start, tz) == datetime.combine(day, time(0))
    assert wall(end, tz) == datetime.combine(day + timedelta(days=1), time(0))


@settings(deadline=None, max_examples=300)
@given(
    tz=st.sampled_from([LONDON, NEW_YORK]),
    now=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2060, 1, 1)).map(
        lambda t: t.replace(tzinfo=UTC)
    ),
)
def test_daily_cycles_in_dst_zones_start_at_local_midnight(tz: ZoneInfo, now: datetime) -> None:
    bounds = cycle_bounds(Daily(), now, tz)
    assert bounds is not None
    start, end = bounds
    assert end - start in (timedelta(hours=23), timedelta(hours=24), timedelta(hours=25))
    for edge in bounds:
        assert wall(edge, tz).time() == time(0)


@settings(deadline=None, max_examples=300)
@given(now=instants)
def test_hong_kong_midnight_is_exactly_16_00_utc(now: datetime) -> None:
    bounds = cycle_bounds(Daily(), now, HK)
    assert bounds is not None
    start, end = bounds
    assert (start.hour, start.minute, start.second, start.microsecond) == (16, 0, 0, 0)
    assert end - start == timedelta(hours=24)


def test_a_reset_time_in_the_spring_gap_moves_to_the_jump() -> None:
    # 02:30 does not exist in New York on 2026-03-08: clocks go from 02:00 EST to 03:00 EDT.
    bounds = cycle_bounds(Daily(time(2, 30)), utc(2026, 3, 8, 12), NEW_YORK)
    assert bounds == (utc(2026, 3, 8, 7), utc(2026, 3, 9, 6, 30))
    assert wall(bounds[0], NEW_YORK) == datetime(2026, 3, 8, 3, 0)


def test_a_reset_time_in_the_autumn_fold_takes_its_first_occurrence() -> None:
    # 01:30 happens twice in New York on 2026-11-01: first at EDT (05:30 UTC), then at EST.
    bounds = cycle_bounds(Daily(time(1, 30)), utc(2026, 11, 1, 12), NEW_YORK)
    assert bounds == (utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30))
    # The second 01:15 belongs to the day that started at the first 01:30.
    assert cycle_bounds(Daily(time(1, 30)), utc(2026, 11, 1, 6, 15), NEW_YORK) == bounds


def test_santiago_midnight_that_does_not_exist() -> None:
    # Chile springs forward at 24:00 -> 01:00; the day starts at the jump.
    tz = ZoneInfo("America/Santiago")
    bounds = cycle_bounds(Daily(), utc(2026, 9, 6, 12), tz)
    assert bounds is not None
    assert wall(bounds[0], tz) == datetime(2026, 9, 6, 1, 0)
    assert bounds[1] - bounds[0] == timedelta(hours=23)


# --- N-day periods and passes --------------------------------------------------------------------


def test_a_7_day_pass_ends_at_the_same_wall_time_across_dst() -> None:
    spec = parse_cycle("pass:7d@2026-03-25T09:30", LONDON)
    assert spec == Every(7, datetime(2026, 3, 25, 9, 30, tzinfo=LONDON), ends_plan=True)
    start, end = cycle_bounds(spec, utc(2026, 3, 30), LONDON) or (None, None)
    assert start == utc(2026, 3, 25, 9, 30)
    assert end == utc(2026, 4, 1, 8, 30)  # 09:30 BST: one hour less than 7*24 h
    assert end - start == timedelta(days=7) - H
    assert cycle_bounds(spec, start - US, LONDON) is None
    assert cycle_bounds(spec, end, LONDON) is None
    assert next_boundary(spec, start - timedelta(days=3), LONDON) == start
    assert next_boundary(spec, end, LONDON) is None


def test_an_hk_travel_pass_is_exactly_n_days() -> None:
    spec = parse_cycle("pass:7d@2026-11-20T09:30", HK)
    bounds = cycle_bounds(spec, utc(2026, 11, 20, 1, 30), HK)
    assert bounds == (utc(2026, 11, 20, 1, 30), utc(2026, 11, 27, 1, 30))
    assert list(cycles_between(spec, utc(2026, 11, 1), utc(2027, 1, 1), HK)) == [bounds]


@settings(deadline=None, max_examples=300)
@given(days=st.sampled_from([1, 7, 15, 30]), anchor=instants, tz=zones, ends=st.booleans())
def test_an_n_day_period_ends_at_the_same_local_wall_time_n_days_later(
    days: int, anchor: datetime, tz: ZoneInfo, ends: bool
) -> None:
    spec = Every(days, anchor.astimezone(tz), ends_plan=ends)
    bounds = cycle_bounds(spec, anchor, tz)
    assert bounds is not None
    start, end = bounds
    assert start == anchor
    target = wall(anchor, tz) + timedelta(days=days)
    assert end == local_to_utc(target, tz)
    if local_to_utc(target, tz).astimezone(tz).replace(tzinfo=None) == target:
        assert wall(end, tz) == target
    # Real time differs from N*24 h by at most the zone's DST shift.
    assert abs(end - start - timedelta(days=days)) <= H
    assert cycle_bounds(spec, anchor - US, tz) is None
    assert (cycle_bounds(spec, end, tz) is None) == ends


def test_every_repeats_from_its_anchor() -> None:
    spec = parse_cycle("every:30d@2026-01-01T00:00+08:00")
    assert isinstance(spec, Every) and not spec.ends_plan
    assert cycle_bounds(spec, utc(2026, 2, 5), HK) == (utc(2026, 1, 30, 16), utc(2026, 3, 1, 16))


# --- the config grammar --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("monthly:15", Monthly(15)),
        ("monthly:31", Monthly(31)),
        ("Monthly: 1 @ 6:00", Monthly(1, time(6))),
        ("monthly:15@06:00", Monthly(15, time(6))),
        ("daily", Daily()),
        ("daily@01:00", Daily(time(1))),
        ("every:7d@2026-11-20T09:30", Every(7, datetime(2026, 11, 20, 9, 30, tzinfo=HK))),
        ("pass:15d@2026-11-20T09:30:00+08:00", Every(15, utc(2026, 11, 20, 1, 30), True)),
        ("PASS:30d@2026-11-20T09:30Z", Every(30, utc(2026, 11, 20, 9, 30), True)),
    ],
)
def test_parse_cycle(text: str, spec: CycleSpec) -> None:
    assert parse_cycle(text, HK) == spec


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("monthly:0", "1..31"),
        ("monthly:32", "1..31"),
        ("monthly", "not a billing cycle"),
        ("monthly:15@25:00", "not a time of day"),
        ("weekly", "not a billing cycle"),
        ("pass:7d", "not a billing cycle"),
        ("pass:0d@2026-11-20T09:30", "at least 1 day"),
        ("pass:7d@tomorrow", "not an activation time"),
        ("", "not a billing cycle"),
    ],
)
def test_parse_cycle_says_what_it_expected(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as err:
        parse_cycle(text, HK)
    assert "monthly:DAY" in str(err.value)


def test_an_anchor_without_offset_needs_the_plan_zone() -> None:
    with pytest.raises(ValueError, match="no plan time zone"):
        parse_cycle("pass:7d@2026-11-20T09:30")


def test_an_anchor_in_the_gap_moves_forward() -> None:
    spec = parse_cycle("pass:7d@2026-03-08T02:30", NEW_YORK)
    assert isinstance(spec, Every)
    assert spec.anchor == utc(2026, 3, 8, 7)


@settings(deadline=None)
@given(spec=specs)
def test_format_cycle_round_trips(spec: CycleSpec) -> None:
    assert parse_cycle(format_cycle(spec)) == spec


def test_format_cycle_examples() -> None:
    assert format_cycle(Monthly(15)) == "monthly:15"
    assert format_cycle(Monthly(15, time(6))) == "monthly:15@06:00"
    assert format_cycle(Daily(time(1))) == "daily@01:00"
    spec = Every(7, datetime(2026, 11, 20, 9, 30, tzinfo=HK), True)
    assert format_cycle(spec) == "pass:7d@2026-11-20T09:30:00+08:00"


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        cycle_bounds(Daily(), datetime(2026, 1, 1), HK)
    with pytest.raises(ValueError, match="timezone-aware"):
        Every(7, datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="wall time"):
        Daily(time(1, tzinfo=UTC))
