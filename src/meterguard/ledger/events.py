"""The event log and the command queue, kept in the ledger (schema v4).

Events are append-only: what happened (an alert, a pause, a resume ...) with when and how it
was delivered. An event may carry a `key`; a key is stored at most once, ever, so inserting
an alert whose key already exists is a no-op. Alert keys name their cycle (see
`core.plans.threshold_key`), which makes each threshold fire exactly once per cycle, and
because the key lives in the same file as the usage it survives restarts and `kill -9`.

Commands are how unprivileged front ends reach the daemon without a socket protocol of their
own: the CLI (as root) appends a row, the daemon drains the pending rows on each poll and
writes a result, and the CLI polls `command(id)` for it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args

from .model import LedgerError, check_int

EventLevel = Literal["info", "warning", "critical"]
LEVELS: frozenset[str] = frozenset(get_args(EventLevel))

# Binary collation compares UTF-8 bytes, and no character sorts after U+10FFFF, so
# [prefix, prefix + MAX_CHAR) is exactly "starts with prefix" and can use the key's index.
# (LIKE cannot: it is case-insensitive for ASCII and treats % and _ as wildcards.)
_MAX_CHAR = "\U0010ffff"


@dataclass(frozen=True, slots=True)
class DeliveryStatus:
    """The last attempt to deliver an event through one channel."""

    ok: bool
    detail: str
    at: int | None

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "detail": self.detail, "at": self.at}


@dataclass(frozen=True, slots=True)
class EventRow:
    id: int
    at: int
    kind: str
    level: EventLevel
    key: str | None
    title: str
    body: str
    data: dict[str, Any]
    # Channel (a redacted apprise URL, "desktop" ...) -> its last delivery attempt.
    delivered: dict[str, DeliveryStatus]

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at,
            "kind": self.kind,
            "level": self.level,
            "key": self.key,
            "title": self.title,
            "body": self.body,
            "data": self.data,
            "delivered": {ch: st.as_dict() for ch, st in self.delivered.items()},
        }


@dataclass(frozen=True, slots=True)
class CommandRow:
    id: int
    at: int
    kind: str
    args: dict[str, Any]
    done_at: int | None
    # Whatever JSON value the daemon wrote when it finished the command.
    result: Any

    @property
    def done(self) -> bool:
        return self.done_at is not None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at,
            "kind": self.kind,
            "args": self.args,
            "done_at": self.done_at,
            "result": self.result,
        }


def _dumps(name: str, value: object) -> str:
    try:
        # allow_nan=False: NaN is not JSON, and other readers (jq, the web UI) would choke.
        return json.dumps(value, sort_keys=True, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be JSON-serialisable: {exc}") from exc


def _object(name: str, value: Mapping[str, Any] | None) -> str:
    if value is None:
        return "{}"
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a mapping, not {type(value).__name__}")
    return _dumps(name, dict(value))


def _text(name: str, value: object, *, empty_ok: bool = False) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    if not value and not empty_ok:
        raise ValueError(f"{name} must not be empty")
    return value


def _delivered(text: str) -> dict[str, DeliveryStatus]:
    raw = json.loads(text)
    return {
        str(ch): DeliveryStatus(ok=bool(st.get("ok")), detail=str(st.get("detail", "")),
                                at=st.get("at"))
        for ch, st in raw.items()
    }


_EVENT_COLUMNS = "id, at, kind, level, key, title, body, data, delivered"
_COMMAND_COLUMNS = "id, at, kind, args, done_at, result"


def _event(row: tuple[Any, ...]) -> EventRow:
    return EventRow(
        id=row[0],
        at=row[1],
        kind=row[2],
        level=cast(EventLevel, row[3]),
        key=row[4],
        title=row[5],
        body=row[6],
        data=json.loads(row[7]),
        delivered=_delivered(row[8]),
    )


def _command(row: tuple[Any, ...]) -> CommandRow:
    return CommandRow(
        id=row[0],
        at=row[1],
        kind=row[2],
        args=json.loads(row[3]),
        done_at=row[4],
        result=None if row[5] is None else json.loads(row[5]),
    )


class EventLog:
    """The `events` and `commands` half of `Ledger` (mixed into it)."""

    # Provided by Ledger: its connection and its (nestable) write transaction.
    _conn: sqlite3.Connection

    def transaction(self) -> AbstractContextManager[None]:
        raise NotImplementedError

    # -- events ---------------------------------------------------------------------------

    def add_event(
        self,
        at: int,
        kind: str,
        level: EventLevel,
        title: str,
        body: str,
        *,
        key: str | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> int | None:
        """Append an event and return its id; None if an event with `key` already exists.

        Joins an open `transaction()`, so the daemon can record an alert's event and the
        state it derives from in one commit.
        """
        check_int("at", at, minimum=0)
        _text("kind", kind)
        if level not in LEVELS:
            raise ValueError(f"level must be one of {sorted(LEVELS)}, got {level!r}")
        _text("title", title)
        _text("body", body, empty_ok=True)
        if key is not None:
            _text("key", key)
        data_text = _object("data", data)
        with self.transaction():
            # Look first rather than INSERT ... ON CONFLICT DO NOTHING: an ignored insert
            # still consumes an AUTOINCREMENT id, and a restarted daemon may offer a fired key
            # again. The write lock is held, so nothing can slip in between.
            if key is not None and self._conn.execute(
                "SELECT 1 FROM events WHERE key = ?", (key,)
            ).fetchone():
                return None
            cursor = self._conn.execute(
                "INSERT INTO events (at, kind, level, key, title, body, data)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (at, kind, level, key, title, body, data_text),
            )
            return cursor.lastrowid

    def events(self, since_id: int = 0, limit: int = 1000) -> list[EventRow]:
        """Events with id > since_id, oldest first, at most `limit` of them."""
        check_int("since_id", since_id, minimum=0)
        check_int("limit", limit, minimum=1)
        rows = self._conn.execute(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE id > ? ORDER BY id LIMIT ?",
            (since_id, limit),
        ).fetchall()
        return [_event(r) for r in rows]

    def event(self, event_id: int) -> EventRow | None:
        row = self._conn.execute(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE id = ?", (event_id,)
        ).fetchone()
        return None if row is None else _event(row)

    def last_event_id(self) -> int:
        """The newest event's id, 0 if there is none."""
        (last,) = self._conn.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()
        return int(last)

    def event_keys(self, prefix: str) -> set[str]:
        """The stored event keys that start with `prefix` ("" gives them all)."""
        _text("prefix", prefix, empty_ok=True)
        rows = self._conn.execute(
            "SELECT key FROM events WHERE key >= ? AND key < ?", (prefix, prefix + _MAX_CHAR)
        ).fetchall()
        return {str(r[0]) for r in rows}

    def mark_delivered(
        self, event_id: int, channel: str, ok: bool, detail: str, *, at: int | None = None
    ) -> None:
        """Record the outcome of one delivery attempt; a later attempt replaces an earlier."""
        _text("channel", channel)
        _text("detail", detail, empty_ok=True)
        if at is not None:
            check_int("at", at, minimum=0)
        with self.transaction():
            row = self._conn.execute(
                "SELECT delivered FROM events WHERE id = ?", (event_id,)
            ).fetchone()
            if row is None:
                raise KeyError(f"no event with id {event_id}")
            delivered = json.loads(row[0])
            delivered[channel] = {"ok": bool(ok), "detail": detail, "at": at}
            self._conn.execute(
                "UPDATE events SET delivered = ? WHERE id = ?",
                (_dumps("delivered", delivered), event_id),
            )

    # -- commands -------------------------------------------------------------------------

    def enqueue_command(self, at: int, kind: str, args: Mapping[str, Any] | None = None) -> int:
        """Queue a command for the daemon; returns its id, to poll with `command(id)`."""
        check_int("at", at, minimum=0)
        _text("kind", kind)
        args_text = _object("args", args)
        with self.transaction():
            cursor = self._conn.execute(
                "INSERT INTO commands (at, kind, args) VALUES (?, ?, ?)", (at, kind, args_text)
            )
            assert cursor.lastrowid is not None
            return cursor.lastrowid

    def pending_commands(self) -> list[CommandRow]:
        """Commands not finished yet, in the order they were queued."""
        rows = self._conn.execute(
            f"SELECT {_COMMAND_COLUMNS} FROM commands WHERE done_at IS NULL ORDER BY id"
        ).fetchall()
        return [_command(r) for r in rows]

    def finish_command(self, command_id: int, at: int, result: Any) -> None:
        """Store a command's result (any JSON value); finishing it twice is refused.

        Refusing a second finish catches a daemon that would apply one command twice (for
        example a top-up) after a restart that interrupted its bookkeeping.
        """
        check_int("at", at, minimum=0)
        result_text = _dumps("result", result)
        with self.transaction():
            row = self._conn.execute(
                "SELECT done_at FROM commands WHERE id = ?", (command_id,)
            ).fetchone()
            if row is None:
                raise KeyError(f"no command with id {command_id}")
            if row[0] is not None:
                raise LedgerError(f"command {command_id} was already finished at {row[0]}")
            self._conn.execute(
                "UPDATE commands SET done_at = ?, result = ? WHERE id = ?",
                (at, result_text, command_id),
            )

    def command(self, command_id: int) -> CommandRow | None:
        row = self._conn.execute(
            f"SELECT {_COMMAND_COLUMNS} FROM commands WHERE id = ?", (command_id,)
        ).fetchone()
        return None if row is None else _command(row)
