"""The lab's userspace tunnel, like OpenVPN in UDP mode: one tun device, one UDP socket.

    python -m meterguard.lab.tunnel_daemon --tun tun0 --local 198.51.100.2 \\
        --remote 192.0.2.30 --port 1194 [--ready-file PATH] [--idle-timeout S] [--lifetime S]

Every IP packet the kernel routes into the tun device is sent as one UDP
datagram to remote:port, and every datagram from remote:port is written into
the tun device.  Both ends bind and send to the same port, so the carrier sees
the tunnel on one UDP port in both directions.  No handshake, no keepalive and
no encryption: the lab measures bytes, and a tunnel that sends nothing of its
own keeps the metered link's counts exactly the traffic a test made.

Stdlib only (it runs inside the lab's namespaces).  The tun device is created
by TUNSETIFF and not made persistent, so it disappears when this process ends.
The process ends on SIGTERM/SIGINT, after --idle-timeout seconds without a
packet in either direction and after --lifetime seconds in any case, so a
tunnel the lab failed to kill still goes away.  At exit it prints one JSON line
with its counts.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import json
import os
import selectors
import signal
import socket
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from types import FrameType

# linux/if_tun.h: _IOW('T', 202, int), and the flags of struct ifreq.ifr_flags.
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
# asm-generic/socket.h: as root these lift the buffers above net.core.*mem_max.
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
# linux/in.h and linux/in6.h; Python 3.11's socket module does not export them.
IP_MTU_DISCOVER = 10
IPV6_MTU_DISCOVER = 23
PMTUDISC_DO = 2
_SOCK_BUF = 4 << 20
# Larger than any tun MTU the lab sets; a read never truncates a packet.
_MAX_PACKET = 65535
# Packets moved per wake-up and direction, so neither direction starves the other.
_BATCH = 256
_TICK_S = 0.5


@dataclass
class TunnelCounts:
    """What this end moved: packets/bytes are inner IP packets, errors are dropped ones."""

    to_remote_packets: int = 0
    to_remote_bytes: int = 0
    from_remote_packets: int = 0
    from_remote_bytes: int = 0
    send_errors: int = 0
    write_errors: int = 0
    refused: int = 0


def open_tun(name: str) -> tuple[int, str]:
    """Create (or attach to) tun device `name` without packet info; return (fd, real name).

    IFF_NO_PI: each read/write is exactly one IP packet, with no 4-byte
    header, so the datagram on the wire is the inner packet and nothing else.
    """
    if not 0 < len(name.encode()) < 16:
        raise ValueError(f"bad interface name {name!r}")
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        ifreq = struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI)
        answer = fcntl.ioctl(fd, TUNSETIFF, ifreq)
    except OSError:
        os.close(fd)
        raise
    return fd, answer[:16].rstrip(b"\0").decode()


def open_socket(local: str, remote: str, port: int) -> socket.socket:
    """A UDP socket bound to local:port and connected to remote:port.

    Connected, so the kernel accepts datagrams from the peer only.  Path MTU
    discovery is "do": the DF bit is set and a datagram larger than the
    route's MTU fails with EMSGSIZE instead of being fragmented; the tun MTU is
    chosen so that never happens, and a failure would show as send_errors.
    """
    family = socket.AF_INET6 if ":" in local else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, PMTUDISC_DO)
        else:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, PMTUDISC_DO)
        # Room for bursts: a datagram dropped here is billed but never arrives.
        for opt in (SO_SNDBUFFORCE, SO_RCVBUFFORCE):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, opt, _SOCK_BUF)
        sock.bind((local, port))
        sock.connect((remote, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def write_ready(path: str, info: dict[str, object]) -> None:
    """Write the ready file atomically: a reader sees nothing or the whole JSON."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as out:
        json.dump(info, out)
    os.replace(tmp, path)


class Tunnel:
    """The forwarding loop between one tun fd and one connected UDP socket."""

    def __init__(self, fd: int, sock: socket.socket, idle_timeout: float, lifetime: float) -> None:
        self.fd = fd
        self.sock = sock
        self.idle_timeout = idle_timeout
        self.end = time.monotonic() + lifetime
        self.last_packet = time.monotonic()
        self.counts = TunnelCounts()
        self.stopping = False
        self.reason = ""

    def request_stop(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = True
        self.reason = signal.Signals(signum).name

    def run(self) -> str:
        """Forward until stopped; return why it stopped."""
        with selectors.DefaultSelector() as sel:
            sel.register(self.fd, selectors.EVENT_READ, "tun")
            sel.register(self.sock, selectors.EVENT_READ, "udp")
            while not self.stopping:
                now = time.monotonic()
                if now >= self.end:
                    return "lifetime"
                if now - self.last_packet >= self.idle_timeout:
                    return "idle"
                for key, _events in sel.select(timeout=_TICK_S):
                    if key.data == "tun":
                        self._tun_to_udp()
                    else:
                        self._udp_to_tun()
        return self.reason or "stopped"

    def _tun_to_udp(self) -> None:
        for _ in range(_BATCH):
            try:
                packet = os.read(self.fd, _MAX_PACKET)
            except BlockingIOError:
                return
            self.last_packet = time.monotonic()
            if self._send(packet):
                self.counts.to_remote_packets += 1
                self.counts.to_remote_bytes += len(packet)

    def _send(self, packet: bytes) -> bool:
        """Send one datagram; wait briefly for room rather than drop when the buffer is full."""
        for _attempt in range(2):
            try:
                self.sock.send(packet)
                return True
            except BlockingIOError:
                with selectors.DefaultSelector() as sel:
                    sel.register(self.sock, selectors.EVENT_WRITE)
                    sel.select(timeout=1.0)
            except ConnectionRefusedError:
                # An ICMP port unreachable from before the peer was up; already consumed.
                self.counts.refused += 1
            except OSError:
                break
        self.counts.send_errors += 1
        return False

    def _udp_to_tun(self) -> None:
        buf = bytearray(_MAX_PACKET)
        view = memoryview(buf)
        for _ in range(_BATCH):
            try:
                size = self.sock.recv_into(buf)
            except BlockingIOError:
                return
            except ConnectionRefusedError:
                self.counts.refused += 1
                continue
            self.last_packet = time.monotonic()
            try:
                os.write(self.fd, view[:size])
            except OSError as exc:
                # EIO while the device is down, EINVAL for a datagram that is no IP packet.
                if exc.errno not in (errno.EIO, errno.EINVAL, errno.EAGAIN):
                    raise
                self.counts.write_errors += 1
                continue
            self.counts.from_remote_packets += 1
            self.counts.from_remote_bytes += size


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m meterguard.lab.tunnel_daemon")
    parser.add_argument("--tun", required=True, help="tun device to create, e.g. tun0")
    parser.add_argument("--local", required=True, help="underlay address to send from")
    parser.add_argument("--remote", required=True, help="underlay address of the other end")
    parser.add_argument("--port", type=int, required=True, help="UDP port, both ends")
    parser.add_argument("--ready-file", help="written (JSON) once the tun and socket are open")
    parser.add_argument("--idle-timeout", type=float, default=600.0)
    parser.add_argument("--lifetime", type=float, default=3600.0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not 0 < args.port < 65536:
        print(f"bad port {args.port}", file=sys.stderr)
        return 2
    fd, ifname = open_tun(args.tun)
    try:
        with open_socket(args.local, args.remote, args.port) as sock:
            tunnel = Tunnel(fd, sock, args.idle_timeout, args.lifetime)
            signal.signal(signal.SIGTERM, tunnel.request_stop)
            signal.signal(signal.SIGINT, tunnel.request_stop)
            if args.ready_file:
                write_ready(args.ready_file, {"pid": os.getpid(), "ifname": ifname})
            reason = tunnel.run()
    finally:
        os.close(fd)
    print(json.dumps({"stopped": reason, **asdict(tunnel.counts)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
