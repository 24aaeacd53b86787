"""The lab's internet server: one process serving TCP and UDP on a list of ports.

Runs inside the lab's "inet" namespace as `python -m meterguard.lab.traffic
server`, so it uses the standard library only.  Protocol on every TCP port:

- "GET n [pace_ms]\\n": send exactly n bytes (spread over pace_ms when given,
  so a connection lives about that long), then close.
- "PUT n\\n" followed by n bytes: read them, reply "OK\\n", close.

Every UDP port is a sink that counts datagrams and bytes.  Counts are read over
a UNIX socket in the lab's state directory ("STATS\\n" -> one JSON line), which
is outside every network namespace, so reading them adds no bytes to any link.

Every loop is bounded by a deadline (max_seconds) and every socket has a
timeout, so a server the lab failed to kill still ends by itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import socket
import threading
import time
from dataclasses import asdict, dataclass

# 64 KiB of non-zero payload to send from (a pattern, so a capture is readable).
PATTERN = bytes(range(256)) * 256
_MAX_REQUEST_LINE = 64
_MAX_TRANSFER = 1 << 34  # refuse absurd sizes rather than loop for hours
_MAX_PACE_S = 120.0
_PACE_SLICES = 10
# Linux SO_RCVBUFFORCE (asm-generic/socket.h); Python's socket module lacks it.
# As root it lifts the receive buffer above net.core.rmem_max.
SO_RCVBUFFORCE = 33


@dataclass
class PortStats:
    """What the server itself saw on one port (application payload, not IP bytes)."""

    tcp_conns: int = 0
    tcp_sent: int = 0
    tcp_received: int = 0
    udp_datagrams: int = 0
    udp_bytes: int = 0


def _read_line(conn: socket.socket) -> str:
    """Read one short request line, byte by byte so no payload after it is consumed."""
    data = b""
    while not data.endswith(b"\n") and len(data) < _MAX_REQUEST_LINE:
        byte = conn.recv(1)
        if not byte:
            break
        data += byte
    return data.rstrip(b"\n").decode("ascii", "replace")


class TrafficServer:
    """Selectors loop for listeners and UDP sinks; one thread per TCP connection."""

    def __init__(
        self,
        ports: list[int],
        control_path: str,
        max_seconds: float,
        conn_timeout: float = 30.0,
        max_conns: int = 1024,
    ) -> None:
        self.ports = ports
        self.control_path = control_path
        self.deadline = time.monotonic() + max_seconds
        self.conn_timeout = conn_timeout
        self.stats = {port: PortStats() for port in ports}
        self.lock = threading.Lock()
        self.slots = threading.BoundedSemaphore(max_conns)
        self.stop = threading.Event()
        self.sel = selectors.DefaultSelector()
        self.socks: list[socket.socket] = []

    def _add(self, sock: socket.socket, kind: str, port: int) -> None:
        sock.setblocking(False)
        self.socks.append(sock)
        self.sel.register(sock, selectors.EVENT_READ, (kind, port))

    def bind(self) -> None:
        for port in self.ports:
            # One dual-stack socket per protocol serves IPv4 (as v4-mapped) and IPv6.
            tcp = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            tcp.bind(("::", port))
            tcp.listen(1024)
            self._add(tcp, "tcp", port)
            udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            # A big receive buffer so bursts (UDP GSO) are not dropped at the sink.
            with contextlib.suppress(OSError):
                udp.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
            udp.bind(("::", port))
            self._add(udp, "udp", port)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.control_path)
        ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ctl.bind(self.control_path)
        ctl.listen(16)
        # Bound last: a control socket that answers means every port is bound.
        self._add(ctl, "ctl", 0)

    def serve(self) -> None:
        try:
            while not self.stop.is_set() and time.monotonic() < self.deadline:
                for key, _events in self.sel.select(timeout=0.5):
                    kind, port = key.data
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if kind == "tcp":
                        self._accept(sock, port)
                    elif kind == "udp":
                        self._drain_udp(sock, port)
                    else:
                        self._control(sock)
        finally:
            for sock in self.socks:
                sock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.control_path)

    def _accept(self, listener: socket.socket, port: int) -> None:
        for _ in range(256):  # bounded per wake-up; the selector calls again
            try:
                conn, _addr = listener.accept()
            except BlockingIOError:
                return
            if not self.slots.acquire(blocking=False):
                conn.close()
                continue
            with self.lock:
                self.stats[port].tcp_conns += 1
            threading.Thread(target=self._handle, args=(conn, port), daemon=True).start()

    def _drain_udp(self, sock: socket.socket, port: int) -> None:
        buf = bytearray(65536)
        for _ in range(4096):
            try:
                size = sock.recv_into(buf)
            except BlockingIOError:
                return
            with self.lock:
                stats = self.stats[port]
                stats.udp_datagrams += 1
                stats.udp_bytes += size

    def _control(self, listener: socket.socket) -> None:
        try:
            conn, _addr = listener.accept()
        except BlockingIOError:
            return
        with conn:
            conn.settimeout(2.0)
            try:
                cmd = _read_line(conn).strip()
                if cmd == "QUIT":
                    self.stop.set()
                    conn.sendall(b"{}\n")
                else:  # STATS
                    with self.lock:
                        snap = {str(p): asdict(s) for p, s in self.stats.items()}
                    conn.sendall(json.dumps({"ports": snap}).encode() + b"\n")
            except OSError:
                pass

    def _handle(self, conn: socket.socket, port: int) -> None:
        try:
            with conn:
                conn.settimeout(self.conn_timeout)
                self._request(conn, port)
        except (OSError, ValueError):
            pass  # a client that aborts (RST) or sends garbage just ends its connection
        finally:
            self.slots.release()

    def _request(self, conn: socket.socket, port: int) -> None:
        parts = _read_line(conn).split()
        if len(parts) < 2 or not 0 <= int(parts[1]) <= _MAX_TRANSFER:
            return
        nbytes = int(parts[1])
        if parts[0] == "GET":
            pace_s = min(float(parts[2]) / 1000.0, _MAX_PACE_S) if len(parts) > 2 else 0.0
            self._send(conn, port, nbytes, pace_s)
        elif parts[0] == "PUT" and self._receive(conn, port, nbytes) == nbytes:
            conn.sendall(b"OK\n")

    def _send(self, conn: socket.socket, port: int, nbytes: int, pace_s: float) -> None:
        view = memoryview(PATTERN)
        slices = _PACE_SLICES if pace_s > 0 else 1
        per_slice = -(-nbytes // slices)
        start = time.monotonic()
        sent = 0
        for index in range(slices):
            if pace_s > 0:
                # Spread the response so the connection lives about pace_s.
                wait = start + pace_s * index / slices - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            goal = min(nbytes, sent + per_slice)
            while sent < goal and time.monotonic() < self.deadline:
                size = conn.send(view[: min(len(view), goal - sent)])
                sent += size
                with self.lock:
                    self.stats[port].tcp_sent += size
        if pace_s > 0:
            wait = start + pace_s - time.monotonic()
            if wait > 0:
                time.sleep(wait)

    def _receive(self, conn: socket.socket, port: int, nbytes: int) -> int:
        buf = bytearray(65536)
        got = 0
        while got < nbytes and time.monotonic() < self.deadline:
            size = conn.recv_into(buf, min(len(buf), nbytes - got))
            if size == 0:
                break
            got += size
            with self.lock:
                self.stats[port].tcp_received += size
        return got


def query(control_path: str, command: str = "STATS", timeout: float = 5.0) -> dict[str, object]:
    """Send one control command to a running server; return its JSON answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(control_path)
        sock.sendall(command.encode() + b"\n")
        data = b""
        for _ in range(10_000):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            if data.endswith(b"\n"):
                break
    answer = json.loads(data.decode())
    if not isinstance(answer, dict):
        raise ValueError(f"bad control answer: {data!r}")
    return answer


def run_server(ports: list[int], control_path: str, max_seconds: float) -> int:
    server = TrafficServer(ports, control_path, max_seconds)
    server.bind()
    server.serve()
    return 0
