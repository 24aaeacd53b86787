"""The ledger's schema and its forward migrations.

The version lives in `PRAGMA user_version`. `MIGRATIONS[n]` takes a database from version n to
n + 1, so a new file and an old file run the same code: every fresh ledger exercises the whole
chain. A writer applies the missing steps in one IMMEDIATE transaction (DDL is transactional
in SQLite), so a crash mid-migration leaves the old version intact. A file from a newer
meterguard is refused before anything is written to it: a user's data is never dropped.

History:
  v1  minute rows, apps, cgroups, kv (the first layout).
  v2  15-minute UTC buckets, back-filled from the minute rows; cgroups.gone_at.
  v3  UTC-day roll-up, back-filled from the buckets, so month reports read few rows.
  v4  events (the append-only alert and action log) and commands (the CLI-to-daemon queue).
  v5  the background share of every usage row (bytes_up_bg, bytes_down_bg): an app's bytes
      moved while it ran as a service or the session was idle or locked. Old rows: 0.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from .model import DAY, QUARTER, LedgerError, SchemaTooNewError, SchemaTooOldError

# "MGRL": marks the file as a meterguard ledger so that a wrong path is never "migrated" into.
APPLICATION_ID = 0x4D47524C


def _v1(conn: sqlite3.Connection) -> None:
    # WITHOUT ROWID with the time first in the key: range scans by time read contiguous pages
    # and the primary key is the only index the reports need.
    conn.execute(
        "CREATE TABLE usage_minute ("
        " minute INTEGER NOT NULL, network TEXT NOT NULL, app TEXT NOT NULL,"
        " bytes_up INTEGER NOT NULL DEFAULT 0, bytes_down INTEGER NOT NULL DEFAULT 0,"
        " PRIMARY KEY (minute, network, app)) WITHOUT ROWID"
    )
    conn.execute(
        "CREATE TABLE apps (app TEXT PRIMARY KEY, kind TEXT,"
        " first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL)"
    )
    conn.execute(
        "CREATE TABLE cgroups (mark INTEGER PRIMARY KEY, cgroup_id INTEGER NOT NULL,"
        " path TEXT NOT NULL, app TEXT NOT NULL, kind TEXT NOT NULL,"
        " first_seen INTEGER NOT NULL)"
    )
    conn.execute("CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")


def _roll_up_table(name: str, key: str) -> str:
    return (
        f"CREATE TABLE {name} ("
        f" {key} INTEGER NOT NULL, network TEXT NOT NULL, app TEXT NOT NULL,"
        " bytes_up INTEGER NOT NULL DEFAULT 0, bytes_down INTEGER NOT NULL DEFAULT 0,"
        f" PRIMARY KEY ({key}, network, app)) WITHOUT ROWID"
    )


def _v2(conn: sqlite3.Connection) -> None:
    conn.execute(_roll_up_table("usage_q15", "bucket"))
    # v1 had no buckets, so they are built from every minute row still present; from now on
    # the writer adds to both in one transaction and they always agree.
    conn.execute(
        "INSERT INTO usage_q15 (bucket, network, app, bytes_up, bytes_down)"
        f" SELECT minute / {QUARTER} * {QUARTER}, network, app, SUM(bytes_up), SUM(bytes_down)"
        " FROM usage_minute GROUP BY 1, network, app"
    )
    conn.execute("ALTER TABLE cgroups ADD COLUMN gone_at INTEGER")


def _v3(conn: sqlite3.Connection) -> None:
    conn.execute(_roll_up_table("usage_day", "day"))
    conn.execute(
        "INSERT INTO usage_day (day, network, app, bytes_up, bytes_down)"
        f" SELECT bucket / {DAY} * {DAY}, network, app, SUM(bytes_up), SUM(bytes_down)"
        " FROM usage_q15 GROUP BY 1, network, app"
    )


def _v4(conn: sqlite3.Connection) -> None:
    # AUTOINCREMENT, not a plain rowid: ids are never reused even after the newest row is
    # deleted, so a reader following "id > last seen" (events --follow, the desktop agent)
    # can never miss or repeat an event. `key` is UNIQUE but nullable: an alert's key fires
    # once per cycle for ever (across restarts), while keyless events may repeat freely.
    conn.execute(
        "CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER NOT NULL,"
        " kind TEXT NOT NULL, level TEXT NOT NULL"
        " CHECK (level IN ('info', 'warning', 'critical')),"
        " key TEXT UNIQUE, title TEXT NOT NULL, body TEXT NOT NULL,"
        " data TEXT NOT NULL DEFAULT '{}', delivered TEXT NOT NULL DEFAULT '{}')"
    )
    conn.execute(
        "CREATE TABLE commands (id INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER NOT NULL,"
        " kind TEXT NOT NULL, args TEXT NOT NULL DEFAULT '{}',"
        " done_at INTEGER, result TEXT)"
    )
    # The daemon asks for the pending commands on every poll; the partial index keeps that
    # one lookup cheap however long the history of finished commands grows.
    conn.execute("CREATE INDEX commands_pending ON commands (id) WHERE done_at IS NULL")


def _v5(conn: sqlite3.Connection) -> None:
    # Part of bytes_up/bytes_down, not beside them: totals stay what they were, and the
    # foreground share is the difference. History before v5 reads as all foreground.
    for table in ("usage_minute", "usage_q15", "usage_day"):
        for column in ("bytes_up_bg", "bytes_down_bg"):
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0")


Migration = Callable[[sqlite3.Connection], None]
MIGRATIONS: tuple[Migration, ...] = (_v1, _v2, _v3, _v4, _v5)
CURRENT_VERSION = len(MIGRATIONS)


def user_version(conn: sqlite3.Connection) -> int:
    row = conn.execute("PRAGMA user_version").fetchone()
    return int(row[0])


def check_identity(conn: sqlite3.Connection, path: Path) -> int:
    """Return the schema version; refuse a file that is newer or not a meterguard ledger."""
    version = user_version(conn)
    if version > CURRENT_VERSION:
        raise SchemaTooNewError(
            f"{path}: ledger schema version {version} is newer than this meterguard knows"
            f" ({CURRENT_VERSION}); upgrade meterguard. The file was left untouched."
        )
    if version == 0:
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if tables:
            raise LedgerError(f"{path}: an SQLite file that is not a meterguard ledger; refusing")
        return version
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    if app_id != APPLICATION_ID:
        raise LedgerError(
            f"{path}: application_id {app_id:#x} is not a meterguard ledger's; refusing"
        )
    return version


def check_readable(conn: sqlite3.Connection, path: Path) -> None:
    """Refuse a file a read-only connection cannot interpret (readers never migrate)."""
    version = check_identity(conn, path)
    if version < CURRENT_VERSION:
        raise SchemaTooOldError(
            f"{path}: ledger schema version {version} predates this meterguard's"
            f" ({CURRENT_VERSION}); start the daemon once so that it migrates the ledger"
        )


def migrate(conn: sqlite3.Connection, path: Path) -> int:
    """Bring the schema to CURRENT_VERSION; return the version the file had.

    `conn` must be in autocommit mode (isolation_level=None) with no transaction open.
    """
    before = check_identity(conn, path)
    if before == CURRENT_VERSION:
        return before
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Read again under the write lock: another process may have migrated meanwhile.
        version = check_identity(conn, path)
        for step in MIGRATIONS[version:]:
            step(conn)
            version += 1
            conn.execute(f"PRAGMA user_version = {version}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return before
