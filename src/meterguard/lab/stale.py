"""Leftovers of labs that never tore down (a crash, SIGKILL, a runner that was killed).

Each lab writes its owner (pid and process start time) into its state
directory.  A lab whose owner is gone can be removed by prefix; the prefix names
everything it made (namespaces `<prefix>-*`, cgroup `<mount>/<prefix>`, state
`/run/meterguard-lab/<prefix>`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from meterguard.lab.cgroups import cgroup2_mount, remove_subtree, subtree_pids
from meterguard.lab.netns import LabError, check_prefix, ns_delete, ns_pids
from meterguard.lab.procs import kill_pids
from meterguard.lab.topology import Topology

STATE_BASE = Path("/run/meterguard-lab")
OWNER_FILE = "owner"


def _start_time(pid: int) -> str | None:
    """Process start time in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def write_owner(state_dir: Path) -> None:
    """Record which process owns a lab; pid plus start time survives pid reuse."""
    pid = os.getpid()
    (state_dir / OWNER_FILE).write_text(f"{pid} {_start_time(pid)}\n")


def owner_is_dead(state_dir: Path) -> bool:
    """True only when the recorded owner is provably gone.

    No owner record (an older lab, or one still being created) counts as
    alive: cleaning up a lab that is in use would break someone's run.
    """
    try:
        pid_text, start = (state_dir / OWNER_FILE).read_text().split()
    except (OSError, ValueError):
        return False
    return _start_time(int(pid_text)) != start


_SWEEPS = 5


def cleanup_stale(prefix: str) -> None:
    """Remove what a crashed lab with this prefix left behind (processes, netns, cgroups, state).

    Every process inside those namespaces or that cgroup subtree was put there
    by that lab, so each is killed by PID first; nothing is moved out of a
    cgroup to make it removable.
    """
    check_prefix(prefix)
    names = Topology(prefix).ns.values()
    root = cgroup2_mount() / prefix
    for sweep in range(_SWEEPS):
        # A process the crashed lab was starting may join its cgroup after a sweep (its
        # `sh` writes its own pid into cgroup.procs, then execs): sweep again until the
        # subtree can go.
        still = kill_pids([pid for name in names for pid in ns_pids(name)] + subtree_pids(root))
        for name in names:
            ns_delete(name)
        try:
            remove_subtree(root, deadline_s=2.0)
            break
        except LabError:
            if sweep == _SWEEPS - 1:
                raise
    shutil.rmtree(STATE_BASE / prefix, ignore_errors=True)
    if still:
        raise LabError(f"stale lab {prefix}: processes survived SIGKILL: {still}")


def cleanup_orphans() -> list[str]:
    """cleanup_stale() every lab whose owning process is gone; return their prefixes."""
    cleaned: list[str] = []
    if not STATE_BASE.is_dir():
        return cleaned
    for state_dir in sorted(STATE_BASE.iterdir()):
        with contextlib.suppress(LabError):
            check_prefix(state_dir.name)
            if owner_is_dead(state_dir):
                cleanup_stale(state_dir.name)
                cleaned.append(state_dir.name)
    return cleaned

