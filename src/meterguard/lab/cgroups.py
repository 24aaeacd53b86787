"""The lab's simulated desktop in cgroup v2.

cgroup v2 is not always at /sys/fs/cgroup (a hybrid layout mounts it at
/sys/fs/cgroup/unified), so the mount is looked up in /proc/self/mountinfo.
The lab only ever creates and removes directories under `<mount>/<prefix>`.
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass
from pathlib import Path

from meterguard.lab.netns import LabError
from meterguard.lab.procs import reap

# nft 1.0.6 takes cgroupsv2 set elements only as existing paths relative to
# /sys/fs/cgroup (on the hybrid layout they start with "unified/").
NFT_CGROUP_BASE = Path("/sys/fs/cgroup")


def _unescape_mountinfo(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo octal."""
    out: list[str] = []
    i = 0
    while i < len(field):
        octal = field[i + 1 : i + 4]
        if field[i] == "\\" and len(octal) == 3 and all(c in "01234567" for c in octal):
            out.append(chr(int(octal, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def cgroup2_mount(mountinfo: str | None = None) -> Path:
    """Mount point of the cgroup2 filesystem, from /proc/self/mountinfo."""
    text = mountinfo if mountinfo is not None else Path("/proc/self/mountinfo").read_text()
    for line in text.splitlines():
        pre, sep, post = line.partition(" - ")
        if sep and post.split(" ", 1)[0] == "cgroup2":
            return Path(_unescape_mountinfo(pre.split()[4]))
    raise LabError("no cgroup2 filesystem is mounted (see /proc/self/mountinfo)")


@dataclass(frozen=True)
class LabCgroup:
    """One cgroup v2 directory of the lab."""

    path: Path
    mount: Path

    @property
    def rel(self) -> str:
        """Path relative to the cgroup2 mount, e.g. 'mgl-ab12cd/system.slice/x.service'."""
        return str(self.path.relative_to(self.mount))

    @property
    def unit(self) -> str:
        """Last path component, e.g. 'app-gnome-firefox-5001.scope'."""
        return self.path.name

    @property
    def id(self) -> int:
        """The cgroup id the kernel uses as `socket cgroupv2` key: the directory's inode."""
        return os.stat(self.path).st_ino

    @property
    def level(self) -> int:
        """Depth below the cgroup2 root, as in `socket cgroupv2 level N`."""
        return len(self.path.relative_to(self.mount).parts)

    @property
    def nft_path(self) -> str:
        """The path nft 1.0.6 accepts for a cgroupsv2 element (relative to /sys/fs/cgroup)."""
        try:
            return str(self.path.relative_to(NFT_CGROUP_BASE))
        except ValueError as exc:
            msg = f"{self.path} is not under {NFT_CGROUP_BASE}; nft cannot name it"
            raise LabError(msg) from exc

    @property
    def procs_file(self) -> Path:
        return self.path / "cgroup.procs"

    def pids(self) -> list[int]:
        """PIDs directly in this cgroup (not in its children)."""
        return read_pids(self.path)

    def exists(self) -> bool:
        return self.path.is_dir()


def read_pids(directory: Path) -> list[int]:
    try:
        text = (directory / "cgroup.procs").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [int(tok) for tok in text.split()]


def make_cgroup(path: Path) -> None:
    """mkdir -p; intermediate directories become cgroups too, as systemd's slices are."""
    path.mkdir(parents=True, exist_ok=True)


def subtree_dirs_deepest_first(root: Path) -> list[Path]:
    """All cgroup directories under root (root included), children before parents."""
    if not root.is_dir():
        return []
    found: list[Path] = []
    for dirpath, _dirnames, _files in os.walk(root, topdown=False):
        found.append(Path(dirpath))
    return found


def subtree_pids(root: Path) -> list[int]:
    pids: list[int] = []
    for directory in subtree_dirs_deepest_first(root):
        pids += read_pids(directory)
    return pids


def remove_subtree(root: Path, deadline_s: float = 10.0) -> None:
    """rmdir every cgroup under root, deepest first.

    Processes are never moved out to make a cgroup removable: the caller kills
    the lab's own processes first.  A cgroup stays busy for a moment after its
    last process exits (until the task is released), so EBUSY is retried
    until the deadline instead of sleeping a fixed time.
    """
    deadline = time.monotonic() + deadline_s
    for directory in subtree_dirs_deepest_first(root):
        while True:
            try:
                directory.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise LabError(
                        f"cannot remove cgroup {directory}: {exc}; pids={read_pids(directory)}"
                    ) from exc
                # A zombie keeps its cgroup busy until reaped; reap ours (orphans of a
                # crashed lab come to us when we are the subreaper, see procs.py).
                for pid in read_pids(directory):
                    reap(pid)
                time.sleep(0.02)
