"""What the daemon does when NetworkManager, ModemManager and logind say something.

The real daemon runs in the lab's host namespace with a private system bus on which
python-dbusmock plays the desktop's daemons, publishing the state a real one would (with the
real interface names and types). Each test asserts meterguard's reaction: a kernel block,
a report column, or the method call it makes with the right arguments.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from dbus_fast import Variant
from system_bus import DBusMock, b, dbusmock_template, private_system_bus, s, u

from meterguard.lab import Lab
from meterguard.lab.guarded import CLI, GuardedHost
from meterguard.lab.lab import child_env

pytestmark = pytest.mark.privileged

MM = "org.freedesktop.ModemManager1"
MODEM_IFACE = f"{MM}.Modem"
MODEM_3GPP_IFACE = f"{MM}.Modem.Modem3gpp"
SIM_IFACE = f"{MM}.Sim"
SESSION_IFACE = "org.freedesktop.login1.Session"
NM = "org.freedesktop.NetworkManager"
DEVICE_IFACE = f"{NM}.Device"
CONNECTION_IFACE = f"{NM}.Settings.Connection"
UPDATE2 = ("Update2", "a{sa{sv}}ua{sv}", "a{sv}",
           "self.ConnectionUpdate(self, args[0]); ret = dbus.Dictionary({}, signature='sv')")
# MMModemMode: CS=1, 2G=2, 3G=4, 4G=8, 5G=16.
SUPPORTED = [(8, 0), (24, 16), (24, 8), (28, 0)]
SET_CURRENT_MODES = ("SetCurrentModes", "(uu)", "", "")


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab(prefix=f"mgd-{uuid.uuid4().hex[:6]}") as built:
        yield built


@pytest.fixture
def bus() -> Iterator[str]:
    with private_system_bus() as address:
        yield address


def add_modem(mock: DBusMock, roaming: bool) -> str:
    path, sim = mock.mock(mock.main_path, "AddSimpleModem")
    mock.update(path, MODEM_IFACE, {"SupportedModes": Variant("a(uu)", [list(p) for p in
                                                                       SUPPORTED])})
    mock.add_property(path, MODEM_IFACE, "Ports", Variant("a(su)", [["wwan0", 2]]))
    mock.add_property(path, MODEM_IFACE, "PrimaryPort", s("cdc-wdm0"))
    mock.add_method(path, MODEM_IFACE, *SET_CURRENT_MODES)
    mock.add_property(path, MODEM_3GPP_IFACE, "RegistrationState", u(5 if roaming else 1))
    mock.add_property(sim, SIM_IFACE, "SimIdentifier", s("8985200012345678901"))
    return str(path)


def test_roaming_turns_the_guard_on_and_off(lab: Lab, bus: str, tmp_path: Path) -> None:
    app = lab.app("firefox", 8701)
    lab.start_servers([8701])
    with dbusmock_template(bus, "modemmanager") as mm:
        modem = add_modem(mm, roaming=True)
        host = GuardedHost(lab, tmp_path / "state", system_bus=bus,
                           network_extra='roaming_guard = "block-all"\n')
        try:
            host.start()
            host.wait_until_polls(3)
            assert host.status()["roaming"] == ["esim"]
            assert app.start_download(1_000_000, timeout=5).wait(20).received < 1_000_000
            assert app.download(1_000_000, via="wlan") == 1_000_000  # Wi-Fi is not roaming
            mm.update(modem, MODEM_3GPP_IFACE, {"RegistrationState": u(1)})  # home again
            deadline = time.monotonic() + 15
            while host.status().get("roaming") and time.monotonic() < deadline:
                time.sleep(0.2)
            host.wait_until_polls(2)
            assert app.download(1_000_000) == 1_000_000
        finally:
            host.stop()


def test_a_mode_change_reaches_modemmanager(bus: str) -> None:
    with dbusmock_template(bus, "modemmanager") as mm:
        modem = add_modem(mm, roaming=False)
        env = {**child_env(), "DBUS_SYSTEM_BUS_ADDRESS": bus}
        done = subprocess.run([*CLI, "modem", "mode", "5g", "--json"], capture_output=True,
                              text=True, timeout=60, env=env)
        assert done.returncode == 0, done.stderr
        assert [tuple(c[0]) for c in mm.method_calls(modem, "SetCurrentModes")] == [(24, 16)]
        shown = subprocess.run([*CLI, "modem", "--json"], capture_output=True, text=True,
                               timeout=60, env=env)
        assert '"interfaces": [\n        "wwan0"' in shown.stdout or "wwan0" in shown.stdout


def test_idle_and_locked_sessions_make_traffic_background(
    lab: Lab, bus: str, tmp_path: Path
) -> None:
    app = lab.app("firefox", 8711)
    lab.start_servers([8711])
    with dbusmock_template(bus, "logind") as logind:
        [session] = logind.mock(logind.main_path, "AddSession", "ssusb", "c1", "seat0", 1000,
                                "ana", True)
        logind.update(session, SESSION_IFACE, {
            "Type": s("wayland"), "IdleHint": b(True),
            "IdleSinceHint": Variant("t", 1_767_225_600_000_000),
        })
        host = GuardedHost(lab, tmp_path / "state", system_bus=bus)
        try:
            host.start()
            host.wait_until_polls(3)
            assert host.status()["session"] == {"idle": True, "locked": False, "known": True}
            assert app.download(2_000_000) == 2_000_000
            row = _row_when(host, "firefox", lambda r: r["bytes_down"] > 2_000_000)
            assert row["bytes_background"] == row["bytes_total"]
            # The user is back: new traffic is foreground.
            logind.update(session, SESSION_IFACE, {"IdleHint": b(False)})
            deadline = time.monotonic() + 15
            while host.status()["session"]["idle"] and time.monotonic() < deadline:
                time.sleep(0.2)
            assert app.download(3_000_000) == 3_000_000
            after = _row_when(host, "firefox", lambda r: r["bytes_down"] > 5_000_000)
            assert after["bytes_foreground"] >= 3_000_000
            assert after["bytes_background"] == row["bytes_background"]
        finally:
            host.stop()


def _row_when(
    host: GuardedHost, app: str, ok: Callable[[dict[str, int]], bool], timeout: float = 15
) -> dict[str, int]:
    """The app's report row once `ok` holds (or the last one at the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = {r["app"]: r for r in host.report()["rows"]}
        row: dict[str, int] = rows.get(app, {"bytes_down": 0, "bytes_total": 0,
                                             "bytes_background": 0, "bytes_foreground": 0})
        if ok(row) or time.monotonic() > deadline:
            return row


def test_networkmanager_metered_link_is_metered_and_flagged(
    lab: Lab, bus: str, tmp_path: Path
) -> None:
    app = lab.app("firefox", 8721)
    lab.start_servers([8721])
    with dbusmock_template(bus, "networkmanager") as nm:
        # USB tethering to an Android phone that sent ANDROID_METERED: NM guesses metered.
        [dev] = nm.mock(nm.main_path, "AddEthernetDevice", "ssi", "usb", "wwan0", 100)
        nm.add_property(dev, DEVICE_IFACE, "Metered", u(3))
        nm.update(dev, DEVICE_IFACE, {"Driver": s("rndis_host")})
        [profile] = nm.call("/org/freedesktop/NetworkManager/Settings",
                            f"{NM}.Settings", "AddConnection", "a{sa{sv}}", {
                                "connection": {"id": s("Pixel tether"),
                                               "type": s("802-3-ethernet"),
                                               "uuid": s("8e2f7d64-4a7a-4b55-8f0e-6f1a2b3c4d5e")},
                            })
        nm.add_method(profile, CONNECTION_IFACE, *UPDATE2)
        nm.mock(nm.main_path, "AddActiveConnection", "assssu", [dev], profile, "/", "usb", 2)
        # The config knows nothing of this link: NetworkManager's word is what meters it.
        host = GuardedHost(lab, tmp_path / "state", system_bus=bus)
        host.config.write_text(host.config.read_text().replace('name = "esim"',
                                                               'name = "other"').replace(
            'interfaces = ["wwan0"]', 'interfaces = ["wwan9"]'))
        try:
            host.start()
            deadline = time.monotonic() + 15
            while "wwan0" not in host.status().get("interfaces", {}) and \
                    time.monotonic() < deadline:
                time.sleep(0.2)
            assert host.status()["interfaces"]["wwan0"] == "nm-pixel-tether"
            assert app.download(1_000_000) == 1_000_000
            rows = host.wait_until(lambda u: ("nm-pixel-tether", "firefox") in u)
            assert rows[("nm-pixel-tether", "firefox")][1] > 1_000_000
            calls = nm.method_calls(profile, "Update2")
            assert calls, "the metered flag was not set"
            settings, flags = calls[0][0], calls[0][1]
            assert flags == 0x2  # in memory only
            assert _value(settings["connection"]["metered"]) == 1
        finally:
            host.stop()
        # Stopping reverts the flag it set.
        calls = nm.method_calls(profile, "Update2")
        assert len(calls) == 2 and _value(calls[1][0]["connection"]["metered"]) == 0


def _value(v: object) -> object:
    """A variant as the mock recorded it: plain, or wrapped."""
    return v.value if isinstance(v, Variant) else v
