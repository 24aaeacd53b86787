"""The desktop agent: follows the daemon's event log and shows new alerts on the desktop.

It runs as the desktop user (the daemon runs as root, outside any desktop session, so it
cannot reach a session bus itself) and only ever reads the ledger. The id of the last event
it handled is kept in `$XDG_STATE_HOME/meterguard/agent.json`, written after every shown
alert, so a restarted agent (a new login, a crash) never shows an alert twice. Event ids
only grow (AUTOINCREMENT), which is what makes "id > last" a complete follow.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from meterguard.ledger.model import LedgerError
from meterguard.ledger.store import Ledger

from .desktop import URGENCY, DesktopNotifier, DesktopNotifyError

log = logging.getLogger("meterguard.agent")

STATE_FILE = "agent.json"
DEFAULT_KINDS = frozenset({"alert"})
# With no saved position (first run, or the ledger was replaced), alerts from the last day
# are still shown: a user who logs in just after the cap was hit should learn of it, but a
# fresh install must not replay a year of old alerts.
FIRST_RUN_WINDOW_S = 86_400.0
_BATCH = 200


def default_state_file() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "meterguard" / STATE_FILE


class DesktopAgent:
    """Shows each new event of `kinds` from the ledger at `ledger_path` exactly once."""

    def __init__(
        self,
        ledger_path: Path,
        notifier: DesktopNotifier,
        *,
        state_file: Path | None = None,
        kinds: frozenset[str] = DEFAULT_KINDS,
        interval: float = 0.5,
        first_run_window: float = FIRST_RUN_WINDOW_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ledger_path = Path(ledger_path)
        self.notifier = notifier
        self.state_file = state_file or default_state_file()
        self.kinds = kinds
        self.interval = interval
        self.first_run_window = first_run_window
        self.clock = clock
        self._ledger: Ledger | None = None
        self._last: int | None = None
        # Events before this unix time are skipped, not shown (set on a first run only).
        self._floor: float | None = None
        self._waiting_reason: str | None = None
        self._notify_failing = False

    # -- position -------------------------------------------------------------------------

    def _ledger_id(self) -> str:
        return str(self.ledger_path.resolve())

    def _load_position(self) -> int | None:
        try:
            state = json.loads(self.state_file.read_text())
            last = state["last_event_id"]
            # A position in another state dir's ledger means nothing for this one.
            if state.get("ledger") == self._ledger_id() and isinstance(last, int) and last >= 0:
                return last
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return None

    def _save_position(self) -> None:
        assert self._last is not None
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_name(self.state_file.name + ".tmp")
        tmp.write_text(json.dumps({"ledger": self._ledger_id(), "last_event_id": self._last}))
        # rename is atomic: a crash leaves the old position or the new one, never half a file.
        os.replace(tmp, self.state_file)

    def _start_position(self, newest: int) -> None:
        saved = self._load_position()
        # A saved id past the newest event means the ledger was replaced: start afresh.
        if saved is not None and saved <= newest:
            self._last, self._floor = saved, None
        else:
            self._last, self._floor = 0, self.clock() - self.first_run_window

    # -- ledger ---------------------------------------------------------------------------

    def _open(self) -> Ledger | None:
        if self._ledger is None:
            try:
                self._ledger = Ledger.open(self.ledger_path, readonly=True)
            except LedgerError as exc:
                # No ledger yet, or the daemon has not migrated it: wait, saying so once.
                if str(exc) != self._waiting_reason:
                    log.warning("waiting for the ledger: %s", exc)
                    self._waiting_reason = str(exc)
                return None
            self._waiting_reason = None
        return self._ledger

    @property
    def notify_failing(self) -> bool:
        """Whether the last attempt to show an alert failed (it will be retried)."""
        return self._notify_failing

    def close(self) -> None:
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None

    # -- following ------------------------------------------------------------------------

    async def step(self) -> int:
        """Show the events that arrived since the last step; return how many were shown."""
        ledger = self._open()
        if ledger is None:
            return 0
        try:
            return await self._follow(ledger)
        except (sqlite3.Error, LedgerError) as exc:
            log.warning("reading the ledger failed (%s); reopening it", exc)
            self.close()
            return 0

    async def _follow(self, ledger: Ledger) -> int:
        newest = ledger.last_event_id()
        if self._last is None or self._last > newest:
            self._start_position(newest)
        assert self._last is not None
        shown = 0
        moved = False
        while events := ledger.events(since_id=self._last, limit=_BATCH):
            for event in events:
                if event.kind in self.kinds and (self._floor is None or event.at >= self._floor):
                    try:
                        await self.notifier.show(
                            event.title, event.body, urgency=URGENCY[event.level]
                        )
                    except DesktopNotifyError as exc:
                        # Keep the position before this event: it is shown once the server
                        # is back. Say so once per outage, not every half second.
                        if not self._notify_failing:
                            log.warning("cannot show alerts on the desktop: %s", exc)
                            self._notify_failing = True
                        if moved:
                            self._save_position()
                        return shown
                    self._notify_failing = False
                    shown += 1
                    self._last = event.id
                    self._save_position()
                    moved = False
                else:
                    self._last = event.id
                    moved = True
            if len(events) < _BATCH:
                break
        if moved:
            self._save_position()
        return shown

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Follow until `stop` is set (or the task is cancelled), polling every `interval`."""
        stop = stop or asyncio.Event()
        try:
            while not stop.is_set():
                await self.step()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.interval)
        finally:
            await self.notifier.close()
            self.close()
