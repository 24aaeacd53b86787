"""`meterguard run`: the foreground daemon.

It runs in the network namespace it was started in, polls the kernel every `interval`
seconds on a monotonic schedule (a slow poll is followed at once by the next, never by a
burst), writes a small status file for `status` and `top`, and stops cleanly on SIGTERM or
SIGINT. Stopping leaves the table in place: the kernel keeps counting, so nothing is lost
until the next start, and interface settings are put back.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import IO, Any

from meterguard.config import Config
from meterguard.core.clock import Clock, OffsetClock, SystemClock
from meterguard.core.policy import is_background
from meterguard.kernel.links import SystemLinks
from meterguard.kernel.ruleset import render_reconcile
from meterguard.meter.meter import PollResult
from meterguard.notify.handle import NotifyWorkerError
from meterguard.system.modemmanager import ModemInfo
from meterguard.wiring import Parts, build

POLICY_COMMANDS = frozenset({"allow", "block", "background", "unset"})

log = logging.getLogger("meterguard.daemon")

STATUS_FILE = "status.json"
LEDGER_FILE = "ledger.sqlite3"
LINKS_FILE = "link-settings.json"
LOCK_FILE = "daemon.lock"
BOOT_RULESET_FILE = "boot-ruleset.nft"
PRUNE_EVERY_S = 3600.0
# After this many failed polls in a row the daemon exits, so a supervisor
# (systemd's Restart=always) starts it afresh.
MAX_CONSECUTIVE_FAILURES = 30


class AlreadyRunning(RuntimeError):
    pass


@dataclass
class StatePaths:
    state_dir: Path

    @property
    def ledger(self) -> Path:
        return self.state_dir / LEDGER_FILE

    @property
    def status(self) -> Path:
        return self.state_dir / STATUS_FILE

    @property
    def links(self) -> Path:
        return self.state_dir / LINKS_FILE

    @property
    def lock(self) -> Path:
        return self.state_dir / LOCK_FILE

    @property
    def boot_ruleset(self) -> Path:
        return self.state_dir / BOOT_RULESET_FILE


def write_status(path: Path, status: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(status, separators=(",", ":")))
    tmp.replace(path)


def read_status(state_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((state_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _lock(path: Path) -> IO[str]:
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        handle.close()
        raise AlreadyRunning(f"another meterguard daemon holds {path}") from exc
    return handle


BOOT_RULESET_EVERY_POLLS = 10
MIN_POLL_S = 0.1
WAIT_SLICE_S = 0.5
# NetworkManager, ModemManager and logind are asked this often (seconds).
AWARENESS_EVERY_S = 2.0
# The leak rules read an hour of the ledger: often enough for a leak to show within seconds.
LEAK_CHECK_EVERY_S = 15.0


class Daemon:
    def __init__(
        self, config: Config, state_dir: Path, *, config_path: Path | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.paths = StatePaths(state_dir)
        test_clock = os.environ.get("METERGUARD_TEST_CLOCK")
        self.clock = clock or (OffsetClock(test_clock) if test_clock else SystemClock())
        self._stop = threading.Event()
        self._last_aware = float("-inf")
        self._links = SystemLinks()
        self._last_leaks = float("-inf")

    def request_stop(self, signum: int = 0, _frame: FrameType | None = None) -> None:
        log.info("stopping (signal %s)", signum)
        self._stop.set()

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.now(), UTC)

    def run(self) -> None:
        self.paths.state_dir.mkdir(parents=True, exist_ok=True)
        lock = _lock(self.paths.lock)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.request_stop)
        parts = build(self.config, self.paths.state_dir, self.paths.ledger, self.paths.links,
                      self.config_path)
        started = self.clock.now()
        try:
            parts.runner.load(self.now())
            parts.meter.start(int(started))
            parts.policy.enforce(self.now())
            self._persist_ruleset(parts)
            log.info("started: metered interfaces %s, cgroup levels %d, every %.1f s, plans: %s",
                     ", ".join(parts.meter.spec().metered_interfaces), parts.meter.levels,
                     self.config.daemon.interval, ", ".join(parts.runner.plans) or "none")
            self._loop(parts, started)
        finally:
            self._persist_ruleset(parts)
            restored = parts.meter.stop()
            if restored:
                log.info("restored interface settings of %s", ", ".join(restored))
            parts.close()
            with contextlib.suppress(OSError):
                self.paths.status.unlink()
            lock.close()
            log.info("stopped")

    def _loop(self, parts: Parts, started: float) -> None:
        interval = self.config.daemon.interval
        next_tick = self.clock.monotonic()
        last_prune = 0.0
        failures = 0
        polls = 0
        while not self._stop.is_set():
            t0 = time.perf_counter()
            try:
                result = self._tick(parts, polls)
            except Exception:
                # The kernel keeps counting and enforcing whatever happens here, so a failed
                # poll loses nothing: log it and try again at the next tick rather than exit.
                log.exception("poll failed; retrying at the next interval")
                failures += 1
                if failures >= MAX_CONSECUTIVE_FAILURES:
                    raise
            else:
                failures = 0
                poll_ms = (time.perf_counter() - t0) * 1000
                self._publish(parts, result, interval, started, poll_ms)
            polls += 1
            if self.clock.monotonic() - last_prune > PRUNE_EVERY_S:
                last_prune = self.clock.monotonic()
                parts.ledger.prune(
                    int(self.clock.now()),
                    self.config.ledger.minute_retention_days,
                    bucket_retention_days=self.config.ledger.bucket_retention_days,
                )
            # Near a threshold at the current rate, poll sooner: the alert then follows its
            # crossing within a fraction of a second instead of up to a whole interval.
            soon = parts.runner.next_crossing_s
            next_tick += min(interval, max(MIN_POLL_S, soon)) if soon < interval else interval
            if next_tick < self.clock.monotonic():  # fell behind: resume from now
                next_tick = self.clock.monotonic()
            self._wait_until(parts, next_tick)

    def _wait_until(self, parts: Parts, deadline: float) -> None:
        """Sleep until the next poll, but act on new cgroups the moment they appear."""
        while not self._stop.is_set():
            remaining = deadline - self.clock.monotonic()
            if remaining <= 0:
                return
            # Short slices keep a stop request (a signal) from waiting a whole interval.
            if parts.watch.wait(min(remaining, WAIT_SLICE_S)):
                try:
                    parts.meter.sync_cgroups(int(self.clock.now()))
                    self._after_new_cgroups(parts)
                except Exception:  # the next poll retries; the kernel keeps counting
                    log.exception("handling new cgroups failed")

    def _after_new_cgroups(self, parts: Parts) -> None:
        """New cgroups may belong to blocked or allowed apps: enforce on them now."""
        parts.policy.enforce(self.now())
        parts.runner.refresh_allow_lists()

    def _aware(self, parts: Parts) -> None:
        """What NetworkManager, ModemManager and logind say now, applied."""
        if parts.awareness.refresh():
            view = parts.awareness.view
            log.info("metered interfaces now: %s", ", ".join(view.globs()) or "none")
            parts.meter.set_interfaces(view.globs())
        for hint in parts.awareness.view.hints:
            parts.events.note("hint", "info", "is this network metered?", hint, self.now(),
                              key=f"hint:{hint}")
        parts.policy.session = parts.awareness.session
        parts.policy.roaming = parts.awareness.view.roaming

    def _background(self, parts: Parts) -> Callable[[str], bool]:
        facts = parts.policy.app_facts()
        session = parts.awareness.session

        def background(app: str) -> bool:
            fact = facts.get(app)
            return fact is not None and is_background(fact.kind, fact.unit, session)

        return background

    def _commands(self, parts: Parts, now: datetime) -> None:
        for cmd in parts.ledger.pending_commands():
            try:
                if cmd.kind in POLICY_COMMANDS:
                    outcome = parts.policy.command(cmd.kind, cmd.args or {}, now)
                else:
                    outcome = parts.runner.command(cmd.kind, cmd.args or {}, now)
            except (ValueError, KeyError, TypeError) as exc:
                outcome = f"refused: {exc}"
            parts.ledger.finish_command(cmd.id, int(now.timestamp()), outcome)

    def _tick(self, parts: Parts, polls: int) -> PollResult:
        if self.clock.monotonic() - self._last_aware >= AWARENESS_EVERY_S:
            self._last_aware = self.clock.monotonic()
            self._aware(parts)
        parts.policy.enforce(self.now())
        parts.runner.sample_quotas()
        result = parts.meter.poll(int(self.clock.now()), self._background(parts))
        now = self.now()
        self._commands(parts, now)
        parts.runner.step(now, result.rows)
        aware = parts.awareness
        parts.leaks.observe(now, result.rows, aware.session, aware.view.roaming)
        if self.clock.monotonic() - self._last_leaks >= LEAK_CHECK_EVERY_S:
            self._last_leaks = self.clock.monotonic()
            parts.leaks.check(now, sorted(set(aware.view.interfaces.values())), aware.session,
                              aware.view.roaming)
        parts.events.record_deliveries()
        if parts.worker is not None and not parts.worker.running:
            # Its pending alerts were reported failed; a fresh worker takes the next ones.
            with contextlib.suppress(NotifyWorkerError):
                parts.worker.start(parts.worker.cgroup_path)
        if polls % BOOT_RULESET_EVERY_POLLS == 0:
            parts.runner.refresh_allow_lists()
            self._persist_ruleset(parts)
        return result

    def _persist_ruleset(self, parts: Parts) -> None:
        """The last good ruleset, each quota with the bytes it used, for `boot-restore`."""
        spec = parts.meter.spec()
        guards = tuple(
            replace(g, used=parts.caps.consumed(g.name) or 0) for g in spec.enforcement.guards
        )
        text = render_reconcile(replace(spec, enforcement=replace(spec.enforcement, guards=guards)))
        tmp = self.paths.boot_ruleset.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.paths.boot_ruleset)

    def _publish(
        self, parts: Parts, result: PollResult, interval: float, started: float, poll_ms: float
    ) -> None:
        rates = [
            {"network": net, "app": app, "up_bps": up / interval, "down_bps": down / interval}
            for (net, app), (up, down) in sorted(result.usage.items())
        ]
        network_of = parts.network_of
        ifaces = {i: network_of(i) for i in self._links.names() if network_of(i)}
        aware = parts.awareness
        write_status(self.paths.status, {
            "pid": os.getpid(),
            "started_at": started,
            "last_poll_at": result.at,
            "published_at": time.time(),
            "interval": interval,
            "poll_ms": round(poll_ms, 3),
            "cgroup_levels": parts.meter.levels,
            "cgroups_tracked": len(parts.meter.registry.live()),
            "interfaces": ifaces,
            "rates": rates,
            "plans": parts.runner.summaries(self.now()),
            "policy": parts.policy.status(),
            "session": {"idle": aware.session.idle, "locked": aware.session.locked,
                        "known": aware.session.known},
            "modems": [_modem_status(m) for m in aware.modems],
            "roaming": sorted(aware.view.roaming),
            "hints": list(aware.view.hints),
        })


def _modem_status(m: ModemInfo) -> dict[str, Any]:
    return {
        "path": m.path, "model": f"{m.manufacturer} {m.model}".strip(),
        "operator": m.operator_name, "operator_code": m.operator_code,
        "registration": m.registration, "roaming": m.roaming, "generation": m.generation,
        "access_technologies": list(m.access_technologies), "iccid": m.iccid, "imsi": m.imsi,
        "interfaces": list(m.net_interfaces),
        "supported_modes": [list(p) for p in m.supported_modes],
        "current_modes": list(m.current_modes),
    }


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
