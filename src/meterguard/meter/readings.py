"""One read of the kernel's counters, as plain data, and the protocol that produces it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

Direction = Literal["up", "down"]

# Keys, spelled out so that a snapshot can be persisted as JSON and read back.
LinkKey = tuple[str, Direction]  # (ifname, direction): locally sent or received IP bytes
MarkKey = tuple[str, Direction, int]  # (ifname, direction, conntrack mark)
SocketKey = tuple[str, Direction, int]  # (ifname, direction, cgroup id)


@dataclass(slots=True)
class KernelReadings:
    """Cumulative byte counters as the kernel holds them at one moment.

    `link` and `forwarded` are what crossed the metered interfaces (IP bytes, in the hooks);
    `marked` are flows whose conntrack entry carries an app's mark; `socket` counts packets
    of unmarked flows per cgroup, every ancestor of the socket's cgroup included;
    `super_up` counts GSO super-packets per mark, whose missing headers the link
    statistics reveal; `link_ip` is
    the interface's own IP-byte counter (link statistics less link-layer headers), keyed
    with the ifindex so that a recreated interface is seen as a reset.
    """

    link: dict[LinkKey, int] = field(default_factory=dict)
    forwarded: dict[LinkKey, int] = field(default_factory=dict)
    marked: dict[MarkKey, int] = field(default_factory=dict)
    socket: dict[SocketKey, int] = field(default_factory=dict)
    super_up: dict[tuple[str, int], int] = field(default_factory=dict)
    link_ip_up: dict[tuple[str, int], int] = field(default_factory=dict)


class CounterSource(Protocol):
    """Reads every counter of meterguard's table (the real one dumps sets over netlink)."""

    def read(self) -> KernelReadings: ...


class TableMissing(RuntimeError):
    """meterguard's table is gone (a flush, a reboot): it must be reconciled."""


@dataclass
class FakeCounterSource:
    """A CounterSource whose counters tests set by hand."""

    readings: KernelReadings = field(default_factory=KernelReadings)
    missing: bool = False

    def read(self) -> KernelReadings:
        if self.missing:
            raise TableMissing("fake table removed")
        r = self.readings
        return KernelReadings(
            dict(r.link), dict(r.forwarded), dict(r.marked), dict(r.socket),
            dict(r.super_up), dict(r.link_ip_up),
        )
