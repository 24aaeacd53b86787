"""The leak-control part of `meterguard demo`: the detector's findings, the fix applied, and
the sync service blocked on the metered link while it keeps working on Wi-Fi."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.table import Table

from meterguard.core.units import format_bytes
from meterguard.lab.apps import LabApp
from meterguard.lab.guarded import GuardedHost

# The demo's hourly limit on an app's background data: low, so one sync run exceeds it.
BACKGROUND_LIMIT = "5 MB"


def policy_toml() -> str:
    return (f'[policy]\ndefault_profile = false\nbackground_limit_per_hour = '
            f'"{BACKGROUND_LIMIT}"\n\n')


def findings(host: GuardedHost, app: str, timeout: float = 45) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        found = host.cli("leaks")["leaks"]
        if any(f.get("app") == app and f.get("kind") != "new-app" for f in found):
            break
        time.sleep(0.5)
    return found


def show_and_fix(console: Console, host: GuardedHost, sync: LabApp) -> dict[str, Any]:
    found = findings(host, "onedrive")
    table = Table(title="leaks found (meterguard leaks)")
    for col in ("app", "finding", "fix"):
        table.add_column(col)
    for f in found:
        table.add_row(str(f.get("app")), str(f.get("title")), str(f.get("fix")))
    console.print(table)
    leak = next((f for f in found if f.get("app") == "onedrive" and f.get("kind") != "new-app"),
                None)
    if leak is None:
        console.print("[red]the background sync was not flagged[/red]")
        return {"findings": found, "fixed": False}
    fix = str(leak["fix"])
    console.print(f"applying the suggested fix: [bold]{fix}[/bold]")
    args = fix.split()[1:]  # "meterguard block onedrive --on metered"
    result = host.cli(*args)
    console.print(f"  -> {result.get('result')}")
    wwan = sync.start_upload(2_000_000, timeout=5).wait(20)
    wlan = sync.upload(2_000_000, via="wlan")
    console.print(f"onedrive now uploads {format_bytes(wwan.sent)} of 2 MB over the metered "
                  f"wwan0 ({wwan.error or 'blocked'}) and {format_bytes(wlan)} of 2 MB over "
                  "wlan0 (Wi-Fi)")
    return {"findings": found, "fix": fix, "fixed": True, "wwan_sent": wwan.sent,
            "wlan_sent": wlan}
