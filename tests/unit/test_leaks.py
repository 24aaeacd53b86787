"""The leak detector: scripted leaks fire, browsing and noise stay quiet, keys deduplicate."""

from __future__ import annotations

import random
import shlex
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterguard.core.leaks import (
    FINDING_KINDS,
    Baseline,
    Finding,
    LeakInput,
    LeakThresholds,
    above_baseline,
    baseline,
    find_leaks,
)
from meterguard.core.policy import SessionState

MB = 10**6
HOUR = timedelta(hours=1)
START = datetime(2026, 11, 20, 10, tzinfo=UTC)
NET = "hk-esim"


def noisy_history(center: int, days: int = 7, seed: int = 4) -> list[int]:
    """Hourly background bytes within ±25% of `center`, as a steady sync client shows."""
    rng = random.Random(seed)
    return [round(center * rng.uniform(0.75, 1.25)) for _ in range(days * 24)]


def leak_input(now: datetime = START + timedelta(minutes=20), **kw: object) -> LeakInput:
    start = now.replace(minute=0, second=0, microsecond=0)
    args: dict[str, object] = {"now": now, "hour": (start, start + HOUR), "network": NET}
    args.update(kw)
    return LeakInput(**args)  # type: ignore[arg-type]


def kinds(findings: Sequence[Finding]) -> list[tuple[str, str]]:
    return [(f.kind, f.app) for f in findings]


def test_fires_on_a_scripted_background_leak() -> None:
    history = {"nextcloud": noisy_history(2 * MB)}
    quiet = find_leaks(leak_input(history=history, background_bytes={"nextcloud": 2 * MB}))
    assert quiet == []
    findings = find_leaks(leak_input(history=history, background_bytes={"nextcloud": 200 * MB}))
    assert kinds(findings) == [("background-above-baseline", "nextcloud")]
    leak = findings[0]
    assert leak.network == NET
    assert leak.level == "warning"
    assert leak.fix == "meterguard block nextcloud --on metered"
    assert leak.key == "background-above-baseline:nextcloud:hk-esim:2026-11-20T10:00+00:00"
    assert leak.period_start == START
    evidence = leak.evidence
    assert evidence["bytes"] == 200 * MB
    assert evidence["baseline_samples"] == 7 * 24
    median = evidence["baseline_median"]
    assert isinstance(median, int | float) and 1.8 * MB < median < 2.2 * MB
    mad = evidence["baseline_mad"]
    threshold = evidence["threshold"]
    assert isinstance(mad, int | float) and isinstance(threshold, int | float)
    assert threshold == pytest.approx(median + 5 * max(mad, 0.1 * median, 100_000))
    assert evidence["period_start"] == "2026-11-20T10:00+00:00"
    assert evidence["period_end"] == "2026-11-20T11:00+00:00"
    assert "200 MB" in leak.title and "nextcloud" in leak.title and NET in leak.title


def test_stays_quiet_on_foreground_browsing() -> None:
    inp = leak_input(
        history={"firefox": noisy_history(300_000, seed=9)},
        foreground_bytes={"firefox": 3_000 * MB},
        background_bytes={"firefox": 350_000},
        session=SessionState(idle=False, locked=False, known=True),
    )
    assert find_leaks(inp) == []


@settings(deadline=None)
@given(
    center=st.integers(min_value=1, max_value=10**10),
    seed=st.integers(min_value=0, max_value=1000),
    position=st.floats(min_value=0.75, max_value=1.25),
)
def test_stays_quiet_on_ordinary_background_noise(center: int, seed: int, position: float) -> None:
    """An hour drawn from the same ±25% band as the history never fires."""
    history = {"dropbox": noisy_history(center, seed=seed)}
    used = round(center * position)
    assert find_leaks(leak_input(history=history, background_bytes={"dropbox": used})) == []


def test_baseline_needs_enough_active_hours() -> None:
    short = {"syncthing": [2 * MB] * 23 + [0] * 100}  # zeros are not samples
    inp = leak_input(history=short, background_bytes={"syncthing": 200 * MB})
    assert find_leaks(inp) == []
    enough = {"syncthing": [2 * MB] * 24}
    assert kinds(find_leaks(replace(inp, history=enough))) == [
        ("background-above-baseline", "syncthing")
    ]


def test_a_mostly_silent_app_is_judged_on_its_active_hours() -> None:
    # packagekit refreshes once a day (5 MB) and is silent otherwise: the daily refresh is its
    # normal, a 300 MB update download is not.
    history = {"packagekit": ([0] * 23 + [5 * MB]) * 30}
    normal = leak_input(history=history, background_bytes={"packagekit": 6 * MB})
    assert find_leaks(normal) == []
    update = replace(normal, background_bytes={"packagekit": 300 * MB})
    assert kinds(find_leaks(update)) == [("background-above-baseline", "packagekit")]


def test_hourly_limit() -> None:
    inp = leak_input(background_bytes={"rclone": 60 * MB, "small": 10 * MB}, hourly_limit=50 * MB)
    findings = find_leaks(inp)
    assert kinds(findings) == [("background-above-limit", "rclone")]
    assert findings[0].evidence["limit"] == 50 * MB
    assert "over the 50 MB hourly limit" in findings[0].title
    # Over the limit and the baseline: one finding, the limit (the user's own line).
    both = replace(inp, history={"rclone": noisy_history(MB)})
    assert kinds(find_leaks(both)) == [("background-above-limit", "rclone")]


def test_new_app() -> None:
    first = START + timedelta(minutes=5)
    inp = leak_input(
        first_seen={"signal-desktop": first, "old": START - timedelta(days=3)},
        foreground_bytes={"signal-desktop": 2 * MB, "old": 50 * MB},
    )
    findings = find_leaks(inp)
    assert kinds(findings) == [("new-app", "signal-desktop")]
    new = findings[0]
    assert new.level == "info"
    assert new.key == "new-app:signal-desktop:hk-esim:2026-11-20T10:00+00:00"
    assert new.evidence["first_seen"] == "2026-11-20T10:05+00:00"
    # Hours later it is the same finding (keyed by the hour it appeared), then it expires.
    later = replace(
        inp,
        now=START + timedelta(hours=5, minutes=1),
        hour=(START + 5 * HOUR, START + 6 * HOUR),
    )
    assert [f.key for f in find_leaks(later)] == [new.key]
    expired = replace(later, now=first + timedelta(hours=24, seconds=1))
    assert find_leaks(expired) == []
    tiny = replace(inp, foreground_bytes={"signal-desktop": 20_000})
    assert find_leaks(tiny) == []


def test_idle_traffic_is_keyed_by_day() -> None:
    locked = SessionState(idle=False, locked=True, known=True)
    inp = leak_input(idle_bytes={"insync": 30 * MB, "ntp": 2_000}, session=locked)
    findings = find_leaks(inp)
    assert kinds(findings) == [("idle-traffic", "insync")]
    idle = findings[0]
    assert idle.key == "idle-traffic:insync:hk-esim:2026-11-20T00:00+00:00"
    assert idle.evidence["locked_now"] is True
    assert "idle or locked" in idle.title
    night = replace(inp, now=START + 9 * HOUR, hour=(START + 9 * HOUR, START + 10 * HOUR))
    assert [f.key for f in find_leaks(night)] == [idle.key]
    # The plan's local day, when the daemon passes it (Hong Kong midnight is 16:00 UTC).
    hk_day = datetime(2026, 11, 20, tzinfo=ZoneInfo("Asia/Hong_Kong"))
    local = find_leaks(replace(inp, day=(hk_day, hk_day + timedelta(days=1))))
    assert local[0].key == "idle-traffic:insync:hk-esim:2026-11-19T16:00+00:00"


def test_roaming_traffic() -> None:
    inp = leak_input(
        roaming=True,
        roaming_bytes={"firefox": 5 * MB, "whatsapp": 3 * MB, "dns": 1_000},
        roaming_allowed=frozenset({"firefox"}),
    )
    findings = find_leaks(inp)
    assert kinds(findings) == [("roaming-traffic", "whatsapp")]
    assert findings[0].level == "critical"
    assert findings[0].fix == "meterguard block whatsapp --on metered"
    assert findings[0].evidence["roaming_now"] is True


def test_dedup_keys_are_stable_within_an_hour() -> None:
    def everything(now: datetime, scale: int) -> LeakInput:
        return leak_input(
            now=now,
            history={"nextcloud": noisy_history(2 * MB)},
            background_bytes={"nextcloud": (20 + scale) * MB, "rclone": 80 * MB * scale},
            hourly_limit=70 * MB,
            first_seen={"steam": START + timedelta(minutes=1)},
            foreground_bytes={"steam": 40 * MB * scale},
            idle_bytes={"rclone": 20 * MB * scale},
            roaming=True,
            roaming_bytes={"steam": 5 * MB * scale},
        )

    early = find_leaks(everything(START + timedelta(minutes=2), 1))
    late = find_leaks(everything(START + timedelta(minutes=59, seconds=59), 3))
    assert {f.kind for f in early} == set(FINDING_KINDS)
    assert [f.key for f in early] == [f.key for f in late]
    assert len({f.key for f in early}) == len(early)
    next_hour = find_leaks(everything(START + timedelta(hours=1, minutes=1), 1))
    hourly = {"background-above-baseline", "background-above-limit", "roaming-traffic"}
    for before, after in zip(early, next_hour, strict=True):
        assert (before.key != after.key) == (before.kind in hourly)


@pytest.mark.parametrize("app", ["packagekit", "com.dropbox.Client", "my sync", "it's"])
def test_every_finding_has_a_fix_naming_the_app(app: str) -> None:
    inp = leak_input(
        history={app: noisy_history(2 * MB)},
        background_bytes={app: 200 * MB},
        first_seen={app: START},
        idle_bytes={app: 50 * MB},
        roaming_bytes={app: 50 * MB},
    )
    inp_limit = replace(inp, hourly_limit=10 * MB)
    findings = find_leaks(inp) + find_leaks(inp_limit)
    assert {f.kind for f in findings} == set(FINDING_KINDS)
    for finding in findings:
        assert finding.app == app
        assert shlex.split(finding.fix) == ["meterguard", "block", app, "--on", "metered"]


def test_input_must_be_timezone_aware() -> None:
    naive = datetime(2026, 11, 20, 10)
    with pytest.raises(ValueError, match="timezone-aware"):
        LeakInput(now=naive, hour=(naive, naive + HOUR), network=NET)
    with pytest.raises(ValueError, match="before it starts"):
        LeakInput(now=START, hour=(START, START), network=NET)
    with pytest.raises(ValueError):
        LeakThresholds(k=0)


HISTORY = st.lists(st.integers(min_value=0, max_value=10**9), min_size=24, max_size=200)
NO_ABSOLUTE_FLOORS = LeakThresholds(mad_floor_bytes=0, min_bytes=0)


@settings(deadline=None)
@given(
    history=HISTORY,
    used=st.integers(min_value=0, max_value=10**10),
    factor=st.integers(min_value=1, max_value=10**6),
)
def test_scale_invariance(history: list[int], used: int, factor: int) -> None:
    """Without the absolute floors, the same usage in any unit gives the same answer."""
    base = baseline(history)
    scaled = baseline([b * factor for b in history])
    if base is None:
        assert scaled is None
        return
    assert scaled is not None
    t = NO_ABSOLUTE_FLOORS
    assert above_baseline(used, base, t) == above_baseline(used * factor, scaled, t)
    fires = find_leaks(
        leak_input(history={"a": history}, background_bytes={"a": used}, thresholds=t)
    )
    fires_scaled = find_leaks(
        leak_input(
            history={"a": [b * factor for b in history]},
            background_bytes={"a": used * factor},
            thresholds=t,
        )
    )
    assert bool(fires) == bool(fires_scaled)


@settings(deadline=None)
@given(
    history=HISTORY, used=st.integers(min_value=0, max_value=10**10), factor=st.integers(1, 1000)
)
def test_scaling_up_never_silences_a_leak(history: list[int], used: int, factor: int) -> None:
    """With the default floors, a leak stays a leak when everything grows by the same factor."""
    base = baseline(history)
    scaled = baseline([b * factor for b in history])
    if base is None or scaled is None:
        return
    t = LeakThresholds()
    if above_baseline(used, base, t):
        assert above_baseline(used * factor, scaled, t)


@settings(deadline=None)
@given(
    history=st.dictionaries(st.sampled_from(["a", "b", "c"]), HISTORY, max_size=3),
    data=st.data(),
)
def test_bytes_below_the_absolute_floor_never_fire(
    history: dict[str, list[int]], data: st.DataObject
) -> None:
    t = LeakThresholds()
    # Halved: the new-app rule adds an app's foreground and background bytes.
    floor = min(t.min_bytes, t.new_app_min_bytes, t.roaming_min_bytes) // 2
    below = st.dictionaries(
        st.sampled_from(["a", "b", "c"]), st.integers(min_value=0, max_value=floor - 1)
    )
    inp = leak_input(
        history=history,
        background_bytes=data.draw(below),
        foreground_bytes=data.draw(below),
        idle_bytes=data.draw(below),
        roaming_bytes=data.draw(below),
        first_seen={"a": START, "b": START, "c": START},
        roaming=True,
        hourly_limit=data.draw(st.one_of(st.none(), st.integers(min_value=floor))),
    )
    assert find_leaks(inp) == []
    # Against a baseline of one byte an hour, only the absolute floor keeps these quiet.
    flat = Baseline(median=Fraction(1), mad=Fraction(0), samples=10_000)
    no_mad_floor = LeakThresholds(mad_floor_bytes=0)
    for used in inp.background_bytes.values():
        assert not above_baseline(used, flat, no_mad_floor)
    assert above_baseline(no_mad_floor.min_bytes, flat, no_mad_floor)
