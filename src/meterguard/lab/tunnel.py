"""Tunnels over the host's metered wwan0: a tun-based VPN and a kernel VXLAN.

    with Lab(prefix="mgt-ab12cd") as lab:
        lab.start_servers([5001])
        vpn = add_tun_tunnel(lab)                  # or add_vxlan(lab)
        app = lab.app("firefox", 5001)
        before = lab.carrier.read()
        tunnel_download(app, vpn, 2_000_000)       # the app's TCP goes inside the tunnel
        billed = (lab.carrier.read() - before).port(vpn.port, "udp")

The two kinds are the two ways a VPN's packets reach wwan0 (DESIGN.md, "VPNs"):
- "tun": a daemon's socket, like OpenVPN.  `tunnel_daemon` runs in the host
  namespace in a cgroup of its own (system.slice/openvpn.service) and its peer
  in the internet namespace; UDP 1194 both ways.
- "vxlan": a kernel socket, like WireGuard (not in this kernel): the
  encapsulated packets belong to no process and no cgroup.  UDP 4789 both ways.

Addresses (IPv4 only; documentation range 192.0.2.0/24, which the carrier
already routes to the internet and of which topology.py uses .10 and .20):

    kind   underlay endpoint (inet lo)  inner net      host end   inet end   server (inet lo)
    tun    192.0.2.30 : 1194            192.0.2.64/28  .65 tun0   .66        192.0.2.70
    vxlan  192.0.2.40 : 4789            192.0.2.80/28  .81 vxlan0 .82        192.0.2.86

The host reaches the server by a /32 route into the tunnel.  The carrier gets
a blackhole route for the inner net, so the server is reachable only through
the tunnel: with the tunnel down, the host's default route sends the packets
to the carrier, which drops them before they are counted or forwarded.

Tunnel links are kept as quiet as the lab's veths (see topology.py): IPv6 is
disabled on them (the tunnels carry IPv4 only, so no link-local address and no
MLD report can appear), multicast and ARP are off, VXLAN neighbours and FDB
entries are static and learning is off, and offloads are off so the inner TCP
sends MTU-sized packets.  Neither kind sends keepalives: the carrier counts
exactly the encapsulated traffic a test made.
"""

from __future__ import annotations

import contextlib
import functools
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from meterguard.lab.apps import LabApp, TrafficHandle
from meterguard.lab.cgroups import LabCgroup
from meterguard.lab.lab import Lab
from meterguard.lab.netns import LabError, disable_offloads, ip, ns_argv, run, sysctl
from meterguard.lab.topology import INET_CARRIER_IF, WWAN_LINK

TunnelKind = Literal["tun", "vxlan"]

UNDERLAY_MTU = 1500  # the lab's wwan0 (veth default), as on a typical LTE bearer
IPV4_HEADER, UDP_HEADER, VXLAN_HEADER, ETH_HEADER = 20, 8, 8, 14
# Inner packets must fit one underlay packet, or the carrier would bill IP
# fragments (two headers, and a second packet that has no UDP port to count).
# tun: the datagram is the inner IP packet plus UDP and IP headers.
TUN_OVERHEAD = IPV4_HEADER + UDP_HEADER  # 28
TUN_MTU = UNDERLAY_MTU - TUN_OVERHEAD  # 1472
# VXLAN also carries an 8-byte VXLAN header and the inner Ethernet header.
VXLAN_OVERHEAD = IPV4_HEADER + UDP_HEADER + VXLAN_HEADER + ETH_HEADER  # 50
VXLAN_MTU = UNDERLAY_MTU - VXLAN_OVERHEAD  # 1450

TUN_PORT = 1194  # OpenVPN's port
VXLAN_PORT = 4789  # IANA VXLAN
VXLAN_ID = 42
TUN_UNIT = "system.slice/openvpn.service"

_READY_TIMEOUT_S = 20.0
_STOP_GRACE_S = 5.0


@dataclass(frozen=True)
class _Plan:
    """Names and addresses of one tunnel kind; see the table in the module docstring."""

    kind: TunnelKind
    host_if: str
    inet_if: str
    endpoint: str  # the internet side's underlay address (on inet's lo)
    inner_net: str
    host_inner: str
    inet_inner: str
    server: str
    port: int
    mtu: int
    overhead: int
    host_mac: str = ""
    inet_mac: str = ""


TUN_PLAN = _Plan(
    "tun", "tun0", "tun-host", "192.0.2.30", "192.0.2.64/28", "192.0.2.65", "192.0.2.66",
    "192.0.2.70", TUN_PORT, TUN_MTU, TUN_OVERHEAD,
)  # fmt: skip
VXLAN_PLAN = _Plan(
    "vxlan", "vxlan0", "vxlan-host", "192.0.2.40", "192.0.2.80/28", "192.0.2.81", "192.0.2.82",
    "192.0.2.86", VXLAN_PORT, VXLAN_MTU, VXLAN_OVERHEAD,
    host_mac="02:00:00:00:04:02", inet_mac="02:00:00:00:04:01",
)  # fmt: skip


@dataclass
class Tunnel:
    """A tunnel whose underlay is the host's metered wwan0.

    `overhead` is what each inner IP packet costs on the underlay beyond its own
    bytes.  Both kinds' interface counters count inner IP bytes (tun: packets
    without packet info; vxlan: the driver counts from the inner IP header in
    both directions, without the inner Ethernet header), so for each direction
    underlay bytes = interface bytes + overhead * interface packets.
    """

    kind: TunnelKind
    ifname: str  # on the host
    server_addr: str  # the internet server address apps use to go through the tunnel
    port: int  # UDP underlay port, both directions
    cgroup: LabCgroup | None  # the tunnel daemon's cgroup; None for VXLAN (kernel socket)
    mtu: int
    overhead: int
    local_addr: str  # underlay addresses: the host's wwan0, the internet endpoint
    remote_addr: str
    peer_ifname: str  # in the internet namespace
    daemon_pid: int | None = None  # the host's tunnel daemon (in `cgroup`)
    peer_pid: int | None = None  # its peer in the internet namespace
    logs: tuple[Path, ...] = ()
    _undo: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def stop(self) -> None:
        """Take the tunnel down (daemons, devices, their routes), like a VPN disconnect.

        The server address and the carrier's blackhole stay (see _add_addresses).
        Idempotent; the lab's teardown removes whatever is left.
        """
        while self._undo:
            with contextlib.suppress(Exception):
                self._undo.pop()()

    def daemon_reports(self) -> dict[str, dict[str, object]]:
        """Each daemon's exit report (its JSON counts) by role, "host" and "inet"; after stop()."""
        reports: dict[str, dict[str, object]] = {}
        for path in self.logs:  # tunnel-<kind>-<role>.log
            role = path.stem.rsplit("-", 1)[-1]
            with contextlib.suppress(OSError):
                for line in path.read_text().splitlines():
                    if line.startswith("{"):
                        reports[role] = json.loads(line)
        return reports


# --- building ------------------------------------------------------------------------------------


def _undoing(undo: list[Callable[[], None]], build: Callable[[], Tunnel]) -> Tunnel:
    """Run build(); if it fails, undo what it did so far (newest first) and re-raise."""
    try:
        return build()
    except BaseException:
        while undo:
            with contextlib.suppress(Exception):
                undo.pop()()
        raise


def _add_addresses(lab: Lab, plan: _Plan) -> None:
    """The internet's underlay endpoint and server address, and the carrier's blackhole.

    These belong to the internet and stay when the tunnel stops, as a VPN
    server and the private network behind it do when a client disconnects:
    the server is then unreachable, and nothing is billed for trying.
    `replace` makes adding the same kind of tunnel again after stop() work.
    """
    for addr in (plan.endpoint, plan.server):
        ip(lab.ns_inet, "addr", "replace", f"{addr}/32", "dev", "lo")
    ip(lab.ns_carrier, "route", "replace", "blackhole", plan.inner_net)


def _quiet_ip(ns: str, *args: str) -> Callable[[], None]:
    """An undo step: `ip -n ns args`, ignoring failure (the namespace may already be gone)."""

    def step() -> None:
        run(["ip", "-n", ns, *args], check=False)

    return step


def _quiet_link(ns: str, ifname: str, mtu: int) -> None:
    """Make a new, still-down tunnel device silent before it comes up (see module docstring)."""
    sysctl(ns, {f"net.ipv6.conf.{ifname}.disable_ipv6": 1})
    ip(ns, "link", "set", ifname, "multicast", "off", "arp", "off", "mtu", str(mtu))
    disable_offloads(ns, ifname)


def _start_daemon(
    lab: Lab, role: str, plan: _Plan, local: str, remote: str, cgroup: LabCgroup | None,
    idle_timeout: float, lifetime: float,
) -> tuple[subprocess.Popen[str], Path]:  # fmt: skip
    """Start tunnel_daemon in a namespace and wait until its tun device and socket are open."""
    ifname = plan.host_if if role == "host" else plan.inet_if
    ready = lab.state_dir / f"tunnel-{plan.kind}-{role}.ready"
    log_path = lab.state_dir / f"tunnel-{plan.kind}-{role}.log"
    argv = [
        sys.executable, "-m", "meterguard.lab.tunnel_daemon", "--tun", ifname,
        "--local", local, "--remote", remote, "--port", str(plan.port),
        "--ready-file", str(ready), "--idle-timeout", str(idle_timeout),
        "--lifetime", str(lifetime),
    ]  # fmt: skip
    with log_path.open("w") as log:
        if role == "host":
            # The daemon writes itself into its cgroup before it enters the namespace.
            proc = lab.host_popen(argv, cgroup, stdout=log, stderr=log)
        else:
            proc = lab.popen(lab.ns_cmd(role, argv, cgroup), stdout=log, stderr=log)
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            _end(proc)
            raise LabError(
                f"tunnel daemon in {role} did not start (rc={proc.poll()}):\n"
                f"{log_path.read_text()[-2000:]}"
            )
        time.sleep(0.02)
    return proc, log_path


def _end(proc: subprocess.Popen[str]) -> None:
    """SIGTERM (the daemon prints its counts), then SIGKILL if it does not exit."""
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(timeout=_STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=_STOP_GRACE_S)


def add_tun_tunnel(lab: Lab, *, idle_timeout: float = 600.0, lifetime: float = 3600.0) -> Tunnel:
    """A userspace UDP tunnel (OpenVPN-like) from the host's tun0 over wwan0 to the internet.

    The host's daemon runs in `<prefix>/system.slice/openvpn.service`, so its
    UDP socket (and every encapsulated byte) belongs to that cgroup, not to the
    app whose traffic is inside.
    """
    plan = TUN_PLAN
    host_wwan = WWAN_LINK.a.v4
    undo: list[Callable[[], None]] = []

    def build() -> Tunnel:
        _add_addresses(lab, plan)
        cgroup = lab.cgroup(TUN_UNIT)
        logs: list[Path] = []
        pids: list[int] = []
        for role, local, remote, group in (
            ("inet", plan.endpoint, host_wwan, None),
            ("host", host_wwan, plan.endpoint, cgroup),
        ):
            proc, log = _start_daemon(lab, role, plan, local, remote, group, idle_timeout, lifetime)
            undo.append(functools.partial(_end, proc))
            logs.append(log)
            pids.append(proc.pid)
        for ns, ifname, mine, peer in (
            (lab.ns_inet, plan.inet_if, plan.inet_inner, plan.host_inner),
            (lab.ns_host, plan.host_if, plan.host_inner, plan.inet_inner),
        ):
            _quiet_link(ns, ifname, plan.mtu)
            # A point-to-point address: the peer route is the only route needed inside.
            ip(ns, "addr", "add", f"{mine}/32", "peer", f"{peer}/32", "dev", ifname)
            ip(ns, "link", "set", ifname, "up")
        ip(lab.ns_host, "route", "replace", f"{plan.server}/32", "dev", plan.host_if,
           "src", plan.host_inner)  # fmt: skip
        return _tunnel(plan, cgroup, (pids[1], pids[0]), tuple(logs), undo)

    return _undoing(undo, build)


def add_vxlan(lab: Lab) -> Tunnel:
    """A VXLAN from the host's vxlan0 over wwan0 to the internet: the kernel-socket case.

    Both ends send from and to UDP 4789 (srcport 4789 4790 pins the source
    port, normally a hash of the inner flow): the carrier keys downloads by
    source port, and a fixed port puts both directions on 4789, as WireGuard's
    fixed listen port would.
    """
    plan = VXLAN_PLAN
    host_wwan = WWAN_LINK.a.v4
    undo: list[Callable[[], None]] = []

    def build() -> Tunnel:
        _add_addresses(lab, plan)
        ends = (
            (lab.ns_inet, plan.inet_if, plan.inet_mac, plan.endpoint, host_wwan,
             INET_CARRIER_IF, plan.inet_inner, plan.host_inner, plan.host_mac),
            (lab.ns_host, plan.host_if, plan.host_mac, host_wwan, plan.endpoint,
             WWAN_LINK.a.ifname, plan.host_inner, plan.inet_inner, plan.inet_mac),
        )  # fmt: skip
        for ns, ifname, mac, local, remote, lower, mine, peer, peer_mac in ends:
            ip(
                ns, "link", "add", ifname, "address", mac, "type", "vxlan",
                "id", str(VXLAN_ID), "local", local, "remote", remote, "dev", lower,
                "dstport", str(plan.port), "srcport", str(plan.port), str(plan.port + 1),
                "nolearning",
            )  # fmt: skip
            undo.append(_quiet_ip(ns, "link", "del", ifname))
            _quiet_link(ns, ifname, plan.mtu)
            ip(ns, "addr", "add", f"{mine}/28", "dev", ifname)
            # arp off: the peer's MAC must be a permanent entry, or IPv4 would use our own.
            ip(ns, "neigh", "replace", peer, "lladdr", peer_mac, "dev", ifname,
               "nud", "permanent")  # fmt: skip
            # `remote` already made the all-zeros default entry; the peer's MAC gets its
            # own permanent entry so unicast never depends on flooding or learning.
            run(ns_argv(ns, ["bridge", "fdb", "replace", peer_mac, "dev", ifname,
                             "dst", remote, "self", "permanent"]))  # fmt: skip
            ip(ns, "link", "set", ifname, "up")
        ip(lab.ns_host, "route", "replace", f"{plan.server}/32", "via", plan.inet_inner,
           "dev", plan.host_if, "src", plan.host_inner)  # fmt: skip
        return _tunnel(plan, None, (None, None), (), undo)

    return _undoing(undo, build)


def _tunnel(
    plan: _Plan, cgroup: LabCgroup | None, pids: tuple[int | None, int | None],
    logs: tuple[Path, ...],
    undo: list[Callable[[], None]],
) -> Tunnel:  # fmt: skip
    return Tunnel(
        kind=plan.kind, ifname=plan.host_if, server_addr=plan.server, port=plan.port,
        cgroup=cgroup, mtu=plan.mtu, overhead=plan.overhead,
        local_addr=WWAN_LINK.a.v4, remote_addr=plan.endpoint, peer_ifname=plan.inet_if,
        daemon_pid=pids[0], peer_pid=pids[1], logs=logs, _undo=undo,
    )  # fmt: skip


# --- apps through a tunnel -----------------------------------------------------------------------


def _start(app: LabApp, tunnel: Tunnel, op: str, args: list[str], timeout: float) -> TrafficHandle:
    """The lab's traffic client in the app's cgroup, aimed at the server behind the tunnel.

    The internet servers bind the wildcard address, so they already serve
    tunnel.server_addr on every port the lab started.
    """
    app.lab.check_served(app.port)
    argv = [
        sys.executable, "-m", "meterguard.lab.traffic", op, "--addr", tunnel.server_addr,
        "--port", str(app.port), "--timeout", str(timeout), *args,
    ]  # fmt: skip
    proc = app.lab.host_popen(argv, app, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return TrafficHandle(proc, op, timeout)


def _finish(handle: TrafficHandle) -> int:
    """As LabApp: a network failure (a blocked app) is a short count, a silent client an error."""
    result = handle.wait()
    if not handle.reported:
        raise LabError(result.error or "client did not report")
    return result.received if handle.op == "download" else result.sent


def start_tunnel_download(
    app: LabApp, tunnel: Tunnel, nbytes: int, *, pace_s: float = 0.0, timeout: float = 60.0
) -> TrafficHandle:
    args = ["--nbytes", str(nbytes), "--pace-ms", str(int(pace_s * 1000))]
    return _start(app, tunnel, "download", args, timeout)


def start_tunnel_upload(
    app: LabApp, tunnel: Tunnel, nbytes: int, *, timeout: float = 60.0
) -> TrafficHandle:
    return _start(app, tunnel, "upload", ["--nbytes", str(nbytes)], timeout)


def tunnel_download(app: LabApp, tunnel: Tunnel, nbytes: int, *, timeout: float = 60.0) -> int:
    """GET nbytes from the app's server through the tunnel; return payload bytes received."""
    return _finish(start_tunnel_download(app, tunnel, nbytes, timeout=timeout))


def tunnel_upload(app: LabApp, tunnel: Tunnel, nbytes: int, *, timeout: float = 60.0) -> int:
    """PUT nbytes to the app's server through the tunnel; return payload bytes sent."""
    return _finish(start_tunnel_upload(app, tunnel, nbytes, timeout=timeout))
