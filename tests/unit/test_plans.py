"""Plans: thresholds, allowance with rollover, and the free window that does not count."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterguard.core.cycles import Daily, Every, Monthly
from meterguard.core.plans import (
    DEFAULT_THRESHOLDS,
    BytesLeft,
    FreeWindow,
    Percent,
    Plan,
    Rollover,
    allowance,
    counts_at,
    day_bounds,
    describe_threshold,
    free_window_intervals,
    parse_free_window,
    parse_threshold,
    plan_cycle,
    threshold_key,
    used_in_cycle,
)

HK = ZoneInfo("Asia/Hong_Kong")
LONDON = ZoneInfo("Europe/London")
GB = 10**9


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, tzinfo=UTC)


def hk_plan(**kw: object) -> Plan:
    args: dict[str, object] = {
        "name": "hk-monthly",
        "quota_bytes": 20 * GB,
        "cycle": Monthly(15),
        "tz": HK,
    }
    args.update(kw)
    return Plan(**args)  # type: ignore[arg-type]


def test_plan_defaults() -> None:
    plan = hk_plan()
    assert plan.thresholds == DEFAULT_THRESHOLDS == tuple(Percent(p) for p in (50, 80, 90, 100))
    assert plan.cap_action == "pause"
    assert plan.rollover is None and plan.free_window is None and plan.daily_limit_bytes is None


@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        ({"name": ""}, "needs a name"),
        ({"quota_bytes": -1}, "cannot be negative"),
        ({"daily_limit_bytes": -1}, "cannot be negative"),
        ({"cap_action": "explode"}, "unknown cap action"),
    ],
)
def test_bad_plans_are_refused(kw: dict[str, object], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        hk_plan(**kw)


# --- thresholds ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "threshold"),
    [
        (80, Percent(80)),
        (95.5, Percent(95.5)),
        ("80%", Percent(80)),
        (" 90 % ", Percent(90)),
        ("500 MB left", BytesLeft(500_000_000)),
        ("1GiB LEFT", BytesLeft(2**30)),
    ],
)
def test_parse_threshold(value: str | int | float, threshold: object) -> None:
    assert parse_threshold(value) == threshold


@pytest.mark.parametrize("value", ["80", "eighty%", "0%", "101%", "lots left", True])
def test_bad_thresholds_are_refused(value: str | bool) -> None:
    with pytest.raises(ValueError):
        parse_threshold(value)


def test_threshold_triggers_are_exact() -> None:
    assert Percent(80).trigger_bytes(20 * GB) == 16 * GB
    assert Percent(80).trigger_bytes(7) == 6  # 5.6 bytes: the first whole byte at or past it
    assert Percent(100).trigger_bytes(7) == 7
    assert BytesLeft(500).trigger_bytes(2000) == 1500
    assert BytesLeft(5000).trigger_bytes(2000) == 0


@given(p=st.integers(1, 100), allowance_=st.integers(0, 10**13))
def test_percent_trigger_is_the_first_byte_at_the_percentage(p: int, allowance_: int) -> None:
    t = Percent(p).trigger_bytes(allowance_)
    assert t * 100 >= p * allowance_
    assert t == 0 or (t - 1) * 100 < p * allowance_


def test_threshold_keys_name_the_cycle_in_local_time() -> None:
    plan = hk_plan()
    start = utc(2026, 11, 14, 16)
    assert threshold_key(plan, start, Percent(80)) == "hk-monthly@2026-11-15T00:00+08:00:80%"
    assert threshold_key(plan, start, Percent(95.5)) == "hk-monthly@2026-11-15T00:00+08:00:95.5%"
    assert (
        threshold_key(plan, start, BytesLeft(500_000_000))
        == "hk-monthly@2026-11-15T00:00+08:00:500000000B-left"
    )
    assert describe_threshold(BytesLeft(500_000_000)) == "500 MB left"


# --- cycles and allowance ------------------------------------------------------------------------


def test_plan_cycle_and_day() -> None:
    plan = hk_plan()
    now = utc(2026, 12, 1, 3)
    assert plan_cycle(plan, now) == (utc(2026, 11, 14, 16), utc(2026, 12, 14, 16))
    assert plan_cycle(plan, now, offset=-1) == (utc(2026, 10, 14, 16), utc(2026, 11, 14, 16))
    assert day_bounds(plan, now) == (utc(2026, 11, 30, 16), utc(2026, 12, 1, 16))


@pytest.mark.parametrize(
    ("previous_used", "expected"),
    [
        (None, 20 * GB),
        (15 * GB, 23 * GB),
        (18 * GB, 22 * GB),
        (20 * GB, 20 * GB),
        (25 * GB, 20 * GB),
    ],
)
def test_rollover_is_capped(previous_used: int | None, expected: int) -> None:
    plan = hk_plan(rollover=Rollover(3 * GB))
    assert allowance(plan, utc(2026, 11, 14, 16), previous_used) == expected


def test_no_rollover_without_a_rollover_rule() -> None:
    assert allowance(hk_plan(), utc(2026, 11, 14, 16), 0) == 20 * GB


def test_nothing_rolls_into_a_pass_or_the_first_period() -> None:
    anchor = datetime(2026, 11, 20, 9, 30, tzinfo=HK)
    travel = hk_plan(cycle=Every(7, anchor, ends_plan=True), rollover=Rollover(GB))
    assert allowance(travel, anchor, 0) == 20 * GB
    repeating = hk_plan(cycle=Every(30, anchor), rollover=Rollover(GB))
    assert allowance(repeating, anchor, 0) == 20 * GB
    assert allowance(repeating, anchor + timedelta(days=30), 0) == 21 * GB


# --- free window ---------------------------------------------------------------------------------


def test_parse_free_window() -> None:
    assert parse_free_window("01:00-07:00") == FreeWindow(time(1), time(7))
    assert parse_free_window(" 23:00 - 6:00 ") == FreeWindow(time(23), time(6))
    with pytest.raises(ValueError, match="HH:MM-HH:MM"):
        parse_free_window("1am to 7am")
    with pytest.raises(ValueError, match="two different times"):
        parse_free_window("01:00-01:00")


def test_counts_at_the_edges_of_the_free_window() -> None:
    plan = hk_plan(free_window=FreeWindow(time(1), time(7)))
    # 01:00 HKT is 17:00 UTC the day before.
    assert counts_at(plan, utc(2026, 11, 20, 16, 59, 59))
    assert not counts_at(plan, utc(2026, 11, 20, 17))
    assert not counts_at(plan, utc(2026, 11, 20, 22, 59, 59))
    assert counts_at(plan, utc(2026, 11, 20, 23))
    assert counts_at(hk_plan(), utc(2026, 11, 20, 17))


def test_a_window_that_wraps_midnight() -> None:
    plan = hk_plan(free_window=FreeWindow(time(23), time(6)))
    start, end = utc(2026, 11, 14, 16), utc(2026, 11, 16, 16)  # 15th and 16th, local
    assert free_window_intervals(plan, start, end) == [
        (utc(2026, 11, 14, 16), utc(2026, 11, 14, 22)),  # 00:00-06:00 on the 15th
        (utc(2026, 11, 15, 15), utc(2026, 11, 15, 22)),  # 23:00 15th - 06:00 16th
        (utc(2026, 11, 16, 15), utc(2026, 11, 16, 16)),  # 23:00-24:00 on the 16th
    ]
    assert not counts_at(plan, utc(2026, 11, 15, 15, 30))
    assert counts_at(plan, utc(2026, 11, 15, 14, 59))


def test_free_window_across_dst_follows_wall_time() -> None:
    plan = Plan("uk", 10 * GB, Monthly(1), LONDON, free_window=FreeWindow(time(1), time(7)))
    # 2026-03-29: 01:00 GMT does not exist (clocks jump to 02:00 BST); the window starts at the
    # jump and ends at 07:00 BST, five real hours later.
    spring = free_window_intervals(plan, utc(2026, 3, 28, 12), utc(2026, 3, 29, 12))
    assert spring == [(utc(2026, 3, 29, 1), utc(2026, 3, 29, 6))]
    # 2026-10-25: 01:00-02:00 happens twice; the window runs seven real hours.
    autumn = free_window_intervals(plan, utc(2026, 10, 24, 12), utc(2026, 10, 25, 12))
    assert autumn == [(utc(2026, 10, 25, 0), utc(2026, 10, 25, 7))]


windows = st.builds(
    FreeWindow,
    st.sampled_from([time(0), time(1), time(1, 30), time(2, 30), time(23)]),
    st.sampled_from([time(0, 30), time(6), time(7), time(1, 15), time(23, 30)]),
).filter(lambda w: w.start != w.end)
zones = st.sampled_from(["Asia/Hong_Kong", "Europe/London", "America/New_York"]).map(ZoneInfo)
instants = st.datetimes(
    min_value=datetime(2020, 1, 1), max_value=datetime(2040, 1, 1), timezones=st.just(UTC)
)


@settings(deadline=None, max_examples=200)
@given(
    window=windows,
    tz=zones,
    start=instants,
    span=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=4)),
    probes=st.lists(st.integers(0, 4 * 86_400 * 1000), max_size=20),
)
def test_free_intervals_agree_with_counts_at(
    window: FreeWindow, tz: ZoneInfo, start: datetime, span: timedelta, probes: list[int]
) -> None:
    plan = Plan("p", GB, Daily(), tz, free_window=window)
    end = start + span
    intervals = free_window_intervals(plan, start, end)
    for (a, b), (c, _) in pairwise(intervals):
        assert a < b < c
    for a, b in intervals:
        assert start <= a < b <= end
    for ms in probes:
        t = start + timedelta(milliseconds=ms)
        if t >= end:
            continue
        inside = any(a <= t < b for a, b in intervals)
        assert counts_at(plan, t) is not inside


def test_used_in_cycle_skips_the_free_window_and_the_outside() -> None:
    plan = hk_plan(free_window=FreeWindow(time(1), time(7)))
    start, end = utc(2026, 11, 14, 16), utc(2026, 12, 14, 16)

    def ts(t: datetime) -> int:
        return int(t.timestamp())

    samples = [
        (ts(start) - 60, 1_000),  # before the cycle
        (ts(start), 10),  # 00:00 local: counts
        (ts(utc(2026, 11, 14, 17)), 200),  # 01:00 local: free
        (ts(utc(2026, 11, 14, 22, 59)), 300),  # 06:59 local: free
        (ts(utc(2026, 11, 14, 23)), 40),  # 07:00 local: counts
        (ts(end), 5_000),  # the next cycle
    ]
    assert used_in_cycle(samples, plan, start, end) == 50
    assert used_in_cycle(samples, hk_plan(), start, end) == 550


@settings(deadline=None, max_examples=100)
@given(
    window=windows,
    tz=zones,
    start=instants,
    samples=st.lists(st.tuples(st.integers(-1000, 5000), st.integers(0, 10**6)), max_size=40),
)
def test_used_in_cycle_is_the_sum_of_counted_minutes(
    window: FreeWindow, tz: ZoneInfo, start: datetime, samples: list[tuple[int, int]]
) -> None:
    plan = Plan("p", GB, Daily(), tz, free_window=window)
    start = start.replace(second=0, microsecond=0)
    end = start + timedelta(days=3)
    base = int(start.timestamp())
    minutes = [(base + 60 * m, n) for m, n in samples]
    expected = sum(
        n
        for t, n in minutes
        if start <= datetime.fromtimestamp(t, UTC) < end
        and counts_at(plan, datetime.fromtimestamp(t, UTC))
    )
    assert used_in_cycle(minutes, plan, start, end) == expected
