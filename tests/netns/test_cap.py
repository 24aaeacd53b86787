"""The hard cap in the lab: the kernel quota holds, with or without the daemon, and alerts get out.

Bytes past the cap are measured where they are billed: the carrier's forward chain.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from meterguard.lab import Lab
from meterguard.lab.carrier import CarrierCounts
from meterguard.lab.guarded import CLI, GuardedHost
from meterguard.lab.hook import Hook, start_hook
from meterguard.lab.netns import ns_argv

pytestmark = pytest.mark.privileged

CAP = 5_000_000
ONE_PACKET = 1500
DOWNLOAD_PAST_CAP = 256 * 1024


def plan_toml(quota: int = CAP, cycle: str = "daily", extra: str = "") -> str:
    return (f'\n[plans.tiny]\nquota = {quota}\ncycle = "{cycle}"\ntime_zone = "UTC"\n'
            f"{extra}")


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab(prefix=f"mgp-{uuid.uuid4().hex[:6]}") as built:
        yield built


def guarded(lab: Lab, tmp: Path, extra: str = "") -> GuardedHost:
    return GuardedHost(lab, tmp / "state", plan="tiny", extra=plan_toml() + extra)


def billed(before: CarrierCounts, lab: Lab) -> int:
    """Bytes the carrier counted since `before`, once it stopped moving."""
    delta = lab.carrier.read_settled(quiet_reads=1) - before
    return delta.up.bytes + delta.down.bytes


def test_upload_stops_within_one_packet_of_the_cap(lab: Lab, tmp_path: Path) -> None:
    app = lab.app("onedrive.service", 8301)
    lab.start_servers([8301])
    host = guarded(lab, tmp_path)
    try:
        host.start()
        before = lab.carrier.read()
        handle = app.start_upload(20_000_000, timeout=20)
        result = handle.wait(40)
        assert result.sent < 20_000_000
        assert billed(before, lab) <= CAP + ONE_PACKET
        assert billed(before, lab) > CAP - 64 * 1024
    finally:
        host.stop()


def test_download_billed_past_the_cap_is_small(lab: Lab, tmp_path: Path) -> None:
    app = lab.app("firefox", 8302)
    lab.start_servers([8302])
    host = guarded(lab, tmp_path)
    try:
        host.start()
        before = lab.carrier.read()
        result = app.start_download(20_000_000, timeout=20).wait(40)
        assert result.received < 20_000_000
        past = billed(before, lab) - CAP
        assert past <= DOWNLOAD_PAST_CAP, past
        paused = host.wait_until_plan(lambda p: p["paused"])
        assert paused["paused"] and paused["remaining_bytes"] == 0
    finally:
        host.stop()


def test_the_cap_holds_with_the_daemon_killed_at_90_percent(
    lab: Lab, tmp_path: Path
) -> None:
    app = lab.app("firefox", 8303)
    lab.start_servers([8303])
    host = guarded(lab, tmp_path)
    before = lab.carrier.read()
    try:
        host.start()
        assert app.download(4_400_000) == 4_400_000
        host.wait_until_plan(lambda p: p["percent_used"] >= 88)
    finally:
        host.kill9()
    result = app.start_download(5_000_000, timeout=20).wait(40)
    assert result.received < 5_000_000
    assert billed(before, lab) <= CAP + DOWNLOAD_PAST_CAP


def test_a_flushed_table_is_restored_with_the_cap_already_used(
    lab: Lab, tmp_path: Path
) -> None:
    app = lab.app("firefox", 8304)
    lab.start_servers([8304])
    host = guarded(lab, tmp_path)
    before = lab.carrier.read()
    try:
        host.start()
        assert app.download(3_000_000) == 3_000_000
        host.wait_until_plan(lambda p: p["used_bytes"] >= 3_000_000)
    finally:
        host.stop()
    host.nft("flush", "ruleset")  # what a reboot leaves: no table at all
    restore = ns_argv(lab.ns_host, [*CLI, "boot-restore", "--state-dir", str(host.state_dir)])
    done = subprocess.run(restore, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "meterguard" in host.nft("list", "tables")
    result = app.start_download(5_000_000, timeout=20).wait(40)
    assert result.received < 2_100_000
    assert billed(before, lab) <= CAP + DOWNLOAD_PAST_CAP


def test_the_100_percent_alert_gets_out_over_the_paused_link(
    lab: Lab, tmp_path: Path
) -> None:
    app = lab.app("firefox", 8305)
    lab.start_servers([8305])
    hook = start_hook(lab, tmp_path / "hook.txt")
    host = guarded(lab, tmp_path, f'\n[alerts]\napprise = ["{hook.url}"]\n')
    try:
        host.start()
        app.start_download(20_000_000, timeout=20).wait(40)
        host.wait_until_plan(lambda p: p["paused"])
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not _cap_posts(hook):
            time.sleep(0.2)
        (post,) = _cap_posts(hook)
        assert "tiny" in post
        host.wait_until_polls(3)
        assert len(_cap_posts(hook)) == 1  # sent once, not at every poll past the cap
        # And the link really is paused for everyone else.
        assert app.start_download(1_000_000, timeout=5).wait(20).received < 1_000_000
    finally:
        host.stop()


def _cap_posts(hook: Hook) -> list[str]:
    return [body for _, body in hook.posts() if "100%" in body]


def test_thresholds_fire_once_across_restarts(lab: Lab, tmp_path: Path) -> None:
    app = lab.app("firefox", 8306)
    lab.start_servers([8306])
    host = guarded(lab, tmp_path)
    try:
        host.start()
        app.download(4_200_000)
        host.wait_until_plan(lambda p: p["percent_used"] >= 84)
        deadline = time.monotonic() + 10
        keys: list[str] = []
        while time.monotonic() < deadline:
            keys = [e["key"] for e in host.events() if e["kind"] == "alert"]
            if len(keys) >= 2:
                break
            time.sleep(0.2)
        assert [k.rsplit(":", 1)[1] for k in keys] == ["50%", "80%"]
        host.stop()
        host.start()
        host.wait_until_polls(3)
        again = [e["key"] for e in host.events() if e["kind"] == "alert"]
        assert again == keys
    finally:
        host.stop()


def test_rollover_resumes_traffic_with_a_fresh_count(lab: Lab, tmp_path: Path) -> None:
    app = lab.app("firefox", 8307)
    lab.start_servers([8307])
    host = guarded(lab, tmp_path)
    now = time.time()
    to_midnight = 86400 - now % 86400
    host.move_clock(to_midnight - 60)  # one minute before the daily cycle ends (UTC)
    try:
        host.start()
        app.start_download(20_000_000, timeout=20).wait(40)
        host.wait_until_plan(lambda p: p["paused"])
        assert app.start_download(500_000, timeout=5).wait(20).received < 500_000
        host.move_clock(to_midnight + 5)  # the next cycle has begun
        plan = host.wait_until_plan(lambda p: not p["paused"])
        assert not plan["paused"]
        assert app.download(1_000_000) == 1_000_000
        fresh = host.wait_until_plan(lambda p: p["used_bytes"] >= 1_000_000)
        assert fresh["used_bytes"] < 1_200_000
    finally:
        host.stop()
