"""Cgroup paths to app identities: real-world names plus generated round trips."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from meterguard.core.identity import (
    AppIdentity,
    AppKind,
    identify_cgroup,
    identify_executable,
    is_session_scope,
)

USER = "user.slice/user-1000.slice/user@1000.service"

REAL_WORLD: list[tuple[str, str, AppKind, str]] = [
    # (path, name, kind, unit)
    (
        f"{USER}/app.slice/app-gnome-firefox-1234.scope",
        "firefox",
        "app",
        "app-gnome-firefox-1234.scope",
    ),
    (
        f"{USER}/app.slice/app-org.gnome.Terminal-4b2c1a.scope",
        "org.gnome.Terminal",
        "app",
        "app-org.gnome.Terminal-4b2c1a.scope",
    ),
    (
        f"{USER}/app.slice/app-gnome-org.gnome.Nautilus-2201.scope",
        "org.gnome.Nautilus",
        "app",
        "app-gnome-org.gnome.Nautilus-2201.scope",
    ),
    (
        f"{USER}/app.slice/app-gnome-org.gnome.Software-2201.scope",
        "org.gnome.Software",
        "app",
        "app-gnome-org.gnome.Software-2201.scope",
    ),
    (
        f"{USER}/app.slice/app-kde-org.kde.dolphin-1a2b.scope",
        "org.kde.dolphin",
        "app",
        "app-kde-org.kde.dolphin-1a2b.scope",
    ),
    (f"{USER}/app.slice/app-firefox@0f3c.service", "firefox", "app", "app-firefox@0f3c.service"),
    (
        f"{USER}/app.slice/app-flatpak-org.mozilla.firefox-12345.scope",
        "org.mozilla.firefox",
        "flatpak",
        "app-flatpak-org.mozilla.firefox-12345.scope",
    ),
    (
        f"{USER}/app.slice/app-meterguard-backup-4321.scope",
        "backup",
        "exec",
        "app-meterguard-backup-4321.scope",
    ),
    (
        f"{USER}/app.slice/app-gnome-google\\x2dchrome-5511.scope",
        "google-chrome",
        "app",
        "app-gnome-google\\x2dchrome-5511.scope",
    ),
    (
        f"{USER}/app.slice/app-gnome\\x2dkeyring\\x2dpkcs11@autostart.service",
        "gnome-keyring-pkcs11",
        "app",
        "app-gnome\\x2dkeyring\\x2dpkcs11@autostart.service",
    ),
    (f"{USER}/app.slice/app-sway-foot-998.scope", "foot", "app", "app-sway-foot-998.scope"),
    (
        f"{USER}/app.slice/app-Hyprland-kitty-1f2e.scope",
        "kitty",
        "app",
        "app-Hyprland-kitty-1f2e.scope",
    ),
    # A scope whose launcher left out the random suffix: a word is not a random string.
    (f"{USER}/app.slice/app-sway-Alacritty.scope", "Alacritty", "app", "app-sway-Alacritty.scope"),
    # Other escapes: "+" is not allowed in unit names, and UTF-8 is escaped bytewise.
    (
        f"{USER}/app.slice/app-gnome-notepad\\x2b\\x2b-31.scope",
        "notepad++",
        "app",
        "app-gnome-notepad\\x2b\\x2b-31.scope",
    ),
    (
        f"{USER}/app.slice/app-caf\\xc3\\xa9-31.scope",
        "café",
        "app",
        "app-caf\\xc3\\xa9-31.scope",
    ),
    # A launcher that forgot to escape: the fields are joined back, not truncated.
    (
        f"{USER}/app.slice/app-gnome-google-chrome-5511.scope",
        "google-chrome",
        "app",
        "app-gnome-google-chrome-5511.scope",
    ),
    (
        f"{USER}/app.slice/snap.firefox.firefox-3f1c2a9e-7a44-4c55-9b1e-0d5c1f7e2b6a.scope",
        "firefox",
        "snap",
        "snap.firefox.firefox-3f1c2a9e-7a44-4c55-9b1e-0d5c1f7e2b6a.scope",
    ),
    (
        "system.slice/snap.nextcloud.nextcloud-client.service",
        "nextcloud",
        "snap",
        "snap.nextcloud.nextcloud-client.service",
    ),
    ("system.slice/packagekit.service", "packagekit", "service", "packagekit.service"),
    ("system.slice/apt-daily.service", "apt-daily", "service", "apt-daily.service"),
    (
        "system.slice/system-getty.slice/getty@tty1.service",
        "getty",
        "service",
        "getty@tty1.service",
    ),
    ("system.slice/NetworkManager.service", "NetworkManager", "service", "NetworkManager.service"),
    ("init.scope", "systemd", "service", "init.scope"),
    (f"{USER}/app.slice/syncthing.service", "syncthing", "user-service", "syncthing.service"),
    (f"{USER}/session.slice/pipewire.service", "pipewire", "user-service", "pipewire.service"),
    (f"{USER}/init.scope", "systemd", "user-service", "init.scope"),
    (
        f"{USER}/session.slice/dbus-:1.2-org.gnome.OnlineAccounts@0.service",
        "org.gnome.OnlineAccounts",
        "user-service",
        "dbus-:1.2-org.gnome.OnlineAccounts@0.service",
    ),
    # A delegated sub-cgroup below a service still belongs to that service.
    ("system.slice/docker.service/payload/inner", "docker", "service", "docker.service"),
    # The hybrid layout mounts v2 under unified/; the lab uses a prefix of its own.
    ("unified/system.slice/packagekit.service", "packagekit", "service", "packagekit.service"),
    (
        f"mglab-1234/{USER}/app.slice/app-gnome-firefox-1234.scope",
        "firefox",
        "app",
        "app-gnome-firefox-1234.scope",
    ),
    # An app scope started from inside a session (`meterguard exec` from a terminal).
    (
        "user.slice/user-1000.slice/session-3.scope/app-meterguard-backup-77.scope",
        "backup",
        "exec",
        "app-meterguard-backup-77.scope",
    ),
]

NOT_APPS: list[str] = [
    # A session stops the walk even inside a service (a lab or container desktop run
    # from a delegated unit): the session's programs are not that service.
    "system.slice/mglab.service/user.slice/user-1000.slice/session-3.scope",
    "",
    "/",
    "user.slice",
    "user.slice/user-1000.slice",
    USER,
    f"{USER}/app.slice",
    "user.slice/user-1000.slice/session-3.scope",
    "user.slice/user-1000.slice/session-c1.scope",
    "user.slice/user-1000.slice/session-3.scope/some/child",
    "system.slice/docker-0123abcd.scope",
    "machine.slice/libpod-99.scope",
    "system.slice/run-u42.service",
    f"{USER}/app.slice/run-r0f3a9c1d2e.scope",
    "mglab-1234",
    "app-1234.scope",
    "app-gnome-firefox-1234.slice",
]


@pytest.mark.parametrize(("path", "name", "kind", "unit"), REAL_WORLD)
def test_real_world_paths(path: str, name: str, kind: AppKind, unit: str) -> None:
    assert identify_cgroup(path) == AppIdentity(name=name, kind=kind, unit=unit)


@pytest.mark.parametrize("path", NOT_APPS)
def test_paths_that_are_not_apps(path: str) -> None:
    assert identify_cgroup(path) is None


def test_session_scopes() -> None:
    assert is_session_scope("session-3.scope")
    assert is_session_scope("session-c12.scope")
    assert not is_session_scope("session.slice")
    assert not is_session_scope("app-gnome-session-3.scope")
    assert not is_session_scope("session-3.service")


@pytest.mark.parametrize(
    ("exe", "name"),
    [
        ("/usr/bin/python3.11", "python3.11"),
        ("/opt/Dropbox/dropbox", "dropbox"),
        ("/usr/lib/firefox-esr/firefox-esr (deleted)", "firefox-esr"),
        ("", "unknown"),
    ],
)
def test_identify_executable(exe: str, name: str) -> None:
    unit = "session-3.scope"
    assert identify_executable(exe, unit) == AppIdentity(name, "executable", unit)


# --- generated names -------------------------------------------------------------------

_segment = st.from_regex(r"[A-Za-z0-9_]{1,8}", fullmatch=True)
# Application ids: reverse-DNS or plain words, possibly with dashes, never a bare number.
app_ids = (
    st.lists(st.tuples(_segment, st.sampled_from([".", "-"])), min_size=1, max_size=4)
    .map(lambda pairs: "".join(seg + sep for seg, sep in pairs)[:-1])
    .filter(lambda s: not s.isdigit())
)
known_launchers = st.sampled_from(["gnome", "kde", "xfce", "flatpak", "snap", "meterguard"])
unknown_launchers = st.from_regex(r"[a-z][a-z0-9]{0,9}", fullmatch=True).filter(
    lambda w: w not in {"gnome", "kde", "xfce", "flatpak", "snap", "meterguard"}
)
launchers = st.one_of(st.none(), known_launchers, unknown_launchers)
randoms = st.one_of(
    st.integers(min_value=1, max_value=4_194_304).map(str),  # a PID
    st.from_regex(r"[0-9a-f]{1,32}", fullmatch=True),
)
# Components that are neither apps nor a user manager, as a foreign prefix might hold.
prefix_components = st.one_of(
    st.from_regex(r"[a-z][a-z0-9-]{0,10}\.slice", fullmatch=True),
    st.from_regex(r"mglab-[0-9]{1,6}", fullmatch=True),
    st.just("unified"),
)
prefixes = st.lists(prefix_components, max_size=6).map(lambda parts: "/".join(parts))

EXPECTED_KIND = {"flatpak": "flatpak", "snap": "snap", "meterguard": "exec"}


def _escape(app_id: str) -> str:
    return app_id.replace("-", "\\x2d")


def _join(prefix: str, component: str) -> str:
    return f"{prefix}/{component}" if prefix else component


@settings(deadline=None)
@given(app_id=app_ids, launcher=launchers, random=randoms, prefix=prefixes)
def test_scope_round_trip(app_id: str, launcher: str | None, random: str, prefix: str) -> None:
    middle = f"{launcher}-" if launcher else ""
    unit = f"app-{middle}{_escape(app_id)}-{random}.scope"
    identity = identify_cgroup(_join(prefix, unit))
    assert identity is not None
    assert identity.name == app_id
    assert identity.unit == unit
    assert identity.kind == EXPECTED_KIND.get(launcher or "", "app")


@settings(deadline=None)
@given(
    app_id=app_ids,
    launcher=launchers,
    instance=st.one_of(st.none(), randoms, st.just("autostart")),
    prefix=prefixes,
)
def test_service_round_trip(
    app_id: str, launcher: str | None, instance: str | None, prefix: str
) -> None:
    middle = f"{launcher}-" if launcher else ""
    suffix = f"@{instance}" if instance else ""
    unit = f"app-{middle}{_escape(app_id)}{suffix}.service"
    identity = identify_cgroup(_join(prefix, unit))
    assert identity is not None
    assert identity.name == app_id
    assert identity.kind == EXPECTED_KIND.get(launcher or "", "app")


@settings(deadline=None)
@given(
    tail=st.sampled_from([path for path, *_ in REAL_WORLD] + NOT_APPS),
    prefix=prefixes,
    children=st.lists(st.from_regex(r"[a-z]{1,6}", fullmatch=True), max_size=3),
)
def test_prefix_and_plain_children_do_not_change_the_result(
    tail: str, prefix: str, children: list[str]
) -> None:
    """A foreign prefix above, or plain sub-cgroups below, leave the answer alone."""
    path = "/".join(p for p in [prefix, tail.strip("/"), *children] if p)
    assert identify_cgroup(path) == identify_cgroup(tail)


@settings(deadline=None)
@given(
    names=st.lists(
        st.one_of(
            st.from_regex(r"[A-Za-z0-9@._\\-]{1,20}", fullmatch=True),
            app_ids.map(lambda a: f"app-gnome-{_escape(a)}-1234"),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_slices_never_become_apps(names: list[str]) -> None:
    assert identify_cgroup("/".join(f"{name}.slice" for name in names)) is None


@settings(deadline=None)
@given(app_id=app_ids, prefix=prefixes)
def test_services_under_a_user_manager_are_user_services(app_id: str, prefix: str) -> None:
    assume(not app_id.startswith("snap."))  # snap.NAME.APP.service is a snap
    unit = f"{_escape(app_id)}.service"
    system = identify_cgroup(_join(prefix, f"system.slice/{unit}"))
    user = identify_cgroup(_join(prefix, f"{USER}/app.slice/{unit}"))
    assert system is not None and system.kind == "service" and system.name == app_id
    assert user is not None and user.kind == "user-service" and user.name == app_id
