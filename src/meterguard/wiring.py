"""Building the daemon's parts from the config: the one place real implementations meet.

Everything here is construction; the loop that drives the parts is `daemon.py`. Tests build
the same parts from fakes instead (see tests/unit/test_meter.py and test_plan_runner.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from meterguard.config import Config
from meterguard.core.catalogue import Catalogue, extend_shipped, read_sources
from meterguard.enforce.awareness import Awareness
from meterguard.enforce.caps import NftCapControl
from meterguard.enforce.events import LedgerEventSink
from meterguard.enforce.leaks import LeakWatcher
from meterguard.enforce.policy import PolicyRuntime
from meterguard.enforce.runner import PlanGuardRunner
from meterguard.kernel.cgroup_watch import CgroupWatch, InotifyCgroupWatch, NoCgroupWatch
from meterguard.kernel.cgroupfs import CgroupFs
from meterguard.kernel.links import LinkTuner, SystemLinks
from meterguard.kernel.nft import default_backend
from meterguard.kernel.ruleset import Enforcement
from meterguard.kernel.table_reader import NetlinkCounterSource
from meterguard.ledger.store import Ledger
from meterguard.meter.meter import Meter
from meterguard.notify.handle import NotifyWorker, NotifyWorkerError
from meterguard.system.logind import LogindClient
from meterguard.system.modemmanager import ModemManagerClient
from meterguard.system.networkmanager import NetworkManagerClient

log = logging.getLogger("meterguard.daemon")

NOTIFY_CGROUP = "meterguard.slice/meterguard-notify.scope"
# D-Bus calls are made from the poll loop: a hung daemon must not stall it for long.
DBUS_TIMEOUT_S = 2.0


@dataclass
class Parts:
    """Everything the loop drives, built once at start."""

    ledger: Ledger
    source: NetlinkCounterSource
    meter: Meter
    caps: NftCapControl
    runner: PlanGuardRunner
    policy: PolicyRuntime
    awareness: Awareness
    leaks: LeakWatcher
    events: LedgerEventSink
    worker: NotifyWorker | None
    watch: CgroupWatch

    def network_of(self, ifname: str) -> str | None:
        return self.awareness.view.network_of(ifname)

    def close(self) -> None:
        if self.worker is not None:
            self.events.record_deliveries()
            self.worker.stop()
            # The notifier's cgroup is ours alone; leave nothing behind in cgroupfs.
            cgroup = self.worker.cgroup_path
            for directory in (cgroup, cgroup.parent) if cgroup is not None else ():
                with contextlib.suppress(OSError):
                    directory.rmdir()
        self.awareness.restore()
        self.awareness.close()
        self.ledger.close()
        self.source.close()
        self.watch.close()


def _start_worker(config: Config, config_path: Path | None, mount: Path) -> NotifyWorker | None:
    if not config.alerts.apprise or config_path is None:
        return None
    worker = NotifyWorker(config_path)
    try:
        # A cgroup of its own: its traffic is let through a block or a pause, and counted.
        worker.start(mount / NOTIFY_CGROUP)
    except NotifyWorkerError as exc:
        log.error("alerts will reach the event log only: %s", exc)
        return None
    log.info("notifier started for %s", ", ".join(worker.channels))
    return worker


def load_catalogue(config: Config) -> Catalogue:
    directory = Path(config.policy.catalogue_dir)
    extra = sorted(directory.glob("*.toml")) if directory.is_dir() else []
    return extend_shipped(read_sources(extra))


def _awareness(config: Config, state_dir: Path) -> Awareness:
    """Clients of the desktop's daemons; METERGUARD_NO_DBUS=1 leaves the config alone."""
    if os.environ.get("METERGUARD_NO_DBUS") == "1":
        return Awareness(config)
    return Awareness(
        config,
        nm=NetworkManagerClient(state_file=state_dir / "nm-metered.json",
                                timeout=DBUS_TIMEOUT_S),
        mm=ModemManagerClient(timeout=DBUS_TIMEOUT_S),
        logind=LogindClient(timeout=DBUS_TIMEOUT_S),
    )


def build(config: Config, state_dir: Path, ledger_path: Path, links_path: Path,
          config_path: Path | None) -> Parts:
    awareness = _awareness(config, state_dir)
    awareness.refresh()
    view = awareness.view
    if not view.interfaces:
        log.warning("no metered network yet: nothing is counted until one appears")
    links = SystemLinks()
    source = NetlinkCounterSource(
        links, lambda i: awareness.view.network_of(i) is not None
    )
    ledger = Ledger.open(ledger_path)
    tree = CgroupFs()
    worker = _start_worker(config, config_path, tree.mount)
    nft = default_backend()
    caps = NftCapControl(nft)
    events = LedgerEventSink(ledger, worker)
    box: list[Meter] = []
    runner = PlanGuardRunner(
        config, ledger, caps, events,
        marks_of_apps=lambda apps: box[0].registry.marks_of_apps(apps),
        network=awareness,
    )
    roaming_guards = {n.name: n.roaming_guard for n in config.network}
    catalogue = load_catalogue(config)
    policy = PolicyRuntime(
        config.policy.to_policy(catalogue.categories), catalogue, ledger, caps, events,
        live=lambda: box[0].registry.live(),
        marks_of_apps=lambda apps: box[0].registry.marks_of_apps(apps),
        roaming_guard_of=lambda net: roaming_guards.get(net, "off"),
    )

    def enforcement() -> Enforcement:
        notifier = box[0].registry.mark_of_path(NOTIFY_CGROUP) if worker else None
        return Enforcement(
            guards=runner.guard_specs(), block_apps=True, allow_only=policy.allow_only,
            exempt_marks=(notifier,) if notifier else (),
            tunnel_ports=awareness.view.tunnel_ports,
        )

    def rebuilt() -> None:
        runner.table_rebuilt()
        policy.forget_written()

    meter = Meter(
        nft=nft, source=source, marks=source, tree=tree, links=links,
        tuner=LinkTuner(links, links_path), ledger=ledger,
        metered_globs=view.globs() or ("meterguard-none",), network_of=awareness.view_network,
        enforcement=enforcement, on_rebuild=rebuilt, is_tunnel=awareness.view_is_tunnel,
    )
    box.append(meter)
    try:
        watch: CgroupWatch = InotifyCgroupWatch(tree.mount)
        meter.cgroups_watched = True
    except OSError as exc:
        log.warning("no inotify on cgroupfs (%s): new cgroups are seen at each poll", exc)
        watch = NoCgroupWatch()
    leaks = LeakWatcher(ledger, events, config.policy.background_limit_per_hour,
                        frozenset(config.policy.allow))
    return Parts(ledger, source, meter, caps, runner, policy, awareness, leaks, events, worker,
                 watch)
