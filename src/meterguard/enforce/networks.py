"""Which interfaces are metered right now, and to which network each belongs. Pure.

Three sources, in order of precedence:

1. the config's interface names and globs (and the tunnels riding on them);
2. a config network whose `match` (SSID, BSSID, ICCID, IMSI, operator) fits an active
   connection that NetworkManager or ModemManager reports: it claims that connection's
   interfaces, so a profile follows the SIM or the hotspot;
3. a connection NetworkManager itself calls metered (its own setting, a modem, Android's
   DHCP hint), not claimed above: metered as `nm-<connection id>`.

A link with no metered hint that still looks like a phone's hotspot (an iPhone hands out
172.20.10.0/28) is reported as a hint for the user to mark it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from meterguard.config import Config
from meterguard.config.schema import NetworkConfig
from meterguard.system.modemmanager import ModemInfo
from meterguard.system.nm_types import ActiveConnection

_SAFE = re.compile(r"[^a-z0-9_-]+")


@dataclass(frozen=True)
class NetworkView:
    # interface (name or glob) -> metered network name
    interfaces: dict[str, str] = field(default_factory=dict)
    tunnels: frozenset[str] = frozenset()  # globs of tunnel interfaces
    tunnel_ports: tuple[str, ...] = ()
    roaming: frozenset[str] = frozenset()  # networks whose modem roams now
    hints: tuple[str, ...] = ()
    # NetworkManager connections meterguard treats as metered (their flag is set in memory)
    nm_metered: tuple[str, ...] = ()  # connection UUIDs

    def network_of(self, ifname: str) -> str | None:
        if ifname in self.interfaces:
            return self.interfaces[ifname]
        for pattern, network in self.interfaces.items():
            if fnmatchcase(ifname, pattern):
                return network
        return None

    def globs(self) -> tuple[str, ...]:
        return tuple(self.interfaces)

    def is_tunnel(self, ifname: str) -> bool:
        return any(fnmatchcase(ifname, g) for g in self.tunnels)


def _matches(net: NetworkConfig, conn: ActiveConnection, modems: Sequence[ModemInfo]) -> bool:
    m = net.match
    if m is None:
        return False
    checks: list[bool] = []
    if m.ssid is not None:
        checks.append(conn.ssid == m.ssid)
    if m.bssid is not None:
        checks.append((conn.bssid or "").lower() == m.bssid.lower())
    sim = [md for md in modems if set(md.net_interfaces) & set(conn.interfaces)]
    if m.iccid is not None:
        checks.append(any(md.iccid == m.iccid for md in sim))
    if m.imsi is not None:
        checks.append(any(md.imsi == m.imsi for md in sim))
    if m.operator is not None:
        checks.append(any(m.operator in (md.operator_name, md.operator_code) for md in sim))
    return bool(checks) and all(checks)


def resolve(
    config: Config, connections: Sequence[ActiveConnection], modems: Sequence[ModemInfo],
    *, follow_nm_metered: bool = True,
) -> NetworkView:
    interfaces: dict[str, str] = {}
    tunnels: list[str] = []
    ports: list[str] = []
    for net in config.metered_networks():
        for pattern in net.interfaces:
            interfaces.setdefault(pattern, net.name)
        for pattern in net.tunnels:
            interfaces.setdefault(pattern, net.name)
            tunnels.append(pattern)
        ports += net.tunnel_ports
    claimed_by_config = {
        i for c in connections for i in c.interfaces
        if any(fnmatchcase(i, p) for p in interfaces)
    }
    nm_metered: list[str] = []
    hints: list[str] = []
    for conn in connections:
        matched = next((n for n in config.network if _matches(n, conn, modems)), None)
        if matched is not None:
            if matched.metered:
                for ifname in conn.interfaces:
                    interfaces[ifname] = matched.name
                nm_metered.append(conn.uuid)
            continue
        if any(i in claimed_by_config for i in conn.interfaces):
            if any(interfaces.get(i) for i in conn.interfaces):
                nm_metered.append(conn.uuid)
            continue
        unmetered = any(config.network_for_interface(i) for i in conn.interfaces)
        if follow_nm_metered and conn.is_metered and not unmetered:
            name = "nm-" + (_SAFE.sub("-", conn.id.lower()).strip("-") or "metered")[:28]
            for ifname in conn.interfaces:
                interfaces[ifname] = name
            # A guess becomes a definite "yes" for as long as meterguard meters it.
            nm_metered.append(conn.uuid)
        elif conn.iphone_hotspot_hint and not unmetered:
            hints.append(
                f"{conn.id} ({', '.join(conn.interfaces)}) looks like an iPhone hotspot "
                f"(172.20.10.0/28) but sends no metered hint: add a network with "
                f'match = {{ ssid = "{conn.ssid or conn.id}" }} and metered = true'
            )
    roaming = frozenset(
        network for md in modems if md.roaming
        for ifname in md.net_interfaces
        if (network := _network_for(interfaces, ifname)) is not None
    )
    return NetworkView(interfaces, frozenset(tunnels), tuple(dict.fromkeys(ports)), roaming,
                       tuple(hints), tuple(dict.fromkeys(nm_metered)))


def _network_for(interfaces: dict[str, str], ifname: str) -> str | None:
    if ifname in interfaces:
        return interfaces[ifname]
    return next((n for p, n in interfaces.items() if fnmatchcase(ifname, p)), None)
