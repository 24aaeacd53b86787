"""Seeing new cgroups the moment they appear: inotify on cgroupfs.

A blocked app restarted into a new cgroup (a service restart, a new app scope) must be
blocked within a second, before it moves much data. A walk every poll would find it up
to one interval late, so the daemon also waits on inotify. inotify is not recursive: every
cgroup directory gets its own watch, and each new directory is watched as it appears.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import struct
from pathlib import Path
from typing import Protocol

_IN_CREATE = 0x00000100
_IN_IGNORED = 0x00008000  # the watched directory is gone
_IN_ISDIR = 0x40000000
_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len


class CgroupWatch(Protocol):
    def wait(self, timeout: float) -> bool:
        """Block until a cgroup appears (True) or `timeout` seconds pass (False)."""
        ...

    def close(self) -> None: ...


class InotifyCgroupWatch:
    def __init__(self, mount: Path) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self._add = libc.inotify_add_watch
        self._add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self._paths: dict[int, str] = {}
        for directory, _dirs, _files in os.walk(mount):
            self._watch(directory)

    def _watch(self, directory: str) -> None:
        wd = self._add(self._fd, directory.encode(), _IN_CREATE)
        if wd >= 0:  # the directory may already be gone: short-lived cgroups are common
            self._paths[wd] = directory

    def wait(self, timeout: float) -> bool:
        ready, _, _ = select.select([self._fd], [], [], max(timeout, 0))
        if not ready:
            return False
        created = False
        try:
            data = os.read(self._fd, 64 * 1024)
        except BlockingIOError:
            return False
        offset = 0
        while offset + _EVENT.size <= len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            name = data[offset + _EVENT.size: offset + _EVENT.size + length].rstrip(b"\0")
            offset += _EVENT.size + length
            if mask & _IN_IGNORED:
                self._paths.pop(wd, None)
                continue
            if mask & _IN_CREATE and mask & _IN_ISDIR and wd in self._paths:
                created = True
                new = os.path.join(self._paths[wd], name.decode(errors="replace"))
                # Watch the new cgroup and anything made inside it before the watch existed.
                for directory, _dirs, _files in os.walk(new):
                    self._watch(directory)
        return created

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class NoCgroupWatch:
    """Waits only for the timeout (tests; systems without inotify)."""

    def wait(self, timeout: float) -> bool:
        if timeout > 0:
            select.select([], [], [], timeout)
        return False

    def close(self) -> None:
        return None
