"""The replica core: local writes, outputs, batching, LWW and merger rules, hydration, sync,
clocks, liveness and bad input, through Replica and SimNetwork."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from typing import Any

import pytest

from podshare.crdt import GSet, ORSet, PNCounter, Stamp, merger_for
from podshare.crdt.clock import MAX_COUNTER, MAX_TIME
from podshare.exceptions import (
    ConfigurationError,
    DecodeError,
    FrameTooLarge,
    InvalidValue,
    PodshareError,
    ProtocolError,
    StoreNotEmpty,
)
from podshare.store import wire
from podshare.store.codec import value_codec
from podshare.store.events import Event, EventKind, Stats
from podshare.store.membership import LivenessOptions, MemberEvent
from podshare.store.replica import SEED_TIME, Outgoing, Replica, ReplicaOptions
from podshare.store.sync import SyncFinished
from podshare.testing import SimNetwork

T0 = 1_700_000_000_000
OPTS = ReplicaOptions(
    tombstone_ttl_ms=60_000,
    tombstone_hard_cap_ms=600_000,
    compaction_interval_ms=1_000,
    hello_window_ms=200,
    sync_timeout_ms=300,
)
LIVE = LivenessOptions(heartbeat_interval_ms=100, down_after_ms=500)
SKEW = OPTS.max_clock_skew_ms
CAP = 1 << 24

SET, DELETE, EXPIRED = EventKind.SET, EventKind.DELETE, EventKind.EXPIRED
NODE_UP, NODE_DOWN = EventKind.NODE_UP, EventKind.NODE_DOWN


def replica(
    node: str = "a",
    value_type: Any = None,
    *,
    nonce: int | None = None,
    now: int = T0,
    options: ReplicaOptions = OPTS,
    **kw: Any,
) -> Replica[Any]:
    return Replica(
        "t",
        node,
        nonce if nonce is not None else sum(map(ord, node)),
        value_codec(value_type, None),
        merger=merger_for(value_type),
        options=options,
        now=now,
        rng=random.Random(node),
        **kw,
    )


def cluster(*nodes: str, value_type: Any = None, options: ReplicaOptions = OPTS) -> SimNetwork:
    net = SimNetwork(seed=1, value_type=value_type, options=options, liveness=LIVE)
    for node in nodes:
        net.add(node)
        net.settle()
    return net


def data_kinds(events: list[Event[Any]]) -> list[str]:
    """The kinds of the data events (membership events left out)."""
    return [ev.kind.name for ev in events if ev.kind in (SET, DELETE, EXPIRED)]


def decoded(out: list[Outgoing]) -> list[Any]:
    return [wire.decode(o.data, max_size=CAP) for o in out]


def deliver(src: Replica[Any], *dsts: Replica[Any], now: int = T0) -> list[Outgoing]:
    """Hand what ``src`` queued to ``dsts`` (broadcasts to all, inbox messages by id)."""
    out = src.data_to_send()
    for o in out:
        for dst in dsts:
            if o.to in (None, dst.node_id):
                dst.receive(o.data, now)
    return out


def pump(
    *replicas: Replica[Any], now: int = T0, finished: list[SyncFinished] | None = None
) -> list[tuple[str, Any]]:
    """Deliver between ``replicas`` until quiet (no ticks); return what was sent.

    Like every driver, it drains ``syncs_finished()`` (the replica acts on its notices
    when they are taken); they are appended to ``finished``.
    """
    sent: list[tuple[str, Any]] = []
    for _ in range(10_000):
        moved = False
        for r in replicas:
            done = r.syncs_finished()
            if finished is not None:
                finished.extend(done)
            for o in r.data_to_send():
                moved = True
                sent.append((r.node_id, wire.decode(o.data, max_size=CAP)))
                for other in replicas:
                    if other is not r and o.to in (None, other.node_id):
                        other.receive(o.data, now)
        if not moved:
            return sent
    raise AssertionError("the replicas did not go quiet")


def synced(r: Replica[Any]) -> bool:
    """``r.synced`` (read through a call: it changes under mypy's narrowing)."""
    return r.synced


def synced_alone(r: Replica[Any], now: int = T0) -> Replica[Any]:
    r.hydrate(now)
    r.cluster_evidence(now, ready=True, others=0)
    r.data_to_send()
    assert r.synced
    return r


# --- options ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        {"sync_timeout_ms": 0},
        {"tombstone_ttl_ms": -1},
        {"max_message_size": 100},
        {"sync_timeout_ms": 1.5},
        {"hello_window_ms": True},
        {"tombstone_ttl_ms": 10, "tombstone_hard_cap_ms": 5},
    ],
    ids=repr,
)
def test_options_are_validated(kw: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        ReplicaOptions(**kw)


def test_options_must_be_replica_options() -> None:
    with pytest.raises(ConfigurationError, match="options must be ReplicaOptions"):
        replica(options={"hello_window_ms": 5})  # type: ignore[arg-type]


def test_option_defaults() -> None:
    o = ReplicaOptions()
    assert o.tombstone_ttl_ms == 24 * 3600 * 1000
    assert o.tombstone_hard_cap_ms == 7 * 24 * 3600 * 1000
    assert (o.max_clock_skew_ms, o.hello_window_ms, o.sync_timeout_ms) == (60_000, 300, 2_000)


# --- local writes ----------------------------------------------------------------------------


def test_local_writes_and_their_events() -> None:
    r = replica()
    r.local_set("k", {"x": 1}, T0 + 1)
    (ev,) = r.events_received()
    assert (ev.kind, ev.key, ev.value, ev.origin) == (SET, "k", {"x": 1}, "a")
    assert ev.stamp == r.entry_stamp("k") == Stamp(T0 + 1, 0, "a")
    assert r.values == {"k": {"x": 1}}
    assert r.local_delete("k", T0 + 2) is True
    assert data_kinds(r.events_received()) == ["DELETE"]
    assert r.local_delete("k", T0 + 3) is False  # already gone: no event, still a tombstone
    assert r.events_received() == []
    assert "k" in r.tombstones()
    assert r.snapshot_stats().writes_local == 3


def test_an_invalid_value_changes_nothing() -> None:
    r = replica()
    with pytest.raises(InvalidValue):
        r.local_set("k", object(), T0)
    assert r.values == {}
    assert r.data_to_send() == []
    assert r.events_received() == []


def test_a_value_too_large_for_one_message_is_refused() -> None:
    r = replica(options=ReplicaOptions(max_message_size=2048))
    with pytest.raises(InvalidValue, match="limit of one message"):
        r.local_set("k", "x" * 5000, T0)
    assert r.values == {}


def test_ephemeral_and_ttl_need_last_writer_wins() -> None:
    r = replica(value_type=GSet)
    with pytest.raises(InvalidValue, match="ephemeral"):
        r.local_set("k", GSet(["a"]), T0, ephemeral=True)
    with pytest.raises(InvalidValue, match="ttl="):
        r.local_set_many([("k", GSet(["a"]))], T0, ttl_ms=5)
    assert r.values == {}


def test_empty_value() -> None:
    assert replica().empty_value() is None
    assert replica(value_type=PNCounter).empty_value() == PNCounter()


def test_local_update_reads_modifies_and_writes() -> None:
    r = replica()
    assert r.local_update("n", lambda v: (v or 0) + 1, T0) == 1
    assert r.local_update("n", lambda v: v + 1, T0) == 2
    assert r.values == {"n": 2}
    c = replica(value_type=PNCounter)
    seen: list[Any] = []

    def bump(v: PNCounter) -> PNCounter:
        seen.append(v)
        return v.increment("a", 5)

    c.local_update("c", bump, T0)
    assert seen == [PNCounter()]  # the type's empty value for a missing key
    assert c.values["c"].value == 5
    (write,) = decoded(c.data_to_send())
    assert isinstance(write, wire.Writes)
    assert write.entries[0].flags == wire.MERGED


def test_try_set_writes_only_over_the_expected_version() -> None:
    r = replica()
    assert r.try_set("k", 1, None, T0)  # absent: version None
    version = r.entry_stamp("k")
    assert not r.try_set("k", 2, None, T0)
    assert r.try_set("k", 2, version, T0 + 1)
    assert not r.try_set("k", 3, version, T0 + 2)  # stale version: nothing changes
    assert r.values == {"k": 2}
    assert r.snapshot_stats().writes_local == 2


def test_try_set_with_none_claims_a_deleted_or_expired_key() -> None:
    r = replica()
    r.local_set("k", 1, T0)
    r.local_delete("k", T0 + 1)
    tombstone = r.tombstones()["k"]
    assert not r.try_set("k", 3, tombstone, T0 + 2)  # a tombstone's stamp is no version
    assert r.try_set("k", 2, None, T0 + 3)  # deleted: no live version, as None says
    r.local_set("t", 1, T0 + 4, ttl_ms=10)
    r.tick(T0 + 14)
    assert r.try_set("t", 2, None, T0 + 15)
    assert r.values == {"k": 2, "t": 2}


def test_local_delete_many_counts_live_keys() -> None:
    r = replica()
    r.local_set_many([("a", 1), ("b", 2)], T0)
    r.events_received()
    assert r.local_delete_many(["a", "b", "c"], T0) == 2
    assert data_kinds(r.events_received()) == ["DELETE", "DELETE"]
    assert set(r.tombstones()) == {"a", "b", "c"}
    (write,) = decoded(r.data_to_send())
    assert sorted(e.key for e in write.entries) == ["a", "b", "c"]


def test_set_many_validates_every_value_before_applying_any() -> None:
    r = replica(options=ReplicaOptions(max_message_size=2048))
    with pytest.raises(InvalidValue, match="limit of one message"):
        r.local_set_many([("small", 1), ("huge", "x" * 4096)], T0)
    assert r.values == {}
    assert r.data_to_send() == []
    g = replica(value_type=GSet)
    with pytest.raises(InvalidValue):
        g.local_set_many([("a", GSet([1])), ("b", 3)], T0)
    assert g.values == {}
    r.local_set_many([("a", 1), ("b", 2)], T0)
    assert [(ev.key, ev.value) for ev in r.events_received()] == [("a", 1), ("b", 2)]


def test_ttl_entries_expire_everywhere_at_the_same_instant() -> None:
    a, b = replica("a"), replica("b")
    a.local_set("session", "s1", T0, ttl_ms=1_000)
    a.events_received()
    (write,) = decoded(a.data_to_send())
    (e,) = write.entries
    assert (e.flags, e.expires) == (wire.EXPIRING, T0 + 1_000)
    b.receive(wire.encode(write), T0 + 1)
    assert b.values == {"session": "s1"}
    assert a.next_deadline() <= T0 + 1_000
    for r in (a, b):
        r.events_received()
        r.tick(T0 + 999)
        assert r.values == {"session": "s1"}
        r.tick(T0 + 1_000)
        assert r.values == {}
        assert data_kinds(r.events_received()) == ["EXPIRED"]
        assert r.snapshot_stats().expired == 1
    assert a.tombstones() == b.tombstones() == {"session": Stamp(T0, 0, "a")}
    late = replica("c")
    late.receive(wire.encode(write), T0 + 5_000)  # arrives after its end: already expired
    assert late.values == {}
    assert late.tombstones() == a.tombstones()


# --- seeding ---------------------------------------------------------------------------------


def test_seed_only_into_an_empty_replica() -> None:
    r = replica()
    r.local_set("k", 1, T0)
    with pytest.raises(StoreNotEmpty):
        r.seed({"j": 2}, T0)
    fresh = replica()
    with pytest.raises(InvalidValue):
        fresh.seed({"ok": 1, "bad": object()}, T0)
    assert fresh.values == {}
    fresh.local_delete("gone", T0)
    with pytest.raises(StoreNotEmpty):
        fresh.seed({"j": 2}, T0)


# --- outputs -----------------------------------------------------------------------------------


def test_outputs_are_drained_once() -> None:
    r = synced_alone(replica())
    r.local_set("k", 1, T0)
    assert len(r.events_received()) == 1
    assert r.events_received() == []
    out = r.data_to_send()
    assert [o.to for o in out] == [None]
    assert r.data_to_send() == []
    r.receive(b"\xc1", T0)
    (error,) = r.errors_received()
    assert isinstance(error, DecodeError)
    assert r.errors_received() == []
    r.request_sync(T0, peer="b")
    r.tick(T0 + OPTS.sync_timeout_ms)
    assert r.syncs_finished() == [SyncFinished("b", False, False, "timeout")]
    assert r.syncs_finished() == []
    assert r.snapshot_stats().syncs_failed == 1


@pytest.mark.parametrize("emit", [True, False])
def test_data_events_only_when_asked_for(emit: bool) -> None:
    a = synced_alone(replica("a"))
    for i in range(20):
        a.local_set(f"k{i}", i, T0)
    a.local_delete("k0", T0)
    a.data_to_send()
    b = replica("b")
    b.emit_data_events = emit
    assert b.emit_data_events is emit
    b.hydrate(T0)
    b.cluster_evidence(T0, ready=True, others=1)
    pump(a, b)
    a.local_delete("k1", T0)
    a.local_set("k2", "x", T0, ttl_ms=1)
    pump(a, b)
    b.tick(T0 + 1)
    assert b.synced
    assert len(b.values) == 17
    events = b.events_received()
    assert data_kinds(events) == (["SET"] * 19 + ["DELETE", "SET", "EXPIRED"] if emit else [])
    assert [ev.key for ev in events if ev.kind is NODE_UP] == ["a"]  # always told


# --- batching ----------------------------------------------------------------------------------


def test_writes_coalesce_into_one_message() -> None:
    r = replica()
    for i in range(100):
        r.local_set(f"k{i}", i, T0)
    r.local_set("k0", "latest", T0)
    (write,) = decoded(r.data_to_send())
    assert isinstance(write, wire.Writes)
    assert len(write.entries) == 100  # k0 travels once, with its latest value
    assert write.sent_at == T0
    assert r.data_to_send() == []


def test_batches_split_below_max_message_size() -> None:
    options = ReplicaOptions(max_message_size=2048)
    r = replica(options=options)
    for i in range(300):
        r.local_set(f"key-{i}", "v" * 20, T0)
    out = r.data_to_send()
    assert len(out) > 1
    assert all(len(o.data) <= 2048 for o in out)
    b = replica("b", options=options)
    for o in out:
        b.receive(o.data, T0)
    assert b.values == r.values


def test_merger_writes_ship_deltas() -> None:
    a = replica(value_type=ORSet)
    big: ORSet[int] = ORSet()
    for i in range(2_000):
        big = big.add(i, "a")
    a.local_set("s", big, T0)
    a.data_to_send()
    a.local_set("s", a.values["s"].add(10_001, "a"), T0 + 1)
    (out,) = a.data_to_send()
    assert len(out.data) <= 200


def test_merger_deltas_coalesce() -> None:
    a, b = replica(value_type=GSet), replica("b", value_type=GSet)
    a.local_set("s", GSet(["x"]), T0)
    a.local_set("s", GSet(["y"]), T0)
    (out,) = a.data_to_send()
    b.receive(out.data, T0)
    assert b.values["s"] == GSet(["x", "y"])


def test_merger_writes_near_the_limit_travel_within_it() -> None:
    options = ReplicaOptions(max_message_size=2048)
    a = replica(value_type=GSet, options=options)
    b = replica("b", value_type=GSet, options=options)
    a.local_set("s", GSet([f"x{i:04d}" for i in range(100)]), T0)
    a.local_set("s", GSet([f"y{i:04d}" for i in range(100)]), T0)
    out = a.data_to_send()
    assert all(len(o.data) <= 2048 for o in out)
    for o in out:
        b.receive(o.data, T0)
    assert b.values["s"] == a.values["s"]
    assert len(b.values["s"]) == 200


def test_a_merged_state_too_large_to_travel_is_refused_at_the_write() -> None:
    options = ReplicaOptions(max_message_size=2048)
    a = replica(value_type=GSet, options=options)
    for i in range(10):
        a.local_set("s", GSet([f"item-{i}-{j:03d}" for j in range(10)]), T0)
    before = a.values["s"]
    with pytest.raises(InvalidValue):
        a.local_set("s", GSet([f"more-{j:03d}" for j in range(60)]), T0)
    assert a.values["s"] == before  # nothing applied
    with pytest.raises(InvalidValue):
        a.local_set_many(
            [("t", GSet(["ok"])), ("s", GSet([f"more-{j:03d}" for j in range(60)]))], T0
        )
    assert "t" not in a.values


# --- last writer wins and mergers, through messages ---------------------------------------------


def test_lww_highest_stamp_wins_in_any_order() -> None:
    a, b = replica("a"), replica("b")
    a.local_set("k", "from-a", T0)
    msg_a = a.data_to_send()[0].data
    b.receive(msg_a, T0)  # b has seen a's write: its write orders after it
    b.local_set("k", "from-b", T0 - 5_000)  # even with a wall clock behind
    msg_b = b.data_to_send()[0].data
    for order in ([msg_a, msg_b], [msg_b, msg_a], [msg_b, msg_a, msg_b, msg_a]):
        r = replica(f"c{len(order)}")
        for m in order:
            r.receive(m, T0)
        assert r.values == {"k": "from-b"}
    c = replica("c")
    c.receive(msg_b, T0)
    c.events_received()
    c.receive(msg_a, T0)
    assert data_kinds(c.events_received()) == []
    assert c.snapshot_stats().writes_stale == 1


def test_a_tombstone_blocks_a_late_older_write() -> None:
    a, b = replica("a"), replica("b")
    a.local_set("k", 1, T0)
    write = a.data_to_send()[0].data
    a.local_delete("k", T0 + 1)
    delete = a.data_to_send()[0].data
    b.receive(delete, T0)
    b.receive(write, T0)
    assert data_kinds(b.events_received()) == []
    assert b.values == {}


def test_merge_joins_and_a_delete_starts_a_new_epoch() -> None:
    net = cluster("a", "b", value_type=GSet)
    net.set("a", "s", GSet(["x"]))
    net.set("b", "s", GSet(["y"]))
    net.settle()
    assert net.replica("a").values["s"] == GSet(["x", "y"])
    net.delete("a", "s")
    net.settle()
    assert "s" not in net.replica("b").values
    net.set("b", "s", GSet(["z"]))
    net.settle()
    assert net.replica("a").values["s"] == GSet(["z"])
    assert net.converged()


def test_a_delete_concurrent_with_a_merge_write() -> None:
    net = cluster("a", "b", value_type=PNCounter)
    net.update("a", "c", lambda c: c.increment("a", 5))
    net.settle()
    net.partition({"a"}, {"b"})
    net.delete("a", "c")
    net.update("b", "c", lambda c: c.increment("b", 1))  # in the old epoch: loses
    net.heal()
    net.sync_all()
    assert net.converged()
    assert "c" not in net.replica("a").values
    net.update("b", "c", lambda c: c.increment("b", 2))  # in the new epoch
    net.settle()
    assert net.replica("a").values["c"].value == 2
    assert net.converged()


def test_a_merge_that_changes_nothing_is_stale_without_an_event() -> None:
    a, b = replica(value_type=GSet), replica("b", value_type=GSet)
    a.local_set("s", GSet(["x"]), T0)
    data = a.data_to_send()[0].data
    b.receive(data, T0)
    assert data_kinds(b.events_received()) == ["SET"]
    b.receive(data, T0)  # a duplicate
    assert data_kinds(b.events_received()) == []
    assert b.snapshot_stats().writes_stale == 1


def test_equal_stamps_with_different_values_converge_and_digests_see_them() -> None:
    # Two processes share node id "a": they stamp different writes alike.
    one, two = replica("a", nonce=1), replica("a", nonce=2)
    one.local_set("k", "apple", T0)
    two.local_set("k", "banana", T0)
    assert one.entry_stamp("k") == two.entry_stamp("k")
    one.data_to_send()
    two.data_to_send()  # the broadcasts are lost
    one.state.refresh_digest()
    two.state.refresh_digest()
    assert one.state.tree.hashes(1, None) != two.state.tree.hashes(1, None)
    synced_alone(one)
    synced_alone(two)
    # A sync between them (each other's inbox is "a": route by hand) repairs it.
    one.request_sync(T0, peer="a")
    finished: list[SyncFinished] = []
    for _ in range(100):
        moved = False
        for src, dst in ((one, two), (two, one)):
            finished.extend(src.syncs_finished())
            for o in src.data_to_send():
                moved = True
                dst.receive(o.data, T0)
        if not moved:
            break
    assert one.values == two.values == {"k": "banana"}
    assert finished == [SyncFinished("a", True, False)]


# --- hydration and its evidence --------------------------------------------------------------


def hellos(sent: list[tuple[str, Any]], src: str) -> list[Any]:
    return [m for s, m in sent if s == src and isinstance(m, wire.Hello)]


def test_no_other_subscriber_means_synced_at_once() -> None:
    r = replica()
    r.hydrate(T0)
    assert not synced(r)
    r.cluster_evidence(T0, ready=True, others=0)
    assert r.synced
    assert r.snapshot_stats().hydration_seconds == 0
    ask, done = decoded(r.data_to_send())
    assert (ask.ask, ask.synced) == (True, False)
    assert (done.ask, done.synced) == (False, True)  # peers choose partners among synced


def test_no_evidence_before_the_transport_is_ready() -> None:
    r = replica()
    r.hydrate(T0)
    r.cluster_evidence(T0, ready=False, others=0)
    r.tick(T0 + 10 * OPTS.hello_window_ms)
    assert not r.synced
    r.cluster_evidence(T0 + 10 * OPTS.hello_window_ms, ready=True, others=0)
    assert r.synced


def test_unknown_evidence_waits_for_the_hello_window() -> None:
    r = replica()
    r.hydrate(T0)
    r.cluster_evidence(T0, ready=True, others=None)
    assert r.next_deadline() == T0 + OPTS.hello_window_ms
    r.tick(T0 + OPTS.hello_window_ms - 1)
    assert not r.synced
    r.tick(T0 + OPTS.hello_window_ms)
    assert r.synced


def test_known_but_silent_subscribers_are_waited_for_with_backoff() -> None:
    r = replica()
    r.hydrate(T0)
    r.cluster_evidence(T0, ready=True, others=1)
    now = T0
    asked = [now]
    for _ in range(6):
        now = r.next_deadline()
        r.tick(now)
        if any(isinstance(m, wire.Hello) and m.ask for m in decoded(r.data_to_send())):
            asked.append(now)
    assert not r.synced  # someone is there: no timer makes this replica synced
    gaps = [b - a for a, b in itertools.pairwise(asked)]
    assert gaps[:4] == [200, 400, 800, 1_600]  # the hello window, doubling
    assert max(gaps) <= 5_000


def test_answers_from_unsynced_peers_count_as_evidence() -> None:
    new = replica("new")
    new.hydrate(T0)
    new.cluster_evidence(T0, ready=True, others=2)
    one, two = replica("one"), replica("two")  # joining too, not synced either
    deliver(new, one, two)
    deliver(one, new)
    assert not synced(new)  # one of the two answered
    deliver(two, new)
    assert new.synced
    assert new.values == {}


def test_a_synced_peer_that_answers_hands_its_state_over() -> None:
    a = synced_alone(replica("a"))
    a.local_set("k", 1, T0)
    a.data_to_send()
    b = replica("b")
    b.hydrate(T0)
    b.cluster_evidence(T0, ready=True, others=1)
    finished: list[SyncFinished] = []
    sent = pump(a, b, finished=finished)
    assert b.synced
    assert b.values == {"k": 1}
    assert finished == [SyncFinished("a", True, True)]
    # Synced peers pick partners among synced replicas: b says so at once.
    assert [(m.ask, m.synced) for m in hellos(sent, "b")] == [(True, False), (False, True)]


def test_a_synced_replica_answers_hellos_with_probability_about_4_over_n() -> None:
    a = synced_alone(replica("a"))
    for i in range(30):
        a.receive(wire.encode(wire.Hello(f"p{i}", i, T0, True, False, 0)), T0)
    asks = 3_000
    for i in range(asks):
        a.receive(wire.encode(wire.Hello("p0", 0, T0 + i, False, True, 0)), T0 + i)
    answers = [m for m in decoded(a.data_to_send()) if isinstance(m, wire.HelloAck)]
    assert all(m.synced for m in answers)
    expected = asks * 4 / 30
    assert 0.8 * expected <= len(answers) <= 1.2 * expected
    small = synced_alone(replica("s"))
    small.receive(wire.encode(wire.Hello("p0", 0, T0, False, True, 0)), T0)
    assert [type(m) for m in decoded(small.data_to_send())] == [wire.HelloAck]


def test_hydrate_from_one_peer_in_parts() -> None:
    options = ReplicaOptions(
        hello_window_ms=200, sync_timeout_ms=300, max_message_size=4096, sync_chunk=2048
    )
    net = cluster("a", "b", "c", options=options)
    for i in range(500):
        net.set("a", f"key-{i}", i)
    net.settle()
    net.add("new")
    parts: list[tuple[str, int]] = []
    while net.in_flight:
        dst, _, data = net.in_flight[0]
        msg = wire.decode(data, max_size=CAP)
        if dst == "new" and isinstance(msg, wire.SyncData):
            parts.append((msg.sender, len(data)))
        net.step()
    net.settle()
    new = net.replica("new")
    assert new.synced
    assert len(new.values) == 500
    assert len({sender for sender, _ in parts}) == 1  # one peer sent the copy
    assert len(parts) > 1
    assert all(size <= 4096 for _, size in parts)


def test_the_responder_of_a_hydration_starts_no_second_exchange() -> None:
    net = cluster("a")
    a = net.replica("a")
    for i in range(50):
        a.local_set(f"k{i}", i, net.now)
    net.settle()
    net.add("new")
    net.settle()
    net.settle(4 * LIVE.heartbeat_interval_ms)
    assert net.replica("new").values == a.values
    assert a.snapshot_stats().refreshes == 0, "the responder started a redundant exchange"
    assert net.replica("new").snapshot_stats().refreshes == 1


# --- syncs -------------------------------------------------------------------------------------


def test_a_failed_sync_is_not_retried_with_the_same_peer_at_once() -> None:
    net = cluster("a", "b", "c")
    net.set("b", "k", 1)
    net.settle()
    a = net.replica("a")
    net.crash("b")  # a still believes b alive and may pick it
    assert a.request_sync(net.now, peer="b") == "b"
    assert a.request_sync(net.now) is None  # one exchange at a time
    net.flush()
    net.run()
    net.advance(OPTS.sync_timeout_ms, step_ms=OPTS.sync_timeout_ms // 4)
    assert net.nodes["a"].finished[-1] == SyncFinished("b", False, False, "timeout")
    assert a.request_sync(net.now) == "c"


def test_one_exchange_brings_both_sides_together() -> None:
    net = cluster("a", "b")
    net.partition({"a"}, {"b"})
    net.set("a", "only-a", 1)
    net.set("b", "only-b", 2)
    net.heal()
    net.request_sync("a", "b")
    net.run()
    assert net.converged()
    assert len(net.replica("b").values) == 2


def test_every_gap_is_repaired_by_a_sync() -> None:
    net = cluster("a", "b", "c")
    for round_ in range(3):
        net.partition({"a"}, {"b", "c"})
        net.set("b", f"lost-{round_}", round_)
        net.heal()
        net.gap("a")
        net.run()
        assert net.replica("a").values[f"lost-{round_}"] == round_
    assert net.replica("a").snapshot_stats().refreshes >= 3


def test_a_refresh_of_a_few_differences_is_cheap() -> None:
    net = cluster("a", "b")
    a, b = net.replica("a"), net.replica("b")
    for i in range(5_000):
        a.local_set(f"key:{i}", i, net.now)
    net.flush()
    net.run()
    received = b.snapshot_stats().bytes_received
    for i in range(10):  # differences the network lost
        b.local_set(f"key:{i * 397}", -i, net.now)
    b.data_to_send()
    before = net.bytes_sent
    net.request_sync("a", "b")
    net.run()
    assert net.converged()
    assert net.bytes_sent - before <= 0.1 * received


# --- clocks ------------------------------------------------------------------------------------


def test_a_sender_ahead_is_reported_by_name_and_its_writes_within_bounds_apply() -> None:
    fast = replica("fast", now=T0 + SKEW + 30_000)
    fast.local_set("k", "future", T0 + SKEW + 30_000)
    b = replica("b")
    deliver(fast, b)
    assert b.values == {"k": "future"}
    (error,) = b.errors_received()
    assert isinstance(error, ProtocolError)
    assert "node 'fast'" in str(error)
    assert "ahead" in str(error)
    assert b.snapshot_stats().clock_skew_reports == 1
    # The clock followed only up to max_clock_skew ahead of the wall clock.
    b.local_set("mine", 1, T0)
    assert b.entry_stamp("mine") is not None
    assert b.entry_stamp("mine").time <= T0 + SKEW  # type: ignore[union-attr]
    # Reported at most once a minute per sender, counted every time.
    fast.local_set("k2", "again", T0 + SKEW + 30_001)
    deliver(fast, b)
    assert b.errors_received() == []
    assert b.snapshot_stats().clock_skew_reports == 2


def test_entries_too_far_ahead_are_refused_and_reported() -> None:
    far = T0 + 2 * SKEW + 1
    fast = replica("fast", now=far)
    fast.local_set("k", "far", far)
    b = replica("b")
    deliver(fast, b)
    assert b.values == {}
    stats = b.snapshot_stats()
    assert stats.stamps_refused == 1
    (error,) = b.errors_received()
    assert "node 'fast'" in str(error)
    b.local_set("mine", 1, T0)
    assert b.entry_stamp("mine") == Stamp(T0, 0, "b")  # the clock was not dragged along


def test_a_stamp_at_the_top_of_the_wire_range_cannot_halt_replication() -> None:
    net = cluster("a", "b", "c")
    top = wire.make_entry("k", Stamp(MAX_TIME, MAX_COUNTER, "x"), 0, b'"frozen"')
    for node in ("a", "b", "c"):
        net.inject(node, wire.encode(wire.Writes("x", 9, MAX_TIME, [top])))
    for node in ("a", "b", "c"):
        assert net.replica(node).snapshot_stats().stamps_refused == 1
    net.set("a", "k", "later")
    net.set("b", "other", 1)
    net.settle()
    assert net.converged()
    assert net.replica("c").values == {"k": "later", "other": 1}
    assert all(net.replica(n).entry_stamp("k").time < MAX_TIME for n in "abc")  # type: ignore[union-attr]
    net.sync_all()
    assert net.replica("c").values == {"k": "later", "other": 1}


def test_a_fast_node_is_named_and_the_others_agree() -> None:
    net = cluster("a", "b")
    net.add("fast", clock_offset_ms=3_600_000)
    net.settle()
    net.set("fast", "k", "future")
    net.run()
    net.set("a", "k", "after")
    net.settle()
    for node in ("a", "b"):
        r = net.replica(node)
        assert r.values["k"] == "after"
        assert r.snapshot_stats().stamps_refused >= 1
        assert any("node 'fast'" in str(e) for e in net.nodes[node].errors)
        assert not any("node 'a'" in str(e) or "node 'b'" in str(e) for e in net.nodes[node].errors)


# --- tombstones and the horizon ------------------------------------------------------------------


def test_tombstones_compact_after_the_ttl() -> None:
    net = cluster("a")
    net.set("a", "k", 1)
    net.delete("a", "k")
    a = net.replica("a")
    assert a.snapshot_stats().tombstones == 1
    net.advance(OPTS.tombstone_ttl_ms // 2, step_ms=1_000)
    assert "k" in a.tombstones()
    net.advance(OPTS.tombstone_ttl_ms // 2 + 2 * OPTS.compaction_interval_ms, step_ms=1_000)
    assert a.tombstones() == {}
    stats = a.snapshot_stats()
    assert (stats.tombstones, stats.tombstones_compacted) == (0, 1)


def test_entries_older_than_the_hard_cap_from_unknown_writers_are_refused() -> None:
    b = replica("b")
    now = T0 + 2 * OPTS.tombstone_hard_cap_ms
    old = wire.make_entry("k", Stamp(now - OPTS.tombstone_hard_cap_ms - 1, 0, "x"), 0, b"1")
    recent = wire.make_entry("j", Stamp(now - OPTS.tombstone_hard_cap_ms + 1, 0, "x"), 0, b"2")
    b.receive(wire.encode(wire.Writes("x", 9, now, [old, recent])), now)
    assert b.values == {"j": 2}
    assert b.snapshot_stats().writes_refused == 1


# --- liveness, ephemeral entries, leaving --------------------------------------------------------


def test_members_follow_liveness() -> None:
    net = cluster("a", "b", "c")
    a = net.replica("a")
    assert a.members() == {"a", "b", "c"}
    net.crash("c")
    net.advance(LIVE.down_after_ms + 3 * LIVE.heartbeat_interval_ms, step_ms=50)
    assert a.members() == {"a", "b"}
    assert [ev.key for ev in net.nodes["a"].events if ev.kind is NODE_DOWN] == ["c"]
    assert a.snapshot_stats().members == 2


def test_a_replica_that_leaves_is_gone_at_once() -> None:
    net = cluster("a", "b")
    net.leave("b")
    net.run()
    assert net.replica("a").members() == {"a"}


def test_leave_retracts_own_ephemeral_entries_and_says_goodbye() -> None:
    a, b = synced_alone(replica("a")), replica("b")
    a.local_set("presence:a", "here", T0, ephemeral=True)
    a.local_set("durable", 1, T0)
    deliver(a, b)
    a.leave(T0 + 1)
    out = decoded(deliver(a, b, now=T0 + 1))
    assert [type(m) for m in out] == [wire.Writes, wire.Leave]
    assert b.values == {"durable": 1}
    assert b.members() == {"b"}
    assert a.values == {"durable": 1}
    a.leave(T0 + 2)
    assert a.data_to_send() == []


def test_ephemeral_entries_go_everywhere_when_their_writer_dies() -> None:
    net = cluster("a", "b", "c")
    net.set("c", "presence:c", "online", ephemeral=True)
    net.set("c", "durable", 1)
    net.settle()
    net.crash("c")
    net.advance(LIVE.down_after_ms + 3 * LIVE.heartbeat_interval_ms, step_ms=50)
    for node in ("a", "b"):
        r = net.replica(node)
        assert "presence:c" not in r.values
        assert r.values["durable"] == 1
        deletes = [ev for ev in net.nodes[node].events if ev.kind is DELETE]
        assert [(ev.key, ev.origin) for ev in deletes] == [("presence:c", "c")]
        assert r.snapshot_stats().ephemeral_expired == 1


def test_an_ephemeral_entry_of_a_life_that_is_over_is_not_applied() -> None:
    net = cluster("a", "b")
    nonce = net.nodes["b"].membership.nonce
    net.leave("b")
    net.run()
    late = wire.make_entry("p", Stamp(net.now, 0, "b"), wire.EPHEMERAL, b'"x"', owner_nonce=nonce)
    net.inject("a", wire.encode(wire.Writes("b", nonce, net.now, [late])))
    assert "p" not in net.replica("a").values


def test_a_partitioned_writer_gets_its_ephemeral_entries_back_after_the_heal() -> None:
    net = cluster("a", "b")
    net.set("a", "presence:a", "here", ephemeral=True)
    net.settle()
    net.partition({"a"}, {"b"})
    net.advance(LIVE.down_after_ms + 3 * LIVE.heartbeat_interval_ms, step_ms=50)
    assert "presence:a" not in net.replica("b").values
    assert net.replica("a").values["presence:a"] == "here"
    net.heal()
    net.advance(3 * LIVE.down_after_ms, step_ms=50)
    assert net.replica("b").values["presence:a"] == "here"
    assert net.converged()


def test_a_restart_with_the_same_id_forgets_the_previous_life() -> None:
    net = cluster("a", "b")
    net.set("b", "presence:b", "old-life", ephemeral=True)
    net.settle()
    net.crash("b")
    net.now += 10  # restarts within down_after: a still holds the old entry
    net.add("b")
    net.settle()
    assert all("presence:b" not in s for s in net.states().values())
    net.set("b", "presence:b", "new-life", ephemeral=True)
    net.settle()
    assert net.replica("a").values["presence:b"] == "new-life"


# --- bad input, stats, deadlines ------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"", b"\xc1", b"garbage", wire.encode(wire.Leave("x", 1))[:-1]],
    ids=["empty", "reserved", "garbage", "truncated"],
)
def test_garbage_is_counted_not_raised(data: bytes) -> None:
    r = replica()
    r.receive(data, T0)
    assert data_kinds(r.events_received()) == []
    (error,) = r.errors_received()
    assert isinstance(error, DecodeError)
    assert r.snapshot_stats().decode_errors == 1


def test_an_oversized_message_is_refused() -> None:
    r = replica(options=ReplicaOptions(max_message_size=2048))
    r.receive(b"\x00" * 4096, T0)
    (error,) = r.errors_received()
    assert isinstance(error, FrameTooLarge)
    assert r.snapshot_stats().decode_errors == 1


def test_a_liveness_message_on_a_store_topic_is_refused() -> None:
    r = replica()
    r.receive(wire.encode(wire.Bye("x", 1, bytes(16))), T0)
    (error,) = r.errors_received()
    assert isinstance(error, ProtocolError)
    assert "Bye on a store topic" in str(error)


def test_undecodable_values_are_skipped_one_by_one() -> None:
    r = replica(value_type=int)
    stamp = Stamp(T0, 0, "x")
    batch = wire.Writes(
        "x",
        9,
        T0,
        [
            wire.make_entry("good", stamp, 0, b"1"),
            wire.make_entry("bad", stamp, 0, b"not json"),
            wire.make_entry("typed-wrong", stamp, 0, b'"str"'),
        ],
    )
    r.receive(wire.encode(batch), T0)
    assert r.values == {"good": 1}
    errors = r.errors_received()
    assert len(errors) == 2
    assert all(isinstance(e, DecodeError) for e in errors)
    assert r.snapshot_stats().decode_errors == 2


def test_a_merger_entry_in_a_lww_store_is_refused() -> None:
    r = replica()
    entry = wire.make_entry("k", Stamp(T0, 0, "x"), wire.MERGED, b"\x90", Stamp(0, 0, ""))
    r.receive(wire.encode(wire.Writes("x", 9, T0, [entry])), T0)
    assert r.values == {}
    assert len(r.errors_received()) == 1


def test_own_echoes_are_ignored() -> None:
    r = replica(nonce=5)
    r.local_set("k", 1, T0)
    (out,) = r.data_to_send()
    r.events_received()
    r.receive(out.data, T0)
    assert (r.events_received(), r.errors_received()) == ([], [])
    assert r.snapshot_stats().writes_stale == 0


def test_stats_snapshot() -> None:
    net = cluster("a", "b")
    net.set("a", "k", 1)
    net.settle()
    stats = net.replica("b").snapshot_stats()
    assert isinstance(stats, Stats)
    assert stats.writes_applied == 1
    assert stats.keys == 1
    assert stats.peers_seen == 1
    assert stats.members == 2
    assert stats.messages_received > 0
    assert stats.bytes_received > 0
    assert stats.sync_bytes_sent > 0  # it answered a's hydration or asked for its own


def test_receive_never_raises_for_a_protocol_error() -> None:
    r = replica()
    for data in (b"\x90", wire.encode(wire.SyncAck("x", 1, 7, 0, 0, [])), b"\x00" * 10):
        r.receive(data, T0)
    assert all(isinstance(e, PodshareError) for e in r.errors_received())


class CountingDict(dict[Any, Any]):
    """A dict that counts every walk over it."""

    walks = 0

    def __iter__(self) -> Iterator[Any]:
        CountingDict.walks += 1
        return super().__iter__()

    def values(self) -> Any:
        CountingDict.walks += 1
        return super().values()

    def items(self) -> Any:
        CountingDict.walks += 1
        return super().items()


def test_next_deadline_walks_no_peers() -> None:
    r = synced_alone(replica())
    for i in range(4_000):
        r.receive(wire.encode(wire.Hello(f"p{i}", i, T0, True, False, 0)), T0)
    r.local_set("k", 1, T0, ttl_ms=50)
    r.data_to_send()
    r.state.refresh_digest()  # else the digest's next fold step is the earliest
    r.peers.by_node = CountingDict(r.peers.by_node)
    CountingDict.walks = 0
    due = r.next_deadline()
    assert CountingDict.walks == 0
    assert due == T0 + 50  # the expiry is the earliest


def test_ticks_fold_the_digest_a_bounded_step_at_a_time() -> None:
    r = synced_alone(replica())
    for i in range(3_000):
        r.local_set(f"k{i}", i, T0)
    r.data_to_send()
    now = T0
    ticks = 0
    while r.state.digest_behind:
        now = r.next_deadline()
        assert now <= T0 + 10 * (ticks + 1)  # a step is due within 10 ms
        r.tick(now)
        ticks += 1
    assert ticks == 3  # 1,024 keys a step
    assert r.next_deadline() > now + 10  # nothing more to fold


def test_next_deadline_moves_forward_after_every_tick() -> None:
    r = synced_alone(replica())
    now = T0
    for _ in range(20):
        due = r.next_deadline()
        assert due > now or due == now
        now = max(now, due)
        r.tick(now)
        assert r.next_deadline() > now
    assert r.data_to_send() == []  # nothing to say to nobody


def test_entries_arriving_by_sync_follow_the_clock_rules_too() -> None:
    # A stamp at the top of the wire range, in a part of an entry stream nobody asked for
    # (a late part is applied: it may carry valid state), must not freeze the key.
    b = synced_alone(replica("b"))
    top = wire.make_entry("k", Stamp(MAX_TIME, MAX_COUNTER, "x"), 0, b'"frozen"')
    near = wire.make_entry("j", Stamp(T0 + SKEW // 2, 0, "x"), 0, b'"soon"')
    b.receive(wire.encode(wire.SyncData("x", 9, 77, wire.STREAM_ANSWER, 0, True, [top, near])), T0)
    assert b.values == {"j": "soon"}
    assert b.snapshot_stats().stamps_refused == 1
    b.local_set("k", "mine", T0)
    assert b.values["k"] == "mine"


def test_a_write_after_hydrating_from_a_peer_ahead_orders_after_what_it_replaces() -> None:
    # The peer's clock is 30 s ahead (within max_clock_skew): the local clock observes the
    # entries a sync brings, as it does a broadcast's, so the later write wins everywhere.
    net = SimNetwork(seed=1, options=OPTS, liveness=LIVE)
    net.add("a", clock_offset_ms=30_000)
    net.settle()
    net.set("a", "k", "from-a")
    net.settle()
    b = net.add("b")
    net.settle()
    assert b.values == {"k": "from-a"}
    net.set("b", "k", "from-b")
    net.settle()
    net.sync_all()
    assert net.states() == {"a": {"k": "from-b"}, "b": {"k": "from-b"}}


def test_seeded_entries_load_fill_what_peers_lack_and_lose_to_any_write() -> None:
    empty = replica("d")
    empty.seed({"k": 1, "j": 2}, T0)
    assert empty.values == {"k": 1, "j": 2}  # loaded, silently
    assert empty.entry_stamp("k") == Stamp(SEED_TIME, 0, "d")
    assert (empty.events_received(), empty.data_to_send()) == ([], [])
    # A seeded replica's entries fill what a peer lacks ...
    net = SimNetwork(seed=2, options=OPTS, liveness=LIVE)
    s = net.add("s", hydrate=False)
    s.seed({"k": 1, "j": 2}, net.now)
    s.hydrate(net.now)
    net.settle()
    other = net.add("o")
    net.settle()
    assert other.values == s.values == {"k": 1, "j": 2}
    # ... and any write wins over them, even one stamped long ago.
    old = wire.make_entry("k", Stamp(SEED_TIME + 1, 0, "z"), 0, b'"older than all"')
    net.inject("s", wire.encode(wire.Writes("z", 3, net.now, [old])))
    assert s.values["k"] == "older than all"


@pytest.mark.parametrize("who_asks", ["returner", "peer"])
def test_a_partition_longer_than_the_ttl_neither_resurrects_nor_loses(who_asks: str) -> None:
    net = cluster("a", "b")
    for k in ("gone", "kept"):
        net.set("a", k, 1)
    net.settle()
    net.partition({"a"}, {"b"})
    net.delete("a", "gone")
    net.set("b", "new-on-b", 2)  # acknowledged during the partition
    net.advance(OPTS.tombstone_ttl_ms + 5_000, step_ms=1_000)
    assert net.replica("a").tombstones() == {}  # compacted: b has been down for longer
    assert "gone" in net.replica("b").values
    net.heal()
    net.advance(3 * LIVE.heartbeat_interval_ms, step_ms=50)
    net.request_sync("b" if who_asks == "returner" else "a", "a" if who_asks == "returner" else "b")
    net.run()
    net.sync_all()
    for node in ("a", "b"):
        values = net.replica(node).values
        assert "gone" not in values, node  # the delete holds
        assert values["kept"] == 1
        assert values["new-on-b"] == 2, node  # the write made while cut off survives
    assert net.converged()


def test_duplicate_node_ids_are_counted_and_both_writers_replicate() -> None:
    net = cluster("c")
    net.add("a", nonce=1)
    net.add("a", nonce=2)
    net.settle()
    one, two = (node for key, node in net.nodes.items() if node.node_id == "a")
    one.replica.local_set("from-one", 1, net.now)
    net.flush()
    two.replica.local_set("from-two", 2, net.now)
    net.settle()
    assert net.replica("c").values == {"from-one": 1, "from-two": 2}
    assert one.replica.values == two.replica.values
    assert one.replica.snapshot_stats().duplicate_node_ids >= 1
    one.replica.node_event(MemberEvent("duplicate", "a", 2), net.now)
    assert one.replica.snapshot_stats().duplicate_node_ids >= 2


def test_a_third_party_keeps_a_twins_write_after_syncing_with_the_other_twin() -> None:
    # Stamps carry the node id, not the incarnation: without care, one twin takes the
    # other's write for its own deleted one, refuses it and tells the peer to forget it.
    net = cluster("c")
    net.add("a", nonce=1)
    net.settle()
    net.add("a", nonce=2)
    net.settle()
    one, two = (node for node in net.nodes.values() if node.node_id == "a")
    two.replica.local_set("from-two", 2, net.now)
    net.settle()
    one.replica.request_sync(net.now, peer="c")
    net.flush()
    net.run()
    net.settle()
    assert net.replica("c").values == {"from-two": 2}
    assert one.replica.values == {"from-two": 2}
    assert one.replica.snapshot_stats().writes_refused == 0


def test_a_twin_seen_on_a_store_topic_is_not_taken_for_this_process() -> None:
    r = replica(nonce=5)
    r.local_set("k", 1, T0)
    (out,) = r.data_to_send()
    twin = replica(nonce=6)
    twin.receive(out.data, T0)
    assert twin.values == {"k": 1}


def test_a_writers_last_batch_after_its_goodbye_still_applies() -> None:
    """A receiver behind on the store topic may learn that a writer left (liveness is
    another topic) before it reads the writer's last batches: those writes still apply;
    the writer's ephemeral entries of the life that is over do not."""
    over: set[tuple[str, int]] = set()

    def liveness(node: str, nonce: int) -> bool | None:
        return (node, nonce) not in over

    writer, receiver = replica("w"), replica("r", liveness=liveness)
    writer.local_set("first", 1, T0)
    deliver(writer, receiver)
    writer.local_set("last", 2, T0 + 1)
    writer.local_set("route", "pod-w", T0 + 1, ephemeral=True)
    late = writer.data_to_send()
    over.add(("w", writer.nonce))  # the goodbye overtook the batch
    receiver.node_event(MemberEvent("down", "w", writer.nonce), T0 + 2)
    for o in late:
        receiver.receive(o.data, T0 + 3)
    assert receiver.values == {"first": 1, "last": 2}
