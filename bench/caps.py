"""Bytes billed past a cap, and alert latency from a threshold crossing to its delivery.

Run as root: `.venv/bin/python bench/caps.py [--reps N] [--json]`.

For each of offloads off (the lab's default: wire-sized packets) and on (the kernel's
default veth offloads), and for a 20 MB upload and a 20 MB download against a 5 MB daily
plan, a fresh lab is built and the real daemon runs with an apprise json:// webhook on the
internet side. Measured:

- past cap: bytes the carrier forwarded in the cycle, less the alerts' own bytes (they
  are exempt from the pause on purpose, and billed), minus the allowance. Negative means
  the cap came early (the kernel quota's limit errs low by design).
- alert latency: the 50% and 100% crossings are taken from the carrier's counters, polled
  every few ms in this process; the delivery time is the webhook's arrival stamp. Both
  clocks are this machine's; the resolution is one carrier poll (printed).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from benchlib import stop_cleanly_on_signals

from meterguard.lab import Lab
from meterguard.lab.guarded import GuardedHost
from meterguard.lab.hook import start_hook

CAP = 5_000_000
TRANSFER = 20_000_000


@dataclass
class Run:
    offloads: bool
    direction: str
    billed: int
    past_cap: int
    alerts_bytes: int
    latency_50_ms: float | None
    latency_100_ms: float | None
    poll_ms: float


class CrossingWatch:
    """Polls the carrier and stamps the first time its total reaches each mark."""

    def __init__(self, lab: Lab, marks: list[int]) -> None:
        self.lab = lab
        self.base = self._total()
        self.marks = marks
        self.crossed: dict[int, float] = {}
        self.polls = 0
        self.spent = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _total(self) -> int:
        c = self.lab.carrier.read()
        return c.up.bytes + c.down.bytes

    def _run(self) -> None:
        deadline = time.monotonic() + 60
        while not self._stop.is_set() and time.monotonic() < deadline:
            t0 = time.time()
            total = self._total() - self.base
            self.spent += time.time() - t0
            self.polls += 1
            for mark in self.marks:
                if mark not in self.crossed and total >= mark:
                    self.crossed[mark] = t0
            if len(self.crossed) == len(self.marks):
                return

    def stop(self) -> float:
        self._stop.set()
        self._thread.join(5)
        return 1000 * self.spent / max(self.polls, 1)


def one_run(offloads: bool, direction: str) -> Run:
    prefix = f"mgbcap-{uuid.uuid4().hex[:5]}"
    tmp = Path(tempfile.mkdtemp(prefix="mg-bench-caps-"))
    with Lab(prefix=prefix, offloads=offloads) as lab:
        hook = start_hook(lab, tmp / "hook.txt")
        plan = (f'\n[plans.bench]\nquota = {CAP}\ncycle = "daily"\ntime_zone = "UTC"\n'
                f'\n[alerts]\napprise = ["{hook.url}"]\n')
        host = GuardedHost(lab, tmp / "state", plan="bench", extra=plan)
        app = lab.app("onedrive.service" if direction == "upload" else "firefox", 8401)
        lab.start_servers([8401])
        try:
            host.start()
            watch = CrossingWatch(lab, [CAP // 2, CAP])
            start = (app.start_upload if direction == "upload" else app.start_download)
            start(TRANSFER, timeout=20).wait(40)
            host.wait_until_plan(lambda p: p.get("paused", False), timeout=20)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and len(hook.posts()) < 2:
                time.sleep(0.05)
            poll_ms = watch.stop()
            settled = lab.carrier.read_settled(quiet_reads=1)
            billed = settled.up.bytes + settled.down.bytes - watch.base
            # The alerts themselves cross the paused link on purpose (and are billed).
            hook_port = settled.port(int(hook.url.rsplit(":", 1)[1].split("/")[0]))
            alerts = hook_port.up.bytes + hook_port.down.bytes
            posts = hook.posts()
        finally:
            host.stop()

    def latency(mark: int, label: str) -> float | None:
        arrived = [t for t, body in posts if label in body]
        if mark not in watch.crossed or not arrived:
            return None
        return round(1000 * (arrived[0] - watch.crossed[mark]), 1)

    return Run(offloads, direction, billed, billed - alerts - CAP, alerts,
               latency(CAP // 2, "50%"),
               latency(CAP, "100%"), round(poll_ms, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    stop_cleanly_on_signals()
    runs: list[Run] = []
    for rep in range(args.reps):
        for offloads in (False, True):
            for direction in ("upload", "download"):
                run = one_run(offloads, direction)
                runs.append(run)
                if not args.json:
                    print(f"[{rep + 1}/{args.reps}] offloads {'on ' if offloads else 'off'} "
                          f"{direction:8} past cap {run.past_cap:+9,} B "
                          f"(alerts {run.alerts_bytes:,} B)  alert 50% "
                          f"{run.latency_50_ms} ms, 100% {run.latency_100_ms} ms "
                          f"(carrier poll {run.poll_ms} ms)", flush=True)
    if args.json:
        print(json.dumps([asdict(r) for r in runs], indent=2))
        return
    print("\nmedians over reps")
    for offloads in (False, True):
        for direction in ("upload", "download"):
            sel = [r for r in runs if r.offloads == offloads and r.direction == direction]
            lat = [r.latency_100_ms for r in sel if r.latency_100_ms is not None]
            lat50 = [r.latency_50_ms for r in sel if r.latency_50_ms is not None]
            print(f"offloads {'on ' if offloads else 'off'} {direction:8} past cap "
                  f"median {statistics.median(r.past_cap for r in sel):+,.0f} B, "
                  f"max {max(r.past_cap for r in sel):+,} B; alert latency median 50% "
                  f"{statistics.median(lat50) if lat50 else '-'} ms, 100% "
                  f"{statistics.median(lat) if lat else '-'} ms")


if __name__ == "__main__":
    main()
