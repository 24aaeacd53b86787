"""The desktop agent's follow logic, against the fake desktop notifier."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from meterguard.ledger import Ledger
from meterguard.ledger.events import EventLevel
from meterguard.notify.agent import DesktopAgent, default_state_file
from meterguard.notify.desktop import FakeDesktopNotifier, Shown

NOW = 1_767_225_600.0


def agent(tmp_path: Path, fake: FakeDesktopNotifier) -> DesktopAgent:
    return DesktopAgent(
        tmp_path / "state" / "ledger.sqlite3",
        fake,
        state_file=tmp_path / "home" / "agent.json",
        clock=lambda: NOW,
    )


def add(tmp_path: Path, title: str, *, kind: str = "alert", level: EventLevel = "warning",
        at: float = NOW) -> int:
    (tmp_path / "state").mkdir(exist_ok=True)
    with Ledger.open(tmp_path / "state" / "ledger.sqlite3") as ledger:
        event_id = ledger.add_event(int(at), kind, level, title, f"body of {title}")
    assert event_id is not None
    return event_id


def step(a: DesktopAgent) -> int:
    return asyncio.run(a.step())


def test_each_alert_is_shown_once_with_its_urgency(tmp_path: Path) -> None:
    add(tmp_path, "hk: 50% used", level="info")
    add(tmp_path, "hk: paused", kind="pause", level="critical")  # not an alert: not shown
    add(tmp_path, "hk: data cap reached", level="critical")
    fake = FakeDesktopNotifier()
    a = agent(tmp_path, fake)
    assert step(a) == 2
    assert fake.shown == [
        Shown("hk: 50% used", "body of hk: 50% used", 0),
        Shown("hk: data cap reached", "body of hk: data cap reached", 2),
    ]
    assert step(a) == 0
    add(tmp_path, "hk: 80% used")
    assert step(a) == 1 and fake.shown[-1].urgency == 1


def test_a_restarted_agent_does_not_repeat_itself(tmp_path: Path) -> None:
    last = add(tmp_path, "hk: 80% used")
    fake = FakeDesktopNotifier()
    assert step(agent(tmp_path, fake)) == 1
    saved = json.loads((tmp_path / "home" / "agent.json").read_text())
    assert saved["last_event_id"] == last
    again = FakeDesktopNotifier()
    assert step(agent(tmp_path, again)) == 0 and again.shown == []
    add(tmp_path, "hk: 90% used")
    assert step(agent(tmp_path, again)) == 1
    assert [s.summary for s in again.shown] == ["hk: 90% used"]


def test_a_first_run_skips_alerts_older_than_a_day(tmp_path: Path) -> None:
    add(tmp_path, "last month", at=NOW - 30 * 86_400)
    add(tmp_path, "this morning", at=NOW - 3600)
    fake = FakeDesktopNotifier()
    assert step(agent(tmp_path, fake)) == 1
    assert [s.summary for s in fake.shown] == ["this morning"]


def test_an_unreachable_desktop_delays_alerts_but_loses_none(tmp_path: Path) -> None:
    add(tmp_path, "shown before")
    fake = FakeDesktopNotifier()
    assert step(agent(tmp_path, fake)) == 1
    add(tmp_path, "a")
    add(tmp_path, "b", kind="resume")  # skipped, but after the failure: must not be passed
    add(tmp_path, "c")
    fake.failing = True
    a = agent(tmp_path, fake)
    assert step(a) == 0 and a.notify_failing
    # A restart while the desktop was away still shows them once it is back.
    fake.failing = False
    b = agent(tmp_path, fake)
    assert step(b) == 2 and not b.notify_failing
    assert [s.summary for s in fake.shown] == ["shown before", "a", "c"]


def test_the_agent_waits_for_the_ledger(tmp_path: Path) -> None:
    fake = FakeDesktopNotifier()
    a = agent(tmp_path, fake)
    assert step(a) == 0
    add(tmp_path, "first alert")
    assert step(a) == 1


def test_a_position_in_another_ledger_is_ignored(tmp_path: Path) -> None:
    for i in range(3):
        add(tmp_path, f"alert {i}")
    state = tmp_path / "home" / "agent.json"
    state.parent.mkdir()
    state.write_text(json.dumps({"ledger": "/elsewhere/ledger.sqlite3", "last_event_id": 3}))
    fake = FakeDesktopNotifier()
    assert step(agent(tmp_path, fake)) == 3


def test_a_replaced_ledger_starts_afresh(tmp_path: Path) -> None:
    for i in range(3):
        add(tmp_path, f"old {i}")
    fake = FakeDesktopNotifier()
    assert step(agent(tmp_path, fake)) == 3
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / "state" / f"ledger.sqlite3{suffix}").unlink(missing_ok=True)
    add(tmp_path, "new ledger's first")
    assert step(agent(tmp_path, fake)) == 1
    assert fake.shown[-1].summary == "new ledger's first"


def test_run_follows_until_stopped(tmp_path: Path) -> None:
    fake = FakeDesktopNotifier()
    a = DesktopAgent(tmp_path / "state" / "ledger.sqlite3", fake,
                     state_file=tmp_path / "agent.json", interval=0.05, clock=lambda: NOW)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(a.run(stop))
        add(tmp_path, "while running")
        deadline = asyncio.get_running_loop().time() + 20
        while not fake.shown:
            assert asyncio.get_running_loop().time() < deadline, "agent showed nothing"
            await asyncio.sleep(0.02)
        stop.set()
        await asyncio.wait_for(task, 20)

    asyncio.run(scenario())
    assert [s.summary for s in fake.shown] == ["while running"]


def test_the_default_state_file_follows_xdg(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert default_state_file() == tmp_path / "meterguard" / "agent.json"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert default_state_file() == tmp_path / "h" / ".local" / "state" / "meterguard" / "agent.json"
