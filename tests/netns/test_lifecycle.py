"""Daemon lifecycle in the lab: interface settings, a clean stop, uninstall."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest

from meterguard.lab import Lab
from meterguard.lab.guarded import CLI, GuardedHost
from meterguard.lab.netns import ns_argv

pytestmark = pytest.mark.privileged


def gso_max_segs(lab: Lab) -> int:
    out = subprocess.run(
        ns_argv(lab.ns_host, ["ip", "-d", "-j", "link", "show", "dev", lab.metered_ifname]),
        capture_output=True, text=True, check=True,
    ).stdout
    return int(json.loads(out)[0]["gso_max_segs"])


def test_stop_restores_the_interface_and_uninstall_removes_the_table(tmp_path: Path) -> None:
    with Lab(prefix=f"mgc-{uuid.uuid4().hex[:6]}") as lab:
        host = GuardedHost(lab, tmp_path / "state")
        original = gso_max_segs(lab)
        assert original > 1
        try:
            host.start()
            assert gso_max_segs(lab) == 1  # TCP sends MSS-sized packets: exact upload counts
        finally:
            assert host.stop() == 0  # SIGTERM: a clean exit
        assert gso_max_segs(lab) == original
        # The table stays after a stop: the kernel keeps counting until the next start.
        assert "meterguard" in host.nft("list", "tables")
        argv = ns_argv(lab.ns_host, [*CLI, "uninstall", "--state-dir", str(host.state_dir),
                                     "--json"])
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
        assert json.loads(done.stdout)["table_removed"] is True
        assert "meterguard" not in host.nft("list", "tables")


def test_a_second_daemon_on_the_same_state_is_refused(tmp_path: Path) -> None:
    with Lab(prefix=f"mgc-{uuid.uuid4().hex[:6]}") as lab:
        host = GuardedHost(lab, tmp_path / "state")
        try:
            host.start()
            argv = lab.host_cmd([*CLI, "run", "--config", str(host.config),
                                 "--state-dir", str(host.state_dir)])
            second = subprocess.run(argv, capture_output=True, text=True, timeout=60)
            assert second.returncode == 75
            assert "another meterguard daemon" in second.stderr
        finally:
            host.stop()
