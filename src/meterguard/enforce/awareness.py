"""What the desktop's own daemons say: NetworkManager, ModemManager, logind.

Each is optional: a gateway or a test machine may run none of them, and then the config
alone decides. A daemon that is missing (or fails) is asked again later, and the reason is
logged once, not at every poll.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from meterguard.config import Config
from meterguard.core.policy import UNKNOWN_SESSION, SessionState
from meterguard.enforce.networks import NetworkView, resolve
from meterguard.system.bus import SystemBusError
from meterguard.system.logind import LogindApi
from meterguard.system.modemmanager import ModemInfo, ModemManagerApi
from meterguard.system.networkmanager import NetworkManagerApi
from meterguard.system.nm_types import ActiveConnection

log = logging.getLogger(__name__)


@dataclass
class Awareness:
    config: Config
    nm: NetworkManagerApi | None = None
    mm: ModemManagerApi | None = None
    logind: LogindApi | None = None
    connections: list[ActiveConnection] = field(default_factory=list)
    modems: list[ModemInfo] = field(default_factory=list)
    session: SessionState = UNKNOWN_SESSION
    view: NetworkView = field(init=False)
    _failing: set[str] = field(default_factory=set)
    _flagged: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.view = resolve(self.config, [], [])

    def view_network(self, ifname: str) -> str | None:
        return self.view.network_of(ifname)

    def view_is_tunnel(self, ifname: str) -> bool:
        return self.view.is_tunnel(ifname)

    def refresh(self) -> bool:
        """Ask the daemons again; True when the metered interfaces changed."""
        if self.nm is not None:
            try:
                self.connections = self.nm.active_connections()
                self._ok("NetworkManager")
            except SystemBusError as exc:
                self._fail("NetworkManager", exc)
                self.connections = []
        if self.mm is not None:
            try:
                self.modems = self.mm.modems()
                self._ok("ModemManager")
            except SystemBusError as exc:
                self._fail("ModemManager", exc)
                self.modems = []
        if self.logind is not None:
            try:
                state = self.logind.session_state()
                self.session = SessionState(state.idle, state.locked, state.known)
                self._ok("logind")
            except SystemBusError as exc:
                self._fail("logind", exc)
                self.session = UNKNOWN_SESSION
        old = self.view
        self.view = resolve(self.config, self.connections, self.modems)
        self._flag_metered()
        return self.view.interfaces != old.interfaces or self.view.tunnels != old.tunnels

    def _ok(self, name: str) -> None:
        if name in self._failing:
            log.info("%s answers again", name)
            self._failing.discard(name)

    def _fail(self, name: str, exc: SystemBusError) -> None:
        if name not in self._failing:
            log.info("%s is not available (%s); the config alone decides", name, exc)
            self._failing.add(name)

    def _flag_metered(self) -> None:
        """Tell NetworkManager what meterguard meters, so well-behaved software defers
        its updates. In memory only; `restore` puts every flag back."""
        if self.nm is None:
            return
        for uuid in self.view.nm_metered:
            if uuid in self._flagged:
                continue
            try:
                self.nm.set_metered(uuid, True)
                self._flagged.add(uuid)
            except SystemBusError as exc:
                log.warning("cannot mark connection %s metered: %s", uuid, exc)

    def restore(self) -> list[str]:
        if self.nm is None or not self._flagged:
            return []
        try:
            return self.nm.restore_metered()
        except SystemBusError as exc:
            log.warning("cannot restore NetworkManager's metered flags: %s", exc)
            return []

    def disconnect(self, interfaces: Sequence[str]) -> bool:
        if self.nm is None:
            return False
        try:
            return self.nm.disconnect(interfaces)
        except SystemBusError as exc:
            log.warning("cannot disconnect %s: %s", ", ".join(interfaces), exc)
            return False

    def reconnect(self) -> list[str]:
        if self.nm is None:
            return []
        try:
            return self.nm.reconnect()
        except SystemBusError as exc:
            log.warning("cannot reconnect: %s", exc)
            return []

    def close(self) -> None:
        for client in (self.nm, self.mm, self.logind):
            if client is not None:
                with contextlib.suppress(SystemBusError):
                    client.close()
