"""Leak control from the command line: block, allow, policy, leaks, modem."""

from __future__ import annotations

import json
from contextlib import closing
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
    pid_alive,
    print_json,
    queue_command,
    require_root,
)

AppArg = Annotated[str, typer.Argument(help="The app, as `meterguard apps` names it.")]
OnOpt = Annotated[
    str, typer.Option("--on", help="Where the rule applies; only 'metered' is supported.")
]


def _check_on(on: str) -> None:
    if on != "metered":
        fail(f"--on {on!r}: rules apply on metered networks only (--on metered)", 2)


def block(
    app: AppArg,
    on: OnOpt = "metered",
    background: Annotated[
        bool, typer.Option("--background", help="Block only while in the background.")
    ] = False,
    state_dir: StateOpt = DEFAULT_STATE,
    json_out: JsonOpt = False,
) -> None:
    """Block APP on metered networks (it keeps working on Wi-Fi).

    The kernel refuses the app's traffic on metered links from now on, new cgroups of the app
    included, and its live connections are ended at once. With --background the app is
    blocked only while the session is idle or locked (and always when it runs as a service).
    Undo with `meterguard allow APP` or `meterguard policy reset APP`.
    """
    _check_on(on)
    queue_command(state_dir, "background" if background else "block", {"app": app}, json_out)


def allow(
    app: AppArg,
    on: OnOpt = "metered",
    state_dir: StateOpt = DEFAULT_STATE,
    json_out: JsonOpt = False,
) -> None:
    """Allow APP on metered networks, whatever its category or the allow-list say."""
    _check_on(on)
    queue_command(state_dir, "allow", {"app": app}, json_out)


policy_app = typer.Typer(
    help="The per-app policy on metered networks: each app's rule, why, and what is blocked "
    "now. `policy reset APP` drops a block/allow override.",
    invoke_without_command=True,
)


@policy_app.callback()
def policy(
    ctx: typer.Context,
    config: ConfigOpt = DEFAULT_CONFIG,
    state_dir: StateOpt = DEFAULT_STATE,
    json_out: JsonOpt = False,
) -> None:
    """Show every app's rule on metered networks, why, and whether it is blocked now."""
    if ctx.invoked_subcommand is not None:
        return
    cfg = load(config)
    data = _policy_status(cfg, state_dir)
    if json_out:
        print_json(data)
        return
    print(f"mode: {data['mode']}" + (f"; roaming on {', '.join(data['roaming'])}"
                                      if data.get("roaming") else ""))
    session = data.get("session") or {}
    if session.get("known"):
        print(f"session: {'idle' if session['idle'] else 'active'}"
              f"{', locked' if session['locked'] else ''}")
    for row in data["apps"]:
        now = "BLOCKED now" if row["blocked_now"] else ""
        category = f"[{row['category']}] " if row.get("category") else ""
        print(f"{row['app']:<30} {row['rule']:<10} {now:<12} {category}{row['why']}")


def _policy_status(cfg: Any, state_dir: Any) -> dict[str, Any]:
    """The running daemon's view; without one, the rules from the config and the ledger."""
    from meterguard.daemon import read_status

    st = read_status(state_dir)
    if st and pid_alive(int(st.get("pid", 0))) and "policy" in st:
        data: dict[str, Any] = st["policy"]
        return data
    from meterguard.core.policy import RULES, rule_for, with_override
    from meterguard.enforce.policy import OVERRIDES_KEY
    from meterguard.ledger.store import Ledger
    from meterguard.wiring import load_catalogue

    catalogue = load_catalogue(cfg)
    pol = cfg.policy.to_policy(catalogue.categories)
    apps: set[str] = set(cfg.policy.apps)
    path = state_dir / "ledger.sqlite3"
    overrides: dict[str, str] = {}
    if path.exists():
        with Ledger.open(path, readonly=True) as ledger:
            apps |= {a.app for a in ledger.apps()}
            overrides = json.loads(ledger.get_state(OVERRIDES_KEY) or "{}")
    for app, rule in overrides.items():
        if rule in RULES:
            pol = with_override(pol, app, rule)
    rows = []
    for app in sorted(apps | set(overrides)):
        if app in ("unattributed", "forwarded", "vpn-overhead"):
            continue
        rule, why = rule_for(pol, catalogue, app)
        rows.append({"app": app, "rule": rule, "why": why,
                     "category": catalogue.category_of(app), "blocked_now": False,
                     "blocked_why": None})
    return {"mode": pol.mode, "overrides": overrides, "session": None, "roaming": [],
            "apps": rows, "daemon": "not running"}


@policy_app.command("reset")
def reset(app: AppArg, state_dir: StateOpt = DEFAULT_STATE, json_out: JsonOpt = False) -> None:
    """Drop the block/allow override of APP: the configured policy applies again."""
    queue_command(state_dir, "unset", {"app": app}, json_out)


def leaks(
    state_dir: StateOpt = DEFAULT_STATE,
    json_out: JsonOpt = False,
    limit: Annotated[int, typer.Option(help="Show at most this many, newest first.")] = 50,
) -> None:
    """The leak detector's findings, each with its evidence and a one-line fix.

    Findings: a new app starts using metered data; an app's background usage rises above its
    own baseline (median + 5 MAD of its past hours) or above the hourly limit; traffic while
    the session is idle or locked; apps that are not allowed using data while roaming. Each
    is recorded once per hour (or day) and sent as an alert.
    """
    from meterguard.ledger.store import Ledger

    path = state_dir / "ledger.sqlite3"
    found: list[dict[str, Any]] = []
    if path.exists():
        with Ledger.open(path, readonly=True) as ledger:
            found = [
                {"id": e.id, "at": e.at, "level": e.level, "title": e.title, **e.data}
                for e in ledger.events(0, 100_000) if e.kind == "leak"
            ]
    found = sorted(found, key=lambda f: -int(f["id"]))[:limit]
    if json_out:
        print_json({"leaks": found})
        return
    if not found:
        print("no leaks found")
    for f in found:
        print(f"[{f['level']}] {f['title']}")
        evidence = ", ".join(f"{k}={v}" for k, v in (f.get("evidence") or {}).items())
        if evidence:
            print(f"    evidence: {evidence}")
        print(f"    fix: {f.get('fix', '')}")


modem_app = typer.Typer(
    help="The modem as ModemManager reports it (operator, SIM, roaming, 4G/5G), and its mode.",
    invoke_without_command=True,
)


@modem_app.callback()
def modem(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """Show each modem: operator, SIM (ICCID, IMSI), registration (roaming?), 4G or 5G."""
    if ctx.invoked_subcommand is not None:
        return
    from meterguard.daemon import _modem_status
    from meterguard.system.bus import SystemBusError
    from meterguard.system.modemmanager import ModemManagerClient

    try:
        with closing(ModemManagerClient(timeout=5.0)) as mm:
            modems = [_modem_status(m) for m in mm.modems()]
    except SystemBusError as exc:
        fail(f"ModemManager is not available: {exc}", 1)
    if json_out:
        print_json({"modems": modems})
        return
    if not modems:
        print("no modem")
    for m in modems:
        roaming = "ROAMING" if m["roaming"] else m["registration"]
        print(f"{m['model'] or m['path']}: {m['operator']} ({m['operator_code']}), {roaming}, "
              f"{m['generation']} [{', '.join(m['access_technologies'])}]")
        print(f"    SIM ICCID {m['iccid']} IMSI {m['imsi']}; net {', '.join(m['interfaces'])}")


@modem_app.command("mode")
def mode(
    which: Annotated[str, typer.Argument(help="4g, 5g or auto.")],
    modem_path: Annotated[
        str | None, typer.Option("--modem", help="The modem's D-Bus path (default: the only).")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Set the modem's mode through ModemManager's SetCurrentModes.

    A mode is an (allowed, preferred) pair taken from the modem's SupportedModes: 5g allows
    4G and 5G and prefers 5G; 4g allows 4G without 5G; auto allows the most with no
    preference.
    """
    if which not in ("4g", "5g", "auto"):
        fail(f"{which!r}: use 4g, 5g or auto", 2)
    require_root("meterguard modem mode")
    from meterguard.system.bus import SystemBusError
    from meterguard.system.modemmanager import ModemManagerClient, ModeNotSupportedError

    try:
        with closing(ModemManagerClient(timeout=10.0)) as mm:
            modems = mm.modems()
            if modem_path is None and len(modems) != 1:
                fail(f"{len(modems)} modems: choose one with --modem PATH", 2)
            target = modem_path or modems[0].path
            pair = mm.set_mode(target, which)  # type: ignore[arg-type]
    except ModeNotSupportedError as exc:
        fail(str(exc), 1)
    except SystemBusError as exc:
        fail(f"ModemManager: {exc}", 1)
    if json_out:
        print_json({"modem": target, "mode": which, "allowed": pair[0], "preferred": pair[1]})
    else:
        print(f"{target}: mode {which} (allowed {pair[0]}, preferred {pair[1]})")


def register(app: typer.Typer) -> None:
    app.command()(block)
    app.command()(allow)
    app.add_typer(policy_app, name="policy")
    app.command()(leaks)
    app.add_typer(modem_app, name="modem")
