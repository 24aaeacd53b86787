"""Per-app policy: which rule applies and why, background classification, what to block now."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterguard.core.catalogue import Catalogue, default_catalogue
from meterguard.core.identity import identify_cgroup
from meterguard.core.policy import (
    DEFAULT_POLICY,
    UNKNOWN_SESSION,
    AppFacts,
    HasKindAndUnit,
    Policy,
    Rule,
    SessionState,
    background_reason,
    blocked_apps,
    is_background,
    override_command,
    rule_for,
    with_override,
    without_override,
)

USER = "user.slice/user-1000.slice/user@1000.service"
ACTIVE = SessionState(idle=False, locked=False, known=True)
IDLE = SessionState(idle=True, locked=False, known=True)
LOCKED = SessionState(idle=False, locked=True, known=True)
SESSIONS = st.builds(SessionState, idle=st.booleans(), locked=st.booleans(), known=st.booleans())


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return default_catalogue()


def test_default_profile_applies_to_catalogued_apps(catalogue: Catalogue) -> None:
    assert rule_for(DEFAULT_POLICY, catalogue, "packagekit") == (
        "block",
        "category updates (default profile)",
    )
    assert rule_for(DEFAULT_POLICY, catalogue, "com.dropbox.Client") == (
        "block",
        "category cloud-sync (default profile)",
    )
    assert rule_for(DEFAULT_POLICY, catalogue, "spotify") == (
        "background",
        "category streaming (default profile)",
    )
    assert rule_for(DEFAULT_POLICY, catalogue, "firefox") == ("allow", "the policy's default")


def test_precedence_app_then_category_then_profile_then_default(catalogue: Catalogue) -> None:
    policy = Policy(
        default="background",
        apps={"nextcloud": "allow"},
        categories={"cloud-sync": "background"},
    )
    assert rule_for(policy, catalogue, "nextcloud") == (
        "allow",
        "app rule for nextcloud in the policy",
    )
    assert rule_for(policy, catalogue, "dropbox") == ("background", "category cloud-sync (policy)")
    assert rule_for(policy, catalogue, "snapd") == ("block", "category updates (default profile)")
    assert rule_for(policy, catalogue, "firefox") == ("background", "the policy's default")


def test_overrides_name_the_command_that_set_them(catalogue: Catalogue) -> None:
    policy = with_override(DEFAULT_POLICY, "packagekit", "allow")
    assert rule_for(policy, catalogue, "packagekit") == (
        "allow",
        "override by `meterguard allow packagekit`",
    )
    policy = with_override(policy, "firefox", "block")
    assert rule_for(policy, catalogue, "firefox") == (
        "block",
        "override by `meterguard block firefox`",
    )
    assert DEFAULT_POLICY.apps == {}  # overrides never change the policy they start from
    back = without_override(policy, "packagekit")
    assert rule_for(back, catalogue, "packagekit")[1] == "category updates (default profile)"
    assert back.overridden == frozenset({"firefox"})


def test_override_command_quotes_odd_names() -> None:
    assert override_command("my app", "background") == "meterguard block 'my app' --background"


def test_allow_list_mode(catalogue: Catalogue) -> None:
    policy = Policy(mode="allow-list", allow_list=frozenset({"firefox", "nextcloud"}))
    assert rule_for(policy, catalogue, "firefox") == ("allow", "on the allow-list")
    # Listing an app is the user's explicit wish: it beats the category's default profile.
    assert rule_for(policy, catalogue, "nextcloud") == ("allow", "on the allow-list")
    assert rule_for(policy, catalogue, "chromium") == ("block", "not on the allow-list")
    # An explicit app rule still wins, so `meterguard allow X` works without editing the list.
    allowed = with_override(policy, "chromium", "allow")
    assert rule_for(allowed, catalogue, "chromium")[0] == "allow"
    blocked = with_override(policy, "firefox", "block")
    assert rule_for(blocked, catalogue, "firefox")[0] == "block"


def test_policy_refuses_unknown_rules_and_modes() -> None:
    with pytest.raises(ValueError, match="unknown rule 'deny'"):
        Policy(apps={"x": "deny"})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="category updates: unknown rule"):
        Policy(categories={"updates": "nope"})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="unknown policy mode"):
        Policy(mode="tripmode")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown rule"):
        with_override(DEFAULT_POLICY, "x", "sometimes")  # type: ignore[arg-type]


@settings(deadline=None)
@given(session=SESSIONS, kind=st.sampled_from(["service", "user-service"]))
def test_services_are_always_background(session: SessionState, kind: str) -> None:
    assert is_background(kind, "packagekit.service", session)


@settings(deadline=None)
@given(
    session=SESSIONS,
    unit=st.sampled_from(
        [
            "app-gnome-nextcloud-autostart.service",
            "app-com.nextcloud.desktopclient.nextcloud@autostart.service",
            "snap.syncthing.syncthing.service",
            "run-u123.service",
        ]
    ),
)
def test_autostarted_units_and_other_services_are_always_background(
    session: SessionState, unit: str
) -> None:
    assert is_background("app", unit, session)


@pytest.mark.parametrize(
    ("session", "expected"),
    [
        (ACTIVE, None),
        (IDLE, "the session is idle"),
        (LOCKED, "the session is locked"),
        (SessionState(idle=True, locked=True, known=True), "the session is locked"),
        # Hints nobody maintains: the user's own apps stay foreground.
        (UNKNOWN_SESSION, None),
        (SessionState(idle=True, locked=True, known=False), None),
    ],
)
def test_apps_are_background_only_when_idle_or_locked(
    session: SessionState, expected: str | None
) -> None:
    for kind, unit in [
        ("app", "app-gnome-firefox-1234.scope"),
        ("flatpak", "app-flatpak-com.spotify.Client-99.scope"),
        ("snap", "snap.spotify.spotify-5d1c0b7e.scope"),
        ("exec", "app-meterguard-sync-42.scope"),
        ("executable", "session-2.scope"),
        ("app", "app-gnome-org.gnome.Terminal@3f2a.service"),
    ]:
        assert background_reason(kind, unit, session) == expected, unit


def _facts(path: str) -> tuple[str, HasKindAndUnit]:
    identity = identify_cgroup(path)
    assert identity is not None
    return identity.name, identity


LIVE = dict(
    [
        _facts("system.slice/packagekit.service"),
        _facts(f"{USER}/app.slice/app-gnome-firefox-1234.scope"),
        _facts(f"{USER}/app.slice/app-flatpak-com.spotify.Client-99.scope"),
        _facts(f"{USER}/app.slice/app-gnome-org.gnome.Terminal-77.scope"),
        _facts("system.slice/systemd-resolved.service"),
    ]
)


def test_blocked_apps_while_active(catalogue: Catalogue) -> None:
    blocked = blocked_apps(
        DEFAULT_POLICY, catalogue, LIVE, ACTIVE, roaming=False, roaming_guard="block-all"
    )
    assert blocked == {"packagekit": "category updates (default profile)"}


def test_background_rule_blocks_once_the_session_is_locked(catalogue: Catalogue) -> None:
    blocked = blocked_apps(
        DEFAULT_POLICY, catalogue, LIVE, LOCKED, roaming=False, roaming_guard="off"
    )
    assert blocked == {
        "packagekit": "category updates (default profile)",
        "com.spotify.Client": "category streaming (default profile), blocked in the background:"
        " the session is locked",
    }


def test_background_rule_on_a_service_blocks_whatever_the_session(catalogue: Catalogue) -> None:
    policy = Policy(default="background")
    blocked = blocked_apps(policy, catalogue, LIVE, ACTIVE, roaming=False, roaming_guard="off")
    assert blocked["systemd-resolved"] == (
        "the policy's default, blocked in the background: a system service"
    )
    assert "firefox" not in blocked
    unknown = blocked_apps(
        policy, catalogue, LIVE, UNKNOWN_SESSION, roaming=False, roaming_guard="off"
    )
    assert "systemd-resolved" in unknown and "org.gnome.Terminal" not in unknown


def test_allow_list_mode_blocks_apps_not_listed(catalogue: Catalogue) -> None:
    policy = Policy(mode="allow-list", allow_list=frozenset({"firefox"}))
    blocked = blocked_apps(policy, catalogue, LIVE, ACTIVE, roaming=False, roaming_guard="off")
    assert set(blocked) == set(LIVE) - {"firefox"}
    assert blocked["org.gnome.Terminal"] == "not on the allow-list"


def test_roaming_guard(catalogue: Catalogue) -> None:
    policy = Policy(allow_list=frozenset({"firefox"}))
    off = blocked_apps(policy, catalogue, LIVE, ACTIVE, roaming=True, roaming_guard="off")
    assert set(off) == {"packagekit"}
    everything = blocked_apps(
        policy, catalogue, LIVE, ACTIVE, roaming=True, roaming_guard="block-all"
    )
    assert set(everything) == set(LIVE)
    assert everything["firefox"] == "roaming: the roaming guard blocks every app"
    # A blocked app keeps the policy's reason: it still holds once roaming ends.
    assert everything["packagekit"] == "category updates (default profile)"
    listed = blocked_apps(policy, catalogue, LIVE, ACTIVE, roaming=True, roaming_guard="allow-list")
    assert set(listed) == set(LIVE) - {"firefox"}
    assert listed["org.gnome.Terminal"] == "roaming: not on the allow-list"
    own = blocked_apps(
        policy,
        catalogue,
        LIVE,
        ACTIVE,
        roaming=True,
        roaming_guard="allow-list",
        roaming_allow={"org.gnome.Terminal"},
    )
    assert "firefox" in own and "org.gnome.Terminal" not in own
    home = blocked_apps(policy, catalogue, LIVE, ACTIVE, roaming=False, roaming_guard="block-all")
    assert set(home) == {"packagekit"}
    with pytest.raises(ValueError, match="unknown roaming guard"):
        blocked_apps(
            policy,
            catalogue,
            LIVE,
            ACTIVE,
            roaming=True,
            roaming_guard="some",  # type: ignore[arg-type]
        )


RULE = st.sampled_from(["allow", "block", "background"])


@settings(deadline=None)
@given(
    default=RULE,
    app_rule=st.one_of(st.none(), RULE),
    session=SESSIONS,
    kind=st.sampled_from(["app", "service", "user-service", "flatpak", "executable"]),
)
def test_blocked_apps_agrees_with_rule_for(
    default: Rule, app_rule: Rule | None, session: SessionState, kind: str
) -> None:
    policy = Policy(default=default)
    if app_rule is not None:
        policy = with_override(policy, "thing", app_rule)
    facts = {"thing": AppFacts(kind=kind, unit="thing-1.scope")}
    blocked = blocked_apps(
        policy, Catalogue((), ()), facts, session, roaming=False, roaming_guard="off"
    )
    rule, _ = rule_for(policy, Catalogue((), ()), "thing")
    expected = rule == "block" or (rule == "background" and is_background(kind, "x.scope", session))
    assert ("thing" in blocked) == expected
