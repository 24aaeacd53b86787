"""Tunnels in the lab: an app's traffic inside a tunnel whose underlay is the metered wwan0.

The carrier must bill the underlay (UDP 1194 for the tun-based VPN, UDP 4789
for VXLAN) and nothing on the app's own TCP port, and the billed bytes must be
the inner packets plus exactly the per-packet encapsulation overhead.  Every
test builds its own lab with its own prefix.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from labtest import new_prefix, ns_out, pid_gone, wait_until

from meterguard.lab import Lab, LabError, cgroup2_mount
from meterguard.lab.carrier import CarrierCounts, Count, PortCounts
from meterguard.lab.topology import LinkStats
from meterguard.lab.tunnel import (
    TUN_MTU,
    TUN_OVERHEAD,
    TUN_UNIT,
    VXLAN_MTU,
    VXLAN_OVERHEAD,
    Tunnel,
    TunnelKind,
    add_tun_tunnel,
    add_vxlan,
    start_tunnel_download,
    tunnel_download,
    tunnel_upload,
)

PORT = 5031
DOWNLOAD = 2_000_000
UPLOAD = 1_000_000
KINDS: list[TunnelKind] = ["tun", "vxlan"]
# Inner IPv4 + TCP headers with the timestamps option: the payload one inner packet carries
# is at most MTU - 52.
TCP_IP_HEADERS = 52


def assert_nothing_left(prefix: str, pids: list[int]) -> None:
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    assert prefix not in names.stdout
    assert not (cgroup2_mount() / prefix).exists()
    assert not Path(f"/run/meterguard-lab/{prefix}").exists()
    assert wait_until(lambda: all(pid_gone(p) for p in pids)), [p for p in pids if not pid_gone(p)]


# Tunnel daemons each lab started, so the fixture can check they are gone after teardown.
_DAEMONS: dict[str, list[int]] = {}


@pytest.fixture
def lab() -> Iterator[Lab]:
    prefix = new_prefix("mgt")
    with Lab(prefix=prefix) as built:
        built.start_servers([PORT])
        yield built
    assert_nothing_left(prefix, _DAEMONS.pop(prefix, []))


def add(lab: Lab, kind: TunnelKind) -> Tunnel:
    tunnel = add_tun_tunnel(lab) if kind == "tun" else add_vxlan(lab)
    pids = [p for p in (tunnel.daemon_pid, tunnel.peer_pid) if p is not None]
    _DAEMONS.setdefault(lab.prefix, []).extend(pids)
    return tunnel


def billed_outside(counts: CarrierCounts, tunnel: Tunnel) -> tuple[Count, Count]:
    """(up, down) the carrier counted that is not the tunnel's underlay."""
    under = counts.port(tunnel.port, "udp")
    return counts.up - under.up, counts.down - under.down


def check_direction(billed: Count, inner_bytes: int, inner_packets: int, tunnel: Tunnel) -> int:
    """One direction: one underlay packet per inner packet, and exactly the overhead on each.

    Returns the encapsulation overhead in bytes (the bucket meterguard must show apart).
    """
    # Not fragmented: every inner packet went out as exactly one underlay packet...
    assert billed.packets == inner_packets, (billed, inner_packets)
    # ...carrying exactly the encapsulation headers on top of the inner packet.
    overhead = billed.bytes - inner_bytes
    assert overhead == tunnel.overhead * billed.packets, (billed, inner_bytes)
    return overhead


def report(tunnel: Tunnel, what: str, payload: int, billed: PortCounts, link: LinkStats) -> None:
    """Check both directions of one transfer and print its measured overhead ratio."""
    overhead = check_direction(billed.down, link.rx_bytes, link.rx_packets, tunnel)
    overhead += check_direction(billed.up, link.tx_bytes, link.tx_packets, tunnel)
    total = billed.up.bytes + billed.down.bytes
    inner = link.rx_bytes + link.tx_bytes
    assert total == inner + overhead > payload + overhead
    print(
        f"\n{tunnel.kind} {what}: payload {payload} B; inner IP {inner} B in "
        f"{link.rx_packets + link.tx_packets} packets; billed {total} B = inner + "
        f"{overhead} B overhead ({tunnel.overhead} B/packet): billed/inner "
        f"{total / inner:.4f}, billed/payload {total / payload:.4f}"
    )


# --- traffic through the tunnel ------------------------------------------------------------------


@pytest.mark.privileged
@pytest.mark.parametrize("kind", KINDS)
def test_app_traffic_in_a_tunnel_is_billed_as_underlay_with_overhead(
    lab: Lab, kind: TunnelKind
) -> None:
    tunnel = add(lab, kind)
    assert (tunnel.mtu, tunnel.overhead) == (
        (TUN_MTU, TUN_OVERHEAD) if kind == "tun" else (VXLAN_MTU, VXLAN_OVERHEAD)
    )
    assert tunnel.mtu + tunnel.overhead == 1500
    app = lab.app("firefox", PORT)

    before, link_before = lab.carrier.read(), lab.link_stats(tunnel.ifname)
    assert tunnel_download(app, tunnel, DOWNLOAD) == DOWNLOAD
    down = lab.carrier.read() - before
    link: LinkStats = lab.link_stats(tunnel.ifname) - link_before

    before, link_before = lab.carrier.read(), lab.link_stats(tunnel.ifname)
    assert tunnel_upload(app, tunnel, UPLOAD) == UPLOAD
    up = lab.carrier.read() - before
    link_up: LinkStats = lab.link_stats(tunnel.ifname) - link_before

    for counts in (down, up):
        # Inside the tunnel: nothing at all on the app's TCP port, or on any TCP port.
        assert counts.port(PORT, "tcp") == PortCounts()
        assert all(c.up.bytes == 0 and c.down.bytes == 0 for c in counts.tcp.values())
        # And everything the carrier billed is the tunnel's underlay: nothing else moved.
        assert billed_outside(counts, tunnel) == (Count(), Count())

    # The host's tunnel interface saw the inner traffic: at least the payload each way.
    assert link.rx_bytes >= DOWNLOAD and link_up.tx_bytes >= UPLOAD
    assert link.rx_dropped == link.tx_dropped == link_up.rx_dropped == link_up.tx_dropped == 0
    report(tunnel, "download", DOWNLOAD, down.port(tunnel.port, "udp"), link)
    report(tunnel, "upload", UPLOAD, up.port(tunnel.port, "udp"), link_up)
    # Inner packets fit the tunnel MTU, so the underlay packets fit wwan0's 1500 bytes.
    max_payload = tunnel.mtu - TCP_IP_HEADERS
    assert down.port(tunnel.port).down.packets >= math.ceil(DOWNLOAD / max_payload)
    assert up.port(tunnel.port).up.packets >= math.ceil(UPLOAD / max_payload)

    # The server saw the app's payload, so the traffic really crossed the tunnel.
    stats = lab.server_stats()[PORT]
    assert stats.tcp_sent == DOWNLOAD and stats.tcp_received == UPLOAD


@pytest.mark.privileged
@pytest.mark.parametrize("kind", KINDS)
def test_server_behind_the_tunnel_is_reachable_only_through_it(lab: Lab, kind: TunnelKind) -> None:
    tunnel = add(lab, kind)
    app = lab.app("firefox", PORT)
    assert tunnel_download(app, tunnel, 100_000) == 100_000
    tunnel.stop()
    tunnel.stop()  # idempotent
    assert tunnel.ifname not in ns_out(lab.ns_host, ["ip", "-o", "link", "show"])
    before = lab.carrier.read()
    # Without the tunnel the host's default route leads to the carrier, whose route for the
    # inner net is a blackhole: the client fails, and not one byte is billed for it.
    handle = start_tunnel_download(app, tunnel, 100_000, timeout=3.0)
    result = handle.wait()
    assert handle.reported and not result.ok and result.received == 0
    moved = lab.carrier.read() - before
    assert (moved.up, moved.down) == (Count(), Count())


# --- the tunnel daemon ---------------------------------------------------------------------------


@pytest.mark.privileged
def test_tun_daemon_runs_in_its_cgroup_in_the_host_namespace(lab: Lab) -> None:
    tunnel = add(lab, "tun")
    assert tunnel.cgroup is not None and tunnel.daemon_pid is not None
    assert tunnel.cgroup.rel == f"{lab.prefix}/system.slice/openvpn.service"
    pid = tunnel.daemon_pid
    # Joined before it entered the namespace, and it is the only process there.
    assert tunnel.cgroup.pids() == [pid]
    assert f"0::/{tunnel.cgroup.rel}\n" in Path(f"/proc/{pid}/cgroup").read_text()
    assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(f"/var/run/netns/{lab.ns_host}").st_ino
    # Its UDP socket is the underlay: bound to wwan0's address on the tunnel port.
    sockets = ns_out(lab.ns_host, ["ss", "-H", "-u", "-a", "-n", "-p"])
    mine = [line for line in sockets.splitlines() if f"pid={pid}," in line]
    assert len(mine) == 1 and f"{tunnel.local_addr}:{tunnel.port}" in mine[0], sockets
    assert f"{tunnel.remote_addr}:{tunnel.port}" in mine[0]

    app = lab.app("firefox", PORT)
    assert tunnel_upload(app, tunnel, 300_000) == 300_000
    link = lab.link_stats(tunnel.ifname)
    tunnel.stop()
    assert pid_gone(pid)
    # SIGTERM makes each daemon print its counts: the host's match tun0's counters.
    reports = tunnel.daemon_reports()
    host_report, inet_report = reports["host"], reports["inet"]
    assert host_report["to_remote_packets"] == link.tx_packets
    assert host_report["to_remote_bytes"] == link.tx_bytes
    assert host_report["from_remote_bytes"] == inet_report["to_remote_bytes"] == link.rx_bytes
    assert host_report["send_errors"] == inet_report["send_errors"] == 0
    assert host_report["stopped"] == "SIGTERM"


@pytest.mark.privileged
@pytest.mark.parametrize("kind", KINDS)
def test_a_failed_add_is_undone_and_the_first_tunnel_keeps_working(
    lab: Lab, kind: TunnelKind
) -> None:
    tunnel = add(lab, kind)
    with pytest.raises(LabError):
        add(lab, kind)  # its devices exist already
    app = lab.app("firefox", PORT)
    assert tunnel_download(app, tunnel, 200_000) == 200_000
    if tunnel.cgroup is not None:
        assert tunnel.cgroup.pids() == [tunnel.daemon_pid]


@pytest.mark.privileged
@pytest.mark.parametrize("limit", ["idle", "lifetime"])
def test_tun_daemon_ends_by_itself(lab: Lab, limit: str) -> None:
    """Bounded: an idle daemon, or one past its lifetime, exits and its tun device goes too."""
    idle, lifetime = (0.5, 600.0) if limit == "idle" else (600.0, 0.5)
    argv = [
        sys.executable, "-m", "meterguard.lab.tunnel_daemon", "--tun", "tun9",
        "--local", lab.host_addr(), "--remote", "192.0.2.30", "--port", "1199",
        "--idle-timeout", str(idle), "--lifetime", str(lifetime),
    ]  # fmt: skip
    proc = lab.host_popen(argv, lab.cgroup(TUN_UNIT), stdout=subprocess.PIPE)
    out, _err = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert json.loads(out.splitlines()[-1])["stopped"] == limit
    assert "tun9" not in ns_out(lab.ns_host, ["ip", "-o", "link"])


@pytest.mark.privileged
def test_daemon_command_line_rejects_a_bad_port() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "meterguard.lab.tunnel_daemon", "--tun", "x", "--local",
         "127.0.0.1", "--remote", "127.0.0.1", "--port", "0"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and "bad port" in proc.stderr


# --- quiet and static ----------------------------------------------------------------------------


@pytest.mark.privileged
@pytest.mark.parametrize("kind", KINDS)
def test_tunnel_links_are_quiet_and_static(lab: Lab, kind: TunnelKind) -> None:
    tunnel = add(lab, kind)
    for ns, ifname in ((lab.ns_host, tunnel.ifname), (lab.ns_inet, tunnel.peer_ifname)):
        link = json.loads(ns_out(ns, ["ip", "-j", "-d", "link", "show", "dev", ifname]))[0]
        assert link["mtu"] == tunnel.mtu
        assert "NOARP" in link["flags"] and "MULTICAST" not in link["flags"]
        assert "inet6" not in ns_out(ns, ["ip", "addr", "show", "dev", ifname])
        state = ns_out(ns, ["ethtool", "-k", ifname])
        for feature in ("tcp-segmentation-offload", "generic-segmentation-offload"):
            assert f"{feature}: off" in state
        if kind == "vxlan":
            info = link["linkinfo"]["info_data"]
            assert info["port"] == tunnel.port and not info["learning"]
            assert (info["port_range"]["low"], info["port_range"]["high"]) == (
                tunnel.port,
                tunnel.port + 1,
            )
            assert "PERMANENT" in ns_out(ns, ["ip", "neigh", "show", "dev", ifname])
            fdb = ns_out(ns, ["bridge", "fdb", "show", "dev", ifname])
            assert "permanent" in fdb and "00:00:00:00:00:00" in fdb
    # Tunnels send nothing of their own: all a small exchange bills is its own underlay.
    before = lab.carrier.read()
    app = lab.app("firefox", PORT)
    assert tunnel_download(app, tunnel, 1000) == 1000
    moved = lab.carrier.read() - before
    assert billed_outside(moved, tunnel) == (Count(), Count())
