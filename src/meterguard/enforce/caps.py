"""The kernel side of a plan's cap: its quota's limit, its allow-list, ending live flows.

A plan's quota counts every byte of the plan's links (both directions) and refuses traffic
once it passes its limit. The daemon keeps `limit = consumed + remaining allowance`, so the
kernel stops traffic at exactly the cap whether or not the daemon is alive to see it.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Protocol

from meterguard.kernel.nft import NftBackend, NftError, run_json
from meterguard.kernel.ruleset import (
    TABLE_FAMILY,
    TABLE_NAME,
    quota_name,
    render_set_limit,
)

log = logging.getLogger(__name__)


class CapControl(Protocol):
    def consumed(self, plan: str) -> int | None:
        """Bytes the plan's quota has counted, None if the quota does not exist."""
        ...

    def set_limit(self, plan: str, limit: int) -> None: ...

    def replace_marks(self, set_name: str, marks: Iterable[int]) -> None:
        """Make a set of conntrack marks hold exactly `marks`, in one batch."""
        ...

    def end_flows(self, interfaces: Sequence[str]) -> int:
        """Destroy the local TCP sockets on these links (globs); return how many."""
        ...

    def end_cgroup_flows(self, cgroup_paths: Sequence[str]) -> int:
        """Destroy the TCP sockets of these cgroups (paths below the v2 root)."""
        ...


class NftCapControl:
    def __init__(self, nft: NftBackend) -> None:
        self._nft = nft
        self._ss = shutil.which("ss") or "/usr/bin/ss"
        self._ip = shutil.which("ip") or "/usr/sbin/ip"

    def consumed(self, plan: str) -> int | None:
        try:
            objs = run_json(self._nft, f"list quota {TABLE_FAMILY} {TABLE_NAME} {quota_name(plan)}")
        except NftError:
            return None
        for obj in objs:
            if "quota" in obj:
                return int(obj["quota"].get("used", 0))
        return None

    def set_limit(self, plan: str, limit: int) -> None:
        self._nft.run(render_set_limit(plan, limit))

    def replace_marks(self, set_name: str, marks: Iterable[int]) -> None:
        name = set_name
        script = f"flush set {TABLE_FAMILY} {TABLE_NAME} {name}\n"
        elements = ", ".join(f"{m:#x}" for m in sorted(set(marks)))
        if elements:
            script += f"add element {TABLE_FAMILY} {TABLE_NAME} {name} {{ {elements} }}\n"
        self._nft.run(script)  # one batch: the set is never seen empty

    def _addresses(self, interfaces: Sequence[str]) -> list[str]:
        proc = subprocess.run([self._ip, "-j", "addr", "show"], capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0:
            return []
        found: list[str] = []
        for link in json.loads(proc.stdout or "[]"):
            if any(fnmatchcase(link.get("ifname", ""), g) for g in interfaces):
                found += [a["local"] for a in link.get("addr_info", []) if "local" in a]
        return found

    def end_flows(self, interfaces: Sequence[str]) -> int:
        """SOCK_DESTROY (ss -K): the app sees its connection reset at once.

        Dropping alone leaves apps hanging until their own timeout and servers
        retransmitting into the pause; the resets this sends pass the cap (see ruleset).
        """
        ended = 0
        for addr in self._addresses(interfaces):
            proc = subprocess.run(
                [self._ss, "-K", "-t", "-n", "-H", "src", addr],
                capture_output=True, text=True, check=False,
            )
            if proc.returncode != 0:
                log.warning("ss -K failed for %s: %s", addr, proc.stderr.strip())
                continue
            ended += sum(1 for line in proc.stdout.splitlines() if line.strip())
        return ended

    def end_cgroup_flows(self, cgroup_paths: Sequence[str]) -> int:
        """SOCK_DESTROY by cgroup: a newly blocked app's live downloads stop at once."""
        ended = 0
        for path in cgroup_paths:
            proc = subprocess.run(
                [self._ss, "-K", "-t", "-n", "-H", "cgroup", "/" + path.lstrip("/")],
                capture_output=True, text=True, check=False,
            )
            if proc.returncode == 0:
                ended += sum(1 for line in proc.stdout.splitlines() if line.strip())
        return ended


@dataclass
class FakeCapControl:
    used: dict[str, int] = field(default_factory=dict)
    limits: dict[str, int] = field(default_factory=dict)
    sets: dict[str, set[int]] = field(default_factory=dict)
    ended: list[tuple[str, ...]] = field(default_factory=list)
    ended_cgroups: list[str] = field(default_factory=list)

    def consumed(self, plan: str) -> int | None:
        return self.used.get(plan)

    def set_limit(self, plan: str, limit: int) -> None:
        self.limits[plan] = limit

    def replace_marks(self, set_name: str, marks: Iterable[int]) -> None:
        self.sets[set_name] = set(marks)

    def end_flows(self, interfaces: Sequence[str]) -> int:
        self.ended.append(tuple(interfaces))
        return 0

    def end_cgroup_flows(self, cgroup_paths: Sequence[str]) -> int:
        self.ended_cgroups.extend(cgroup_paths)
        return 0
