"""Turning one interval's counter deltas into bytes per (network, app): pure functions.

The breakdown always adds up to the interface total: what no app can claim goes to the
explicit `unattributed` app, and forwarded traffic (containers, VMs, a shared hotspot) to
`forwarded`.

Remainders are booked from cumulative figures, never from one interval alone. The
counters are read totals first and parts after (see kernel/table_reader.py), so at every
read `total - parts` is a lower bound of the true remainder, exact whenever the link was
quiet for a moment. Booking only what that bound adds (its running maximum) never books a
byte that an app claims later, so the breakdown never exceeds the interface total and
equals it as soon as the traffic pauses; no row is ever negative.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from meterguard.meter.readings import Direction, KernelReadings

UNATTRIBUTED = "unattributed"
FORWARDED = "forwarded"
# Encapsulation of tunnels over a metered link: underlay bytes less the tunnels' own bytes.
TUNNEL_OVERHEAD = "vpn-overhead"



@dataclass(slots=True)
class CgroupInfo:
    path: str
    app: str


@dataclass(slots=True)
class Remainder:
    """A cumulative `total - parts` and how much of it has been booked so far."""

    total: int = 0
    parts: int = 0
    booked: int = 0

    def add(self, total: int, parts: int) -> int:
        """Take one interval's figures; return what may be booked now (never negative)."""
        self.total += total
        self.parts += parts
        due = self.total - self.parts - self.booked
        if due <= 0:
            return 0
        self.booked += due
        return due


@dataclass(slots=True)
class AttributionState:
    """What one interval hands to the next: the cumulative remainders since the start."""

    unattributed: dict[tuple[str, Direction], Remainder] = field(default_factory=dict)
    headers: dict[str, Remainder] = field(default_factory=dict)
    overhead: dict[tuple[str, Direction], Remainder] = field(default_factory=dict)


Usage = dict[tuple[str, str], list[int]]  # (network, app) -> [bytes_up, bytes_down]


def _add(usage: Usage, network: str, app: str, direction: Direction, n: int) -> None:
    if n:
        usage.setdefault((network, app), [0, 0])[0 if direction == "up" else 1] += n


def exclusive_socket_bytes(
    deltas: Mapping[tuple[str, Direction, int], int],
    parent_of: Callable[[int], int | None],
) -> dict[tuple[str, Direction, int], int]:
    """Bytes exactly at each cgroup: count(level k) minus the counts of its children at k+1.

    `socket cgroupv2 level k` matches the ancestor at depth k, so a cgroup's count includes
    its descendants'. A cgroup whose parent is unknown lived less than one read, so it has
    no app either: nothing is subtracted for it and its bytes stay with its ancestor.
    """
    exclusive: dict[tuple[str, Direction, int], int] = defaultdict(int)
    for (ifname, direction, cgid), n in deltas.items():
        exclusive[(ifname, direction, cgid)] += n
    for (ifname, direction, cgid), n in deltas.items():
        parent = parent_of(cgid)
        if parent is not None and (ifname, direction, parent) in exclusive:
            exclusive[(ifname, direction, parent)] -= n
    return {k: v for k, v in exclusive.items() if v}


def _split(amount: int, weights: Mapping[int, int]) -> dict[int, int]:
    """Share `amount` in proportion to `weights`, in whole bytes that add up exactly."""
    total = sum(weights.values())
    shares = {k: amount * w // total for k, w in weights.items()}
    rest = amount - sum(shares.values())
    for k in sorted(weights, key=lambda k: -(amount * weights[k] % total))[:rest]:
        shares[k] += 1
    return shares


def attribute(
    delta: KernelReadings,
    *,
    network_of: Callable[[str], str | None],
    app_of_mark: Callable[[int], str | None],
    app_of_cgroup: Callable[[int], str | None],
    parent_of: Callable[[int], int | None],
    state: AttributionState,
    is_tunnel: Callable[[str], bool] = lambda ifname: False,
    tunnel_mark: int = 0,
) -> Usage:
    """One interval's usage per (network, app), bytes up and down.

    `delta` holds the *increase* of every counter since the last read (resets already
    handled by the trackers). Upload of GSO super-packets is corrected from the link
    statistics: the headers that the hooks never saw are shared among the marks that sent
    super-packets in this interval.

    Tunnels count nothing twice: their own interfaces are booked per app like any link,
    and the underlay flows (marked `tunnel_mark` on the metered link) are booked only as
    the encapsulation they add, `vpn-overhead` = underlay bytes - tunnel bytes.
    """
    usage: Usage = {}
    claimed: dict[tuple[str, Direction], int] = defaultdict(int)
    underlay: dict[tuple[str, Direction], int] = defaultdict(int)
    for (ifname, direction, mark), n in delta.marked.items():
        network = network_of(ifname)
        if network is not None and tunnel_mark and mark == tunnel_mark:
            underlay[(network, direction)] += n
            claimed[(ifname, direction)] += n
            continue
        app = app_of_mark(mark)
        if network is None or app is None:
            continue  # an unknown mark is not ours: its bytes stay unattributed
        _add(usage, network, app, direction, n)
        claimed[(ifname, direction)] += n
    for (ifname, direction, cgid), n in exclusive_socket_bytes(delta.socket, parent_of).items():
        network = network_of(ifname)
        app = app_of_cgroup(cgid)
        if network is None or app is None or n <= 0:
            continue  # a negative share is read skew: the remainder books it
        _add(usage, network, app, direction, n)
        claimed[(ifname, direction)] += n

    for (ifname, direction), n in delta.link.items():
        network = network_of(ifname)
        if network is None:
            continue
        key = (ifname, direction)
        remainder = state.unattributed.setdefault(key, Remainder())
        _add(usage, network, UNATTRIBUTED, direction, remainder.add(n, claimed.pop(key, 0)))
    for (ifname, direction), n in delta.forwarded.items():
        network = network_of(ifname)
        if network is not None:
            _add(usage, network, FORWARDED, direction, n)

    inner: dict[tuple[str, Direction], int] = defaultdict(int)
    for (ifname, direction), n in delta.link.items():
        network = network_of(ifname)
        if network is not None and is_tunnel(ifname):
            inner[(network, direction)] += n
    for key in set(underlay) | set(inner):
        remainder = state.overhead.setdefault(key, Remainder())
        _add(usage, key[0], TUNNEL_OVERHEAD, key[1],
             remainder.add(underlay.get(key, 0), inner.get(key, 0)))

    _correct_super_packets(delta, usage, network_of, app_of_mark, state)
    return usage


def _correct_super_packets(
    delta: KernelReadings,
    usage: Usage,
    network_of: Callable[[str], str | None],
    app_of_mark: Callable[[int], str | None],
    state: AttributionState,
) -> None:
    """Book the headers of GSO segments (UDP GSO, QUIC) that only the link statistics see."""
    hooks: dict[str, int] = defaultdict(int)
    for (ifname, direction), n in (*delta.link.items(), *delta.forwarded.items()):
        if direction == "up":
            hooks[ifname] += n
    link_ip: dict[str, int] = defaultdict(int)
    for (ifname, _ifindex), n in delta.link_ip_up.items():
        link_ip[ifname] += n
    for ifname, wire in link_ip.items():
        network = network_of(ifname)
        if network is None:
            continue
        remainder = state.headers.setdefault(ifname, Remainder())
        due = remainder.add(wire, hooks.get(ifname, 0))
        weights = {m: n for (i, m), n in delta.super_up.items() if i == ifname and n > 0}
        if not due or not weights:
            # A gap no super-packet explains is link chatter (ARP, neighbour discovery), not
            # anybody's upload: it is dropped rather than saved for the next GSO sender.
            continue
        for mark, share in _split(due, weights).items():
            app = app_of_mark(mark) if mark else None
            _add(usage, network, app or UNATTRIBUTED, "up", share)
