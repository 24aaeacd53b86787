"""The desktop agent against python-dbusmock's notification_daemon on a private session bus."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from private_bus import MockNotifications, notification_daemon, private_session_bus

from meterguard.ledger import Ledger
from meterguard.notify.agent import DesktopAgent
from meterguard.notify.desktop import DbusDesktopNotifier, DesktopNotifyError

CAP_TITLE = "hk: data cap reached"
CAP_BODY = "20.0 GB of 20.0 GB used on hk: 0 B left, data is paused until 2026-02-15 00:00 HKT"


@pytest.fixture
def session_bus() -> Iterator[str]:
    with private_session_bus() as address:
        yield address


@pytest.fixture
def notifications(session_bus: str) -> Iterator[MockNotifications]:
    with notification_daemon(session_bus) as mock:
        yield mock


def seed(state_dir: Path) -> Path:
    path = state_dir / "ledger.sqlite3"
    with Ledger.open(path) as ledger:
        now = int(time.time())
        ledger.add_event(now, "pause", "critical", "hk: paused", "not an alert")
        ledger.add_event(now, "alert", "critical", CAP_TITLE, CAP_BODY, key="hk@c1:100%")
    return path


async def wait_for_calls(mock: MockNotifications, n: int, timeout: float = 20.0
                         ) -> list[list[Any]]:
    deadline = asyncio.get_running_loop().time() + timeout
    while len(calls := await mock.notify_calls()) < n:
        assert asyncio.get_running_loop().time() < deadline, f"Notify calls: {calls}"
        await asyncio.sleep(0.05)
    return calls


async def follow_until(agent: DesktopAgent, mock: MockNotifications, n: int) -> list[list[Any]]:
    """Run the agent's follow loop until the mock has `n` Notify calls, then stop it."""
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        return await wait_for_calls(mock, n)
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


def test_an_alert_reaches_the_desktop_once(tmp_path: Path,
                                           notifications: MockNotifications) -> None:
    ledger_path = seed(tmp_path)
    state = tmp_path / "agent.json"

    def new_agent() -> DesktopAgent:
        return DesktopAgent(ledger_path, DbusDesktopNotifier(notifications.address),
                            state_file=state, interval=0.05)

    calls = asyncio.run(follow_until(new_agent(), notifications, 1))
    [[app, replaces, _icon, summary, body, actions, hints, expire]] = calls
    assert (app, replaces, summary, body, actions, expire) == (
        "meterguard", 0, CAP_TITLE, CAP_BODY, [], -1
    )
    assert hints["urgency"] == 2  # critical: the cap

    # A restarted agent is live (it shows the next alert) but does not repeat the first.
    with Ledger.open(ledger_path) as ledger:
        ledger.add_event(int(time.time()), "alert", "warning", "hk: 80% used", "4 GB left",
                         key="hk@c2:80%")
    calls = asyncio.run(follow_until(new_agent(), notifications, 2))
    assert [c[3] for c in calls] == [CAP_TITLE, "hk: 80% used"]
    assert calls[1][6]["urgency"] == 1


def test_the_agent_command_shows_pending_alerts(tmp_path: Path,
                                                notifications: MockNotifications) -> None:
    seed(tmp_path)
    env = {**os.environ, "DBUS_SESSION_BUS_ADDRESS": notifications.address,
           "XDG_STATE_HOME": str(tmp_path / "xdg")}
    script = (
        "import sys, typer\n"
        "from meterguard.cli.agent import register\n"
        "app = typer.Typer()\n"
        "app.callback()(lambda: None)\n"
        "register(app)\n"
        "app(sys.argv[1:])\n"
    )
    argv = [sys.executable, "-c", script, "agent", "--once", "--state-dir", str(tmp_path)]
    first = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "xdg" / "meterguard" / "agent.json").exists()
    second = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stderr
    calls = asyncio.run(notifications.notify_calls())
    assert [c[3] for c in calls] == [CAP_TITLE]


def test_no_notification_server_is_an_error_not_a_crash(session_bus: str) -> None:
    async def attempt() -> None:
        notifier = DbusDesktopNotifier(session_bus)
        try:
            await notifier.show("t", "b", urgency=1)
        finally:
            await notifier.close()

    try:
        asyncio.run(attempt())
    except DesktopNotifyError as exc:
        assert "org.freedesktop.Notifications" in str(exc)
    else:
        raise AssertionError("Notify succeeded with no notification server on the bus")
