"""The usage ledger: SQLite storage, migrations, reports and calendar periods."""

from .model import (
    AppRow,
    CgroupRow,
    GroupBy,
    Horizons,
    LedgerError,
    PruneResult,
    RangeError,
    ReportRow,
    SchemaTooNewError,
    SchemaTooOldError,
    SeriesRow,
    UsageDelta,
)
from .periods import Period, local_day_start, period_bounds, period_seconds
from .schema import CURRENT_VERSION
from .store import Ledger

__all__ = [
    "CURRENT_VERSION",
    "AppRow",
    "CgroupRow",
    "GroupBy",
    "Horizons",
    "Ledger",
    "LedgerError",
    "Period",
    "PruneResult",
    "RangeError",
    "ReportRow",
    "SchemaTooNewError",
    "SchemaTooOldError",
    "SeriesRow",
    "UsageDelta",
    "local_day_start",
    "period_bounds",
    "period_seconds",
]
