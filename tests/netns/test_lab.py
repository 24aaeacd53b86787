"""The lab itself: real namespaces, real traffic, measured at the carrier.

These tests check the bench other tests stand on: that the carrier counts what
is billed (wire-sized packets, IP bytes), that wlan traffic is not billed, that
links are quiet, and that teardown leaves nothing behind.  Every privileged
test builds its own lab with its own prefix.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from labtest import new_prefix, ns_out, pid_gone, wait_until

from meterguard.lab import Lab, LabError, cgroup2_mount
from meterguard.lab.carrier import parse_counts
from meterguard.lab.cgroups import LabCgroup
from meterguard.lab.lab import DAEMON_UNIT
from meterguard.lab.netns import check_prefix
from meterguard.lab.procs import become_subreaper
from meterguard.lab.topology import Family, Topology

F = TypeVar("F", bound=Callable[..., Any])

IS_ROOT = os.geteuid() == 0
MTU = 1500
# Largest TCP payload per packet on a 1500-byte link: 1500 - 20 (IPv4) - 20 (TCP)
# - 12 (timestamps option); IPv6 has a 40-byte header.
MSS = {4: 1448, 6: 1428}


def privileged(fn: F) -> F:
    """Needs root (namespaces, cgroups, nftables); skipped with a reason otherwise."""
    skip = pytest.mark.skipif(not IS_ROOT, reason="needs root: netns, cgroup v2, nftables")
    marked: F = pytest.mark.privileged(skip(fn))
    return marked


def netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def assert_nothing_left(prefix: str, pids: list[int]) -> None:
    assert not {n for n in netns_names() if n.startswith(prefix + "-")}
    assert not (cgroup2_mount() / prefix).exists()
    assert not Path(f"/run/meterguard-lab/{prefix}").exists()
    assert wait_until(lambda: all(pid_gone(p) for p in pids)), [p for p in pids if not pid_gone(p)]


@pytest.fixture
def lab() -> Iterator[Lab]:
    prefix = new_prefix("mgl")
    with Lab(prefix=prefix) as built:
        yield built
    assert_nothing_left(prefix, [])


# --- pure parts: no root needed --------------------------------------------------------------


def test_prefix_must_be_safe() -> None:
    assert check_prefix("mgl-ab12cd") == "mgl-ab12cd"
    for bad in ("", "x", "user.slice", "../etc", "Mgl", "a/b", "mgl-"):
        with pytest.raises(LabError):
            check_prefix(bad)


def test_cgroup2_mount_is_found_in_mountinfo_with_escapes() -> None:
    info = (
        "30 25 0:26 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n"
        "41 31 0:38 / /sys/fs/cgroup/my\\040unified rw,relatime - cgroup2 cgroup2 rw\n"
    )
    assert cgroup2_mount(info) == Path("/sys/fs/cgroup/my unified")
    with pytest.raises(LabError):
        cgroup2_mount("30 25 0:26 / /proc rw - proc proc rw\n")


def test_carrier_json_is_parsed_exactly() -> None:
    doc = {
        "nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"counter": {"name": "total_up", "packets": 3, "bytes": 180}},
            {"counter": {"name": "total_down", "packets": 5, "bytes": 7000}},
            {
                "set": {
                    "name": "tcp_down",
                    "elem": [{"elem": {"val": 5001, "counter": {"packets": 4, "bytes": 5920}}}],
                }
            },
            {"set": {"name": "tcp_up", "elem": [{"elem": {"val": 5001, "counter": {}}}]}},
            {"set": {"name": "udp_up"}},
        ]
    }
    counts = parse_counts(json.dumps(doc))
    assert counts.up.bytes == 180 and counts.down.packets == 5
    assert counts.port(5001).down.bytes == 5920
    assert counts.port(5001, "udp").down.bytes == 0
    assert (counts - counts).port(5001).down.bytes == 0


# --- the bench, with real traffic ------------------------------------------------------------


@privileged
@pytest.mark.parametrize("family", [4, 6])
def test_download_via_wwan_is_billed_in_wire_sized_packets(lab: Lab, family: int) -> None:
    fam: Family = 4 if family == 4 else 6
    lab.start_servers([5001])
    app = lab.app("firefox", 5001)
    payload = 2_000_000
    before, link_before = lab.carrier.read(), lab.link_stats("wwan0")

    assert app.download(payload, family=fam) == payload

    billed = lab.carrier.read() - before
    down = billed.port(5001, "tcp").down
    assert down.bytes >= payload
    # With TSO/GSO/GRO on, a veth passes ~64 KB super-packets and this count
    # would be ~31; with them off it is at least payload / MSS.
    assert down.packets >= math.ceil(payload / MSS[fam])
    assert down.bytes <= down.packets * MTU
    assert billed.port(5001, "tcp").up.packets > 0  # the request and ACKs
    assert billed.down == down and billed.up == billed.port(5001).up  # nothing else moved
    # Quiet link: the host's interface saw exactly the billed IP bytes, no chatter.
    link = lab.link_stats("wwan0") - link_before
    assert (link.rx_ip_bytes, link.rx_packets) == (down.bytes, down.packets)
    assert (link.tx_ip_bytes, link.tx_packets) == (billed.up.bytes, billed.up.packets)


@privileged
def test_wlan_traffic_is_not_billed(lab: Lab) -> None:
    lab.start_servers([5002])
    app = lab.app("packagekit.service", 5002)
    assert app.cgroup.rel == f"{lab.prefix}/system.slice/packagekit.service"
    before = lab.carrier.read()
    assert app.download(1_000_000, via="wlan") == 1_000_000
    assert app.upload(300_000, via="wlan", family=6) == 300_000
    billed = lab.carrier.read() - before
    assert billed.up.bytes == 0 and billed.down.bytes == 0
    assert lab.server_stats()[5002].tcp_received == 300_000


@privileged
def test_upload_is_billed(lab: Lab) -> None:
    lab.start_servers([5003])
    app = lab.app("app-gnome-com.example.Burst-77.scope", 5003)
    payload = 1_000_000
    before = lab.carrier.read()
    assert app.upload(payload) == payload
    up = (lab.carrier.read() - before).port(5003).up
    assert up.bytes >= payload
    assert up.packets >= math.ceil(payload / MSS[4])
    assert up.bytes <= up.packets * MTU
    assert lab.server_stats()[5003].tcp_received == payload


@privileged
@pytest.mark.parametrize("family", [4, 6])
def test_udp_gso_upload_arrives_as_mtu_sized_packets(lab: Lab, family: int) -> None:
    fam: Family = 4 if family == 4 else 6
    lab.start_servers([5004])
    app = lab.app("quic-client", 5004)
    gso_size, payload = 1200, 1_000_000
    headers = 28 if fam == 4 else 48
    before = lab.carrier.read()
    handle = app.start_udp_upload(payload, gso_size=gso_size, family=fam)
    result = handle.wait()
    assert result.ok, result.error
    assert result.sent == payload
    # The sender handed the kernel up to 64 KB per send; the carrier must see
    # one packet per gso_size segment: packets = bytes / (gso_size + headers).
    up = (lab.carrier.read() - before).port(5004, "udp").up
    assert up.packets == result.datagrams == math.ceil(payload / gso_size)
    assert up.bytes == payload + headers * up.packets
    assert wait_until(lambda: lab.udp_received(5004) == (up.packets, payload))


@privileged
def test_ping_from_internet_is_billed_in_totals_only(lab: Lab) -> None:
    lab.start_servers([5005])
    before = lab.carrier.read()
    ping = lab.ping_host_from_inet(count=20, size=100)
    assert ping.received == ping.transmitted == 20
    billed = lab.carrier.read() - before
    assert billed.down.packets == billed.up.packets == 20
    assert billed.down.bytes == billed.up.bytes == 20 * ping.ip_bytes_each == 20 * 128
    assert all(c.up.packets == c.down.packets == 0 for c in billed.tcp.values())
    ping6 = lab.ping_host_from_inet(count=5, size=56, family=6)
    assert ping6.received == 5
    assert (lab.carrier.read() - before).down.bytes == 20 * 128 + 5 * (56 + 48)


@privileged
def test_burst_and_aborted_downloads(lab: Lab) -> None:
    lab.start_servers([5006, 5007])
    burst_app, abort_app = lab.app("burst", 5006), lab.app("aborts", 5007)
    before = lab.carrier.read()
    res = burst_app.burst(conns=20, parallel=10, nbytes_each=50_000, hold_s=0.5)
    assert (res.conns_ok, res.conns_failed, res.received) == (20, 0, 20 * 50_000)
    assert (lab.carrier.read() - before).port(5006).down.bytes >= 20 * 50_000

    aborted = abort_app.aborted_downloads(n=5, parallel=5, read_bytes=30_000, size=1_000_000)
    assert aborted.conns_ok == 5 and aborted.received == 5 * 30_000
    # The servers' sends end once the RSTs arrive; then the billed count is final.
    assert wait_until(lambda: lab.server_stats()[5007].tcp_conns == 5)
    billed = (lab.carrier.read() - before).port(5007).down.bytes
    assert billed >= aborted.received


@privileged
def test_processes_run_in_the_app_cgroup_and_host_namespace(lab: Lab) -> None:
    app = lab.app("firefox", 5008)
    assert app.cgroup.rel == (
        f"{lab.prefix}/user.slice/user-1000.slice/user@1000.service/app.slice/"
        "app-gnome-firefox-5008.scope"
    )
    assert app.cgroup.nft_path.endswith(app.cgroup.rel)
    assert app.cgroup.level == len(app.cgroup.rel.split("/"))
    script = (
        "import json, os; print(json.dumps([open('/proc/self/cgroup').read(),"
        " os.stat('/proc/self/ns/net').st_ino]))"
    )
    out = subprocess.run(
        lab.host_cmd([sys.executable, "-c", script], app),
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    cgroups, netns_inode = json.loads(out)
    assert f"0::/{app.cgroup.rel}\n" in cgroups
    assert netns_inode == os.stat(f"/var/run/netns/{lab.ns_host}").st_ino
    daemon = subprocess.run(
        lab.host_cmd(["cat", "/proc/self/cgroup"]), capture_output=True, text=True, check=True
    ).stdout
    assert f"0::/{lab.daemon_cgroup.rel}" in daemon


@privileged
def test_links_are_quiet_and_static(lab: Lab) -> None:
    for role, ifname in (
        ("host", "wwan0"),
        ("host", "wlan0"),
        ("carrier", "to-host"),
        ("carrier", "to-inet"),
        ("inet", "to-carrier"),
        ("inet", "to-wlan"),
    ):
        ns = lab.topology.ns[role]
        maddr = ns_out(ns, ["ip", "-6", "maddr", "show", "dev", ifname])
        # Joined groups that would send MLD reports: solicited-node, all-routers.
        assert "ff02::1:ff" not in maddr and "ff02::2" not in maddr, (role, ifname, maddr)
        assert "fe80" not in ns_out(ns, ["ip", "-6", "addr", "show", "dev", ifname])
        neigh = ns_out(ns, ["ip", "neigh", "show", "dev", ifname])
        assert neigh.count("PERMANENT") == 2, neigh
        state = ns_out(ns, ["ethtool", "-k", ifname])
        for feature in ("tcp-segmentation-offload", "generic-segmentation-offload"):
            assert f"{feature}: off" in state
        assert "generic-receive-offload: off" in state


@privileged
def test_recreate_wwan_restarts_counters_and_keeps_billing(lab: Lab) -> None:
    lab.start_servers([5009])
    app = lab.app("firefox", 5009)
    assert app.download(500_000) == 500_000
    assert lab.link_stats("wwan0").rx_bytes > 500_000
    lab.recreate_wwan()
    assert lab.link_stats("wwan0").rx_packets == 0
    before = lab.carrier.read()
    assert app.download(500_000) == 500_000
    down = (lab.carrier.read() - before).port(5009).down
    assert lab.link_stats("wwan0").rx_ip_bytes == down.bytes >= 500_000
    maddr = ns_out(lab.ns_carrier, ["ip", "-6", "maddr", "show", "dev", "to-host"])
    assert "ff02::2" not in maddr


@privileged
def test_rate_limited_wwan_is_shaped_both_ways() -> None:
    with Lab(prefix=new_prefix("mgl"), rate_mbit=50) as lab:
        for ns, ifname in ((lab.ns_host, "wwan0"), (lab.ns_carrier, "to-host")):
            assert "tbf" in ns_out(ns, ["tc", "qdisc", "show", "dev", ifname])
        lab.start_servers([5010])
        assert lab.app("firefox", 5010).download(300_000) == 300_000


@privileged
def test_killed_download_reports_nothing_and_is_reaped(lab: Lab) -> None:
    lab.start_servers([5011])
    handle = lab.app("firefox", 5011).start_download(5_000_000, pace_s=20.0)
    assert wait_until(lambda: lab.server_stats()[5011].tcp_sent > 0)
    handle.kill()
    result = handle.wait(timeout=10)
    assert not handle.reported and not result.ok
    assert pid_gone(handle.pid)


@privileged
def test_teardown_leaves_nothing_when_the_body_raises() -> None:
    prefix = new_prefix("mgl")
    pids: list[int] = []
    with pytest.raises(RuntimeError, match="body failed"), Lab(prefix=prefix) as lab:
        lab.start_servers([5012])
        handle = lab.app("firefox", 5012).start_download(5_000_000, pace_s=60.0)
        # Started outside the lab's registry, but inside its cgroup and netns.
        stray = subprocess.Popen(lab.host_cmd(["sleep", "600"], lab.app("stray", 5013)))
        daemon = lab.host_popen(["sleep", "600"])
        assert wait_until(lambda: stray.pid in lab.app("stray", 5013).cgroup.pids())
        pids = [handle.pid, stray.pid, daemon.pid]
        raise RuntimeError("body failed")
    stray.wait(timeout=10)
    assert_nothing_left(prefix, pids)
    lab.teardown()  # idempotent


@privileged
def test_failed_build_is_undone(monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = new_prefix("mgl")

    def broken(self: Topology) -> None:
        raise LabError("injected failure")

    monkeypatch.setattr(Topology, "add_server_addresses", broken)
    with pytest.raises(LabError, match="injected"):
        Lab(prefix=prefix).build()
    assert_nothing_left(prefix, [])


@privileged
@pytest.mark.parametrize("by_owner", [False, True], ids=["by-prefix", "dead-owner"])
def test_cleanup_stale_after_a_crashed_run(by_owner: bool) -> None:
    prefix = new_prefix("mgl")
    crasher = textwrap.dedent(
        f"""
        import time
        from meterguard.lab import Lab
        lab = Lab(prefix={prefix!r})
        lab.build()
        lab.start_servers([5014])
        lab.host_popen(["sleep", "600"])
        print("ready", flush=True)
        time.sleep(600)
        """
    )
    become_subreaper()  # as a Lab's owner does: the crashed lab's orphans come to us
    proc = subprocess.Popen([sys.executable, "-c", crasher], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        daemon_cg = LabCgroup(cgroup2_mount() / prefix / DAEMON_UNIT, cgroup2_mount())
        left = [int(p) for p in _ns_pids(f"{prefix}-inet")] + daemon_cg.pids()
        assert left
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # a crash: no teardown, no atexit
        proc.wait(timeout=10)
    with pytest.raises(LabError, match="in use"):
        Lab(prefix=prefix).build()
    if by_owner:
        assert prefix in Lab.cleanup_orphans()
    else:
        Lab.cleanup_stale(prefix)
    assert_nothing_left(prefix, left)
    with Lab(prefix=prefix) as again:  # the prefix is usable again
        assert again.built


def _ns_pids(ns: str) -> list[str]:
    return subprocess.run(
        ["ip", "netns", "pids", ns], capture_output=True, text=True, check=True
    ).stdout.split()
