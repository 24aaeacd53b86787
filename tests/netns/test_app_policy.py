"""Per-app policy in the lab: blocks hold on the metered link only, at once, and for new
cgroups too; the leak detector catches a background leak and leaves browsing alone."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from meterguard.lab import Lab
from meterguard.lab.guarded import GuardedHost
from meterguard.ledger.model import UsageDelta
from meterguard.ledger.store import Ledger

pytestmark = pytest.mark.privileged


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab(prefix=f"mgy-{uuid.uuid4().hex[:6]}") as built:
        yield built


def test_a_blocked_app_fails_on_wwan_but_works_on_wifi(lab: Lab, tmp_path: Path) -> None:
    app = lab.app("firefox", 8501)
    other = lab.app("org.gnome.Maps", 8502)
    lab.start_servers([8501, 8502])
    host = GuardedHost(lab, tmp_path / "state")
    try:
        host.start()
        assert app.download(500_000) == 500_000
        done = host.cli("block", "firefox", "--on", "metered")
        assert done["done"], done
        assert app.start_download(1_000_000, timeout=5).wait(20).received < 1_000_000
        assert app.download(1_000_000, via="wlan") == 1_000_000
        assert other.download(1_000_000) == 1_000_000  # only the blocked app
        policy = host.status()["policy"]
        row = next(r for r in policy["apps"] if r["app"] == "firefox")
        assert row["blocked_now"] and row["rule"] == "block"
        assert host.cli("allow", "firefox")["done"]
        assert app.download(1_000_000) == 1_000_000
    finally:
        host.stop()


def test_allow_list_mode_blocks_apps_not_on_the_list(lab: Lab, tmp_path: Path) -> None:
    listed = lab.app("firefox", 8511)
    unlisted = lab.app("com.example.Chat", 8512)
    lab.start_servers([8511, 8512])
    policy = '[policy]\nmode = "allow-list"\nallow = ["firefox"]\ndefault_profile = false\n\n'
    host = GuardedHost(lab, tmp_path / "state", policy=policy)
    try:
        host.start()
        assert listed.download(1_000_000) == 1_000_000
        assert unlisted.start_download(1_000_000, timeout=5).wait(20).received < 1_000_000
        assert unlisted.download(1_000_000, via="wlan") == 1_000_000
    finally:
        host.stop()


def test_a_restarted_blocked_service_is_blocked_in_its_new_cgroup(
    lab: Lab, tmp_path: Path
) -> None:
    policy = '[policy]\ndefault_profile = false\n[policy.apps]\ndropbox = "block"\n\n'
    host = GuardedHost(lab, tmp_path / "state", policy=policy)
    lab.start_servers([8521])
    try:
        host.start()
        first = lab.app("system.slice/dropbox.service", 8521)
        assert first.start_download(1_000_000, timeout=5).wait(20).received < 1_000_000
        # The service restarts into a new cgroup (a new id), and starts downloading at once.
        first.cgroup.path.rmdir()
        restarted = lab.app("system.slice/dropbox.service", 8521)
        before = lab.carrier.read()
        got = restarted.start_download(5_000_000, timeout=5).wait(20).received
        billed = (lab.carrier.read() - before).port(8521)
        assert got < 5_000_000
        assert billed.up.bytes + billed.down.bytes <= 64 * 1024, billed
    finally:
        host.stop()


def test_a_block_cuts_a_running_download(lab: Lab, tmp_path: Path) -> None:
    app = lab.app("firefox", 8531)
    lab.start_servers([8531])
    host = GuardedHost(lab, tmp_path / "state")
    try:
        host.start()
        transfer = app.start_download(50_000_000, pace_s=20.0, timeout=60)
        host.wait_until(lambda u: u.get(("esim", "firefox"), (0, 0))[1] > 500_000)
        assert transfer.poll() is None  # still running when the block comes
        host.cli("block", "firefox")
        result = transfer.wait(30)
        assert result.received < 50_000_000  # cut, not finished
        # Nothing more reaches the app's port once the block holds.
        first = lab.carrier.read().port(8531)
        host.wait_until_polls(2)
        again = lab.carrier.read().port(8531)
        assert again.down.bytes - first.down.bytes <= 64 * 1024
    finally:
        host.stop()


def seed_history(path: Path, app: str, hours: int, per_hour: int) -> None:
    """Hours of ordinary background use before the test: the baseline a leak stands out of."""
    now = int(time.time()) // 3600 * 3600
    with Ledger.open(path) as ledger:
        for h in range(1, hours + 1):
            at = now - h * 3600 + 600
            ledger.record(at, [UsageDelta("esim", app, per_hour, per_hour // 10,
                                          bytes_up_bg=per_hour, bytes_down_bg=per_hour // 10)],
                          app_kinds={app: "service"})
        # Seen long ago: not a "new app" today.
        ledger.record(now - 30 * 86400, [UsageDelta("esim", app, 1, 1)])


def test_the_leak_detector_catches_background_sync_not_browsing(
    lab: Lab, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    seed_history(state / "ledger.sqlite3", "onedrive", hours=48, per_hour=2_000_000)
    seed_history(state / "ledger.sqlite3", "firefox", hours=48, per_hour=0)
    sync = lab.app("onedrive.service", 8541)
    browser = lab.app("firefox", 8542)
    lab.start_servers([8541, 8542])
    host = GuardedHost(lab, state)
    try:
        host.start()
        assert browser.download(30_000_000) == 30_000_000  # foreground browsing, heavy
        assert sync.upload(25_000_000) == 25_000_000  # a sync run far above its baseline
        deadline = time.monotonic() + 60  # the detector runs every 15 s
        found: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            found = host.cli("leaks")["leaks"]
            if any(f.get("app") == "onedrive" for f in found):
                break
            time.sleep(0.5)
        sync_findings = [f for f in found if f.get("app") == "onedrive"]
        assert sync_findings, found
        assert sync_findings[0]["kind"] == "background-above-baseline"
        assert "meterguard block onedrive" in str(sync_findings[0]["fix"])
        assert not [f for f in found if f.get("app") == "firefox"], found
        # The fix works: applied, the sync stops on wwan0 and keeps working on wlan0.
        assert host.cli("block", "onedrive")["done"]
        assert sync.start_upload(2_000_000, timeout=5).wait(20).sent < 2_000_000
        assert sync.upload(2_000_000, via="wlan") == 2_000_000
    finally:
        host.stop()
