"""`meterguard demo`: the lab, the daemon and real traffic, with the independent count beside."""

from __future__ import annotations

from typing import Annotated

import typer

from meterguard.cli.common import JsonOpt, print_json, require_root


def demo(
    connections: Annotated[
        int, typer.Option(help="Short-lived connections in the burst (50 at a time).")
    ] = 1000,
    keep: Annotated[
        bool, typer.Option(help="Keep the lab's state directory (the ledger) afterwards.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Build the lab, run the daemon against real traffic, and compare with the carrier.

    Builds network namespaces (an "internet", a "carrier" that counts what it forwards, and
    a host whose metered wwan0 goes through the carrier while wlan0 goes straight out),
    a simulated desktop of cgroups, and starts `meterguard run` inside the host. Then: a
    browser downloads in the foreground, a cloud-sync service uploads in the background,
    and a third app opens short-lived connections, 50 at a time. It prints meterguard's
    per-app report beside what the carrier counted, and removes everything it made.
    Needs root. Takes about a minute.
    """
    from meterguard.lab.demo import run_demo

    require_root("meterguard demo")
    result = run_demo(connections=connections, keep_state=keep, quiet=json_out)
    if json_out:
        print_json(result)


def register(app: typer.Typer) -> None:
    app.command()(demo)
