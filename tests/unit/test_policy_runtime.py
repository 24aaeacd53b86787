"""The per-app policy at work over fakes: marks written, flows ended, overrides kept."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from meterguard.core.catalogue import default_catalogue
from meterguard.core.policy import Policy, SessionState
from meterguard.enforce.caps import FakeCapControl
from meterguard.enforce.policy import ALLOWED_SET, BLOCKED_SET, PolicyRuntime
from meterguard.kernel.ruleset import TUNNEL_MARK
from meterguard.meter.registry import KnownCgroup

NOW = datetime(2026, 11, 27, tzinfo=UTC)
LIVE = [
    KnownCgroup(1, 101, "user.slice/app.slice/app-gnome-firefox-1.scope", "firefox", "app"),
    KnownCgroup(2, 102, "system.slice/packagekit.service", "packagekit", "service"),
    KnownCgroup(3, 103, "system.slice/dropbox.service", "dropbox", "service"),
]


@dataclass
class Store:
    kv: dict[str, str] = field(default_factory=dict)

    def get_state(self, key: str) -> str | None:
        return self.kv.get(key)

    def put_state(self, key: str, value: str) -> None:
        self.kv[key] = value


@dataclass
class Notes:
    seen: list[str] = field(default_factory=list)

    def note(self, kind: str, level: str, title: str, body: str, at: datetime) -> None:
        self.seen.append(title)


def runtime(policy: Policy, store: Store, kernel: FakeCapControl) -> PolicyRuntime:
    def marks(apps: frozenset[str]) -> set[int]:
        return {c.mark for c in LIVE if c.app in apps}

    return PolicyRuntime(policy, default_catalogue(), store, kernel, Notes(),
                         live=lambda: LIVE, marks_of_apps=marks,
                         roaming_guard_of=lambda net: "block-all")


def test_the_default_profile_blocks_updates_and_ends_their_flows() -> None:
    kernel = FakeCapControl()
    rt = runtime(Policy(), Store(), kernel)
    done = rt.enforce(NOW)
    assert set(done.blocked) == {"packagekit", "dropbox"}  # updates and cloud sync
    assert kernel.sets[BLOCKED_SET] == {2, 3}
    assert set(kernel.ended_cgroups) == {"system.slice/packagekit.service",
                                         "system.slice/dropbox.service"}
    kernel.ended_cgroups.clear()
    rt.enforce(NOW)
    assert kernel.ended_cgroups == []  # nothing newly blocked, nothing ended again


def test_overrides_are_kept_and_background_follows_the_session() -> None:
    kernel, store = FakeCapControl(), Store()
    rt = runtime(Policy(categories={"updates": "allow", "cloud-sync": "allow"}), store, kernel)
    rt.command("background", {"app": "firefox"}, NOW)
    assert kernel.sets[BLOCKED_SET] == set()  # an app in the foreground
    rt.session = SessionState(idle=True, locked=False, known=True)
    rt.enforce(NOW)
    assert kernel.sets[BLOCKED_SET] == {1}
    again = runtime(Policy(categories={"updates": "allow", "cloud-sync": "allow"}), store,
                    FakeCapControl())
    assert again.overrides == {"firefox": "background"}  # across a restart


def test_allow_list_mode_and_roaming() -> None:
    kernel = FakeCapControl()
    rt = runtime(Policy(mode="allow-list", allow_list=frozenset({"firefox"})), Store(), kernel)
    rt.enforce(NOW)
    assert kernel.sets[ALLOWED_SET] == {1, TUNNEL_MARK}
    plain = FakeCapControl()
    roaming = runtime(Policy(categories={"updates": "allow", "cloud-sync": "allow"}), Store(),
                      plain)
    roaming.roaming = frozenset({"esim"})
    assert set(roaming.enforce(NOW).blocked) == {"firefox", "packagekit", "dropbox"}
