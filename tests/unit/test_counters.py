"""Counter deltas across resets and daemon restarts, against a model kernel."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterguard.core.counters import CounterTracker, counter_delta


@pytest.mark.parametrize(
    ("previous", "current", "delta"),
    [
        (None, 5_000, 0),  # no baseline: nothing can be claimed
        (0, 5_000, 5_000),  # known to be new since the last read
        (1_000, 1_500, 500),
        (1_500, 1_500, 0),
        (4_000_000_000, 12, 12),  # restarted from zero: not a 2**32 or 2**64 wrap
        (2**64 - 1, 0, 0),
    ],
)
def test_counter_delta(previous: int | None, current: int, delta: int) -> None:
    assert counter_delta(previous, current) == delta


def test_counter_delta_refuses_negative_readings() -> None:
    with pytest.raises(ValueError, match="negative"):
        counter_delta(10, -1)
    with pytest.raises(ValueError, match="negative"):
        counter_delta(-1, 10)


def test_vanished_key_counts_from_zero_when_it_comes_back() -> None:
    tracker: CounterTracker[str] = CounterTracker({})
    assert tracker.observe({"a": 100, "b": 7}, fresh=True) == {"a": 100, "b": 7}
    assert tracker.observe({"b": 9}, fresh=False) == {"b": 2}
    # "a" came back with more than it had: it was recreated, so all of it is new.
    assert tracker.observe({"a": 300, "b": 9}, fresh=False) == {"a": 300, "b": 0}


def test_fresh_read_uses_the_persisted_baseline() -> None:
    tracker = CounterTracker({"a": 100, "gone": 50, "reset": 900})
    deltas = tracker.observe({"a": 160, "new": 40, "reset": 30}, fresh=True)
    assert deltas == {"a": 60, "new": 40, "reset": 30}
    assert tracker.snapshot() == {"a": 160, "new": 40, "reset": 30}


def test_no_baseline_makes_the_first_read_a_baseline_only() -> None:
    tracker: CounterTracker[str] = CounterTracker(None)
    assert tracker.observe({"a": 10_000}, fresh=True) == {"a": 0}
    assert tracker.observe({"a": 10_500, "b": 3}, fresh=False) == {"a": 500, "b": 3}


def test_freshness_must_match_the_order_of_reads() -> None:
    tracker: CounterTracker[str] = CounterTracker({})
    with pytest.raises(ValueError, match="must be fresh"):
        tracker.observe({"a": 1}, fresh=False)
    tracker.observe({"a": 1}, fresh=True)
    with pytest.raises(ValueError, match="only the first"):
        tracker.observe({"a": 2}, fresh=True)


def test_forget_counts_an_undetectable_recreation_fully() -> None:
    tracker: CounterTracker[str] = CounterTracker({})
    tracker.observe({"a": 100}, fresh=True)
    tracker.forget(["a"])  # deleted and recreated; it already holds 250 new bytes
    assert tracker.observe({"a": 250}, fresh=False) == {"a": 250}


def test_snapshot_is_a_copy() -> None:
    tracker: CounterTracker[str] = CounterTracker({"a": 1})
    tracker.snapshot()["a"] = 99
    assert tracker.snapshot() == {"a": 1}


def test_negative_readings_are_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        CounterTracker({"a": -1})
    with pytest.raises(ValueError, match="negative"):
        CounterTracker[str]({}).observe({"a": -5}, fresh=True)


# --- model-based properties ------------------------------------------------------------


class ModelKernel:
    """Per-key byte counters that restart from zero when an element is recreated."""

    def __init__(self) -> None:
        self.values: dict[str, int] = {}
        self.unread: dict[str, int] = {}  # bytes added since the last read, still held
        self.deleted_since_read: set[str] = set()

    def apply(self, op: tuple[str, str, int]) -> None:
        kind, key, n = op
        if kind == "add":
            self.values[key] = self.values.get(key, 0) + n
            self.unread[key] = self.unread.get(key, 0) + n
        else:  # delete: the kernel forgets the element and its unread bytes
            self.values.pop(key, None)
            self.unread.pop(key, None)
            self.deleted_since_read.add(key)

    def read(self) -> tuple[dict[str, int], dict[str, int]]:
        """The readings, and what each key truly added since the previous read."""
        readings, added = dict(self.values), dict(self.unread)
        self.unread = {key: 0 for key in self.values}
        self.deleted_since_read = set()
        return readings, added


keys = st.sampled_from(["a", "b", "c", "d"])
byte_counts = st.integers(min_value=0, max_value=10**12)
ops = st.one_of(
    st.tuples(st.just("add"), keys, byte_counts),
    st.tuples(st.just("delete"), keys, st.just(0)),
)
rounds = st.lists(st.tuples(st.lists(ops, max_size=8), st.booleans()), min_size=1, max_size=15)


def _run(
    tracker: CounterTracker[str],
    kernel: ModelKernel,
    schedule: list[tuple[list[tuple[str, str, int]], bool]],
    *,
    fresh_first: bool,
) -> int:
    """Drive `tracker` through `schedule`, checking every delta; return the bytes counted."""
    counted = 0
    last: dict[str, int] = tracker.snapshot()
    for index, (round_ops, announce) in enumerate(schedule):
        for op in round_ops:
            kernel.apply(op)
        recreated = {k for k in kernel.deleted_since_read if k in kernel.values and k in last}
        # The daemon knows when it recreated an element itself; announcing is required
        # only when the readings cannot reveal it (the new counter already caught up).
        must_announce = {k for k in recreated if kernel.values[k] >= last[k]}
        tracker.forget(recreated if announce else must_announce)
        readings, added = kernel.read()
        deltas = tracker.observe(readings, fresh=fresh_first and index == 0)
        assert deltas == added
        assert all(delta >= 0 for delta in deltas.values())
        counted += sum(deltas.values())
        last = readings
    return counted


@settings(deadline=None)
@given(schedule=rounds)
def test_deltas_add_up_to_the_bytes_added_across_resets(
    schedule: list[tuple[list[tuple[str, str, int]], bool]],
) -> None:
    kernel = ModelKernel()
    added_total = sum(n for round_ops, _ in schedule for kind, _, n in round_ops if kind == "add")
    lost = _lost_to_deletion(schedule)
    counted = _run(CounterTracker({}), kernel, schedule, fresh_first=True)
    assert counted == added_total - lost


def _lost_to_deletion(schedule: list[tuple[list[tuple[str, str, int]], bool]]) -> int:
    """Bytes added and then deleted before any read saw them: gone from the kernel."""
    lost = 0
    for round_ops, _ in schedule:
        pending: dict[str, int] = {}
        for kind, key, n in round_ops:
            if kind == "add":
                pending[key] = pending.get(key, 0) + n
            else:
                lost += pending.pop(key, 0)
    return lost


@settings(deadline=None)
@given(
    before=rounds,
    while_down=st.lists(ops, max_size=10),
    after=rounds,
)
def test_restart_from_the_persisted_snapshot_loses_nothing(
    before: list[tuple[list[tuple[str, str, int]], bool]],
    while_down: list[tuple[str, str, int]],
    after: list[tuple[list[tuple[str, str, int]], bool]],
) -> None:
    kernel = ModelKernel()
    first: CounterTracker[str] = CounterTracker({})
    ledger = _run(first, kernel, before, fresh_first=True)
    # The meter persists the snapshot with every read's deltas; JSON stands in for disk.
    persisted = json.dumps(first.snapshot())

    # kill -9, then traffic while the daemon is down: the kernel keeps counting.
    # An element deleted while the daemon is down takes its unread bytes with it,
    # and one recreated meanwhile cannot be told apart from growth, so deleted keys
    # stay deleted: whatever the kernel still holds must all arrive.
    deleted: set[str] = set()
    for kind, key, n in while_down:
        if kind == "delete":
            deleted.add(key)
            kernel.apply((kind, key, n))
        elif key not in deleted:
            kernel.apply((kind, key, n))
    held_after_downtime = sum(kernel.unread.values())

    restarted = CounterTracker[str](json.loads(persisted))
    readings, added = kernel.read()
    deltas = restarted.observe(readings, fresh=True)
    assert deltas == added
    assert sum(deltas.values()) == held_after_downtime

    added_before = sum(n for ops_, _ in before for kind, _, n in ops_ if kind == "add")
    assert ledger == added_before - _lost_to_deletion(before)
    added_after = sum(n for ops_, _ in after for kind, _, n in ops_ if kind == "add")
    counted_after = _run(restarted, kernel, after, fresh_first=False)
    assert counted_after == added_after - _lost_to_deletion(after)
