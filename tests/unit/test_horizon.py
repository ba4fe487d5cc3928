"""The horizon: per-writer knowledge, grown only on evidence; refusal and compaction follow it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from podshare.store.horizon import SEED_TIME, Horizon

CAP = 10_000  # hard cap (ms)
START = 1_000  # this incarnation's start


def horizon() -> Horizon:
    return Horizon("me", started_at=START, hard_cap_ms=CAP)


def never(_node: str) -> bool:
    return False


def test_holds_what_was_merged_and_nothing_later() -> None:
    h = horizon()
    h.merge([("b", 5_000)], now=6_000)
    assert h.holds("b", 5_000, now=6_000)
    assert h.holds("b", 4_000, now=6_000)
    assert not h.holds("b", 5_001, now=6_000)
    # However long ago: a write made while cut off is never taken for a compacted delete.
    assert not h.holds("b", 5_001, now=5_000 + CAP - 1)


def test_once_another_process_shares_the_id_no_write_of_that_id_is_held() -> None:
    # What this node saw of its id's writes says nothing of the other process's: holding
    # them would refuse (and make its peers forget) the other's writes.
    h = horizon()
    h.advance("me", START + 800, now=START + 900)
    h.merge([("me", START + 900)], now=START + 900)
    assert h.holds("me", START + 500, now=START + 900)
    h.disown()
    assert not h.holds("me", START + 500, now=START + 900)
    assert not h.holds("me", START - 1, now=START + 900)
    assert h.holds("b", SEED_TIME, now=START) is False  # seeds never held, as before


def test_own_writes_of_this_incarnation_are_held() -> None:
    h = horizon()
    assert h.holds("me", START, now=START)
    assert h.holds("me", START + 500, now=START + 500)
    # A previous life's writes (stamped before this start) are not held on this rule ...
    assert not h.holds("me", START - 1, now=START)
    # ... only on evidence, like anyone else's.
    h.advance("me", START - 1, now=START)
    assert h.holds("me", START - 1, now=START)


def test_unknown_writers_count_as_seen_up_to_the_hard_cap_floor() -> None:
    h = horizon()
    now = 50_000
    assert h.floor(now) == now - CAP
    assert h.holds("stranger", now - CAP, now=now)
    assert not h.holds("stranger", now - CAP + 1, now=now)


def test_advance_only_grows_and_ignores_times_below_the_floor() -> None:
    h = horizon()
    h.advance("b", 5_000, now=6_000)
    h.advance("b", 4_000, now=6_000)
    assert h.seen == {"b": 5_000}
    h.advance("b", 5_500, now=6_000)
    assert h.seen == {"b": 5_500}
    h.advance("c", 6_000 - CAP, now=6_000)  # at the floor: nothing new to know
    assert "c" not in h.seen
    assert len(h) == 1


def test_merge_keeps_the_larger_entry() -> None:
    h = horizon()
    h.merge([("b", 5_000), ("c", 3_000)], now=6_000)
    h.merge([("b", 4_000), ("c", 3_500), ("d", 2_000)], now=6_000)
    assert h.seen == {"b": 5_000, "c": 3_500, "d": 2_000}


def test_vector_sends_the_clock_as_this_nodes_entry() -> None:
    h = horizon()
    h.merge([("b", 5_000), ("me", 900)], now=6_000)
    assert sorted(h.vector(clock=7_000)) == [("b", 5_000), ("me", 7_000)]
    assert horizon().vector(clock=42) == [("me", 42)]


def test_frontier_is_the_lowest_relevant_writer() -> None:
    h = horizon()
    now = 8_000
    assert h.frontier(now, never) == now  # nobody holds it back
    h.merge([("b", 5_000), ("c", 3_000), ("me", 100)], now=now)
    assert h.frontier(now, never) == 3_000  # this node's own entry never holds it back
    # A writer known down for long no longer holds it back.
    assert h.frontier(now, lambda node: node == "c") == 5_000


def test_frontier_never_falls_below_the_hard_cap() -> None:
    h = horizon()
    h.merge([("b", 5_000)], now=6_000)
    now = 5_000 + CAP + 2_000
    assert h.frontier(now, never) == now - CAP


def test_prune_forgets_writers_whose_knowledge_stopped_growing() -> None:
    h = horizon()
    h.advance("b", 5_000, now=6_000)
    h.advance("c", 5_000, now=9_000)
    assert h.prune(now=6_000 + CAP) == 0  # b grew exactly a hard cap ago: kept
    assert h.prune(now=6_001 + CAP) == 1
    assert h.seen == {"c": 5_000}
    # Forgotten: b falls back to the floor (everything older than the hard cap is held).
    now = 6_001 + CAP
    assert h.holds("b", now - CAP, now=now)
    assert not h.holds("b", now - CAP + 1, now=now)
    assert h.prune(now=9_001 + CAP) == 1
    assert len(h) == 0


@given(
    st.lists(st.tuples(st.sampled_from("abc"), st.integers(SEED_TIME + 1, 20_000)), max_size=20),
    st.sampled_from("abc"),
    st.integers(SEED_TIME + 1, 20_000),
)
def test_holds_is_monotone_in_time(vector: list[tuple[str, int]], origin: str, time: int) -> None:
    h = horizon()
    now = 15_000
    h.merge(vector, now=now)
    if h.holds(origin, time, now):
        assert all(h.holds(origin, t, now) for t in (SEED_TIME + 1, time // 2 + 1, time))
    else:
        assert not h.holds(origin, time + 1, now)
    # Knowledge only grows: merging anything keeps every held write held.
    held = [(o, t) for o, t in vector if h.holds(o, t, now)]
    h.merge([(origin, time)], now=now)
    assert all(h.holds(o, t, now) for o, t in held)


def test_seeded_entries_are_never_held() -> None:
    # Seeded entries (older than any write) fill what a replica lacks; never refused.
    h = horizon()
    now = 50_000
    h.merge([("b", 40_000)], now=now)
    assert h.holds("b", SEED_TIME + 1, now=now)
    assert not h.holds("b", SEED_TIME, now=now)
    assert not h.holds("stranger", 0, now=now)
    assert not h.holds("me", SEED_TIME, now=now)
