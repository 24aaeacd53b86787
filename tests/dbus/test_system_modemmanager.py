"""ModemManagerClient against python-dbusmock's modemmanager template on a private bus.

The 0.38 template's simple modem has no RegistrationState, no SetCurrentModes, no ICCID and
no 5G modes, so the test publishes them as a 5G modem roaming on a Hong Kong eSIM would,
then checks what the client reports and the exact SetCurrentModes argument it sends.
MMModemMode: CS=1, 2G=2, 3G=4, 4G=8, 5G=16, so "5g" is (4G|5G, 5G) = (24, 16).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from dbus_fast import Variant
from system_bus import DBusMock, dbusmock_template, private_system_bus, s, u

from meterguard.system.fakes import FakeModemManager
from meterguard.system.modemmanager import (
    MODE_3G,
    MODE_4G,
    MODE_5G,
    MODE_NONE,
    MODEM_3GPP_IFACE,
    MODEM_IFACE,
    SIM_IFACE,
    ModemInfo,
    ModemManagerClient,
    ModeNotSupportedError,
    ModePair,
    choose_modes,
)

LTE = 1 << 14
NR5G = 1 << 15
ICCID = "89852000263457189012"
IMSI = "454006123456789"
# What a 5G module (Quectel-like) lists in SupportedModes, in ModemManager's own order.
SUPPORTED_5G = [
    (MODE_3G | MODE_4G | MODE_5G, MODE_NONE),
    (MODE_3G | MODE_4G | MODE_5G, MODE_5G),
    (MODE_4G | MODE_5G, MODE_NONE),
    (MODE_4G | MODE_5G, MODE_4G),
    (MODE_4G | MODE_5G, MODE_5G),
    (MODE_4G, MODE_NONE),
    (MODE_5G, MODE_NONE),
]
# SetCurrentModes as ModemManager has it; the mock stores the pair, as the daemon would
# publish the new CurrentModes.
SET_CURRENT_MODES = ("SetCurrentModes", "(uu)", "",
                     "self.Set('org.freedesktop.ModemManager1.Modem', 'CurrentModes', args[0])")


@dataclass
class Modem:
    mock: DBusMock
    path: str
    sim: str


def pairs(values: list[tuple[int, int]]) -> Variant:
    return Variant("a(uu)", [list(p) for p in values])


def publish_5g_modem(mock: DBusMock) -> Modem:
    path, sim = mock.mock(mock.main_path, "AddSimpleModem")
    mock.update(path, MODEM_IFACE, {
        "SupportedModes": pairs(SUPPORTED_5G),
        "CurrentModes": Variant("(uu)", [MODE_3G | MODE_4G | MODE_5G, MODE_NONE]),
        "AccessTechnologies": u(LTE | NR5G),  # NSA 5G: LTE anchor plus NR
    })
    mock.add_property(path, MODEM_IFACE, "Ports", Variant(
        "a(su)", [["cdc-wdm0", 7], ["wwan0", 2], ["ttyUSB2", 3]]))  # MBIM, net, AT
    mock.add_property(path, MODEM_IFACE, "PrimaryPort", s("cdc-wdm0"))
    mock.add_method(path, MODEM_IFACE, *SET_CURRENT_MODES)
    # A Hong Kong eSIM abroad: registered on a visited network (5 = roaming).
    mock.update(path, MODEM_3GPP_IFACE, {"OperatorName": s("SoftBank"),
                                         "OperatorCode": s("44020")})
    mock.add_property(path, MODEM_3GPP_IFACE, "RegistrationState", u(5))
    mock.add_property(sim, SIM_IFACE, "SimIdentifier", s(ICCID))
    mock.update(sim, SIM_IFACE, {"Imsi": s(IMSI)})
    return Modem(mock, str(path), str(sim))


@pytest.fixture
def mm_mock() -> Iterator[DBusMock]:
    with private_system_bus() as address, dbusmock_template(address, "modemmanager") as mock:
        yield mock


@pytest.fixture
def mm(mm_mock: DBusMock) -> Iterator[ModemManagerClient]:
    with ModemManagerClient(mm_mock.address, timeout=20) as client:
        yield client


def set_calls(modem: Modem) -> list[ModePair]:
    return [tuple(args[0]) for args in modem.mock.method_calls(modem.path, "SetCurrentModes")]


def test_modem_reports_operator_sim_roaming_and_technology(mm_mock: DBusMock,
                                                           mm: ModemManagerClient) -> None:
    modem = publish_5g_modem(mm_mock)
    [info] = mm.modems()
    assert info.path == modem.path and info.sim_path == modem.sim
    assert (info.operator_name, info.operator_code) == ("SoftBank", "44020")
    assert (info.iccid, info.imsi) == (ICCID, IMSI)
    assert info.roaming and info.registration == "roaming"
    assert (info.generation, info.access_technologies) == ("5g", ("5g", "4g"))
    assert info.net_interfaces == ("wwan0",) and info.primary_port == "cdc-wdm0"
    assert info.supported_modes == tuple(SUPPORTED_5G)
    assert info.current_modes == (MODE_3G | MODE_4G | MODE_5G, MODE_NONE)

    # Back on the home network, on LTE only: the guard must see roaming end.
    mm_mock.update(modem.path, MODEM_3GPP_IFACE, {"RegistrationState": u(1)})
    mm_mock.update(modem.path, MODEM_IFACE, {"AccessTechnologies": u(LTE)})
    [home] = mm.modems()
    assert not home.roaming and home.registration == "home" and home.generation == "4g"


def test_mode_changes_reach_modemmanager_as_supported_pairs(mm_mock: DBusMock,
                                                            mm: ModemManagerClient) -> None:
    modem = publish_5g_modem(mm_mock)
    assert mm.set_mode(modem.path, "5g") == (MODE_4G | MODE_5G, MODE_5G)
    assert set_calls(modem) == [(24, 16)]
    [info] = mm.modems()
    assert info.current_modes == (24, 16)  # what the daemon now publishes

    assert mm.set_mode(info, "4g") == (MODE_4G, MODE_NONE)  # LTE only, 5G off
    assert mm.set_mode(info, "auto") == (MODE_3G | MODE_4G | MODE_5G, MODE_NONE)
    assert set_calls(modem) == [(24, 16), (8, 0), (28, 0)]

    # Asking for the mode it is already in sends nothing: some modems re-register on it.
    mm.set_mode(modem.path, "auto")
    assert len(set_calls(modem)) == 3


def test_a_mode_the_modem_cannot_do_is_refused_without_a_call(mm_mock: DBusMock,
                                                             mm: ModemManagerClient) -> None:
    # The template's own simple modem: an LTE/3G stick with no 5G at all.
    path, _sim = mm_mock.mock(mm_mock.main_path, "AddSimpleModem")
    mm_mock.add_method(path, MODEM_IFACE, *SET_CURRENT_MODES)
    with pytest.raises(ModeNotSupportedError, match=r"no 5g mode.*4g \(preferred 4g\)"):
        mm.set_mode(path, "5g")
    assert mm_mock.method_calls(path, "SetCurrentModes") == []
    [info] = mm.modems()
    assert info.registration == "unknown" and not info.roaming  # no RegistrationState yet


@pytest.mark.parametrize(
    ("supported", "mode", "expected"),
    [
        (SUPPORTED_5G, "5g", (MODE_4G | MODE_5G, MODE_5G)),
        (SUPPORTED_5G, "4g", (MODE_4G, MODE_NONE)),
        (SUPPORTED_5G, "auto", (MODE_3G | MODE_4G | MODE_5G, MODE_NONE)),
        # No LTE-only pair: a 4G|5G pair that prefers 4G is the next best "4g".
        ([(MODE_4G | MODE_5G, MODE_4G), (MODE_4G | MODE_5G, MODE_5G)], "4g",
         (MODE_4G | MODE_5G, MODE_4G)),
        # 3G|4G without 5G beats a pair allowing 5G; preferring 4G beats no preference.
        ([(MODE_3G | MODE_4G, MODE_NONE), (MODE_3G | MODE_4G, MODE_4G)], "4g",
         (MODE_3G | MODE_4G, MODE_4G)),
    ],
)
def test_choose_modes_rule(supported: list[ModePair], mode: str, expected: ModePair) -> None:
    assert choose_modes(supported, mode) == expected  # type: ignore[arg-type]


def test_choose_modes_refuses_what_does_not_fit() -> None:
    with pytest.raises(ModeNotSupportedError):
        choose_modes([(MODE_5G, MODE_NONE)], "5g")  # 5G without the LTE fallback
    with pytest.raises(ModeNotSupportedError):
        choose_modes([(MODE_4G, MODE_4G)], "auto")  # no pair without a preference
    with pytest.raises(ModeNotSupportedError):
        choose_modes(SUPPORTED_5G, "6g")  # type: ignore[arg-type]


def test_fake_applies_the_same_rule() -> None:
    modem = ModemInfo(
        path="/m/0", manufacturer="", model="", state=8, operator_name="CSL",
        operator_code="45400", registration_state=1, access_technology_mask=LTE,
        sim_path="/s/0", iccid=ICCID, imsi=IMSI, primary_port="cdc-wdm0",
        ports=(("wwan0", 2),), supported_modes=tuple(SUPPORTED_5G),
        current_modes=(MODE_4G, MODE_NONE),
    )
    fake = FakeModemManager([modem])
    assert fake.set_mode("/m/0", "5g") == (24, 16)
    fake.set_mode("/m/0", "5g")
    assert fake.calls == [("/m/0", (24, 16))]
    assert fake.modems()[0].current_modes == (24, 16)
