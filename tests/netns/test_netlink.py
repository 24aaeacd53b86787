"""Raw nf_tables netlink against the real kernel, each test in a network namespace of its own.

These tests are where the byte-order and padding rules of netlink_codec are verified:
- cgroupsv2 keys are u64 in host byte order and equal the inode number of the cgroup directory;
- meta mark / ct mark keys and map data are u32 in host byte order;
- iifname/oifname keys are 16 bytes, NUL-padded;
- each field of a concatenated key is padded to a multiple of 4 bytes;
- counter and quota values decode to what nft itself prints.

The netlink socket is opened in a thread that entered the test's namespace with setns(2); the
main thread's namespace is never changed. nft runs under `nsenter --net`, which (unlike
`ip netns exec`) keeps /sys, so nft can resolve cgroup paths.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from meterguard.kernel.netlink import NetlinkError, NftNetlink, SetElement
from meterguard.kernel.netlink_codec import (
    decode_cgroup_id,
    decode_ifname,
    decode_u32_host,
    encode_cgroup_id,
    encode_delsetelem_batch,
    encode_ifname,
    encode_u32_host,
    join_concat,
    split_concat,
)

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.skipif(
        os.geteuid() != 0, reason="needs root: network namespaces, nftables tables and cgroups"
    ),
    pytest.mark.skipif(
        any(shutil.which(tool) is None for tool in ("ip", "nsenter", "nft")),
        reason="needs the ip, nsenter and nft commands",
    ),
]

T = TypeVar("T")
CLONE_NEWNET = 0x40000000  # linux/sched.h; os.CLONE_NEWNET only exists from Python 3.12
DEADLINE = 30.0  # seconds allowed for things that finish asynchronously (cgroup removal)
UDP_IPV4_OVERHEAD = 28  # nft counters count IP-layer bytes: 20-byte IPv4 header + 8-byte UDP
CGROUP_FS = Path("/sys/fs/cgroup")  # nft 1.0.6 resolves cgroupsv2 element paths against this


def _setns_net(fd: int) -> None:
    setns = getattr(os, "setns", None)
    if setns is not None:
        setns(fd, CLONE_NEWNET)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _run(cmd: Sequence[str], stdin: str | None = None) -> str:
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr}")
    return proc.stdout


def _wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


@dataclass
class Netns:
    name: str
    table: str  # unique too, so no test can collide with a table in the host namespace

    @property
    def path(self) -> str:
        return f"/var/run/netns/{self.name}"

    def _nft(self, *args: str) -> list[str]:
        return ["nsenter", f"--net={self.path}", "nft", *args]

    def nft(self, text: str) -> None:
        _run(self._nft("-f", "-"), text)

    def nft_fails(self, text: str) -> bool:
        proc = subprocess.run(
            self._nft("-f", "-"), input=text, capture_output=True, text=True, timeout=120
        )
        return proc.returncode != 0

    def nft_elements(self, set_name: str) -> list[dict[str, Any]]:
        out = _run(self._nft("-j", "list", "set", "inet", self.table, set_name))
        for item in json.loads(out)["nftables"]:
            if "set" in item:
                return [
                    e["elem"] if isinstance(e, dict) and "elem" in e else {"val": e}
                    for e in item["set"].get("elem", [])
                ]
        raise AssertionError(f"no set in {out}")

    def run(self, fn: Callable[[], T]) -> T:
        """Run fn in a new thread that has entered this namespace, and return its result."""
        result: list[T] = []
        failure: list[BaseException] = []

        def target() -> None:
            try:
                with open(self.path, "rb") as ns:
                    _setns_net(ns.fileno())  # affects this thread only
                result.append(fn())
            except BaseException as exc:
                failure.append(exc)

        worker = threading.Thread(target=target, name=f"netns-{self.name}")
        worker.start()
        worker.join(timeout=300)
        if worker.is_alive():
            raise AssertionError("the worker thread in the namespace did not finish")
        if failure:
            raise failure[0]
        return result[0]

    def dump(self, set_name: str) -> list[SetElement]:
        def work() -> list[SetElement]:
            with NftNetlink() as nl:
                return nl.dump_set("inet", self.table, set_name)

        return self.run(work)

    def delete(self, set_name: str, keys: Sequence[bytes]) -> None:
        def work() -> None:
            with NftNetlink() as nl:
                nl.delete_elements("inet", self.table, set_name, keys)

        self.run(work)


@pytest.fixture
def netns() -> Iterator[Netns]:
    tag = uuid.uuid4().hex[:8]
    ns = Netns(f"mgnl-{tag}", f"mgt_{tag}")
    _run(["ip", "netns", "add", ns.name])
    try:
        _run(["ip", "-n", ns.name, "link", "set", "lo", "up"])
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns.name], check=False, timeout=60)


def _cgroup2_mount() -> Path | None:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            if right.split()[0] == "cgroup2" and fields[3] == "/":
                return Path(fields[4])
    return None


@dataclass
class Cgroups:
    mount: Path
    root: Path  # this test's own cgroup; everything the test creates is below it

    def make(self, name: str) -> Path:
        path = self.root / name
        path.mkdir()
        return path

    def nft_path(self, path: Path) -> str:
        return str(path.relative_to(CGROUP_FS))  # "unified/..." on a hybrid layout

    def level(self, path: Path) -> int:
        return len(path.relative_to(self.mount).parts)


def _rmdir_when_empty(path: Path) -> bool:
    try:
        path.rmdir()
    except FileNotFoundError:
        return True
    except OSError as exc:
        if exc.errno == errno.EBUSY:  # a process that just exited may still be leaving it
            return False
        raise
    return True


def _remove_cgroup_tree(root: Path) -> None:
    if not root.exists():
        return
    for dirpath, _dirs, _files in os.walk(root, topdown=False):
        path = Path(dirpath)
        _wait_for(functools.partial(_rmdir_when_empty, path), f"removal of cgroup {path}")


@pytest.fixture
def cgroups() -> Iterator[Cgroups]:
    mount = _cgroup2_mount()
    if mount is None:
        pytest.skip("no cgroup v2 hierarchy is mounted")
    if not mount.is_relative_to(CGROUP_FS):
        pytest.skip(f"cgroup2 is mounted at {mount}, outside {CGROUP_FS} where nft looks")
    root = mount / f"mgnl-{uuid.uuid4().hex[:8]}"
    root.mkdir()
    try:
        yield Cgroups(mount, root)
    finally:
        _remove_cgroup_tree(root)


def _udp_to_loopback(sends: Sequence[tuple[int, int]]) -> None:
    """Send one datagram per (mark, payload size) to a bound socket on 127.0.0.1.

    A bound receiver avoids ICMP port-unreachable replies, which would be counted too.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        for mark, size in sends:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
                tx.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
                tx.sendto(bytes(size), rx.getsockname())


def _udp_from_cgroup(ns: Netns, cgroup: Path, count: int, size: int) -> None:
    """Send datagrams from a process inside `cgroup`: it joins the cgroup first, then the
    namespace, because `ip netns exec` would remount /sys and hide cgroupfs."""
    code = (
        "import socket\n"
        "rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "rx.bind(('127.0.0.1', 0))\n"
        "tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"for _ in range({count}):\n"
        f"    tx.sendto(bytes({size}), rx.getsockname())\n"
    )
    script = 'echo $$ > "$1/cgroup.procs" && exec nsenter --net="$2" "$3" -c "$4"'
    _run(["sh", "-c", script, "sh", str(cgroup), ns.path, sys.executable, code])


def _counters(elements: Sequence[SetElement]) -> dict[bytes, tuple[int | None, int | None]]:
    return {e.key: (e.packets, e.bytes) for e in elements}


def _json_counters(
    elems: Sequence[dict[str, Any]], key_of: Callable[[Any], bytes]
) -> dict[bytes, tuple[int | None, int | None]]:
    out: dict[bytes, tuple[int | None, int | None]] = {}
    for e in elems:
        counter = e.get("counter")
        out[key_of(e["val"])] = (counter["packets"], counter["bytes"]) if counter else (None, None)
    return out


_QUOTA_UNITS = {"bytes": 1, "kbytes": 1024, "mbytes": 1024**2, "gbytes": 1024**3}


# ---- tests ------------------------------------------------------------------------------------


def test_counters_and_keys_match_nft(netns: Netns) -> None:
    netns.nft(f"""
table inet {netns.table} {{
  set by_if_mark {{ typeof oifname . ct mark; flags dynamic; counter; }}
  set by_proto_mark {{ typeof meta l4proto . ct mark; flags dynamic; counter; }}
  set by_mark {{ typeof meta mark; flags dynamic; counter; }}
  set by_if {{ typeof oifname; flags dynamic; counter; }}
  chain out {{ type filter hook output priority 0; policy accept;
    oifname "lo" ct mark set meta mark
    oifname "lo" update @by_if_mark {{ oifname . ct mark }}
    oifname "lo" update @by_proto_mark {{ meta l4proto . ct mark }}
    oifname "lo" update @by_mark {{ meta mark }}
    oifname "lo" update @by_if {{ oifname }}
  }}
}}
""")
    plan = {0x01020304: (3, 100), 0x2A: (5, 10), 0: (1, 1)}  # mark -> (datagrams, payload)
    netns.run(lambda: _udp_to_loopback([(m, s) for m, (n, s) in plan.items() for _ in range(n)]))
    expected = {m: (n, n * (UDP_IPV4_OVERHEAD + s)) for m, (n, s) in plan.items()}

    def dump_all() -> dict[str, list[SetElement]]:
        with NftNetlink() as nl:
            names = ("by_if_mark", "by_proto_mark", "by_mark", "by_if")
            return {name: nl.dump_set("inet", netns.table, name) for name in names}

    got = netns.run(dump_all)

    # meta mark: a 4-byte key in host byte order (0x01020304 is 04 03 02 01 on x86).
    assert {e.key for e in got["by_mark"]} == {m.to_bytes(4, sys.byteorder) for m in plan}
    assert {decode_u32_host(e.key): (e.packets, e.bytes) for e in got["by_mark"]} == expected
    assert _counters(got["by_mark"]) == _json_counters(
        netns.nft_elements("by_mark"), encode_u32_host
    )

    # oifname . ct mark: 16-byte NUL-padded name, then the ct mark in host byte order.
    decoded = {}
    for e in got["by_if_mark"]:
        name, mark = split_concat(e.key, [16, 4])
        assert name == b"lo" + bytes(14)
        assert decode_ifname(name) == "lo"
        decoded[decode_u32_host(mark)] = (e.packets, e.bytes)
    assert decoded == expected
    assert _counters(got["by_if_mark"]) == _json_counters(
        netns.nft_elements("by_if_mark"),
        lambda v: join_concat([encode_ifname(v["concat"][0]), encode_u32_host(v["concat"][1])]),
    )

    # meta l4proto . ct mark: the 1-byte protocol is padded to 4 bytes before the mark.
    for e in got["by_proto_mark"]:
        assert len(e.key) == 8
        assert e.key[:4] == bytes([socket.IPPROTO_UDP, 0, 0, 0])
        assert split_concat(e.key, [1, 4])[0] == bytes([socket.IPPROTO_UDP])
    protocols = {"udp": socket.IPPROTO_UDP}
    assert _counters(got["by_proto_mark"]) == _json_counters(
        netns.nft_elements("by_proto_mark"),
        lambda v: join_concat(
            [bytes([protocols[v["concat"][0]]]), encode_u32_host(v["concat"][1])]
        ),
    )

    # oifname alone: exactly IFNAMSIZ bytes.
    total = (sum(n for n, _ in expected.values()), sum(b for _, b in expected.values()))
    assert _counters(got["by_if"]) == {encode_ifname("lo"): total}
    assert _counters(got["by_if"]) == _json_counters(netns.nft_elements("by_if"), encode_ifname)
    for elements in got.values():
        assert all(e.data is None and e.quota_used is None for e in elements)


def test_quota_single_and_listed_with_counter(netns: Netns) -> None:
    netns.nft(f"""
table inet {netns.table} {{
  set q {{ typeof meta mark; flags dynamic; quota 1 mbytes; }}
  set cq {{ typeof meta mark; flags dynamic; counter; quota over 2 mbytes; }}
  chain out {{ type filter hook output priority 0; policy accept;
    oifname "lo" update @q {{ meta mark }}
    oifname "lo" update @cq {{ meta mark }}
  }}
}}
""")
    netns.run(lambda: _udp_to_loopback([(7, 1000)] * 4 + [(9, 50)]))
    expected = {7: 4 * (UDP_IPV4_OVERHEAD + 1000), 9: UDP_IPV4_OVERHEAD + 50}

    # One expression per element: the kernel reports it in NFTA_SET_ELEM_EXPR.
    q = netns.dump("q")
    assert {decode_u32_host(e.key): e.quota_used for e in q} == expected
    assert {e.quota_limit for e in q} == {1024 * 1024}  # nft's "mbytes" are MiB
    assert all(e.packets is None for e in q)
    from_nft = {
        e["val"]: e["quota"]["used"] * _QUOTA_UNITS[e["quota"].get("used_unit", "bytes")]
        for e in netns.nft_elements("q")
    }
    assert from_nft == expected

    # Two expressions: NFTA_SET_ELEM_EXPRESSIONS. (nft 1.0.6 -j drops the quota here.)
    cq = netns.dump("cq")
    assert {decode_u32_host(e.key): (e.bytes, e.quota_used) for e in cq} == {
        m: (b, b) for m, b in expected.items()
    }
    assert {e.quota_limit for e in cq} == {2 * 1024 * 1024}
    assert _counters(cq) == _json_counters(netns.nft_elements("cq"), encode_u32_host)


def test_cgroup_keys_are_inode_numbers_in_host_order(netns: Netns, cgroups: Cgroups) -> None:
    busy, idle = cgroups.make("busy"), cgroups.make("idle")
    level = cgroups.level(busy)
    netns.nft(f"""
table inet {netns.table} {{
  set apps {{ type cgroupsv2; flags dynamic; counter; }}
  chain out {{ type filter hook output priority 0; policy accept;
    oifname "lo" update @apps {{ socket cgroupv2 level {level} }}
  }}
}}
add element inet {netns.table} apps {{ "{cgroups.nft_path(busy)}", "{cgroups.nft_path(idle)}" }}
""")
    _udp_from_cgroup(netns, busy, count=6, size=200)

    elements = netns.dump("apps")
    by_id = {decode_cgroup_id(e.key): e for e in elements}
    busy_id, idle_id = busy.stat().st_ino, idle.stat().st_ino
    assert set(by_id) == {busy_id, idle_id}
    assert by_id[busy_id].key == busy_id.to_bytes(8, sys.byteorder)
    assert (by_id[busy_id].packets, by_id[busy_id].bytes) == (6, 6 * (UDP_IPV4_OVERHEAD + 200))
    assert (by_id[idle_id].packets, by_id[idle_id].bytes) == (0, 0)


def test_cgroup_to_mark_map_data(netns: Netns, cgroups: Cgroups) -> None:
    a, b = cgroups.make("a"), cgroups.make("b")
    netns.nft(f"""
table inet {netns.table} {{
  map ids {{ type cgroupsv2 : mark; }}
}}
add element inet {netns.table} ids {{ "{cgroups.nft_path(a)}" : 0x01020304, \
"{cgroups.nft_path(b)}" : 0x2a }}
""")
    got = {decode_cgroup_id(e.key): e for e in netns.dump("ids")}
    assert set(got) == {a.stat().st_ino, b.stat().st_ino}
    mark_a = got[a.stat().st_ino]
    assert mark_a.data == (0x01020304).to_bytes(4, sys.byteorder)  # map data: host order too
    assert mark_a.data is not None and decode_u32_host(mark_a.data) == 0x01020304
    mark_b = got[b.stat().st_ino].data
    assert mark_b is not None and decode_u32_host(mark_b) == 0x2A
    assert all(e.packets is None and e.quota_limit is None for e in got.values())


def test_delete_elements_including_a_removed_cgroup(netns: Netns, cgroups: Cgroups) -> None:
    a, b, gone = cgroups.make("a"), cgroups.make("b"), cgroups.make("gone")
    paths = ", ".join(f'"{cgroups.nft_path(p)}"' for p in (a, b, gone))
    netns.nft(f"""
table inet {netns.table} {{
  set apps {{ type cgroupsv2; counter; }}
}}
add element inet {netns.table} apps {{ {paths} }}
""")
    gone_id = gone.stat().st_ino
    gone.rmdir()
    # nft takes cgroup elements only as existing paths, so it cannot name this one any more.
    assert netns.nft_fails(
        f'delete element inet {netns.table} apps {{ "{cgroups.nft_path(gone)}" }}\n'
    )
    assert {decode_cgroup_id(e.key) for e in netns.dump("apps")} == {
        a.stat().st_ino,
        b.stat().st_ino,
        gone_id,
    }

    netns.delete("apps", [encode_cgroup_id(a.stat().st_ino), encode_cgroup_id(gone_id)])

    assert [decode_cgroup_id(e.key) for e in netns.dump("apps")] == [b.stat().st_ino]


def test_deleting_a_missing_element_fails_and_changes_nothing(netns: Netns) -> None:
    netns.nft(f"""
table inet {netns.table} {{
  set hosts {{ type ipv4_addr; counter;
    elements = {{ 10.0.0.1 counter packets 1 bytes 100, 10.0.0.2, 10.0.0.3 }} }}
}}
""")
    before = netns.dump("hosts")
    present, missing = socket.inet_aton("10.0.0.1"), socket.inet_aton("10.0.0.99")

    def work() -> tuple[NetlinkError, list[SetElement], list[SetElement]]:
        with NftNetlink() as nl:
            with pytest.raises(NetlinkError) as info:
                nl.delete_elements("inet", netns.table, "hosts", [present, missing])
            unchanged = nl.dump_set("inet", netns.table, "hosts")
            # The same socket stays usable after a failed batch.
            nl.delete_elements("inet", netns.table, "hosts", [present])
            return info.value, unchanged, nl.dump_set("inet", netns.table, "hosts")

    error, unchanged, after = netns.run(work)
    assert error.errno == errno.ENOENT
    assert isinstance(error, OSError)
    assert "hosts" in error.operation
    assert sorted(unchanged, key=lambda e: e.key) == sorted(before, key=lambda e: e.key)
    assert sorted(e.key for e in after) == [socket.inet_aton(f"10.0.0.{i}") for i in (2, 3)]


def test_large_set_dump_and_multi_message_delete(netns: Netns) -> None:
    count = 5000
    addrs = [f"10.{i // 65536}.{i // 256 % 256}.{i % 256}" for i in range(1, count + 1)]
    # Distinct counters per element, with bytes above 2**32 to exercise the 64-bit decoding.
    elements = ", ".join(f"{a} counter packets {i} bytes {2**33 + i}" for i, a in enumerate(addrs))
    netns.nft(f"""
table inet {netns.table} {{
  set big {{ type ipv4_addr; counter; size 65535; elements = {{ {elements} }} }}
}}
""")

    def dump() -> tuple[list[SetElement], int]:
        with NftNetlink() as nl:
            return nl.dump_set("inet", netns.table, "big"), nl.last_dump_recvs

    got, recvs = netns.run(dump)
    assert recvs >= 2  # the dump did not fit in one datagram
    assert len(got) == count
    assert _counters(got) == {socket.inet_aton(a): (i, 2**33 + i) for i, a in enumerate(addrs)}
    assert _counters(got) == _json_counters(netns.nft_elements("big"), socket.inet_aton)

    doomed = [socket.inet_aton(a) for a in addrs[:4500]]
    # More keys than one message's element list can hold: the batch carries several messages.
    assert len(encode_delsetelem_batch(1, netns.table, "big", doomed, 1).ack_seqs) >= 2
    netns.delete("big", doomed)
    assert sorted(e.key for e in netns.dump("big")) == sorted(
        socket.inet_aton(a) for a in addrs[4500:]
    )


def test_socket_stays_in_the_namespace_it_was_created_in(netns: Netns) -> None:
    netns.nft(f"""
table inet {netns.table} {{
  set s {{ type ipv4_addr; elements = {{ 192.0.2.1 }} }}
}}
""")
    inside = netns.run(NftNetlink)  # created by a thread inside the namespace
    try:
        # Used from the main thread, which is still in the host namespace.
        assert [e.key for e in inside.dump_set("inet", netns.table, "s")] == [
            socket.inet_aton("192.0.2.1")
        ]
    finally:
        inside.close()
    with NftNetlink() as host, pytest.raises(NetlinkError) as info:
        host.dump_set("inet", netns.table, "s")  # the table exists only in the test namespace
    assert info.value.errno == errno.ENOENT


def test_missing_set_or_bad_family(netns: Netns) -> None:
    netns.nft(f"table inet {netns.table} {{ set s {{ type ipv4_addr; }}; }}\n")
    with pytest.raises(NetlinkError) as info:
        netns.dump("nosuchset")
    assert info.value.errno == errno.ENOENT
    assert netns.dump("s") == []

    def wrong_family() -> None:
        with NftNetlink() as nl:
            nl.dump_set("ip", netns.table, "s")  # the table is inet, not ip

    with pytest.raises(NetlinkError) as info:
        netns.run(wrong_family)
    assert info.value.errno == errno.ENOENT
    with NftNetlink() as nl, pytest.raises(ValueError):
        nl.dump_set("ipv4", netns.table, "s")
