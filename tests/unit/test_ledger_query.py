"""Reports: totals and series equal a brute-force sum, before and after minute rows expire."""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterguard.ledger import Horizons, Ledger, RangeError, ReportRow, UsageDelta, period_seconds
from meterguard.ledger.query import plan

T0 = 1_767_225_600  # 2026-01-01T00:00Z
MIN, Q, DAY = 60, 900, 86_400
SPAN = 4 * DAY  # the window the generated traffic falls in

Event = tuple[int, str, str, int, int]  # at, network, app, up, down

events_st = st.lists(
    st.tuples(
        st.integers(min_value=T0, max_value=T0 + SPAN - 1),
        st.sampled_from(["wwan0", "wlan0"]),
        st.sampled_from(["firefox", "apt", "dropbox"]),
        st.integers(min_value=0, max_value=10**9),
        st.integers(min_value=0, max_value=10**9),
    ),
    max_size=60,
)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with Ledger.open(tmp_path / "ledger.db") as led:
        yield led


def fresh_ledger(directory: str) -> Ledger:
    return Ledger.open(Path(directory) / "ledger.db")


def record_all(ledger: Ledger, events: list[Event]) -> None:
    for at, network, app, up, down in events:
        ledger.record(at, [UsageDelta(network, app, up, down)])


def brute(
    events: list[Event], start: int, end: int, by: str, network: str | None = None
) -> list[ReportRow]:
    up: Counter[tuple[str, str | None]] = Counter()
    down: Counter[tuple[str, str | None]] = Counter()
    for at, net, app, u, d in events:
        # A minute row holds the whole minute, so events count by the minute they fall in.
        if start <= at // MIN * MIN < end and (network is None or net == network):
            key = (net, app if by == "app" else None)
            up[key] += u
            down[key] += d
    rows = [
        ReportRow(app=k[1], network=k[0], bytes_up=up[k], bytes_down=down[k])
        for k in up
        if up[k] + down[k]
    ]
    return sorted(rows, key=lambda r: (-r.bytes_total, r.network or "", r.app or ""))


def aligned(grain: int) -> st.SearchStrategy[int]:
    return st.integers(min_value=(T0 - DAY) // grain, max_value=(T0 + SPAN + DAY) // grain).map(
        lambda n: n * grain
    )


@settings(deadline=None, max_examples=150)
@given(
    events=events_st,
    bounds=st.lists(aligned(Q), min_size=2, max_size=2).map(sorted),
    by=st.sampled_from(["app", "network"]),
    network=st.sampled_from([None, "wwan0"]),
    prune_at=st.integers(min_value=T0, max_value=T0 + SPAN + DAY),
)
def test_quarter_aligned_totals_equal_brute_force_before_and_after_prune(
    events: list[Event], bounds: list[int], by: str, network: str | None, prune_at: int
) -> None:
    start, end = bounds
    with tempfile.TemporaryDirectory() as tmp, fresh_ledger(tmp) as ledger:
        record_all(ledger, events)
        expected = brute(events, start, end, by, network)
        assert ledger.totals(start, end, by=by, network=network) == expected  # type: ignore[arg-type]
        # One day of minute rows kept: the horizon moves into (or past) the traffic.
        ledger.prune(prune_at + DAY, 1)
        assert ledger.totals(start, end, by=by, network=network) == expected  # type: ignore[arg-type]


@settings(deadline=None, max_examples=150)
@given(
    events=events_st,
    bounds=st.lists(aligned(MIN), min_size=2, max_size=2).map(sorted),
    prune_at=st.integers(min_value=T0, max_value=T0 + SPAN),
)
def test_minute_aligned_totals_are_exact_after_the_horizon(
    events: list[Event], bounds: list[int], prune_at: int
) -> None:
    start, end = bounds
    with tempfile.TemporaryDirectory() as tmp, fresh_ledger(tmp) as ledger:
        record_all(ledger, events)
        assert ledger.totals(start, end, by="app") == brute(events, start, end, "app")
        ledger.prune(prune_at + DAY, 1)
        horizon = ledger.horizons().minute
        assert horizon is not None
        # Only the ragged ends (not on a quarter hour) need minute rows; they are refused
        # where those rows have expired.
        ragged_head = start % Q and start < horizon
        ragged_tail = end % Q and max(start, end - end % Q) < horizon
        if start < end and (ragged_head or ragged_tail):
            with pytest.raises(RangeError, match="minute horizon"):
                ledger.totals(start, end, by="app")
        else:
            assert ledger.totals(start, end, by="app") == brute(events, start, end, "app")


@settings(deadline=None, max_examples=100)
@given(
    events=events_st,
    start=aligned(Q),
    steps=st.integers(min_value=1, max_value=30),
    step=st.sampled_from([60, 300, 900, 3600, 4 * 3600, DAY]),
    by=st.sampled_from(["app", "network"]),
)
def test_series_equals_brute_force_per_step(
    events: list[Event], start: int, steps: int, step: int, by: str
) -> None:
    end = start + steps * step
    with tempfile.TemporaryDirectory() as tmp, fresh_ledger(tmp) as ledger:
        record_all(ledger, events)
        expected = []
        for k in range(steps):
            lo = start + k * step
            for row in sorted(brute(events, lo, lo + step, by), key=lambda r: (r.network, r.app)):
                expected.append((lo, row.network, row.app, row.bytes_up, row.bytes_down))
        got = ledger.series(start, end, step_seconds=step, by=by)  # type: ignore[arg-type]
        assert [(r.start, r.network, r.app, r.bytes_up, r.bytes_down) for r in got] == expected


@settings(deadline=None, max_examples=500)
@given(
    start=st.integers(min_value=0, max_value=10**7).map(lambda n: n * MIN),
    length=st.integers(min_value=0, max_value=10**5).map(lambda n: n * MIN),
)
def test_plan_tiles_the_range_exactly_with_aligned_tiles(start: int, length: int) -> None:
    tiles = plan(start, start + length, Horizons(minute=None, bucket=None))
    position = start
    for tile in tiles:
        assert tile.lo == position < tile.hi
        assert tile.lo % tile.grain == 0 and tile.hi % tile.grain == 0
        position = tile.hi
    assert position == start + length
    # The coarsest rows that fit: at most 14 minute tiles' worth of ragged edge on each side.
    assert sum(1 for t in tiles if t.grain == MIN) <= 2


def test_seams_between_grains_count_each_byte_once(ledger: Ledger) -> None:
    # One byte in every minute: a range's total must be its length in minutes, whichever
    # tiles answer it, so a byte counted twice (or missed) at any seam shows.
    first, last = T0 - 2 * 3600, T0 + 3 * DAY + 2 * 3600
    with ledger.transaction():
        for at in range(first, last, MIN):
            ledger.record(at, [UsageDelta("wwan0", "a", 1, 0)])

    def check(start: int, end: int, grains: list[int]) -> None:
        assert [t.grain for t in plan(start, end, ledger.horizons())] == grains
        [row] = ledger.totals(start, end, by="app")
        assert row.bytes_up == (end - start) // MIN

    check(T0 - 37 * MIN, T0 + 49 * MIN, [MIN, Q, MIN])
    check(T0 - 20 * MIN, T0 + 3 * DAY + 20 * MIN, [MIN, Q, DAY, Q, MIN])
    check(T0 - Q, T0 + 2 * DAY + Q, [Q, DAY, Q])
    check(T0 + 7 * MIN, T0 + 8 * MIN, [MIN])
    # Once pruned, the horizon is a seam too: buckets before it, minute rows after it.
    ledger.prune(T0 + 2 * DAY + 2 * Q + 5, 1)
    assert ledger.horizons().minute == T0 + DAY + 2 * Q
    check(T0 + DAY - Q, T0 + DAY + 2 * Q + 3 * MIN, [Q, MIN])
    check(T0 - 2 * Q, T0 + 3 * DAY + 3 * MIN, [Q, DAY, MIN])


def test_misaligned_edges_before_the_horizon_are_refused(ledger: Ledger) -> None:
    ledger.record(T0, [UsageDelta("wwan0", "a", 1, 0)])
    ledger.prune(T0 + 10 * DAY, 2)
    with pytest.raises(RangeError, match="quarter hour"):
        ledger.totals(T0 + 5 * MIN, T0 + DAY, by="app")
    with pytest.raises(RangeError, match="quarter hour"):
        ledger.totals(T0, T0 + DAY + 5 * MIN, by="app")
    with pytest.raises(RangeError, match="whole minute"):
        ledger.totals(T0 + 1, T0 + DAY, by="app")
    with pytest.raises(RangeError, match="after end"):
        ledger.totals(T0 + DAY, T0, by="app")
    with pytest.raises(RangeError, match="whole number of minutes"):
        ledger.series(T0, T0 + DAY, step_seconds=90, by="app")
    # A quarter-aligned range is fine however old, and so is a ragged one after the horizon.
    assert ledger.totals(T0, T0 + Q, by="app")[0].bytes_up == 1
    assert ledger.totals(T0 + 9 * DAY + 5 * MIN, T0 + 9 * DAY + 7 * MIN, by="app") == []


def test_expired_buckets_are_refused_not_reported_as_zero(ledger: Ledger) -> None:
    ledger.record(T0, [UsageDelta("wwan0", "a", 1, 0)])
    ledger.record(T0 + 300 * DAY, [UsageDelta("wwan0", "a", 2, 0)])
    result = ledger.prune(T0 + 400 * DAY + 5 * 3600, 35, bucket_retention_days=366)
    assert ledger.horizons().bucket == T0 + 34 * DAY
    assert result.bucket_rows == 2  # the quarter bucket and the day of T0
    with pytest.raises(RangeError, match="expired"):
        ledger.totals(T0, T0 + 400 * DAY, by="app")
    assert ledger.totals(T0 + 34 * DAY, T0 + 400 * DAY, by="app")[0].bytes_up == 2
    with pytest.raises(ValueError, match="at least as long"):
        ledger.prune(T0 + 400 * DAY, 35, bucket_retention_days=7)


def test_prune_keeps_buckets_and_never_moves_the_horizon_back(ledger: Ledger) -> None:
    ledger.record(T0 + 5, [UsageDelta("wwan0", "a", 1, 0)])
    ledger.record(T0 + 2 * DAY, [UsageDelta("wwan0", "a", 2, 0)])
    result = ledger.prune(T0 + 2 * DAY + 123, 1)
    assert (result.minute_rows, result.bucket_rows) == (1, 0)
    assert ledger.horizons().minute == T0 + DAY
    ledger.prune(T0 + DAY, 1)  # the clock went back
    assert ledger.horizons().minute == T0 + DAY
    assert ledger.totals(T0, T0 + 3 * DAY, by="app")[0].bytes_up == 3


def test_a_kathmandu_month_stays_exact_after_minutes_expire(ledger: Ledger) -> None:
    kathmandu = ZoneInfo("Asia/Kathmandu")  # UTC+5:45: local midnight is 18:15 UTC
    start, end = period_seconds("month", datetime(2026, 2, 10, tzinfo=UTC), kathmandu)
    # Bytes just inside and just outside the local month.
    for at, n in ((start - MIN, 1), (start, 10), (end - MIN, 100), (end, 1_000)):
        ledger.record(at, [UsageDelta("wwan0", "a", n, 0)])
    ledger.prune(end + 100 * DAY, 35)
    assert ledger.totals(start, end, by="network") == [
        ReportRow(app=None, network="wwan0", bytes_up=110, bytes_down=0)
    ]


def test_rows_come_largest_first_and_filter_by_network(ledger: Ledger) -> None:
    ledger.record(
        T0,
        [
            UsageDelta("wwan0", "small", 1, 1),
            UsageDelta("wwan0", "big", 500, 500),
            UsageDelta("wlan0", "big", 7, 0),
        ],
    )
    assert [(r.network, r.app) for r in ledger.totals(T0, T0 + Q, by="app")] == [
        ("wwan0", "big"),
        ("wlan0", "big"),
        ("wwan0", "small"),
    ]
    assert [r.app for r in ledger.totals(T0, T0 + Q, by="app", network="wwan0")] == [
        "big",
        "small",
    ]
    assert ledger.totals(T0, T0, by="app") == []
    with pytest.raises(ValueError, match="unknown grouping"):
        ledger.totals(T0, T0 + Q, by="device")  # type: ignore[arg-type]
