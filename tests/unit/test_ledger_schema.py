"""Schema versions: forward migration keeps every byte; newer or foreign files are refused."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from meterguard.ledger import (
    CURRENT_VERSION,
    Ledger,
    LedgerError,
    ReportRow,
    SchemaTooNewError,
    SchemaTooOldError,
)
from meterguard.ledger.schema import APPLICATION_ID, MIGRATIONS

DAY = 86_400
T0 = 1_767_225_600  # 2026-01-01T00:00Z


def write_v1_fixture(path: Path) -> None:
    """The v1 layout, written by hand as the first release would have left it."""
    conn = sqlite3.connect(path)
    conn.executescript(
        f"""
        CREATE TABLE usage_minute (
            minute INTEGER NOT NULL, network TEXT NOT NULL, app TEXT NOT NULL,
            bytes_up INTEGER NOT NULL DEFAULT 0, bytes_down INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (minute, network, app)) WITHOUT ROWID;
        CREATE TABLE apps (app TEXT PRIMARY KEY, kind TEXT,
            first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL);
        CREATE TABLE cgroups (mark INTEGER PRIMARY KEY, cgroup_id INTEGER NOT NULL,
            path TEXT NOT NULL, app TEXT NOT NULL, kind TEXT NOT NULL,
            first_seen INTEGER NOT NULL);
        CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        PRAGMA application_id = {APPLICATION_ID};
        PRAGMA user_version = 1;
        """
    )
    rows = [
        # Two minutes in one bucket, one in the next, one on the next UTC day.
        (T0 + 60, "wwan0", "firefox", 100, 1_000),
        (T0 + 120, "wwan0", "firefox", 10, 20),
        (T0 + 900, "wwan0", "firefox", 1, 2),
        (T0 + DAY + 300, "wwan0", "packagekit", 5, 50_000),
        (T0 + 120, "wlan0", "firefox", 7, 70),
    ]
    conn.executemany("INSERT INTO usage_minute VALUES (?, ?, ?, ?, ?)", rows)
    conn.execute("INSERT INTO apps VALUES ('firefox', 'app', ?, ?)", (T0 + 60, T0 + 900))
    conn.execute("INSERT INTO apps VALUES ('packagekit', 'service', ?, ?)", (T0 + DAY, T0 + DAY))
    conn.execute(
        "INSERT INTO cgroups VALUES (7, 4242, 'user.slice/app-firefox.scope', 'firefox', 'app', ?)",
        (T0,),
    )
    conn.execute("INSERT INTO kv VALUES ('meter.snapshot', '{\"wwan0\": 123}')")
    conn.commit()
    conn.close()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def header(path: Path) -> tuple[int, int, str]:
    conn = sqlite3.connect(path)
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        return int(version), int(app_id), str(mode)
    finally:
        conn.close()


def test_every_version_has_exactly_one_step() -> None:
    assert len(MIGRATIONS) == CURRENT_VERSION >= 2


def test_new_file_gets_current_version_identity_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    Ledger.open(path).close()
    assert header(path) == (CURRENT_VERSION, APPLICATION_ID, "wal")


def test_v1_migrates_forward_with_every_row_kept(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    write_v1_fixture(path)
    with Ledger.open(path) as ledger:
        assert header(path)[0] == CURRENT_VERSION
        expected = [
            ReportRow(app="packagekit", network="wwan0", bytes_up=5, bytes_down=50_000),
            ReportRow(app="firefox", network="wwan0", bytes_up=111, bytes_down=1_022),
            ReportRow(app="firefox", network="wlan0", bytes_up=7, bytes_down=70),
        ]
        assert ledger.totals(T0, T0 + 2 * DAY, by="app") == expected
        assert [(a.app, a.kind, a.first_seen, a.last_seen) for a in ledger.apps()] == [
            ("firefox", "app", T0 + 60, T0 + 900),
            ("packagekit", "service", T0 + DAY, T0 + DAY),
        ]
        [cgroup] = ledger.cgroups()
        assert (cgroup.mark, cgroup.cgroup_id, cgroup.gone_at) == (7, 4242, None)
        assert ledger.get_state("meter.snapshot") == '{"wwan0": 123}'
        # The buckets and days were back-filled from the minute rows: with every minute row
        # expired, the same totals come from them alone.
        ledger.prune(T0 + 100 * DAY, 35)
        assert ledger.totals(T0, T0 + 2 * DAY, by="app") == expected
        assert ledger.totals(T0 + 900, T0 + DAY, by="network") == [
            ReportRow(app=None, network="wwan0", bytes_up=1, bytes_down=2)
        ]
        # A migrated ledger keeps working: new usage and new marks go on top.
        assert ledger.allocate_mark() == 8


def test_a_failed_migration_leaves_the_old_version_and_data(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    write_v1_fixture(path)
    conn = sqlite3.connect(path)
    # A table in the way makes the last step (v2 -> v3) fail after v1 -> v2 has run: the
    # whole chain must roll back, not stop at v2.
    conn.execute("CREATE TABLE usage_day (x)")
    conn.commit()
    conn.close()
    with pytest.raises(LedgerError, match="usage_day"):
        Ledger.open(path)
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM usage_minute").fetchone()[0] == 5
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert "usage_q15" not in names
    finally:
        conn.close()


def test_newer_version_is_refused_and_the_file_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE usage_minute_v9 (x)")
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute(f"PRAGMA user_version = {CURRENT_VERSION + 1}")
    conn.commit()
    conn.close()
    before = digest(path)
    with pytest.raises(SchemaTooNewError, match="newer"):
        Ledger.open(path)
    with pytest.raises(SchemaTooNewError, match="newer"):
        Ledger.open(path, readonly=True)
    assert digest(path) == before
    assert header(path) == (CURRENT_VERSION + 1, APPLICATION_ID, "delete")


def test_foreign_sqlite_file_is_refused_and_untouched(tmp_path: Path) -> None:
    path = tmp_path / "photos.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE photos (name TEXT)")
    conn.commit()
    conn.close()
    before = digest(path)
    with pytest.raises(LedgerError, match="not a meterguard ledger"):
        Ledger.open(path)
    assert digest(path) == before


def test_other_application_id_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x)")
    conn.execute("PRAGMA application_id = 1234")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    with pytest.raises(LedgerError, match="application_id"):
        Ledger.open(path)


def test_not_a_database_is_a_ledger_error(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    path.write_bytes(b"this is not SQLite" * 100)
    with pytest.raises(LedgerError, match=str(path)):
        Ledger.open(path)


def test_readonly_open_never_migrates(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    write_v1_fixture(path)
    before = digest(path)
    with pytest.raises(SchemaTooOldError, match="start the daemon"):
        Ledger.open(path, readonly=True)
    assert digest(path) == before
    assert header(path)[0] == 1


def test_reopening_a_current_ledger_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    Ledger.open(path).close()
    conn = sqlite3.connect(path)
    tables_before = sorted(conn.execute("SELECT name, sql FROM sqlite_master").fetchall())
    conn.close()
    Ledger.open(path).close()
    conn = sqlite3.connect(path)
    assert sorted(conn.execute("SELECT name, sql FROM sqlite_master").fetchall()) == tables_before
    conn.close()
