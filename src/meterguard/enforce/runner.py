"""Guarding every configured plan, once per poll: usage in, decisions applied.

The decisions come from the pure `core.guard.decide`; this module only gathers its inputs
(usage, persisted state, the thresholds already fired) and carries the decisions out: the
kernel quota's limit, ending flows at a pause, events and alerts. It also takes the user's
commands (top-up, resume, set-used), which the CLI queues in the ledger.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from meterguard.config import Config
from meterguard.core.guard import (
    Alert,
    BlockOthers,
    Decision,
    Disconnect,
    GuardInput,
    NoCap,
    Pause,
    Resume,
    SetCap,
    decide,
    next_trigger,
    resume_grant,
)
from meterguard.core.plans import Plan, allowance, period_key
from meterguard.core.units import format_bytes
from meterguard.enforce.caps import CapControl
from meterguard.enforce.state import PlanState, state_key
from meterguard.enforce.usage import PlanUsage, TotalsReader, plan_summary
from meterguard.kernel.ruleset import PlanGuardSpec, allow_set
from meterguard.ledger.model import UsageDelta

log = logging.getLogger(__name__)

# A limit no link reaches in a cycle: how "no cap" is written into a quota that must exist.
UNLIMITED = 1 << 60
# A quota's limit is raised only by more than this: a lower limit is always written at once
# (it is the safe side), while read skew alone must not make the limit wander upwards.
LOOSEN_SLACK = 64 * 1024
# When the kernel quota is exhausted this close to the allowance, the cap is in force: the
# limit came early by read skew (about 1-2 ms of traffic), not by a real shortfall.
CAP_TOLERANCE = 256 * 1024


class PlanLedger(TotalsReader, Protocol):
    def get_state(self, key: str) -> str | None: ...

    def put_state(self, key: str, value: str) -> None: ...


class EventSink(Protocol):
    def alert(self, alert: Alert, at: datetime) -> bool:
        """Record an alert and send it; False if its key was already recorded (fired)."""
        ...

    def fired(self, prefix: str) -> frozenset[str]: ...

    def note(self, kind: str, level: str, title: str, body: str, at: datetime) -> None: ...


class NetworkControl(Protocol):
    def disconnect(self, interfaces: Sequence[str]) -> bool: ...

    def reconnect(self) -> list[str]: ...


@dataclass
class GuardedPlan:
    plan: Plan
    interfaces: tuple[str, ...]
    usage: PlanUsage
    state: PlanState
    limit: int | None = None  # the quota limit last written


class PlanGuardRunner:
    def __init__(
        self,
        config: Config,
        ledger: PlanLedger,
        caps: CapControl,
        events: EventSink,
        *,
        marks_of_apps: Callable[[frozenset[str]], set[int]],
        network: NetworkControl | None = None,
    ) -> None:
        self._ledger = ledger
        self._caps = caps
        self._events = events
        self._marks_of_apps = marks_of_apps
        self._network = network
        self.plans: dict[str, GuardedPlan] = {}
        self._consumed: dict[str, int | None] = {}
        # Seconds until the nearest threshold is crossed at the last poll's rate.
        self.next_crossing_s = float("inf")
        self._last_step: datetime | None = None
        for name, pc in config.plans.items():
            nets = config.plan_networks(name)
            if not nets:
                continue  # a plan no metered network draws on guards nothing
            plan = pc.to_plan(name)
            globs = tuple(dict.fromkeys(g for n in nets for g in n.interfaces))
            usage = PlanUsage(plan, tuple(n.name for n in nets))
            self.plans[name] = GuardedPlan(plan, globs, usage, PlanState())

    # --- start-up ------------------------------------------------------------------------

    def load(self, now: datetime) -> None:
        for gp in self.plans.values():
            gp.state = PlanState.loads(self._ledger.get_state(state_key(gp.plan.name)))
            gp.usage.refresh(self._ledger, now)
            self._roll_over_if_due(gp, now)

    def guard_specs(self) -> tuple[PlanGuardSpec, ...]:
        """The plans' quotas for the ruleset, each at the limit the kernel should hold now."""
        specs = []
        for name, gp in self.plans.items():
            if gp.plan.cap_action == "alert":
                continue
            if gp.limit is None:
                consumed = self._caps.consumed(name) or 0
                gp.limit = consumed + self._remaining(gp, gp.usage.cycle is not None)
            specs.append(PlanGuardSpec(
                name, gp.interfaces, gp.limit, allow_list=gp.plan.cap_action == "block-others",
            ))
        return tuple(specs)

    def _allowance(self, gp: GuardedPlan) -> int:
        if gp.usage.cycle is None:
            return 0
        return allowance(gp.plan, gp.usage.cycle[0], gp.state.previous_cycle_used)

    def _remaining(self, gp: GuardedPlan, has_cycle: bool) -> int:
        if not has_cycle:
            return 0  # an expired pass, or one not yet active: nothing may pass
        used = gp.usage.cycle_bytes + gp.state.adjust_bytes
        return max(self._allowance(gp) + gp.state.topup_bytes - used, 0)

    # --- each poll -----------------------------------------------------------------------

    def _roll_over_if_due(self, gp: GuardedPlan, now: datetime) -> bool:
        cycle = gp.usage.cycle
        if cycle is None:
            return False
        start_iso = cycle[0].isoformat()
        if gp.state.cycle_start == start_iso:
            return False
        previous = gp.usage.previous_cycle_bytes(self._ledger, now)
        gp.state.new_cycle(cycle[0], previous)
        gp.limit = None  # a real change of the allowance: write the new limit whatever it is
        self._save(gp)
        return True

    def sample_quotas(self) -> None:
        """Read each quota's consumed bytes; call it just BEFORE the meter reads its counters.

        The limit written is `consumed + allowance - used`. Read before the counters, the
        consumed figure can only miss bytes the counters include, so the limit errs low
        (the cap comes a little early) and never high (no byte past the cap). Read after,
        every byte sent in between would be allowed twice.
        """
        self._consumed = {name: self._caps.consumed(name) for name in self.plans}

    def step(self, now: datetime, rows: Sequence[UsageDelta]) -> list[Decision]:
        decisions: list[Decision] = []
        elapsed = (now - self._last_step).total_seconds() if self._last_step else 0.0
        self._last_step = now
        self.next_crossing_s = float("inf")
        for gp in self.plans.values():
            previous_start = gp.usage.cycle[0] if gp.usage.cycle else None
            day = gp.usage.day
            if gp.usage.cycle is None or now >= gp.usage.cycle[1] or (day and now >= day[1]):
                gp.usage.refresh(self._ledger, now)  # a new cycle or a new day
            else:
                gp.usage.add(now, rows)
            self._roll_over_if_due(gp, now)
            decisions += self._decide_and_apply(gp, now, previous_start)
            self._estimate_crossing(gp, rows, elapsed)
        return decisions

    def _estimate_crossing(
        self, gp: GuardedPlan, rows: Sequence[UsageDelta], elapsed: float
    ) -> None:
        moved = sum(r.bytes_up + r.bytes_down for r in rows if r.network in gp.usage.networks)
        if elapsed <= 0 or moved <= 0 or gp.usage.cycle is None:
            return
        used = gp.usage.cycle_bytes + gp.state.adjust_bytes
        allowed = self._allowance(gp) + gp.state.topup_bytes
        target = next_trigger(gp.plan, used, allowed)
        if target is not None:
            rate = moved / elapsed
            self.next_crossing_s = min(self.next_crossing_s, (target - used) / rate)

    def _decide_and_apply(
        self, gp: GuardedPlan, now: datetime, previous_start: datetime | None
    ) -> list[Decision]:
        plan, usage, state = gp.plan, gp.usage, gp.state
        if usage.cycle is None:
            self._apply_limit(gp, 0)
            return [SetCap(0)]
        used = usage.cycle_bytes + state.adjust_bytes
        allowed = self._allowance(gp) + state.topup_bytes
        if self._kernel_holds_cap(gp) and allowed - used < CAP_TOLERANCE:
            # The quota's limit errs low by read skew, so the kernel may stop traffic a few
            # kB before the counted bytes reach the allowance. That is the cap in force:
            # say so (pause, the 100% alert) rather than wait for bytes that cannot come.
            used = max(used, allowed)
        inp = GuardInput(
            plan=plan, cycle=usage.cycle, used=used,
            allowance=self._allowance(gp), now=now,
            fired=self._events.fired(period_key(plan, usage.cycle[0]))
            | (self._events.fired(period_key(plan, usage.day[0])) if usage.day else frozenset()),
            used_today=usage.day_bytes if plan.daily_limit_bytes else None,
            day_bounds=usage.day if plan.daily_limit_bytes else None,
            topup_bytes=state.topup_bytes, resume_until=state.resume_until_dt,
            resume_bytes=state.resume_bytes, paused=state.paused,
            previous_cycle_start=previous_start,
        )
        decisions = decide(inp)
        for d in decisions:
            self._apply(gp, d, now)
        return decisions

    def _kernel_holds_cap(self, gp: GuardedPlan) -> bool:
        consumed = self._consumed.get(gp.plan.name)
        return consumed is not None and gp.limit is not None and consumed >= gp.limit

    def _apply(self, gp: GuardedPlan, d: Decision, now: datetime) -> None:
        name = gp.plan.name
        if isinstance(d, SetCap):
            self._apply_limit(gp, d.remaining_bytes)
        elif isinstance(d, NoCap):
            if gp.plan.cap_action != "alert":
                self._apply_limit(gp, UNLIMITED)
        elif isinstance(d, Alert):
            self._events.alert(d, now)
        elif isinstance(d, Pause | BlockOthers | Disconnect):
            gp.state.paused = True
            self._save(gp)
            if isinstance(d, BlockOthers):
                self._caps.replace_marks(allow_set(name), self._marks_of_apps(frozenset(d.allow)))
            if isinstance(d, Disconnect) and (
                self._network is None or not self._network.disconnect(gp.interfaces)
            ):
                log.warning("%s: cannot disconnect through NetworkManager; the kernel "
                            "quota holds the cap", name)
            ended = self._caps.end_flows(gp.interfaces)
            self._events.note("pause", "critical", f"{name}: data paused",
                              f"{d.reason} ({ended} connections ended)", now)
        elif isinstance(d, Resume):
            gp.limit = None
            gp.state.paused = False
            if gp.plan.cap_action == "disconnect" and self._network is not None:
                # NetworkManager blocks autoconnect after a Disconnect: bring it back.
                self._network.reconnect()
            self._save(gp)
            self._events.note("resume", "info", f"{name}: data resumed", d.reason, now)

    def _apply_limit(self, gp: GuardedPlan, remaining: int) -> None:
        if gp.plan.cap_action == "alert":
            return
        name = gp.plan.name
        consumed = self._consumed[name] if name in self._consumed else self._caps.consumed(name)
        if consumed is None:
            return  # no table yet: the next reconcile writes the limit in
        limit = consumed + remaining
        if gp.limit is None or limit < gp.limit or limit > gp.limit + LOOSEN_SLACK:
            self._caps.set_limit(name, limit)
            gp.limit = limit

    def _save(self, gp: GuardedPlan) -> None:
        self._ledger.put_state(state_key(gp.plan.name), gp.state.dumps())

    def refresh_allow_lists(self) -> None:
        """New cgroups of allowed apps appear all the time: keep their marks in the set."""
        for name, gp in self.plans.items():
            if gp.plan.cap_action == "block-others":
                allowed = frozenset(gp.plan.allow_list)
                self._caps.replace_marks(allow_set(name), self._marks_of_apps(allowed))

    def table_rebuilt(self) -> None:
        """The quotas were recreated: write every limit again at the next decision."""
        self._consumed = {}
        for gp in self.plans.values():
            gp.limit = None

    # --- the user's commands -------------------------------------------------------------

    def command(self, kind: str, args: Mapping[str, Any], now: datetime) -> str:
        name = args.get("plan") or (next(iter(self.plans)) if len(self.plans) == 1 else None)
        if name not in self.plans:
            known = ", ".join(self.plans) or "none"
            raise ValueError(f"no guarded plan {name!r} (plans: {known})")
        gp = self.plans[name]
        used = gp.usage.cycle_bytes + gp.state.adjust_bytes
        if kind == "topup":
            gp.state.topup_bytes += int(args["bytes"])
            result = f"{name}: topped up {format_bytes(int(args['bytes']))}"
        elif kind == "resume":
            duration = args.get("seconds")
            size = args.get("bytes")
            until, upto = resume_grant(
                now, used, size=int(size) if size is not None else None,
                duration=timedelta(seconds=float(duration)) if duration is not None else None,
            )
            gp.state.resume_until = until.isoformat() if until else None
            gp.state.resume_bytes = upto
            result = f"{name}: resumed"
        elif kind == "set-used":
            gp.state.adjust_bytes = int(args["bytes"]) - gp.usage.cycle_bytes
            result = f"{name}: used set to {format_bytes(int(args['bytes']))}"
        else:
            raise ValueError(f"unknown plan command {kind!r}")
        gp.limit = None
        self._save(gp)
        self._events.note(kind, "info", result, result, now)
        return result

    def summaries(self, now: datetime) -> list[dict[str, Any]]:
        return [plan_summary(gp.usage, gp.state, now) | {"kernel_limit": gp.limit}
                for gp in self.plans.values()]
