"""In-memory stand-ins for the D-Bus adapters, shipped for tests (as httpx ships MockTransport).

Each fake implements its adapter's Protocol with the same semantics as the real client:
the same pure rules decide (choose_modes, aggregate_session_state), set_metered answers
False when nothing changes, restore_metered leaves values someone else changed. Each fake
records its side effects in `calls`, and with `failing` set raises SystemBusError as a
stopped daemon would.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import replace

from .bus import SystemBusError
from .logind import SessionInfo, SessionState, aggregate_session_state
from .modemmanager import Mode, ModemInfo, ModePair, choose_modes
from .networkmanager import MeteredChange
from .nm_types import ActiveConnection, NMMetered

_NOT_RUNNING = "org.freedesktop.DBus.Error.ServiceUnknown"


class _Failing:
    failing = False
    service = ""

    def _check(self) -> None:
        if self.failing:
            raise SystemBusError(f"fake {self.service} is not running", _NOT_RUNNING)

    def close(self) -> None:
        return None


class FakeNetworkManager(_Failing):
    """`profile_metered` holds each profile's connection.metered by UUID (absent: 0, unset);
    a test changes it to play a user who changed the flag behind meterguard's back."""

    service = "NetworkManager"

    def __init__(self, connections: Iterable[ActiveConnection] = ()) -> None:
        self.connections = list(connections)
        self.profile_metered: dict[str, int] = {}
        self.calls: list[tuple[str, str, int]] = []
        self._changes: dict[str, MeteredChange] = {}
        self._down: list[ActiveConnection] = []

    def active_connections(self) -> list[ActiveConnection]:
        self._check()
        return list(self.connections)

    def set_metered(self, connection: ActiveConnection | str, metered: bool) -> bool:
        self._check()
        uuid = connection.uuid if isinstance(connection, ActiveConnection) else connection
        current = self.profile_metered.get(uuid, 0)
        wanted = int(NMMetered.YES if metered else NMMetered.NO)
        if current == wanted:
            return False
        self.profile_metered[uuid] = wanted
        self.calls.append(("set_metered", uuid, wanted))
        earlier = self._changes.get(uuid)
        previous = earlier.previous if earlier is not None else current
        self._changes[uuid] = MeteredChange(uuid, "", previous, wanted)
        return True

    def restore_metered(self) -> list[str]:
        self._check()
        restored = []
        for uuid, change in self._changes.items():
            if self.profile_metered.get(uuid, 0) == change.applied:
                self.profile_metered[uuid] = change.previous
                self.calls.append(("restore_metered", uuid, change.previous))
                restored.append(uuid)
        self._changes.clear()
        return restored

    def disconnect(self, interfaces: Iterable[str]) -> bool:
        self._check()
        patterns = list(interfaces)
        hit = [c for c in self.connections
               if any(fnmatch.fnmatchcase(n, p) for n in c.interfaces for p in patterns)]
        for c in hit:
            self.connections.remove(c)
            self._down.append(c)
            self.calls.append(("disconnect", c.interfaces[0], 0))
        return bool(hit)

    def reconnect(self) -> list[str]:
        self._check()
        back = [replace(c) for c in self._down]
        self.connections.extend(back)
        self._down.clear()
        for c in back:
            self.calls.append(("reconnect", c.interfaces[0], 0))
        return [c.interfaces[0] for c in back]


class FakeModemManager(_Failing):
    service = "ModemManager"

    def __init__(self, modems: Iterable[ModemInfo] = ()) -> None:
        self.modems_by_path = {m.path: m for m in modems}
        self.calls: list[tuple[str, ModePair]] = []

    def modems(self) -> list[ModemInfo]:
        self._check()
        return list(self.modems_by_path.values())

    def set_mode(self, modem: ModemInfo | str, mode: Mode) -> ModePair:
        self._check()
        path = modem.path if isinstance(modem, ModemInfo) else modem
        current = self.modems_by_path[path]
        pair = choose_modes(current.supported_modes, mode)
        if current.current_modes != pair:
            self.calls.append((path, pair))
            self.modems_by_path[path] = replace(current, current_modes=pair)
        return pair


class FakeLogind(_Failing):
    """Set `sessions_list`, or `state` to bypass the aggregation entirely."""

    service = "logind"

    def __init__(self, sessions: Iterable[SessionInfo] = (),
                 state: SessionState | None = None) -> None:
        self.sessions_list = list(sessions)
        self.state = state

    def sessions(self) -> list[SessionInfo]:
        self._check()
        return list(self.sessions_list)

    def session_state(self) -> SessionState:
        self._check()
        return self.state if self.state is not None else aggregate_session_state(
            self.sessions_list)
