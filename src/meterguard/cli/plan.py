"""`meterguard plan`: the plan, its cycle and forecast; top-ups, resuming and re-anchoring."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

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
    queue_command,
)
from meterguard.config import Config
from meterguard.core.units import format_bytes, parse_size
from meterguard.enforce.state import PlanState, state_key
from meterguard.enforce.usage import PlanUsage, plan_summary
from meterguard.ledger.model import LedgerError
from meterguard.ledger.store import Ledger

plan_app = typer.Typer(
    help=(
        "Show each plan's cycle, usage, forecast and daily budget; act on the cap.\n\n"
        "Without a subcommand it shows every plan (text, or --json). The subcommands queue "
        "a command for the running daemon and wait for it to take effect."
    ),
    invoke_without_command=True,
    no_args_is_help=False,
)

PlanOpt = Annotated[
    str | None, typer.Option("--plan", help="Which plan (needed when there are several).")
]
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def summaries(config: Config, state_dir: Path, now: datetime) -> list[dict[str, Any]]:
    """Every guarded plan's figures, from the ledger, whether or not the daemon runs."""
    path = state_dir / "ledger.sqlite3"
    out: list[dict[str, Any]] = []
    ledger = None
    if path.exists():
        try:
            ledger = Ledger.open(path, readonly=True)
        except LedgerError as exc:
            fail(f"{path}: {exc}")
    try:
        for name, pc in config.plans.items():
            nets = tuple(n.name for n in config.plan_networks(name))
            usage = PlanUsage(pc.to_plan(name), nets)
            state = PlanState()
            if ledger is not None:
                usage.refresh(ledger, now)
                state = PlanState.loads(ledger.get_state(state_key(name)))
            else:
                usage.refresh(_EmptyLedger(), now)
            out.append(plan_summary(usage, state, now))
    finally:
        if ledger is not None:
            ledger.close()
    return out


class _EmptyLedger:
    def totals(self, start: int, end: int, *, by: str, network: str | None = None) -> list[Any]:
        return []


def _print(summary: dict[str, Any]) -> None:
    nets = ", ".join(summary["networks"]) or "no metered network"
    print(f"{summary['plan']} ({nets})")
    cycle = summary.get("cycle")
    if cycle is None:
        print("  no active cycle: the pass has ended or not yet started")
        return
    print(f"  cycle {cycle['start']} .. {cycle['end']} ({summary['time_zone']})")
    allowance = summary["allowance_bytes"]
    print(f"  used {format_bytes(summary['used_bytes'])} of {format_bytes(allowance)} "
          f"({summary['percent_used']}%), {format_bytes(summary['remaining_bytes'])} left; "
          f"today {format_bytes(summary['used_today_bytes'])}")
    fc = summary["forecast"]
    pace = ("lasts the cycle at this pace" if fc["lasts_cycle"]
            else f"runs out around {fc['runs_out_at']} at this pace")
    print(f"  forecast: {pace}")
    print(f"  daily budget: {format_bytes(fc['daily_budget_bytes'])} "
          f"for the {fc['days_left']} days left")
    state = "paused (cap reached)" if summary["paused"] else "active"
    print(f"  state: {state}; at the cap: {summary['cap_action']}")


@plan_app.callback()
def show(
    ctx: typer.Context,
    config: ConfigOpt = DEFAULT_CONFIG,
    state_dir: StateOpt = DEFAULT_STATE,
    json_out: JsonOpt = False,
) -> None:
    """Show every plan: cycle, used, left, forecast, daily budget and state."""
    if ctx.invoked_subcommand is not None:
        return
    cfg = load(config)
    plans = summaries(cfg, state_dir, datetime.now(UTC))
    if json_out:
        print_json({"plans": plans})
        return
    if not plans:
        print("no plan is configured (add [plans.NAME] and `plan = \"NAME\"` on a network)")
    for summary in plans:
        _print(summary)


@plan_app.command()
def topup(
    size: Annotated[str, typer.Argument(help="How much was bought, e.g. '5 GB'.")],
    plan: PlanOpt = None,
    state_dir: StateOpt = DEFAULT_STATE,
    json_out: JsonOpt = False,
) -> None:
    """Add a top-up to the current cycle's allowance (a paused plan resumes)."""
    queue_command(state_dir, "topup", {"plan": plan, "bytes": _size(size)}, json_out)


@plan_app.command()
def resume(
    for_: Annotated[
        str, typer.Option("--for", help="A size ('500 MB') or a duration ('2h', '30m', '1d').")
    ],
    plan: PlanOpt = None,
    state_dir: StateOpt = DEFAULT_STATE,
    json_out: JsonOpt = False,
) -> None:
    """Lift the pause for a while: until SIZE more is used, or for DURATION."""
    match = _DURATION.match(for_)
    if match:
        args: dict[str, Any] = {"seconds": float(match[1]) * _UNIT_S[match[2]]}
    else:
        args = {"bytes": _size(for_)}
    queue_command(state_dir, "resume", {"plan": plan, **args}, json_out)


@plan_app.command("set-used")
def set_used(
    size: Annotated[str, typer.Argument(help="What the carrier says was used this cycle.")],
    plan: PlanOpt = None,
    state_dir: StateOpt = DEFAULT_STATE,
    json_out: JsonOpt = False,
) -> None:
    """Re-anchor this cycle's count to the carrier's figure (carriers count differently)."""
    queue_command(state_dir, "set-used", {"plan": plan, "bytes": _size(size)}, json_out)


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        fail(str(exc), 2)


def register(app: typer.Typer) -> None:
    app.add_typer(plan_app, name="plan")
