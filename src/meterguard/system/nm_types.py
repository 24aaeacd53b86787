"""What meterguard knows about a NetworkManager active connection, and the hints it reads.

Pure data and pure functions: `networkmanager.py` fills these in from the bus, the fake fills
them in from a test, and the network matcher reads them. The numbers are NetworkManager's
D-Bus API values (nm-dbus-interface.h), which are stable across releases.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import IntEnum
from types import MappingProxyType
from typing import Literal


class NMDeviceType(IntEnum):
    """NMDeviceType, the subset meterguard distinguishes."""

    UNKNOWN = 0
    ETHERNET = 1
    WIFI = 2
    BT = 5
    MODEM = 8
    TUN = 16
    WIREGUARD = 29


class NMMetered(IntEnum):
    """NMMetered. A profile's `connection.metered` only takes UNKNOWN, YES or NO; a device's
    `Metered` can also be one of NetworkManager's guesses."""

    UNKNOWN = 0
    YES = 1
    NO = 2
    GUESS_YES = 3
    GUESS_NO = 4


# NetworkManager's own advice: treat GUESS_YES like YES and everything else as not metered.
# GUESS_YES is what NetworkManager reports for a modem, and for DHCP's ANDROID_METERED hint.
METERED_VALUES = frozenset({NMMetered.YES, NMMetered.GUESS_YES})

# USB tethering looks like plain Ethernet to NetworkManager; the kernel driver gives it away.
# rndis_host: Android's RNDIS; cdc_ether: CDC-ECM (Android and others); ipheth: an iPhone.
TETHER_DRIVERS = frozenset({"rndis_host", "cdc_ether", "ipheth"})

# An iPhone's Personal Hotspot (Wi-Fi and USB alike) hands out addresses from this /28 and
# sends no metered hint, so an address inside it is worth asking the user about.
IPHONE_HOTSPOT_NET = ipaddress.IPv4Network("172.20.10.0/28")

# Android puts this string in DHCP option 43 (vendor-encapsulated options) on its hotspot.
ANDROID_METERED = "ANDROID_METERED"

LinkKind = Literal["modem", "bluetooth", "usb-tether", "wifi", "ethernet", "other"]


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """One NetworkManager device of an active connection."""

    path: str
    interface: str  # Device.Interface: for a modem, the control port (cdc-wdm0, ttyUSB2)
    ip_interface: str  # Device.IpInterface: the netdev that carries IP (wwan0); "" if none
    device_type: int
    driver: str
    metered: int  # NMMetered, as the device reports it right now
    ssid: bytes | None = None  # of the active access point, Wi-Fi only
    bssid: str | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """The interface names this device answers to, IP interface first."""
        names = [n for n in (self.ip_interface, self.interface) if n]
        return tuple(dict.fromkeys(names))

    @property
    def kind(self) -> LinkKind:
        if self.device_type == NMDeviceType.MODEM:
            return "modem"
        if self.device_type == NMDeviceType.BT:
            return "bluetooth"
        if self.device_type == NMDeviceType.WIFI:
            return "wifi"
        if self.device_type == NMDeviceType.ETHERNET:
            return "usb-tether" if self.driver in TETHER_DRIVERS else "ethernet"
        return "other"


def _empty_options() -> MappingProxyType[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class ActiveConnection:
    """An active NetworkManager connection with what meterguard matches networks on."""

    path: str  # the Connection.Active object
    settings_path: str  # the Settings.Connection profile behind it
    id: str
    uuid: str
    type: str  # connection.type: "gsm", "802-11-wireless", "802-3-ethernet", "bluetooth"...
    devices: tuple[DeviceInfo, ...]
    ipv4: tuple[ipaddress.IPv4Interface, ...] = ()
    dhcp4_options: MappingProxyType[str, str] = field(default_factory=_empty_options)
    vpn: bool = False

    @property
    def interfaces(self) -> tuple[str, ...]:
        names = [n for d in self.devices for n in d.names]
        return tuple(dict.fromkeys(names))

    @property
    def kind(self) -> LinkKind:
        return self.devices[0].kind if self.devices else "other"

    @property
    def metered(self) -> NMMetered:
        """The most metered of the devices' states (a connection has one device in practice)."""
        values = [_metered(d.metered) for d in self.devices] or [NMMetered.UNKNOWN]
        for wanted in (NMMetered.YES, NMMetered.GUESS_YES, NMMetered.NO, NMMetered.GUESS_NO):
            if wanted in values:
                return wanted
        return NMMetered.UNKNOWN

    @property
    def is_metered(self) -> bool:
        return self.metered in METERED_VALUES

    @property
    def ssid(self) -> str | None:
        for d in self.devices:
            if d.ssid is not None:
                # An SSID is 0-32 arbitrary bytes; config files hold text, so decode leniently.
                return d.ssid.decode("utf-8", errors="replace")
        return None

    @property
    def bssid(self) -> str | None:
        return next((d.bssid for d in self.devices if d.bssid), None)

    @property
    def android_metered_hint(self) -> bool:
        return android_metered_hint(self.dhcp4_options)

    @property
    def iphone_hotspot_hint(self) -> bool:
        return any(a.ip in IPHONE_HOTSPOT_NET for a in self.ipv4)


def _metered(value: int) -> NMMetered:
    try:
        return NMMetered(value)
    except ValueError:
        return NMMetered.UNKNOWN


def android_metered_hint(options: MappingProxyType[str, str] | dict[str, str]) -> bool:
    """Whether the DHCPv4 options carry Android's ANDROID_METERED vendor option (43).

    dhclient exports option 43 as `vendor_encapsulated_options`, either as text or as
    colon-separated hex when it holds non-printable bytes, so both forms are checked.
    NetworkManager's internal DHCP client does not export option 43 at all: there the hint
    only shows as Device.Metered = GUESS_YES.
    """
    for value in options.values():
        if ANDROID_METERED in value:
            return True
        try:
            raw = bytes.fromhex(value.replace(":", ""))
        except ValueError:
            continue
        if ANDROID_METERED.encode() in raw:
            return True
    return False
