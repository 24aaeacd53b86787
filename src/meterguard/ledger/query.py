"""Reports over the ledger: totals and series for any minute-aligned range.

The same bytes are stored at three grains, written in one transaction so they always agree:
minute rows (kept for a retention period), 15-minute UTC buckets and UTC days (kept for the
long term). A range is answered by tiling it with the coarsest rows that fit exactly:
whole UTC days in the middle, quarter buckets out to the quarter hours, minute rows only for
a ragged minute edge. The tiles are disjoint, so nothing is counted twice at a seam, and a
local month reads about 200 apps x (30 days + 2 x 95 quarters) rows instead of ~a million
minute rows.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from .model import (
    DAY,
    MINUTE,
    QUARTER,
    GroupBy,
    Horizons,
    RangeError,
    ReportRow,
    SeriesRow,
)

# grain -> (table, key column). The names are constants, never user input, so building SQL
# text from them is safe.
_TABLES: dict[int, tuple[str, str]] = {
    MINUTE: ("usage_minute", "minute"),
    QUARTER: ("usage_q15", "bucket"),
    DAY: ("usage_day", "day"),
}
_GRAINS = (MINUTE, QUARTER, DAY)


@dataclass(frozen=True, slots=True)
class Tile:
    """[lo, hi) answered from the rows of one grain."""

    grain: int
    lo: int
    hi: int


def _floor(t: int, grain: int) -> int:
    return t // grain * grain


def _ceil(t: int, grain: int) -> int:
    return -(-t // grain) * grain


def _tile(lo: int, hi: int, grains: tuple[int, ...]) -> list[Tile]:
    if lo >= hi:
        return []
    grain = grains[-1]
    if len(grains) == 1:
        return [Tile(grain, lo, hi)]
    inner_lo, inner_hi = _ceil(lo, grain), _floor(hi, grain)
    if inner_lo >= inner_hi:
        return _tile(lo, hi, grains[:-1])
    return [
        *_tile(lo, inner_lo, grains[:-1]),
        Tile(grain, inner_lo, inner_hi),
        *_tile(inner_hi, hi, grains[:-1]),
    ]


def _check_time(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be unix seconds as int, not {type(value).__name__}")
    if value % MINUTE:
        # A minute row cannot be split, so a range that cuts one has no exact answer.
        raise RangeError(f"{name}={value} is not on a whole minute (unix seconds, UTC)")


def plan(start: int, end: int, horizons: Horizons, *, coarsest: int = DAY) -> list[Tile]:
    """Tile [start, end) with rows no coarser than `coarsest`; refuse what is not stored.

    Raises RangeError when part of the range has expired, or when an edge that is not on a
    quarter hour lies before the minute horizon (only quarter buckets remain there).
    """
    _check_time("start", start)
    _check_time("end", end)
    if start > end:
        raise RangeError(f"start {start} is after end {end}")
    if horizons.bucket is not None and start < horizons.bucket:
        raise RangeError(
            f"usage before {horizons.bucket} (unix seconds) has expired under the bucket"
            f" retention; start the range at or after it"
        )
    tiles = _tile(start, end, tuple(g for g in _GRAINS if g <= coarsest))
    for tile in tiles:
        if tile.grain == MINUTE and horizons.minute is not None and tile.lo < horizons.minute:
            raise RangeError(
                f"[{tile.lo}, {tile.hi}) is older than the minute horizon {horizons.minute}:"
                " before it only 15-minute buckets remain, so the range must start and end"
                " on a quarter hour there"
            )
    return tiles


def _union(tiles: list[Tile], network: str | None) -> tuple[str, list[object]]:
    parts: list[str] = []
    params: list[object] = []
    for tile in tiles:
        table, key = _TABLES[tile.grain]
        # Each branch is a primary-key range scan: the key starts with the time column.
        sql = (
            f"SELECT {key} AS t, network, app, bytes_up, bytes_down, bytes_up_bg, bytes_down_bg"
            f" FROM {table}"
            f" WHERE {key} >= ? AND {key} < ?"
        )
        params += [tile.lo, tile.hi]
        if network is not None:
            sql += " AND network = ?"
            params.append(network)
        parts.append(sql)
    return " UNION ALL ".join(parts), params


def _group_columns(by: GroupBy) -> str:
    if by == "app":
        return "network, app"
    if by == "network":
        return "network"
    raise ValueError(f"unknown grouping {by!r} (known: app, network)")


def totals(
    conn: sqlite3.Connection,
    start: int,
    end: int,
    *,
    by: GroupBy,
    network: str | None,
    horizons: Horizons,
) -> list[ReportRow]:
    """Per-(network, app) or per-network totals over [start, end), largest first."""
    group = _group_columns(by)
    tiles = plan(start, end, horizons)
    if not tiles:
        return []
    union, params = _union(tiles, network)
    rows = conn.execute(
        f"SELECT {group}, SUM(bytes_up) AS up, SUM(bytes_down) AS down,"
        f" SUM(bytes_up_bg), SUM(bytes_down_bg) FROM ({union})"
        f" GROUP BY {group} ORDER BY up + down DESC, {group}",
        params,
    ).fetchall()
    if by == "app":
        return [ReportRow(r[1], r[0], r[2], r[3], r[4], r[5]) for r in rows]
    return [ReportRow(None, r[0], r[1], r[2], r[3], r[4]) for r in rows]


def series(
    conn: sqlite3.Connection,
    start: int,
    end: int,
    *,
    step_seconds: int,
    by: GroupBy,
    network: str | None,
    horizons: Horizons,
) -> list[SeriesRow]:
    """Totals per step [start + k*step, start + (k+1)*step) ∩ [start, end), sparse, in order.

    Only steps and groups with traffic appear; a chart fills the gaps with zeros.
    """
    group = _group_columns(by)
    if not isinstance(step_seconds, int) or step_seconds <= 0 or step_seconds % MINUTE:
        raise RangeError(
            f"step_seconds={step_seconds!r} must be a positive whole number of minutes"
        )
    # A stored row may only be used if no step boundary cuts through it: its grain must
    # divide both the step and the first boundary.
    coarsest = max((g for g in _GRAINS if step_seconds % g == 0 and start % g == 0), default=MINUTE)
    tiles = plan(start, end, horizons, coarsest=coarsest)
    if not tiles:
        return []
    union, params = _union(tiles, network)
    rows = conn.execute(
        f"SELECT ? + (t - ?) / ? * ? AS step, {group}, SUM(bytes_up), SUM(bytes_down),"
        f" SUM(bytes_up_bg), SUM(bytes_down_bg)"
        f" FROM ({union}) GROUP BY step, {group} ORDER BY step, {group}",
        [start, start, step_seconds, step_seconds, *params],
    ).fetchall()
    if by == "app":
        return [SeriesRow(r[2], r[1], r[3], r[4], r[5], r[6], start=r[0]) for r in rows]
    return [SeriesRow(None, r[1], r[2], r[3], r[4], r[5], start=r[0]) for r in rows]
