"""Property tests for the hybrid logical clock under skewed, jumping fake wall clocks."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from podshare.crdt import HLC, Stamp

NODES = ("a", "b", "c")


class SkewedClock:
    """A node's wall clock: shared true time plus a fixed skew, never below zero."""

    def __init__(self, true_time: list[int], skew: int) -> None:
        self.true_time = true_time
        self.skew = skew

    def __call__(self) -> int:
        return max(0, self.true_time[0] + self.skew)


# An event: time passes (possibly backwards for one node's clock, via its skew), a node
# issues a stamp and sends it, or a node receives one of the stamps sent so far.
events = st.lists(
    st.one_of(
        st.tuples(st.just("tick"), st.integers(-50, 5_000), st.integers(0, 2)),
        st.tuples(st.just("send"), st.integers(0, 2), st.just(0)),
        st.tuples(st.just("recv"), st.integers(0, 2), st.integers(0, 1_000)),
    ),
    max_size=40,
)
skews = st.lists(st.integers(-120_000, 120_000), min_size=3, max_size=3)


@given(events, skews, st.integers(0, 100_000))
def test_stamps_are_monotonic_causal_within_the_bound_and_skew_is_reported(
    evs: list[tuple[str, int, int]], skew: list[int], max_skew: int
) -> None:
    true_time = [1_700_000_000_000]
    walls = [SkewedClock(true_time, s) for s in skew]
    clocks = [
        HLC(n, time_source=w, max_skew_ms=max_skew) for n, w in zip(NODES, walls, strict=True)
    ]
    issued: list[list[Stamp]] = [[] for _ in NODES]
    sent: list[Stamp] = []
    for kind, a, b in evs:
        if kind == "tick":
            true_time[0] += a
            # Occasionally a node's clock jumps backwards (NTP step).
            walls[b].skew -= 200 if a < 0 else 0
        elif kind == "send":
            stamp = clocks[a].now()
            assert stamp.origin == NODES[a]
            if issued[a]:
                assert stamp > issued[a][-1]  # monotonic per node
            issued[a].append(stamp)
            sent.append(stamp)
        elif sent:
            remote = sent[b % len(sent)]
            bound = walls[a]() + max_skew
            reported = clocks[a].observe(remote)
            assert reported == (remote.time > bound)
            after = clocks[a].now()
            if remote.time <= bound:
                assert after > remote  # causality, whatever the wall clocks say
            else:
                # A stamp further ahead than the bound moves this clock to the bound and
                # no further: one far-future stamp cannot drag every later stamp along.
                assert after.time <= max(bound, issued[a][-1].time if issued[a] else 0) + 1
            assert clocks[a].last == after
            issued[a].append(after)
    # Every stamp is unique across the cluster.
    all_stamps = [s for per_node in issued for s in per_node]
    assert len(set(all_stamps)) == len(all_stamps)


@given(st.lists(st.integers(0, 2**40), min_size=1, max_size=30))
def test_now_never_goes_backwards_whatever_the_wall_clock_does(readings: list[int]) -> None:
    it = iter(readings)
    last = [readings[0]]

    def wall() -> int:
        last[0] = next(it, last[0])
        return last[0]

    clock = HLC("n", time_source=wall)
    stamps = [clock.now() for _ in readings]
    assert stamps == sorted(stamps)
    assert len(set(stamps)) == len(stamps)
    assert all(s.time >= r for s, r in zip(stamps, readings, strict=True))
