"""The carrier's meter: what is billed, counted independently of meterguard.

The carrier namespace forwards between the host's wwan0 and the internet.  Its
forward chain counts, per direction, every forwarded IP byte (ICMP included),
and per internet-side server port for TCP and UDP.  nftables counters count
IP-layer bytes (`meta length`), which is what a carrier bills.  Upload is
host -> internet keyed by the destination port, download is internet -> host
keyed by the source port, so both directions of one app's flows land on the
app's own server port.

The table is `inet carrier`, in the carrier namespace only; meterguard's own
table is never touched.  These sets have no cgroup keys, so `nft -j list` is
fast here (no cgroupfs walk).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from meterguard.lab.netns import LabError, ns_argv, run

TABLE = "carrier"
Proto = Literal["tcp", "udp", "any"]


def ruleset(host_if: str, inet_if: str) -> str:
    """nft text of the carrier's counting table (one atomic batch, idempotent)."""
    sets = "".join(
        f"    set {name} {{ type inet_service; flags dynamic; counter; size 65535; }}\n"
        for name in ("tcp_up", "tcp_down", "udp_up", "udp_down")
    )
    # "table {}; delete table" makes the load an atomic replace whether or not
    # the table existed before.  Chain names avoid nft keywords.
    return (
        f"table inet {TABLE} {{}}\n"
        f"delete table inet {TABLE}\n"
        f"table inet {TABLE} {{\n"
        f"{sets}"
        "    counter total_up { }\n"
        "    counter total_down { }\n"
        "    chain count_up {\n"
        '        counter name "total_up"\n'
        "        meta l4proto tcp update @tcp_up { tcp dport }\n"
        "        meta l4proto udp update @udp_up { udp dport }\n"
        "    }\n"
        "    chain count_down {\n"
        '        counter name "total_down"\n'
        "        meta l4proto tcp update @tcp_down { tcp sport }\n"
        "        meta l4proto udp update @udp_down { udp sport }\n"
        "    }\n"
        "    chain forward_billing {\n"
        "        type filter hook forward priority filter - 10; policy accept;\n"
        f'        iifname "{host_if}" oifname "{inet_if}" jump count_up\n'
        f'        iifname "{inet_if}" oifname "{host_if}" jump count_down\n'
        "    }\n"
        "}\n"
    )


@dataclass(frozen=True)
class Count:
    packets: int = 0
    bytes: int = 0

    def __add__(self, other: Count) -> Count:
        return Count(self.packets + other.packets, self.bytes + other.bytes)

    def __sub__(self, other: Count) -> Count:
        return Count(self.packets - other.packets, self.bytes - other.bytes)


@dataclass(frozen=True)
class PortCounts:
    """Billed IP bytes of one server port: up = host -> internet, down = back."""

    up: Count = Count()
    down: Count = Count()

    def __add__(self, other: PortCounts) -> PortCounts:
        return PortCounts(self.up + other.up, self.down + other.down)

    def __sub__(self, other: PortCounts) -> PortCounts:
        return PortCounts(self.up - other.up, self.down - other.down)


def _sub_ports(
    new: Mapping[int, PortCounts], old: Mapping[int, PortCounts]
) -> dict[int, PortCounts]:
    return {port: new[port] - old.get(port, PortCounts()) for port in new}


@dataclass(frozen=True)
class CarrierCounts:
    """One reading of the carrier's counters.  `a - b` gives the traffic between readings."""

    tcp: Mapping[int, PortCounts] = field(default_factory=dict)
    udp: Mapping[int, PortCounts] = field(default_factory=dict)
    up: Count = Count()
    down: Count = Count()

    def port(self, port: int, proto: Proto = "any") -> PortCounts:
        tcp = self.tcp.get(port, PortCounts()) if proto in ("tcp", "any") else PortCounts()
        udp = self.udp.get(port, PortCounts()) if proto in ("udp", "any") else PortCounts()
        return tcp + udp

    def __sub__(self, other: CarrierCounts) -> CarrierCounts:
        return CarrierCounts(
            tcp=_sub_ports(self.tcp, other.tcp),
            udp=_sub_ports(self.udp, other.udp),
            up=self.up - other.up,
            down=self.down - other.down,
        )


def _count(obj: Mapping[str, object]) -> Count:
    packets, nbytes = obj.get("packets", 0), obj.get("bytes", 0)
    if not isinstance(packets, int) or not isinstance(nbytes, int):
        raise LabError(f"bad counter in carrier JSON: {obj!r}")
    return Count(packets, nbytes)


def _set_elements(obj: Mapping[str, object]) -> dict[int, Count]:
    out: dict[int, Count] = {}
    elems = obj.get("elem", [])
    if not isinstance(elems, list):
        return out
    for item in elems:
        # Elements with a counter come as {"elem": {"val": 5001, "counter": {...}}}.
        inner = item.get("elem") if isinstance(item, dict) else None
        if not isinstance(inner, dict):
            continue
        val, counter = inner.get("val"), inner.get("counter")
        if isinstance(val, int) and isinstance(counter, dict):
            out[val] = _count(counter)
    return out


def parse_counts(text: str) -> CarrierCounts:
    """Parse `nft -j list table inet carrier` into exact byte/packet counts."""
    doc = json.loads(text)
    sets: dict[str, dict[int, Count]] = {}
    totals: dict[str, Count] = {}
    for entry in doc.get("nftables", []):
        if "set" in entry:
            sets[entry["set"]["name"]] = _set_elements(entry["set"])
        elif "counter" in entry:
            totals[entry["counter"]["name"]] = _count(entry["counter"])

    def ports(proto: str) -> dict[int, PortCounts]:
        up, down = sets.get(f"{proto}_up", {}), sets.get(f"{proto}_down", {})
        return {p: PortCounts(up.get(p, Count()), down.get(p, Count())) for p in up.keys() | down}

    return CarrierCounts(
        tcp=ports("tcp"),
        udp=ports("udp"),
        up=totals.get("total_up", Count()),
        down=totals.get("total_down", Count()),
    )


class Carrier:
    """The carrier's billing meter inside namespace `ns`."""

    def __init__(self, ns: str, host_if: str, inet_if: str) -> None:
        self.ns = ns
        self.host_if = host_if
        self.inet_if = inet_if

    def install(self) -> None:
        run(ns_argv(self.ns, ["nft", "-f", "-"]), input_text=ruleset(self.host_if, self.inet_if))

    def reset(self) -> None:
        """Zero every carrier counter (reloads the table atomically)."""
        self.install()

    def read(self) -> CarrierCounts:
        proc = run(ns_argv(self.ns, ["nft", "-j", "list", "table", "inet", TABLE]))
        return parse_counts(proc.stdout)

    def read_settled(self, quiet_reads: int = 2, interval: float = 0.25,
                     max_reads: int = 40) -> CarrierCounts:
        """The counters once they stopped moving for `quiet_reads` reads (bounded).

        After a cap or a block, servers keep sending into the pause for a moment: what the
        carrier bills includes those bytes, so a measurement waits for them to end.
        """
        last = self.read()
        still = 0
        for _ in range(max_reads):
            time.sleep(interval)
            now = self.read()
            still = still + 1 if (now.up, now.down) == (last.up, last.down) else 0
            last = now
            if still >= quiet_reads:
                break
        return last

    def port_bytes(self, port: int, proto: Proto = "any") -> tuple[int, int]:
        """(upload, download) IP bytes billed so far for one server port."""
        counts = self.read().port(port, proto)
        return counts.up.bytes, counts.down.bytes
