"""What every command shares: the --config and --state-dir options, errors, output."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import typer

from meterguard.config import (
    DEFAULT_CONFIG_PATH,
    DEFAULT_STATE_DIR,
    Config,
    ConfigError,
    load_config,
)
from meterguard.ledger.store import Ledger

ConfigOpt = Annotated[
    Path,
    typer.Option(
        "--config", "-c", envvar="METERGUARD_CONFIG", metavar="PATH",
        help="Configuration file (TOML).",
    ),
]
StateOpt = Annotated[
    Path,
    typer.Option(
        "--state-dir", envvar="METERGUARD_STATE_DIR", metavar="DIR",
        help="Where the ledger, the status file and saved interface settings live.",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")]

DEFAULT_CONFIG = DEFAULT_CONFIG_PATH
DEFAULT_STATE = DEFAULT_STATE_DIR


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"meterguard: {message}", err=True)
    raise typer.Exit(code)


def load(config_path: Path) -> Config:
    """Load the config; only the default path may be missing (then defaults apply)."""
    try:
        return load_config(config_path, missing_ok=config_path == DEFAULT_CONFIG_PATH)
    except ConfigError as exc:
        fail(str(exc), 2)
    except OSError as exc:
        fail(f"{config_path}: {exc.strerror or exc}", 2)


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        fail(f"{what} needs root (it changes nftables and interface settings)", 77)


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")


def local_zone_name() -> str:
    """The system's IANA zone from /etc/localtime or $TZ, UTC if neither names one."""
    tz = os.environ.get("TZ", "").lstrip(":")
    if tz:
        return tz
    try:
        target = os.readlink("/etc/localtime")
        return target.split("zoneinfo/", 1)[1]
    except (OSError, IndexError):
        return "UTC"


def report_zone(config: Config, override: str | None) -> ZoneInfo:
    """The zone reports use: --tz, else the first network that names one, else the system's."""
    name = override or next(
        (n.time_zone for n in config.network if n.time_zone), None
    ) or local_zone_name()
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        fail(f"unknown time zone {name!r}", 2)


def queue_command(state_dir: Path, kind: str, args: dict[str, Any], json_out: bool) -> None:
    """Queue a command for the daemon in the ledger and wait (5 s at most) for its result."""
    require_root(f"meterguard {kind}")
    path = state_dir / "ledger.sqlite3"
    if not path.exists():
        fail(f"{path} does not exist: start the daemon first")
    with Ledger.open(path) as ledger:
        command_id = ledger.enqueue_command(int(time.time()), kind, args)
    deadline = time.monotonic() + 5.0
    row = None
    while time.monotonic() < deadline:
        with Ledger.open(path, readonly=True) as ledger:
            row = ledger.command(command_id)
        if row is not None and row.done_at is not None:
            break
        time.sleep(0.1)
    done = row is not None and row.done_at is not None
    result = row.result if done and row is not None else None
    if json_out:
        print_json({"command": command_id, "done": done, "result": result})
    elif done:
        print(result)
    else:
        print(f"queued as command {command_id}: the daemon applies it when it runs")
