"""The `meterguard` command line."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from meterguard.cli.agent import register as register_agent
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
    require_root,
)
from meterguard.cli.demo import register as register_demo
from meterguard.cli.events import register as register_events
from meterguard.cli.plan import register as register_plan
from meterguard.cli.policy import register as register_policy
from meterguard.cli.report import register as register_report

app = typer.Typer(
    name="meterguard",
    help=(
        "Stop a limited mobile-data plan from leaking away.\n\n"
        "meterguard counts every byte that crosses a metered link (an eSIM modem, a phone's "
        "hotspot, USB tethering) exactly, per app, in the kernel with nftables, and keeps a "
        "ledger of it by minute, day, week and month.\n\n"
        "Start the daemon with `meterguard run` (as root), then read usage with `status`, "
        "`report`, `top` and `apps`. `meterguard demo` shows it all in a lab of network "
        "namespaces. Every command that prints data takes --json.\n\n"
        "Files: /etc/meterguard/meterguard.toml (configuration, see docs/configuration.md), "
        "/var/lib/meterguard (ledger and state). Environment: METERGUARD_CONFIG, "
        "METERGUARD_STATE_DIR."
    ),
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.command()
def run(
    config: ConfigOpt = DEFAULT_CONFIG,
    state_dir: StateOpt = DEFAULT_STATE,
    log_level: Annotated[
        str | None, typer.Option(help="debug, info, warning or error (default: from config).")
    ] = None,
) -> None:
    """Run the daemon in the foreground until SIGTERM or SIGINT.

    It creates or reconciles the nftables table `inet meterguard` in the current network
    namespace, sets exact-counting options (gso_max_segs 1, GRO off) on metered interfaces,
    and writes usage to the ledger every `daemon.interval` seconds. On stop the interface
    options are put back; the table stays, so the kernel keeps counting and a restart loses
    nothing. Exit status: 0 on a clean stop, 2 for a bad configuration, 75 if another
    daemon already uses the state directory, 77 without root.
    """
    from meterguard.daemon import AlreadyRunning, Daemon, configure_logging

    require_root("meterguard run")
    cfg = load(config)
    configure_logging(log_level or cfg.daemon.log_level)
    try:
        Daemon(cfg, state_dir, config_path=config).run()
    except AlreadyRunning as exc:
        fail(str(exc), 75)


@app.command()
def status(
    config: ConfigOpt = DEFAULT_CONFIG,
    state_dir: StateOpt = DEFAULT_STATE,
    json_out: JsonOpt = False,
) -> None:
    """Show whether the daemon runs, what it meters, and today's totals per network."""
    from meterguard.cli.report import day_totals
    from meterguard.daemon import read_status

    cfg = load(config)
    st = read_status(state_dir)
    running = bool(st) and pid_alive(int(st.get("pid", 0))) if st else False
    data = {
        "running": running,
        "pid": st.get("pid") if st and running else None,
        "last_poll_at": st.get("last_poll_at") if st else None,
        "poll_ms": st.get("poll_ms") if st else None,
        "cgroup_levels": st.get("cgroup_levels") if st else None,
        "cgroups_tracked": st.get("cgroups_tracked") if st else None,
        "interfaces": st.get("interfaces", {}) if st else {},
        "networks": [
            {"name": n.name, "interfaces": list(n.interfaces), "metered": n.metered}
            for n in cfg.network
        ],
        "today": day_totals(cfg, state_dir),
    }
    if json_out:
        print_json(data)
        return
    from meterguard.core.units import format_bytes

    print(f"daemon: {'running, pid ' + str(data['pid']) if running else 'not running'}")
    if running and st:
        age = time.time() - float(st.get("last_poll_at", 0))
        print(f"last poll: {age:.1f} s ago, took {st.get('poll_ms')} ms; "
              f"{st.get('cgroups_tracked')} cgroups tracked")
    for net in cfg.network:
        ifs = [i for i, n in data["interfaces"].items() if n == net.name]
        kind = "metered" if net.metered else "unmetered"
        print(f"network {net.name} ({kind}): {', '.join(net.interfaces)}"
              f"{'  up: ' + ', '.join(ifs) if ifs else ''}")
    for row in data["today"]:
        print(f"today on {row['network']}: {format_bytes(row['bytes_up'])} up, "
              f"{format_bytes(row['bytes_down'])} down")


@app.command(
    "exec",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def exec_(
    ctx: typer.Context,
    app_name: Annotated[str, typer.Option("--app", help="The name usage is reported under.")],
) -> None:
    """Run a command in a cgroup of its own, so its traffic counts under --app.

    For desktops that give apps no cgroup of their own (Xfce, i3, a TTY, anything started
    from a terminal). Usage: meterguard exec --app NAME -- CMD [ARGS...]. The cgroup is
    `meterguard.slice/app-meterguard-NAME-PID.scope` below the cgroup v2 root; the command
    replaces this process, so its exit status is the command's.
    """
    from meterguard.kernel.cgroupfs import create_cgroup, find_cgroup2_mount, move_pid

    argv = list(ctx.args)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        fail("no command given: meterguard exec --app NAME -- CMD [ARGS...]", 2)
    if not app_name or "/" in app_name or not app_name.replace("-", "").replace(
        "_", ""
    ).replace(".", "").isalnum():
        fail(f"--app {app_name!r}: use letters, digits, '.', '_' and '-'", 2)
    escaped = app_name.replace("-", "\\x2d")
    unit = f"meterguard.slice/app-meterguard-{escaped}-{os.getpid()}.scope"
    try:
        mount = find_cgroup2_mount()
        create_cgroup(mount, unit)
        move_pid(mount, unit, os.getpid())
    except OSError as exc:
        fail(f"cannot create cgroup {unit}: {exc.strerror or exc} (root needed)", 77)
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        fail(f"{argv[0]}: {exc.strerror or exc}", 127)


@app.command()
def uninstall(
    state_dir: StateOpt = DEFAULT_STATE,
    json_out: JsonOpt = False,
) -> None:
    """Put back everything meterguard changed: remove its table, restore interface settings.

    Removes the nftables table `inet meterguard` (and with it every counter and cap),
    restores gso_max_segs and GRO on the interfaces the daemon tuned, and NetworkManager's
    metered flags it set. The ledger in the state directory is kept: it is the user's data.
    Stop the daemon first.
    """
    from meterguard.daemon import StatePaths, read_status
    from meterguard.kernel.links import LinkTuner, SystemLinks
    from meterguard.kernel.nft import NftError, default_backend
    from meterguard.kernel.ruleset import render_delete_table

    require_root("meterguard uninstall")
    st = read_status(state_dir)
    if st and pid_alive(int(st.get("pid", 0))):
        fail(f"the daemon still runs (pid {st['pid']}): stop it first", 1)
    try:
        default_backend().run(render_delete_table())
    except NftError as exc:
        fail(f"cannot remove the table: {exc}")
    restored = LinkTuner(SystemLinks(), StatePaths(state_dir).links).restore_all()
    flags = _restore_nm_flags(state_dir)
    if json_out:
        print_json({"table_removed": True, "interfaces_restored": restored,
                    "networkmanager_restored": flags})
    else:
        print("removed nftables table inet meterguard")
        for ifname in restored:
            print(f"restored gso_max_segs and GRO on {ifname}")
        for uuid in flags:
            print(f"restored NetworkManager's metered flag of connection {uuid}")


def _restore_nm_flags(state_dir: Path) -> list[str]:
    """Put back the metered flags the daemon set in NetworkManager (if it left any)."""
    state = state_dir / "nm-metered.json"
    if not state.exists():
        return []
    from meterguard.system.bus import SystemBusError
    from meterguard.system.networkmanager import NetworkManagerClient

    try:
        with NetworkManagerClient(state_file=state, timeout=5.0) as nm:
            return nm.restore_metered()
    except SystemBusError as exc:
        typer.echo(f"meterguard: cannot restore NetworkManager's flags: {exc}", err=True)
        return []


@app.command("boot-restore")
def boot_restore(
    state_dir: StateOpt = DEFAULT_STATE,
    json_out: JsonOpt = False,
) -> None:
    """Load the last good ruleset, caps included, if the table is missing (at boot).

    After a reboot the kernel has no meterguard table until something loads it, and
    NetworkManager may bring the modem up before the daemon starts. This loads the ruleset
    the daemon last persisted (`boot-ruleset.nft` in the state directory), with every plan's
    quota at the bytes it had used, so a paused plan stays paused. It does nothing when the
    table already exists. packaging/meterguard-boot.service runs it before
    network-pre.target.
    """
    from meterguard.daemon import StatePaths
    from meterguard.kernel.nft import NftError, default_backend, run_json
    from meterguard.kernel.ruleset import TABLE_FAMILY, TABLE_NAME

    require_root("meterguard boot-restore")
    path = StatePaths(state_dir).boot_ruleset
    nft = default_backend()
    try:
        run_json(nft, f"list table {TABLE_FAMILY} {TABLE_NAME}")
        loaded, why = False, "the table is already loaded"
    except NftError:
        try:
            script = path.read_text()
        except OSError as exc:
            fail(f"{path}: {exc.strerror or exc}: nothing to restore", 1)
        try:
            nft.run(script)
        except NftError as exc:
            fail(f"{path}: refused by nftables: {exc}", 1)
        loaded, why = True, f"loaded {path}"
    if json_out:
        print_json({"loaded": loaded, "detail": why})
    else:
        print(why)


register_report(app)
register_plan(app)
register_events(app)
register_policy(app)
register_agent(app)
register_demo(app)


def main() -> None:
    try:
        app()
    except BrokenPipeError:
        sys.stderr.close()


if __name__ == "__main__":
    main()
