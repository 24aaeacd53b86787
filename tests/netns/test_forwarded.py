"""Traffic the host routes for others (a container, a VM, a hotspot client) is `forwarded`."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from meterguard.lab import Lab
from meterguard.lab.guarded import GuardedHost
from meterguard.lab.netns import disable_offloads, ip, ns_add, ns_argv, ns_delete, run, sysctl

pytestmark = pytest.mark.privileged

PORT = 8191
HOST_SIDE, GUEST_SIDE = "192.0.2.65", "192.0.2.66"  # documentation range, lab-only


def test_forwarded_traffic_has_its_own_bucket(tmp_path: Path) -> None:
    prefix = f"mgf-{uuid.uuid4().hex[:6]}"
    guest = f"{prefix}-guest"
    with Lab(prefix=prefix) as lab:
        ns_add(guest)
        try:
            # A container behind the host, NATed out of wwan0 as Docker or a hotspot would be.
            ip(lab.ns_host, "link", "add", "ctr0", "type", "veth", "peer", "name", "eth0",
               "netns", guest)
            for ns, dev, addr in ((lab.ns_host, "ctr0", HOST_SIDE), (guest, "eth0", GUEST_SIDE)):
                disable_offloads(ns, dev)
                ip(ns, "addr", "add", f"{addr}/30", "dev", dev)
                ip(ns, "link", "set", dev, "up")
            ip(guest, "route", "add", "default", "via", HOST_SIDE)
            sysctl(lab.ns_host, {"net.ipv4.ip_forward": 1})
            run(ns_argv(lab.ns_host, ["nft", "add table ip labnat; add chain ip labnat post "
                                      "{ type nat hook postrouting priority 100; }; add rule "
                                      "ip labnat post oifname wwan0 masquerade"]))
            lab.start_servers([PORT])
            host = GuardedHost(lab, tmp_path / "state")
            try:
                host.start()
                before = lab.carrier.read()
                client = [sys.executable, "-m", "meterguard.lab.traffic", "download",
                          "--addr", lab.server_addr("wwan"), "--port", str(PORT),
                          "--nbytes", "2000000", "--timeout", "30"]
                proc = lab.popen(ns_argv(guest, client), stdout=subprocess.PIPE)
                out, _ = proc.communicate(timeout=60)
                assert json.loads(out.strip().splitlines()[-1])["received"] == 2_000_000
                delta = (lab.carrier.read() - before).port(PORT)
                want = (delta.up.bytes, delta.down.bytes)
                usage = host.wait_until(lambda u: u.get(("esim", "forwarded")) == want)
                assert usage.get(("esim", "forwarded")) == want
                assert want[1] > 2_000_000
                assert ("esim", "unattributed") not in usage
            finally:
                host.stop()
        finally:
            ns_delete(guest)
