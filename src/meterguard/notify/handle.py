"""`NotifyWorker`: the daemon's handle on the delivery worker process (see worker.py).

The daemon's poll loop must never wait on the network, so `send` only queues a line for a
writer thread, and results come back through `poll_results`, which never blocks either.
Nothing here imports apprise.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from .message import DEFAULT_TIMEOUT_S, AlertMessage, Delivery, MessageError

log = logging.getLogger("meterguard.notify")

# Runs as the worker's first process: writing its own pid into cgroup.procs moves it into the
# scope before exec, so the worker never sends a byte from the daemon's cgroup (where a
# paused link would drop it). $0 is the procs file, "$@" the worker's command line.
_INTO_CGROUP = 'echo $$ > "$0" && exec "$@"'
# Not imported from worker.py: the package imports this module, and a module that is already
# imported when `python -m` runs it makes runpy warn on every start.
MODULE = "meterguard.notify.worker"
# Channel named in failures when the worker never said which channels it has.
WORKER_CHANNEL = "notify-worker"


class NotifyWorkerError(RuntimeError):
    """The worker could not be started; the message says why."""


@dataclass
class _Pending:
    alert: AlertMessage
    reported: set[str] = field(default_factory=set)


class NotifyWorker:
    """Start, feed and stop `python -m meterguard.notify.worker --config PATH`."""

    def __init__(
        self,
        config_path: Path,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        python: str = sys.executable,
        ready_timeout: float = 30.0,
    ) -> None:
        self.config_path = Path(config_path)
        self.timeout = timeout
        self.python = python
        self.ready_timeout = ready_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._results: queue.SimpleQueue[Delivery] = queue.SimpleQueue()
        self._lines: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._pending: dict[int, _Pending] = {}
        self._seq = 0
        self._channels: list[str] = []
        self._ready = threading.Event()
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=10)
        self._threads: list[threading.Thread] = []
        self.cgroup_path: Path | None = None

    # -- life cycle -----------------------------------------------------------------------

    def command(self, cgroup_path: Path | None) -> list[str]:
        worker = [
            self.python, "-m", MODULE,
            "--config", str(self.config_path), "--timeout", f"{self.timeout:g}",
        ]
        if cgroup_path is None:
            return worker
        return ["/bin/sh", "-c", _INTO_CGROUP, str(cgroup_path / "cgroup.procs"), *worker]

    def start(self, cgroup_path: Path | None = None) -> None:
        """Start the worker (in `cgroup_path`, a cgroup v2 directory, created if missing) and
        wait until it is ready to send. A no-op while it runs; after it died, starts anew.

        Raises NotifyWorkerError if it cannot join the cgroup, cannot read the config or is
        not ready within `ready_timeout`.
        """
        if self.running:
            return
        self._join_threads()
        if cgroup_path is not None:
            try:
                # mkdir in cgroupfs creates the cgroup; an existing one is reused.
                cgroup_path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise NotifyWorkerError(f"cannot create cgroup {cgroup_path}: {exc}") from exc
        self.cgroup_path = cgroup_path
        self._ready.clear()
        self._stderr_tail.clear()
        self._lines = queue.SimpleQueue()
        try:
            proc = subprocess.Popen(
                self.command(cgroup_path),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                # Its own session: a Ctrl-C aimed at a daemon in a terminal is not for it.
                start_new_session=True,
            )
        except OSError as exc:
            raise NotifyWorkerError(f"cannot start the notify worker: {exc}") from exc
        assert proc.stdin and proc.stdout and proc.stderr
        self._proc = proc
        self._threads = [
            threading.Thread(target=self._read, args=(proc, proc.stdout, self._lines),
                             daemon=True, name="notify-read"),
            threading.Thread(target=self._log_stderr, args=(proc.stderr,), daemon=True,
                             name="notify-stderr"),
            threading.Thread(target=self._write, args=(proc.stdin, self._lines), daemon=True,
                             name="notify-write"),
        ]
        for thread in self._threads:
            thread.start()
        deadline = time.monotonic() + self.ready_timeout
        while not self._ready.wait(0.05):
            status = proc.poll()
            if status is not None or time.monotonic() > deadline:
                why = (f"exited with status {status}" if status is not None
                       else f"not ready within {self.ready_timeout:g} s")
                # stop() also joins the stderr reader, so the tail below is complete.
                self.stop(timeout=1.0)
                tail = "; ".join(self._stderr_tail)
                raise NotifyWorkerError(f"notify worker {why}" + (f": {tail}" if tail else ""))

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def channels(self) -> list[str]:
        """The worker's destinations, without secrets, as it reported them when ready."""
        return list(self._channels)

    def stop(self, timeout: float | None = None) -> None:
        """Close the worker's stdin, let it finish what is in flight, then make sure it ends."""
        proc = self._proc
        if proc is None:
            return
        self._lines.put(None)
        wait = self.timeout + 2.0 if timeout is None else timeout
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(2.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._join_threads()

    def _join_threads(self) -> None:
        for thread in self._threads:
            thread.join(5.0)
        self._threads = []

    # -- alerts and results ---------------------------------------------------------------

    def send(self, alert: AlertMessage) -> None:
        """Queue `alert` for delivery; returns at once. Results come from `poll_results`.

        If the worker is not running, each channel gets a failed Delivery instead.
        """
        if self._proc is None:
            raise RuntimeError("NotifyWorker.send before start()")
        with self._lock:
            self._seq += 1
            seq = self._seq
            self._pending[seq] = _Pending(alert)
            if not self.running:
                self._fail_pending(f"notify worker is not running (status {self._proc.poll()})")
                return
        line = {"type": "alert", "seq": seq, **alert.to_dict()}
        self._lines.put(json.dumps(line, ensure_ascii=False).encode() + b"\n")

    def poll_results(self) -> list[Delivery]:
        """The deliveries reported since the last call, in the order they were reported."""
        out: list[Delivery] = []
        while True:
            try:
                out.append(self._results.get_nowait())
            except queue.Empty:
                return out

    def _fail_pending(self, detail: str) -> None:
        # Called with the lock held: every alert still in flight gets a failed Delivery on
        # each channel that did not report, so the daemon never waits for a dead worker.
        self._fail(list(self._pending.values()), detail)
        self._pending.clear()

    def _fail(self, alerts: list[_Pending], detail: str) -> None:
        for pending in alerts:
            for channel in self._channels or [WORKER_CHANNEL]:
                if channel not in pending.reported:
                    self._results.put(Delivery.failed(pending.alert, channel, detail))

    # -- threads --------------------------------------------------------------------------

    def _write(self, stdin: IO[bytes], lines: queue.SimpleQueue[bytes | None]) -> None:
        try:
            while (line := lines.get()) is not None:
                stdin.write(line)
                stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            pass  # the worker died; _read notices and fails what is pending
        finally:
            with contextlib.suppress(OSError):
                stdin.close()

    def _read(
        self, proc: subprocess.Popen[bytes], stdout: IO[bytes],
        lines: queue.SimpleQueue[bytes | None],
    ) -> None:
        for raw in stdout:
            try:
                self._handle(json.loads(raw), raw)
            except (ValueError, MessageError, TypeError, AttributeError) as exc:
                log.warning("notify worker said something unreadable (%s): %r", exc, raw[:200])
        status = proc.wait()
        # Unblock this worker's writer, waiting on a queue nobody will feed now.
        lines.put(None)
        with self._lock:
            if self._pending:
                self._fail_pending(f"notify worker exited (status {status}) before delivering")

    def _handle(self, obj: dict[str, object], raw: bytes) -> None:
        kind = obj.get("type")
        if kind == "ready":
            channels = obj.get("channels")
            self._channels = [str(c) for c in channels] if isinstance(channels, list) else []
            self._ready.set()
        elif kind == "delivery":
            delivery = Delivery.from_json(raw)
            seq = obj.get("seq")
            with self._lock:
                pending = self._pending.get(seq) if isinstance(seq, int) else None
                if pending is not None:
                    pending.reported.add(delivery.channel)
            self._results.put(delivery)
        elif kind == "done":
            seq = obj.get("seq")
            with self._lock:
                if isinstance(seq, int):
                    self._pending.pop(seq, None)
        elif kind == "error":
            detail = str(obj.get("detail"))
            log.warning("notify worker: %s", detail)
            seq = obj.get("seq")
            with self._lock:
                pending = self._pending.pop(seq, None) if isinstance(seq, int) else None
                if pending is not None:
                    self._fail([pending], detail)

    def _log_stderr(self, stderr: IO[bytes]) -> None:
        for raw in stderr:
            line = raw.decode(errors="replace").rstrip()
            if line:
                self._stderr_tail.append(line)
                log.warning("notify worker: %s", line)
