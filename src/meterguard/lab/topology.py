"""The lab's network: three namespaces, three veth links, static and quiet.

    [host]  wwan0 ----------- to-host [carrier] to-inet ----------- to-carrier [inet]
            wlan0 ------------------------------------------------ to-wlan     (servers on lo)

Only documentation addresses are used (192.0.2.0/24, 198.51.100.0/24,
203.0.113.0/24, 2001:db8::/32) and traffic only flows between these
namespaces.  The internet has two server addresses per family: the host
reaches SERVER_WWAN through its default route (wwan0, via the carrier) and
SERVER_WLAN through a host route on wlan0, so a client picks the link by
destination address alone.

Why the links are configured the way they are:
- TSO/GSO/GRO (and UDP segmentation, LRO) are off on every interface: a veth
  passes 64 KB super-packets through unsplit, and a carrier bills wire-sized
  packets.  With them off the carrier sees about payload / MSS packets.
- The links are silent when idle, so byte counts on them are exactly the
  traffic a test made.  Neighbours are permanent static entries (no ARP or
  neighbour solicitation ever); `arp off` (IFF_NOARP) also keeps IPv6 from
  joining solicited-node groups, and `multicast off` before forwarding is
  enabled keeps the carrier from joining all-routers groups: either join would
  send MLD reports.  IPv6 addresses are `nodad`, no link-local address is
  generated (addr_gen_mode 1), and router solicitation, RA and autoconf are
  off.  A real raw-IP wwan0 is NOARP too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from meterguard.lab.netns import disable_offloads, ip, ns_argv, run, sysctl

Via = Literal["wwan", "wlan"]
Family = Literal[4, 6]

# Interface names (<= 15 chars).
HOST_WWAN = "wwan0"
HOST_WLAN = "wlan0"
CARRIER_HOST_IF = "to-host"
CARRIER_INET_IF = "to-inet"
INET_CARRIER_IF = "to-carrier"
INET_WLAN_IF = "to-wlan"

SERVER_WWAN = {4: "192.0.2.10", 6: "2001:db8:a::10"}
SERVER_WLAN = {4: "192.0.2.20", 6: "2001:db8:a::20"}


@dataclass(frozen=True)
class End:
    """One end of a veth link."""

    role: str  # "host" | "carrier" | "inet"
    ifname: str
    mac: str
    v4: str
    v6: str


@dataclass(frozen=True)
class Link:
    a: End
    b: End
    v4_len: int
    v6_len: int = 64


WWAN_LINK = Link(
    End("host", HOST_WWAN, "02:00:00:00:01:02", "198.51.100.2", "2001:db8:100::2"),
    End("carrier", CARRIER_HOST_IF, "02:00:00:00:01:01", "198.51.100.1", "2001:db8:100::1"),
    v4_len=24,
)
CORE_LINK = Link(
    End("carrier", CARRIER_INET_IF, "02:00:00:00:02:01", "203.0.113.1", "2001:db8:200::1"),
    End("inet", INET_CARRIER_IF, "02:00:00:00:02:02", "203.0.113.2", "2001:db8:200::2"),
    v4_len=25,
)
WLAN_LINK = Link(
    End("host", HOST_WLAN, "02:00:00:00:03:02", "203.0.113.129", "2001:db8:300::2"),
    End("inet", INET_WLAN_IF, "02:00:00:00:03:01", "203.0.113.130", "2001:db8:300::1"),
    v4_len=25,
)
LINKS = (WWAN_LINK, CORE_LINK, WLAN_LINK)

# Set in every namespace BEFORE its interfaces exist: an interface copies the
# namespace's "default" IPv6 settings when it is created.
QUIET_SYSCTLS: dict[str, str | int] = {
    f"net.ipv6.conf.{scope}.{key}": str(value)
    for scope in ("all", "default")
    for key, value in (
        ("accept_ra", 0),
        ("autoconf", 0),
        ("router_solicitations", 0),
        ("accept_dad", 0),
        ("dad_transmits", 0),
        ("disable_ipv6", 0),
    )
} | {"net.ipv6.conf.default.addr_gen_mode": 1}

FORWARDING_SYSCTLS: dict[str, str | int] = {
    "net.ipv4.ip_forward": 1,
    "net.ipv6.conf.all.forwarding": 1,
}


class Topology:
    """Names of one lab's namespaces, and the steps that build its links."""

    def __init__(self, prefix: str, offloads: bool = False) -> None:
        self.prefix = prefix
        self.ns = {role: f"{prefix}-{role}" for role in ("inet", "carrier", "host")}
        # True keeps the kernel's default offloads (for benchmarks that compare): the
        # carrier then sees super-packets and no longer counts wire-sized packets.
        self.offloads = offloads

    def prepare_namespace(self, role: str) -> None:
        ip(self.ns[role], "link", "set", "lo", "up")
        sysctl(self.ns[role], QUIET_SYSCTLS)

    def add_link(self, link: Link, rate_mbit: int | None = None) -> None:
        """Create a veth pair directly in its two namespaces and configure both ends."""
        a, b = link.a, link.b
        ip(
            self.ns[a.role], "link", "add", a.ifname, "address", a.mac, "type", "veth",
            "peer", "name", b.ifname, "address", b.mac, "netns", self.ns[b.role],
        )  # fmt: skip
        for end, peer in ((a, b), (b, a)):
            self._configure_end(end, peer, link)
        if rate_mbit is not None:
            for end in (a, b):
                self.shape(end, rate_mbit)

    def _configure_end(self, end: End, peer: End, link: Link) -> None:
        ns = self.ns[end.role]
        # Flags first, while the link is down: nothing is ever sent un-quietly.
        ip(ns, "link", "set", end.ifname, "multicast", "off", "arp", "off")
        if not self.offloads:
            disable_offloads(ns, end.ifname)
        ip(ns, "addr", "add", f"{end.v4}/{link.v4_len}", "dev", end.ifname)
        ip(ns, "-6", "addr", "add", f"{end.v6}/{link.v6_len}", "dev", end.ifname, "nodad")
        for addr in (peer.v4, peer.v6):
            ip(ns, "neigh", "replace", addr, "lladdr", peer.mac, "dev", end.ifname,
               "nud", "permanent")  # fmt: skip
        ip(ns, "link", "set", end.ifname, "up")

    def shape(self, end: End, rate_mbit: int) -> None:
        """tbf on an interface's egress.  Shaping both ends shapes both directions."""
        rate_bytes = rate_mbit * 125_000
        # tbf needs burst >= rate / HZ; 1/100 s of traffic covers HZ >= 100.
        burst = max(15_000, rate_bytes // 100)
        run(ns_argv(self.ns[end.role], [
            "tc", "qdisc", "replace", "dev", end.ifname, "root", "tbf",
            "rate", f"{rate_mbit}mbit", "burst", str(burst), "latency", "100ms",
        ]))  # fmt: skip

    def add_server_addresses(self) -> None:
        inet = self.ns["inet"]
        for addrs in (SERVER_WWAN, SERVER_WLAN):
            ip(inet, "addr", "add", f"{addrs[4]}/32", "dev", "lo")
            ip(inet, "-6", "addr", "add", f"{addrs[6]}/128", "dev", "lo", "nodad")

    def add_host_routes(self) -> None:
        host = self.ns["host"]
        carrier, inet = WWAN_LINK.b, WLAN_LINK.b
        ip(host, "route", "replace", "default", "via", carrier.v4, "dev", HOST_WWAN)
        ip(host, "-6", "route", "replace", "default", "via", carrier.v6, "dev", HOST_WWAN)
        ip(host, "route", "replace", f"{SERVER_WLAN[4]}/32", "via", inet.v4, "dev", HOST_WLAN)
        ip(host, "-6", "route", "replace", f"{SERVER_WLAN[6]}/128", "via", inet.v6,
           "dev", HOST_WLAN)  # fmt: skip

    def add_core_routes(self) -> None:
        carrier, inet = self.ns["carrier"], self.ns["inet"]
        to_inet, to_carrier = CORE_LINK.b, CORE_LINK.a
        ip(carrier, "route", "replace", "192.0.2.0/24", "via", to_inet.v4)
        ip(carrier, "-6", "route", "replace", "2001:db8:a::/64", "via", to_inet.v6)
        ip(inet, "route", "replace", "198.51.100.0/24", "via", to_carrier.v4)
        ip(inet, "-6", "route", "replace", "2001:db8:100::/64", "via", to_carrier.v6)

    def enable_forwarding(self) -> None:
        """Only after the carrier's links exist with multicast off (see module docstring)."""
        sysctl(self.ns["carrier"], FORWARDING_SYSCTLS)

    def delete_wwan(self) -> None:
        """Deleting one end of a veth pair deletes both ends (and their qdiscs)."""
        run(["ip", "-n", self.ns["host"], "link", "delete", HOST_WWAN], check=False)

    def link_stats(self, role: str, ifname: str) -> LinkStats:
        out = run(ns_argv(self.ns[role], ["ip", "-j", "-s", "link", "show", "dev", ifname]))
        stats = json.loads(out.stdout)[0]["stats64"]
        rx, tx = stats["rx"], stats["tx"]
        return LinkStats(
            rx_bytes=rx["bytes"],
            rx_packets=rx["packets"],
            rx_dropped=rx["dropped"],
            tx_bytes=tx["bytes"],
            tx_packets=tx["packets"],
            tx_dropped=tx["dropped"],
        )


ETH_HEADER = 14


@dataclass(frozen=True)
class LinkStats:
    """Interface counters.  A veth counts Ethernet frames: 14 B more per packet than IP."""

    rx_bytes: int
    rx_packets: int
    rx_dropped: int
    tx_bytes: int
    tx_packets: int
    tx_dropped: int

    @property
    def rx_ip_bytes(self) -> int:
        return self.rx_bytes - ETH_HEADER * self.rx_packets

    @property
    def tx_ip_bytes(self) -> int:
        return self.tx_bytes - ETH_HEADER * self.tx_packets

    def __sub__(self, other: LinkStats) -> LinkStats:
        return LinkStats(
            self.rx_bytes - other.rx_bytes,
            self.rx_packets - other.rx_packets,
            self.rx_dropped - other.rx_dropped,
            self.tx_bytes - other.tx_bytes,
            self.tx_packets - other.tx_packets,
            self.tx_dropped - other.tx_dropped,
        )
