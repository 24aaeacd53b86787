"""Desktop notifications through `org.freedesktop.Notifications` on the session bus.

`DesktopNotifier` is the one-method seam; `DbusDesktopNotifier` talks to the real service with
dbus-fast, and `FakeDesktopNotifier` records for tests. Per the Desktop Notifications
specification, urgency is a byte hint: 0 low, 1 normal, 2 critical (critical notifications
stay until the user dismisses them, which is what an alert at the cap deserves).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from .message import Level

BUS_NAME = "org.freedesktop.Notifications"
OBJECT_PATH = "/org/freedesktop/Notifications"
INTERFACE = "org.freedesktop.Notifications"
APP_NAME = "meterguard"
# Notify(app_name, replaces_id, app_icon, summary, body, actions, hints, expire_timeout)
NOTIFY_SIGNATURE = "susssasa{sv}i"

URGENCY: dict[Level, int] = {"info": 0, "warning": 1, "critical": 2}
# -1: the server's default expiry for the urgency (critical ones do not expire).
EXPIRE_DEFAULT = -1


class DesktopNotifyError(Exception):
    """The notification could not be shown (no session bus, no notification server ...)."""


class DesktopNotifier(Protocol):
    async def show(self, summary: str, body: str, *, urgency: int) -> int:
        """Show a notification; return the server's id for it. Raises DesktopNotifyError."""
        ...

    async def close(self) -> None: ...


class DbusDesktopNotifier:
    """Calls Notify on the session bus; connects on first use and again after a failure."""

    def __init__(self, bus_address: str | None = None, *, call_timeout: float = 5.0) -> None:
        # None: $DBUS_SESSION_BUS_ADDRESS, as for any session-bus client.
        self._address = bus_address
        self._timeout = call_timeout
        self._bus: MessageBus | None = None

    async def _connect(self) -> MessageBus:
        if self._bus is None or not self._bus.connected:
            bus = MessageBus(bus_address=self._address, bus_type=BusType.SESSION)
            self._bus = await asyncio.wait_for(bus.connect(), self._timeout)
        return self._bus

    async def show(self, summary: str, body: str, *, urgency: int) -> int:
        message = Message(
            destination=BUS_NAME,
            path=OBJECT_PATH,
            interface=INTERFACE,
            member="Notify",
            signature=NOTIFY_SIGNATURE,
            body=[
                APP_NAME,
                0,  # replaces_id: each alert is a notification of its own
                "",  # app_icon: the server's default
                summary,
                body,
                [],  # no actions
                {
                    "urgency": Variant("y", urgency),
                    # A standard category, so servers can group or filter meterguard's alerts.
                    "category": Variant("s", "network"),
                },
                EXPIRE_DEFAULT,
            ],
        )
        try:
            bus = await self._connect()
            reply = await asyncio.wait_for(bus.call(message), self._timeout)
        except Exception as exc:  # dbus-fast raises OSError, AuthError, timeouts ...
            await self.close()
            raise DesktopNotifyError(f"cannot reach {BUS_NAME}: {exc!r}") from exc
        if reply is None or reply.message_type == MessageType.ERROR:
            detail = reply.body if reply is not None else "no reply"
            name = reply.error_name if reply is not None else ""
            raise DesktopNotifyError(f"{BUS_NAME} refused Notify: {name} {detail}")
        return int(reply.body[0])

    async def close(self) -> None:
        if self._bus is not None:
            self._bus.disconnect()
            self._bus = None


@dataclass(frozen=True, slots=True)
class Shown:
    summary: str
    body: str
    urgency: int


class FakeDesktopNotifier:
    """Records what it shows; while `failing` is set, raises as a missing server would."""

    def __init__(self) -> None:
        self.shown: list[Shown] = []
        self.failing = False

    async def show(self, summary: str, body: str, *, urgency: int) -> int:
        if self.failing:
            raise DesktopNotifyError("fake notification server is down")
        self.shown.append(Shown(summary, body, urgency))
        return len(self.shown)

    async def close(self) -> None:
        return None
