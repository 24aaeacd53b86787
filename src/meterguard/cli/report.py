"""Commands that read usage: report, apps, top."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

import typer

from meterguard.cli.common import (
    DEFAULT_CONFIG,
    DEFAULT_STATE,
    ConfigOpt,
    JsonOpt,
    StateOpt,
    fail,
    load,
    print_json,
    report_zone,
)
from meterguard.config import Config
from meterguard.core.plans import plan_cycle
from meterguard.core.units import format_bytes
from meterguard.ledger.model import LedgerError
from meterguard.ledger.periods import period_seconds
from meterguard.ledger.store import Ledger

Period = Literal["day", "week", "month"]
By = Literal["app", "network"]


def _open_ledger(state_dir: Path) -> Ledger | None:
    path = state_dir / "ledger.sqlite3"
    if not path.exists():
        return None
    try:
        return Ledger.open(path, readonly=True)
    except LedgerError as exc:
        fail(f"{path}: {exc}")


def day_totals(config: Config, state_dir: Path) -> list[dict[str, Any]]:
    ledger = _open_ledger(state_dir)
    if ledger is None:
        return []
    with ledger:
        start, end = period_seconds("day", datetime.now(UTC), report_zone(config, None))
        return [r.as_dict() for r in ledger.totals(start, end, by="network")]


def report(
    config: ConfigOpt = DEFAULT_CONFIG,
    state_dir: StateOpt = DEFAULT_STATE,
    period: Annotated[
        str,
        typer.Option(help="day, week (Monday first), month, or cycle (the plan's billing "
                     "cycle, in the plan's zone)."),
    ] = "day",
    by: Annotated[str, typer.Option(help="app or network.")] = "app",
    previous: Annotated[
        int, typer.Option(help="Go back this many periods (1 = yesterday, last week...).")
    ] = 0,
    network: Annotated[str | None, typer.Option(help="Only this network.")] = None,
    tz: Annotated[
        str | None,
        typer.Option("--tz", help="IANA time zone (default: the network's, else the system's)."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Usage per app or per network over a calendar day, week or month, or a billing cycle.

    Bytes are IP-layer bytes, what a carrier bills. Rows add up to the metered interfaces'
    totals: `unattributed` holds what no socket owns (ICMP replies, kernel packets) and
    `forwarded` what the machine routed for others (containers, VMs, a shared hotspot).
    With --json: {"period", "by", "time_zone", "start", "end", "rows": [{"app", "network",
    "bytes_up", "bytes_down", "bytes_total"}]}; it reflects what the daemon counted within
    its last poll.
    """
    if period not in ("day", "week", "month", "cycle"):
        fail(f"--period {period!r}: use day, week, month or cycle", 2)
    if by not in ("app", "network"):
        fail(f"--by {by!r}: use app or network", 2)
    if previous < 0:
        fail("--previous cannot be negative", 2)
    cfg = load(config)
    zone = report_zone(cfg, tz)
    if period == "cycle":
        start, end, zone = _cycle_bounds(cfg, network, previous)
    else:
        start, end = period_seconds(period, datetime.now(UTC), zone, offset=-previous)  # type: ignore[arg-type]
    ledger = _open_ledger(state_dir)
    rows: list[dict[str, Any]] = []
    if ledger is not None:
        with ledger:
            rows = [r.as_dict() for r in ledger.totals(start, end, by=by, network=network)]  # type: ignore[arg-type]
    if by == "network":
        for r in rows:
            r.pop("app", None)
    data = {
        "period": period, "by": by, "time_zone": zone.key,
        "start": datetime.fromtimestamp(start, zone).isoformat(),
        "end": datetime.fromtimestamp(end, zone).isoformat(),
        "rows": rows,
    }
    if json_out:
        print_json(data)
        return
    print(f"{period} {data['start']} .. {data['end']} ({zone.key})")
    if not rows:
        print("no usage recorded")
        return
    label = "app" if by == "app" else "network"
    print(f"{label:<28} {'network':<14} {'up':>10} {'down':>10} {'total':>10} "
          f"{'foreground':>11} {'background':>11}")
    for r in rows:
        name = str(r.get("app") or r.get("network"))
        print(f"{name:<28} {r['network']!s:<14} {format_bytes(int(r['bytes_up'])):>10} "
              f"{format_bytes(int(r['bytes_down'])):>10} {format_bytes(int(r['bytes_total'])):>10} "
              f"{format_bytes(int(r['bytes_foreground'])):>11} "
              f"{format_bytes(int(r['bytes_background'])):>11}")


def _cycle_bounds(cfg: Config, network: str | None, previous: int) -> tuple[int, int, ZoneInfo]:
    """The billing cycle of `network`'s plan (or of the only plan), in whole minutes."""
    names = [n.plan for n in cfg.network if n.plan and (network is None or n.name == network)]
    if not names:
        fail("--period cycle needs a network with a plan (plan = \"NAME\")", 2)
    if len(set(names)) > 1:
        fail("several plans: choose one with --network", 2)
    plan = cfg.plans[names[0]].to_plan(names[0])
    bounds = plan_cycle(plan, datetime.now(UTC), offset=-previous)
    if bounds is None:
        fail(f"plan {plan.name} has no cycle then (a pass not active)", 1)
    start, end = bounds
    return int(start.timestamp()) // 60 * 60, int(end.timestamp()) // 60 * 60, plan.tz


def apps(
    state_dir: StateOpt = DEFAULT_STATE,
    json_out: JsonOpt = False,
) -> None:
    """Every app the ledger knows: its kind and when it was first and last seen.

    Apps are identities made from cgroups: systemd app scopes (app-gnome-firefox-1234.scope
    -> firefox), services (packagekit.service -> packagekit), flatpak and snap scopes,
    `meterguard exec --app NAME` cgroups, else the executable.
    """
    ledger = _open_ledger(state_dir)
    rows: list[dict[str, Any]] = []
    if ledger is not None:
        with ledger:
            rows = [
                {"app": a.app, "kind": a.kind, "first_seen": a.first_seen,
                 "last_seen": a.last_seen}
                for a in ledger.apps()
            ]
    if json_out:
        print_json({"apps": rows})
        return
    for a in rows:
        seen = datetime.fromtimestamp(int(a["last_seen"] or 0)).strftime("%Y-%m-%d %H:%M")
        print(f"{a['app']!s:<32} {a['kind'] or '-'!s:<14} last seen {seen}")


def top(
    state_dir: StateOpt = DEFAULT_STATE,
    once: Annotated[bool, typer.Option(help="Print one frame and exit.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """A live view of the current rate per app on metered networks (refreshes every second).

    Reads the daemon's last poll; q or Ctrl-C quits. --json (implies --once) prints the
    rates as {"rates": [{"network", "app", "up_bps", "down_bps"}]}.
    """
    from meterguard.daemon import read_status

    if json_out:
        st = read_status(state_dir) or {}
        print_json({"at": st.get("last_poll_at"), "rates": st.get("rates", [])})
        return
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    def frame() -> Table:
        st = read_status(state_dir)
        table = Table(title="meterguard top", caption="rates from the daemon's last poll")
        for col in ("network", "app", "up/s", "down/s"):
            table.add_column(col, justify="right" if "/" in col else "left")
        if st is None:
            table.caption = "the daemon is not running"
            return table
        rates = sorted(st.get("rates", []), key=lambda r: -(r["up_bps"] + r["down_bps"]))
        for r in rates:
            table.add_row(r["network"], r["app"], format_bytes(int(r["up_bps"])),
                          format_bytes(int(r["down_bps"])))
        return table

    console = Console()
    if once:
        console.print(frame())
        return
    try:
        with Live(frame(), console=console, refresh_per_second=2) as live:
            while True:
                time.sleep(1.0)
                live.update(frame())
    except KeyboardInterrupt:
        pass


def register(app: typer.Typer) -> None:
    app.command()(report)
    app.command()(apps)
    app.command()(top)
