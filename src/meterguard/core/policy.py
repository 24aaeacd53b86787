"""Per-app policy on metered networks: which apps to block now, and why. Pure: no I/O.

An app is allowed, blocked, or blocked in the background only. Where its rule comes from, in
order of precedence:

1. an explicit rule for the app (the config's `[policy.apps]`, or an override written by
   `meterguard block APP` / `meterguard allow APP`, merged in with `with_override`);
2. in allow-list mode (as in TripMode), membership of the allow-list: listed apps are allowed,
   every other app is blocked;
3. the policy's own rule for the app's catalogue category;
4. the catalogue's default profile for that category (updates and sync only on Wi-Fi, ...);
5. the policy's default.

The explicit rule comes first even in allow-list mode so that `meterguard allow X` lets X
through without editing the list, and `meterguard block X` wins over a listed X.

Whether an app is in the background is decided per app from its identity's kind and unit and
from the session state logind reports (see `meterguard.system.logind`).
"""

from __future__ import annotations

import shlex
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal, Protocol, get_args

if TYPE_CHECKING:
    from meterguard.core.catalogue import Catalogue

Rule = Literal["allow", "block", "background"]
RULES: tuple[Rule, ...] = get_args(Rule)
PolicyMode = Literal["default", "allow-list"]
POLICY_MODES: tuple[PolicyMode, ...] = get_args(PolicyMode)
RoamingGuard = Literal["off", "block-all", "allow-list"]
ROAMING_GUARDS: tuple[RoamingGuard, ...] = get_args(RoamingGuard)

# Identity kinds whose traffic nobody at the screen asked for: they run whatever the session
# does, so they count as background even when the session looks active.
_SERVICE_KINDS = frozenset({"service", "user-service"})


@dataclass(frozen=True)
class Policy:
    """The per-app policy of one network profile.

    `overridden` names the apps whose rule in `apps` was set from the command line, so that the
    reason printed for them says which command to undo.
    """

    mode: PolicyMode = "default"
    default: Rule = "allow"
    apps: Mapping[str, Rule] = field(default_factory=dict)
    categories: Mapping[str, Rule] = field(default_factory=dict)
    allow_list: frozenset[str] = frozenset()
    overridden: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        # The config layer validates with field names and lines; this guards the other callers
        # (CLI overrides, tests) against a rule that would silently mean "allow".
        if self.mode not in POLICY_MODES:
            raise ValueError(
                f"unknown policy mode {self.mode!r} (known: {', '.join(POLICY_MODES)})"
            )
        for where, rule in (
            ("default", self.default),
            *((f"app {app}", r) for app, r in self.apps.items()),
            *((f"category {cat}", r) for cat, r in self.categories.items()),
        ):
            if rule not in RULES:
                raise ValueError(f"{where}: unknown rule {rule!r} (known: {', '.join(RULES)})")


DEFAULT_POLICY = Policy()


@dataclass(frozen=True)
class SessionState:
    """The user's session as logind reports it.

    `known` is False when no desktop maintains IdleHint/LockedHint (many window managers never
    set them): both hints then read false whatever the user does, so they prove nothing.
    """

    idle: bool
    locked: bool
    known: bool


UNKNOWN_SESSION = SessionState(idle=False, locked=False, known=False)


@dataclass(frozen=True)
class AppFacts:
    """What `blocked_apps` needs to know about a live app: its identity's kind and unit.

    `meterguard.core.identity.AppIdentity` has the same attributes and may be passed instead.
    """

    kind: str
    unit: str


class HasKindAndUnit(Protocol):
    """`AppFacts`, `AppIdentity` or anything else that tells an app's kind and unit."""

    @property
    def kind(self) -> str: ...

    @property
    def unit(self) -> str: ...


def with_override(policy: Policy, app: str, rule: Rule) -> Policy:
    """The policy with `app`'s rule set from the command line (`meterguard block/allow APP`)."""
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r} (known: {', '.join(RULES)})")
    return replace(policy, apps={**policy.apps, app: rule}, overridden=policy.overridden | {app})


def without_override(policy: Policy, app: str) -> Policy:
    """The policy with `app`'s explicit rule removed, so its category or default applies."""
    apps = {name: rule for name, rule in policy.apps.items() if name != app}
    return replace(policy, apps=apps, overridden=policy.overridden - {app})


def override_command(app: str, rule: Rule) -> str:
    """The command that sets `rule` for `app`, as printed in reasons."""
    name = shlex.quote(app)
    if rule == "allow":
        return f"meterguard allow {name}"
    if rule == "block":
        return f"meterguard block {name}"
    return f"meterguard block {name} --background"


def rule_for(policy: Policy, catalogue: Catalogue, app: str) -> tuple[Rule, str]:
    """The rule for `app` on a metered network, and why it applies (see the module docstring)."""
    explicit = policy.apps.get(app)
    if explicit is not None:
        if app in policy.overridden:
            return explicit, f"override by `{override_command(app, explicit)}`"
        return explicit, f"app rule for {app} in the policy"
    if policy.mode == "allow-list":
        if app in policy.allow_list:
            return "allow", "on the allow-list"
        return "block", "not on the allow-list"
    category = catalogue.category_of(app)
    if category is not None:
        chosen = policy.categories.get(category)
        if chosen is not None:
            return chosen, f"category {category} (policy)"
        profile = catalogue.profile_rule(category)
        if profile is not None:
            return profile, f"category {category} (default profile)"
    return policy.default, "the policy's default"


def background_reason(kind: str, unit: str, session: SessionState) -> str | None:
    """Why an app with this identity counts as background now, or None if it is foreground."""
    if kind in _SERVICE_KINDS:
        return "a system service" if kind == "service" else "a user service"
    # systemd's xdg-autostart-generator names its units app-<id>@autostart.service and GNOME
    # names autostarted apps app-gnome-<id>-autostart.service: nobody opened them just now.
    if "autostart" in unit:
        return "an autostarted unit"
    # Snap daemons (snap.NAME.APP.service) and transient services from `systemd-run` are
    # services too, whatever name identified them; apps launched as services use "app-".
    if unit.endswith(".service") and not unit.startswith("app-"):
        return "a service"
    if not session.known:
        # Hints nobody maintains read "not idle, not locked" forever: treating that as proof of
        # a user would be harmless, but treating it as idle would cut off the user's own apps.
        return None
    if session.locked:
        return "the session is locked"
    if session.idle:
        return "the session is idle"
    return None


def is_background(kind: str, unit: str, session: SessionState) -> bool:
    """True if an app with this identity counts as background now (see `background_reason`)."""
    return background_reason(kind, unit, session) is not None


def blocked_apps(
    policy: Policy,
    catalogue: Catalogue,
    apps: Mapping[str, HasKindAndUnit],
    session: SessionState,
    *,
    roaming: bool,
    roaming_guard: RoamingGuard,
    roaming_allow: Collection[str] | None = None,
) -> dict[str, str]:
    """Each live app that must be blocked on metered links now, with the reason.

    `apps` maps app names to their identity facts (an app with several cgroups is passed once,
    with the facts of the cgroup that decides; the daemon blocks all of its cgroups).
    While `roaming`, the roaming guard adds every app ("block-all"), or every app not in
    `roaming_allow` ("allow-list"; the policy's allow-list unless given). An app the policy
    blocks anyway keeps the policy's reason, so the reason still holds once roaming ends.
    """
    if roaming_guard not in ROAMING_GUARDS:
        raise ValueError(
            f"unknown roaming guard {roaming_guard!r} (known: {', '.join(ROAMING_GUARDS)})"
        )
    allowed_roaming = policy.allow_list if roaming_allow is None else frozenset(roaming_allow)
    blocked: dict[str, str] = {}
    for app in sorted(apps):
        facts = apps[app]
        rule, why = rule_for(policy, catalogue, app)
        if rule == "block":
            blocked[app] = why
            continue
        if rule == "background":
            in_background = background_reason(facts.kind, facts.unit, session)
            if in_background is not None:
                blocked[app] = f"{why}, blocked in the background: {in_background}"
                continue
        if roaming and roaming_guard == "block-all":
            blocked[app] = "roaming: the roaming guard blocks every app"
        elif roaming and roaming_guard == "allow-list" and app not in allowed_roaming:
            blocked[app] = "roaming: not on the allow-list"
    return blocked
