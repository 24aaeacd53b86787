"""The config file: good files load, and every bad one names its file, line and field."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterguard.config import (
    DEFAULT_CONFIG_PATH,
    DEFAULT_STATE_DIR,
    Config,
    ConfigError,
    load_config,
    parse_config,
)

PATH = Path("/etc/meterguard/meterguard.toml")
DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"

GOOD = """\
[daemon]
interval = 1.0
log_level = "info"

[ledger]
minute_retention_days = 35

[[network]]
name = "hk-esim"
interfaces = ["wwan*", "usb0"]
metered = true
plan = "hk-monthly"
time_zone = "Asia/Hong_Kong"

[[network]]
name = "home"
interfaces = ["wlan0", "w*"]
metered = false

[plans.hk-monthly]
quota = "20 GB"
cycle = "monthly:15"
"""


def _error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, PATH)
    return caught.value


def test_good_example_loads() -> None:
    config = parse_config(GOOD, PATH)
    assert config.daemon.interval == 1.0
    assert config.ledger.minute_retention_days == 35
    assert config.ledger.bucket_retention_days == 0
    hk = config.network[0]
    assert hk.name == "hk-esim" and hk.interfaces == ["wwan*", "usb0"]
    assert hk.plan == "hk-monthly" and str(hk.zone()) == "Asia/Hong_Kong"
    assert config.plans["hk-monthly"].quota == 20 * 10**9
    assert config.plans["hk-monthly"].cycle == "monthly:15"
    assert config.plan_for(hk) == config.plans["hk-monthly"]
    assert config.plan_for(config.network[1]) is None
    assert [n.name for n in config.metered_networks()] == ["hk-esim"]


def test_empty_file_gives_defaults() -> None:
    config = parse_config("", PATH)
    assert config == Config()
    assert config.daemon.interval == 1.0
    assert config.daemon.log_level == "info"
    assert config.daemon.state_dir == DEFAULT_STATE_DIR
    assert config.network == [] and config.plans == {}
    assert Path("/etc/meterguard/meterguard.toml") == DEFAULT_CONFIG_PATH


def test_the_documented_example_loads() -> None:
    blocks = re.findall(r"```toml\n(.*?)```", DOCS.read_text(), flags=re.S)
    assert blocks, "docs/configuration.md lost its example"
    config = parse_config(blocks[0], DOCS)
    assert [n.name for n in config.network] == ["hk-esim", "travel", "home-wifi"]
    assert config.plans["travel-7d"].quota == 5 * 10**9


@pytest.mark.parametrize(
    ("ifname", "network"),
    [
        ("usb0", "hk-esim"),  # literal
        ("wwan0", "hk-esim"),  # first matching glob in file order
        ("wlan0", "home"),  # a literal beats hk-esim's earlier "wwan*"... and "w*"
        ("wlp2s0", "home"),  # only "w*" matches
        ("eth0", None),
    ],
)
def test_network_for_interface(ifname: str, network: str | None) -> None:
    found = parse_config(GOOD, PATH).network_for_interface(ifname)
    assert (found.name if found else None) == network


def test_literal_names_win_over_an_earlier_glob() -> None:
    text = """\
[[network]]
name = "cell"
interfaces = ["usb*"]
[[network]]
name = "phone"
interfaces = ["usb0"]
"""
    config = parse_config(text, PATH)
    assert config.network_for_interface("usb0") == config.network[1]
    assert config.network_for_interface("usb1") == config.network[0]


def test_sizes_and_integers() -> None:
    text = """\
[plans.a]
quota = 1048576
cycle = "daily"
[plans.b]
quota = "500 MiB"
cycle = "daily"
[daemon]
interval = 2
"""
    config = parse_config(text, PATH)
    assert config.plans["a"].quota == 1048576
    assert config.plans["b"].quota == 500 * 2**20
    assert config.daemon.interval == 2.0


def _good(old: str, new: str) -> str:
    """GOOD with one edit, refusing an edit that would silently change nothing."""
    assert old in GOOD
    return GOOD.replace(old, new)


NET0, NET1, QUOTA = "network[0]", "network[1]", "plans.hk-monthly.quota"
BAD: list[tuple[str, str, int, str | None, str]] = [
    # (id, text, line, field, words in the message)
    ("unknown table", "[daemon]\ninterval = 1\n\n[deamon]\nx = 1\n", 4, "deamon", "unknown key"),
    ("hint", "[daemon]\nintervall = 2\n", 2, "daemon.intervall", "did you mean 'interval'"),
    ("unknown key, 2nd network", _good("metered = false", "meterd = 0"), 18, f"{NET1}.meterd",
     "known keys here: name, interfaces, metered, plan, time_zone"),
    ("unknown key in a plan",
     _good('cycle = "monthly:15"', 'cycle = "monthly:15"\nrollover = 1'), 23,
     "plans.hk-monthly.rollover", "unknown key"),
    ("wrong type", _good("metered = true", 'metered = "yes"'), 11, f"{NET0}.metered",
     "expected true or false, got a string ('yes')"),
    ("string for a number", "[daemon]\ninterval = '1'\n", 2, "daemon.interval", "a number"),
    ("interval out of range", "[daemon]\n\ninterval = 0.1\n", 3, "daemon.interval",
     "greater than or equal to 0.2, got 0.1"),
    ("bad log level", "[daemon]\nlog_level = 'verbose'\n", 2, "daemon.log_level",
     "'debug', 'info', 'warning' or 'error'"),
    ("relative state dir", "[daemon]\nstate_dir = 'var'\n", 2, "daemon.state_dir", "absolute"),
    ("bad size unit", _good('"20 GB"', '"20 GX"'), 21, QUOTA, "unknown unit 'GX'"),
    ("size is not a size", _good('"20 GB"', '"lots"'), 21, QUOTA, "not a size"),
    ("size as a float", _good('"20 GB"', "20.5"), 21, QUOTA, '"20 GB"'),
    ("zero quota", _good('"20 GB"', "0"), 21, QUOTA, "greater than 0"),
    ("bad glob", _good('"usb0"', '"usb[0]"'), 10, f"{NET0}.interfaces[1]",
     "cannot be matched by nftables"),
    ("name too long", _good('"usb0"', '"enx0123456789abc"'), 10, f"{NET0}.interfaces[1]",
     "at most 15 bytes"),
    ("glob too long", _good('"wwan*"', '"wwp0s20f0u6i123x*"'), 10, f"{NET0}.interfaces[0]",
     "only matches names of 16 bytes"),
    ("slash", _good('"usb0"', '"usb/0"'), 10, f"{NET0}.interfaces[1]", "cannot contain"),
    ("no interfaces", _good('["wlan0", "w*"]', "[]"), 17, f"{NET1}.interfaces", "at least 1"),
    ("bad network name", _good('"home"', '"Home"'), 16, f"{NET1}.name", "not a valid name"),
    ("missing network name", _good('name = "home"\n', ""), 15, f"{NET1}.name",
     "required key is missing"),
    ("missing quota", _good('quota = "20 GB"\n', ""), 20, QUOTA, "required key is missing"),
    ("bad time zone", _good("Asia/Hong_Kong", "Asia/Hongkong"), 13, f"{NET0}.time_zone",
     "unknown time zone"),
    ("bucket retention", "[ledger]\nminute_retention_days = 35\nbucket_retention_days = 7\n",
     3, "ledger.bucket_retention_days", "at least minute_retention_days (35)"),
    ("duplicate network name", _good('"home"', '"hk-esim"'), 16, f"{NET1}.name",
     "already used by network[0]"),
    ("interface claimed twice", _good('"wlan0"', '"usb0"'), 17, f"{NET1}.interfaces[0]",
     "already claimed by network[0] ('hk-esim')"),
    ("interface listed twice", _good('"wwan*"', '"usb0"'), 10, f"{NET0}.interfaces[1]",
     "already claimed earlier in this list"),
    ("plan reference missing", _good('plan = "hk-monthly"', 'plan = "hk-mo"'), 12,
     f"{NET0}.plan", "no plan named 'hk-mo'"),
    ("bad plan name", GOOD + '\n[plans."Big Plan"]\nquota = 1\ncycle = "x"\n', 24,
     'plans."Big Plan"', "not a valid name"),
    ("toml syntax error", _good("metered = false", "metered = fals"), 18, None, "Invalid value"),
    ("toml duplicate key", "[daemon]\ninterval = 1\ninterval = 2\n", 3, None, "overwrite"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "line", "field", "words"), [case[1:] for case in BAD], ids=[case[0] for case in BAD]
)
def test_bad_input_names_line_and_field(
    text: str, line: int, field: str | None, words: str
) -> None:
    error = _error(text)
    assert error.path == PATH
    assert error.line == line
    assert error.field == field
    assert words in error.message
    prefix = f"{PATH}:{line}: " + (f"{field}: " if field else "")
    assert str(error) == prefix + error.message


# Positions written in ways a line scanner could get wrong.
TRICKY: list[tuple[str, str, int, str]] = [
    (
        "multi-line strings inside an array",
        '[[network]]\nname = "a"\ninterfaces = ["""wwan0""", \'\'\'usb0\'\'\']\nmetered = "x"\n',
        4,
        "network[0].metered",
    ),
    ("dotted keys", 'daemon.log_level = "info"\ndaemon.interval = "fast"\n', 2, "daemon.interval"),
    ("inline table", 'daemon = { log_level = "info", interval = "fast" }\n', 1, "daemon.interval"),
    (
        "multi-line array",
        '[[network]]\nname = "a"\ninterfaces = [\n  "wwan0",\n  # a comment, then\n  "usb/0",\n]\n',
        6,
        "network[0].interfaces[1]",
    ),
    (
        "array of inline tables",
        'network = [\n  { name = "a", interfaces = ["x"] },\n'
        '  { name = "b", interface = [] },\n]\n',
        3,
        "network[1].interface",
    ),
    ("quoted keys", '["daemon"]\n"log_level" = "info"\n\'interval\' = "x"\n', 3, "daemon.interval"),
    (
        "after multi-line strings",
        '[plans.a]\ncycle = """\nmonthly\n"""\nquota = "1 GB"\n'
        "[plans.b]\ncycle = '''\n]\n'''\n"
        'quota = "1 GB"\nfoo = 1\n',
        11,
        "plans.b.foo",
    ),
    (
        "sub-table of an array of tables",
        '[[network]]\nname = "a"\ninterfaces = ["x"]\n'
        '[[network]]\nname = "b"\ninterfaces = ["y"]\n[network.extra]\nk = 1\n',
        7,
        "network[1].extra",
    ),
    (
        "comments and CRLF",
        "# comment\r\n[daemon] # trailing\r\n\r\ninterval = 'x' # why\r\n",
        4,
        "daemon.interval",
    ),
]


@pytest.mark.parametrize(
    ("text", "line", "field"), [c[1:] for c in TRICKY], ids=[c[0] for c in TRICKY]
)
def test_lines_of_keys_written_in_other_ways(text: str, line: int, field: str) -> None:
    error = _error(text)
    assert (line, field) in [(e.line, e.field) for e in (error, *error.also)]


def test_several_problems_are_all_reported_in_line_order() -> None:
    # The file's order differs from the schema's, which is the order pydantic reports.
    text = "[ledger]\nminute_retention_days = 0\nbogus = 1\n[daemon]\ninterval = 'x'\n"
    error = _error(text)
    found = [(e.line, e.field) for e in (error, *error.also)]
    assert found == [
        (2, "ledger.minute_retention_days"),
        (3, "ledger.bogus"),
        (5, "daemon.interval"),
    ]


@pytest.mark.parametrize(
    ("pattern", "matches", "refused"),
    [
        ("wwan*", "wwan0", False),
        ("usb*", "usb12", False),
        ("enx0123456789a*", "enx0123456789ab", False),  # a 15-byte prefix can still match
        ("usb[0-3]", None, True),  # nftables has no bracket classes
        ("wwan?", None, True),
        ("*wwan", None, True),  # nor leading or inner wildcards
        ("ww*an*", None, True),
        ("wwan[0", None, True),
    ],
)
def test_globs_are_what_nftables_can_match(
    pattern: str, matches: str | None, refused: bool
) -> None:
    text = f'[[network]]\nname = "n"\ninterfaces = ["{pattern}"]\n'
    if refused:
        assert _error(text).field == "network[0].interfaces[0]"
    else:
        network = parse_config(text, PATH).network[0]
        assert matches is not None and network.matches(matches)


def test_config_error_survives_pickling() -> None:
    error = _error(GOOD.replace('"home"', '"hk-esim"'))
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error) and copy.loc == error.loc


def test_load_config_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "meterguard.toml"
    path.write_text(GOOD)
    assert load_config(path).network[0].name == "hk-esim"
    path.write_text(GOOD.replace("usb0", "usb/0"))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}:10: network[0].interfaces[1]: ")


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    assert load_config(missing, missing_ok=True) == Config()
    with pytest.raises(ConfigError) as caught:
        load_config(missing)
    assert (caught.value.path, caught.value.line) == (missing, None)
    assert str(caught.value) == f"{missing}: no such file"


def test_unreadable_and_undecodable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path, missing_ok=True)  # a directory is not "missing"
    binary = tmp_path / "latin1.toml"
    binary.write_bytes(b"[daemon]\n# caf\xe9\n")
    with pytest.raises(ConfigError) as caught:
        load_config(binary)
    assert caught.value.line == 2 and "UTF-8" in caught.value.message


def test_models_refuse_inconsistency_outside_the_loader_too() -> None:
    with pytest.raises(ConfigError, match=r"network\[0\]\.plan: no plan named 'x'"):
        Config.model_validate({"network": [{"name": "a", "interfaces": ["x"], "plan": "x"}]})


@settings(deadline=None)
@given(
    gaps=st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=6),
    data=st.data(),
)
def test_unknown_key_line_in_generated_files(gaps: list[int], data: st.DataObject) -> None:
    """Blank lines and comments of any length before each table never shift the line."""
    bad = data.draw(st.integers(min_value=0, max_value=len(gaps) - 1))
    lines: list[str] = []
    expected = 0
    for i, gap in enumerate(gaps):
        lines += ["# filler"] * gap
        lines += ["[[network]]", f'name = "n{i}"', f'interfaces = ["if{i}"]']
        if i == bad:
            lines.append("colour = 'blue'")
            expected = len(lines)
    error = _error("\n".join(lines) + "\n")
    assert (error.line, error.field) == (expected, f"network[{bad}].colour")
