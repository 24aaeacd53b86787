"""Per-app policy carried out: which marks the kernel refuses on metered links right now.

The pure core (`core.policy.blocked_apps`) names the apps to block from the policy, the
catalogue, the session state and roaming; this module turns apps into conntrack marks (every
cgroup of the app, live or gone, since flows keep their mark), writes the kernel set only when
it changes, and ends the live flows of an app the moment it becomes blocked. Overrides made
with `meterguard block|allow APP` are kept in the ledger's state and outlive restarts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from meterguard.core.catalogue import Catalogue
from meterguard.core.policy import (
    UNKNOWN_SESSION,
    AppFacts,
    Policy,
    Rule,
    SessionState,
    blocked_apps,
    rule_for,
    with_override,
)
from meterguard.enforce.caps import CapControl
from meterguard.kernel.ruleset import TUNNEL_MARK
from meterguard.meter.registry import KnownCgroup

log = logging.getLogger(__name__)

OVERRIDES_KEY = "policy.overrides"
BLOCKED_SET = "blocked_marks"
ALLOWED_SET = "allowed_marks"


class StateStore(Protocol):
    def get_state(self, key: str) -> str | None: ...

    def put_state(self, key: str, value: str) -> None: ...


class Notes(Protocol):
    def note(self, kind: str, level: str, title: str, body: str, at: datetime) -> None: ...


@dataclass(frozen=True)
class Enforced:
    blocked: dict[str, str]  # app -> why
    newly_blocked: tuple[str, ...]


class PolicyRuntime:
    def __init__(
        self,
        policy: Policy,
        catalogue: Catalogue,
        store: StateStore,
        kernel: CapControl,
        notes: Notes,
        *,
        live: Callable[[], list[KnownCgroup]],
        marks_of_apps: Callable[[frozenset[str]], set[int]],
        roaming_guard_of: Callable[[str], str],
    ) -> None:
        self._base = policy
        self.catalogue = catalogue
        self._store = store
        self._kernel = kernel
        self._notes = notes
        self._live = live
        self._marks_of_apps = marks_of_apps
        self._roaming_guard_of = roaming_guard_of
        self.overrides: dict[str, Rule] = self._load_overrides()
        self.session: SessionState = UNKNOWN_SESSION
        self.roaming: frozenset[str] = frozenset()
        self._written: set[int] | None = None
        self._blocked: dict[str, str] = {}

    # --- what the kernel needs ---------------------------------------------------------

    @property
    def allow_only(self) -> bool:
        return self._base.mode == "allow-list"

    def policy(self) -> Policy:
        policy = self._base
        for app, rule in self.overrides.items():
            policy = with_override(policy, app, rule)
        return policy

    def _roaming_guard(self) -> str:
        guards = {self._roaming_guard_of(net) for net in self.roaming}
        return "block-all" if "block-all" in guards else (
            "allow-list" if "allow-list" in guards else "off")

    def app_facts(self) -> dict[str, AppFacts]:
        return self._apps()

    def _apps(self) -> dict[str, AppFacts]:
        apps: dict[str, AppFacts] = {}
        for cg in self._live():
            unit = cg.path.rsplit("/", 1)[-1]
            # A service's cgroup decides over a helper scope of the same app.
            if cg.app not in apps or cg.kind in ("service", "user-service"):
                apps[cg.app] = AppFacts(kind=cg.kind, unit=unit)
        return apps

    def enforce(self, at: datetime) -> Enforced:
        """Recompute the blocked apps; write the kernel set and end flows if it changed."""
        apps = self._apps()
        guard = self._roaming_guard()
        blocked = blocked_apps(
            self.policy(), self.catalogue, apps, self.session,
            roaming=guard != "off", roaming_guard=guard,  # type: ignore[arg-type]
        )
        newly = tuple(sorted(set(blocked) - set(self._blocked)))
        self._blocked = blocked
        if self.allow_only:
            # Tunnels' underlay flows carry apps that are judged on the tunnel itself.
            marks = self._marks_of_apps(frozenset(apps) - frozenset(blocked)) | {TUNNEL_MARK}
            set_name = ALLOWED_SET
        else:
            marks = self._marks_of_apps(frozenset(blocked))
            set_name = BLOCKED_SET
        if marks != self._written:
            self._kernel.replace_marks(set_name, marks)
            self._written = marks
        if newly:
            paths = [cg.path for cg in self._live() if cg.app in newly]
            ended = self._kernel.end_cgroup_flows(paths)
            for app in newly:
                self._notes.note("block", "info", f"{app} blocked on metered networks",
                                 blocked[app], at)
            log.info("blocked %s (%d connections ended)", ", ".join(newly), ended)
        return Enforced(blocked, newly)

    def forget_written(self) -> None:
        """The table was rebuilt: write the set again at the next enforce."""
        self._written = None

    # --- the user's commands ------------------------------------------------------------

    def _load_overrides(self) -> dict[str, Rule]:
        text = self._store.get_state(OVERRIDES_KEY)
        try:
            data = json.loads(text) if text else {}
        except ValueError:
            return {}
        return {app: rule for app, rule in data.items() if rule in ("allow", "block",
                                                                       "background")}

    def command(self, kind: str, args: Mapping[str, Any], at: datetime) -> str:
        app = str(args.get("app", "")).strip()
        if not app:
            raise ValueError("name an app (see `meterguard apps`)")
        if kind == "unset":
            self.overrides.pop(app, None)
            result = f"{app}: back to the configured policy"
        elif kind in ("allow", "block", "background"):
            self.overrides[app] = kind  # type: ignore[assignment]
            result = f"{app}: {kind} on metered networks"
        else:
            raise ValueError(f"unknown policy command {kind!r}")
        self._store.put_state(OVERRIDES_KEY, json.dumps(self.overrides, sort_keys=True))
        self.enforce(at)
        self._notes.note("policy", "info", result, result, at)
        return result

    def rows(self) -> list[dict[str, Any]]:
        """Every known app with its rule, why, and whether it is blocked now."""
        policy = self.policy()
        names = sorted({cg.app for cg in self._live()} | set(self.overrides)
                       | set(self._base.apps))
        out = []
        for app in names:
            rule, why = rule_for(policy, self.catalogue, app)
            out.append({"app": app, "rule": rule, "why": why,
                        "category": self.catalogue.category_of(app),
                        "blocked_now": app in self._blocked,
                        "blocked_why": self._blocked.get(app)})
        return out

    def status(self) -> dict[str, Any]:
        return {
            "mode": self._base.mode, "overrides": dict(self.overrides),
            "session": {"idle": self.session.idle, "locked": self.session.locked,
                        "known": self.session.known},
            "roaming": sorted(self.roaming), "apps": self.rows(),
        }
