"""Helpers the lab's own tests share (a module, not a conftest: see tests/dbus/system_bus.py)."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path


def new_prefix(tag: str) -> str:
    """A fresh lab prefix, so that no two tests (or runs) share namespaces or cgroups."""
    return f"{tag}-{uuid.uuid4().hex[:6]}"


def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll `cond` until it holds or the deadline passes; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def pid_gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def ns_out(ns: str, argv: list[str]) -> str:
    """The output of `argv` run in network namespace `ns`."""
    return subprocess.run(
        ["nsenter", f"--net=/var/run/netns/{ns}", *argv],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
