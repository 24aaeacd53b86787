"""ModemManager over D-Bus: the modem, its SIM, roaming, 4G/5G, and setting the mode.

Numbers are ModemManager's D-Bus API values (ModemManager-enums.h). Note MMModemMode has a
circuit-switched bit first, so 2G is 1<<1, not 1<<0: CS=1, 2G=2, 3G=4, 4G=8, 5G=16.

A mode is never invented: ModemManager only accepts an (allowed, preferred) pair that the
modem lists in SupportedModes, so `choose_modes` picks one of those pairs:
- "5g": allowed has 4G and 5G, preferred 5G. 4G stays allowed so the modem falls back to LTE
  where there is no NR (and NSA 5G needs the LTE anchor anyway). Fewest allowed bits wins, so
  (4G|5G, 5G) beats (3G|4G|5G, 5G).
- "4g": allowed has 4G but not 5G; fewest allowed bits first (LTE only is the ideal), then
  preferred 4G, then no preference. Only if the modem lists no such pair, a pair that allows
  5G but prefers 4G.
- "auto": the pair with the most allowed bits and no preference: let the modem choose.
No fitting pair raises ModeNotSupportedError naming what the modem does support.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from dbus_fast import unpack_variants
from dbus_fast.aio import MessageBus

from .bus import (
    DEFAULT_TIMEOUT,
    OBJECT_MANAGER_IFACE,
    BusThread,
    SystemBusError,
    call,
    get_all,
    is_object,
)

MM_BUS = "org.freedesktop.ModemManager1"
MM_PATH = "/org/freedesktop/ModemManager1"
MODEM_IFACE = f"{MM_BUS}.Modem"
MODEM_3GPP_IFACE = f"{MM_BUS}.Modem.Modem3gpp"
SIM_IFACE = f"{MM_BUS}.Sim"

# MMModemMode
MODE_NONE = 0
MODE_CS = 1 << 0
MODE_2G = 1 << 1
MODE_3G = 1 << 2
MODE_4G = 1 << 3
MODE_5G = 1 << 4
MODE_ANY = 0xFFFFFFFF
_MODE_NAMES = ((MODE_5G, "5g"), (MODE_4G, "4g"), (MODE_3G, "3g"), (MODE_2G, "2g"),
               (MODE_CS, "cs"))

# MMModem3gppRegistrationState
REGISTRATION_NAMES = {
    0: "idle", 1: "home", 2: "searching", 3: "denied", 4: "unknown", 5: "roaming",
    6: "home-sms-only", 7: "roaming-sms-only", 8: "emergency-only",
    9: "home-csfb-not-preferred", 10: "roaming-csfb-not-preferred", 11: "attached-rlos",
}
# Registered on a visited network, whether for data (5), SMS only (7) or without CSFB (10).
ROAMING_STATES = frozenset({5, 7, 10})

# MMModemAccessTechnology bits, grouped into generations. LTE Cat-M (1<<16) and NB-IoT
# (1<<17) are LTE variants; 1xRTT is CDMA's 2G, EV-DO its 3G.
_TECH_GENERATIONS = (
    ("5g", 1 << 15),
    ("4g", (1 << 14) | (1 << 16) | (1 << 17)),
    ("3g", (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 11) | (1 << 12)
     | (1 << 13)),
    ("2g", (1 << 1) | (1 << 2) | (1 << 3) | (1 << 4) | (1 << 10)),
)
ACCESS_TECHNOLOGY_ANY = 0xFFFFFFFF

PORT_TYPE_NET = 2  # MMModemPortType: the network interface (wwan0) of the modem

Mode = Literal["4g", "5g", "auto"]
ModePair = tuple[int, int]  # (allowed bitmask, preferred mode)


class ModeNotSupportedError(ValueError):
    """The modem's SupportedModes has no (allowed, preferred) pair for the requested mode."""


def mode_names(mask: int) -> str:
    if mask == MODE_ANY:
        return "any"
    if mask == MODE_NONE:
        return "none"
    return "|".join(name for bit, name in reversed(_MODE_NAMES) if mask & bit)


def describe_pair(pair: ModePair) -> str:
    return f"{mode_names(pair[0])} (preferred {mode_names(pair[1])})"


def access_technology_labels(mask: int) -> tuple[str, ...]:
    """"5g", "4g", "3g", "2g" for the bits set, newest first (NSA 5G sets LTE and NR)."""
    if mask in (0, ACCESS_TECHNOLOGY_ANY):
        return ()
    return tuple(label for label, bits in _TECH_GENERATIONS if mask & bits)


def _popcount(mask: int) -> int:
    return bin(mask).count("1")


def choose_modes(supported: Sequence[ModePair], mode: Mode) -> ModePair:
    """Pick the (allowed, preferred) pair for `mode` from SupportedModes (rule: module doc)."""
    pairs = [(int(a), int(p)) for a, p in supported]
    chosen: ModePair | None = None
    if mode == "5g":
        fits = [(a, p) for a, p in pairs if a & MODE_4G and a & MODE_5G and p == MODE_5G]
        chosen = min(fits, key=lambda ap: _popcount(ap[0]), default=None)
    elif mode == "4g":
        without_5g = [(a, p) for a, p in pairs if a & MODE_4G and not a & MODE_5G]
        rank = {MODE_4G: 0, MODE_NONE: 1}
        chosen = min(without_5g, key=lambda ap: (_popcount(ap[0]), rank.get(ap[1], 2)),
                     default=None)
        if chosen is None:
            prefer_4g = [(a, p) for a, p in pairs if a & MODE_4G and p == MODE_4G]
            chosen = min(prefer_4g, key=lambda ap: _popcount(ap[0]), default=None)
    elif mode == "auto":
        free = [(a, p) for a, p in pairs if p == MODE_NONE]
        # max() keeps the first of equals: the modem's own order breaks ties.
        chosen = max(free, key=lambda ap: _popcount(ap[0]), default=None)
    else:
        raise ModeNotSupportedError(f"unknown mode {mode!r}: use 4g, 5g or auto")
    if chosen is None:
        listed = ", ".join(describe_pair(p) for p in pairs) or "nothing"
        raise ModeNotSupportedError(
            f"the modem supports no {mode} mode; its SupportedModes are: {listed}"
        )
    return chosen


@dataclass(frozen=True, slots=True)
class ModemInfo:
    path: str
    manufacturer: str
    model: str
    state: int  # MMModemState
    operator_name: str
    operator_code: str  # MCC+MNC of the network it is registered on
    registration_state: int  # MMModem3gppRegistrationState
    access_technology_mask: int
    sim_path: str
    iccid: str  # Sim.SimIdentifier
    imsi: str
    primary_port: str
    ports: tuple[tuple[str, int], ...]  # (name, MMModemPortType)
    supported_modes: tuple[ModePair, ...]
    current_modes: ModePair

    @property
    def roaming(self) -> bool:
        return self.registration_state in ROAMING_STATES

    @property
    def registration(self) -> str:
        return REGISTRATION_NAMES.get(self.registration_state, "unknown")

    @property
    def access_technologies(self) -> tuple[str, ...]:
        return access_technology_labels(self.access_technology_mask)

    @property
    def generation(self) -> str:
        """The newest technology in use: "5g", "4g", "3g", "2g" or "unknown"."""
        labels = self.access_technologies
        return labels[0] if labels else "unknown"

    @property
    def net_interfaces(self) -> tuple[str, ...]:
        return tuple(name for name, kind in self.ports if kind == PORT_TYPE_NET)


def _pair(value: Any) -> ModePair:
    allowed, preferred = value
    return int(allowed), int(preferred)


def modem_from_properties(path: str, modem: dict[str, Any], gpp: dict[str, Any],
                          sim: dict[str, Any]) -> ModemInfo:
    """A ModemInfo from plain property dicts (Modem, Modem3gpp and Sim interfaces)."""
    return ModemInfo(
        path=path,
        manufacturer=str(modem.get("Manufacturer", "")),
        model=str(modem.get("Model", "")),
        state=int(modem.get("State", 0)),
        operator_name=str(gpp.get("OperatorName", "")),
        operator_code=str(gpp.get("OperatorCode", "")),
        registration_state=int(gpp.get("RegistrationState", 4)),  # 4: unknown
        access_technology_mask=int(modem.get("AccessTechnologies", 0)),
        sim_path=str(modem.get("Sim", "/")),
        iccid=str(sim.get("SimIdentifier", "")),
        imsi=str(sim.get("Imsi", "")),
        primary_port=str(modem.get("PrimaryPort", "")),
        ports=tuple((str(n), int(t)) for n, t in modem.get("Ports", [])),
        supported_modes=tuple(_pair(p) for p in modem.get("SupportedModes", [])),
        current_modes=_pair(modem.get("CurrentModes", (MODE_NONE, MODE_NONE))),
    )


async def read_modems(bus: MessageBus) -> list[ModemInfo]:
    # ModemManager exports only modems through its ObjectManager; SIMs and bearers are
    # separate objects, read by path.
    [objects] = await call(bus, MM_BUS, MM_PATH, OBJECT_MANAGER_IFACE, "GetManagedObjects")
    modems = []
    for path, interfaces in sorted(unpack_variants(objects).items()):
        if MODEM_IFACE not in interfaces:
            continue
        modem = interfaces[MODEM_IFACE]
        sim: dict[str, Any] = {}
        # A SIM removed or still initialising: report the modem without it.
        if is_object(modem.get("Sim")):
            with contextlib.suppress(SystemBusError):
                sim = await get_all(bus, MM_BUS, modem["Sim"], SIM_IFACE)
        modems.append(modem_from_properties(path, modem, interfaces.get(MODEM_3GPP_IFACE, {}),
                                            sim))
    return modems


async def set_mode(bus: MessageBus, modem: ModemInfo | str, mode: Mode) -> ModePair:
    path = modem.path if isinstance(modem, ModemInfo) else modem
    # Read SupportedModes afresh: the modem may have been replugged or reconfigured.
    props = await get_all(bus, MM_BUS, path, MODEM_IFACE)
    pair = choose_modes([_pair(p) for p in props.get("SupportedModes", [])], mode)
    # Setting the same modes again makes some modems re-register, dropping the link.
    if _pair(props.get("CurrentModes", (MODE_NONE, MODE_NONE))) != pair:
        await call(bus, MM_BUS, path, MODEM_IFACE, "SetCurrentModes", "(uu)", [list(pair)])
    return pair


class ModemManagerApi(Protocol):
    """The ModemManager side effects meterguard uses (the real client and the fake)."""

    def modems(self) -> list[ModemInfo]: ...

    def set_mode(self, modem: ModemInfo | str, mode: Mode) -> ModePair:
        """Set "4g", "5g" or "auto" (a modem or its object path); returns the pair set.
        Raises ModeNotSupportedError when SupportedModes has no fitting pair."""
        ...

    def close(self) -> None: ...


class ModemManagerClient:
    """ModemManager for synchronous callers: each method runs on a private loop thread."""

    def __init__(self, bus_address: str | None = None, *,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self._bus = BusThread(bus_address, timeout=timeout)

    def modems(self) -> list[ModemInfo]:
        return self._bus.run(read_modems)

    def set_mode(self, modem: ModemInfo | str, mode: Mode) -> ModePair:
        """Set "4g", "5g" or "auto" with SetCurrentModes; returns the pair used."""
        return self._bus.run(lambda bus: set_mode(bus, modem, mode))

    def close(self) -> None:
        self._bus.close()

    def __enter__(self) -> ModemManagerClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
