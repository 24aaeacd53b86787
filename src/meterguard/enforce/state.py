"""What the daemon remembers about each plan between polls and across restarts.

Kept in the ledger's key-value state as JSON, one key per plan, so that a restart keeps the
pause, the top-ups and resume grants of the current cycle, and the set-used anchor.
Thresholds that fired are not here: the event log's unique keys are that record.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime


@dataclass
class PlanState:
    cycle_start: str | None = None  # ISO time of the cycle these figures belong to
    paused: bool = False
    topup_bytes: int = 0
    resume_until: str | None = None
    resume_bytes: int | None = None
    # `plan set-used`: added to the bytes counted so the total equals the carrier's figure.
    adjust_bytes: int = 0
    # Bytes used in the previous cycle, for rollover of unused data.
    previous_cycle_used: int | None = None

    def dumps(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def loads(cls, text: str | None) -> PlanState:
        if not text:
            return cls()
        try:
            data = json.loads(text)
        except ValueError:
            return cls()
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def new_cycle(self, start: datetime, previous_used: int | None) -> None:
        """Top-ups, grants and the anchor belong to one cycle; a new one starts clean."""
        self.cycle_start = start.isoformat()
        self.topup_bytes = 0
        self.resume_until = None
        self.resume_bytes = None
        self.adjust_bytes = 0
        self.previous_cycle_used = previous_used

    @property
    def resume_until_dt(self) -> datetime | None:
        return datetime.fromisoformat(self.resume_until) if self.resume_until else None


def state_key(plan: str) -> str:
    return f"plan.{plan}"
