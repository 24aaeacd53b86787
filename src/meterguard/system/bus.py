"""The system-bus plumbing shared by the NetworkManager, ModemManager and logind adapters.

Each adapter is written as coroutines over one dbus-fast `MessageBus` (so an asyncio caller,
like the desktop agent, can use it directly), plus a synchronous facade for the daemon's
synchronous poll loop. The facade runs the coroutines on `BusThread`: a private event loop
in a daemon thread that owns one long-lived bus connection.

Why a loop thread and not `asyncio.run` per call:
- a dbus-fast `MessageBus` belongs to the loop it was created on, so `asyncio.run` per call
  would mean a new connection (socket, SASL handshake, Hello) for every call, and the daemon
  asks logind for the session state on every poll;
- `asyncio.run` refuses to run inside a running loop, so a facade built on it could never be
  called from async code; the thread works from anywhere.
A failed call drops the connection and the next call connects afresh, so a restarted
NetworkManager or dbus-daemon costs one failed call, not a dead adapter.

Calls are made with plain `Message`s and `org.freedesktop.DBus.Properties.GetAll`, not with
introspected proxies: introspection is an extra round trip per object and the interfaces
used here are fixed, documented APIs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from dbus_fast import BusType, Message, MessageType, unpack_variants
from dbus_fast.aio import MessageBus
from dbus_fast.errors import AuthError, DBusError, InternalError, InvalidMessageError

T = TypeVar("T")

PROPERTIES_IFACE = "org.freedesktop.DBus.Properties"
OBJECT_MANAGER_IFACE = "org.freedesktop.DBus.ObjectManager"
# The path D-Bus services use for "no object" in an `o` property.
NO_OBJECT = "/"
DEFAULT_TIMEOUT = 10.0
# What a lost or broken connection raises (a timeout is TimeoutError since Python 3.11).
_TRANSPORT_ERRORS = (OSError, EOFError, TimeoutError, AuthError, DBusError, InternalError,
                     InvalidMessageError)


class SystemBusError(Exception):
    """A D-Bus call failed: no bus, the service is not running, or it returned an error.

    `name` is the D-Bus error name when the service answered with one (for example
    `org.freedesktop.DBus.Error.ServiceUnknown` when the daemon is not running), else "".
    """

    def __init__(self, message: str, name: str = "") -> None:
        super().__init__(message)
        self.name = name


async def call(
    bus: MessageBus,
    destination: str,
    path: str,
    interface: str,
    member: str,
    signature: str = "",
    body: list[Any] | None = None,
) -> list[Any]:
    """Call a method and return its reply body, still as dbus-fast values (Variants kept)."""
    reply = await bus.call(
        Message(
            destination=destination,
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=body or [],
        )
    )
    if reply is None:  # only for no-reply calls, which these never are
        raise SystemBusError(f"{destination} {path} {interface}.{member}: no reply")
    if reply.message_type == MessageType.ERROR:
        detail = reply.body[0] if reply.body else ""
        raise SystemBusError(
            f"{destination} {path} {interface}.{member}: {reply.error_name}: {detail}",
            reply.error_name or "",
        )
    return list(reply.body)


async def get_all(bus: MessageBus, destination: str, path: str, interface: str) -> dict[str, Any]:
    """All properties of `interface` on `path`, as plain Python values (Variants unpacked)."""
    [props] = await call(bus, destination, path, PROPERTIES_IFACE, "GetAll", "s", [interface])
    result: dict[str, Any] = unpack_variants(props)
    return result


def is_object(path: object) -> bool:
    """True for an `o` value that names an object (services use "/" for none)."""
    return isinstance(path, str) and path not in ("", NO_OBJECT)


class BusThread:
    """Runs coroutines against one bus connection on a private event-loop thread."""

    def __init__(
        self,
        bus_address: str | None = None,
        *,
        bus_type: BusType = BusType.SYSTEM,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        # None: $DBUS_SYSTEM_BUS_ADDRESS or the standard system socket, as for any client.
        self._address = bus_address
        self._bus_type = bus_type
        self.timeout = timeout
        self._bus: MessageBus | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._start_lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                # A daemon thread: a caller that forgets close() must not hang interpreter exit.
                thread = threading.Thread(
                    target=loop.run_forever, name="meterguard-dbus", daemon=True
                )
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    async def _connected(self) -> MessageBus:
        if self._bus is None or not self._bus.connected:
            # MessageBus() must be created on the loop that will use it.
            bus = MessageBus(bus_address=self._address, bus_type=self._bus_type)
            self._bus = await bus.connect()
        return self._bus

    def _drop(self) -> None:
        if self._bus is not None:
            self._bus.disconnect()
            self._bus = None

    async def _run(self, fn: Callable[[MessageBus], Awaitable[T]]) -> T:
        try:
            bus = await asyncio.wait_for(self._connected(), self.timeout)
        except Exception as exc:  # OSError, AuthError, timeouts: all mean "no bus"
            self._drop()
            raise SystemBusError(f"cannot connect to the system bus: {exc!r}") from exc
        try:
            return await asyncio.wait_for(fn(bus), self.timeout)
        except SystemBusError as exc:
            # The service answered with an error: the connection itself is fine.
            if exc.name.startswith("org.freedesktop.DBus.Error.Disconnected"):
                self._drop()
            raise
        except _TRANSPORT_ERRORS as exc:
            self._drop()
            raise SystemBusError(f"D-Bus call failed: {exc!r}") from exc
        # Anything else (an adapter's own ValueError, say) is not the bus's fault: it
        # propagates unchanged and the connection stays.

    def run(self, fn: Callable[[MessageBus], Awaitable[T]]) -> T:
        """Run `fn(bus)` on the loop thread and wait for its result (at most `timeout`)."""
        loop = self._ensure_loop()
        future = asyncio.run_coroutine_threadsafe(self._run(fn), loop)
        try:
            # The coroutine enforces the timeout itself; the margin only guards a stuck loop.
            return future.result(self.timeout * 2 + 1)
        except concurrent.futures.TimeoutError as exc:
            future.cancel()
            raise SystemBusError("D-Bus call timed out") from exc

    def close(self) -> None:
        """Disconnect and stop the loop thread. The object can be used again afterwards."""
        with self._start_lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return

        async def shutdown() -> None:
            self._drop()

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(self.timeout)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(self.timeout)
        loop.close()

    def __enter__(self) -> BusThread:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
