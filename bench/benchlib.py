"""What every bench prints about where its figures come from: progress, source, machine."""

from __future__ import annotations

import os
import platform
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import meterguard
from meterguard.lab.netns import run


def log(text: str) -> None:
    # Progress goes to stderr so that `--json` keeps stdout machine-readable.
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def source_revision() -> str:
    """The meterguard source these figures belong to: its git commit, and whether src/
    differs from it (the figures of a modified tree cannot be reproduced from a commit)."""
    src = Path(meterguard.__file__).resolve().parents[1]
    head = run(["git", "-C", str(src), "rev-parse", "--short=12", "HEAD"], check=False)
    if head.returncode != 0:
        return f"{src} (not a git checkout)"
    dirty = run(["git", "-C", str(src), "status", "--porcelain", "--", "."], check=False)
    return f"{head.stdout.strip()}{' + uncommitted changes' if dirty.stdout.strip() else ''}" \
        f" ({src})"


def machine() -> dict[str, str]:
    """The machine and the software versions a figure depends on."""
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": cpu,
        "kernel": platform.release(),
        "nft": run(["nft", "--version"], check=False).stdout.strip(),
        "python": platform.python_version(),
        "meterguard": source_revision(),
    }


def stop_cleanly_on_signals() -> None:
    """SIGTERM and SIGINT unwind like an exception, so the lab is torn down on the way out.

    Python's default SIGTERM ends the process without unwinding, and a shell starts a
    background job with SIGINT ignored: either would leave the lab's namespaces behind.
    """

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
