"""NetworkManagerClient against python-dbusmock's networkmanager template on a private bus.

The 0.38 template has no Device.Metered, no DHCP4Config, no Update2, no Device.Disconnect
and no ActiveAccessPoint, so each test publishes them the way NetworkManager does (same
interfaces, names and D-Bus types), then checks what the client reports and which calls,
with which arguments, reached the mock.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dbus_fast import Variant
from system_bus import DBusMock, b, dbusmock_template, o, private_system_bus, s, u

from meterguard.system.bus import SystemBusError
from meterguard.system.fakes import FakeNetworkManager
from meterguard.system.networkmanager import (
    CONNECTION_IFACE,
    DEVICE_IFACE,
    NM_PATH,
    SETTINGS_IFACE,
    SETTINGS_PATH,
    WIRELESS_IFACE,
    NetworkManagerClient,
)
from meterguard.system.nm_types import ActiveConnection, DeviceInfo, NMMetered

DEVICES = f"{NM_PATH}/Devices"
MODEM_UUID = "5c6b0a3e-0d3c-4c43-9d0b-2f1f9b2c7a01"
TETHER_UUID = "8e2f7d64-4a7a-4b55-8f0e-6f1a2b3c4d5e"
# Update2 as NetworkManager has it: (settings, flags, args) -> result. Applying the settings
# to the mock's profile lets GetSettings show the change, as the real daemon's would.
UPDATE2 = ("Update2", "a{sa{sv}}ua{sv}", "a{sv}",
           "self.ConnectionUpdate(self, args[0]); ret = dbus.Dictionary({}, signature='sv')")


@dataclass
class Net:
    mock: DBusMock
    modem_dev: str
    modem_profile: str
    wifi_dev: str
    wifi_profile: str
    tether_dev: str
    tether_profile: str


def add_profile(mock: DBusMock, settings: dict[str, dict[str, Variant]]) -> str:
    [path] = mock.call(SETTINGS_PATH, SETTINGS_IFACE, "AddConnection", "a{sa{sv}}", settings)
    mock.add_method(path, CONNECTION_IFACE, *UPDATE2)
    return str(path)


def activate(mock: DBusMock, device: str, profile: str, ap: str, name: str) -> str:
    [path] = mock.mock(mock.main_path, "AddActiveConnection", "assssu", [device], profile, ap,
                       name, 2)  # 2: NM_ACTIVE_CONNECTION_STATE_ACTIVATED
    return str(path)


def add_ip4(mock: DBusMock, name: str, address: str, prefix: int) -> str:
    path = f"{NM_PATH}/IP4Config/{name}"
    entry = {"address": s(address), "prefix": u(prefix)}
    mock.add_object(path, "org.freedesktop.NetworkManager.IP4Config",
                    {"AddressData": Variant("aa{sv}", [entry])})
    return path


def publish(mock: DBusMock) -> Net:
    # 1. A cellular modem with an eSIM: NetworkManager's Modem device, whose Interface is
    # the control port and IpInterface the netdev; NM guesses a modem is metered (3).
    modem_dev = f"{DEVICES}/wwan"
    mock.add_object(modem_dev, DEVICE_IFACE, {
        "DeviceType": u(8), "Interface": s("cdc-wdm0"), "IpInterface": s("wwan0"),
        "Driver": s("qmi_wwan"), "Metered": u(3), "State": u(100),
        "StateReason": Variant("(uu)", [100, 0]), "ActiveConnection": o("/"),
        "Ip4Config": o("/"), "Dhcp4Config": o("/"), "Managed": b(True),
    }, [("Disconnect", "", "", "")])
    modem_profile = add_profile(mock, {
        "connection": {"id": s("hk-esim"), "type": s("gsm"), "uuid": s(MODEM_UUID)},
        "gsm": {"apn": s("mobile.hk")},
    })
    modem_ac = activate(mock, modem_dev, modem_profile, "/", "wwan")
    mock.add_property(modem_ac, "org.freedesktop.NetworkManager.Connection.Active",
                      "Ip4Config", o(add_ip4(mock, "wwan", "10.64.1.7", 30)))

    # 2. An iPhone's Personal Hotspot over Wi-Fi: no metered hint (NM guesses no, 4), but
    # the 172.20.10.0/28 address gives it away. IP config only on the device here.
    [wifi_dev] = mock.mock(mock.main_path, "AddWiFiDevice", "ssi", "wlan", "wlan0", 100)
    [ap] = mock.mock(mock.main_path, "AddAccessPoint", "ssssuuuyu", wifi_dev, "ap1",
                     "iPhone of Ana", "4A:11:22:33:44:55", 2, 2437, 54000, 80, 0x100)
    [wifi_profile] = mock.mock(mock.main_path, "AddWiFiConnection", "ssss", wifi_dev,
                               "iphone", "iPhone of Ana", "wpa-psk")
    mock.add_method(wifi_profile, CONNECTION_IFACE, *UPDATE2)
    activate(mock, wifi_dev, wifi_profile, ap, "wifi")
    mock.add_property(wifi_dev, WIRELESS_IFACE, "ActiveAccessPoint", o(ap))
    mock.add_property(wifi_dev, DEVICE_IFACE, "Metered", u(4))
    mock.add_property(wifi_dev, DEVICE_IFACE, "Ip4Config",
                      o(add_ip4(mock, "wlan", "172.20.10.3", 28)))
    mock.add_method(wifi_dev, DEVICE_IFACE, "Disconnect", "", "")

    # 3. Android USB tethering: Ethernet with the rndis_host driver, and dhclient's export
    # of DHCP option 43 carrying ANDROID_METERED (colon-hex, as dhclient prints bytes).
    [tether_dev] = mock.mock(mock.main_path, "AddEthernetDevice", "ssi", "usb", "usb0", 100)
    mock.update(tether_dev, DEVICE_IFACE, {"Driver": s("rndis_host")})
    mock.add_property(tether_dev, DEVICE_IFACE, "Metered", u(3))
    mock.add_method(tether_dev, DEVICE_IFACE, "Disconnect", "", "")
    tether_profile = add_profile(mock, {
        "connection": {"id": s("Pixel tether"), "type": s("802-3-ethernet"),
                       "uuid": s(TETHER_UUID), "metered": Variant("i", 2)},
    })
    tether_ac = activate(mock, tether_dev, tether_profile, "/", "usb")
    dhcp = f"{NM_PATH}/DHCP4Config/usb"
    hint = ":".join(f"{c:02x}" for c in b"ANDROID_METERED")
    mock.add_object(dhcp, "org.freedesktop.NetworkManager.DHCP4Config", {
        "Options": Variant("a{sv}", {"ip_address": s("192.168.42.17"),
                                     "vendor_encapsulated_options": s(hint)}),
    })
    mock.add_property(tether_ac, "org.freedesktop.NetworkManager.Connection.Active",
                      "Dhcp4Config", o(dhcp))
    return Net(mock, modem_dev, modem_profile, str(wifi_dev), str(wifi_profile),
               str(tether_dev), tether_profile)


@pytest.fixture
def net() -> Iterator[Net]:
    with private_system_bus() as address, dbusmock_template(address, "networkmanager") as mock:
        yield publish(mock)


@pytest.fixture
def nm(net: Net) -> Iterator[NetworkManagerClient]:
    with NetworkManagerClient(net.mock.address, timeout=20) as client:
        yield client


def by_id(connections: list[ActiveConnection]) -> dict[str, ActiveConnection]:
    return {c.id: c for c in connections}


def update2_calls(net: Net, profile: str) -> list[tuple[dict[str, object], int, object]]:
    return [(settings["connection"], flags, args)
            for settings, flags, args in net.mock.method_calls(profile, "Update2")]


def test_active_connections_report_what_networks_match_on(nm: NetworkManagerClient) -> None:
    conns = by_id(nm.active_connections())
    assert set(conns) == {"hk-esim", "iPhone of Ana", "Pixel tether"}

    modem = conns["hk-esim"]
    assert (modem.kind, modem.type, modem.uuid) == ("modem", "gsm", MODEM_UUID)
    assert modem.interfaces == ("wwan0", "cdc-wdm0")
    assert modem.metered == NMMetered.GUESS_YES and modem.is_metered
    assert modem.ipv4 == (ipaddress.IPv4Interface("10.64.1.7/30"),)
    assert (modem.ssid, modem.iphone_hotspot_hint, modem.android_metered_hint) == (
        None, False, False)

    wifi = conns["iPhone of Ana"]
    assert (wifi.kind, wifi.ssid, wifi.bssid) == ("wifi", "iPhone of Ana", "4A:11:22:33:44:55")
    assert wifi.metered == NMMetered.GUESS_NO and not wifi.is_metered
    assert wifi.iphone_hotspot_hint  # 172.20.10.3/28, read from the device's IP4Config

    tether = conns["Pixel tether"]
    assert (tether.kind, tether.interfaces) == ("usb-tether", ("usb0",))
    assert tether.android_metered_hint and tether.is_metered
    assert tether.dhcp4_options["ip_address"] == "192.168.42.17"


def test_set_metered_is_update2_in_memory_and_restore_reverts_it(
        net: Net, nm: NetworkManagerClient) -> None:
    modem = by_id(nm.active_connections())["hk-esim"]
    assert nm.set_metered(modem, True) is True
    [(connection, flags, args)] = update2_calls(net, net.modem_profile)
    assert connection["metered"] == 1 and flags == 0x2 and args == {}
    # Update2 replaces the profile: everything else must go back unchanged.
    [(settings, _, _)] = net.mock.method_calls(net.modem_profile, "Update2")
    assert settings["gsm"] == {"apn": "mobile.hk"}
    assert (connection["id"], connection["uuid"]) == ("hk-esim", MODEM_UUID)

    assert nm.set_metered(modem, True) is False  # already yes: no second call
    assert len(update2_calls(net, net.modem_profile)) == 1

    assert nm.restore_metered() == [MODEM_UUID]
    calls = update2_calls(net, net.modem_profile)
    assert [(c["metered"], f) for c, f, _ in calls] == [(1, 0x2), (0, 0x2)]  # 0: was unset
    assert nm.restore_metered() == []  # nothing left to revert


def test_restore_puts_back_an_explicit_previous_value_from_another_process(
        net: Net, tmp_path: Path) -> None:
    state = tmp_path / "nm-changes.json"
    with NetworkManagerClient(net.mock.address, state_file=state, timeout=20) as daemon:
        assert daemon.set_metered(TETHER_UUID, True)  # by profile UUID; it was "no" (2)
    # `meterguard uninstall` is another process: it knows the change from the state file.
    with NetworkManagerClient(net.mock.address, state_file=state, timeout=20) as uninstall:
        assert uninstall.restore_metered() == [TETHER_UUID]
    calls = update2_calls(net, net.tether_profile)
    assert [(c["metered"], f) for c, f, _ in calls] == [(1, 0x2), (2, 0x2)]


def test_restore_leaves_a_value_the_user_changed_since(net: Net,
                                                      nm: NetworkManagerClient) -> None:
    assert nm.set_metered(MODEM_UUID, False)
    # The user then marks the connection metered themselves (nmcli connection modify).
    net.mock.call(net.modem_profile, CONNECTION_IFACE, "Update", "a{sa{sv}}",
                  {"connection": {"metered": Variant("i", 1)}})
    assert nm.restore_metered() == []
    assert [c["metered"] for c, _, _ in update2_calls(net, net.modem_profile)] == [2]


def test_disconnect_calls_device_disconnect_on_the_matching_device_only(
        net: Net, nm: NetworkManagerClient) -> None:
    # A second modem that is down: no IpInterface, no active connection. NetworkManager
    # answers Disconnect on it with an error, so it must not be called.
    idle_modem = f"{DEVICES}/wwan1"
    net.mock.add_object(idle_modem, DEVICE_IFACE, {
        "DeviceType": u(8), "Interface": s("cdc-wdm1"), "IpInterface": s(""),
        "ActiveConnection": o("/"), "State": u(30), "Metered": u(0),
    }, [("Disconnect", "", "", "")])

    assert nm.disconnect(["wwan*", "cdc-wdm*"]) is True
    assert net.mock.method_calls(net.modem_dev, "Disconnect") == [[]]  # once, not per glob
    assert net.mock.method_calls(idle_modem, "Disconnect") == []
    assert net.mock.method_calls(net.wifi_dev, "Disconnect") == []
    assert net.mock.method_calls(net.tether_dev, "Disconnect") == []

    assert nm.disconnect(["eth*", "ppp0"]) is False  # nothing matches: nothing is called
    assert len(net.mock.method_calls(net.modem_dev, "Disconnect")) == 1

    # At rollover the same profile comes back on the same device.
    assert nm.reconnect() == ["cdc-wdm0"]
    assert net.mock.method_calls(NM_PATH, "ActivateConnection") == [
        [net.modem_profile, net.modem_dev, "/"]
    ]
    assert nm.reconnect() == []


def test_no_networkmanager_on_the_bus_is_a_clear_error() -> None:
    with private_system_bus() as address, NetworkManagerClient(address, timeout=20) as nm:
        with pytest.raises(SystemBusError) as err:
            nm.active_connections()
        assert err.value.name == "org.freedesktop.DBus.Error.ServiceUnknown"


def test_fake_networkmanager_keeps_the_real_semantics() -> None:
    wwan = ActiveConnection(
        path="/ac/0", settings_path="/s/0", id="hk-esim", uuid=MODEM_UUID, type="gsm",
        devices=(DeviceInfo("/d/0", "cdc-wdm0", "wwan0", 8, "qmi_wwan", 3),),
    )
    fake = FakeNetworkManager([wwan])
    assert fake.set_metered(wwan, True) and not fake.set_metered(wwan, True)
    assert fake.restore_metered() == [MODEM_UUID] and fake.profile_metered[MODEM_UUID] == 0
    assert fake.set_metered(wwan, True)
    fake.profile_metered[MODEM_UUID] = 2  # the user's own change wins
    assert fake.restore_metered() == []
    assert fake.disconnect(["wwan*"]) and fake.active_connections() == []
    assert fake.reconnect() == ["wwan0"] and fake.active_connections() == [wwan]
    assert [c[0] for c in fake.calls] == [
        "set_metered", "restore_metered", "set_metered", "disconnect", "reconnect"]
