"""The lab's host under guard: a config, the real daemon in the host namespace, its reports.

Tests, the demo and the benchmarks all drive meterguard the way a user would: the daemon is
`python -m meterguard.cli.main run` started inside the host namespace (in the lab's
`meterguard.service` cgroup), and usage is read back through `meterguard report --json`.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meterguard.lab.lab import Lab, child_env
from meterguard.lab.netns import LabError, ns_argv

CLI = [sys.executable, "-m", "meterguard.cli.main"]

Usage = dict[tuple[str, str], tuple[int, int]]  # (network, app) -> (bytes_up, bytes_down)


def lab_config(
    lab: Lab, interval: float = 1.0, extra: str = "", plan: str | None = None,
    policy: str | None = None, network_extra: str = "",
) -> str:
    """The host's config: `esim` is wwan0 (metered, on `plan` if given), `wifi` is wlan0.

    Unless `policy` gives a `[policy]` table, the catalogue's default profile is off, so a
    test about counting is not also a test of which apps the profile blocks.
    """
    plan_line = f"plan = \"{plan}\"\n" if plan else ""
    policy = policy if policy is not None else "[policy]\ndefault_profile = false\n\n"
    return (
        f"[daemon]\ninterval = {interval}\nlog_level = \"debug\"\n\n{policy}"
        f"[[network]]\nname = \"esim\"\ninterfaces = [\"{lab.metered_ifname}\"]\n"
        f"metered = true\n{plan_line}{network_extra}\n"
        f"[[network]]\nname = \"wifi\"\ninterfaces = [\"{lab.wifi_ifname}\"]\nmetered = false\n"
        f"{extra}"
    )


class GuardedHost:
    def __init__(
        self, lab: Lab, state_dir: Path, *, interval: float = 1.0, extra: str = "",
        plan: str | None = None, policy: str | None = None,
        system_bus: str | None = None, network_extra: str = "",
    ) -> None:
        self.lab = lab
        self.state_dir = state_dir
        self.config = state_dir / "meterguard.toml"
        self.log = state_dir / "daemon.log"
        # The daemon's wall clock is moved by the seconds written here (a test hook).
        self.clock_file = state_dir / "clock-offset"
        state_dir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(lab_config(lab, interval, extra, plan, policy, network_extra))
        self.daemon: subprocess.Popen[str] | None = None
        # The D-Bus system bus the daemon asks NetworkManager, ModemManager and logind on:
        # a test's private bus with mocks, or none at all, so that the machine's own
        # daemons (which know nothing of the lab's interfaces) never leak into a test.
        self.system_bus = system_bus

    # --- the daemon ----------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> subprocess.Popen[str]:
        """Start the daemon in the host namespace and wait for its first poll after start."""
        status = self.state_dir / "status.json"
        status.unlink(missing_ok=True)
        argv = [*CLI, "run", "--config", str(self.config), "--state-dir", str(self.state_dir)]
        env = {**child_env(), "METERGUARD_TEST_CLOCK": str(self.clock_file)}
        if self.system_bus is None:
            env["METERGUARD_NO_DBUS"] = "1"
        else:
            env["DBUS_SYSTEM_BUS_ADDRESS"] = self.system_bus
        with self.log.open("a") as log:
            self.daemon = self.lab.host_popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=env
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.daemon.poll() is not None:
                raise LabError(f"the daemon exited with {self.daemon.returncode}:\n"
                               f"{self.log.read_text()[-3000:]}")
            if status.exists():
                return self.daemon
            time.sleep(0.05)
        raise LabError(f"the daemon did not poll within {timeout} s:\n{self.log.read_text()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Signal the daemon (by PID, it is ours) and wait for it to exit."""
        if self.daemon is None:
            return 0
        proc, self.daemon = self.daemon, None
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
            raise LabError("the daemon did not stop on its signal") from None

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)

    # --- reading it back ---------------------------------------------------------------

    def cli(self, *args: str) -> dict[str, Any]:
        argv = [*CLI, *args, "--state-dir", str(self.state_dir), "--json"]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False,
                              env={**child_env(), "METERGUARD_NO_DBUS": "1"})
        if proc.returncode != 0:
            raise LabError(f"{' '.join(args)} failed: {proc.stderr}")
        data: dict[str, Any] = json.loads(proc.stdout)
        return data

    def move_clock(self, seconds: float) -> None:
        """Set the daemon's clock to the real time plus `seconds` (read at each poll)."""
        self.clock_file.write_text(f"{seconds}\n")

    def status(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads((self.state_dir / "status.json").read_text())
        except (OSError, ValueError):
            return {}
        return data

    def plans(self) -> list[dict[str, Any]]:
        """The daemon's own view of its plans (on its clock), from its last poll."""
        plans: list[dict[str, Any]] = self.status().get("plans", [])
        return plans

    def wait_until_plan(
        self, condition: Callable[[dict[str, Any]], bool], timeout: float = 20.0
    ) -> dict[str, Any]:
        """Poll the (first) plan until `condition` holds or the deadline passes; return it."""
        deadline = time.monotonic() + timeout
        while True:
            plans = self.plans()
            if plans and condition(plans[0]):
                return plans[0]
            if time.monotonic() > deadline:
                return plans[0] if plans else {}
            time.sleep(0.1)

    def wait_until_polls(self, n: int, timeout: float = 30.0) -> None:
        """Wait until the daemon has finished `n` more polls."""
        deadline = time.monotonic() + timeout
        seen: set[float] = set()
        while len(seen) <= n and time.monotonic() < deadline:
            seen.add(float(self.status().get("published_at", 0)))
            time.sleep(0.05)

    def events(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = self.cli("events")["events"]
        return events

    def report(self, by: str = "app", period: str = "day") -> dict[str, Any]:
        return self.cli("report", "--config", str(self.config), "--period", period, "--by", by)

    def usage(self) -> Usage:
        return {
            (row["network"], row["app"]): (int(row["bytes_up"]), int(row["bytes_down"]))
            for row in self.report()["rows"]
        }

    def network_total(self, network: str = "esim") -> tuple[int, int]:
        rows = [v for (net, _), v in self.usage().items() if net == network]
        return sum(u for u, _ in rows), sum(d for _, d in rows)

    def wait_until(
        self, condition: Callable[[Usage], bool], timeout: float = 15.0
    ) -> Usage:
        """Poll the report until `condition` holds or the deadline passes; return the last."""
        deadline = time.monotonic() + timeout
        usage = self.usage()
        while not condition(usage) and time.monotonic() < deadline:
            time.sleep(0.25)
            usage = self.usage()
        return usage

    def nft(self, *args: str) -> str:
        proc = subprocess.run(
            ns_argv(self.lab.ns_host, ["nft", *args]),
            capture_output=True, text=True, timeout=60, check=False,
        )
        if proc.returncode != 0:
            raise LabError(f"nft {' '.join(args)}: {proc.stderr}")
        return proc.stdout

    def ruleset_objects(self) -> list[dict[str, Any]]:
        """Every object of the host's ruleset as nft JSON, terse (no set elements)."""
        doc = json.loads(self.nft("-j", "-t", "list", "ruleset"))
        return [obj for obj in doc["nftables"] if "metainfo" not in obj]

    def rules(self) -> list[str]:
        """Every rule of the host's ruleset as `table/chain: expression`, in order."""
        return [
            f"{o['rule']['table']}/{o['rule']['chain']}: {json.dumps(o['rule']['expr'])}"
            for o in self.ruleset_objects() if "rule" in o
        ]
