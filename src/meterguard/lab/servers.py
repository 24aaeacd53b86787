"""The one internet server process of a lab: start, restart with more ports, stop, query."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO

from meterguard.lab import traffic_server
from meterguard.lab.netns import LabError
from meterguard.lab.traffic_server import PortStats

# Servers end by themselves after this long even if the lab never kills them.
SERVER_MAX_SECONDS = 6 * 3600.0

# Starts argv (already wrapped for the inet namespace) as a tracked lab process.
Launcher = Callable[[Sequence[str], IO[str]], "subprocess.Popen[str]"]


class InternetServers:
    """TCP GET/PUT and UDP sinks on a set of ports, in the internet namespace."""

    def __init__(self, state_dir: Path, launch: Launcher) -> None:
        self.control_socket = state_dir / "servers.sock"
        self.log_path = state_dir / "servers.log"
        self._launch = launch
        self._proc: subprocess.Popen[str] | None = None
        self.served: frozenset[int] = frozenset()

    def start(self, ports: Iterable[int], timeout: float = 20.0) -> None:
        """(Re)start the server so it serves these ports as well as the ones it had."""
        wanted = sorted(set(ports) | self.served)
        if any(not 0 < p < 65536 for p in wanted):
            raise LabError(f"bad ports {wanted}")
        self.stop()
        argv = [
            sys.executable, "-m", "meterguard.lab.traffic", "server",
            "--ports", ",".join(map(str, wanted)), "--control", str(self.control_socket),
            "--max-seconds", str(SERVER_MAX_SECONDS),
        ]  # fmt: skip
        with self.log_path.open("w") as log:
            proc = self._launch(argv, log)
        # Ready means the control socket answers: the server binds it last.
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError, ValueError):
                traffic_server.query(str(self.control_socket), timeout=1.0)
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                text = self.log_path.read_text()[-2000:]
                raise LabError(f"internet servers did not start (rc={proc.poll()}):\n{text}")
            time.sleep(0.02)
        self._proc = proc
        self.served = frozenset(wanted)

    def stop(self) -> None:
        """Stop the server (QUIT, then kill); nothing is served afterwards."""
        proc, self._proc = self._proc, None
        self.served = frozenset()
        if proc is None:
            return
        with contextlib.suppress(OSError, ValueError):
            traffic_server.query(str(self.control_socket), "QUIT", timeout=2.0)
        try:
            proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5.0)

    def forget(self) -> None:
        """After teardown killed the process: nothing is served any more."""
        self._proc = None
        self.served = frozenset()

    def check_served(self, port: int) -> None:
        if port not in self.served:
            raise LabError(f"no lab server on port {port}: call lab.start_servers([{port}])")

    def stats(self) -> dict[int, PortStats]:
        """Payload the server itself saw per port (TCP sent/received, UDP datagrams/bytes)."""
        answer = traffic_server.query(str(self.control_socket))
        ports = answer.get("ports")
        if not isinstance(ports, dict):
            raise LabError(f"bad server stats: {answer!r}")
        return {int(p): PortStats(**s) for p, s in ports.items()}
