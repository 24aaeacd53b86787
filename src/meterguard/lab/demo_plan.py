"""The plan half of `meterguard demo`: thresholds, the cap stopping a runaway upload, rollover.

The lab host's `esim` network is on a small daily plan. The daemon's clock is set to a few
minutes before the day ends (the lab's test clock), so the demo can show the next cycle
beginning without waiting for midnight.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.table import Table

from meterguard.core.units import format_bytes
from meterguard.lab.apps import LabApp
from meterguard.lab.carrier import CarrierCounts
from meterguard.lab.guarded import GuardedHost

PLAN_QUOTA = 80_000_000


def plan_toml(quota: int = PLAN_QUOTA) -> str:
    return (
        "\n[plans.demo-daily]\n"
        f"quota = {quota}\n"
        'cycle = "daily"\n'
        'time_zone = "UTC"\n'
        'thresholds = [50, 80, 90, 100]\n'
    )


def minutes_before_midnight(minutes: float) -> float:
    """The clock offset that puts the daemon `minutes` before the next UTC midnight."""
    now = time.time()
    return 86400 - now % 86400 - minutes * 60


def print_plan(console: Console, plan: dict[str, Any]) -> None:
    cycle = plan.get("cycle") or {}
    console.print(
        f"plan [bold]{plan['plan']}[/bold]: {format_bytes(plan['quota_bytes'])} per cycle "
        f"{cycle.get('start', '?')} .. {cycle.get('end', '?')}; used "
        f"{format_bytes(plan['used_bytes'])} ({plan.get('percent_used', 0)}%), "
        f"{format_bytes(plan['remaining_bytes'])} left"
        + ("; [red]paused[/red]" if plan["paused"] else "")
    )


def alerts_table(host: GuardedHost) -> Table:
    table = Table(title="alerts and events (meterguard events)")
    for col in ("level", "title", "body"):
        table.add_column(col)
    for event in host.events():
        table.add_row(event["level"], event["title"], event["body"])
    return table


def runaway_upload(
    console: Console, host: GuardedHost, sync: LabApp, carrier_start: CarrierCounts,
    used_before: int,
) -> dict[str, Any]:
    """A background upload far larger than what is left: the kernel quota stops it."""
    lab = host.lab
    result = sync.start_upload(200_000_000, timeout=30).wait(60)
    plan = host.wait_until_plan(lambda p: p["paused"], timeout=20)
    settled = lab.carrier.read_settled(quiet_reads=1) - carrier_start
    billed = used_before + settled.up.bytes + settled.down.bytes
    console.print(
        f"runaway upload by onedrive: sent {format_bytes(result.sent)} of 200 MB before the "
        f"cap cut it ({result.error or 'stopped'})"
    )
    console.print(
        f"this cycle: {billed:,} B billed by the carrier; the allowance is {PLAN_QUOTA:,} B "
        f"([bold]{billed - PLAN_QUOTA:+,} B[/bold] past the cap)"
    )
    probe = lab.app("firefox", 8201).start_download(1_000_000, timeout=5).wait(20)
    console.print(f"while paused, a new download gets {format_bytes(probe.received)} of 1 MB")
    print_plan(console, plan)
    return {"upload_sent": result.sent, "billed": billed, "past_cap": billed - PLAN_QUOTA,
            "paused": plan["paused"], "probe_received": probe.received}


def rollover(console: Console, host: GuardedHost, browser: LabApp) -> dict[str, Any]:
    """Move the daemon's clock past midnight: a new cycle, traffic resumes by itself."""
    old_start = (host.plans() or [{}])[0].get("cycle", {}).get("start")
    host.move_clock(minutes_before_midnight(0) + 5)
    plan = host.wait_until_plan(
        lambda p: p["cycle"]["start"] != old_start and not p["paused"], timeout=20
    )
    got = browser.download(2_000_000)
    plan = host.wait_until_plan(lambda p: p["used_bytes"] >= 2_000_000, timeout=20)
    console.print(f"the next cycle began: traffic resumed by itself, a download got "
                  f"{format_bytes(got)}")
    print_plan(console, plan)
    return {"resumed": not plan["paused"], "download_after_rollover": got,
            "used_in_new_cycle": plan["used_bytes"]}
