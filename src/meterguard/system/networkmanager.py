"""NetworkManager over D-Bus: active connections, the in-memory metered flag, disconnecting.

- `active_connections()` reads what meterguard matches networks on: device type and driver
  (USB tethering is Ethernet with a tethering driver), `Device.Metered`, the Wi-Fi SSID and
  BSSID of the active access point, the IPv4 addresses and the DHCPv4 options.
- `set_metered()` sets the profile's `connection.metered` with `Update2` and the IN_MEMORY
  flag only, so nothing is written to /etc and a reboot forgets it. NetworkManager applies
  `connection.metered` to an active device at once (it is one of the two properties it
  reapplies immediately), so well-behaved software sees the link as metered right away.
- `restore_metered()` puts back every value it changed, unless someone changed it again
  since: the user's later choice wins over meterguard's memory. The changes are recorded in
  an optional state file so that `meterguard uninstall`, another process, can revert them.
- `disconnect()` is the cap action "disconnect": Device.Disconnect() on the matching
  devices. NetworkManager then blocks autoconnect on the device until something activates it
  again, which is what `reconnect()` does at rollover.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

from dbus_fast import Variant
from dbus_fast.aio import MessageBus

from .bus import DEFAULT_TIMEOUT, BusThread, SystemBusError, call, get_all, is_object
from .nm_types import ActiveConnection, DeviceInfo, NMDeviceType, NMMetered

NM_BUS = "org.freedesktop.NetworkManager"
NM_PATH = "/org/freedesktop/NetworkManager"
NM_IFACE = NM_BUS
DEVICE_IFACE = f"{NM_BUS}.Device"
WIRELESS_IFACE = f"{NM_BUS}.Device.Wireless"
AP_IFACE = f"{NM_BUS}.AccessPoint"
ACTIVE_IFACE = f"{NM_BUS}.Connection.Active"
IP4_IFACE = f"{NM_BUS}.IP4Config"
DHCP4_IFACE = f"{NM_BUS}.DHCP4Config"
SETTINGS_PATH = f"{NM_PATH}/Settings"
SETTINGS_IFACE = f"{NM_BUS}.Settings"
CONNECTION_IFACE = f"{NM_BUS}.Settings.Connection"

# NMSettingsUpdate2Flags.IN_MEMORY: NetworkManager keeps the changed profile in /run and
# leaves the file on disk alone, so the user's own profile is back after a reboot.
UPDATE2_FLAG_IN_MEMORY = 0x2
UPDATE2_SIGNATURE = "a{sa{sv}}ua{sv}"


@dataclass(frozen=True, slots=True)
class MeteredChange:
    uuid: str
    id: str
    previous: int  # connection.metered before meterguard touched it (0 when it was unset)
    applied: int  # what meterguard set


@dataclass(frozen=True, slots=True)
class Disconnected:
    interface: str  # Device.Interface: stays set while a modem is down, unlike IpInterface
    uuid: str  # the profile that was active, to bring back with ActivateConnection


class _StateFile:
    """What meterguard changed in NetworkManager, kept so another process can undo it."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.metered: dict[str, MeteredChange] = {}
        self.disconnected: list[Disconnected] = []
        if path is not None and path.exists():
            data = json.loads(path.read_text())
            self.metered = {c["uuid"]: MeteredChange(**c) for c in data.get("metered", [])}
            self.disconnected = [Disconnected(**d) for d in data.get("disconnected", [])]

    def save(self) -> None:
        if self.path is None:
            return
        data = {
            "metered": [asdict(c) for c in self.metered.values()],
            "disconnected": [asdict(d) for d in self.disconnected],
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self.path)  # atomic: a crash leaves the old record or the new one


class NetworkManagerApi(Protocol):
    """The NetworkManager side effects meterguard uses (the real client and the fake)."""

    def active_connections(self) -> list[ActiveConnection]: ...

    def set_metered(self, connection: ActiveConnection | str, metered: bool) -> bool:
        """Set the profile (an active connection, or a profile UUID) metered or not, in
        memory only. Returns False when it already had that value (nothing to undo)."""
        ...

    def restore_metered(self) -> list[str]:
        """Revert every set_metered change; returns the UUIDs put back."""
        ...

    def disconnect(self, interfaces: Iterable[str]) -> bool:
        """Disconnect the active devices whose interface matches a glob; True if any was."""
        ...

    def reconnect(self) -> list[str]:
        """Re-activate what disconnect() took down; returns the interfaces brought back."""
        ...

    def close(self) -> None: ...


# -- the async implementation -------------------------------------------------------------


async def _props(bus: MessageBus, path: str, interface: str) -> dict[str, Any]:
    return await get_all(bus, NM_BUS, path, interface)


async def _device(bus: MessageBus, path: str, specific_object: str
                  ) -> tuple[DeviceInfo, dict[str, Any]]:
    props = await _props(bus, path, DEVICE_IFACE)
    ssid: bytes | None = None
    bssid: str | None = None
    if props.get("DeviceType") == NMDeviceType.WIFI:
        wireless = await _props(bus, path, WIRELESS_IFACE)
        ap = wireless.get("ActiveAccessPoint", "/")
        # A Wi-Fi active connection's SpecificObject is its access point as well.
        ap = ap if is_object(ap) else specific_object
        if is_object(ap) and "/AccessPoint/" in ap:
            ap_props = await _props(bus, ap, AP_IFACE)
            ssid = bytes(ap_props.get("Ssid", b""))
            bssid = str(ap_props.get("HwAddress", "")) or None
    info = DeviceInfo(
        path=path,
        interface=str(props.get("Interface", "")),
        ip_interface=str(props.get("IpInterface", "")),
        device_type=int(props.get("DeviceType", 0)),
        driver=str(props.get("Driver", "")),
        # Device.Metered exists since NetworkManager 1.2; older daemons simply lack it.
        metered=int(props.get("Metered", NMMetered.UNKNOWN)),
        ssid=ssid,
        bssid=bssid,
    )
    return info, props


async def _ipv4(bus: MessageBus, path: str) -> tuple[ipaddress.IPv4Interface, ...]:
    if not is_object(path):
        return ()
    props = await _props(bus, path, IP4_IFACE)
    return tuple(
        ipaddress.IPv4Interface(f"{a['address']}/{a['prefix']}")
        for a in props.get("AddressData", [])
    )


async def _dhcp4(bus: MessageBus, path: str) -> dict[str, str]:
    if not is_object(path):
        return {}
    props = await _props(bus, path, DHCP4_IFACE)
    return {str(k): str(v) for k, v in props.get("Options", {}).items()}


def _first_object(*paths: object) -> str:
    return next((str(p) for p in paths if is_object(p)), "/")


async def read_active_connections(bus: MessageBus) -> list[ActiveConnection]:
    manager = await _props(bus, NM_PATH, NM_IFACE)
    result = []
    for path in manager.get("ActiveConnections", []):
        try:
            ac = await _props(bus, path, ACTIVE_IFACE)
            specific = str(ac.get("SpecificObject", "/"))
            read = [await _device(bus, d, specific) for d in ac.get("Devices", [])]
            devices = [info for info, _ in read]
            # The connection's own configs; the first device's are the same objects while it
            # is up, and the fallback when the connection does not export them.
            first = read[0][1] if read else {}
            ip4_path = _first_object(ac.get("Ip4Config"), first.get("Ip4Config"))
            dhcp_path = _first_object(ac.get("Dhcp4Config"), first.get("Dhcp4Config"))
            ipv4 = await _ipv4(bus, ip4_path)
            dhcp = await _dhcp4(bus, dhcp_path)
        except SystemBusError:
            # The connection went down between listing and reading it: it is no longer active.
            continue
        result.append(
            ActiveConnection(
                path=path,
                settings_path=str(ac.get("Connection", "/")),
                id=str(ac.get("Id", "")),
                uuid=str(ac.get("Uuid", "")),
                type=str(ac.get("Type", "")),
                devices=tuple(devices),
                ipv4=ipv4,
                dhcp4_options=MappingProxyType(dhcp),
                vpn=bool(ac.get("Vpn", False)),
            )
        )
    return result


async def _profile_path(bus: MessageBus, uuid: str) -> str:
    [path] = await call(bus, NM_BUS, SETTINGS_PATH, SETTINGS_IFACE, "GetConnectionByUuid", "s",
                        [uuid])
    return str(path)


async def _settings(bus: MessageBus, path: str) -> dict[str, dict[str, Variant]]:
    [settings] = await call(bus, NM_BUS, path, CONNECTION_IFACE, "GetSettings")
    return dict(settings)


def _metered_of(settings: dict[str, dict[str, Variant]]) -> int:
    value = settings.get("connection", {}).get("metered")
    return int(value.value) if value is not None else int(NMMetered.UNKNOWN)


async def _update_metered(bus: MessageBus, path: str, settings: dict[str, dict[str, Variant]],
                          value: int) -> None:
    # Update2 replaces the whole profile, so send all of it back with one value changed.
    # GetSettings leaves the secrets out; NetworkManager keeps the stored secrets when an
    # update carries none, so they need not (and should not) pass through meterguard.
    new = {name: dict(setting) for name, setting in settings.items()}
    new.setdefault("connection", {})["metered"] = Variant("i", value)
    await call(bus, NM_BUS, path, CONNECTION_IFACE, "Update2", UPDATE2_SIGNATURE,
               [new, UPDATE2_FLAG_IN_MEMORY, {}])


class AsyncNetworkManagerClient:
    """The NetworkManager adapter as coroutines over a caller's MessageBus."""

    def __init__(self, *, state_file: Path | None = None) -> None:
        self._state = _StateFile(state_file)

    async def active_connections(self, bus: MessageBus) -> list[ActiveConnection]:
        return await read_active_connections(bus)

    async def set_metered(self, bus: MessageBus, connection: ActiveConnection | str,
                          metered: bool) -> bool:
        if isinstance(connection, ActiveConnection):
            uuid, path = connection.uuid, connection.settings_path
        else:
            uuid, path = connection, await _profile_path(bus, connection)
        settings = await _settings(bus, path)
        current = _metered_of(settings)
        wanted = int(NMMetered.YES if metered else NMMetered.NO)
        if current == wanted:
            return False
        await _update_metered(bus, path, settings, wanted)
        earlier = self._state.metered.get(uuid)
        # Keep the value from before meterguard's first change: that is what to go back to.
        previous = earlier.previous if earlier is not None else current
        name = str(settings.get("connection", {}).get("id", Variant("s", "")).value)
        self._state.metered[uuid] = MeteredChange(uuid, name, previous, wanted)
        self._state.save()
        return True

    async def restore_metered(self, bus: MessageBus) -> list[str]:
        restored: list[str] = []
        failures: list[str] = []
        for uuid, change in list(self._state.metered.items()):
            try:
                path = await _profile_path(bus, uuid)
            except SystemBusError:
                # The profile was deleted, so there is nothing left to restore.
                del self._state.metered[uuid]
                continue
            try:
                settings = await _settings(bus, path)
                # Changed since (by the user, or a reboot dropped the in-memory profile):
                # the current value is someone else's decision, leave it.
                if _metered_of(settings) == change.applied:
                    await _update_metered(bus, path, settings, change.previous)
                    restored.append(uuid)
            except SystemBusError as exc:
                failures.append(f"{change.id or uuid}: {exc}")
                continue  # kept in the record, so a later restore can try again
            del self._state.metered[uuid]
        self._state.save()
        if failures:
            raise SystemBusError("could not restore connection.metered: " + "; ".join(failures))
        return restored

    async def disconnect(self, bus: MessageBus, interfaces: Iterable[str]) -> bool:
        patterns = list(interfaces)
        [devices] = await call(bus, NM_BUS, NM_PATH, NM_IFACE, "GetDevices")
        done = 0
        failures: list[str] = []
        for path in devices:
            props = await _props(bus, path, DEVICE_IFACE)
            names = [n for n in (props.get("IpInterface"), props.get("Interface")) if n]
            active = props.get("ActiveConnection", "/")
            if not is_object(active) or not any(
                fnmatch.fnmatchcase(name, p) for name in names for p in patterns
            ):
                continue
            try:
                uuid = str((await _props(bus, active, ACTIVE_IFACE)).get("Uuid", ""))
                await call(bus, NM_BUS, path, DEVICE_IFACE, "Disconnect")
            except SystemBusError as exc:
                failures.append(f"{names[0]}: {exc}")
                continue
            done += 1
            self._state.disconnected.append(Disconnected(str(props.get("Interface")), uuid))
        self._state.save()
        if failures:
            # Every match was tried first: a cap must cut as much as it can.
            raise SystemBusError("Device.Disconnect failed: " + "; ".join(failures))
        return done > 0

    async def reconnect(self, bus: MessageBus) -> list[str]:
        [devices] = await call(bus, NM_BUS, NM_PATH, NM_IFACE, "GetDevices")
        by_interface = {}
        for path in devices:
            props = await _props(bus, path, DEVICE_IFACE)
            by_interface[str(props.get("Interface", ""))] = path
        back: list[str] = []
        for entry in list(self._state.disconnected):
            device = by_interface.get(entry.interface)
            try:
                profile = await _profile_path(bus, entry.uuid)
            except SystemBusError:
                profile = None  # the profile was deleted: nothing to bring back
            if device is not None and profile is not None:
                # An error here propagates and keeps the entry, so the next call retries.
                await call(bus, NM_BUS, NM_PATH, NM_IFACE, "ActivateConnection", "ooo",
                           [profile, device, "/"])
                back.append(entry.interface)
            # A device that is gone (modem unplugged) autoconnects when it is plugged again:
            # the autoconnect block only lives on the device object Disconnect was called on.
            self._state.disconnected.remove(entry)
            self._state.save()
        return back


# -- the synchronous facade -----------------------------------------------------------------


class NetworkManagerClient:
    """NetworkManager for synchronous callers: each method runs on a private loop thread."""

    def __init__(self, bus_address: str | None = None, *, state_file: Path | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self._bus = BusThread(bus_address, timeout=timeout)
        self._client = AsyncNetworkManagerClient(state_file=state_file)

    def active_connections(self) -> list[ActiveConnection]:
        return self._bus.run(self._client.active_connections)

    def set_metered(self, connection: ActiveConnection | str, metered: bool) -> bool:
        return self._bus.run(lambda bus: self._client.set_metered(bus, connection, metered))

    def restore_metered(self) -> list[str]:
        return self._bus.run(self._client.restore_metered)

    def disconnect(self, interfaces: Iterable[str]) -> bool:
        patterns = list(interfaces)
        return self._bus.run(lambda bus: self._client.disconnect(bus, patterns))

    def reconnect(self) -> list[str]:
        return self._bus.run(self._client.reconnect)

    def close(self) -> None:
        self._bus.close()

    def __enter__(self) -> NetworkManagerClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
