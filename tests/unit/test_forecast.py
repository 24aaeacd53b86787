"""Forecast at the current pace and the daily budget, with exact numbers."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meterguard.core.forecast import Forecast, forecast

GB = 10**9
MB = 10**6
# A 30-day cycle: 2026-11-15 00:00 to 2026-12-15 00:00 in Hong Kong.
START = datetime(2026, 11, 14, 16, tzinfo=UTC)
END = datetime(2026, 12, 14, 16, tzinfo=UTC)
DAY = timedelta(days=1)


def test_runs_out_before_the_cycle_ends() -> None:
    # 10 GB in 10 days is 1 GB a day: the other 10 GB last 10 more days.
    fc = forecast(10 * GB, 20 * GB, START, END, START + 10 * DAY)
    assert fc == Forecast(
        runs_out_at=datetime(2026, 12, 4, 16, tzinfo=UTC),
        lasts_cycle=False,
        daily_budget_bytes=500 * MB,
        remaining_bytes=10 * GB,
        days_left=20.0,
    )


def test_lasts_the_cycle() -> None:
    # 4 GB in 10 days: 16 GB would take 40 days, and 20 are left.
    fc = forecast(4 * GB, 20 * GB, START, END, START + 10 * DAY)
    assert fc == Forecast(None, True, 800 * MB, 16 * GB, 20.0)


def test_partial_days_round_up_and_the_budget_rounds_down() -> None:
    now = START + timedelta(days=10, hours=12)
    fc = forecast(7 * GB, 20 * GB, START, END, now)
    assert fc.days_left == 19.5
    assert fc.daily_budget_bytes == 13 * GB // 20 == 650 * MB
    # 7 GB in 10.5 days -> 13 GB takes 19.5 days: exactly the cycle's end, so it lasts.
    assert fc.runs_out_at is None and fc.lasts_cycle
    uneven = forecast(3 * GB, 10 * GB - 1, START, END, START + 10 * DAY)
    assert uneven.daily_budget_bytes == (7 * GB - 1) // 20 == 349_999_999


def test_the_last_hour_is_one_whole_day_of_budget() -> None:
    fc = forecast(19 * GB, 20 * GB, START, END, END - timedelta(hours=1))
    assert fc.daily_budget_bytes == GB
    assert fc.days_left == pytest.approx(1 / 24)
    assert fc.lasts_cycle


def test_after_the_cycle_end() -> None:
    fc = forecast(19 * GB, 20 * GB, START, END, END + DAY)
    assert (fc.days_left, fc.daily_budget_bytes, fc.lasts_cycle) == (0.0, GB, True)


def test_already_out() -> None:
    now = START + 3 * DAY
    assert forecast(21 * GB, 20 * GB, START, END, now) == Forecast(now, False, 0, 0, 27.0)
    assert forecast(20 * GB, 20 * GB, START, END, now).runs_out_at == now


def test_no_pace_yet() -> None:
    assert forecast(0, 20 * GB, START, END, START + DAY).lasts_cycle
    assert forecast(GB, 20 * GB, START, END, START).runs_out_at is None


def test_microsecond_rounding_is_down() -> None:
    now = START + timedelta(seconds=1)
    fc = forecast(3, 10, START, now + timedelta(seconds=10), now)
    assert fc.runs_out_at == now + timedelta(microseconds=2_333_333)


def test_the_result_is_in_utc_and_naive_times_are_refused() -> None:
    hk_now = (START + 10 * DAY).astimezone(ZoneInfo("Asia/Hong_Kong"))
    fc = forecast(10 * GB, 20 * GB, START, END, hk_now)
    assert fc.runs_out_at is not None and fc.runs_out_at.tzinfo is UTC
    with pytest.raises(ValueError, match="now must be timezone-aware"):
        forecast(0, 1, START, END, datetime(2026, 11, 20))


@given(
    used=st.integers(0, 30 * GB),
    allowance=st.integers(0, 30 * GB),
    elapsed=st.integers(0, 30 * 86_400 * 10**6),
)
def test_forecast_invariants(used: int, allowance: int, elapsed: int) -> None:
    now = START + timedelta(microseconds=elapsed)
    fc = forecast(used, allowance, START, END, now)
    assert fc.remaining_bytes == max(allowance - used, 0)
    assert fc.daily_budget_bytes * max(1, math.ceil(fc.days_left)) <= fc.remaining_bytes
    assert fc.lasts_cycle is (fc.runs_out_at is None)
    if fc.remaining_bytes == 0:
        assert fc.runs_out_at == now
    elif fc.runs_out_at is not None:
        assert now <= fc.runs_out_at < END
