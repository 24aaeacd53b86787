"""Plans and alerts in the config: real plans load, mistakes name their line and field."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from meterguard.config import ConfigError, parse_config
from meterguard.core.cycles import Every, Monthly
from meterguard.core.plans import BytesLeft, Percent, plan_cycle

PATH = Path("/etc/meterguard/meterguard.toml")

HK = """\
[[network]]
name = "hk-esim"
interfaces = ["wwan*"]
plan = "hk-monthly"

[[network]]
name = "hotspot"
interfaces = ["usb0"]
plan = "hk-monthly"

[plans.hk-monthly]
quota = "20 GB"
cycle = "monthly:15"
time_zone = "Asia/Hong_Kong"
rollover_max = "5 GB"
free_window = "01:00-07:00"
daily_limit = "2 GB"
thresholds = [50, "80%", 90, 100, "500 MB left"]
cap_action = "block-others"
allow = ["meterguard", "signal"]

[plans.travel]
quota = "5 GB"
cycle = "pass:7d@2026-12-20T09:30"
time_zone = "Asia/Tokyo"

[alerts]
apprise = ["json://127.0.0.1:8080/hook", "ntfy://ntfy.example/topic"]
"""


def test_a_real_plan_loads_with_every_option() -> None:
    config = parse_config(HK, PATH)
    plan = config.plans["hk-monthly"].to_plan("hk-monthly")
    assert plan.quota_bytes == 20 * 10**9
    assert plan.cycle == Monthly(15)
    assert plan.tz.key == "Asia/Hong_Kong"
    assert plan.rollover is not None and plan.rollover.max_bytes == 5 * 10**9
    assert plan.daily_limit_bytes == 2 * 10**9
    assert plan.thresholds == (Percent(50), Percent(80), Percent(90), Percent(100),
                               BytesLeft(500 * 10**6))
    assert plan.cap_action == "block-others" and plan.allow_list == ("meterguard", "signal")
    assert [n.name for n in config.plan_networks("hk-monthly")] == ["hk-esim", "hotspot"]
    cycle = plan_cycle(plan, datetime(2026, 11, 27, tzinfo=UTC))
    assert cycle is not None and cycle[0] == datetime(2026, 11, 14, 16, 0, tzinfo=UTC)
    travel = config.plans["travel"].to_plan("travel")
    assert isinstance(travel.cycle, Every) and travel.cycle.ends_plan
    assert config.alerts.apprise[0] == "json://127.0.0.1:8080/hook"


@pytest.mark.parametrize(
    ("old", "new", "line", "field", "words"),
    [
        ("cycle = \"monthly:15\"", "cycle = \"monthly:32\"", 13, "plans.hk-monthly.cycle", "DAY"),
        ('free_window = "01:00-07:00"', 'free_window = "1am"', 16,
         "plans.hk-monthly.free_window", "window"),
        ('"500 MB left"', '"lots left"', 18, "plans.hk-monthly.thresholds[4]", "size"),
        ('cap_action = "block-others"', 'cap_action = "explode"', 19,
         "plans.hk-monthly.cap_action", "pause"),
        ('daily_limit = "2 GB"', "daily_limit = 2.5", 17, "plans.hk-monthly.daily_limit",
         "whole number"),
        ('"ntfy://ntfy.example/topic"', '"not a url"', 28, "alerts.apprise[1]", "apprise URL"),
    ],
)
def test_plan_mistakes_name_line_and_field(
    old: str, new: str, line: int, field: str, words: str
) -> None:
    assert old in HK
    with pytest.raises(ConfigError) as caught:
        parse_config(HK.replace(old, new), PATH)
    error = caught.value
    assert (error.line, error.field) == (line, field)
    assert words in error.message


def test_every_example_in_the_reference_and_readme_loads() -> None:
    root = Path(__file__).parents[2]
    doc = (root / "docs" / "configuration.md").read_text() + (root / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in doc.split("```toml\n")[1:]]
    assert len(blocks) >= 5
    for block in blocks:
        config = parse_config(block, Path("docs/configuration.md"))
        for name, plan in config.plans.items():
            plan.to_plan(name)


def test_tunnels_need_their_underlay_port() -> None:
    text = '[[network]]\nname = "esim"\ninterfaces = ["wwan0"]\ntunnels = ["tun0"]\n'
    for missing in ("tunnel_ports = []\n", ""):
        with pytest.raises(ConfigError) as caught:
            parse_config(text + missing, PATH)
        assert caught.value.field == "network[0].tunnel_ports"
    config = parse_config(text + 'tunnel_ports = ["udp:1194"]\n', PATH)
    assert config.network[0].tunnels == ["tun0"]
