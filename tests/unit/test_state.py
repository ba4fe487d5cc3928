"""The map and its join rules through MapState's public methods; a differential test of LWW."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from podshare.crdt import GSet, Stamp, merger_for
from podshare.exceptions import DecodeError, InvalidValue, PodshareError
from podshare.store.codec import value_codec
from podshare.store.digest import lww_hash
from podshare.store.events import Event, EventKind, Stats
from podshare.store.horizon import Horizon
from podshare.store.state import ZERO_EPOCH, Liveness, MapState
from podshare.store.wire import EPHEMERAL, EXPIRING, MERGED, TOMBSTONE, WireEntry, make_entry

ME, NONCE = "me", 1
START = 10_000  # this incarnation started here
NOW = 20_000
CAP = 10**9  # hard cap: no writer is forgotten in these tests

SET, DELETE, EXPIRED = EventKind.SET, EventKind.DELETE, EventKind.EXPIRED


def unknown(_node: str, _nonce: int) -> bool | None:
    return None


@dataclass
class Harness:
    """A MapState with the queues and records it writes into."""

    state: MapState[Any]
    events: list[Event[Any]] = field(default_factory=list)
    errors: list[PodshareError] = field(default_factory=list)
    stats: Stats = field(default_factory=Stats)

    def apply(self, *entries: WireEntry, now: int = NOW) -> list[WireEntry]:
        drops: list[WireEntry] = []
        self.state.apply(list(entries), now, drops)
        return drops

    def take(self) -> list[tuple[EventKind, str, Any]]:
        out = [(e.kind, e.key, e.value) for e in self.events]
        self.events.clear()
        return out


def harness(
    *,
    value_type: Any = None,
    liveness: Liveness = unknown,
    limit: int = 1 << 20,
    seen: Sequence[tuple[str, int]] = (),
) -> Harness:
    events: list[Event[Any]] = []
    errors: list[PodshareError] = []
    stats = Stats()
    horizon = Horizon(ME, started_at=START, hard_cap_ms=CAP)
    horizon.merge(seen, now=NOW)
    state: MapState[Any] = MapState(
        ME,
        NONCE,
        value_codec(value_type, None),
        merger_for(value_type),
        horizon,
        limit=limit,
        events=events,
        errors=errors,
        stats=stats,
        liveness=liveness,
    )
    return Harness(state, events, errors, stats)


def put(key: str, time: int, value: bytes, origin: str = "a", counter: int = 0) -> WireEntry:
    return make_entry(key, Stamp(time, counter, origin), 0, value)


def tomb(key: str, time: int, origin: str = "a", counter: int = 0) -> WireEntry:
    return make_entry(key, Stamp(time, counter, origin), TOMBSTONE, None)


def counts(stats: Stats) -> tuple[int, int, int]:
    return stats.writes_applied, stats.writes_stale, stats.writes_refused


# --- last writer wins ----------------------------------------------------------------------


def test_highest_stamp_wins_in_any_order() -> None:
    writes = [
        put("k", 15_000, b"1"),
        put("k", 15_000, b"2", counter=1),
        put("k", 15_000, b"3", origin="b", counter=1),
        put("k", 16_000, b"4", origin="a"),
    ]
    for order in itertools.permutations(writes):
        h = harness()
        h.apply(*order)
        assert h.state.values == {"k": 4}
        assert h.state.stamp_of("k") == Stamp(16_000, 0, "a")
        # Every write that won at its arrival changed the value; the others were stale.
        applied, stale, _ = counts(h.stats)
        assert applied + stale == 4
        assert [kind for kind, *_ in h.take()] == [SET] * applied


def test_stale_write_changes_nothing_and_emits_nothing() -> None:
    h = harness()
    h.apply(put("k", 16_000, b'"new"'))
    h.take()
    h.apply(put("k", 15_000, b'"old"'))
    assert h.state.values == {"k": "new"}
    assert h.take() == []
    assert counts(h.stats) == (1, 1, 0)


EQUAL_STAMP = [
    put("k", 15_000, b'"a"'),
    put("k", 15_000, b'"b"'),
    tomb("k", 15_000),
    make_entry("k", Stamp(15_000, 0, "a"), EPHEMERAL, b'"b"', owner_nonce=7),
]


@pytest.mark.parametrize("order", list(itertools.permutations(EQUAL_STAMP)))
def test_equal_stamps_resolve_the_same_way_whatever_the_order(order: tuple[WireEntry, ...]) -> None:
    # Two processes sharing a node id can stamp different writes alike: a delete wins.
    h = harness()
    h.apply(*order)
    assert h.state.values == {}
    assert h.state.entries["k"] == tomb("k", 15_000)
    # Without the delete: the larger value bytes, then the larger flags.
    h = harness()
    h.apply(*[e for e in order if e.value is not None])
    assert h.state.values == {"k": "b"}
    assert h.state.entries["k"].flags == EPHEMERAL


def test_duplicates_are_stale() -> None:
    h = harness()
    h.apply(put("k", 15_000, b"1"), put("k", 15_000, b"1"), tomb("j", 15_000), tomb("j", 15_000))
    assert counts(h.stats) == (2, 2, 0)
    assert h.take() == [(SET, "k", 1)]


def test_tombstone_blocks_late_older_writes() -> None:
    h = harness()
    h.apply(put("k", 14_000, b"1"))
    h.apply(tomb("k", 15_000))
    assert h.take() == [(SET, "k", 1), (DELETE, "k", None)]
    h.apply(put("k", 14_500, b"2"))
    assert h.state.values == {}
    assert h.state.tombstones() == 1
    assert h.take() == []
    h.apply(put("k", 15_001, b"3"))  # a later write wins over the delete
    assert h.state.values == {"k": 3}


def test_delete_of_an_unknown_key_is_remembered_silently() -> None:
    h = harness()
    h.apply(tomb("k", 15_000))
    assert h.take() == []
    assert h.state.tombstones() == 1
    h.apply(put("k", 14_000, b"1"))
    assert h.state.values == {}


# --- absent keys and the horizon -----------------------------------------------------------


def test_absent_keys_held_per_the_horizon_are_refused_and_dropped() -> None:
    h = harness(seen=[("b", 6_000)])
    old = put("k", 5_000, b"1", origin="b")
    drops = h.apply(old, put("l", 6_001, b"2", origin="b"))
    assert drops == [old]  # the sender is told to forget it
    assert h.state.values == {"l": 2}
    assert counts(h.stats) == (1, 0, 1)
    # This incarnation's own writes are held from its start: an absent one was deleted.
    mine = put("m", START + 1, b"3", origin=ME)
    assert h.apply(mine) == [mine]
    # A previous life's write is not covered by that rule.
    assert h.apply(put("n", START - 1, b"4", origin=ME)) == []
    assert h.state.values == {"l": 2, "n": 4}


def test_the_horizon_does_not_refuse_keys_held_here() -> None:
    h = harness()
    h.apply(put("k", 4_000, b"1", origin="b"))
    h.state.horizon.merge([("b", 6_000)], now=NOW)
    h.apply(put("k", 5_000, b"2", origin="b"))  # the key is held: plain LWW
    assert h.state.values == {"k": 2}
    assert h.stats.writes_refused == 0


def test_drops_are_optional() -> None:
    h = harness(seen=[("b", 6_000)])
    h.state.apply([put("k", 5_000, b"1", origin="b")], NOW)
    assert h.stats.writes_refused == 1


# --- ephemeral entries ---------------------------------------------------------------------


def eph(key: str, time: int, origin: str, nonce: int, value: bytes = b'"x"') -> WireEntry:
    return make_entry(key, Stamp(time, 0, origin), EPHEMERAL, value, owner_nonce=nonce)


def test_ephemeral_entries_follow_their_owners_liveness() -> None:
    alive = {("b", 1): True, ("c", 1): False}
    h = harness(liveness=lambda node, nonce: alive.get((node, nonce)))
    h.apply(eph("up", 15_000, "b", 1), eph("down", 15_000, "c", 1), eph("new", 15_000, "d", 1))
    # Alive and not-yet-known owners' entries apply; a down owner's do not.
    assert h.state.values == {"up": "x", "new": "x"}
    assert h.state.is_ephemeral("up")
    assert counts(h.stats) == (2, 1, 0)
    assert h.state.ephemeral == {("b", 1): {"up"}, ("d", 1): {"new"}}


def test_owner_down_removes_only_that_incarnations_entries() -> None:
    h = harness()
    h.apply(eph("p1", 15_000, "b", 1), eph("p2", 15_000, "b", 1), eph("q", 15_000, "b", 2))
    h.apply(eph("r", 15_000, "b", 1), put("r", 15_001, b"1", origin="c"))  # overwritten
    h.take()
    h.state.owner_down("b", 1)
    assert h.state.values == {"q": "x", "r": 1}
    assert h.take() == [(DELETE, "p1", None), (DELETE, "p2", None)]
    assert h.stats.ephemeral_expired == 2
    assert h.state.entries.keys() == {"q", "r"}  # forgotten, not tombstoned
    h.state.owner_down("b", 1)  # twice: nothing more
    assert h.stats.ephemeral_expired == 2


def test_a_previous_lifes_ephemeral_entry_is_retracted() -> None:
    h = harness()  # liveness unknown for everyone
    h.apply(eph("mine", START - 1, ME, NONCE + 1))  # stamped before this life began
    assert h.state.values == {}
    assert h.state.retracted == ["mine"]  # the replica deletes it (a local write)
    assert h.stats.writes_stale == 1
    # This life's own entry, absent here, was deleted here: refused, not retracted.
    own = eph("now", 15_000, ME, NONCE)
    assert h.apply(own) == [own]
    assert h.state.retracted == ["mine"]


def test_a_second_live_process_with_my_id_keeps_its_ephemeral_entries() -> None:
    h = harness(liveness=lambda _node, _nonce: True)
    h.apply(eph("twin", START - 1, ME, NONCE + 1))
    assert h.state.values == {"twin": "x"}
    assert h.state.retracted == []


# --- expiring entries ----------------------------------------------------------------------


def exp(key: str, time: int, expires: int, value: bytes = b"1", origin: str = "a") -> WireEntry:
    return make_entry(key, Stamp(time, 0, origin), EXPIRING, value, expires=expires)


def expired_tomb(key: str, time: int, expires: int, origin: str = "a") -> WireEntry:
    return make_entry(key, Stamp(time, 0, origin), TOMBSTONE | EXPIRING, None, expires=expires)


def test_an_entry_expired_on_arrival_is_the_delete_it_turns_into() -> None:
    h = harness()
    h.apply(put("k", 14_000, b"0"))
    h.take()
    h.apply(exp("k", 15_000, NOW))  # due exactly now
    assert h.state.values == {}
    assert h.state.entries["k"] == expired_tomb("k", 15_000, NOW)
    assert h.take() == [(EXPIRED, "k", None)]
    assert h.stats.expired == 1
    # Absent here: the same tombstone, silently.
    h.apply(exp("j", 15_000, NOW - 1))
    assert h.state.entries["j"] == expired_tomb("j", 15_000, NOW - 1)
    assert h.take() == []
    assert h.stats.expired == 1


def test_expire_turns_due_entries_into_their_deletes() -> None:
    h = harness()
    h.apply(exp("a", 15_000, NOW + 100), exp("b", 15_000, NOW + 200))
    h.take()
    assert h.state.next_expiry() == NOW + 100
    h.state.expire(NOW + 99)
    assert h.take() == []
    h.state.expire(NOW + 150)
    assert h.take() == [(EXPIRED, "a", None)]
    assert h.state.entries["a"] == expired_tomb("a", 15_000, NOW + 100)
    assert h.state.next_expiry() == NOW + 200
    h.state.expire(NOW + 1_000)
    assert h.take() == [(EXPIRED, "b", None)]
    assert h.stats.expired == 2
    assert h.state.next_expiry() is None


def test_expire_skips_entries_replaced_since() -> None:
    h = harness()
    h.apply(exp("k", 15_000, NOW + 100))
    h.apply(put("k", 15_001, b"2"))
    h.take()
    h.state.expire(NOW + 200)
    assert h.state.values == {"k": 2}
    assert h.take() == []


def test_every_replica_agrees_on_an_expired_entry_and_it_never_comes_back() -> None:
    early, late = harness(), harness()
    entry = exp("k", 15_000, NOW + 100)
    early.apply(entry)
    early.state.expire(NOW + 100)
    late.apply(entry, now=NOW + 500)  # arrives after its end
    assert early.state.entries == late.state.entries
    for h in (early, late):
        h.apply(put("k", 14_999, b"7"), entry, now=NOW + 600)
        assert h.state.values == {}


# --- merger stores -------------------------------------------------------------------------

GCODEC = value_codec(GSet, None)


def merged(key: str, stamp: Stamp, items: Sequence[str], epoch: Stamp = ZERO_EPOCH) -> WireEntry:
    return make_entry(key, stamp, MERGED, GCODEC.encode(GSet(items)), epoch)


def merged_tomb(key: str, stamp: Stamp) -> WireEntry:
    return make_entry(key, stamp, MERGED | TOMBSTONE, None, stamp)


def test_merger_writes_join_within_an_epoch() -> None:
    h = harness(value_type=GSet)
    h.apply(merged("s", Stamp(15_000, 0, "a"), ["x"]))
    h.apply(merged("s", Stamp(14_000, 0, "b"), ["y"]))  # an older stamp still joins
    assert h.state.values["s"] == GSet(["x", "y"])
    assert h.state.stamp_of("s") == Stamp(15_000, 0, "a")  # the highest stamp merged in
    h.apply(merged("s", Stamp(16_000, 0, "b"), ["y"]))  # nothing new: stale, no event
    assert [kind for kind, *_ in h.take()] == [SET, SET]
    assert counts(h.stats) == (2, 1, 0)
    assert h.state.stamp_of("s") == Stamp(16_000, 0, "b")


def test_a_merger_delete_starts_a_new_epoch() -> None:
    h = harness(value_type=GSet)
    h.apply(merged("s", Stamp(15_000, 0, "a"), ["x"]))
    delete = merged_tomb("s", Stamp(15_500, 0, "b"))
    h.apply(delete)
    assert h.state.values == {}
    h.apply(merged("s", Stamp(16_000, 0, "a"), ["old-epoch"]))  # concurrent with the delete
    assert h.state.values == {}
    h.apply(merged("s", Stamp(16_000, 0, "a"), ["z"], epoch=delete.stamp))
    assert h.state.values == {"s": GSet(["z"])}
    h.apply(delete)  # the bottom of the current epoch joins as nothing
    assert h.state.values == {"s": GSet(["z"])}
    assert h.take() == [(SET, "s", GSet(["x"])), (DELETE, "s", None), (SET, "s", GSet(["z"]))]


@pytest.mark.parametrize("delete_first", [True, False])
def test_concurrent_delete_and_merge_converge(delete_first: bool) -> None:
    base = merged("s", Stamp(15_000, 0, "a"), ["x"])
    delete = merged_tomb("s", Stamp(15_500, 0, "b"))
    concurrent = merged("s", Stamp(15_600, 0, "a"), ["y"])  # still in the zero epoch
    h = harness(value_type=GSet)
    h.apply(base, *([delete, concurrent] if delete_first else [concurrent, delete]))
    assert h.state.values == {}
    assert h.state.entries["s"].epoch == delete.stamp


def test_a_higher_epoch_wins_over_an_older_delete() -> None:
    h = harness(value_type=GSet)
    e1, e2 = Stamp(15_000, 0, "a"), Stamp(15_100, 0, "b")
    h.apply(merged("s", Stamp(15_200, 0, "b"), ["new"], epoch=e2))
    h.apply(merged_tomb("s", e1))
    assert h.state.values == {"s": GSet(["new"])}


def test_a_last_writer_wins_entry_in_a_merger_store_is_refused() -> None:
    h = harness(value_type=GSet)
    h.apply(put("s", 15_000, GCODEC.encode(GSet(["x"]))))
    assert h.state.values == {}
    assert h.stats.decode_errors == 1
    assert isinstance(h.errors[0], DecodeError)


def test_merger_absent_keys_follow_the_horizon() -> None:
    h = harness(value_type=GSet, seen=[("b", 6_000)])
    old = merged("s", Stamp(5_000, 0, "b"), ["x"])
    assert h.apply(old) == [old]
    assert h.stats.writes_refused == 1


def test_prepare_merge_refuses_a_state_too_large_to_travel() -> None:
    h = harness(value_type=GSet, limit=200)
    key = "s"
    merged_value, delta, epoch = h.state.prepare_merge(key, GSet(["a" * 50]))
    h.state.merge_local(key, merged_value, Stamp(15_000, 0, ME), epoch)
    before = dict(h.state.entries), dict(h.state.values)
    with pytest.raises(InvalidValue, match="above the 200-byte limit of one message"):
        h.state.prepare_merge(key, GSet(["b" * 80, "c" * 80]))
    assert (dict(h.state.entries), dict(h.state.values)) == before
    assert delta == GSet(["a" * 50])
    # The same holds for a key's first state.
    with pytest.raises(InvalidValue):
        h.state.prepare_merge("t", GSet(["d" * 300]))
    assert "t" not in h.state.entries


def test_check_size_counts_the_key() -> None:
    h = harness(limit=100)
    h.state.check_size("k" * 10, 90)
    with pytest.raises(InvalidValue):
        h.state.check_size("k" * 10, 91)
    with pytest.raises(InvalidValue):
        h.state.check_size("é" * 10, 81)  # the key's UTF-8 bytes


# --- local writes, compaction, drop, events, counters --------------------------------------


def test_local_writes_install_count_and_emit() -> None:
    h = harness()
    h.state.put_local(put("k", 15_000, b"1", origin=ME), 1)
    assert h.state.delete_local(tomb("k", 15_001, origin=ME)) is True
    assert h.state.delete_local(tomb("k", 15_002, origin=ME)) is False  # already gone
    assert h.take() == [(SET, "k", 1), (DELETE, "k", None)]
    assert h.stats.writes_local == 3
    assert h.state.tombstones() == 1


def test_compact_forgets_tombstones_older_than_the_bound() -> None:
    h = harness()
    h.apply(tomb("a", 15_000), tomb("b", 16_000), put("c", 14_000, b"1"), tomb("d", 15_000))
    h.apply(put("d", 15_001, b"2"))  # no longer a tombstone
    assert h.state.compact(16_000) == 1  # only "a": "b" is not older, "d" came back
    assert set(h.state.entries) == {"b", "c", "d"}
    assert h.stats.tombstones_compacted == 1
    assert h.state.compact(16_001) == 1
    assert h.state.compact(NOW) == 0
    assert h.take() == [(SET, "c", 1), (SET, "d", 2)]  # compaction emits nothing
    assert h.state.tombstones() == 0


def test_drop_forgets_a_key_only_at_exactly_that_stamp() -> None:
    h = harness()
    h.apply(put("k", 15_000, b"1"), tomb("t", 15_000))
    h.take()
    assert not h.state.drop("k", 15_000, 1, "a")
    assert not h.state.drop("absent", 15_000, 0, "a")
    assert h.state.drop("k", 15_000, 0, "a")
    assert h.state.drop("t", 15_000, 0, "a")
    assert h.state.entries == {}
    assert h.take() == [(DELETE, "k", None)]  # the tombstone's drop is silent
    assert h.stats.writes_refused == 2


def test_events_only_when_emit() -> None:
    h = harness()
    h.state.emit = False
    h.apply(put("k", 15_000, b"1"), exp("e", 15_000, NOW + 10), eph("p", 15_000, "b", 1))
    h.apply(tomb("k", 16_000))
    h.state.expire(NOW + 10)
    h.state.owner_down("b", 1)
    h.state.put_local(put("l", 16_000, b"2", origin=ME), 2)
    h.state.delete_local(tomb("l", 16_001, origin=ME))
    assert h.events == []
    assert h.state.values == {}
    assert (h.stats.writes_applied, h.stats.expired, h.stats.ephemeral_expired) == (4, 1, 1)


def test_undecodable_values_are_skipped_one_by_one() -> None:
    h = harness(value_type=int)
    h.apply(
        put("good", 15_000, b"1"), put("bad", 15_000, b"not json"), put("typed", 15_000, b'"s"')
    )
    assert h.state.values == {"good": 1}
    assert h.stats.decode_errors == 2
    assert [type(e) for e in h.errors] == [DecodeError, DecodeError]
    assert "bad" in str(h.errors[0])


def test_malformed_flags_are_skipped() -> None:
    h = harness()
    h.apply(
        make_entry("a", Stamp(15_000, 0, "a"), EPHEMERAL, b"1"),  # no owner nonce
        make_entry("b", Stamp(15_000, 0, "a"), 0, None),  # live without a value
        make_entry("c", Stamp(15_000, 0, "a"), MERGED, b"1", ZERO_EPOCH),  # merged in LWW
    )
    assert h.state.entries == {}
    assert h.stats.decode_errors == 3


def test_digest_follows_every_change() -> None:
    h = harness()
    h.apply(put("k", 15_000, b"1"), exp("e", 15_000, NOW + 10), tomb("t", 15_000))
    h.apply(put("k", 15_001, b"2"))
    h.state.expire(NOW + 10)
    h.state.compact(15_001)
    assert h.state.tree.hashes(3, None) == recomputed(h.state.entries)


def test_the_digest_folds_in_bounded_steps_and_ends_equal_to_a_recomputation() -> None:
    h = harness()
    h.apply(*(put(f"k{i}", 15_000, b"1") for i in range(100)))
    h.apply(*(put(f"k{i}", 15_001, b"2") for i in range(0, 100, 3)), tomb("k1", 15_002))
    assert len(h.state._stale) > 16
    steps = 0
    while h.state.digest_behind:
        before = len(h.state._stale)
        h.state.fold_digest(16)
        assert before - len(h.state._stale) == min(before, 16)  # 16 keys a step, at most
        steps += 1
    assert steps >= 2
    assert h.state._tree.hashes(3, None) == recomputed(h.state.entries)  # no fold left to do
    # A change after a partial fold is folded from what the tree holds, not from scratch.
    h.apply(*(put(f"k{i}", 15_003, b"3") for i in range(50)))
    h.state.fold_digest(10)
    h.apply(put("k5", 15_004, b"4"), tomb("k6", 15_004))
    assert h.state.tree.hashes(3, None) == recomputed(h.state.entries)


def recomputed(entries: dict[str, WireEntry]) -> bytes:
    from podshare.store.digest import DigestTree

    tree = DigestTree()
    for key, e in entries.items():
        tree.add(key, lww_hash(key, e.time, e.counter, e.origin, e.flags, e.value))
    return tree.hashes(3, None)


# --- differential: the fast LWW path against an obviously correct reference ----------------


def rank(e: WireEntry) -> tuple[int, int, str, bool, bytes, int]:
    """The order of last-writer-wins entries: stamp, then a delete, larger bytes, larger flags."""
    return (e.time, e.counter, e.origin, e.value is None, e.value or b"", e.flags)


class Reference:
    """A slow, literal reading of the LWW rules of ``podshare.store.state``'s module docs."""

    def __init__(self, horizon: Horizon, liveness: Liveness) -> None:
        self.horizon = horizon
        self.liveness = liveness
        self.codec = value_codec(None, None)
        self.entries: dict[str, WireEntry] = {}
        self.events: list[Event[Any]] = []
        self.stats = Stats()
        self.retracted: list[str] = []
        self.errors = 0

    def values(self) -> dict[str, Any]:
        return {
            k: self.codec.decode(e.value) for k, e in self.entries.items() if e.value is not None
        }

    def event(self, kind: EventKind, e: WireEntry, value: Any = None) -> None:
        self.events.append(Event(kind, e.key, value, e.origin, e.stamp))

    def apply(self, batch: list[WireEntry], now: int) -> list[WireEntry]:
        drops = []
        for e in batch:
            cur = self.entries.get(e.key)
            if cur is None and self.horizon.holds(e.origin, e.time, now):
                self.stats.writes_refused += 1
                drops.append(e)
                continue
            if cur is not None and rank(e) <= rank(cur):
                self.stats.writes_stale += 1
                continue
            if e.flags & MERGED or not e.consistent():
                self.errors += 1
                continue
            if e.flags & EPHEMERAL and e.value is not None:
                assert e.owner_nonce is not None
                alive = self.liveness(e.origin, e.owner_nonce)
                if e.origin == ME and e.owner_nonce != NONCE and alive is not True:
                    self.retracted.append(e.key)
                    self.stats.writes_stale += 1
                    continue
                if alive is False:
                    self.stats.writes_stale += 1
                    continue
            expiring = bool(e.flags & EXPIRING)
            if expiring and e.value is not None and e.expires is not None and e.expires <= now:
                e = make_entry(e.key, e.stamp, TOMBSTONE | EXPIRING, None, expires=e.expires)
            if e.value is None:
                if cur is not None and cur.value is not None:
                    self.stats.expired += expiring
                    self.event(EXPIRED if expiring else DELETE, e)
                self.entries[e.key] = e
                self.stats.writes_applied += 1
                continue
            try:
                value = self.codec.decode(e.value)
            except DecodeError:
                self.errors += 1
                continue
            self.entries[e.key] = e
            self.stats.writes_applied += 1
            self.event(SET, e, value)
        return drops

    def expire(self, now: int) -> None:
        due = sorted(
            (e.expires, k)
            for k, e in self.entries.items()
            if e.flags & EXPIRING
            and e.value is not None
            and e.expires is not None
            and e.expires <= now
        )
        for expires, key in due:
            e = self.entries[key]
            self.entries[key] = make_entry(
                key, e.stamp, TOMBSTONE | EXPIRING, None, expires=expires
            )
            self.stats.expired += 1
            self.event(EXPIRED, e)

    def ephemeral(self) -> dict[tuple[str, int], set[str]]:
        out: dict[tuple[str, int], set[str]] = {}
        for k, e in self.entries.items():
            if e.flags & EPHEMERAL and e.value is not None:
                assert e.owner_nonce is not None
                out.setdefault((e.origin, e.owner_nonce), set()).add(k)
        return out


LIVENESS = {("b", 1): True, ("b", 2): False, (ME, NONCE): True}
TIMES = [5_000, 15_000, 15_001, 25_000]  # b's horizon is 6,000; this life began at 10,000
VALUES = [b"1", b"2", b'"x"', b"not json"]


@st.composite
def lww_entries(draw: st.DrawFn) -> WireEntry:
    key = draw(st.sampled_from(["k1", "k2", "k3"]))
    stamp = Stamp(
        draw(st.sampled_from(TIMES)), draw(st.integers(0, 1)), draw(st.sampled_from(["a", "b", ME]))
    )
    kind = draw(
        st.sampled_from(["plain", "tombstone", "ephemeral", "expiring", "expired", "malformed"])
    )
    value = draw(st.sampled_from(VALUES))
    if kind == "plain":
        return make_entry(key, stamp, 0, value)
    if kind == "tombstone":
        return make_entry(key, stamp, TOMBSTONE, None)
    if kind == "ephemeral":
        nonce = draw(st.sampled_from([1, 2, 3]))
        return make_entry(key, stamp, EPHEMERAL, value, owner_nonce=nonce)
    if kind in ("expiring", "expired"):
        expires = draw(st.sampled_from([NOW - 1, NOW, NOW + 50, NOW + 100, NOW + 5_000]))
        flags = EXPIRING | (TOMBSTONE if kind == "expired" else 0)
        return make_entry(key, stamp, flags, None if kind == "expired" else value, expires=expires)
    return make_entry(key, stamp, EPHEMERAL, value)  # malformed: no owner nonce


@st.composite
def batches(draw: st.DrawFn) -> list[list[WireEntry]]:
    pool = draw(st.lists(lww_entries(), min_size=1, max_size=12))
    # Duplicates and reorderings: batches drawn from the pool, in any order, with repeats.
    return draw(
        st.lists(st.lists(st.sampled_from(pool), min_size=1, max_size=6), min_size=1, max_size=5)
    )


def _liveness(node: str, nonce: int) -> bool | None:
    return LIVENESS.get((node, nonce))


@settings(max_examples=200, deadline=None)
@given(batches(), st.booleans())
def test_fast_lww_path_equals_the_reference(script: list[list[WireEntry]], ticks: bool) -> None:
    h = harness(liveness=_liveness, seen=[("b", 6_000)])
    ref = Reference(h.state.horizon, _liveness)
    now = NOW
    for batch in script:
        drops = h.apply(*batch, now=now)
        assert drops == ref.apply(batch, now)
        if ticks:
            now += 100
            h.state.expire(now)
            ref.expire(now)
    assert h.state.entries == ref.entries
    assert h.state.values == ref.values()
    assert h.events == ref.events
    got, want = h.stats, ref.stats
    assert (got.writes_applied, got.writes_stale, got.writes_refused, got.expired) == (
        want.writes_applied,
        want.writes_stale,
        want.writes_refused,
        want.expired,
    )
    assert got.decode_errors == len(h.errors) == ref.errors
    assert h.state.retracted == ref.retracted
    assert {k: v for k, v in h.state.ephemeral.items() if v} == ref.ephemeral()
    assert h.state.tombstones() == sum(e.value is None for e in ref.entries.values())
    assert h.state.tree.hashes(3, None) == recomputed(ref.entries)
    # Every remembered tombstone can still be compacted (its index is in step).
    h.state.compact(10**12)
    assert all(e.value is not None for e in h.state.entries.values())


@settings(max_examples=100, deadline=None)
@given(batches())
def test_one_batch_or_one_entry_at_a_time_is_the_same(script: list[list[WireEntry]]) -> None:
    whole, single = harness(liveness=_liveness), harness(liveness=_liveness)
    for batch in script:
        whole.apply(*batch)
        for e in batch:
            single.apply(e)
    assert whole.state.entries == single.state.entries
    assert whole.events == single.events
    assert whole.stats == single.stats
