"""`meterguard events`: the daemon's structured event log (alerts, pauses, resumes ...)."""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from meterguard.cli.common import DEFAULT_STATE, JsonOpt, StateOpt, fail, print_json
from meterguard.ledger.events import EventRow
from meterguard.ledger.model import LedgerError
from meterguard.ledger.store import Ledger

# The daemon's ledger file name in the state dir (daemon.LEDGER_FILE; not imported from
# there because the daemon module pulls in the kernel and meter layers).
LEDGER_FILE = "ledger.sqlite3"
FOLLOW_INTERVAL_S = 0.5
_PAGE = 1000


def _open(path: Path) -> Ledger | None:
    if not path.exists():
        return None
    try:
        return Ledger.open(path, readonly=True)
    except LedgerError as exc:
        fail(str(exc))


def format_event(event: EventRow) -> str:
    """Text form: a header line, the body indented, then where it was delivered."""
    when = datetime.fromtimestamp(event.at).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    lines = [f"#{event.id}  {when}  {event.level:<8} {event.kind:<8} {event.title}"]
    indent = " " * (len(str(event.id)) + 3)
    if event.body:
        lines.append(indent + event.body)
    if event.delivered:
        parts = [
            f"{channel} ok" if st.ok else f"{channel} FAILED ({st.detail or 'no reason given'})"
            for channel, st in sorted(event.delivered.items())
        ]
        lines.append(indent + "delivered: " + "; ".join(parts))
    return "\n".join(lines)


def _emit(event: EventRow, json_lines: bool) -> None:
    if json_lines:
        sys.stdout.write(json.dumps(event.as_dict(), ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(format_event(event) + "\n")


def _follow(path: Path, since: int, json_out: bool) -> None:
    # Poll rather than watch the file: WAL commits land in the -wal file, and a read-only
    # reader sees each new commit at its next query, so a cheap indexed query every half
    # second is both simple and reliable.
    last = since
    ledger: Ledger | None = None
    try:
        while True:
            if ledger is None:
                ledger = _open(path)
            if ledger is not None:
                while events := ledger.events(since_id=last, limit=_PAGE):
                    for event in events:
                        _emit(event, json_out)
                        last = event.id
                sys.stdout.flush()
            time.sleep(FOLLOW_INTERVAL_S)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how --follow ends; not an error
    except BrokenPipeError:
        # The reader went away (`| head`). Point stdout at /dev/null so that the flush at
        # exit does not fail on the same pipe again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        if ledger is not None:
            ledger.close()


def events(
    state_dir: StateOpt = DEFAULT_STATE,
    json_out: JsonOpt = False,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow", "-f",
            help="Keep printing new events as the daemon logs them, until Ctrl-C.",
        ),
    ] = False,
    since: Annotated[
        int,
        typer.Option("--since", metavar="ID", min=0, help="Only events with an id above ID."),
    ] = 0,
) -> None:
    """List the event log: threshold and cap alerts, pauses, resumes, and their delivery.

    Each threshold alert appears once per cycle, with where it was delivered (apprise URLs
    without their secrets) and why a delivery failed. With --json: {"events": [{"id", "at",
    "kind", "level", "key", "title", "body", "data", "delivered": {CHANNEL: {"ok",
    "detail", "at"}}}], "last_id"}. With --json --follow: one such event object per line.
    Pass the last id seen as --since to continue where a previous listing stopped.
    """
    path = state_dir / LEDGER_FILE
    if follow:
        _follow(path, since, json_out)
        return
    ledger = _open(path)
    rows: list[EventRow] = []
    if ledger is not None:
        with ledger:
            last = since
            while page := ledger.events(since_id=last, limit=_PAGE):
                rows.extend(page)
                last = page[-1].id
    if json_out:
        last_id = rows[-1].id if rows else since
        print_json({"events": [e.as_dict() for e in rows], "last_id": last_id})
        return
    if not rows:
        typer.echo("no events" + (f" after #{since}" if since else ""), err=True)
    for event in rows:
        _emit(event, False)


def register(app: typer.Typer) -> None:
    app.command()(events)
