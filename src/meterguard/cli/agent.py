"""`meterguard agent`: show the daemon's alerts as desktop notifications (run as the user)."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Annotated

import typer

from meterguard.cli.common import DEFAULT_STATE, StateOpt, fail

LEDGER_FILE = "ledger.sqlite3"  # the daemon's, in the state dir (see cli/events.py)


async def _run(agent_state: Path | None, state_dir: Path, interval: float, once: bool) -> int:
    from meterguard.notify.agent import DesktopAgent
    from meterguard.notify.desktop import DbusDesktopNotifier

    agent = DesktopAgent(
        state_dir / LEDGER_FILE, DbusDesktopNotifier(), state_file=agent_state, interval=interval
    )
    if once:
        try:
            shown = await agent.step()
        finally:
            await agent.notifier.close()
            agent.close()
        typer.echo(f"shown {shown} alert(s)", err=True)
        return 1 if agent.notify_failing else 0
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # SIGTERM (logout, systemd --user stop) and Ctrl-C end the agent cleanly: the position
    # is saved after every alert shown, so nothing is lost or repeated.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await agent.run(stop)
    return 0


def agent(
    state_dir: StateOpt = DEFAULT_STATE,
    interval: Annotated[
        float, typer.Option(min=0.05, help="Seconds between looks at the event log.")
    ] = 0.5,
    once: Annotated[
        bool,
        typer.Option(
            "--once",
            help="Show the alerts not shown yet, then exit (status 1 if the desktop refused).",
        ),
    ] = False,
    agent_state: Annotated[
        Path | None,
        typer.Option(
            "--agent-state", metavar="FILE",
            help="Where the last shown event id is kept"
            " (default: $XDG_STATE_HOME/meterguard/agent.json).",
        ),
    ] = None,
) -> None:
    """Show meterguard's alerts on this desktop until stopped.

    Run it as the desktop user, for example from the session's autostart: it follows the
    daemon's event log (read-only) and shows each new threshold or cap alert through
    org.freedesktop.Notifications on the session bus; an alert at the cap is critical and
    stays until dismissed. Alerts already shown are remembered, so a restart or a new login
    does not show them again; on its very first run it shows the alerts of the last day.
    """
    logging.basicConfig(level=logging.INFO, format="meterguard agent: %(message)s")
    try:
        code = asyncio.run(_run(agent_state, state_dir, interval, once))
    except OSError as exc:
        fail(f"cannot keep the agent's position: {exc}")
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command()(agent)
