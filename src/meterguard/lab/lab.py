"""`Lab`: the test bench.  Real kernel, no real carrier.

    with Lab(prefix="mgl-ab12cd", rate_mbit=None) as lab:
        lab.start_servers([5001])
        firefox = lab.app("firefox", 5001)
        before = lab.carrier.read()
        firefox.download(2_000_000)
        billed = (lab.carrier.read() - before).port(5001)

Builds `<prefix>-inet`, `<prefix>-carrier` and `<prefix>-host` (see
topology.py) and a simulated desktop under `<cgroup2 mount>/<prefix>/`.
Teardown always removes what this lab created, also after a build step failed
halfway, and is idempotent.
"""

from __future__ import annotations

import atexit
import functools
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import meterguard
from meterguard.lab import stale
from meterguard.lab.apps import LabApp
from meterguard.lab.carrier import Carrier
from meterguard.lab.cgroups import (
    LabCgroup,
    cgroup2_mount,
    make_cgroup,
    remove_subtree,
    subtree_pids,
)
from meterguard.lab.netns import (
    LabError,
    check_prefix,
    ns_add,
    ns_argv,
    ns_delete,
    ns_exists,
    ns_file,
    ns_pids,
    run,
    sysctl,
)
from meterguard.lab.procs import LabProcesses, Stream, become_subreaper, kill_pids
from meterguard.lab.servers import InternetServers
from meterguard.lab.stale import STATE_BASE
from meterguard.lab.topology import (
    CARRIER_HOST_IF,
    CARRIER_INET_IF,
    CORE_LINK,
    HOST_WLAN,
    HOST_WWAN,
    SERVER_WLAN,
    SERVER_WWAN,
    WLAN_LINK,
    WWAN_LINK,
    Family,
    LinkStats,
    Topology,
    Via,
)
from meterguard.lab.traffic_server import PortStats

ROLES = ("inet", "carrier", "host")
# Names as on a systemd desktop, under the lab's own subtree.
USER_APP_SLICE = "user.slice/user-1000.slice/user@1000.service/app.slice"
SYSTEM_SLICE = "system.slice"
DAEMON_UNIT = f"{SYSTEM_SLICE}/meterguard.service"
_UNIT_COMPONENT = re.compile(r"^[A-Za-z0-9@_.:\\-]+$")


@dataclass(frozen=True)
class PingResult:
    transmitted: int
    received: int
    size: int
    family: Family

    @property
    def ip_bytes_each(self) -> int:
        """IP bytes of one echo request or reply: payload + ICMP header + IP header."""
        return self.size + 8 + (20 if self.family == 4 else 40)


def child_env() -> dict[str, str]:
    """Environment for lab processes: `python -m meterguard...` must import this tree."""
    env = dict(os.environ)
    src = str(Path(meterguard.__file__).resolve().parents[1])
    env["PYTHONPATH"] = src + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class Lab:
    """Three namespaces, a carrier meter, servers and a simulated desktop in cgroup v2."""

    def __init__(
        self, prefix: str, rate_mbit: int | None = None, *, offloads: bool = False
    ) -> None:
        self.prefix = check_prefix(prefix)
        become_subreaper()  # so that orphans of a crashed lab can be reaped and removed
        self.rate_mbit = rate_mbit
        self.topology = Topology(prefix, offloads)
        self.ns_inet = self.topology.ns["inet"]
        self.ns_carrier = self.topology.ns["carrier"]
        self.ns_host = self.topology.ns["host"]
        self.cgroup_mount = cgroup2_mount()
        self.cgroup_root = LabCgroup(self.cgroup_mount / prefix, self.cgroup_mount)
        self.daemon_cgroup = LabCgroup(self.cgroup_root.path / DAEMON_UNIT, self.cgroup_mount)
        self.state_dir = STATE_BASE / prefix
        self.carrier = Carrier(self.ns_carrier, CARRIER_HOST_IF, CARRIER_INET_IF)
        self._procs = LabProcesses()
        self._created_ns: list[str] = []
        self._created_cgroups = False
        self._created_state = False
        self.servers = InternetServers(
            self.state_dir,
            lambda argv, log: self.popen(self.ns_cmd("inet", argv), stdout=log, stderr=log),
        )
        self._in_teardown = False
        self.built = False

    # --- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        self.build()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # When the body failed, its exception matters more than a teardown problem.
        self.teardown(raise_errors=exc is None)

    def build(self) -> None:
        if self.built:
            return
        self._refuse_collisions()
        atexit.register(self.teardown)
        try:
            self.state_dir.mkdir(parents=True)
            self._created_state = True
            stale.write_owner(self.state_dir)
            make_cgroup(self.cgroup_root.path)
            self._created_cgroups = True
            make_cgroup(self.daemon_cgroup.path)
            for role in ROLES:
                ns_add(self.topology.ns[role])
                self._created_ns.append(self.topology.ns[role])
                self.topology.prepare_namespace(role)
            self.topology.add_link(WWAN_LINK, self.rate_mbit)
            self.topology.add_link(CORE_LINK)
            self.topology.add_link(WLAN_LINK)
            self.topology.add_server_addresses()
            self.topology.add_host_routes()
            self.topology.add_core_routes()
            self.topology.enable_forwarding()
            self.carrier.install()
            self.built = True
        except BaseException:
            self.teardown(raise_errors=False)
            raise

    def _refuse_collisions(self) -> None:
        if os.geteuid() != 0:
            raise LabError("the lab needs root (network namespaces, cgroups, nftables)")
        taken = [str(ns_file(n)) for n in self.topology.ns.values() if ns_exists(n)]
        taken += [str(p) for p in (self.cgroup_root.path, self.state_dir) if p.exists()]
        if taken:
            raise LabError(
                f"lab prefix {self.prefix!r} is in use ({', '.join(taken)}); "
                f"if a crashed run left it, call Lab.cleanup_stale({self.prefix!r})"
            )

    def teardown(self, raise_errors: bool = True) -> None:
        """Remove everything this lab created.  Idempotent; safe from atexit.

        Order: stop the process groups the lab started; kill (by PID) anything
        still inside the lab's namespaces or cgroups; delete the namespaces;
        remove the cgroups deepest first; remove the state directory.  Every
        step runs even if an earlier one failed.
        """
        if self._in_teardown:  # re-entered from a signal handler or atexit
            return
        self._in_teardown = True
        errors: list[str] = []

        def step(what: str, fn: Callable[[], object]) -> None:
            try:
                fn()
            except Exception as exc:
                errors.append(f"{what}: {exc}")

        try:
            step("stop processes", self._procs.stop_all)
            step("kill leftovers", self._kill_leftovers)
            for name in list(self._created_ns):
                step(f"delete netns {name}", functools.partial(ns_delete, name))
            self._created_ns = [n for n in self._created_ns if ns_exists(n)]
            if self._created_cgroups:
                step("remove cgroups", lambda: remove_subtree(self.cgroup_root.path))
                self._created_cgroups = self.cgroup_root.path.exists()
            if self._created_state:
                step("remove state dir", lambda: shutil.rmtree(self.state_dir))
                self._created_state = self.state_dir.exists()
            self.servers.forget()
            self.built = False
        finally:
            self._in_teardown = False
        if not (self._created_ns or self._created_cgroups or self._created_state):
            atexit.unregister(self.teardown)
        if errors and raise_errors:
            raise LabError("lab teardown incomplete: " + "; ".join(errors))

    def _kill_leftovers(self) -> None:
        pids = [pid for name in self._created_ns for pid in ns_pids(name)]
        if self._created_cgroups:
            pids += subtree_pids(self.cgroup_root.path)
        still = kill_pids(pids)
        if still:
            raise LabError(f"processes survived SIGKILL: {still}")

    # Remove leftovers of a crashed lab by prefix, or of every lab whose owner died.
    cleanup_stale = staticmethod(stale.cleanup_stale)
    cleanup_orphans = staticmethod(stale.cleanup_orphans)

    # --- processes ---------------------------------------------------------------------------

    def ns_cmd(
        self, role: str, argv: Sequence[str], cgroup: LabApp | LabCgroup | None = None
    ) -> list[str]:
        """Argv that runs `argv` in namespace role ("host"|"carrier"|"inet"), in a cgroup.

        The process writes its own pid into cgroup.procs first and only then
        enters the namespace with nsenter (`ip netns exec` would remount /sys
        and hide cgroupfs).  sh exec's nsenter, which exec's argv: one pid.
        """
        inner = ns_argv(self.topology.ns[role], argv)
        if cgroup is None:
            return inner
        group = cgroup.cgroup if isinstance(cgroup, LabApp) else cgroup
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(group.procs_file), *inner]

    def host_cmd(self, argv: Sequence[str], cgroup: LabApp | LabCgroup | None = None) -> list[str]:
        """Argv for the host namespace; cgroup None means the daemon's cgroup."""
        return self.ns_cmd("host", argv, cgroup if cgroup is not None else self.daemon_cgroup)

    def popen(
        self,
        argv: Sequence[str],
        *,
        stdout: Stream = None,
        stderr: Stream = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[str]:
        """Start argv as a tracked process (own process group, killed at teardown)."""
        return self._procs.popen(argv, env=env or child_env(), stdout=stdout, stderr=stderr)

    def host_popen(
        self,
        argv: Sequence[str],
        cgroup: LabApp | LabCgroup | None = None,
        *,
        stdout: Stream = None,
        stderr: Stream = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[str]:
        """popen(host_cmd(argv, cgroup)): e.g. the daemon, in the daemon cgroup by default."""
        return self.popen(self.host_cmd(argv, cgroup), stdout=stdout, stderr=stderr, env=env)

    # --- cgroups and apps --------------------------------------------------------------------

    def cgroup(self, rel_path: str) -> LabCgroup:
        """Create (mkdir -p) a cgroup under the lab's root, e.g. 'system.slice/x.service'."""
        parts = [p for p in rel_path.strip("/").split("/") if p]
        bad = [p for p in parts if p in (".", "..") or p.startswith("cgroup.")]
        if not parts or bad or not all(_UNIT_COMPONENT.fullmatch(p) for p in parts):
            raise LabError(f"bad cgroup path {rel_path!r}")
        group = LabCgroup(self.cgroup_root.path.joinpath(*parts), self.cgroup_mount)
        make_cgroup(group.path)
        return group

    def app(self, name_or_unit_path: str, port: int) -> LabApp:
        """A simulated app with its own cgroup and server port.

        "firefox"            -> <user app.slice>/app-gnome-firefox-<port>.scope
        "x.scope"            -> <user app.slice>/x.scope
        "packagekit.service" -> system.slice/packagekit.service
        "a/b/c.scope"        -> that path under the lab root
        """
        if not 0 < port < 65536:
            raise LabError(f"bad port {port}")
        spec = name_or_unit_path
        if "/" in spec:
            rel = spec
        elif spec.endswith(".service"):
            rel = f"{SYSTEM_SLICE}/{spec}"
        elif spec.endswith(".scope"):
            rel = f"{USER_APP_SLICE}/{spec}"
        else:
            rel = f"{USER_APP_SLICE}/app-gnome-{spec}-{port}.scope"
        group = self.cgroup(rel)
        name = spec if "/" not in spec and "." not in spec else group.unit
        return LabApp(self, name, port, group)

    # --- servers -----------------------------------------------------------------------------

    @property
    def control_socket(self) -> Path:
        """UNIX socket of the servers' STATS/QUIT control channel (outside every netns)."""
        return self.servers.control_socket

    def start_servers(self, ports: Iterable[int], timeout: float = 20.0) -> None:
        """(Re)start the one internet server process so it serves these ports too."""
        self.servers.start(ports, timeout)

    def check_served(self, port: int) -> None:
        self.servers.check_served(port)

    def server_stats(self) -> dict[int, PortStats]:
        """Payload the servers themselves saw per port (TCP sent/received, UDP datagrams)."""
        return self.servers.stats()

    def udp_received(self, port: int) -> tuple[int, int]:
        """(datagrams, payload bytes) the UDP sink on `port` received."""
        stats = self.servers.stats()[port]
        return stats.udp_datagrams, stats.udp_bytes

    # --- addresses, measurement, link events -------------------------------------------------

    def server_addr(self, via: Via = "wwan", family: Family = 4) -> str:
        """The internet server address a host client uses to go out by wwan0 or by wlan0."""
        return (SERVER_WWAN if via == "wwan" else SERVER_WLAN)[family]

    def host_addr(self, via: Via = "wwan", family: Family = 4) -> str:
        end = WWAN_LINK.a if via == "wwan" else WLAN_LINK.a
        return end.v4 if family == 4 else end.v6

    @property
    def metered_ifname(self) -> str:
        return HOST_WWAN

    @property
    def wifi_ifname(self) -> str:
        return HOST_WLAN

    def link_stats(self, ifname: str = HOST_WWAN, role: str = "host") -> LinkStats:
        """Interface counters read inside the namespace (sysfs here shows the root ns)."""
        return self.topology.link_stats(role, ifname)

    def ping_host_from_inet(
        self, count: int, size: int = 56, family: Family = 4, interval: float = 0.05
    ) -> PingResult:
        """ICMP echo from an internet server address to the host's wwan0 address.

        The host answers from the kernel: traffic with no socket on the host.
        """
        argv = [
            "ping", f"-{family}", "-n", "-q", "-c", str(count), "-s", str(size),
            "-i", str(interval), "-W", "2", "-w", str(int(count * interval + 10)),
            "-I", self.server_addr("wwan", family), self.host_addr("wwan", family),
        ]  # fmt: skip
        out = run(ns_argv(self.ns_inet, argv), check=False, timeout=count * interval + 30).stdout
        found = re.search(r"(\d+) packets transmitted, (\d+) (?:packets )?received", out)
        if not found:
            raise LabError(f"unexpected ping output: {out!r}")
        return PingResult(int(found.group(1)), int(found.group(2)), size, family)

    def recreate_wwan(self) -> None:
        """Delete the host's wwan0 veth pair and build it again (interface counters restart).

        The carrier already forwards, and a new interface would copy
        forwarding=1 from the namespace default and join the all-routers
        groups before `multicast off` could be set (MLD reports).  So the
        default is cleared while the link is created and forwarding is set on
        the new interface afterwards.
        """
        self.topology.delete_wwan()
        sysctl(self.ns_carrier, {"net.ipv6.conf.default.forwarding": 0})
        self.topology.add_link(WWAN_LINK, self.rate_mbit)
        sysctl(
            self.ns_carrier,
            {
                f"net.ipv6.conf.{CARRIER_HOST_IF}.forwarding": 1,
                "net.ipv6.conf.default.forwarding": 1,
            },
        )
        self.topology.add_host_routes()
