"""A private system bus with python-dbusmock's system templates, for tests/dbus/test_system_*.

(A helper module, not a conftest.py: the tests tree has no packages, so a second conftest.py
would be a second module named `conftest`, which mypy refuses to check.)

Each test gets its own `dbus-daemon` with a minimal config (one socket in a fresh directory,
no service activation, everything allowed), so nothing can reach the machine's real
NetworkManager, ModemManager or logind, and a `python -m dbusmock --system --template T`
on it. The test drives the mock through its org.freedesktop.DBus.Mock interface to publish
the state a real daemon would (AddObject/AddProperty/UpdateProperties/AddMethod with the
real interface names and D-Bus types), then reads back what meterguard called with
GetMethodCalls.

These tests need no privileges, but need dbus-daemon and python-dbusmock (and PyGObject for
the logind template). Without them they skip with the reason; under CI=true that is a
failure instead, so they cannot silently vanish from a run.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from dbus_fast import BusType, Message, MessageType, Variant, unpack_variants
from dbus_fast.aio import MessageBus

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
MOCK_IFACE = "org.freedesktop.DBus.Mock"
DBUS_NAME = "org.freedesktop.DBus"

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>{kind}</type>
  <listen>unix:path={socket}</listen>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""

# (bus name, main object) of each template, as the templates define them.
TEMPLATES = {
    "networkmanager": ("org.freedesktop.NetworkManager", "/org/freedesktop"),
    "modemmanager": ("org.freedesktop.ModemManager1", "/org/freedesktop/ModemManager1"),
    "logind": ("org.freedesktop.login1", "/org/freedesktop/login1"),
}


def require(available: bool, what: str) -> None:
    if available:
        return
    if IN_CI:
        pytest.fail(f"{what} is missing under CI=true: D-Bus tests must run, not skip")
    pytest.skip(f"{what} is missing (install it; scripts/bootstrap.sh does)")


def _stop(proc: subprocess.Popen[Any]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def private_bus(kind: str = "system") -> Iterator[str]:
    """The address of a fresh private bus standing in for the system or session bus."""
    require(shutil.which("dbus-daemon") is not None, "dbus-daemon")
    # A short directory: a unix socket path must fit in 108 bytes, which deep pytest
    # tmp_path names can exceed.
    workdir = Path(tempfile.mkdtemp(prefix=f"mg-{kind}bus-"))
    config = workdir / f"{kind}.conf"
    config.write_text(BUS_CONFIG.format(kind=kind, socket=workdir / "bus"))
    proc = subprocess.Popen(
        ["dbus-daemon", f"--config-file={config}", "--nofork", "--print-address=1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 20)  # printed once it listens
        assert ready, "dbus-daemon did not print its address"
        address = proc.stdout.readline().strip()
        assert address.startswith("unix:"), address
        yield address
    finally:
        _stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)


def private_system_bus() -> contextlib.AbstractContextManager[str]:
    return private_bus("system")


async def _call(address: str, destination: str, path: str, interface: str, member: str,
                signature: str, body: list[Any]) -> list[Any]:
    bus = await MessageBus(bus_address=address, bus_type=BusType.SYSTEM).connect()
    try:
        reply = await bus.call(Message(destination=destination, path=path, interface=interface,
                                       member=member, signature=signature, body=body))
        if reply.message_type == MessageType.ERROR:
            raise RuntimeError(f"{path} {interface}.{member}: {reply.error_name} {reply.body}")
        return list(reply.body)
    finally:
        bus.disconnect()


@dataclass
class DBusMock:
    """A dbusmock template on a private bus, driven through its Mock interface."""

    address: str
    bus_name: str
    main_path: str
    process: subprocess.Popen[bytes]
    log: Path

    def call(self, path: str, interface: str, member: str, signature: str = "",
             *body: Any) -> list[Any]:
        return asyncio.run(_call(self.address, self.bus_name, path, interface, member,
                                 signature, list(body)))

    def mock(self, path: str, member: str, signature: str = "", *body: Any) -> list[Any]:
        return self.call(path, MOCK_IFACE, member, signature, *body)

    def add_object(self, path: str, interface: str, props: dict[str, Variant],
                   methods: list[tuple[str, str, str, str]] | None = None) -> None:
        self.mock(self.main_path, "AddObject", "ssa{sv}a(ssss)", path, interface, props,
                  [list(m) for m in methods or []])

    def add_property(self, path: str, interface: str, name: str, value: Variant) -> None:
        self.mock(path, "AddProperty", "ssv", interface, name, value)

    def update(self, path: str, interface: str, props: dict[str, Variant]) -> None:
        self.mock(path, "UpdateProperties", "sa{sv}", interface, props)

    def add_method(self, path: str, interface: str, name: str, in_sig: str, out_sig: str,
                   code: str = "") -> None:
        self.mock(path, "AddMethod", "sssss", interface, name, in_sig, out_sig, code)

    def method_calls(self, path: str, member: str) -> list[list[Any]]:
        """The arguments of every call of `member` on the object at `path`, oldest first,
        as plain Python values (the mock logs calls per object)."""
        [calls] = self.mock(path, "GetMethodCalls", "s", member)
        return [list(unpack_variants(args)) for _timestamp, args in calls]


def _has_owner(address: str, name: str) -> bool:
    [owned] = asyncio.run(_call(address, DBUS_NAME, "/org/freedesktop/DBus", DBUS_NAME,
                                "NameHasOwner", "s", [name]))
    return bool(owned)


@contextmanager
def dbusmock_template(address: str, template: str) -> Iterator[DBusMock]:
    """python-dbusmock's `template`, owning its well-known name on the bus at `address`."""
    require(importlib.util.find_spec("dbusmock") is not None, "python-dbusmock")
    if template == "logind":
        # The logind template imports GLib (dbusmock 0.38 needs PyGObject<3.51 for it).
        require(importlib.util.find_spec("gi") is not None, "PyGObject (dbusmock's logind)")
    bus_name, main_path = TEMPLATES[template]
    log = Path(tempfile.mkstemp(prefix=f"mg-{template}-", suffix=".log")[1])
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dbusmock", "--system", "--template", template],
            env={**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": address},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while not _has_owner(address, bus_name):
            if proc.poll() is not None:
                raise AssertionError(f"dbusmock {template} died:\n{log.read_text()}")
            assert time.monotonic() < deadline, f"dbusmock {template} never took {bus_name}"
            time.sleep(0.05)
        yield DBusMock(address, bus_name, main_path, proc, log)
    finally:
        _stop(proc)
        log.unlink(missing_ok=True)


def u(value: int) -> Variant:
    return Variant("u", value)


def s(value: str) -> Variant:
    return Variant("s", value)


def o(value: str) -> Variant:
    return Variant("o", value)


def b(value: bool) -> Variant:
    return Variant("b", value)
