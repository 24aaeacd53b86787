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
import importlib.util
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
NOTIFICATIONS = "org.freedesktop.Notifications"
NOTIFICATIONS_PATH = "/org/freedesktop/Notifications"
MOCK_IFACE = "org.freedesktop.DBus.Mock"

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


def require(available: bool, what: str) -> None:
    if available:
        return
    if IN_CI:
        pytest.fail(f"{what} is missing under CI=true: D-Bus tests must run, not skip")
    pytest.skip(f"{what} is missing (install it; scripts/bootstrap.sh does)")


@contextmanager
def private_session_bus() -> Iterator[str]:
    """The address of a fresh private session bus."""
    require(shutil.which("dbus-daemon") is not None, "dbus-daemon")
    # A short directory of its own: a unix socket path must fit in 108 bytes, which deep
    # pytest tmp_path names can exceed.
    workdir = Path(tempfile.mkdtemp(prefix="mg-dbus-"))
    config = workdir / "session.conf"
    config.write_text(BUS_CONFIG.format(socket=workdir / "bus"))
    proc = subprocess.Popen(
        ["dbus-daemon", f"--config-file={config}", "--nofork", "--print-address=1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        # The address is printed once the bus listens.
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        assert ready, "dbus-daemon did not print its address"
        address = proc.stdout.readline().strip()
        assert address.startswith("unix:"), address
        yield address
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


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
