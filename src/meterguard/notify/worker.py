"""The alert delivery worker: `python -m meterguard.notify.worker --config PATH`.

Why a process of its own: the daemon starts it in a cgroup of its own
(`meterguard.slice/meterguard-notify.scope`), so the kernel can let exactly its traffic
through a paused link (alerts at the cap must still get out) and count those bytes like any
other app's. It also keeps apprise (about 20 MB) out of the daemon's memory.

It imports apprise and parses every URL before it says it is ready, so an alert is sent the
moment it arrives: the target is ≤ 1 s from the crossing to delivery.

Protocol, one JSON object per line (UTF-8), in both directions:

stdin, from the daemon:
  {"type": "alert", "seq": 1, "event_id": 12, "key": "plan:2026-01-15:80%",
   "level": "warning", "title": "...", "body": "...", "at": 1767225600.0}
stdout, to the daemon:
  {"type": "ready", "pid": 4321, "channels": ["json://127.0.0.1:8080/hook", ...]}
      once, after start-up; `channels` are the destinations without their secrets.
  {"type": "delivery", "seq": 1, "event_id": 12, "key": "...", "channel": "...",
   "ok": true, "detail": "", "at": 1767225600.4}
      one per channel per alert; `detail` says why a delivery failed.
  {"type": "done", "seq": 1}
      after the last delivery of alert `seq` (also when there are no channels).
  {"type": "error", "detail": "..."}
      a line on stdin that is not a valid alert; the worker carries on.

Each alert is delivered in a thread of its own, all channels in parallel, each bounded by
--timeout. End of stdin (the daemon stopped or died) lets the alerts in flight finish, within
the timeout, and then the worker exits 0. Exit 2: the config could not be read. stderr
carries log messages only; stdout carries nothing but the protocol.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .message import DEFAULT_TIMEOUT_S, AlertMessage, Delivery, MessageError

if TYPE_CHECKING:
    from .apprise_notifier import AppriseNotifier

log = logging.getLogger("meterguard.notify.worker")


class _Output:
    """Whole lines to the daemon, one writer at a time (deliveries finish in many threads)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def write(self, obj: dict[str, Any]) -> None:
        # UTF-8 bytes whatever the locale: plan names and alert texts are often not ASCII.
        line = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        with self._lock:
            try:
                self._stream.write(line)
                self._stream.flush()
            except (BrokenPipeError, ValueError):
                # The daemon is gone; the deliveries themselves still happened.
                pass


def config_urls(path: Path) -> list[str]:
    """The apprise URLs of a meterguard config file ([alerts] apprise = [...])."""
    from meterguard.config import load_config

    return list(load_config(path).alerts.apprise)


def _deliver(notifier: AppriseNotifier, alert: AlertMessage, seq: object, out: _Output) -> None:
    def report(delivery: Delivery) -> None:
        out.write({"type": "delivery", "seq": seq, **delivery.to_dict()})

    try:
        notifier.send(alert, report)
    except Exception as exc:  # AppriseNotifier does not raise; this guards against a bug
        log.exception("delivery of alert %s failed", seq)
        out.write({"type": "error", "seq": seq, "detail": f"delivery crashed: {exc}"})
    out.write({"type": "done", "seq": seq})


def serve(notifier: AppriseNotifier, channels: list[str], stdin: IO[bytes], out: _Output,
          timeout: float) -> None:
    """Answer alert lines from `stdin` until it ends, then wait for the deliveries."""
    out.write({"type": "ready", "pid": os.getpid(), "channels": channels})
    threads: list[threading.Thread] = []
    while line := stdin.readline():
        if not line.strip():
            continue
        seq: object = None
        try:
            obj = json.loads(line)
            seq = obj.get("seq") if isinstance(obj, dict) else None
            alert = AlertMessage.from_json(line)
        except (ValueError, MessageError) as exc:
            out.write({"type": "error", "seq": seq, "detail": f"bad alert line: {exc}"})
            continue
        thread = threading.Thread(
            target=_deliver, args=(notifier, alert, seq, out), name=f"alert-{seq}", daemon=True
        )
        thread.start()
        threads = [t for t in threads if t.is_alive()] + [thread]
    # A little over the notifier's own deadline: it reports a hung channel as failed by then.
    deadline = time.monotonic() + timeout + 1.0
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 0.0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m meterguard.notify.worker",
        description="Deliver meterguard's alerts (JSON lines on stdin) to the config's apprise"
        " URLs; report each delivery as a JSON line on stdout.",
    )
    parser.add_argument("--config", type=Path, required=True, help="meterguard config (TOML)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                        help="seconds a delivery may take before it counts as failed")
    args = parser.parse_args(argv)
    if args.timeout <= 0:
        parser.error("--timeout must be positive")

    # The daemon stops the worker by closing its stdin; a Ctrl-C meant for a daemon running
    # in a terminal must not kill the worker before it delivers what is in flight.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Keep stdout for the protocol alone: anything a library prints goes to stderr instead.
    protocol = sys.stdout.buffer
    sys.stdout = sys.stderr
    logging.basicConfig(
        stream=sys.stderr, level=logging.WARNING, format="%(name)s: %(levelname)s %(message)s"
    )
    try:
        urls = config_urls(args.config)
    except Exception as exc:  # ConfigError, OSError: said on stderr, then exit 2
        print(f"meterguard-notify: {exc}", file=sys.stderr)
        return 2

    # Imported here, not at module level: the daemon imports this module's constants
    # without paying for apprise.
    from .apprise_notifier import AppriseNotifier

    notifier = AppriseNotifier(urls, timeout=args.timeout)
    serve(notifier, notifier.channels, sys.stdin.buffer, _Output(protocol), args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
