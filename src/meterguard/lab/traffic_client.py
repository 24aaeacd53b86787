"""The lab's simulated app traffic: bounded TCP/UDP clients (stdlib only).

Runs in the host namespace, inside an app's cgroup, as `python -m
meterguard.lab.traffic <op> ...`, and prints one JSON line (ClientResult).
Every client has an overall deadline and every socket a timeout.
"""

from __future__ import annotations

import json
import math
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields

from meterguard.lab.traffic_server import PATTERN

# Linux UDP_SEGMENT (include/uapi/linux/udp.h); not exported by Python 3.11's socket.
UDP_SEGMENT = 103
SOL_UDP = 17
# Kernel limit on segments per UDP GSO send (UDP_MAX_SEGMENTS) and the largest
# UDP payload one IPv4 datagram can carry.
_GSO_MAX_SEGMENTS = 64
_MAX_UDP_SEND = 65000


@dataclass
class ClientResult:
    """What one client run sent and received (application payload bytes)."""

    op: str
    ok: bool = True
    sent: int = 0
    received: int = 0
    conns_ok: int = 0
    conns_failed: int = 0
    datagrams: int = 0
    error: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ClientResult:
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError(f"not a client result: {text!r}")
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})

    def fail(self, exc: BaseException) -> None:
        self.ok = False
        if self.error is None:
            self.error = f"{type(exc).__name__}: {exc}"


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        """Seconds left; raises TimeoutError once the deadline has passed."""
        remaining = self.end - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("client deadline reached")
        return remaining


def _connect(addr: str, port: int, deadline: Deadline) -> socket.socket:
    return socket.create_connection((addr, port), timeout=deadline.left())


def download(addr: str, port: int, nbytes: int, timeout: float, pace_ms: int = 0) -> ClientResult:
    """GET nbytes and read to EOF; ok when exactly nbytes arrived."""
    res = ClientResult("download")
    deadline = Deadline(timeout)
    try:
        with _connect(addr, port, deadline) as sock:
            request = f"GET {nbytes} {pace_ms}\n".encode()
            sock.sendall(request)
            res.sent = len(request)
            buf = bytearray(65536)
            while res.received <= nbytes:  # a server sending more than asked is an error
                sock.settimeout(deadline.left())
                size = sock.recv_into(buf)
                if size == 0:
                    break
                res.received += size
    except (OSError, TimeoutError) as exc:
        res.fail(exc)
    if res.ok and res.received != nbytes:
        res.ok = False
        res.error = f"received {res.received} of {nbytes} bytes"
    return res


def upload(addr: str, port: int, nbytes: int, timeout: float) -> ClientResult:
    """PUT nbytes; ok when the server confirms it read all of them."""
    res = ClientResult("upload")
    deadline = Deadline(timeout)
    view = memoryview(PATTERN)
    try:
        with _connect(addr, port, deadline) as sock:
            sock.sendall(f"PUT {nbytes}\n".encode())
            while res.sent < nbytes:
                sock.settimeout(deadline.left())
                res.sent += sock.send(view[: min(len(view), nbytes - res.sent)])
            sock.settimeout(deadline.left())
            reply = sock.recv(16)
            res.received = len(reply)
            if not reply.startswith(b"OK"):
                res.ok = False
                res.error = f"server replied {reply!r}"
    except (OSError, TimeoutError) as exc:
        res.fail(exc)
    return res


def udp_upload(
    addr: str,
    port: int,
    nbytes: int,
    payload: int,
    gso_size: int | None,
    rate_mbit: float | None,
    timeout: float,
) -> ClientResult:
    """Send nbytes of UDP payload to addr:port.

    Without gso_size every datagram carries `payload` bytes.  With gso_size the
    socket uses UDP GSO (UDP_SEGMENT): each send carries up to ~64 KB and the
    kernel cuts it into gso_size segments, as QUIC stacks do.  `datagrams`
    reports the datagrams on the wire either way.  Sending is paced to
    rate_mbit (None = as fast as possible) so the lab's queues do not drop.
    """
    res = ClientResult("udp_upload")
    deadline = Deadline(timeout)
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    if gso_size:
        chunk = gso_size * max(1, min(_GSO_MAX_SEGMENTS, _MAX_UDP_SEND // gso_size))
        segment = gso_size
    else:
        chunk = segment = payload
    view = memoryview(PATTERN)
    rate = rate_mbit * 125_000 if rate_mbit else None  # bytes per second
    start = time.monotonic()
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.settimeout(deadline.left())
            sock.connect((addr, port))
            if gso_size:
                sock.setsockopt(SOL_UDP, UDP_SEGMENT, gso_size)
            while res.sent < nbytes:
                size = min(chunk, nbytes - res.sent)
                sock.settimeout(deadline.left())
                sock.send(view[:size])
                res.sent += size
                res.datagrams += math.ceil(size / segment)
                if rate is not None:
                    ahead = start + res.sent / rate - time.monotonic()
                    if ahead > 0:
                        time.sleep(min(ahead, deadline.left()))
    except (OSError, TimeoutError) as exc:
        res.fail(exc)
    return res


def _parallel(op: str, conns: int, parallel: int, one: Callable[[], ClientResult]) -> ClientResult:
    res = ClientResult(op)
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        for part in pool.map(lambda _i: one(), range(conns)):
            res.sent += part.sent
            res.received += part.received
            if part.ok:
                res.conns_ok += 1
            else:
                res.conns_failed += 1
                res.error = res.error or part.error
    res.ok = res.conns_failed == 0
    return res


def burst(
    addr: str,
    port: int,
    conns: int,
    parallel: int,
    nbytes_each: int,
    hold_s: float,
    timeout: float,
) -> ClientResult:
    """Many short-lived connections: each GETs nbytes_each paced over hold_s by the server."""
    deadline = Deadline(timeout)

    def one() -> ClientResult:
        try:
            left = deadline.left()
        except TimeoutError as exc:
            failed = ClientResult("download")
            failed.fail(exc)
            return failed
        return download(addr, port, nbytes_each, min(left, hold_s + 30.0), int(hold_s * 1000))

    return _parallel("burst", conns, parallel, one)


def aborted_downloads(
    addr: str,
    port: int,
    count: int,
    parallel: int,
    read_bytes: int,
    size: int,
    timeout: float,
) -> ClientResult:
    """GET `size` bytes, read only `read_bytes` of them, then close.

    Closing with unread data makes the kernel send a RST: the rest of the
    response still in flight is billed but lands on a closed socket.
    """
    deadline = Deadline(timeout)

    def one() -> ClientResult:
        res = ClientResult("aborted_download")
        try:
            with _connect(addr, port, deadline) as sock:
                request = f"GET {size}\n".encode()
                sock.sendall(request)
                res.sent = len(request)
                buf = bytearray(65536)
                while res.received < read_bytes:
                    sock.settimeout(deadline.left())
                    got = sock.recv_into(buf, min(len(buf), read_bytes - res.received))
                    if got == 0:
                        break
                    res.received += got
        except (OSError, TimeoutError) as exc:
            res.fail(exc)
        if res.ok and res.received < read_bytes:
            res.ok = False
            res.error = f"stream ended after {res.received} bytes"
        return res

    return _parallel("aborted_downloads", count, parallel, one)
