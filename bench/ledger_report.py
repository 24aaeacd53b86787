"""Benchmark: a month report over a ledger holding a year of usage for 200 apps.

Target (docs/DESIGN.md): "month report over a year of per-minute data for 200 apps ≤ 50 ms".

A year of raw minute rows for 200 apps would be 105 million rows; the ledger never holds
that, because minute rows expire. This builds what retention keeps:

* the last `--minute-days` (35) days as minute rows, plus their 15-minute buckets and UTC days;
* the `--bucket-days` (365) days before `--now` as 15-minute buckets and UTC days.

Activity model (an assumption, stated so the figures can be judged): each app is active in a
given quarter hour with probability 0.25 and, in an active quarter, in each minute with
probability 0.4, so every app is active in 10% of minutes, in bursts. Each active
(app, quarter) uses one network, wwan0 (70%) or wlan0. Bytes per active minute are
log-uniform between 100 B and 1 MB down, a tenth of that up.

The timed query is what `meterguard report --month` does: open the ledger read-only (as
the CLI does beside the running daemon) and ask for per-(network, app) totals of a calendar
month in the plan's zone. Run: `.venv/bin/python bench/ledger_report.py` (add --help).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from meterguard.ledger import Ledger, UsageDelta, period_seconds

MIN, Q, DAY = 60, 900, 86_400
P_QUARTER = 0.25
P_MINUTE_IN_ACTIVE_QUARTER = 0.4


def machine_info() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"machine: {model}; nproc={usable}; {platform.system()} {platform.release()};"
        f" Python {platform.python_version()}; SQLite {sqlite3.sqlite_version}"
    )


def progress(label: str, done: int, total: int, rows: int) -> None:
    sys.stderr.write(f"\r{label}: {done}/{total} days, {rows:,} rows ")
    sys.stderr.flush()


def minute_bytes(rng: random.Random) -> tuple[int, int]:
    down = int(math.exp(rng.uniform(math.log(100), math.log(1e6))))
    return down // 10, down


Row = tuple[int, str, str, int, int]


def generate(
    rng: random.Random, apps: list[str], first_bucket: int, minute_from: int, now: int
) -> Iterator[tuple[int, list[Row], list[Row]]]:
    """Per quarter: (bucket, its bucket rows, its minute rows if inside minute retention)."""
    for bucket in range(first_bucket, now // Q * Q, Q):
        q_rows: list[Row] = []
        m_rows: list[Row] = []
        for app in apps:
            if rng.random() >= P_QUARTER:
                continue
            network = "wwan0" if rng.random() < 0.7 else "wlan0"
            up = down = 0
            for minute in range(bucket, bucket + Q, MIN):
                if rng.random() < P_MINUTE_IN_ACTIVE_QUARTER:
                    u, d = minute_bytes(rng)
                    up, down = up + u, down + d
                    if bucket >= minute_from:
                        m_rows.append((minute, network, app, u, d))
            if up or down:
                q_rows.append((bucket, network, app, up, down))
        yield bucket, q_rows, m_rows


def build(
    path: Path, *, apps: int, minute_days: int, bucket_days: int, now: int, seed: int
) -> None:
    Ledger.open(path).close()  # creates the current schema through the real migrations
    names = [f"app{i:03d}" for i in range(apps)]
    rng = random.Random(seed)
    first_bucket = (now - bucket_days * DAY) // DAY * DAY
    minute_from = (now - minute_days * DAY) // Q * Q
    conn = sqlite3.connect(path, isolation_level=None)
    # Bulk load only: the daemon never runs like this.
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("BEGIN")
    total_days = (now - first_bucket + DAY - 1) // DAY
    rows = 0
    for bucket, q_rows, m_rows in generate(rng, names, first_bucket, minute_from, now):
        # Named columns: later schema versions add columns (v5: the background share).
        conn.executemany("INSERT INTO usage_q15 (bucket, network, app, bytes_up, bytes_down)"
                         " VALUES (?, ?, ?, ?, ?)", q_rows)
        conn.executemany("INSERT INTO usage_minute (minute, network, app, bytes_up, bytes_down)"
                         " VALUES (?, ?, ?, ?, ?)", m_rows)
        rows += len(q_rows) + len(m_rows)
        if bucket % DAY == 0:
            progress("building", (bucket - first_bucket) // DAY, total_days, rows)
    # The day roll-up is what the writer keeps in step with the buckets; derive it the same
    # way the v3 migration does.
    conn.execute(
        "INSERT INTO usage_day (day, network, app, bytes_up, bytes_down)"
        " SELECT bucket / 86400 * 86400, network, app,"
        " SUM(bytes_up), SUM(bytes_down) FROM usage_q15 GROUP BY 1, network, app"
    )
    conn.executemany(
        "INSERT INTO apps VALUES (?, 'app', ?, ?)", [(n, first_bucket, now) for n in names]
    )
    conn.execute("COMMIT")
    conn.close()
    progress("building", total_days, total_days, rows)
    sys.stderr.write("\n")
    with Ledger.open(path) as ledger:
        ledger.prune(now, minute_days)  # records the minute horizon, as the daemon would


def count(path: Path) -> dict[str, int]:
    conn = sqlite3.connect(path)
    try:
        return {
            t: int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0])
            for t in ("usage_minute", "usage_q15", "usage_day")
        }
    finally:
        conn.close()


def timed(fn: Callable[[], object], runs: int) -> tuple[float, float, float, float]:
    """(first, median, p90, max) in milliseconds."""
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    ordered = sorted(samples)
    return samples[0], statistics.median(samples), ordered[int(0.9 * (runs - 1))], ordered[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, help="build here and keep it (default: temporary)")
    parser.add_argument("--reuse", action="store_true", help="time an existing --db, no build")
    parser.add_argument("--apps", type=int, default=200)
    parser.add_argument("--minute-days", type=int, default=35)
    parser.add_argument("--bucket-days", type=int, default=365)
    parser.add_argument("--runs", type=int, default=31)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--zone", default="Asia/Hong_Kong")
    parser.add_argument("--now", default="2026-06-17T09:30:00+00:00", help="ISO time, aware")
    args = parser.parse_args()
    now_dt = datetime.fromisoformat(args.now).astimezone(UTC)
    now = int(now_dt.timestamp())
    tz = ZoneInfo(args.zone)
    print(machine_info())
    with tempfile.TemporaryDirectory() as tmp:
        path = args.db or Path(tmp) / "ledger.db"
        if not args.reuse:
            if path.exists():
                parser.error(f"{path} exists; pass --reuse to time it")
            t = time.perf_counter()
            build(
                path,
                apps=args.apps,
                minute_days=args.minute_days,
                bucket_days=args.bucket_days,
                now=now,
                seed=args.seed,
            )
            print(f"built in {time.perf_counter() - t:.1f} s")
        rows = count(path)
        print(
            f"ledger: {args.apps} apps, {args.minute_days} days of minute rows,"
            f" {args.bucket_days} days of 15-minute buckets; activity 10% of minutes;"
            f" {path.stat().st_size / 1e6:.0f} MB"
        )
        print("rows: " + ", ".join(f"{t}={n:,}" for t, n in rows.items()))
        report(path, now_dt, tz, args.runs)
        time_record(path, now, args.runs)


def report(path: Path, now: datetime, tz: ZoneInfo, runs: int) -> None:
    print(f"month reports in {tz.key}, {runs} runs each, ms (first / median / p90 / max):")
    with Ledger.open(path, readonly=True) as ledger:
        for offset, label in ((0, "this month"), (-1, "last month"), (-11, "11 months ago")):
            start, end = period_seconds("month", now, tz, offset=offset)
            # The current month is reported up to the last whole minute, as the CLI would.
            end = min(end, int(now.timestamp()) // MIN * MIN)
            result = ledger.totals(start, end, by="app")
            figures = timed(_report_fn(ledger, start, end), runs)
            print(
                f"  {label:14} by app     {len(result):4} rows"
                f" {sum(r.bytes_total for r in result) / 1e9:9.1f} GB "
                + " / ".join(f"{x:6.1f}" for x in figures)
            )
        start, end = period_seconds("month", now, tz, offset=-1)
        figures = timed(lambda: ledger.totals(start, end, by="network"), runs)
        print(
            f"  {'last month':14} by network               "
            + " / ".join(f"{x:6.1f}" for x in figures)
        )
    figures = timed(lambda: _open_and_report(path, start, end), runs)
    print(
        f"  {'last month':14} open+query (a CLI run)    " + " / ".join(f"{x:6.1f}" for x in figures)
    )
    # Why the ledger keeps a UTC-day roll-up: the same month summed from the 15-minute
    # buckets alone reads every bucket row of the month.
    conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
    figures = timed(
        lambda: conn.execute(
            "SELECT network, app, SUM(bytes_up), SUM(bytes_down) FROM usage_q15"
            " WHERE bucket >= ? AND bucket < ? GROUP BY network, app",
            (start, end),
        ).fetchall(),
        runs,
    )
    print(
        f"  {'last month':14} buckets only (no roll-up) " + " / ".join(f"{x:6.1f}" for x in figures)
    )
    # Cross-check the report path against a plain sum over the buckets.
    (raw,) = conn.execute(
        "SELECT SUM(bytes_up + bytes_down) FROM usage_q15 WHERE bucket >= ? AND bucket < ?",
        (start, end),
    ).fetchone()
    conn.close()
    with Ledger.open(path, readonly=True) as ledger:
        got = sum(r.bytes_total for r in ledger.totals(start, end, by="app"))
    print(f"  check: last month via report {got:,} B == plain bucket sum {raw:,} B: {got == raw}")


def _report_fn(ledger: Ledger, start: int, end: int) -> Callable[[], object]:
    return lambda: ledger.totals(start, end, by="app")


def _open_and_report(path: Path, start: int, end: int) -> None:
    with Ledger.open(path, readonly=True) as ledger:
        ledger.totals(start, end, by="app")


def time_record(path: Path, now: int, runs: int) -> None:
    """What one poll costs the daemon: 20 apps' deltas and a snapshot in one commit."""
    deltas = [UsageDelta("wwan0", f"app{i:03d}", 1_000 + i, 10_000 + i) for i in range(20)]
    snapshot = "{" + ", ".join(f'"{i}": {i * 12345}' for i in range(400)) + "}"
    with Ledger.open(path) as ledger:
        at = iter(range(now, now + 10 * runs))
        figures = timed(
            lambda: ledger.record(next(at), deltas, state={"meter.snapshot": snapshot}), runs
        )
    print(
        "record(): 20 deltas + 400-entry snapshot, one commit, ms (first / median / p90 / max): "
        + " / ".join(f"{x:.2f}" for x in figures)
    )


if __name__ == "__main__":
    main()
