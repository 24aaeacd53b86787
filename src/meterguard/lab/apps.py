"""Simulated apps: a cgroup of the lab's desktop plus the app's own server port.

Each app talks only to its own server port, so the carrier's per-port count is
the truth for that app.  Clients run as `python -m meterguard.lab.traffic` in
the host namespace, inside the app's cgroup.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from meterguard.lab.cgroups import LabCgroup
from meterguard.lab.netns import LabError
from meterguard.lab.topology import Family, Via
from meterguard.lab.traffic_client import ClientResult

# Extra time the parent waits beyond the client's own deadline before it
# declares the client stuck (process start-up, interpreter import).
_WAIT_SLACK_S = 30.0


class _LabLike(Protocol):
    def host_popen(
        self,
        argv: Sequence[str],
        cgroup: LabApp | LabCgroup | None = None,
        *,
        stdout: int | None = None,
        stderr: int | None = None,
    ) -> subprocess.Popen[str]: ...

    def server_addr(self, via: Via = "wwan", family: Family = 4) -> str: ...

    def check_served(self, port: int) -> None: ...


class TrafficHandle:
    """A running traffic client.  wait() parses its JSON line; kill() ends it."""

    def __init__(self, proc: subprocess.Popen[str], op: str, timeout: float) -> None:
        self.proc = proc
        self.op = op
        self.timeout = timeout
        # False until wait() has seen the client's JSON report.
        self.reported = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()

    def wait(self, timeout: float | None = None) -> ClientResult:
        """Wait for the client and return what it reported.

        A client that was killed or crashed reports nothing: the result then
        has ok=False and error says why.  A client still running after the
        timeout is killed and LabError is raised.
        """
        limit = timeout if timeout is not None else self.timeout + _WAIT_SLACK_S
        try:
            out, err = self.proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired as exc:
            self.kill()
            self.proc.communicate()
            raise LabError(f"{self.op} client pid {self.pid} still running after {limit}s") from exc
        lines = [line for line in (out or "").splitlines() if line.startswith("{")]
        if not lines:
            return ClientResult(
                self.op,
                ok=False,
                error=f"client exited rc={self.proc.returncode} without a report: "
                f"{(err or '').strip()[-500:]}",
            )
        self.reported = True
        return ClientResult.from_json(lines[-1])


def _finish(handle: TrafficHandle) -> ClientResult:
    """Network failures are results; a client that never reported is a lab failure."""
    result = handle.wait()
    if not handle.reported:
        raise LabError(result.error or "client did not report")
    return result


@dataclass(frozen=True)
class LabApp:
    """An app of the simulated desktop: its cgroup and its own server port."""

    lab: _LabLike
    name: str
    port: int
    cgroup: LabCgroup

    def _start(
        self, op: str, args: list[str], via: Via, family: Family, timeout: float
    ) -> TrafficHandle:
        self.lab.check_served(self.port)
        addr = self.lab.server_addr(via, family)
        argv = [
            sys.executable, "-m", "meterguard.lab.traffic", op,
            "--addr", addr, "--port", str(self.port), "--timeout", str(timeout), *args,
        ]  # fmt: skip
        proc = self.lab.host_popen(argv, self, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        return TrafficHandle(proc, op, timeout)

    # --- non-blocking --------------------------------------------------------------------

    def start_download(
        self, nbytes: int, via: Via = "wwan", family: Family = 4, *,
        pace_s: float = 0.0, timeout: float = 60.0,
    ) -> TrafficHandle:  # fmt: skip
        args = ["--nbytes", str(nbytes), "--pace-ms", str(int(pace_s * 1000))]
        return self._start("download", args, via, family, timeout)

    def start_upload(
        self, nbytes: int, via: Via = "wwan", family: Family = 4, *, timeout: float = 60.0
    ) -> TrafficHandle:
        return self._start("upload", ["--nbytes", str(nbytes)], via, family, timeout)

    def start_udp_upload(
        self, nbytes: int, payload: int = 1200, gso_size: int | None = None,
        via: Via = "wwan", family: Family = 4, *,
        rate_mbit: float | None = 100.0, timeout: float = 60.0,
    ) -> TrafficHandle:  # fmt: skip
        args = [
            "--nbytes", str(nbytes), "--payload", str(payload),
            "--gso-size", str(gso_size or 0), "--rate-mbit", str(rate_mbit or 0),
        ]  # fmt: skip
        return self._start("udp-upload", args, via, family, timeout)

    def start_burst(
        self, conns: int, parallel: int, nbytes_each: int, hold_s: float = 1.0,
        via: Via = "wwan", family: Family = 4, *, timeout: float | None = None,
    ) -> TrafficHandle:  # fmt: skip
        if timeout is None:
            rounds = -(-conns // max(1, parallel))
            timeout = rounds * (hold_s + 5.0) + 60.0
        args = [
            "--conns", str(conns), "--parallel", str(parallel),
            "--nbytes-each", str(nbytes_each), "--hold-s", str(hold_s),
        ]  # fmt: skip
        return self._start("burst", args, via, family, timeout)

    def start_aborted_downloads(
        self, n: int, parallel: int, read_bytes: int = 30_000, size: int = 1_000_000,
        via: Via = "wwan", family: Family = 4, *, timeout: float = 120.0,
    ) -> TrafficHandle:  # fmt: skip
        args = [
            "--count", str(n), "--parallel", str(parallel),
            "--read-bytes", str(read_bytes), "--size", str(size),
        ]  # fmt: skip
        return self._start("aborted", args, via, family, timeout)

    # --- blocking ------------------------------------------------------------------------

    def download(
        self, nbytes: int, via: Via = "wwan", family: Family = 4, *, timeout: float = 60.0
    ) -> int:
        """GET nbytes from the app's server; return payload bytes received."""
        return _finish(self.start_download(nbytes, via, family, timeout=timeout)).received

    def upload(
        self, nbytes: int, via: Via = "wwan", family: Family = 4, *, timeout: float = 60.0
    ) -> int:
        """PUT nbytes to the app's server; return payload bytes sent."""
        return _finish(self.start_upload(nbytes, via, family, timeout=timeout)).sent

    def udp_upload(
        self, nbytes: int, payload: int = 1200, gso_size: int | None = None,
        via: Via = "wwan", family: Family = 4, *,
        rate_mbit: float | None = 100.0, timeout: float = 60.0,
    ) -> int:  # fmt: skip
        """Send nbytes of UDP payload (UDP GSO with gso_size); return payload bytes sent."""
        handle = self.start_udp_upload(
            nbytes, payload, gso_size, via, family, rate_mbit=rate_mbit, timeout=timeout
        )
        return _finish(handle).sent

    def burst(
        self, conns: int, parallel: int, nbytes_each: int, hold_s: float = 1.0,
        via: Via = "wwan", family: Family = 4, *, timeout: float | None = None,
    ) -> ClientResult:  # fmt: skip
        """`conns` connections of about hold_s each, `parallel` at a time."""
        handle = self.start_burst(
            conns, parallel, nbytes_each, hold_s, via, family, timeout=timeout
        )
        return _finish(handle)

    def aborted_downloads(
        self, n: int, parallel: int, read_bytes: int = 30_000, size: int = 1_000_000,
        via: Via = "wwan", family: Family = 4, *, timeout: float = 120.0,
    ) -> ClientResult:  # fmt: skip
        """n downloads that read read_bytes of a size-byte response and then abort."""
        handle = self.start_aborted_downloads(
            n, parallel, read_bytes, size, via, family, timeout=timeout
        )
        return _finish(handle)
