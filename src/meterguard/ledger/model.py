"""Values that go into the ledger and come out of it.

These are plain frozen dataclasses so that the meter (which produces `UsageDelta`) and the
CLI/API (which consume `ReportRow` and friends) depend on nothing but this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

GroupBy = Literal["app", "network"]

# The grains the ledger stores, in seconds. Every time zone in use today has a UTC offset that
# is a whole number of quarter hours (+5:30, +5:45, +8:45 ...), so any local midnight falls on
# a quarter-hour boundary in UTC: the 15-minute buckets keep local days exact for ever.
MINUTE = 60
QUARTER = 900
# UTC days are a roll-up of the quarter buckets; a local day is a UTC day plus quarter-hour
# edges, which is what lets a month report read a few thousand rows instead of a million.
DAY = 86_400


class LedgerError(Exception):
    """The ledger cannot do what was asked; the message says why and what to do."""


class SchemaTooNewError(LedgerError):
    """The file was written by a newer meterguard; it is refused and left untouched."""


class SchemaTooOldError(LedgerError):
    """A read-only open found a schema that needs migrating; only a writer may migrate."""


class RangeError(LedgerError, ValueError):
    """A time range the stored data cannot answer exactly (misaligned or already expired)."""


@dataclass(frozen=True, slots=True)
class UsageDelta:
    """Bytes one app moved on one network since the previous reading."""

    network: str
    app: str
    bytes_up: int
    bytes_down: int
    # The part of the above moved in the background (a service, or an idle/locked session).
    bytes_up_bg: int = 0
    bytes_down_bg: int = 0


@dataclass(frozen=True, slots=True)
class ReportRow:
    """A total over a time range. `app` is None when grouped by network."""

    app: str | None
    network: str | None
    bytes_up: int
    bytes_down: int
    bytes_up_bg: int = 0
    bytes_down_bg: int = 0

    @property
    def bytes_total(self) -> int:
        return self.bytes_up + self.bytes_down

    @property
    def bytes_background(self) -> int:
        return self.bytes_up_bg + self.bytes_down_bg

    def as_dict(self) -> dict[str, str | int | None]:
        return {
            "app": self.app,
            "network": self.network,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "bytes_total": self.bytes_total,
            "bytes_foreground": self.bytes_total - self.bytes_background,
            "bytes_background": self.bytes_background,
        }


@dataclass(frozen=True, slots=True)
class SeriesRow(ReportRow):
    """A total over one step [start, start + step) of a series."""

    start: int = field(default=0, kw_only=True)

    def as_dict(self) -> dict[str, str | int | None]:
        return {"start": self.start, **ReportRow.as_dict(self)}


@dataclass(frozen=True, slots=True)
class AppRow:
    app: str
    kind: str | None
    first_seen: int
    last_seen: int


@dataclass(frozen=True, slots=True)
class CgroupRow:
    """A cgroup as first seen: kept after it vanishes, because its mark may still be live."""

    mark: int
    cgroup_id: int
    path: str
    app: str
    kind: str
    first_seen: int
    gone_at: int | None


@dataclass(frozen=True, slots=True)
class Horizons:
    """Where the stored detail begins (unix seconds UTC); None means "since the first write".

    `minute`: minute rows are complete from here on. `bucket`: quarter and day roll-ups are
    complete from here on; before it the user chose to let the data expire.
    """

    minute: int | None
    bucket: int | None


@dataclass(frozen=True, slots=True)
class PruneResult:
    minute_rows: int
    bucket_rows: int


def check_int(name: str, value: object, *, minimum: int) -> int:
    """`value` as an int >= minimum; bool is refused although Python counts it as an int."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_delta(delta: UsageDelta) -> None:
    if not delta.network or not delta.app:
        raise ValueError(f"a delta needs a network and an app: {delta!r}")
    # A negative delta means the meter mishandled a counter reset; storing it would hide
    # the bug and corrupt every total after it.
    check_int("bytes_up", delta.bytes_up, minimum=0)
    check_int("bytes_down", delta.bytes_down, minimum=0)
    check_int("bytes_up_bg", delta.bytes_up_bg, minimum=0)
    check_int("bytes_down_bg", delta.bytes_down_bg, minimum=0)
    if delta.bytes_up_bg > delta.bytes_up or delta.bytes_down_bg > delta.bytes_down:
        raise ValueError(f"the background share cannot exceed the total: {delta!r}")
