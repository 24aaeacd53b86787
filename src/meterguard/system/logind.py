"""logind over D-Bus: is the user at the machine? (idle and locked, for foreground/background)

meterguard calls traffic "background" while the user's session is idle or locked. logind
publishes IdleHint and LockedHint on each session, but it does not compute them for
graphical sessions: the desktop must set them (GNOME does; many window managers never do).
A hint nobody ever set reads as a plain `false`, indistinguishable from "not idle", so:

- a graphical session's IdleSinceHint stays 0 until the desktop first sets IdleHint
  (logind keeps the timestamp of the last SetIdleHint); a session with IdleSinceHint 0 and
  both hints false is taken to have hints nobody maintains: `known` is False.
- only active graphical user sessions count: greeters, lock-screen sessions, SSH and TTY
  logins say nothing about whether someone is using the desktop.
- over several such sessions (several seats), the machine is idle only if every session
  with known hints is idle, and locked only if every one is locked.

When `known` is False the caller decides; system and user services count as background
whatever the session state.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from dbus_fast.aio import MessageBus

from .bus import DEFAULT_TIMEOUT, BusThread, SystemBusError, call, get_all

LOGIN_BUS = "org.freedesktop.login1"
LOGIN_PATH = "/org/freedesktop/login1"
MANAGER_IFACE = f"{LOGIN_BUS}.Manager"
SESSION_IFACE = f"{LOGIN_BUS}.Session"

GRAPHICAL_TYPES = frozenset({"x11", "wayland", "mir"})


@dataclass(frozen=True, slots=True)
class SessionInfo:
    id: str
    uid: int
    user: str
    seat: str
    path: str
    active: bool
    type: str  # "x11", "wayland", "tty", "unspecified"...
    session_class: str  # "user", "greeter", "lock-screen", "background"...
    remote: bool
    state: str  # "online", "active", "closing"
    idle_hint: bool | None  # None: the property is missing
    locked_hint: bool | None  # None: logind older than 230 has no LockedHint
    idle_since_usec: int  # IdleSinceHint, 0 when the idle hint was never set

    @property
    def graphical(self) -> bool:
        return self.type in GRAPHICAL_TYPES

    @property
    def hints_known(self) -> bool:
        if self.idle_hint is None or self.locked_hint is None:
            return False
        return self.idle_since_usec > 0 or self.idle_hint or self.locked_hint


@dataclass(frozen=True, slots=True)
class SessionState:
    idle: bool
    locked: bool
    known: bool  # False: no active graphical session keeps its hints

    @property
    def away(self) -> bool:
        """Idle or locked: the user is not at the machine (traffic is background)."""
        return self.known and (self.idle or self.locked)


UNKNOWN_STATE = SessionState(idle=False, locked=False, known=False)


def aggregate_session_state(sessions: Iterable[SessionInfo]) -> SessionState:
    """The machine's state from its sessions (rules: module doc)."""
    counted = [
        s for s in sessions
        if s.active and s.graphical and s.session_class == "user" and s.hints_known
    ]
    if not counted:
        return UNKNOWN_STATE
    return SessionState(
        idle=all(s.idle_hint for s in counted),
        locked=all(s.locked_hint for s in counted),
        known=True,
    )


def _optional_bool(props: dict[str, Any], name: str) -> bool | None:
    value = props.get(name)
    return None if value is None else bool(value)


async def read_sessions(bus: MessageBus) -> list[SessionInfo]:
    [listed] = await call(bus, LOGIN_BUS, LOGIN_PATH, MANAGER_IFACE, "ListSessions")
    sessions = []
    for session_id, uid, user, seat, path in listed:
        try:
            props = await get_all(bus, LOGIN_BUS, path, SESSION_IFACE)
        except SystemBusError:
            continue  # the session ended between the list and the read
        sessions.append(
            SessionInfo(
                id=str(session_id),
                uid=int(uid),
                user=str(user),
                seat=str(seat),
                path=str(path),
                active=bool(props.get("Active", False)),
                type=str(props.get("Type", "")),
                session_class=str(props.get("Class", "")),
                remote=bool(props.get("Remote", False)),
                state=str(props.get("State", "")),
                idle_hint=_optional_bool(props, "IdleHint"),
                locked_hint=_optional_bool(props, "LockedHint"),
                idle_since_usec=int(props.get("IdleSinceHint", 0)),
            )
        )
    return sessions


class LogindApi(Protocol):
    """The logind reads meterguard uses (the real client and the fake)."""

    def sessions(self) -> list[SessionInfo]: ...

    def session_state(self) -> SessionState: ...

    def close(self) -> None: ...


class LogindClient:
    """logind for synchronous callers: each method runs on a private loop thread."""

    def __init__(self, bus_address: str | None = None, *,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self._bus = BusThread(bus_address, timeout=timeout)

    def sessions(self) -> list[SessionInfo]:
        return self._bus.run(read_sessions)

    def session_state(self) -> SessionState:
        return aggregate_session_state(self.sessions())

    def close(self) -> None:
        self._bus.close()

    def __enter__(self) -> LogindClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
