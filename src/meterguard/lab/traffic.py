"""Command line of the lab's traffic programs: `python -m meterguard.lab.traffic OP ...`.

Stdlib only.  The server runs in the lab's internet namespace; the clients run
in the host namespace inside an app's cgroup and print one JSON line each.

    server --ports 5001,5002 --control PATH [--max-seconds S]
    download --addr A --port P --nbytes N [--pace-ms MS] [--timeout S]
    upload --addr A --port P --nbytes N [--timeout S]
    udp-upload --addr A --port P --nbytes N [--payload B] [--gso-size B] [--rate-mbit R]
    burst --addr A --port P --conns C --parallel K --nbytes-each N [--hold-s S]
    aborted --addr A --port P --count C --parallel K [--read-bytes B] [--size N]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from meterguard.lab import traffic_client as client
from meterguard.lab.traffic_server import run_server


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m meterguard.lab.traffic")
    sub = parser.add_subparsers(dest="op", required=True)

    srv = sub.add_parser("server")
    srv.add_argument("--ports", required=True, help="comma-separated TCP+UDP ports")
    srv.add_argument("--control", required=True, help="UNIX socket path for STATS/QUIT")
    srv.add_argument("--max-seconds", type=float, default=4 * 3600.0)

    def target(name: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name)
        p.add_argument("--addr", required=True)
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--timeout", type=float, default=60.0)
        return p

    dl = target("download")
    dl.add_argument("--nbytes", type=int, required=True)
    dl.add_argument("--pace-ms", type=int, default=0)
    target("upload").add_argument("--nbytes", type=int, required=True)
    udp = target("udp-upload")
    udp.add_argument("--nbytes", type=int, required=True)
    udp.add_argument("--payload", type=int, default=1200)
    udp.add_argument("--gso-size", type=int, default=0)
    udp.add_argument("--rate-mbit", type=float, default=100.0, help="0 = unpaced")
    bst = target("burst")
    bst.add_argument("--conns", type=int, required=True)
    bst.add_argument("--parallel", type=int, required=True)
    bst.add_argument("--nbytes-each", type=int, required=True)
    bst.add_argument("--hold-s", type=float, default=1.0)
    abt = target("aborted")
    abt.add_argument("--count", type=int, required=True)
    abt.add_argument("--parallel", type=int, required=True)
    abt.add_argument("--read-bytes", type=int, default=30_000)
    abt.add_argument("--size", type=int, default=1_000_000)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.op == "server":
        ports = [int(p) for p in args.ports.split(",") if p]
        return run_server(ports, args.control, args.max_seconds)
    if args.op == "download":
        res = client.download(args.addr, args.port, args.nbytes, args.timeout, args.pace_ms)
    elif args.op == "upload":
        res = client.upload(args.addr, args.port, args.nbytes, args.timeout)
    elif args.op == "udp-upload":
        res = client.udp_upload(
            args.addr,
            args.port,
            args.nbytes,
            args.payload,
            args.gso_size or None,
            args.rate_mbit or None,
            args.timeout,
        )
    elif args.op == "burst":
        res = client.burst(
            args.addr,
            args.port,
            args.conns,
            args.parallel,
            args.nbytes_each,
            args.hold_s,
            args.timeout,
        )
    else:
        res = client.aborted_downloads(
            args.addr,
            args.port,
            args.count,
            args.parallel,
            args.read_bytes,
            args.size,
            args.timeout,
        )
    print(res.to_json(), flush=True)
    return 0 if res.ok else 3


if __name__ == "__main__":
    sys.exit(main())
