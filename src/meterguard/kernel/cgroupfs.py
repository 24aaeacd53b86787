"""cgroup v2: where it is mounted, and one cheap walk of the tree.

cgroupfs is not always at /sys/fs/cgroup: on a hybrid layout cgroup v2 sits at
/sys/fs/cgroup/unified, so the mount is read from /proc/self/mountinfo. A cgroup's id, the key
of nftables' `socket cgroupv2`, is the inode number of its directory, which `os.scandir`
returns without a stat call, so a walk of a few hundred cgroups costs a few milliseconds.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

# nft 1.0.6 resolves cgroup element paths relative to this directory, whatever the layout.
NFT_CGROUP_BASE = Path("/sys/fs/cgroup")


class CgroupV2NotFound(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class CgroupNode:
    cgroup_id: int
    path: str  # relative to the cgroup v2 root, "" for the root itself
    level: int  # depth below the root: what `socket cgroupv2 level N` calls N


def find_cgroup2_mount(mountinfo: str | None = None) -> Path:
    """The mount point of the cgroup v2 hierarchy, from /proc/self/mountinfo."""
    if mountinfo is None:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    for line in mountinfo.splitlines():
        # Fields: id parent major:minor root mount-point options ... - fstype source super-opts
        left, _, right = line.partition(" - ")
        if right.split(" ", 1)[0] == "cgroup2":
            return Path(left.split(" ")[4].replace("\\040", " "))
    raise CgroupV2NotFound("no cgroup2 filesystem is mounted (see /proc/self/mountinfo)")


class CgroupTree(Protocol):
    """What the meter needs from cgroupfs; a fake is below."""

    def walk(self) -> list[CgroupNode]: ...

    def nft_path(self, path: str) -> str: ...

    def executables(self, path: str) -> list[str]: ...

    def remove_if_empty(self, path: str) -> bool: ...


class CgroupFs:
    """The real cgroup v2 filesystem."""

    def __init__(self, mount: Path | None = None) -> None:
        self.mount = mount or find_cgroup2_mount()

    def walk(self) -> list[CgroupNode]:
        root_id = os.stat(self.mount).st_ino
        nodes = [CgroupNode(root_id, "", 0)]
        nodes.extend(self._walk(str(self.mount), "", 1))
        return nodes

    def _walk(self, directory: str, prefix: str, level: int) -> Iterator[CgroupNode]:
        try:
            entries = list(os.scandir(directory))
        except OSError:
            return  # removed while walking: short-lived cgroups vanish all the time
        for entry in entries:
            try:
                if not entry.is_dir(follow_symlinks=False):
                    continue
                cgid = entry.inode()
            except OSError:
                continue
            rel = f"{prefix}{entry.name}"
            yield CgroupNode(cgid, rel, level)
            yield from self._walk(entry.path, rel + "/", level + 1)

    def nft_path(self, path: str) -> str:
        """The path nft wants for an element: relative to /sys/fs/cgroup, not to the mount."""
        full = self.mount / path
        try:
            return str(full.relative_to(NFT_CGROUP_BASE))
        except ValueError as exc:
            raise CgroupV2NotFound(
                f"cgroup v2 is mounted at {self.mount}, outside {NFT_CGROUP_BASE}: "
                "nft cannot name its cgroups"
            ) from exc

    def executables(self, path: str) -> list[str]:
        """Executables of the processes in a cgroup, for naming cgroups that are not apps."""
        exes: list[str] = []
        try:
            pids = (self.mount / path / "cgroup.procs").read_text().split()
        except OSError:
            return exes
        for pid in pids[:16]:
            try:
                exes.append(os.readlink(f"/proc/{pid}/exe"))
            except OSError:
                continue
        return exes


    def remove_if_empty(self, path: str) -> bool:
        """rmdir a cgroup with no process left in it (the kernel refuses otherwise)."""
        try:
            events = (self.mount / path / "cgroup.events").read_text()
            if "populated 0" not in events:
                return False
            os.rmdir(self.mount / path)
        except OSError:
            return False
        return True


class FakeCgroupTree:
    """A cgroup tree held in memory, for tests of the meter."""

    def __init__(self) -> None:
        self.nodes: dict[str, CgroupNode] = {"": CgroupNode(1, "", 0)}
        self.exes: dict[str, list[str]] = {}
        self._next_id = 100

    def add(self, path: str, exes: list[str] | None = None) -> CgroupNode:
        parts = path.split("/")
        for depth in range(1, len(parts) + 1):
            sub = "/".join(parts[:depth])
            if sub not in self.nodes:
                self._next_id += 1
                self.nodes[sub] = CgroupNode(self._next_id, sub, depth)
        if exes is not None:
            self.exes[path] = exes
        return self.nodes[path]

    def remove(self, path: str) -> None:
        for sub in [p for p in self.nodes if p == path or p.startswith(path + "/")]:
            del self.nodes[sub]

    def walk(self) -> list[CgroupNode]:
        return list(self.nodes.values())

    def nft_path(self, path: str) -> str:
        return f"unified/{path}"

    def executables(self, path: str) -> list[str]:
        return list(self.exes.get(path, []))

    def remove_if_empty(self, path: str) -> bool:
        if self.exes.get(path) or any(p.startswith(path + "/") for p in self.nodes):
            return False
        self.remove(path)
        return True


def create_cgroup(mount: Path, path: str) -> Path:
    """mkdir -p of a cgroup below the v2 root."""
    target = mount / path
    target.mkdir(parents=True, exist_ok=True)
    return target


def move_pid(mount: Path, path: str, pid: int) -> None:
    (mount / path / "cgroup.procs").write_text(f"{pid}\n")
