"""Tunnels over the metered link: counted per app on the tunnel, the encapsulation as its own
bucket, nothing counted twice, and blocks that hold inside the tunnel too."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from meterguard.lab import Lab
from meterguard.lab.guarded import GuardedHost
from meterguard.lab.tunnel import Tunnel, add_tun_tunnel, add_vxlan, tunnel_download

pytestmark = pytest.mark.privileged

KINDS: dict[str, tuple[Callable[[Lab], Tunnel], str]] = {
    "tun": (add_tun_tunnel, "udp:1194"),  # a VPN daemon's socket, as OpenVPN
    "vxlan": (add_vxlan, "udp:4789"),  # a kernel socket, as WireGuard
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_tunnel_traffic_is_counted_per_app_with_the_overhead_apart(
    kind: str, tmp_path: Path
) -> None:
    add, port = KINDS[kind]
    with Lab(prefix=f"mgv-{uuid.uuid4().hex[:6]}") as lab:
        tunnel = add(lab)
        extra = f'tunnels = ["{tunnel.ifname}"]\ntunnel_ports = ["{port}"]\n'
        host = GuardedHost(lab, tmp_path / "state", network_extra=extra)
        app = lab.app("firefox", 8601)
        lab.start_servers([8601])
        try:
            host.start()
            before = lab.carrier.read()
            link_before = lab.link_stats(tunnel.ifname)
            assert tunnel_download(app, tunnel, 2_000_000) == 2_000_000
            after = lab.carrier.read()
            link_after = lab.link_stats(tunnel.ifname)
            inner = (link_after.tx_bytes - link_before.tx_bytes,
                     link_after.rx_bytes - link_before.rx_bytes)
            billed = after - before
            total = (billed.up.bytes, billed.down.bytes)
            usage = host.wait_until(lambda u: _total(u) == total)
            assert _total(usage) == total  # what the carrier billed, nothing twice
            assert usage[("esim", "firefox")] == inner  # the app, counted in the tunnel
            overhead = usage[("esim", "vpn-overhead")]
            assert overhead == (total[0] - inner[0], total[1] - inner[1])
            assert 0 < sum(overhead) < 0.1 * sum(inner)
            # A block holds inside the tunnel as on the link itself.
            assert host.cli("block", "firefox")["done"]
            assert tunnel_download(app, tunnel, 1_000_000) < 1_000_000
        finally:
            host.stop()
            tunnel.stop()


def _total(usage: dict[tuple[str, str], tuple[int, int]]) -> tuple[int, int]:
    rows = [v for (net, _), v in usage.items() if net == "esim"]
    return sum(u for u, _ in rows), sum(d for _, d in rows)
