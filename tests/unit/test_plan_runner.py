"""The plan guard runner over a real ledger and fakes of the kernel and the event log."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from meterguard.config import parse_config
from meterguard.core.guard import Alert, Disconnect, Pause, Resume
from meterguard.enforce.caps import FakeCapControl
from meterguard.enforce.runner import PlanGuardRunner
from meterguard.ledger.model import UsageDelta
from meterguard.ledger.store import Ledger

CONFIG = """
[[network]]
name = "esim"
interfaces = ["wwan0"]
plan = "tiny"

[plans.tiny]
quota = 1000
cycle = "daily"
time_zone = "Asia/Hong_Kong"
"""
# 2026-11-27 10:00 in Hong Kong; the daily cycle ends at 16:00 UTC.
T0 = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)


@dataclass
class FakeEvents:
    keys: set[str] = field(default_factory=set)
    sent: list[Alert] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)

    def alert(self, alert: Alert, at: datetime) -> bool:
        if alert.key in self.keys:
            return False
        self.keys.add(alert.key)
        self.sent.append(alert)
        return True

    def fired(self, prefix: str) -> frozenset[str]:
        return frozenset(k for k in self.keys if k.startswith(prefix))

    def note(self, kind: str, level: str, title: str, body: str, at: datetime) -> None:
        self.notes.append((kind, title))


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger.open(tmp_path / "l.db")


def runner(ledger: Ledger, caps: FakeCapControl, events: FakeEvents) -> PlanGuardRunner:
    config = parse_config(CONFIG, Path("t.toml"))
    r = PlanGuardRunner(config, ledger, caps, events, marks_of_apps=lambda apps: set())
    return r


def use(ledger: Ledger, r: PlanGuardRunner, at: datetime, n: int) -> list[object]:
    rows = [UsageDelta("esim", "firefox", 0, n)]
    ledger.record(int(at.timestamp()), rows)
    return list(r.step(at, rows))


def test_thresholds_fire_once_and_the_cap_pauses(ledger: Ledger) -> None:
    caps, events = FakeCapControl(used={"tiny": 0}), FakeEvents()
    r = runner(ledger, caps, events)
    r.load(T0)
    (spec,) = r.guard_specs()
    assert spec.limit == 1000 and spec.interfaces == ("wwan0",)
    caps.used["tiny"] = 600  # the kernel quota saw the same 600 bytes
    use(ledger, r, T0 + timedelta(seconds=1), 600)
    assert [a.key.rsplit(":", 1)[1] for a in events.sent] == ["50%"]
    assert "tiny" not in caps.limits  # 600 + 400 is the limit it already has
    # Read skew: the quota read before the counters missed 50 bytes. The limit is lowered
    # (the safe side), never raised past consumed + left.
    caps.used["tiny"] = 550
    r.sample_quotas()
    use(ledger, r, T0 + timedelta(seconds=2), 0)
    assert caps.limits["tiny"] == 550 + 400
    caps.used["tiny"] = 1000
    r.sample_quotas()
    decisions = use(ledger, r, T0 + timedelta(seconds=3), 400)
    assert any(isinstance(d, Pause) for d in decisions)
    assert [a.key.rsplit(":", 1)[1] for a in events.sent] == ["50%", "80%", "90%", "100%"]
    assert caps.ended == [("wwan0",)]
    # Nothing fires twice, and a restarted runner remembers the pause and the thresholds.
    use(ledger, r, T0 + timedelta(seconds=4), 10)
    again = runner(ledger, caps, events)
    again.load(T0 + timedelta(seconds=5))
    decisions = use(ledger, again, T0 + timedelta(seconds=6), 0)
    assert not any(isinstance(d, Pause) for d in decisions)
    assert len(events.sent) == 4


def test_rollover_resumes_and_starts_a_fresh_count(ledger: Ledger) -> None:
    caps, events = FakeCapControl(used={"tiny": 0}), FakeEvents()
    r = runner(ledger, caps, events)
    r.load(T0)
    r.guard_specs()
    use(ledger, r, T0 + timedelta(seconds=1), 1200)
    caps.used["tiny"] = 1200
    next_day = datetime(2026, 11, 27, 16, 0, 1, tzinfo=UTC)
    decisions = use(ledger, r, next_day, 0)
    assert any(isinstance(d, Resume) for d in decisions)
    assert caps.limits["tiny"] == 1200 + 1000
    summary = r.summaries(next_day)[0]
    assert summary["used_bytes"] == 0 and summary["remaining_bytes"] == 1000


def test_topup_and_set_used(ledger: Ledger) -> None:
    caps, events = FakeCapControl(used={"tiny": 0}), FakeEvents()
    r = runner(ledger, caps, events)
    r.load(T0)
    r.guard_specs()
    use(ledger, r, T0 + timedelta(seconds=1), 900)
    caps.used["tiny"] = 900
    r.command("topup", {"bytes": 500}, T0)
    use(ledger, r, T0 + timedelta(seconds=2), 0)
    assert caps.limits["tiny"] == 900 + 600
    r.command("set-used", {"bytes": 1300}, T0)
    use(ledger, r, T0 + timedelta(seconds=3), 0)
    assert caps.limits["tiny"] == 900 + 200
    with pytest.raises(ValueError, match="no guarded plan"):
        r.command("topup", {"plan": "nope", "bytes": 1}, T0)


@dataclass
class FakeNetwork:
    disconnected: list[tuple[str, ...]] = field(default_factory=list)
    reconnects: int = 0

    def disconnect(self, interfaces: Sequence[str]) -> bool:
        self.disconnected.append(tuple(interfaces))
        return True

    def reconnect(self) -> list[str]:
        self.reconnects += 1
        return ["uuid"]


def test_disconnect_at_the_cap_and_reconnect_at_rollover(ledger: Ledger) -> None:
    config = parse_config(CONFIG.replace('time_zone = "Asia/Hong_Kong"',
                                         'time_zone = "Asia/Hong_Kong"\ncap_action = "disconnect"'),
                          Path("t.toml"))
    caps, events, network = FakeCapControl(used={"tiny": 0}), FakeEvents(), FakeNetwork()
    r = PlanGuardRunner(config, ledger, caps, events, marks_of_apps=lambda apps: set(),
                        network=network)
    r.load(T0)
    r.guard_specs()
    caps.used["tiny"] = 1000
    decisions = use(ledger, r, T0 + timedelta(seconds=1), 1000)
    assert any(isinstance(d, Disconnect) for d in decisions)
    assert network.disconnected == [("wwan0",)] and network.reconnects == 0
    use(ledger, r, datetime(2026, 11, 27, 16, 0, 1, tzinfo=UTC), 0)  # the next day's cycle
    assert network.reconnects == 1
