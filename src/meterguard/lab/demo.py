"""The scenario behind `meterguard demo`: real traffic, meterguard's report, the carrier's count."""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from meterguard.core.units import format_bytes
from meterguard.lab import demo_leaks, demo_plan
from meterguard.lab.apps import LabApp
from meterguard.lab.carrier import CarrierCounts
from meterguard.lab.guarded import GuardedHost, Usage
from meterguard.lab.lab import Lab

BROWSER_PORT, SYNC_PORT, BURST_PORT = 8201, 8202, 8203


@contextmanager
def _step(console: Console, text: str) -> Iterator[None]:
    start = time.monotonic()
    with console.status(text):
        yield
    console.print(f"[green]✓[/green] {text} [dim]({time.monotonic() - start:.1f} s)[/dim]")


def _row(usage: Usage, app: str) -> tuple[int, int]:
    return usage.get(("esim", app), (0, 0))


def run_demo(
    connections: int = 1000, keep_state: bool = False, quiet: bool = False
) -> dict[str, Any]:
    console = Console(quiet=quiet, stderr=quiet)
    state = Path(tempfile.mkdtemp(prefix="meterguard-demo-"))
    prefix = f"mgdemo-{uuid.uuid4().hex[:5]}"
    with Lab(prefix=prefix) as lab:
        host = GuardedHost(lab, state, plan="demo-daily", extra=demo_plan.plan_toml(),
                           policy=demo_leaks.policy_toml())
        # The daemon's day ends in a few minutes, so the next cycle can be shown.
        host.move_clock(demo_plan.minutes_before_midnight(5))
        try:
            result = _scenario(console, lab, host, connections)
            result["plan"] = _plan_part(console, lab, host)
            console.rule("leak control: the detector, the fix, Wi-Fi still works")
            result["leaks"] = demo_leaks.show_and_fix(
                console, host, lab.app("onedrive.service", SYNC_PORT)
            )
            return result
        finally:
            host.stop()
            if not keep_state:
                for child in sorted(state.rglob("*"), reverse=True):
                    child.unlink() if child.is_file() else child.rmdir()
                state.rmdir()
            else:
                console.print(f"state kept in {state}")


def _scenario(console: Console, lab: Lab, host: GuardedHost, connections: int) -> dict[str, Any]:
    console.print("[bold]meterguard demo[/bold]: a laptop on a metered eSIM (wwan0) and Wi-Fi "
                  "(wlan0), in network namespaces; the carrier counts what it forwards.")
    browser = lab.app("firefox", BROWSER_PORT)
    sync = lab.app("onedrive.service", SYNC_PORT)
    chat = lab.app("com.example.Chat", BURST_PORT)
    apps: list[tuple[LabApp, str, str]] = [
        (browser, "firefox", "browser downloading in the foreground"),
        (sync, "onedrive", "cloud sync uploading in the background"),
        (chat, "com.example.Chat", f"{connections} short-lived connections, 50 at a time"),
    ]
    lab.start_servers([BROWSER_PORT, SYNC_PORT, BURST_PORT])
    with _step(console, "daemon started in the host namespace (meterguard run)"):
        host.start()
    before = lab.carrier.read()
    with _step(console, "traffic: " + "; ".join(f"{name} ({what})" for _, name, what in apps)):
        handles = [
            browser.start_download(20_000_000),
            sync.start_upload(8_000_000, timeout=120),
            chat.start_burst(connections, 50, 20_000, hold_s=1.0),
        ]
        results = [h.wait() for h in handles]
    after = lab.carrier.read()
    delta = after - before
    want_total = (delta.up.bytes, delta.down.bytes)
    with _step(console, "waiting for the daemon's ledger to catch up with the carrier"):
        usage = host.wait_until(
            lambda u: _network_total(u) == want_total, timeout=20
        )
    report = _report(console, apps, usage, before, after)
    report["clients"] = [
        {"app": name, "sent": r.sent, "received": r.received, "conns_ok": r.conns_ok}
        for (_, name, _), r in zip(apps, results, strict=True)
    ]
    return report


def _plan_part(console: Console, lab: Lab, host: GuardedHost) -> dict[str, Any]:
    console.rule("the plan: thresholds, the cap, the next cycle")
    plans = host.plans()
    if plans:
        demo_plan.print_plan(console, plans[0])
    sync = lab.app("onedrive.service", SYNC_PORT)
    browser = lab.app("firefox", BROWSER_PORT)
    start = lab.carrier.read()
    used_before = plans[0]["used_bytes"] if plans else 0
    with _step(console, "cloud sync starts a runaway 200 MB background upload"):
        capped = demo_plan.runaway_upload(console, host, sync, start, used_before)
    console.print(demo_plan.alerts_table(host))
    with _step(console, "the daemon's clock moves past midnight: a new daily cycle"):
        rolled = demo_plan.rollover(console, host, browser)
    return {"cap": capped, "rollover": rolled,
            "alerts": [e["title"] for e in host.events() if e["kind"] == "alert"]}


def _network_total(usage: Usage) -> tuple[int, int]:
    rows = [v for (net, _), v in usage.items() if net == "esim"]
    return sum(u for u, _ in rows), sum(d for _, d in rows)


def _report(
    console: Console, apps: list[tuple[LabApp, str, str]], usage: Usage,
    before: CarrierCounts, after: CarrierCounts,
) -> dict[str, Any]:
    delta = after - before
    table = Table(title="usage on the metered eSIM: meterguard vs the carrier")
    for col in ("app", "meterguard up", "carrier up", "meterguard down", "carrier down", "match"):
        table.add_column(col, justify="left" if col == "app" else "right")
    rows: list[dict[str, Any]] = []
    for app, name, _ in apps:
        port = delta.port(app.port)
        got = _row(usage, name)
        want = (port.up.bytes, port.down.bytes)
        share = (sum(got) / sum(want)) if sum(want) else 1.0
        rows.append({"app": name, "meterguard": list(got), "carrier": list(want),
                     "attributed": share})
        table.add_row(name, format_bytes(got[0]), format_bytes(want[0]), format_bytes(got[1]),
                      format_bytes(want[1]), "exact" if got == want else f"{share:.4%}")
    other = {app: v for (net, app), v in usage.items()
             if net == "esim" and app not in {n for _, n, _ in apps}}
    for name, got in sorted(other.items()):
        table.add_row(name, format_bytes(got[0]), "", format_bytes(got[1]), "", "")
    total = _network_total(usage)
    want_total = (delta.up.bytes, delta.down.bytes)
    table.add_row("[bold]network total[/bold]", format_bytes(total[0]),
                  format_bytes(want_total[0]), format_bytes(total[1]),
                  format_bytes(want_total[1]), "exact" if total == want_total else "differs")
    console.print(table)
    console.print(f"byte-exact totals: meterguard {total[0] + total[1]:,} B, "
                  f"carrier {want_total[0] + want_total[1]:,} B")
    return {"apps": rows, "other": {k: list(v) for k, v in other.items()},
            "network_total": list(total), "carrier_total": list(want_total)}
