"""The command line as scripts use it: exit codes, error messages, the --json shapes."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from meterguard.kernel.cgroupfs import find_cgroup2_mount
from meterguard.ledger.model import UsageDelta
from meterguard.ledger.store import Ledger

CLI = [sys.executable, "-m", "meterguard.cli.main"]
COMMANDS = ["run", "status", "report", "top", "apps", "exec", "uninstall", "demo", "plan",
            "events", "agent", "boot-restore"]


def mg(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"meterguard {' '.join(args)} -> {proc.returncode}: {proc.stderr}")
    return proc


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "mg.toml"
    path.write_text(
        '[[network]]\nname = "esim"\ninterfaces = ["wwan*"]\nmetered = true\n'
        'time_zone = "Asia/Hong_Kong"\n'
    )
    return path


def test_help_lists_every_command() -> None:
    out = mg("--help").stdout
    for command in COMMANDS:
        assert command in out
    for command in COMMANDS:
        assert "Usage:" in mg(command, "--help").stdout


def test_a_bad_config_names_file_line_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[network]]\nname = "esim"\ninterfaces = ["wwan[0]"]\n')
    proc = mg("report", "--config", str(bad), "--state-dir", str(tmp_path), check=False)
    assert proc.returncode == 2
    assert f"{bad}:3: network[0].interfaces[0]:" in proc.stderr


def test_report_json_shape_and_totals(tmp_path: Path, config: Path) -> None:
    now = int(time.time()) // 60 * 60
    with Ledger.open(tmp_path / "ledger.sqlite3") as ledger:
        ledger.record(now, [UsageDelta("esim", "firefox", 100, 5000),
                            UsageDelta("esim", "unattributed", 7, 9)])
        ledger.record(now + 60, [UsageDelta("esim", "firefox", 1, 2)])
    data = json.loads(mg("report", "--config", str(config), "--state-dir", str(tmp_path),
                         "--period", "day", "--by", "app", "--json").stdout)
    assert data["time_zone"] == "Asia/Hong_Kong"
    rows = {r["app"]: r for r in data["rows"]}
    assert rows["firefox"]["bytes_up"] == 101 and rows["firefox"]["bytes_down"] == 5002
    assert rows["firefox"]["network"] == "esim"
    assert rows["unattributed"]["bytes_down"] == 9
    by_net = json.loads(mg("report", "--config", str(config), "--state-dir", str(tmp_path),
                           "--by", "network", "--period", "month", "--json").stdout)
    assert by_net["rows"] == [{"network": "esim", "bytes_up": 108, "bytes_down": 5011,
                               "bytes_total": 5119, "bytes_foreground": 5119,
                               "bytes_background": 0}]
    apps = json.loads(mg("apps", "--state-dir", str(tmp_path), "--json").stdout)["apps"]
    assert {a["app"] for a in apps} == {"firefox", "unattributed"}


def test_report_refuses_bad_options(tmp_path: Path, config: Path) -> None:
    for args, word in ((("--period", "year"), "--period"), (("--by", "device"), "--by")):
        proc = mg("report", "--config", str(config), "--state-dir", str(tmp_path), *args,
                  check=False)
        assert proc.returncode == 2 and word in proc.stderr


def test_status_and_top_without_a_daemon(tmp_path: Path, config: Path) -> None:
    status = json.loads(mg("status", "--config", str(config), "--state-dir", str(tmp_path),
                           "--json").stdout)
    assert status["running"] is False
    assert status["networks"] == [{"name": "esim", "interfaces": ["wwan*"], "metered": True}]
    top = json.loads(mg("top", "--state-dir", str(tmp_path), "--json").stdout)
    assert top["rates"] == []


@pytest.mark.privileged
def test_exec_runs_the_command_in_a_cgroup_of_its_own() -> None:
    name = f"t{uuid.uuid4().hex[:6]}"
    proc = mg("exec", "--app", name, "--", "cat", "/proc/self/cgroup")
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("0::"))
    path = line[3:].lstrip("/")
    assert path.startswith(f"meterguard.slice/app-meterguard-{name}-")
    from meterguard.core.identity import identify_cgroup

    identity = identify_cgroup(path)
    assert identity is not None and identity.name == name and identity.kind == "exec"
    # The daemon would collect it; there is none here. Its slice goes too if now empty.
    os.rmdir(find_cgroup2_mount() / path)
    with contextlib.suppress(OSError):
        os.rmdir(find_cgroup2_mount() / "meterguard.slice")


def test_exec_without_a_command_is_refused() -> None:
    proc = mg("exec", "--app", "x", check=False)
    assert proc.returncode == 2 and "no command" in proc.stderr


def test_report_by_cycle_and_plan_offline(tmp_path: Path) -> None:
    config = tmp_path / "plan.toml"
    config.write_text(
        '[[network]]\nname = "esim"\ninterfaces = ["wwan0"]\nplan = "hk"\n\n'
        '[plans.hk]\nquota = "1 GB"\ncycle = "daily"\ntime_zone = "Asia/Hong_Kong"\n'
    )
    now = int(time.time()) // 60 * 60
    with Ledger.open(tmp_path / "ledger.sqlite3") as ledger:
        ledger.record(now, [UsageDelta("esim", "firefox", 100_000, 400_000_000)])
        ledger.record(now - 3 * 86400, [UsageDelta("esim", "firefox", 1, 1)])  # older cycle
    data = json.loads(mg("report", "--config", str(config), "--state-dir", str(tmp_path),
                         "--period", "cycle", "--json").stdout)
    assert data["time_zone"] == "Asia/Hong_Kong"
    assert data["rows"][0]["bytes_down"] == 400_000_000
    plans = json.loads(mg("plan", "--config", str(config), "--state-dir", str(tmp_path),
                          "--json").stdout)["plans"]
    (plan,) = plans
    assert plan["used_bytes"] == 400_100_000
    assert plan["remaining_bytes"] == 10**9 - 400_100_000
    assert plan["forecast"]["daily_budget_bytes"] == plan["remaining_bytes"]
    text = mg("plan", "--config", str(config), "--state-dir", str(tmp_path)).stdout
    assert "hk (esim)" in text and "daily budget" in text
