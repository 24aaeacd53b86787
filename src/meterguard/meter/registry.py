"""Cgroups the meter has seen: their marks, their app identities, their parents.

A cgroup is named and given a conntrack mark the first time a walk finds it, and the
mapping is written to the ledger at once, because short-lived cgroups vanish and their
counters (keyed by mark) outlive them. Marks are never reused: live conntrack entries may
still carry an old one.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Protocol

from meterguard.core.identity import AppIdentity, identify_cgroup, identify_executable
from meterguard.kernel.cgroupfs import CgroupNode, CgroupTree
from meterguard.meter.attribution import CgroupInfo

log = logging.getLogger(__name__)

# Paths that cannot be written inside an nft string literal are left to socket matching.
_NFT_SAFE_PATH = re.compile(r'^[^"\n\\]*$')


class CgroupLedger(Protocol):
    """The part of the ledger the registry uses."""

    def allocate_mark(self) -> int: ...

    def record_cgroup(
        self, *, mark: int, cgroup_id: int, path: str, app: str, kind: str, at: int
    ) -> None: ...

    def mark_cgroup_gone(self, mark: int, at: int) -> None: ...


@dataclass(slots=True)
class KnownCgroup:
    mark: int
    cgroup_id: int
    path: str
    app: str
    kind: str
    gone: bool = False


@dataclass(frozen=True, slots=True)
class SyncResult:
    """What changed in one walk: marks for the kernel map, ids that left, the deepest level."""

    added: list[tuple[str, int]]  # (path relative to the v2 root, mark)
    gone: list[KnownCgroup]
    max_level: int


def name_cgroup(node: CgroupNode, tree: CgroupTree) -> AppIdentity:
    """An app identity for any cgroup: its unit, else its executable, else its own name."""
    identity = identify_cgroup(node.path)
    if identity is not None:
        return identity
    unit = node.path.rsplit("/", 1)[-1] if node.path else "root"
    exes = tree.executables(node.path)
    if exes:
        return identify_executable(exes[0], unit)
    if unit.startswith("session-"):
        return AppIdentity(name=unit, kind="session", unit=unit)
    return AppIdentity(name=unit, kind="executable", unit=unit)


class CgroupRegistry:
    def __init__(self, tree: CgroupTree, ledger: CgroupLedger) -> None:
        self._tree = tree
        self._ledger = ledger
        # Gone cgroups stay here: their sockets keep counting under their old id.
        self._by_id: dict[int, KnownCgroup] = {}
        self._live: set[int] = set()
        self._by_mark: dict[int, KnownCgroup] = {}
        self._id_by_path: dict[str, int] = {}
        self._kinds: dict[str, str] = {}

    def load(self, rows: list[KnownCgroup]) -> None:
        """Take the cgroups the ledger already knows (after a restart)."""
        for row in rows:
            self._by_mark[row.mark] = row
            self._kinds[row.app] = row.kind
            self._by_id[row.cgroup_id] = row
            if not row.gone:
                self._live.add(row.cgroup_id)
                self._id_by_path[row.path] = row.cgroup_id

    def sync(self, at: int) -> SyncResult:
        nodes = self._tree.walk()
        seen: set[int] = set()
        added: list[tuple[str, int]] = []
        max_level = 1
        for node in nodes:
            seen.add(node.cgroup_id)
            max_level = max(max_level, node.level)
            if node.level == 0 or node.cgroup_id in self._live:
                continue
            identity = name_cgroup(node, self._tree)
            mark = self._ledger.allocate_mark()
            known = KnownCgroup(mark, node.cgroup_id, node.path, identity.name, identity.kind)
            self._ledger.record_cgroup(
                mark=mark, cgroup_id=node.cgroup_id, path=node.path,
                app=identity.name, kind=identity.kind, at=at,
            )
            self._by_id[node.cgroup_id] = known
            self._live.add(node.cgroup_id)
            self._by_mark[mark] = known
            self._kinds[known.app] = known.kind
            self._id_by_path[node.path] = node.cgroup_id
            if _NFT_SAFE_PATH.match(node.path):
                added.append((node.path, mark))
            else:
                log.warning("cgroup %r cannot be named to nft; socket matching covers it",
                            node.path)
        gone: list[KnownCgroup] = []
        for cgid in [c for c in self._live if c not in seen]:
            self._live.discard(cgid)
            known = self._by_id[cgid]
            known.gone = True
            self._ledger.mark_cgroup_gone(known.mark, at)
            gone.append(known)
        return SyncResult(added, gone, max_level)

    def live(self) -> list[KnownCgroup]:
        return [self._by_id[c] for c in self._live]

    def app_of_mark(self, mark: int) -> str | None:
        known = self._by_mark.get(mark)
        return known.app if known else None

    def kind_of_app(self, app: str) -> str | None:
        return self._kinds.get(app)

    def mark_of_path(self, path: str) -> int | None:
        cgid = self._id_by_path.get(path)
        known = self._by_id.get(cgid) if cgid is not None else None
        return known.mark if known is not None and not known.gone else None

    def marks_of_apps(self, apps: frozenset[str]) -> set[int]:
        """Marks of every cgroup, live or gone, that belongs to one of `apps`."""
        return {mark for mark, known in self._by_mark.items() if known.app in apps}

    def app_of_cgroup(self, cgroup_id: int) -> str | None:
        known = self._by_id.get(cgroup_id)
        return known.app if known else None

    def parent_of(self, cgroup_id: int) -> int | None:
        known = self._by_id.get(cgroup_id)
        if known is None:
            return None
        # Level-1 cgroups have the root as parent, which has no socket set (level 0).
        parent_path = known.path.rpartition("/")[0]
        return self._id_by_path.get(parent_path) if parent_path else None

    def info(self, cgroup_id: int) -> CgroupInfo | None:
        known = self._by_id.get(cgroup_id)
        return CgroupInfo(known.path, known.app) if known else None
