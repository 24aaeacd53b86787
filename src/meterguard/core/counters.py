"""Deltas from kernel counters that only grow until something resets them.

Pure: no I/O. nftables counters are 64-bit and monotonic while their element
lives. They restart from zero when a set is flushed, an element is deleted and
recreated, an interface is recreated, or the machine reboots. A 64-bit byte
counter cannot wrap in practice (16 EiB), so a reading below the previous one
always means "restarted from zero": the delta is the new reading. Treating it as a
wrap instead is how vnStat users get their 4 GiB (32-bit) phantom spikes.

What cannot be seen from readings alone: an element recreated between two reads
that has already grown past its old value. Whoever recreates it (the daemon
reloading its table) knows, and calls `CounterTracker.forget` for those keys.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


def counter_delta(previous: int | None, current: int) -> int:
    """Bytes added since `previous`, never negative.

    - `previous` is None: there is no baseline to compare with, so nothing can be
      claimed as new; the reading becomes the baseline and the delta is 0.
    - `previous` is 0: the caller knows the counter is new since its last read
      (created after it), so the whole reading is new: the delta is `current`.
    - `current < previous`: the counter restarted from zero, so the delta is
      `current` (what accumulated since the restart), never a wrap-around.
    - otherwise `current - previous`.
    """
    if current < 0:
        raise ValueError(f"a counter reading cannot be negative: {current}")
    if previous is None:
        return 0
    if previous < 0:
        raise ValueError(f"a counter baseline cannot be negative: {previous}")
    if current < previous:
        return current
    return current - previous


class CounterTracker(Generic[K]):
    """Turns successive reads of many keyed counters into per-read deltas.

    `baseline` is the snapshot persisted by the previous run of the daemon (see
    `snapshot`), or None when there is none. The first read after the daemon
    starts must be `fresh=True`; it is compared with that baseline, so a kill -9
    loses no bytes that the kernel still holds:

    - a key in the baseline gives `current - baseline` (or `current` if the
      counter restarted meanwhile);
    - a key not in the baseline was created while the daemon was down and counts
      fully;
    - with no baseline at all (None) nothing is known about what an earlier run
      already recorded, so the fresh read only becomes the baseline (delta 0).
      Pass an empty mapping instead when the kernel counters are known to have
      started from zero (the daemon has just created its table).

    Every later read is `fresh=False` and is compared with the read before it.
    Keys missing from a read are forgotten: their element was deleted, so if the
    key comes back it was recreated and counts from zero.

    The snapshot must be persisted in the same transaction as the deltas it
    accounts for; otherwise a crash between the two writes counts bytes twice or
    not at all.
    """

    __slots__ = ("_baseline", "_last")

    def __init__(self, baseline: Mapping[K, int] | None = None) -> None:
        if baseline is not None:
            _check_readings(baseline)
        self._baseline: dict[K, int] | None = None if baseline is None else dict(baseline)
        self._last: dict[K, int] | None = None

    def observe(self, readings: Mapping[K, int], *, fresh: bool) -> dict[K, int]:
        """Return the delta of every key in `readings` since the previous read."""
        _check_readings(readings)
        if fresh:
            if self._last is not None:
                # Comparing with the start-up baseline again would count twice
                # every byte counted since; a restarted daemon builds a new tracker.
                raise ValueError("only the first read after start-up can be fresh")
            deltas = self._compare(self._baseline, readings)
        else:
            if self._last is None:
                raise ValueError("the first read after start-up must be fresh=True")
            deltas = self._compare(self._last, readings)
        self._last = dict(readings)
        return deltas

    def forget(self, keys: Iterable[K]) -> None:
        """Mark `keys` as recreated: their next reading counts from zero.

        For resets the readings cannot reveal, such as an element deleted and
        recreated between two reads that has already grown past its old value.
        """
        for key in keys:
            if self._last is not None:
                self._last.pop(key, None)
            elif self._baseline is not None:
                self._baseline.pop(key, None)

    def snapshot(self) -> dict[K, int]:
        """The readings the deltas so far account for: persist this for a restart."""
        if self._last is not None:
            return dict(self._last)
        return dict(self._baseline or {})

    @staticmethod
    def _compare(previous: Mapping[K, int] | None, readings: Mapping[K, int]) -> dict[K, int]:
        if previous is None:
            return {key: counter_delta(None, value) for key, value in readings.items()}
        # A key absent from `previous` is new since then, hence a baseline of 0.
        return {key: counter_delta(previous.get(key, 0), value) for key, value in readings.items()}


def _check_readings(readings: Mapping[K, int]) -> None:
    for key, value in readings.items():
        if value < 0:
            raise ValueError(f"a counter reading cannot be negative: {key!r}={value}")
