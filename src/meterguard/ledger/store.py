"""The ledger: one SQLite file in WAL mode, written by the daemon, read by everyone else.

Durability model: `synchronous=NORMAL` in WAL mode survives `kill -9` (every commit is in the
WAL file before COMMIT returns) but may lose the last commits on power loss. That is enough
because the kernel holds the counters: after a restart the meter diffs the kernel's counters
against the snapshot stored *in the same transaction* as the usage rows, so the ledger and
the snapshot always agree and no byte is counted twice or lost.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from . import query, schema
from .events import EventLog
from .model import (
    DAY,
    MINUTE,
    QUARTER,
    AppRow,
    CgroupRow,
    GroupBy,
    Horizons,
    LedgerError,
    PruneResult,
    ReportRow,
    SeriesRow,
    UsageDelta,
    check_delta,
    check_int,
)

# kv keys the ledger keeps for itself; the daemon's own state may use any other key.
RESERVED_PREFIX = "ledger."
_MINUTE_HORIZON = "ledger.minute_horizon"
_BUCKET_HORIZON = "ledger.bucket_horizon"
_MARK_HIGH_WATER = "ledger.mark_high_water"

# A conntrack mark is 32 bits, and 0 means "no mark" to the ruleset.
MAX_MARK = 0xFFFF_FFFF

_BUSY_TIMEOUT_MS = 5_000

_UPSERT = {
    table: (
        f"INSERT INTO {table}"
        f" ({key}, network, app, bytes_up, bytes_down, bytes_up_bg, bytes_down_bg)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)"
        f" ON CONFLICT ({key}, network, app) DO UPDATE SET"
        " bytes_up = bytes_up + excluded.bytes_up,"
        " bytes_down = bytes_down + excluded.bytes_down,"
        " bytes_up_bg = bytes_up_bg + excluded.bytes_up_bg,"
        " bytes_down_bg = bytes_down_bg + excluded.bytes_down_bg"
    )
    for table, key in (("usage_minute", "minute"), ("usage_q15", "bucket"), ("usage_day", "day"))
}


def _check_state_key(key: str) -> None:
    if not isinstance(key, str) or not key:
        raise ValueError(f"state key must be a non-empty str, got {key!r}")
    if key.startswith(RESERVED_PREFIX):
        raise ValueError(
            f"state key {key!r} uses the prefix {RESERVED_PREFIX!r} kept for the ledger"
        )


class Ledger(EventLog):
    """Usage, identities and daemon state in one SQLite file. One instance per thread.

    The event log and the command queue (`add_event`, `enqueue_command` ...) come from
    `EventLog`, kept in events.py so that neither module grows past a screenful of concerns.
    """

    def __init__(self, conn: sqlite3.Connection, path: Path, *, readonly: bool) -> None:
        # Use Ledger.open(); this only wraps a connection that is already checked.
        self._conn = conn
        self._path = path
        self._readonly = readonly
        self._depth = 0

    @classmethod
    def open(cls, path: Path, *, readonly: bool = False) -> Ledger:
        """Open (creating and migrating if writable) the ledger at `path`.

        Read-only opens use `mode=ro` and never write, so the CLI can read while the daemon
        writes; they refuse a schema that still needs migrating.
        """
        path = Path(path)
        if readonly:
            if not path.exists():
                raise LedgerError(f"{path}: no ledger here (has the daemon run yet?)")
            conn = sqlite3.connect(
                path.absolute().as_uri() + "?mode=ro", uri=True, isolation_level=None
            )
        else:
            conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            if readonly:
                schema.check_readable(conn, path)
            else:
                # Identity first: a newer or foreign file must not even get its journal mode
                # changed.
                schema.check_identity(conn, path)
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise LedgerError(f"{path}: could not switch to WAL (journal_mode={mode})")
                conn.execute("PRAGMA synchronous = NORMAL")
                schema.migrate(conn, path)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise LedgerError(f"{path}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        return cls(conn, path, readonly=readonly)

    @property
    def path(self) -> Path:
        return self._path

    @property
    def readonly(self) -> bool:
        return self._readonly

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- transactions ---------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction; writes made inside it (record, put_state...) join it."""
        # IMMEDIATE takes the write lock up front, so a writer never has to upgrade a read
        # lock mid-transaction (the source of SQLITE_BUSY that busy_timeout cannot fix).
        if self._readonly:
            raise LedgerError(f"{self._path}: opened read-only")
        with self._nested("BEGIN IMMEDIATE"):
            yield

    @contextmanager
    def _snapshot(self) -> Iterator[None]:
        # Several reads that must agree (horizons, then rows) see one WAL snapshot, even if
        # the daemon prunes between them.
        with self._nested("BEGIN DEFERRED"):
            yield

    @contextmanager
    def _nested(self, begin: str) -> Iterator[None]:
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._conn.execute(begin)
        self._depth = 1
        try:
            yield
        except BaseException:
            self._depth = 0
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise
        self._depth = 0
        try:
            self._conn.execute("COMMIT")
        except BaseException:
            # A failed COMMIT leaves the transaction open; close it so the next one can begin.
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise

    # -- usage ----------------------------------------------------------------------------

    def record(
        self,
        at: int,
        deltas: Sequence[UsageDelta],
        *,
        state: Mapping[str, str] | None = None,
        app_kinds: Mapping[str, str] | None = None,
    ) -> None:
        """Add `deltas` at unix second `at` and write `state`, all in one transaction.

        Each delta is added to its minute row, its 15-minute bucket and its UTC day, and its
        app's last_seen moves to `at` (a new app gets first_seen and its kind from
        `app_kinds`). Zero deltas are skipped.
        """
        check_int("at", at, minimum=0)
        for delta in deltas:
            check_delta(delta)
        moved = [d for d in deltas if d.bytes_up or d.bytes_down]
        state = dict(state or {})
        for key, value in state.items():
            _check_state_key(key)
            if not isinstance(value, str):
                raise TypeError(f"state value for {key!r} must be str (JSON text), not {value!r}")
        if not moved and not state:
            return
        kinds = app_kinds or {}
        with self.transaction():
            for table, grain in (
                ("usage_minute", MINUTE),
                ("usage_q15", QUARTER),
                ("usage_day", DAY),
            ):
                slot = at // grain * grain
                self._conn.executemany(
                    _UPSERT[table],
                    [
                        (slot, d.network, d.app, d.bytes_up, d.bytes_down, d.bytes_up_bg,
                         d.bytes_down_bg)
                        for d in moved
                    ],
                )
            self._conn.executemany(
                "INSERT INTO apps (app, kind, first_seen, last_seen) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (app) DO UPDATE SET kind = coalesce(excluded.kind, kind),"
                " first_seen = min(first_seen, excluded.first_seen),"
                " last_seen = max(last_seen, excluded.last_seen)",
                [(app, kinds.get(app), at, at) for app in sorted({d.app for d in moved})],
            )
            self._put_kv(state.items())

    def prune(
        self, now: int, minute_retention_days: int, *, bucket_retention_days: int = 0
    ) -> PruneResult:
        """Drop minute rows older than the retention; buckets too if their retention > 0.

        The minute horizon is rounded down to a quarter hour so that the data before it,
        which only buckets answer, always ends on a bucket boundary. The bucket horizon is
        rounded down to a UTC day so that buckets and day roll-ups expire together.
        """
        check_int("now", now, minimum=0)
        check_int("minute_retention_days", minute_retention_days, minimum=1)
        check_int("bucket_retention_days", bucket_retention_days, minimum=0)
        if bucket_retention_days and bucket_retention_days < minute_retention_days:
            raise ValueError("buckets must be kept at least as long as minute rows")
        bucket_rows = 0
        with self.transaction():
            old = self.horizons()
            # A horizon never moves back: the rows before it are gone even if the clock is.
            minute_h = max(
                (now - minute_retention_days * DAY) // QUARTER * QUARTER, old.minute or 0
            )
            minute_rows = self._conn.execute(
                "DELETE FROM usage_minute WHERE minute < ?", (minute_h,)
            ).rowcount
            self._put_kv([(_MINUTE_HORIZON, str(minute_h))])
            if bucket_retention_days:
                bucket_h = max((now - bucket_retention_days * DAY) // DAY * DAY, old.bucket or 0)
                for table, key in (("usage_q15", "bucket"), ("usage_day", "day")):
                    bucket_rows += self._conn.execute(
                        f"DELETE FROM {table} WHERE {key} < ?", (bucket_h,)
                    ).rowcount
                self._put_kv([(_BUCKET_HORIZON, str(bucket_h))])
        return PruneResult(minute_rows=minute_rows, bucket_rows=bucket_rows)

    def horizons(self) -> Horizons:
        minute = self.get_state(_MINUTE_HORIZON)
        bucket = self.get_state(_BUCKET_HORIZON)
        return Horizons(
            minute=None if minute is None else int(minute),
            bucket=None if bucket is None else int(bucket),
        )

    def totals(
        self, start: int, end: int, *, by: GroupBy, network: str | None = None
    ) -> list[ReportRow]:
        """Totals over [start, end) (unix seconds UTC, whole minutes), largest first.

        by="app" gives one row per (network, app). Raises RangeError where the stored grain
        cannot answer exactly (see `query.plan`).
        """
        with self._snapshot():
            return query.totals(
                self._conn, start, end, by=by, network=network, horizons=self.horizons()
            )

    def series(
        self,
        start: int,
        end: int,
        *,
        step_seconds: int,
        by: GroupBy,
        network: str | None = None,
    ) -> list[SeriesRow]:
        """Per-step totals for charts and `top`; sparse, ordered by step then group."""
        with self._snapshot():
            return query.series(
                self._conn,
                start,
                end,
                step_seconds=step_seconds,
                by=by,
                network=network,
                horizons=self.horizons(),
            )

    def apps(self) -> list[AppRow]:
        rows = self._conn.execute(
            "SELECT app, kind, first_seen, last_seen FROM apps ORDER BY app"
        ).fetchall()
        return [AppRow(app=r[0], kind=r[1], first_seen=r[2], last_seen=r[3]) for r in rows]

    # -- daemon state ---------------------------------------------------------------------

    def get_state(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def put_state(self, key: str, value: str) -> None:
        """Store `value` (e.g. JSON text); joins an open `transaction()` if there is one."""
        _check_state_key(key)
        if not isinstance(value, str):
            raise TypeError(f"state value for {key!r} must be str (JSON text), not {value!r}")
        with self.transaction():
            self._put_kv([(key, value)])

    def _put_kv(self, items: Iterable[tuple[str, str]]) -> None:
        self._conn.executemany(
            "INSERT INTO kv (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            items,
        )

    # -- cgroups and marks ----------------------------------------------------------------

    def allocate_mark(self) -> int:
        """A conntrack mark never handed out before, persisted before it is returned.

        The high-water mark is stored even if the caller dies before `record_cgroup`, because
        the mark may already be in the kernel's map and on live conntrack entries. (A power
        loss can forget the last commit, but it also empties conntrack.)
        """
        with self.transaction():
            stored = self.get_state(_MARK_HIGH_WATER)
            (max_mark,) = self._conn.execute(
                "SELECT coalesce(max(mark), 0) FROM cgroups"
            ).fetchone()
            mark = max(int(stored or 0), int(max_mark)) + 1
            if mark > MAX_MARK:
                raise LedgerError("all 2**32 - 1 conntrack marks have been used")
            self._put_kv([(_MARK_HIGH_WATER, str(mark))])
        return mark

    def record_cgroup(
        self, *, mark: int, cgroup_id: int, path: str, app: str, kind: str, at: int
    ) -> None:
        """Remember a cgroup the first time it is seen (short-lived ones vanish quickly).

        Recording the same cgroup again is a no-op that keeps the first sighting; giving a
        mark that already belongs to another cgroup is refused.
        """
        check_int("mark", mark, minimum=1)
        if mark > MAX_MARK:
            raise ValueError(f"mark {mark} does not fit the 32-bit conntrack mark")
        check_int("cgroup_id", cgroup_id, minimum=0)
        check_int("at", at, minimum=0)
        with self.transaction():
            row = self._conn.execute(
                "SELECT cgroup_id, path FROM cgroups WHERE mark = ?", (mark,)
            ).fetchone()
            if row is not None:
                if (row[0], row[1]) == (cgroup_id, path):
                    return
                raise LedgerError(
                    f"mark {mark} already belongs to cgroup {row[0]} ({row[1]});"
                    " allocate a new mark"
                )
            self._conn.execute(
                "INSERT INTO cgroups (mark, cgroup_id, path, app, kind, first_seen)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (mark, cgroup_id, path, app, kind, at),
            )

    def cgroups(self) -> list[CgroupRow]:
        rows = self._conn.execute(
            "SELECT mark, cgroup_id, path, app, kind, first_seen, gone_at FROM cgroups"
            " ORDER BY mark"
        ).fetchall()
        return [CgroupRow(*r) for r in rows]

    def mark_cgroup_gone(self, mark: int, at: int) -> None:
        """Note when a cgroup vanished; the first time it was noticed wins."""
        check_int("at", at, minimum=0)
        with self.transaction():
            updated = self._conn.execute(
                "UPDATE cgroups SET gone_at = ? WHERE mark = ? AND gone_at IS NULL", (at, mark)
            ).rowcount
            if (
                not updated
                and self._conn.execute("SELECT 1 FROM cgroups WHERE mark = ?", (mark,)).fetchone()
                is None
            ):
                raise KeyError(f"no cgroup was recorded with mark {mark}")
