"""Processes the lab starts, and how it ends them.

Every process the lab starts gets a session (and so a process group) of its
own, and is remembered.  Teardown signals exactly those groups, then kills by
PID whatever still sits in the lab's own namespaces or cgroups (only processes
started into the lab's resources can be there).  Nothing is ever killed by
name.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO

Stream = int | IO[str] | None


def _is_gone(pid: int) -> bool:
    """True when the pid no longer runs (absent, or a zombie waiting to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    # Field 3 (after the parenthesised comm, which may contain spaces) is the state.
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def _protected_pids() -> set[int]:
    """This process and its ancestors: never signalled, even if they entered a lab netns."""
    pids: set[int] = set()
    pid = os.getpid()
    for _ in range(64):
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        if pid <= 1:
            break
    return pids


_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Orphans of this process's descendants are reparented here instead of to PID 1.

    A crashed lab's processes are orphans; until someone reaps them they stay zombies, and
    a zombie keeps its cgroup populated, so the lab's cgroups cannot be removed. PID 1 is
    not always a prompt reaper (it is not here), so whoever runs labs reaps them itself
    (`kill_pids` does). Best effort: without prctl the old behaviour stays.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def reap(pid: int) -> None:
    # Only our own children (including orphans reparented to us) can be reaped.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def kill_pids(pids: Iterable[int], deadline_s: float = 5.0) -> list[int]:
    """SIGKILL each pid and wait (bounded) until it is gone; return pids still running."""
    targets = sorted(set(pids) - _protected_pids())
    for pid in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        for pid in targets:
            reap(pid)
        left = [pid for pid in targets if not _is_gone(pid)]
        if not left:
            return []
        time.sleep(0.02)
    return [pid for pid in targets if not _is_gone(pid)]


class LabProcesses:
    """Registry of the processes (and their process groups) one lab started."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[str]] = []

    def popen(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        stdin: Stream = subprocess.DEVNULL,
        stdout: Stream = None,
        stderr: Stream = None,
    ) -> subprocess.Popen[str]:
        # start_new_session: the child leads a new process group, so teardown
        # can signal it and anything it forks without touching anything else.
        proc = subprocess.Popen(
            list(argv),
            env=None if env is None else dict(env),
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            text=True,
            start_new_session=True,
        )
        # Forget processes someone already waited for: their group ids may be reused.
        self._procs = [*self._unreaped(), proc]
        return proc

    def _unreaped(self) -> list[subprocess.Popen[str]]:
        return [proc for proc in self._procs if proc.returncode is None]

    def stop_all(self, grace_s: float = 3.0, deadline_s: float = 5.0) -> None:
        """SIGTERM every process group the lab created, then SIGKILL what is left; reap.

        A group is only signalled while its leader is not yet reaped (running,
        or a zombie we have not waited for): until then the leader's pid, and
        so the group id, cannot be handed to another process.  Exits are
        checked with waitid(WNOWAIT), which does not reap.  Leftovers of groups
        whose leader was already reaped are in the lab's namespaces or cgroups
        and are killed by PID there.
        """
        groups = self._unreaped()
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, deadline_s)):
            for proc in groups:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, sig)
            end = time.monotonic() + wait_s
            while time.monotonic() < end and any(_group_running(p.pid) for p in groups):
                time.sleep(0.02)
        for proc in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1.0)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        self._procs = self._unreaped()


def _leader_exited(pid: int) -> bool:
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # already reaped
        return True


def _group_running(pgid: int) -> bool:
    """True while the leader or any other member of group pgid has not exited."""
    return not _leader_exited(pgid) or not _group_is_zombies(pgid)


def _group_is_zombies(pgid: int) -> bool:
    """True when every process left in group pgid is a zombie (dead, waiting to be reaped)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return False
    return True
