"""LogindClient against python-dbusmock's logind template on a private bus.

The template's AddSession makes a session of Type "test" whose hints were never set; the
tests make it the Wayland session of a desktop, then play the desktop setting IdleHint and
LockedHint (as GNOME does through logind), and check the state meterguard derives.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from dbus_fast import Variant
from system_bus import DBusMock, b, dbusmock_template, private_system_bus, s

from meterguard.system.fakes import FakeLogind
from meterguard.system.logind import (
    SESSION_IFACE,
    LogindClient,
    SessionInfo,
    SessionState,
    aggregate_session_state,
)

UNKNOWN = SessionState(idle=False, locked=False, known=False)
# IdleSinceHint is CLOCK_REALTIME in microseconds; any moment after 1970 will do.
SOME_TIME = Variant("t", 1_767_225_600_000_000)


@pytest.fixture
def logind_mock() -> Iterator[DBusMock]:
    with private_system_bus() as address, dbusmock_template(address, "logind") as mock:
        yield mock


@pytest.fixture
def logind(logind_mock: DBusMock) -> Iterator[LogindClient]:
    with LogindClient(logind_mock.address, timeout=20) as client:
        yield client


def add_session(mock: DBusMock, sid: str, uid: int, user: str, active: bool,
                session_type: str) -> str:
    [path] = mock.mock(mock.main_path, "AddSession", "ssusb", sid, "seat0", uid, user, active)
    mock.update(path, SESSION_IFACE, {"Type": s(session_type)})
    return str(path)


def test_idle_and_locked_follow_the_desktop_hints(logind_mock: DBusMock,
                                                 logind: LogindClient) -> None:
    path = add_session(logind_mock, "c1", 1000, "ana", True, "wayland")
    [session] = logind.sessions()
    assert (session.id, session.uid, session.user, session.type) == ("c1", 1000, "ana",
                                                                      "wayland")
    # Fresh session: the desktop never set a hint, so "not idle" means nothing yet.
    assert logind.session_state() == UNKNOWN

    # The desktop goes idle, then locks the screen (SetLockedHint, as a locker calls it).
    logind_mock.update(path, SESSION_IFACE, {"IdleHint": b(True), "IdleSinceHint": SOME_TIME})
    state = logind.session_state()
    assert (state.idle, state.locked, state.known, state.away) == (True, False, True, True)
    logind_mock.call(path, SESSION_IFACE, "SetLockedHint", "b", True)
    assert logind.session_state() == SessionState(idle=True, locked=True, known=True)

    # The user is back: both hints cleared, the idle timestamp stays set.
    logind_mock.update(path, SESSION_IFACE, {"IdleHint": b(False), "LockedHint": b(False)})
    state = logind.session_state()
    assert state == SessionState(idle=False, locked=False, known=True) and not state.away


def test_only_active_graphical_user_sessions_count(logind_mock: DBusMock,
                                                  logind: LogindClient) -> None:
    desktop = add_session(logind_mock, "c1", 1000, "ana", True, "x11")
    logind_mock.update(desktop, SESSION_IFACE, {"IdleHint": b(True), "IdleSinceHint": SOME_TIME})
    # Someone busy on a TTY, and a switched-away desktop of another user: neither says
    # anything about whether ana is at her desktop.
    tty = add_session(logind_mock, "3", 1001, "ben", True, "tty")
    logind_mock.update(tty, SESSION_IFACE, {"IdleSinceHint": SOME_TIME})
    other = add_session(logind_mock, "c2", 1002, "cai", False, "wayland")
    logind_mock.update(other, SESSION_IFACE, {"IdleSinceHint": SOME_TIME})
    assert len(logind.sessions()) == 3
    assert logind.session_state() == SessionState(idle=True, locked=False, known=True)

    # A greeter is not a user at the desktop either.
    logind_mock.update(desktop, SESSION_IFACE, {"Class": s("greeter")})
    assert logind.session_state() == UNKNOWN


def test_no_session_at_all_is_unknown(logind: LogindClient) -> None:
    assert logind.sessions() == []
    assert logind.session_state() == UNKNOWN


def _session(sid: str, idle: bool, locked: bool, since: int = 1) -> SessionInfo:
    return SessionInfo(id=sid, uid=1000, user="ana", seat="seat0", path=f"/s/{sid}",
                       active=True, type="wayland", session_class="user", remote=False,
                       state="active", idle_hint=idle, locked_hint=locked,
                       idle_since_usec=since)


def test_two_seats_are_idle_only_when_both_are() -> None:
    both = [_session("a", True, True), _session("b", True, False)]
    assert aggregate_session_state(both) == SessionState(idle=True, locked=False, known=True)
    one_busy = [_session("a", True, True), _session("b", False, False)]
    assert aggregate_session_state(one_busy).away is False
    never_set = [_session("a", False, False, since=0)]
    assert aggregate_session_state(never_set) == UNKNOWN


def test_fake_logind() -> None:
    fake = FakeLogind([_session("a", True, False)])
    assert fake.session_state().away
    fake.state = UNKNOWN
    assert fake.session_state() == UNKNOWN
    fake.failing = True
    with pytest.raises(Exception, match="not running"):
        fake.sessions()
