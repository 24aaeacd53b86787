"""One read of the kernel, turned into ledger rows: the meter's poll.

Each poll walks cgroupfs (new cgroups get a mark and an identity), reads every counter,
takes deltas that survive resets, attributes them, and writes the rows together with the
counter snapshot in one ledger transaction. Because the snapshot and the rows can never
disagree, a restart after `kill -9` resumes from the kernel's counters and loses nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from meterguard.core.counters import CounterTracker
from meterguard.kernel.cgroupfs import CgroupTree
from meterguard.kernel.links import LinkControl, LinkTuner
from meterguard.kernel.nft import NftBackend
from meterguard.kernel.ruleset import (
    TUNNEL_MARK,
    Enforcement,
    RulesetSpec,
    render_add_marks,
    render_reconcile,
)
from meterguard.ledger.model import CgroupRow, UsageDelta
from meterguard.meter.attribution import AttributionState, Usage, attribute
from meterguard.meter.readings import CounterSource, KernelReadings, TableMissing
from meterguard.meter.registry import CgroupLedger, CgroupRegistry, KnownCgroup, SyncResult

log = logging.getLogger(__name__)

SNAPSHOT_KEY = "meter.counters"
# `meterguard exec` leaves its cgroup behind when the command ends (the command replaced the
# process that made it); the daemon removes such cgroups once they were empty at two checks
# this far apart, after it recorded them, so their counters keep their app.
EXEC_CGROUP_MARKER = "/app-meterguard-"
EXEC_GC_EVERY_POLLS = 30
WALK_EVERY_POLLS = 10
# Rules cover a few levels below the deepest cgroup seen, so that a new, deeper cgroup does
# not force a chain reload at once; a deeper one still does, atomically.
LEVEL_HEADROOM = 2

CounterKey = tuple[Any, ...]


class MeterLedger(CgroupLedger, Protocol):
    def record(
        self,
        at: int,
        deltas: Sequence[UsageDelta],
        *,
        state: Mapping[str, str] | None = None,
        app_kinds: Mapping[str, str] | None = None,
    ) -> None: ...

    def get_state(self, key: str) -> str | None: ...

    def cgroups(self) -> list[CgroupRow]: ...


class MarkMap(Protocol):
    """The kernel's cgroup -> mark map, read and pruned over netlink."""

    def cgroup_marks(self) -> dict[int, int]: ...

    def forget_cgroups(self, cgroup_ids: list[int]) -> None: ...


def flatten(readings: KernelReadings) -> dict[CounterKey, int]:
    """All counters under one key space, tagged by family, for one tracker and one snapshot."""
    flat: dict[CounterKey, int] = {}
    for tag, family in (
        ("link", readings.link), ("fwd", readings.forwarded), ("app", readings.marked),
        ("sock", readings.socket), ("super", readings.super_up), ("wire", readings.link_ip_up),
    ):
        for key, value in family.items():
            flat[(tag, *key)] = value
    return flat


def unflatten(flat: Mapping[CounterKey, int]) -> KernelReadings:
    r = KernelReadings()
    for key, value in flat.items():
        tag, rest = key[0], key[1:]
        if tag == "link":
            r.link[(rest[0], rest[1])] = value
        elif tag == "fwd":
            r.forwarded[(rest[0], rest[1])] = value
        elif tag == "app":
            r.marked[(rest[0], rest[1], rest[2])] = value
        elif tag == "sock":
            r.socket[(rest[0], rest[1], rest[2])] = value
        elif tag == "super":
            r.super_up[(rest[0], rest[1])] = value
        elif tag == "wire":
            r.link_ip_up[(rest[0], rest[1])] = value
    return r


def dump_snapshot(snapshot: Mapping[CounterKey, int]) -> str:
    return json.dumps([[*k, v] for k, v in snapshot.items()], separators=(",", ":"))


def load_snapshot(text: str | None) -> dict[CounterKey, int] | None:
    if not text:
        return None
    try:
        return {tuple(row[:-1]): int(row[-1]) for row in json.loads(text)}
    except (ValueError, TypeError, IndexError):
        log.warning("the stored counter snapshot is unreadable; starting a new baseline")
        return None


@dataclass
class PollResult:
    at: int
    usage: Usage
    rows: list[UsageDelta] = field(default_factory=list)


class Meter:
    def __init__(
        self,
        *,
        nft: NftBackend,
        source: CounterSource,
        marks: MarkMap,
        tree: CgroupTree,
        links: LinkControl,
        tuner: LinkTuner,
        ledger: MeterLedger,
        metered_globs: Sequence[str],
        network_of: Callable[[str], str | None],
        enforcement: Callable[[], Enforcement] = Enforcement,
        on_rebuild: Callable[[], None] = lambda: None,
        is_tunnel: Callable[[str], bool] = lambda ifname: False,
    ) -> None:
        self._nft = nft
        self._source = source
        self._marks = marks
        self._tree = tree
        self._links = links
        self._tuner = tuner
        self._ledger = ledger
        self._globs = tuple(metered_globs)
        self._network_of = network_of
        # Caps and blocks: asked for whenever the table is reconciled, so a rebuilt table
        # gets the limits and modes that hold now.
        self._enforcement = enforcement
        self._on_rebuild = on_rebuild
        self._is_tunnel = is_tunnel
        self._registry = CgroupRegistry(tree, ledger)
        self._state = AttributionState()
        self._tracker: CounterTracker[CounterKey] = CounterTracker(None)
        self._fresh = True
        self._levels = 1
        self._tuned: dict[str, int] = {}
        self._polls = 0
        self._empty_exec: set[str] = set()
        self._persisted: dict[CounterKey, int] | None = None
        # True once the daemon watches cgroupfs with inotify (see kernel/cgroup_watch.py).
        self.cgroups_watched = False

    @property
    def registry(self) -> CgroupRegistry:
        return self._registry

    @property
    def levels(self) -> int:
        return self._levels

    def start(self, at: int) -> None:
        """Reconcile the table, take the known cgroups and the last snapshot."""
        self._registry.load([
            KnownCgroup(r.mark, r.cgroup_id, r.path, r.app, r.kind, r.gone_at is not None)
            for r in self._ledger.cgroups()
        ])
        sync = self._registry.sync(at)
        self._levels = sync.max_level + LEVEL_HEADROOM
        try:
            self._marks.cgroup_marks()
            existed = True
        except TableMissing:
            existed = False
        self._reconcile()
        self._ensure_marks()
        # A table this start created counts from zero; one that survived (a restart, kill -9)
        # is compared with the snapshot written together with the last ledger rows.
        baseline = load_snapshot(self._ledger.get_state(SNAPSHOT_KEY)) if existed else {}
        self._tracker = CounterTracker(baseline)
        self._fresh = True

    def spec(self) -> RulesetSpec:
        return RulesetSpec(self._globs, self._levels, self._enforcement())

    def _reconcile(self) -> None:
        self._nft.run(render_reconcile(self.spec()))

    def reconcile(self) -> None:
        """Rewrite the rules now (the enforcement changed: a mode, a plan); sets are kept."""
        self._reconcile()

    def set_interfaces(self, globs: Sequence[str]) -> bool:
        """Meter these interfaces from now on (a SIM or hotspot came or went)."""
        new = tuple(globs) or ("meterguard-none",)
        if new == self._globs:
            return False
        self._globs = new
        self._reconcile()
        return True

    def _ensure_marks(self) -> None:
        """Make the kernel map hold exactly the live cgroups' marks (after start or a flush)."""
        present = self._marks.cgroup_marks()
        live = self._registry.live()
        missing = [(c.path, c.mark) for c in live if present.get(c.cgroup_id) != c.mark]
        self._add_marks(missing)
        live_ids = {c.cgroup_id for c in live}
        stale = [cgid for cgid in present if cgid not in live_ids]
        if stale:
            self._marks.forget_cgroups(stale)

    def _add_marks(self, elements: list[tuple[str, int]]) -> None:
        if not elements:
            return
        script = render_add_marks([(self._tree.nft_path(p), m) for p, m in elements])
        try:
            self._nft.run(script)
        except Exception as exc:
            log.debug("batch of %d marks refused (%s); adding one by one", len(elements), exc)
            for path, mark in elements:
                try:
                    self._nft.run(render_add_marks([(self._tree.nft_path(path), mark)]))
                except Exception:
                    continue

    def _forget(self, cgroup_ids: list[int]) -> None:
        try:
            self._marks.forget_cgroups(cgroup_ids)
        except TableMissing:
            raise
        except OSError as exc:
            log.debug("cannot prune marks of removed cgroups: %s", exc)

    def _tune_links(self) -> None:
        for ifname, index in self._links.index().items():
            if self._network_of(ifname) is not None and self._tuned.get(ifname) != index:
                try:
                    self._tuner.tune(ifname)
                except OSError as exc:
                    log.warning("cannot tune %s for exact counting: %s", ifname, exc)
                self._tuned[ifname] = index

    def _collect_exec_cgroups(self) -> None:
        empty: set[str] = set()
        for known in self._registry.live():
            path = "/" + known.path
            if EXEC_CGROUP_MARKER not in path:
                continue
            if known.path in self._empty_exec:
                self._tree.remove_if_empty(known.path)
            elif not self._tree.executables(known.path):
                empty.add(known.path)
        self._empty_exec = empty

    def sync_cgroups(self, at: int) -> SyncResult:
        """Name and mark new cgroups at once (called on inotify events and at each poll)."""
        sync = self._registry.sync(at)
        if sync.max_level + LEVEL_HEADROOM > self._levels:
            self._levels = sync.max_level + LEVEL_HEADROOM
            self._reconcile()
        self._add_marks(sync.added)
        if sync.gone:
            self._forget([c.cgroup_id for c in sync.gone])
        return sync

    def poll(self, at: int, background: Callable[[str], bool] | None = None) -> PollResult:
        """Read, attribute and record one interval; `background(app)` says whose bytes
        this interval count as background (a service, or an idle or locked session)."""
        self._tune_links()
        self._polls += 1
        if self._polls % EXEC_GC_EVERY_POLLS == 0:
            self._collect_exec_cgroups()
        try:
            # New cgroups are handled the moment inotify reports them (sync_cgroups); the
            # full walk here only catches removals and anything a watch missed.
            if not self.cgroups_watched or self._polls % WALK_EVERY_POLLS == 1:
                self.sync_cgroups(at)
            readings = self._source.read()
        except TableMissing:
            # Someone flushed the ruleset (or a reboot emptied it): rebuild, and count the
            # new, empty counters from zero rather than comparing them with the old ones.
            log.warning("the meterguard table was removed; restoring it")
            self._on_rebuild()
            self._reconcile()
            self._ensure_marks()
            self._tracker = CounterTracker({})
            self._fresh = True
            readings = self._source.read()
        flat = flatten(readings)
        deltas = self._tracker.observe(flat, fresh=self._fresh)
        self._fresh = False
        usage = attribute(
            unflatten(deltas),
            network_of=self._network_of,
            app_of_mark=self._registry.app_of_mark,
            app_of_cgroup=self._registry.app_of_cgroup,
            parent_of=self._registry.parent_of,
            state=self._state,
            is_tunnel=self._is_tunnel,
            tunnel_mark=TUNNEL_MARK,
        )
        rows = [
            UsageDelta(net, app, up, down, *((up, down) if background and background(app)
                                             else (0, 0)))
            for (net, app), (up, down) in usage.items()
        ]
        kinds = {r.app: k for r in rows if (k := self._registry.kind_of_app(r.app)) is not None}
        snapshot = self._tracker.snapshot()
        # An idle link changes no counter: nothing to write, and the snapshot on disk is
        # still the one that accounts for every row (a new key with 0 bytes changes nothing).
        if rows or self._persisted is None or any(
            self._persisted.get(k, 0) != v for k, v in snapshot.items()
        ):
            self._ledger.record(
                at, rows, state={SNAPSHOT_KEY: dump_snapshot(snapshot)}, app_kinds=kinds,
            )
            self._persisted = snapshot
        return PollResult(at, usage, rows)

    def stop(self) -> list[str]:
        """Put interface settings back; the table and its counters stay (they keep counting)."""
        return self._tuner.restore_all()
