"""Attribution of counter deltas: conservation, levels, super-packet headers."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from meterguard.meter.attribution import (
    FORWARDED,
    UNATTRIBUTED,
    AttributionState,
    attribute,
    exclusive_socket_bytes,
)
from meterguard.meter.readings import KernelReadings, SocketKey

APPS = {1: "firefox", 2: "packagekit", 3: "burst"}
# A tiny tree: 10 (level 1) -> 11 (level 2) -> 12 (level 3); 20 (level 1).
PARENTS = {10: None, 11: 10, 12: 11, 20: None}
CG_APPS = {10: "user", 11: "firefox", 12: "firefox-child", 20: "sshd"}


def run(
    delta: KernelReadings, state: AttributionState | None = None
) -> dict[tuple[str, str], list[int]]:
    return attribute(
        delta,
        network_of=lambda i: "esim" if i.startswith("wwan") else None,
        app_of_mark=APPS.get,
        app_of_cgroup=CG_APPS.get,
        parent_of=lambda c: PARENTS.get(c),
        state=state or AttributionState(),
    )


def test_marked_bytes_go_to_their_app_and_the_rest_is_unattributed() -> None:
    delta = KernelReadings(
        link={("wwan0", "up"): 1000, ("wwan0", "down"): 5000},
        marked={("wwan0", "up", 1): 700, ("wwan0", "down", 1): 4000, ("wwan0", "down", 2): 900},
    )
    usage = run(delta)
    assert usage[("esim", "firefox")] == [700, 4000]
    assert usage[("esim", "packagekit")] == [0, 900]
    assert usage[("esim", UNATTRIBUTED)] == [300, 100]


def test_unknown_marks_and_unmetered_interfaces_are_not_claimed() -> None:
    delta = KernelReadings(
        link={("wwan0", "up"): 100, ("eth0", "up"): 999},
        marked={("wwan0", "up", 77): 60, ("eth0", "up", 1): 999},
    )
    usage = run(delta)
    assert usage == {("esim", UNATTRIBUTED): [100, 0]}


def test_levels_subtract_children() -> None:
    # Socket counts at level k include every descendant's bytes.
    deltas: dict[SocketKey, int] = {
        ("wwan0", "down", 10): 600,
        ("wwan0", "down", 11): 500,
        ("wwan0", "down", 12): 200,
        ("wwan0", "down", 20): 50,
    }
    exclusive = exclusive_socket_bytes(deltas, lambda c: PARENTS.get(c))
    assert exclusive == {
        ("wwan0", "down", 10): 100,
        ("wwan0", "down", 11): 300,
        ("wwan0", "down", 12): 200,
        ("wwan0", "down", 20): 50,
    }


def test_forwarded_traffic_has_its_own_bucket() -> None:
    usage = run(KernelReadings(forwarded={("wwan0", "down"): 4242}))
    assert usage == {("esim", FORWARDED): [0, 4242]}


def test_remainder_is_booked_from_cumulative_figures_never_early() -> None:
    state = AttributionState()
    first = run(KernelReadings(link={("wwan0", "up"): 100},
                               marked={("wwan0", "up", 1): 130}), state)
    assert first == {("esim", "firefox"): [130, 0]}
    second = run(KernelReadings(link={("wwan0", "up"): 100},
                                marked={("wwan0", "up", 1): 40}), state)
    # 30 bytes were booked early; the remainder of the second read pays them back.
    assert second[("esim", UNATTRIBUTED)] == [30, 0]


def test_super_packet_headers_are_shared_by_the_marks_that_sent_them() -> None:
    delta = KernelReadings(
        link={("wwan0", "up"): 100_000},
        marked={("wwan0", "up", 1): 60_000, ("wwan0", "up", 2): 40_000},
        super_up={("wwan0", 1): 30_000, ("wwan0", 2): 10_000},
        link_ip_up={("wwan0", 5): 100_400},
    )
    usage = run(delta)
    assert usage[("esim", "firefox")][0] == 60_000 + 300
    assert usage[("esim", "packagekit")][0] == 40_000 + 100
    assert ("esim", UNATTRIBUTED) not in usage


def test_gap_without_super_packets_is_not_booked() -> None:
    delta = KernelReadings(link={("wwan0", "up"): 1000}, link_ip_up={("wwan0", 5): 1084})
    assert run(delta) == {("esim", UNATTRIBUTED): [1000, 0]}


@settings(deadline=None, max_examples=200)
@given(
    marks=st.dictionaries(st.sampled_from([1, 2, 3, 99]), st.integers(0, 10**6), max_size=4),
    socket=st.fixed_dictionaries({
        10: st.integers(0, 10**6), 20: st.integers(0, 10**6),
    }),
    child_share=st.floats(0, 1),
    extra=st.integers(0, 10**6),
    fwd=st.integers(0, 10**6),
)
def test_breakdown_adds_up_to_the_interface_total(
    marks: dict[int, int], socket: dict[int, int], child_share: float, extra: int, fwd: int
) -> None:
    child = int(socket[10] * child_share)
    sock: dict[SocketKey, int] = {
        ("wwan0", "up", 10): socket[10],
        ("wwan0", "up", 11): child,
        ("wwan0", "up", 20): socket[20],
    }
    link = sum(marks.values()) + socket[10] + socket[20] + extra
    delta = KernelReadings(
        link={("wwan0", "up"): link},
        forwarded={("wwan0", "up"): fwd},
        marked={("wwan0", "up", m): n for m, n in marks.items()},
        socket=sock,
    )
    usage = run(delta)
    assert sum(up for up, _ in usage.values()) == link + fwd
    assert all(up >= 0 and down >= 0 for up, down in usage.values())
    assert usage.get(("esim", UNATTRIBUTED), [0, 0])[0] == extra + marks.get(99, 0)
