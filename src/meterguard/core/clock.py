"""The clock, behind a protocol so that time-dependent logic is tested without waiting."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock seconds since the epoch (UTC): what the ledger records."""
        ...

    def monotonic(self) -> float:
        """Seconds that never go backwards: what intervals are measured with."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


@dataclass
class FakeClock:
    wall: float = 1_800_000_000.0
    mono: float = 1000.0

    def now(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


class OffsetClock:
    """The system clock moved by the number of seconds written in a file (0 if none).

    A test hook: the daemon uses it when METERGUARD_TEST_CLOCK names such a file, so a lab
    test can carry a plan across its cycle boundary without waiting for midnight. The
    monotonic clock is left alone, so polling keeps its pace.
    """

    def __init__(self, offset_file: str) -> None:
        self._path = offset_file

    def offset(self) -> float:
        try:
            with open(self._path) as handle:
                return float(handle.read().strip() or 0)
        except (OSError, ValueError):
            return 0.0

    def now(self) -> float:
        return time.time() + self.offset()

    def monotonic(self) -> float:
        return time.monotonic()
