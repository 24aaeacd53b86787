"""Writing the ledger: atomic records, state, apps, cgroups and marks, readers beside a writer."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meterguard.ledger import (
    AppRow,
    Ledger,
    LedgerError,
    ReportRow,
    UsageDelta,
)

T0 = 1_767_225_600  # 2026-01-01T00:00Z, a UTC midnight
DAY = 86_400


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.db"


@pytest.fixture
def ledger(path: Path) -> Iterator[Ledger]:
    with Ledger.open(path) as led:
        yield led


def rows(path: Path, table: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        # The first five columns: time, network, app, bytes up, bytes down (v5 adds the
        # background shares after them; test_background_share covers those).
        return [r[:5] for r in conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2, 3")]
    finally:
        conn.close()


def test_record_adds_into_minute_bucket_and_day_rows(ledger: Ledger, path: Path) -> None:
    ledger.record(T0 + 61, [UsageDelta("wwan0", "firefox", 10, 100)])
    ledger.record(T0 + 119, [UsageDelta("wwan0", "firefox", 1, 2)])
    ledger.record(T0 + 120, [UsageDelta("wwan0", "firefox", 5, 5)])
    assert rows(path, "usage_minute") == [
        (T0 + 60, "wwan0", "firefox", 11, 102),
        (T0 + 120, "wwan0", "firefox", 5, 5),
    ]
    assert rows(path, "usage_q15") == [(T0, "wwan0", "firefox", 16, 107)]
    assert rows(path, "usage_day") == [(T0, "wwan0", "firefox", 16, 107)]


def test_zero_deltas_are_skipped(ledger: Ledger, path: Path) -> None:
    ledger.record(T0, [UsageDelta("wwan0", "idle", 0, 0), UsageDelta("wwan0", "busy", 0, 1)])
    assert [r[2] for r in rows(path, "usage_minute")] == ["busy"]
    assert [a.app for a in ledger.apps()] == ["busy"]


def test_negative_delta_is_refused_before_anything_is_written(ledger: Ledger, path: Path) -> None:
    with pytest.raises(ValueError, match="bytes_down"):
        ledger.record(T0, [UsageDelta("wwan0", "ok", 5, 5), UsageDelta("wwan0", "bad", 1, -1)])
    assert rows(path, "usage_minute") == []


def test_apps_track_first_and_last_seen_and_kind(ledger: Ledger) -> None:
    ledger.record(T0 + 10, [UsageDelta("wwan0", "firefox", 1, 1)])
    ledger.record(T0 + 500, [UsageDelta("wlan0", "firefox", 1, 1)], app_kinds={"firefox": "app"})
    ledger.record(T0 + 400, [UsageDelta("wwan0", "firefox", 1, 1)])  # late, out of order
    ledger.record(T0 + 600, [UsageDelta("wwan0", "apt", 0, 9)], app_kinds={"apt": "service"})
    assert ledger.apps() == [
        AppRow(app="apt", kind="service", first_seen=T0 + 600, last_seen=T0 + 600),
        AppRow(app="firefox", kind="app", first_seen=T0 + 10, last_seen=T0 + 500),
    ]


def test_usage_and_state_commit_together_or_not_at_all(ledger: Ledger, path: Path) -> None:
    ledger.record(T0, [UsageDelta("wwan0", "a", 1, 1)], state={"meter.snapshot": "1"})
    # Make the kv write fail inside the transaction, after the usage rows were written.
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TRIGGER boom BEFORE UPDATE ON kv WHEN NEW.value = 'fail'"
        " BEGIN SELECT RAISE(ABORT, 'injected'); END"
    )
    conn.commit()
    conn.close()
    with pytest.raises(sqlite3.DatabaseError, match="injected"):
        ledger.record(T0 + 60, [UsageDelta("wwan0", "b", 5, 5)], state={"meter.snapshot": "fail"})
    assert ledger.totals(T0, T0 + 900, by="app") == [
        ReportRow(app="a", network="wwan0", bytes_up=1, bytes_down=1)
    ]
    assert [a.app for a in ledger.apps()] == ["a"]
    assert ledger.get_state("meter.snapshot") == "1"
    # The ledger is still usable after the rollback.
    ledger.record(T0 + 60, [UsageDelta("wwan0", "b", 5, 5)], state={"meter.snapshot": "2"})
    assert ledger.get_state("meter.snapshot") == "2"


def test_state_alone_is_written_and_reserved_keys_refused(ledger: Ledger) -> None:
    assert ledger.get_state("meter.snapshot") is None
    ledger.record(T0, [], state={"meter.snapshot": '{"x": 1}'})
    assert ledger.get_state("meter.snapshot") == '{"x": 1}'
    ledger.put_state("meter.snapshot", "{}")
    assert ledger.get_state("meter.snapshot") == "{}"
    with pytest.raises(ValueError, match="prefix"):
        ledger.put_state("ledger.minute_horizon", "0")
    with pytest.raises(ValueError, match="prefix"):
        ledger.record(T0, [], state={"ledger.mark_high_water": "0"})


def test_explicit_transaction_groups_writes_and_rolls_back(ledger: Ledger) -> None:
    with pytest.raises(RuntimeError), ledger.transaction():
        ledger.record(T0, [UsageDelta("wwan0", "a", 1, 1)])
        ledger.put_state("meter.snapshot", "lost")
        raise RuntimeError("the daemon failed between the two writes")
    assert ledger.totals(T0, T0 + 900, by="app") == []
    assert ledger.get_state("meter.snapshot") is None
    with ledger.transaction():
        ledger.record(T0, [UsageDelta("wwan0", "a", 1, 1)])
        ledger.put_state("meter.snapshot", "kept")
    assert ledger.get_state("meter.snapshot") == "kept"


def test_wal_mode_is_on(ledger: Ledger, path: Path) -> None:
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_reader_sees_each_commit_and_never_a_half_transaction(ledger: Ledger, path: Path) -> None:
    ledger.record(T0, [UsageDelta("wwan0", "a", 1, 0)])
    with Ledger.open(path, readonly=True) as reader:
        assert reader.readonly
        assert reader.totals(T0, T0 + DAY, by="network")[0].bytes_up == 1
        with ledger.transaction():
            ledger.record(T0 + 60, [UsageDelta("wwan0", "a", 10, 0)])
            # Not committed yet: the reader is not blocked and sees the last commit.
            assert reader.totals(T0, T0 + DAY, by="network")[0].bytes_up == 1
        assert reader.totals(T0, T0 + DAY, by="network")[0].bytes_up == 11


def test_readonly_refuses_writes_and_missing_files(path: Path, tmp_path: Path) -> None:
    Ledger.open(path).close()
    with Ledger.open(path, readonly=True) as reader:
        with pytest.raises(LedgerError, match="read-only"):
            reader.record(T0, [UsageDelta("wwan0", "a", 1, 1)])
        with pytest.raises(LedgerError, match="read-only"):
            reader.allocate_mark()
    missing = tmp_path / "nope.db"
    with pytest.raises(LedgerError, match="no ledger"):
        Ledger.open(missing, readonly=True)
    assert not missing.exists()


def test_concurrent_readers_while_the_daemon_writes(ledger: Ledger, path: Path) -> None:
    stop = threading.Event()
    errors: list[BaseException] = []

    def read_loop() -> None:
        last = 0
        try:
            while not stop.is_set():
                with Ledger.open(path, readonly=True) as reader:
                    by_app = reader.totals(T0, T0 + DAY, by="app")
                    by_net = reader.totals(T0, T0 + DAY, by="network")
                    total = sum(r.bytes_total for r in by_app)
                    # One snapshot per query: both groupings see the same commits or the
                    # later one sees more, never less.
                    assert sum(r.bytes_total for r in by_net) >= total >= last
                    last = total
        except BaseException as exc:  # surfaced in the main thread below
            errors.append(exc)

    readers = [threading.Thread(target=read_loop) for _ in range(3)]
    for thread in readers:
        thread.start()
    for i in range(300):
        ledger.record(T0 + i, [UsageDelta("wwan0", "a", 1, 1), UsageDelta("wlan0", "b", 2, 2)])
    stop.set()
    for thread in readers:
        thread.join()
    assert errors == []
    with Ledger.open(path, readonly=True) as reader:
        assert sum(r.bytes_total for r in reader.totals(T0, T0 + DAY, by="app")) == 300 * 6


def _write_until_killed(path: Path) -> None:
    with Ledger.open(path) as ledger:
        total = 0
        for i in range(10**9):
            delta = 1_000 + i % 7
            total += delta
            ledger.record(
                T0 + i,
                [UsageDelta("wwan0", "a", delta, 0)],
                state={"meter.snapshot": json.dumps({"a": total})},
            )


def test_kill_9_leaves_ledger_and_snapshot_in_agreement(path: Path) -> None:
    Ledger.open(path).close()
    child = multiprocessing.get_context("fork").Process(target=_write_until_killed, args=(path,))
    child.start()
    try:
        deadline = time.monotonic() + 30
        with Ledger.open(path, readonly=True) as reader:
            while (
                reader.get_state("meter.snapshot") is None
                or json.loads(reader.get_state("meter.snapshot") or "{}")["a"] < 200_000
            ):
                assert time.monotonic() < deadline, "the writer never got going"
                time.sleep(0.01)
    finally:
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        child.join()
    assert child.exitcode == -signal.SIGKILL
    with Ledger.open(path) as ledger:
        snapshot = json.loads(ledger.get_state("meter.snapshot") or "{}")
        [row] = ledger.totals(T0, T0 + 30 * DAY, by="app")
        assert row.bytes_up == snapshot["a"] >= 200_000


def test_marks_start_at_one_and_are_never_reused_after_reopen(path: Path) -> None:
    with Ledger.open(path) as ledger:
        assert ledger.allocate_mark() == 1
        second = ledger.allocate_mark()
        ledger.record_cgroup(mark=second, cgroup_id=11, path="a.scope", app="a", kind="app", at=T0)
        # Allocated, maybe already in the kernel's map, but the daemon died before recording.
        assert ledger.allocate_mark() == 3
    with Ledger.open(path) as ledger:
        assert ledger.allocate_mark() == 4
        ledger.record_cgroup(mark=40, cgroup_id=12, path="b.scope", app="b", kind="app", at=T0)
        assert ledger.allocate_mark() == 41


def test_cgroups_are_kept_once_and_marked_gone(ledger: Ledger) -> None:
    mark = ledger.allocate_mark()
    ledger.record_cgroup(mark=mark, cgroup_id=99, path="x/app-a.scope", app="a", kind="app", at=5)
    ledger.record_cgroup(mark=mark, cgroup_id=99, path="x/app-a.scope", app="a", kind="app", at=9)
    with pytest.raises(LedgerError, match="already belongs"):
        ledger.record_cgroup(mark=mark, cgroup_id=100, path="x/b.scope", app="b", kind="app", at=9)
    with pytest.raises(ValueError, match="mark"):
        ledger.record_cgroup(mark=0, cgroup_id=1, path="y", app="y", kind="app", at=9)
    ledger.mark_cgroup_gone(mark, 20)
    ledger.mark_cgroup_gone(mark, 30)  # noticed again later: the first time stays
    [row] = ledger.cgroups()
    assert (row.mark, row.cgroup_id, row.path, row.first_seen, row.gone_at) == (
        mark,
        99,
        "x/app-a.scope",
        5,
        20,
    )
    with pytest.raises(KeyError):
        ledger.mark_cgroup_gone(mark + 1, 20)


def test_report_rows_as_dict(ledger: Ledger) -> None:
    ledger.record(T0, [UsageDelta("wwan0", "a", 3, 4)])
    [row] = ledger.totals(T0, T0 + 900, by="app")
    assert row.as_dict() == {
        "app": "a",
        "network": "wwan0",
        "bytes_up": 3,
        "bytes_down": 4,
        "bytes_total": 7,
        "bytes_foreground": 7,
        "bytes_background": 0,
    }
    [net] = ledger.totals(T0, T0 + 900, by="network")
    assert net.as_dict()["app"] is None


def test_background_share_is_kept_and_totalled(ledger: Ledger) -> None:
    ledger.record(T0, [UsageDelta("wwan0", "sync", 30, 40, bytes_up_bg=30, bytes_down_bg=10)])
    ledger.record(T0 + 60, [UsageDelta("wwan0", "sync", 5, 5, bytes_up_bg=0, bytes_down_bg=5)])
    [row] = ledger.totals(T0, T0 + 900, by="app")
    assert (row.bytes_up_bg, row.bytes_down_bg) == (30, 15)
    assert row.as_dict()["bytes_foreground"] == 80 - 45
    with pytest.raises(ValueError, match="background share"):
        ledger.record(T0, [UsageDelta("wwan0", "sync", 1, 1, bytes_up_bg=2)])
