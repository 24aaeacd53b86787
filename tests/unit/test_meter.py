"""The meter's poll over fakes of the kernel, cgroupfs and links, with a real ledger."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from meterguard.kernel.cgroupfs import FakeCgroupTree
from meterguard.kernel.links import FakeLinks, LinkStats, LinkTuner
from meterguard.kernel.nft import FakeNft
from meterguard.ledger.store import Ledger
from meterguard.meter.attribution import UNATTRIBUTED
from meterguard.meter.meter import EXEC_GC_EVERY_POLLS, Meter
from meterguard.meter.readings import FakeCounterSource, TableMissing

FIREFOX = "user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-firefox-1234.scope"
PK = "system.slice/packagekit.service"
T0 = 1_800_000_000


@dataclass
class FakeMarkMap:
    """The first look finds no table, as on a fresh machine; the reconcile creates it."""

    marks: dict[int, int] = field(default_factory=dict)
    absent: bool = True
    forgotten: list[int] = field(default_factory=list)

    def cgroup_marks(self) -> dict[int, int]:
        if self.absent:
            self.absent = False
            raise TableMissing("not created yet")
        return dict(self.marks)

    def forget_cgroups(self, cgroup_ids: list[int]) -> None:
        self.forgotten.extend(cgroup_ids)


@dataclass
class World:
    tmp: Path
    nft: FakeNft = field(default_factory=FakeNft)
    source: FakeCounterSource = field(default_factory=FakeCounterSource)
    marks: FakeMarkMap = field(default_factory=FakeMarkMap)
    tree: FakeCgroupTree = field(default_factory=FakeCgroupTree)
    links: FakeLinks = field(default_factory=FakeLinks)

    def meter(self, ledger: Ledger) -> Meter:
        return Meter(
            nft=self.nft, source=self.source, marks=self.marks, tree=self.tree,
            links=self.links, tuner=LinkTuner(self.links, self.tmp / "links.json"),
            ledger=ledger, metered_globs=["wwan*"],
            network_of=lambda i: "esim" if i.startswith("wwan") else None,
        )


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path)
    w.links.add("wwan0")
    w.links.add("eth0")
    w.tree.add(FIREFOX)
    w.tree.add(PK)
    return w


def totals(ledger: Ledger) -> dict[str, tuple[int, int]]:
    return {
        str(r.app): (r.bytes_up, r.bytes_down)
        for r in ledger.totals(T0 // 900 * 900, T0 // 900 * 900 + 86400, by="app")
    }


def mark_of(meter: Meter, path: str) -> int:
    return next(c.mark for c in meter.registry.live() if c.path == path)


def test_start_reconciles_tunes_links_and_maps_every_cgroup(world: World) -> None:
    with Ledger.open(world.tmp / "l.db") as ledger:
        meter = world.meter(ledger)
        meter.start(T0)
        meter.poll(T0)
        script = "\n".join(world.nft.batches)
        assert "table inet meterguard" in script
        assert 'oifname "wwan*" jump count_out' in script
        assert f'"unified/{FIREFOX}"' in script and f'"unified/{PK}"' in script
        assert world.links.current["wwan0"].gso_max_segs == 1
        assert world.links.current["wwan0"].gro is False
        assert world.links.current["eth0"].gso_max_segs == 65535  # not metered: untouched
        assert meter.stop() == ["wwan0"]
        assert world.links.current["wwan0"].gso_max_segs == 65535
        assert world.links.current["wwan0"].gro is True
        apps = {c.path: c.app for c in meter.registry.live()}
        assert apps[FIREFOX] == "firefox" and apps[PK] == "packagekit"


def test_poll_books_marked_bytes_and_the_remainder(world: World) -> None:
    with Ledger.open(world.tmp / "l.db") as ledger:
        meter = world.meter(ledger)
        meter.start(T0)
        ff, pk = mark_of(meter, FIREFOX), mark_of(meter, PK)
        r = world.source.readings
        r.link.update({("wwan0", "up"): 1_000, ("wwan0", "down"): 10_000})
        r.marked.update({("wwan0", "up", ff): 600, ("wwan0", "down", ff): 9_000,
                         ("wwan0", "up", pk): 300})
        meter.poll(T0)
        r.link[("wwan0", "down")] = 30_000
        r.marked[("wwan0", "down", ff)] = 25_000
        meter.poll(T0 + 1)
        assert totals(ledger) == {
            "firefox": (600, 25_000), "packagekit": (300, 0), UNATTRIBUTED: (100, 5_000),
        }


def test_restart_after_kill_resumes_from_the_kernel_counters(world: World) -> None:
    path = world.tmp / "l.db"
    ledger = Ledger.open(path)
    meter = world.meter(ledger)
    meter.start(T0)
    ff = mark_of(meter, FIREFOX)
    r = world.source.readings
    r.link[("wwan0", "down")] = 5_000
    r.marked[("wwan0", "down", ff)] = 5_000
    meter.poll(T0)
    ledger.close()  # the process dies here; the kernel keeps counting
    r.link[("wwan0", "down")] = 12_000
    r.marked[("wwan0", "down", ff)] = 12_000
    with Ledger.open(path) as again:
        world.marks.absent = False  # the table survived the crash
        restarted = world.meter(again)
        restarted.start(T0 + 5)
        assert mark_of(restarted, FIREFOX) == ff  # marks are never reassigned
        restarted.poll(T0 + 5)
        assert totals(again) == {"firefox": (0, 12_000)}


def test_a_removed_table_is_rebuilt_and_counts_from_zero(world: World) -> None:
    with Ledger.open(world.tmp / "l.db") as ledger:
        meter = world.meter(ledger)
        meter.start(T0)
        r = world.source.readings
        r.link[("wwan0", "up")] = 9_000
        meter.poll(T0)
        world.source.missing = True
        batches = len(world.nft.batches)

        def recreate() -> None:
            world.source.missing = False
            world.source.readings = type(r)(link={("wwan0", "up"): 500})

        original = world.source.read

        def read():  # type: ignore[no-untyped-def]
            if world.source.missing:
                recreate()
                raise TableMissing("flushed")
            return original()

        world.source.read = read  # type: ignore[method-assign]
        meter.poll(T0 + 1)
        assert len(world.nft.batches) > batches  # reconciled
        # No phantom spike: 9,000 before the flush, 500 after it.
        assert totals(ledger) == {UNATTRIBUTED: (9_500, 0)}


def test_new_and_gone_cgroups(world: World) -> None:
    with Ledger.open(world.tmp / "l.db") as ledger:
        meter = world.meter(ledger)
        meter.start(T0)
        burst = "user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-burst-9.scope"
        node = world.tree.add(burst)
        meter.poll(T0 + 1)
        assert f'"unified/{burst}"' in world.nft.batches[-1]
        world.tree.remove(burst)
        meter.poll(T0 + 2)
        assert node.cgroup_id in world.marks.forgotten
        rows = {c.path: c for c in ledger.cgroups()}
        assert rows[burst].gone_at == T0 + 2
        assert rows[burst].app == "burst"


def test_super_packet_headers_come_from_the_link_statistics(world: World) -> None:
    with Ledger.open(world.tmp / "l.db") as ledger:
        meter = world.meter(ledger)
        meter.start(T0)
        ff = mark_of(meter, FIREFOX)
        r = world.source.readings
        meter.poll(T0)
        r.link[("wwan0", "up")] = 64_000
        r.marked[("wwan0", "up", ff)] = 64_000
        r.super_up[("wwan0", ff)] = 64_000
        r.link_ip_up[("wwan0", 1)] = 64_000 + 44 * 28
        world.links.counters["wwan0"] = LinkStats(0, 0, 0, 0)
        meter.poll(T0 + 1)
        assert totals(ledger)["firefox"] == (64_000 + 44 * 28, 0)


def test_empty_exec_cgroups_are_removed_after_two_checks(world: World) -> None:
    exec_cg = "meterguard.slice/app-meterguard-backup-77.scope"
    world.tree.add(exec_cg, exes=["/usr/bin/rsync"])
    with Ledger.open(world.tmp / "l.db") as ledger:
        meter = world.meter(ledger)
        meter.start(T0)
        polls = 0

        def run(n: int) -> None:
            nonlocal polls
            for _ in range(n):
                polls += 1
                meter.poll(T0 + polls)

        run(EXEC_GC_EVERY_POLLS * 2)
        assert exec_cg in world.tree.nodes  # busy: kept
        world.tree.exes[exec_cg] = []
        run(EXEC_GC_EVERY_POLLS)
        assert exec_cg in world.tree.nodes  # empty once: kept (it may be just made)
        run(EXEC_GC_EVERY_POLLS)
        assert exec_cg not in world.tree.nodes
        assert {c.path: c.app for c in ledger.cgroups()}[exec_cg] == "backup"
