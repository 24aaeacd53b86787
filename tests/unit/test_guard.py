"""Guard decisions: thresholds once per cycle, the cap and its actions, resume and rollover."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterguard.core.cycles import Monthly
from meterguard.core.guard import (
    Alert,
    BlockOthers,
    DailyLimit,
    Decision,
    Disconnect,
    GuardInput,
    NoCap,
    Pause,
    Resume,
    SetCap,
    decide,
    prune_fired,
    resume_grant,
)
from meterguard.core.plans import (
    CAP_THRESHOLD,
    BytesLeft,
    CapAction,
    Percent,
    Plan,
    Threshold,
    threshold_key,
)

HK = ZoneInfo("Asia/Hong_Kong")
GB = 10**9
MB = 10**6
START = datetime(2026, 11, 14, 16, tzinfo=UTC)  # 2026-11-15 00:00 HKT
END = datetime(2026, 12, 14, 16, tzinfo=UTC)  # 2026-12-15 00:00 HKT
NEXT_END = datetime(2027, 1, 14, 16, tzinfo=UTC)
DAY = timedelta(days=1)
KEY = "hk-monthly@2026-11-15T00:00+08:00"


def hk_plan(**kw: object) -> Plan:
    args: dict[str, object] = {
        "name": "hk-monthly",
        "quota_bytes": 20 * GB,
        "cycle": Monthly(15),
        "tz": HK,
    }
    args.update(kw)
    return Plan(**args)  # type: ignore[arg-type]


def inp(plan: Plan | None = None, **kw: object) -> GuardInput:
    args: dict[str, object] = {
        "plan": plan or hk_plan(),
        "cycle": (START, END),
        "used": 0,
        "allowance": 20 * GB,
        "now": START + 16 * DAY,
    }
    args.update(kw)
    return GuardInput(**args)  # type: ignore[arg-type]


def alerts(decisions: list[Decision]) -> list[Alert]:
    return [d for d in decisions if isinstance(d, Alert)]


def keys(decisions: list[Decision]) -> list[str]:
    return [a.key for a in alerts(decisions)]


# --- thresholds and alerts -----------------------------------------------------------------------


def test_crossing_two_thresholds_fires_both_in_order_with_human_bodies() -> None:
    # 16 GB in 16 days: at 1 GB a day the last 4 GB go by 2026-12-05 00:00 HKT.
    out = decide(inp(used=16 * GB))
    assert out[0] == SetCap(4 * GB)
    assert keys(out) == [f"{KEY}:50%", f"{KEY}:80%"]
    fifty, eighty = alerts(out)
    assert (fifty.level, eighty.level) == ("info", "warning")
    assert eighty.threshold == Percent(80) and eighty.cycle_start == START
    assert eighty.title == "hk-monthly: 80% used"
    assert eighty.body == (
        "80% of 20 GB used on hk-monthly: 4 GB left, runs out around 2026-12-05 at this pace"
    )
    assert len(out) == 3


def test_a_fired_threshold_never_fires_again() -> None:
    out = decide(inp(used=16 * GB, fired=frozenset({f"{KEY}:50%"})))
    assert keys(out) == [f"{KEY}:80%"]
    out = decide(inp(used=17 * GB, fired=frozenset({f"{KEY}:50%", f"{KEY}:80%"})))
    assert keys(out) == []


def test_lasting_the_cycle_is_said() -> None:
    out = decide(inp(used=10 * GB, now=START + 25 * DAY))
    assert alerts(out)[0].body == (
        "50% of 20 GB used on hk-monthly: 10 GB left, "
        "lasts the cycle at this pace (next cycle 2026-12-15 00:00 HKT)"
    )


def test_bytes_left_thresholds() -> None:
    plan = hk_plan(thresholds=(BytesLeft(GB),))
    assert keys(decide(inp(plan, used=19 * GB - 1))) == []
    out = decide(inp(plan, used=19 * GB))
    (alert,) = alerts(out)
    assert alert.key == f"{KEY}:1000000000B-left"
    assert alert.level == "warning"
    assert alert.title == "hk-monthly: 1 GB left"
    assert alert.body.startswith("1 GB of 20 GB left on hk-monthly, runs out around 2026-12-")


def test_the_cap_is_never_silent() -> None:
    # Only a 90% threshold is configured; 100% fires anyway, because the cap acts.
    out = decide(inp(hk_plan(thresholds=(Percent(90),)), used=20 * GB))
    assert keys(out) == [f"{KEY}:90%", f"{KEY}:100%"]


# --- the cap -------------------------------------------------------------------------------------


def test_at_the_cap_data_pauses_and_the_kernel_quota_is_zero() -> None:
    out = decide(inp(used=20 * GB))
    assert out[0] == Pause(
        "hk-monthly used its 20 GB allowance; "
        "data is paused until the next cycle starts at 2026-12-15 00:00 HKT"
    )
    assert out[1] == SetCap(0)
    assert keys(out) == [f"{KEY}:{p}%" for p in (50, 80, 90, 100)]
    cap = alerts(out)[-1]
    assert (cap.level, cap.title) == ("critical", "hk-monthly: data cap reached")
    assert cap.body == (
        "100% of 20 GB used on hk-monthly: 0 B left, "
        "data is paused until the next cycle starts at 2026-12-15 00:00 HKT"
    )


def test_while_paused_the_pause_is_not_repeated() -> None:
    fired = frozenset(f"{KEY}:{p}%" for p in (50, 80, 90, 100))
    assert decide(inp(used=21 * GB, paused=True, fired=fired)) == [SetCap(0)]


def test_below_the_cap_the_kernel_quota_is_the_remaining_allowance() -> None:
    fired = frozenset({f"{KEY}:50%"})
    assert decide(inp(used=12 * GB, fired=fired)) == [SetCap(8 * GB)]


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ("block-others", BlockOthers(("meterguard-notify", "signal"), "")),
        ("disconnect", Disconnect("")),
    ],
)
def test_other_cap_actions(action: CapAction, expected: Decision) -> None:
    plan = hk_plan(cap_action=action, allow_list=("meterguard-notify", "signal"))
    out = decide(inp(plan, used=20 * GB))
    first = out[0]
    assert type(first) is type(expected)
    if isinstance(first, BlockOthers):
        assert first.allow == ("meterguard-notify", "signal")
        assert "only meterguard-notify, signal may use data" in first.reason
    assert out[1] == SetCap(0)


def test_alert_only_plans_never_cap() -> None:
    plan = hk_plan(cap_action="alert")
    out = decide(inp(plan, used=25 * GB))
    assert not any(isinstance(d, Pause | SetCap) for d in out)
    assert NoCap("hk-monthly only alerts at its cap") in out
    assert alerts(out)[-1].body.endswith("0 B left, further use may be billed extra or slowed")
    # A plan switched to alert-only while paused lets data through again.
    assert isinstance(decide(inp(plan, used=25 * GB, paused=True))[0], Resume)


def test_a_topup_raises_the_allowance_and_resumes() -> None:
    fired = frozenset(f"{KEY}:{p}%" for p in (50, 80, 90, 100))
    out = decide(inp(used=20 * GB, topup_bytes=GB, paused=True, fired=fired))
    assert out == [Resume("hk-monthly is below its cap again: 1 GB left"), SetCap(GB)]


# --- resume on request ---------------------------------------------------------------------------


def test_resume_for_a_size_lifts_the_pause_until_it_is_used() -> None:
    now = START + 20 * DAY
    until, upto = resume_grant(now, 20 * GB, size=500 * MB)
    assert (until, upto) == (None, 20_500 * MB)
    fired = frozenset(f"{KEY}:{p}%" for p in (50, 80, 90, 100))
    out = decide(inp(used=20 * GB, now=now, paused=True, fired=fired, resume_bytes=upto))
    assert out == [Resume("data resumed on request for 500 MB more"), SetCap(500 * MB)]
    out = decide(inp(used=20_200 * MB, now=now, paused=False, fired=fired, resume_bytes=upto))
    assert out == [SetCap(300 * MB)]
    out = decide(inp(used=upto, now=now, paused=False, fired=fired, resume_bytes=upto))
    assert isinstance(out[0], Pause) and out[1] == SetCap(0)


def test_resume_for_a_duration_lifts_the_pause_until_it_passes() -> None:
    now = START + 20 * DAY
    until, upto = resume_grant(now, 20 * GB, duration=timedelta(hours=2))
    assert until == now + timedelta(hours=2) and upto is None
    fired = frozenset(f"{KEY}:{p}%" for p in (50, 80, 90, 100))
    out = decide(inp(used=20 * GB, now=now, paused=True, fired=fired, resume_until=until))
    assert out == [
        Resume("data resumed on request until 2026-12-05 02:00 HKT"),
        NoCap("resumed on request", until),
    ]
    assert until is not None
    out = decide(inp(used=21 * GB, now=until, fired=fired, resume_until=until))
    assert isinstance(out[0], Pause) and out[1] == SetCap(0)


def test_resume_grant_needs_something_positive() -> None:
    now = START
    with pytest.raises(ValueError, match="size or a duration"):
        resume_grant(now, 0)
    with pytest.raises(ValueError, match="positive"):
        resume_grant(now, 0, duration=timedelta(0))


# --- rollover and daily fair use -----------------------------------------------------------------


def test_a_new_cycle_resumes_and_restarts_the_thresholds() -> None:
    old = frozenset(f"{KEY}:{p}%" for p in (50, 80, 90, 100))
    out = decide(
        inp(
            cycle=(END, NEXT_END),
            used=0,
            now=END + timedelta(seconds=1),
            paused=True,
            fired=old,
            previous_cycle_start=START,
        )
    )
    assert out == [
        Resume("a new cycle of hk-monthly started at 2026-12-15 00:00 HKT"),
        SetCap(20 * GB),
    ]
    out = decide(inp(cycle=(END, NEXT_END), used=11 * GB, now=END + 5 * DAY, fired=old))
    assert keys(out) == ["hk-monthly@2026-12-15T00:00+08:00:50%"]


def test_prune_fired_keeps_the_current_periods() -> None:
    plan = hk_plan()
    day = datetime(2026, 12, 1, 16, tzinfo=UTC)
    fired = frozenset(
        {
            f"{KEY}:80%",
            "hk-monthly@2026-12-15T00:00+08:00:50%",
            "hk-monthly@2026-12-02T00:00+08:00:daily-limit",
            "other@2026-12-15T00:00+08:00:50%",
        }
    )
    assert prune_fired(plan, fired, END, day) == {
        "hk-monthly@2026-12-15T00:00+08:00:50%",
        "hk-monthly@2026-12-02T00:00+08:00:daily-limit",
    }


def test_the_daily_fair_use_limit_pauses_until_midnight() -> None:
    plan = hk_plan(daily_limit_bytes=GB)
    today = (START + 5 * DAY, START + 6 * DAY)
    fired = frozenset({f"{KEY}:50%"})
    now = START + 5 * DAY + timedelta(hours=15)
    out = decide(inp(plan, used=11 * GB, used_today=GB, day_bounds=today, now=now, fired=fired))
    assert out[0] == Pause(
        "hk-monthly used its 1 GB daily fair-use limit; data is paused until 2026-11-21 00:00 HKT"
    )
    assert out[1] == SetCap(0)
    (alert,) = alerts(out)
    assert alert.key == "hk-monthly@2026-11-20T00:00+08:00:daily-limit"
    assert alert.threshold == DailyLimit(GB) and alert.cycle_start == today[0]
    assert alert.level == "critical"
    assert alert.body == (
        "1 GB daily fair-use limit used on hk-monthly, data is paused until 2026-11-21 00:00 HKT"
    )
    # Below the limit, the kernel quota is the smaller of what is left today and in the cycle.
    out = decide(inp(plan, used=11 * GB, used_today=300 * MB, day_bounds=today, fired=fired))
    assert out == [SetCap(700 * MB)]
    # The next day starts: resume.
    tomorrow = (today[1], today[1] + DAY)
    out = decide(
        inp(plan, used=11 * GB, used_today=0, day_bounds=tomorrow, paused=True, fired=fired)
    )
    assert out == [Resume("hk-monthly is below its cap again: 1 GB left"), SetCap(GB)]


def test_used_today_needs_the_day() -> None:
    with pytest.raises(ValueError, match="day_bounds"):
        decide(inp(hk_plan(daily_limit_bytes=GB), used_today=0))


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        decide(inp(now=datetime(2026, 11, 20)))


# --- properties ----------------------------------------------------------------------------------

thresholds_st = st.lists(
    st.one_of(
        st.integers(1, 100).map(Percent),
        st.integers(0, 20 * GB).map(BytesLeft),
    ),
    min_size=0,
    max_size=6,
    unique=True,
).map(tuple)
actions = st.sampled_from(["pause", "block-others", "disconnect", "alert"])


def expected_keys(plan: Plan, used: int, allowance: int) -> set[str]:
    all_thresholds: list[Threshold] = [*plan.thresholds, CAP_THRESHOLD]
    return {
        threshold_key(plan, START, t) for t in all_thresholds if used >= t.trigger_bytes(allowance)
    }


@settings(deadline=None, max_examples=300)
@given(
    thresholds=thresholds_st,
    action=actions,
    steps=st.lists(
        st.tuples(st.integers(0, 3 * GB), st.integers(0, 86_400), st.booleans()),
        min_size=1,
        max_size=30,
    ),
)
def test_each_threshold_fires_exactly_once_per_cycle_across_restarts(
    thresholds: tuple[Threshold, ...], action: CapAction, steps: list[tuple[int, int, bool]]
) -> None:
    plan = hk_plan(thresholds=thresholds, cap_action=action)
    fired: set[str] = set()
    paused = False
    used, now = 0, START
    for delta, seconds, restart in steps:
        used += delta
        now = min(now + timedelta(seconds=seconds), END - timedelta(seconds=1))
        if restart:
            # A restarted daemon has its persisted keys but may have lost the pause state.
            paused = False
        out = decide(inp(plan, used=used, now=now, fired=frozenset(fired), paused=paused))
        triggers = []
        for alert in alerts(out):
            assert alert.key not in fired
            fired.add(alert.key)
            assert isinstance(alert.threshold, Percent | BytesLeft)
            triggers.append(alert.threshold.trigger_bytes(20 * GB))
        assert triggers == sorted(triggers)
        for d in out:
            if isinstance(d, Pause | BlockOthers | Disconnect):
                paused = True
            elif isinstance(d, Resume):
                paused = False
    assert fired == expected_keys(plan, used, 20 * GB)


@settings(deadline=None, max_examples=500)
@given(
    used=st.integers(0, 40 * GB),
    allowance=st.integers(0, 30 * GB),
    topup=st.integers(0, 5 * GB),
    daily=st.one_of(st.none(), st.tuples(st.integers(0, 3 * GB), st.integers(0, 4 * GB))),
    action=actions,
    paused=st.booleans(),
)
def test_the_kernel_quota_never_exceeds_what_is_left(
    used: int,
    allowance: int,
    topup: int,
    daily: tuple[int, int] | None,
    action: CapAction,
    paused: bool,
) -> None:
    limit, today = daily if daily is not None else (None, None)
    plan = hk_plan(cap_action=action, daily_limit_bytes=limit)
    out = decide(
        inp(
            plan,
            used=used,
            allowance=allowance,
            topup_bytes=topup,
            used_today=today,
            day_bounds=(START + DAY, START + 2 * DAY),
            paused=paused,
        )
    )
    quota = [d for d in out if isinstance(d, SetCap | NoCap)]
    assert len(quota) == 1
    left = max(allowance + topup - used, 0)
    if limit is not None and today is not None:
        left = min(left, max(limit - today, 0))
    if isinstance(quota[0], SetCap):
        assert 0 <= quota[0].remaining_bytes <= left
        assert quota[0].remaining_bytes == left
    else:
        assert action == "alert"


@settings(deadline=None, max_examples=500)
@given(
    used=st.integers(0, 40 * GB),
    allowance=st.integers(0, 30 * GB),
    topup=st.integers(0, 5 * GB),
    action=st.sampled_from(["pause", "block-others", "disconnect"]),
)
def test_the_cap_action_appears_iff_the_allowance_is_used(
    used: int, allowance: int, topup: int, action: CapAction
) -> None:
    plan = hk_plan(cap_action=action)
    out = decide(inp(plan, used=used, allowance=allowance, topup_bytes=topup))
    capped = used >= allowance + topup
    assert any(isinstance(d, Pause | BlockOthers | Disconnect) for d in out) == capped
    assert (SetCap(0) in out) == capped
    assert not any(isinstance(d, Resume) for d in out)
