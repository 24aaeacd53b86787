"""A private session bus with python-dbusmock's notification_daemon on it, for tests/dbus.

(Context managers in a helper module rather than fixtures in tests/dbus/conftest.py: the
tests tree has no packages, so a second conftest.py would be a second module named
`conftest`, which mypy refuses to check.)

Each test gets its own `dbus-daemon` (a config of our own: one socket in a fresh directory,
no service activation, everything allowed) so it can never touch a real desktop's bus, and
a `python -m dbusmock --template notification_daemon` on it that records every call.

These tests need no privileges, but they need dbus-daemon and python-dbusmock. Without them
they skip with the reason; under CI=true that is a failure instead, so they cannot silently
vanish from a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from system_bus import private_bus, require

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
NOTIFICATIONS = "org.freedesktop.Notifications"
NOTIFICATIONS_PATH = "/org/freedesktop/Notifications"
MOCK_IFACE = "org.freedesktop.DBus.Mock"

def private_session_bus() -> contextlib.AbstractContextManager[str]:
    """The address of a fresh private session bus."""
    return private_bus("session")


async def call(address: str, member: str, signature: str = "", body: list[Any] | None = None,
               *, destination: str = NOTIFICATIONS, path: str = NOTIFICATIONS_PATH,
               interface: str = MOCK_IFACE) -> list[Any]:
    bus = await MessageBus(bus_address=address).connect()
    try:
        reply = await bus.call(Message(destination=destination, path=path, interface=interface,
                                       member=member, signature=signature, body=body or []))
        assert reply is not None
        if reply.message_type == MessageType.ERROR:
            raise RuntimeError(f"{member}: {reply.error_name} {reply.body}")
        return list(reply.body)
    finally:
        bus.disconnect()


def plain(value: Any) -> Any:
    """Variants (and variants inside lists and dicts) as plain Python values."""
    if isinstance(value, Variant):
        return plain(value.value)
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


@dataclass
class MockNotifications:
    address: str
    process: subprocess.Popen[bytes]

    async def notify_calls(self) -> list[list[Any]]:
        """The argument lists of every Notify call the mock received, oldest first."""
        [calls] = await call(self.address, "GetMethodCalls", "s", ["Notify"])
        return [list(plain(args)) for _timestamp, args in calls]


@contextmanager
def notification_daemon(session_bus: str) -> Iterator[MockNotifications]:
    """python-dbusmock's notification_daemon template, owning its name on `session_bus`."""
    require(importlib.util.find_spec("dbusmock") is not None, "python-dbusmock")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dbusmock", "--session", "--template", "notification_daemon"],
        env={**os.environ, "DBUS_SESSION_BUS_ADDRESS": session_bus},
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not asyncio.run(
            call(session_bus, "NameHasOwner", "s", [NOTIFICATIONS],
                 destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                 interface="org.freedesktop.DBus")
        )[0]:
            assert proc.poll() is None, "the dbusmock process died"
            assert time.monotonic() < deadline, "notification_daemon mock never took its name"
            time.sleep(0.05)
        yield MockNotifications(session_bus, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
