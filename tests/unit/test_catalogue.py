"""The catalogue of background data users: shipped data, identity names, merging, errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from meterguard.core.catalogue import (
    SHIPPED_SOURCE,
    Catalogue,
    CatalogueEntry,
    CatalogueError,
    Category,
    default_catalogue,
    extend_shipped,
    load_catalogue,
    read_sources,
    shipped_text,
)
from meterguard.core.identity import identify_cgroup, identify_executable

USER = "user.slice/user-1000.slice/user@1000.service"

BRIEF_NAMES = {
    "updates": [
        "apt-daily",
        "apt-daily-upgrade",
        "unattended-upgrades",
        "packagekit",
        "packagekitd",
        "gnome-software",
        "org.gnome.Software",
        "plasma-discover",
        "org.kde.discover",
        "snapd",
        "flatpak",
        "flatpak-system-helper",
        "fwupd",
        "fwupd-refresh",
        "dnf",
        "dnf-makecache",
        "dnf-automatic",
    ],
    "cloud-sync": [
        "dropbox",
        "com.dropbox.Client",
        "onedrive",
        "nextcloud",
        "com.nextcloud.desktopclient.nextcloud",
        "owncloud",
        "com.owncloud.desktopclient",
        "syncthing",
        "rclone",
        "insync",
        "megasync",
        "nz.mega.MEGAsync",
        "goa-daemon",
        "gvfsd-google",
        "gvfs-goa-volume-monitor",
    ],
    "telemetry-push": ["whoopsie", "apport-autoreport", "ubuntu-report", "popularity-contest"],
    "streaming": ["spotify", "com.spotify.Client"],
    "games": ["steam", "com.valvesoftware.Steam"],
}


def test_shipped_catalogue_has_the_categories_and_default_profile() -> None:
    catalogue = default_catalogue()
    assert list(catalogue.categories) == [
        "updates",
        "cloud-sync",
        "telemetry-push",
        "streaming",
        "games",
        "p2p",
    ]
    assert catalogue.profile == {
        "updates": "block",
        "cloud-sync": "block",
        "telemetry-push": "block",
        "streaming": "background",
        "games": "block",
        "p2p": "block",
    }
    for category in catalogue.categories.values():
        assert category.description and category.source == SHIPPED_SOURCE
        assert catalogue.entries_in(category.name)


@pytest.mark.parametrize(
    ("category", "name"), [(c, n) for c, names in BRIEF_NAMES.items() for n in names]
)
def test_shipped_catalogue_knows_the_usual_background_users(category: str, name: str) -> None:
    assert default_catalogue().category_of(name) == category


def test_every_shipped_entry_is_described() -> None:
    catalogue = default_catalogue()
    assert len(catalogue.entries) >= 40
    for entry in catalogue.entries:
        assert entry.description != entry.id, entry.id
        assert entry.names and entry.category in catalogue.categories


@pytest.mark.parametrize(
    ("path", "category"),
    [
        ("system.slice/packagekit.service", "updates"),
        ("system.slice/apt-daily-upgrade.service", "updates"),
        ("system.slice/fwupd-refresh.service", "updates"),
        ("system.slice/snapd.service", "updates"),
        (f"{USER}/app.slice/app-gnome-org.gnome.Software-2201.scope", "updates"),
        (f"{USER}/app.slice/app-flatpak-com.dropbox.Client-81234.scope", "cloud-sync"),
        (f"{USER}/app.slice/app-gnome-nextcloud@autostart.service", "cloud-sync"),
        (f"{USER}/app.slice/syncthing.service", "cloud-sync"),
        (f"{USER}/session.slice/dbus-:1.2-org.gnome.OnlineAccounts@0.service", "cloud-sync"),
        (f"{USER}/app.slice/snap.spotify.spotify-5d1c0b7e.scope", "streaming"),
        ("system.slice/whoopsie.service", "telemetry-push"),
        (f"{USER}/app.slice/app-gnome-firefox-1234.scope", None),
    ],
)
def test_names_match_what_identities_produce(path: str, category: str | None) -> None:
    identity = identify_cgroup(path)
    assert identity is not None
    assert default_catalogue().category_of(identity.name) == category


def test_executable_fallback_names_match() -> None:
    identity = identify_executable("/opt/dropbox/dropbox (deleted)", "session-2.scope")
    assert default_catalogue().category_of(identity.name) == "cloud-sync"


def test_names_match_case_insensitively() -> None:
    catalogue = default_catalogue()
    assert catalogue.category_of("MEGASync") == "cloud-sync"
    entry = catalogue.entry_for("COM.SPOTIFY.CLIENT")
    assert entry is not None and entry.id == "spotify"
    assert catalogue.category_of("no-such-app") is None


def test_shipped_text_is_the_packaged_file() -> None:
    packaged = Path(__file__).parents[2] / "src/meterguard/data/catalogue.toml"
    assert shipped_text() == packaged.read_text("utf-8")


BASE = """\
[category.updates]
description = "Updates"
metered = "block"

[category.streaming]
description = "Streaming"
metered = "background"

[app.packagekit]
category = "updates"
description = "PackageKit"
names = ["packagekit", "packagekitd"]

[app."com.spotify.Client"]
category = "streaming"
description = "Spotify"
names = ["spotify", "com.spotify.Client"]
"""


def test_a_later_source_changes_only_the_fields_it_sets() -> None:
    extra = """\
[category.streaming]
metered = "allow"

[app.packagekit]
category = "streaming"
"""
    catalogue = load_catalogue([("base", BASE), ("/etc/meterguard/catalogue.d/10-me.toml", extra)])
    assert catalogue.profile == {"updates": "block", "streaming": "allow"}
    assert catalogue.categories["streaming"].description == "Streaming"
    entry = catalogue.entry_for("packagekitd")
    assert entry is not None
    assert entry.category == "streaming"
    assert entry.description == "PackageKit"
    assert entry.names == ("packagekit", "packagekitd")
    assert entry.source == "/etc/meterguard/catalogue.d/10-me.toml"


def test_a_later_source_adds_categories_and_entries() -> None:
    extra = """\
[category.backup]
description = "Off-site backups"

[app.restic]
category = "backup"
names = ["restic", "restic-backup"]
"""
    catalogue = load_catalogue([("base", BASE), ("extra", extra)])
    assert catalogue.category_of("restic-backup") == "backup"
    assert catalogue.profile_rule("backup") is None  # no default-profile rule given
    restic = catalogue.entry_for("restic")
    assert restic is not None and restic.description == "restic"


def test_a_name_listed_by_a_later_entry_moves_to_it() -> None:
    extra = """\
[app.my-updater]
category = "updates"
names = ["SPOTIFY"]
"""
    catalogue = load_catalogue([("base", BASE), ("extra", extra)])
    assert catalogue.category_of("spotify") == "updates"
    spotify = next(e for e in catalogue.entries if e.id == "com.spotify.Client")
    assert spotify.names == ("com.spotify.Client",)


def test_replacing_an_entrys_names_releases_the_old_ones() -> None:
    extra = '[app.packagekit]\nnames = ["packagekitd"]\n'
    catalogue = load_catalogue([("base", BASE), ("extra", extra)])
    assert catalogue.category_of("packagekit") is None
    assert catalogue.category_of("packagekitd") == "updates"


def test_extend_shipped_puts_the_user_texts_after_the_shipped_one() -> None:
    catalogue = extend_shipped([("mine", '[category.streaming]\nmetered = "block"\n')])
    assert catalogue.profile_rule("streaming") == "block"
    assert catalogue.category_of("packagekit") == "updates"


def _error(texts: list[tuple[str, str]]) -> CatalogueError:
    with pytest.raises(CatalogueError) as caught:
        load_catalogue(texts)
    return caught.value


def test_a_syntax_error_names_the_source_and_line() -> None:
    error = _error([("base", BASE), ("bad.toml", '[app.x]\ncategory = "updates"\nnames = [\n')])
    assert error.source == "bad.toml"
    assert error.line is not None and error.line >= 3
    assert str(error).startswith("bad.toml:")


@pytest.mark.parametrize(
    ("text", "line", "field", "words"),
    [
        ('[app.packagekit]\ncategori = "updates"\n', 2, "app.packagekit.categori", "unknown field"),
        ('[category.updates]\nmetered = "maybe"\n', 2, "category.updates.metered", "one of"),
        ('\n[app.new]\ncategory = "updates"\n', 2, "app.new", "needs `names`"),
        ('[app.new]\nnames = ["x"]\n', 1, "app.new", "needs `category`"),
        ('[app.new]\ncategory = "updates"\nnames = []\n', 3, "app.new.names", "non-empty"),
        (
            '[app.new]\ncategory = "updates"\nnames = [\n  "a",\n  "",\n]\n',
            3,
            "app.new.names[1]",
            "non-empty",
        ),
        ('[app.new]\ncategory = "updates"\nnames = ["a", "A"]\n', 3, "app.new.names[1]", "twice"),
        ('[apps.new]\ncategory = "updates"\n', 1, "apps", "unknown table"),
        ('[app."bad name"]\ncategory = "updates"\nnames = ["a"]\n', 1, 'app."bad name"', "name"),
        ("[category.x]\ndescription = 3\n", 2, "category.x.description", "string"),
        ("app = 3\n", 1, "app", "tables"),
    ],
)
def test_bad_fields_name_source_line_and_field(
    text: str, line: int, field: str, words: str
) -> None:
    error = _error([("base", BASE), ("extra.toml", text)])
    assert (error.source, error.line, error.field) == ("extra.toml", line, field)
    assert words in error.message
    assert str(error) == f"extra.toml:{line}: {field}: {error.message}"


def test_an_unknown_category_is_reported_where_it_was_set() -> None:
    extra = '# mine\n\n[app."org.example.Sync"]\ncategory = "sink"\nnames = ["x"]\n'
    error = _error([("base", BASE), ("extra.toml", extra)])
    assert (error.source, error.line) == ("extra.toml", 4)
    assert error.field == 'app."org.example.Sync".category'
    assert "unknown category 'sink'" in error.message and "updates" in error.message


def test_a_name_listed_twice_in_one_source_is_an_error() -> None:
    extra = (
        '[app.a]\ncategory = "updates"\nnames = ["dup"]\n\n'
        '[app.b]\ncategory = "updates"\nnames = ["other", "DUP"]\n'
    )
    error = _error([("extra.toml", BASE + extra)])
    assert error.field == "app.b.names[1]"
    assert error.line == BASE.count("\n") + 7
    assert "also listed by a" in error.message


def test_catalogue_error_pickles() -> None:
    error = CatalogueError("x.toml", 3, "app.a", "bad")
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == "x.toml:3: app.a: bad"


def test_read_sources(tmp_path: Path) -> None:
    good = tmp_path / "10-good.toml"
    good.write_text('[category.x]\ndescription = "X"\n', "utf-8")
    assert read_sources([good]) == [(str(good), '[category.x]\ndescription = "X"\n')]
    bad = tmp_path / "20-bad.toml"
    bad.write_bytes(b"# ok\n\xff\n")
    with pytest.raises(CatalogueError, match=r"20-bad.toml:2: not UTF-8"):
        read_sources([good, bad])
    with pytest.raises(CatalogueError, match="cannot read"):
        read_sources([tmp_path / "missing.toml"])


def test_catalogue_refuses_inconsistent_entries() -> None:
    updates = Category("updates", "Updates", "block", "test")
    entry = CatalogueEntry("a", "updates", "A", ("x",), "test")
    with pytest.raises(ValueError, match="unknown category"):
        Catalogue([CatalogueEntry("b", "nope", "B", ("y",), "test")], [updates])
    with pytest.raises(ValueError, match="listed by both"):
        Catalogue([entry, CatalogueEntry("b", "updates", "B", ("X",), "test")], [updates])
