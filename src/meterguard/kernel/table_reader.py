"""Reads every counter of `inet meterguard` over netlink, totals first and parts after.

A packet reaches the interface's own statistics last, and the interface counter in the hook
before the per-app and per-cgroup counters. Reading in that same order (link statistics,
interface totals, then apps and cgroups) means
each part was read after its total, so `total - parts` can only come out *low*: the
attribution books remainders from that lower bound and never over-books (see
meter/attribution.py).
"""

from __future__ import annotations

import errno
from collections.abc import Callable

from meterguard.kernel.links import LinkControl, link_header_bytes
from meterguard.kernel.netlink import NetlinkError, NftNetlink
from meterguard.kernel.netlink_codec import (
    SetElement,
    decode_cgroup_id,
    decode_ifname,
    decode_u32_host,
    encode_cgroup_id,
    split_concat,
)
from meterguard.kernel.ruleset import TABLE_FAMILY, TABLE_NAME, socket_set
from meterguard.meter.readings import Direction, KernelReadings, TableMissing

_IFNAMSIZ = 16
_DIRS: tuple[tuple[str, Direction], ...] = (("out", "up"), ("in", "down"))


class NetlinkCounterSource:
    """The real CounterSource: raw NFT_MSG_GETSETELEM dumps, about 5 ms per 500 elements.

    nft itself would walk and stat all of cgroupfs for every cgroup value it prints, which
    takes seconds per read, so nothing here goes through nft.
    """

    def __init__(
        self,
        links: LinkControl,
        metered: Callable[[str], bool],
        netlink: NftNetlink | None = None,
    ) -> None:
        self._nl = netlink or NftNetlink()
        self._links = links
        self._metered = metered
        self._link_types: dict[str, str] = {}

    def _dump(self, name: str) -> list[SetElement]:
        try:
            return self._nl.dump_set(TABLE_FAMILY, TABLE_NAME, name)
        except NetlinkError as exc:
            if exc.errno == errno.ENOENT:
                raise TableMissing(f"set {name} is missing") from exc
            raise

    def read(self) -> KernelReadings:
        r = KernelReadings()
        indexes = self._links.index()
        for ifname, stats in self._links.stats().items():
            if not self._metered(ifname) or ifname not in indexes:
                continue
            if ifname not in self._link_types:
                self._link_types[ifname] = self._links.link_type(ifname)
            header = link_header_bytes(self._link_types[ifname])
            r.link_ip_up[(ifname, indexes[ifname])] = stats.tx_bytes - header * stats.tx_packets
        for suffix, direction in _DIRS:
            for el in self._dump(f"link_{suffix}"):
                r.link[(decode_ifname(el.key), direction)] = el.bytes or 0
            for el in self._dump(f"fwd_{suffix}"):
                r.forwarded[(decode_ifname(el.key), direction)] = el.bytes or 0
        for suffix, direction in _DIRS:
            for el in self._dump(f"app_{suffix}"):
                ifname_b, mark_b = split_concat(el.key, (_IFNAMSIZ, 4))
                mkey = (decode_ifname(ifname_b), direction, decode_u32_host(mark_b))
                r.marked[mkey] = el.bytes or 0
        for el in self._dump("super_out"):
            ifname_b, mark_b = split_concat(el.key, (_IFNAMSIZ, 4))
            r.super_up[(decode_ifname(ifname_b), decode_u32_host(mark_b))] = el.bytes or 0
        for suffix, direction in _DIRS:
            for el in self._dump(socket_set(suffix)):
                ifname_b, cg_b = split_concat(el.key, (_IFNAMSIZ, 8))
                r.socket[(decode_ifname(ifname_b), direction, decode_cgroup_id(cg_b))] = (
                    el.bytes or 0
                )
        return r

    def cgroup_marks(self) -> dict[int, int]:
        """cgroup id -> mark, as the kernel map holds it."""
        return {
            decode_cgroup_id(el.key): decode_u32_host(el.data)
            for el in self._dump("cgroup_marks")
            if el.data is not None
        }

    def forget_cgroups(self, cgroup_ids: list[int]) -> None:
        """Delete map elements of removed cgroups, which nft cannot name any more."""
        present = self.cgroup_marks()
        keys = [encode_cgroup_id(c) for c in cgroup_ids if c in present]
        if keys:
            self._nl.delete_elements(TABLE_FAMILY, TABLE_NAME, "cgroup_marks", keys)

    def close(self) -> None:
        self._nl.close()
