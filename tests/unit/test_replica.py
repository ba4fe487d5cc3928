"""The replica core: LWW and merger semantics, batching, sync, tombstones, liveness, bad input."""

from __future__ import annotations

from typing import Any

import pytest

from podshare.crdt import GSet, ORSet, PNCounter, Stamp
from podshare.exceptions import ConfigurationError, DecodeError, InvalidValue, ProtocolError
from podshare.store import wire
from podshare.store.codec import value_codec
from podshare.store.events import EventKind, Stats
from podshare.store.replica import Replica, ReplicaOptions
from podshare.testing import SimNetwork

T0 = 1_700_000_000_000
OPTS = ReplicaOptions(
    tombstone_ttl_ms=60_000,
    compaction_interval_ms=1_000,
    heartbeat_interval_ms=100,
    down_after_ms=500,
    hello_window_ms=200,
    sync_timeout_ms=300,
)


def cluster(*nodes: str, value_type: Any = None, **kw: Any) -> SimNetwork:
    options = kw.pop("options", OPTS)
    net = SimNetwork(seed=1, value_type=value_type, options=options, **kw)
    for node in nodes:
        net.add(node)
        net.settle()
    return net


def replica(node: str = "a", value_type: Any = None, **opts: Any) -> Replica[Any]:
    codec = value_codec(value_type, None)
    from podshare.crdt import merger_for

    options = ReplicaOptions(**opts) if opts else OPTS
    return Replica("t", node, codec, merger=merger_for(value_type), options=options, now=T0)


def kinds(events: list[Any]) -> list[str]:
    """The kinds of the data events (membership events left out)."""
    return [ev.kind.name for ev in events if ev.kind in (EventKind.SET, EventKind.DELETE)]


# --- options ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        {"heartbeat_interval_ms": 1000, "down_after_ms": 1000},
        {"heartbeat_interval_ms": 0},
        {"tombstone_ttl_ms": -1},
        {"max_message_size": 100},
        {"sync_timeout_ms": 1.5},
        {"down_after_ms": True},
    ],
)
def test_options_are_validated(kw: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        ReplicaOptions(**kw)


def test_option_defaults() -> None:
    o = ReplicaOptions()
    assert (o.heartbeat_interval_ms, o.down_after_ms) == (1_000, 5_000)
    assert o.tombstone_ttl_ms == 24 * 3600 * 1000
    assert o.max_clock_skew_ms == 60_000


# --- local writes -------------------------------------------------------------------


def test_local_writes_and_events() -> None:
    r = replica()
    (ev,) = r.local_set("k", {"x": 1}, T0 + 1)
    assert (ev.kind, ev.key, ev.value, ev.origin) == (EventKind.SET, "k", {"x": 1}, "a")
    assert r.values == {"k": {"x": 1}}
    assert kinds(r.local_delete("k", T0 + 2)) == ["DELETE"]
    assert r.values == {}
    assert r.local_delete("k", T0 + 3) == []  # already gone: no event, still a tombstone
    assert "k" in r.tombstones()
    assert r.counters.snapshot().writes_local == 3


def test_invalid_value_changes_nothing() -> None:
    r = replica()
    with pytest.raises(InvalidValue):
        r.local_set("k", object(), T0)
    assert r.values == {}
    assert r.take_outgoing() == []


def test_value_too_large_for_a_message() -> None:
    r = replica(max_message_size=2048)
    with pytest.raises(InvalidValue):
        r.local_set("k", "x" * 5000, T0)


def test_ephemeral_needs_lww() -> None:
    r = replica(value_type=GSet)
    with pytest.raises(InvalidValue):
        r.local_set("k", GSet(["a"]), T0, ephemeral=True)


def test_empty_value() -> None:
    assert replica().empty_value("k") is None
    assert replica(value_type=PNCounter).empty_value("k") == PNCounter()


# --- batching -----------------------------------------------------------------------


def test_writes_coalesce_into_one_message() -> None:
    r = replica()
    for i in range(100):
        r.local_set(f"k{i}", i, T0)
    r.local_set("k0", "latest", T0)
    out = r.take_outgoing()
    writes = [wire.decode(o.data, max_size=1 << 20) for o in out]
    assert len(writes) == 1
    assert isinstance(writes[0], wire.Writes)
    assert len(writes[0].entries) == 100  # k0 travels once, with its latest value
    assert r.take_outgoing() == []


def test_batches_split_below_max_message_size() -> None:
    r = replica(max_message_size=2048)
    for i in range(300):
        r.local_set(f"key-{i}", "v" * 20, T0)
    out = r.take_outgoing()
    assert len(out) > 1
    assert all(len(o.data) <= 2048 for o in out)
    b = replica("b", max_message_size=2048)
    for o in out:
        b.receive(o.data, T0)
    assert b.values == r.values


def test_merger_writes_ship_deltas() -> None:
    a = replica(value_type=ORSet)
    big: ORSet[int] = ORSet()
    for i in range(10_000):
        big = big.add(i, "a")
    a.local_set("s", big, T0)
    a.take_outgoing()
    a.local_set("s", a.values["s"].add(10_001, "a"), T0 + 1)
    (out,) = a.take_outgoing()
    assert len(out.data) <= 200


def test_merger_deltas_coalesce() -> None:
    a, b = replica(value_type=GSet), replica("b", value_type=GSet)
    a.local_set("s", GSet(["x"]), T0)
    a.local_set("s", GSet(["y"]), T0)
    (out,) = a.take_outgoing()
    b.receive(out.data, T0)
    assert set(b.values["s"]) == {"x", "y"}


# --- LWW semantics ------------------------------------------------------------------


def test_lww_any_order_highest_stamp_wins() -> None:
    a, b, c = replica("a"), replica("b"), replica("c")
    a.local_set("k", "from-a", T0)
    msg_a = a.take_outgoing()[0].data
    b.receive(msg_a, T0)  # b has seen a's write: its write orders after it
    b.local_set("k", "from-b", T0 - 5_000)  # even with a wall clock behind
    msg_b = b.take_outgoing()[0].data
    for order in ([msg_a, msg_b], [msg_b, msg_a], [msg_b, msg_a, msg_b, msg_a]):
        r = replica("c" + str(len(order)))
        for m in order:
            r.receive(m, T0)
        assert r.values == {"k": "from-b"}
    c.receive(msg_b, T0)
    events, _ = c.receive(msg_a, T0)
    assert kinds(events) == []
    assert c.counters.writes_stale == 1


def test_tombstone_blocks_late_older_write() -> None:
    a, b = replica("a"), replica("b")
    a.local_set("k", 1, T0)
    write = a.take_outgoing()[0].data
    a.local_delete("k", T0 + 1)
    delete = a.take_outgoing()[0].data
    assert kinds(b.receive(delete, T0)[0]) == []
    assert kinds(b.receive(write, T0)[0]) == []
    assert b.values == {}


# --- merger semantics ---------------------------------------------------------------


def test_merge_joins_and_delete_starts_new_epoch() -> None:
    net = cluster("a", "b", value_type=GSet)
    net.set("a", "s", GSet(["x"]))
    net.set("b", "s", GSet(["y"]))
    net.settle()
    assert set(net.replica("a").values["s"]) == {"x", "y"}
    net.delete("a", "s")
    net.settle()
    assert "s" not in net.replica("b").values
    net.set("b", "s", GSet(["z"]))
    net.settle()
    assert set(net.replica("a").values["s"]) == {"z"}
    assert net.converged()


def test_delete_concurrent_with_merge_write() -> None:
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


def test_merge_no_change_is_stale_without_event() -> None:
    a, b = replica(value_type=GSet), replica("b", value_type=GSet)
    a.local_set("s", GSet(["x"]), T0)
    data = a.take_outgoing()[0].data
    assert kinds(b.receive(data, T0)[0]) == ["SET"]
    assert kinds(b.receive(data, T0)[0]) == []  # a duplicate


# --- clock --------------------------------------------------------------------------


def test_far_ahead_stamp_is_reported_and_converges() -> None:
    net = cluster("a", "b")
    net.add("fast", clock_offset_ms=3_600_000)
    net.settle()
    net.set("fast", "k", "future")
    net.run()
    net.set("a", "k", "after")  # a observed the future stamp: its write orders later
    net.settle()
    a = net.replica("a")
    assert a.counters.clock_skew_reports >= 1
    assert any(isinstance(e, ProtocolError) for e in net.nodes["a"].errors)
    assert net.converged()
    assert a.values["k"] == "after"


# --- tombstones ---------------------------------------------------------------------


def test_tombstones_compact_after_ttl() -> None:
    net = cluster("a")
    net.set("a", "k", 1)
    net.delete("a", "k")
    a = net.replica("a")
    assert a.counters.snapshot().tombstones == 1
    net.advance(30_000, step_ms=1_000)
    assert "k" in a.tombstones()
    net.advance(31_000, step_ms=1_000)
    assert a.tombstones() == {}
    stats = a.counters.snapshot()
    assert (stats.tombstones, stats.tombstones_compacted) == (0, 1)


@pytest.mark.parametrize("who_asks", ["returner", "peer"])
def test_replica_back_after_ttl_does_not_resurrect(who_asks: str) -> None:
    net = cluster("a", "b")
    for k in ("gone", "kept"):
        net.set("a", k, 1)
    net.settle()
    net.partition({"a"}, {"b"})
    net.delete("a", "gone")
    net.advance(OPTS.tombstone_ttl_ms + 5_000, step_ms=1_000)
    net.set("b", "new-on-b", 2)
    assert net.replica("a").tombstones() == {}  # compacted: the delete is forgotten
    assert "gone" in net.replica("b").values
    net.heal()
    net.advance(OPTS.heartbeat_interval_ms * 2, step_ms=50)  # they see each other again
    if who_asks == "returner":
        net.replica("b").start_sync(net.now, prefer="a")
    else:
        net.replica("a").start_sync(net.now, prefer="b")
    net.flush()
    net.run()
    net.sync_all()
    for node in ("a", "b"):
        values = net.replica(node).values
        assert "gone" not in values, node
        assert values["kept"] == 1
        assert values["new-on-b"] == 2
    assert net.converged()


@pytest.mark.parametrize("asker", ["stale", "fresh"])
def test_horizon_rules_in_each_direction(asker: str) -> None:
    # No clock advance between steps: no heartbeat timeouts, so no automatic syncs.
    net = cluster("stale", "fresh")
    net.set("stale", "k", 1)
    net.settle()
    net.partition({"stale"}, {"fresh"})
    net.delete("fresh", "k")
    net.now += OPTS.tombstone_ttl_ms + 1_000
    fresh, stale = net.replica("fresh"), net.replica("stale")
    assert fresh.compact(net.now) == 1
    net.heal()
    if asker == "stale":
        # The returner sees the peer lacks an old key its lineage covers: dropped, not pushed.
        stale.start_sync(net.now, prefer="fresh")
    else:
        # The peer sends the old key; the asker deleted it long ago: refused.
        fresh.start_sync(net.now, prefer="stale")
    net.flush()
    net.run()
    assert "k" not in fresh.values
    assert ("k" in stale.values) is (asker == "fresh")  # the stale one drops it on its own sync


def test_old_write_for_unknown_key_is_refused() -> None:
    net = cluster("a", "b")
    b = net.replica("b")
    net.advance(2 * OPTS.tombstone_ttl_ms, step_ms=1_000)
    stamp = Stamp(net.now - OPTS.tombstone_ttl_ms - 1_000, 0, "x")
    old = wire.Writes("x", [wire.make_entry("k", stamp, 0, b"1", None)])
    net.inject("b", wire.encode(old))
    assert "k" not in b.values  # older than the horizon: deleted and compacted here
    # A new replica's lineage starts now: it never saw that key, so it accepts it.
    fresh = Replica("t", "fresh", value_codec(None, None), merger=None, options=OPTS, now=net.now)
    fresh.receive(wire.encode(old), net.now)
    assert fresh.values == {"k": 1}


# --- sync ---------------------------------------------------------------------------


def test_hydrate_from_one_peer_chunked() -> None:
    opts = ReplicaOptions(**{**_opts_dict(), "max_message_size": 4096})
    net = cluster("a", "b", "c", options=opts)
    for i in range(500):
        net.set("a", f"key-{i}", i)
    net.settle()
    net.add("new")
    sent_to_new: list[tuple[str, bytes]] = []
    while net.in_flight:
        dst, data = net.in_flight[0]
        msg = wire.decode(data, max_size=1 << 20)
        if dst == "new" and isinstance(msg, wire.SyncData):
            sent_to_new.append((msg.sender, data))
        net.step()
    net.settle()
    new = net.replica("new")
    assert new.synced
    assert len(new.values) == 500
    assert len({sender for sender, _ in sent_to_new}) == 1  # one peer sent the copy
    assert len(sent_to_new) > 1
    assert all(len(d) <= 4096 for _, d in sent_to_new)


def test_empty_cluster_hydration_is_synced() -> None:
    net = SimNetwork(options=OPTS)
    r = net.add("alone")
    assert not r.synced
    assert r.sync_in_progress
    net.advance(OPTS.hello_window_ms)
    assert r.synced
    assert not r.sync_in_progress


def test_sync_retries_another_peer() -> None:
    net = cluster("a", "b", "c")
    net.set("b", "k", 1)
    net.settle()
    a = net.replica("a")
    net.crash("b")  # a still believes b alive and may pick it
    a.start_sync(net.now, prefer="b")
    net.flush()
    net.run()
    assert a.sync_in_progress
    net.advance(OPTS.sync_timeout_ms + 100, step_ms=50)
    assert not a.sync_in_progress
    assert a.counters.refreshes >= 1


def test_sync_is_bidirectional() -> None:
    net = cluster("a", "b")
    net.partition({"a"}, {"b"})
    net.set("a", "only-a", 1)
    net.set("b", "only-b", 2)
    net.heal()
    net.run()
    net.replica("a").start_sync(net.now, prefer="b")  # one exchange, both learn
    net.flush()
    net.run()
    assert net.converged()
    assert len(net.replica("b").values) == 2


def test_first_contact_with_state_on_both_sides() -> None:
    net = SimNetwork(seed=3, options=OPTS)
    net.partition({"a"}, {"b"})
    net.add("a")
    net.add("b")
    net.settle()
    net.set("a", "k", "a")
    net.set("a", "only-a", 1)
    net.set("b", "k", "b")
    net.set("b", "only-b", 2)
    net.heal()
    net.settle()  # they meet through heartbeats and sync by themselves
    assert net.converged()
    assert len(net.replica("a").values) == 3


def test_refresh_of_few_differences_is_cheap() -> None:
    net = cluster("a", "b")
    a, b = net.replica("a"), net.replica("b")
    for i in range(20_000):
        a.local_set(f"key:{i}", i, net.now)
    net.flush()
    net.run()
    full = sum(len(o.data) for o in a.take_outgoing())
    snapshot = b.counters.bytes_received
    for i in range(20):  # differences the network lost
        b.local_set(f"key:{i * 997}", -i, net.now)
    b.take_outgoing()
    before = net.bytes_sent
    a.start_sync(net.now, prefer="b")
    net.flush()
    net.run()
    assert net.converged()
    assert full == 0
    assert snapshot > 0
    assert net.bytes_sent - before <= 0.05 * snapshot


def test_equal_states_exchange_no_entries() -> None:
    net = cluster("a", "b")
    for i in range(100):
        net.set("a", f"k{i}", i)
    net.settle()
    a = net.replica("a")
    a.start_sync(net.now, prefer="b")
    out = a.take_outgoing()
    (request,) = [wire.decode(o.data, max_size=1 << 20) for o in out if o.to == "b"]
    answer = net.replica("b")
    answer.receive(out[-1].data, net.now)
    replies = [wire.decode(o.data, max_size=1 << 20) for o in answer.take_outgoing()]
    assert isinstance(request, wire.SyncRequest)
    assert [len(m.entries) for m in replies if isinstance(m, wire.SyncData)] == [0]


def _opts_dict() -> dict[str, Any]:
    return {f: getattr(OPTS, f) for f in OPTS.__dataclass_fields__}


# --- liveness and ephemeral entries ---------------------------------------------------


def test_members_heartbeats_and_down() -> None:
    net = cluster("a", "b", "c")
    a = net.replica("a")
    assert a.members() == {"a", "b", "c"}
    net.crash("c")
    net.advance(OPTS.down_after_ms + 200, step_ms=50)
    assert a.members() == {"a", "b"}
    assert any(ev.kind is EventKind.NODE_DOWN and ev.key == "c" for ev in net.nodes["a"].events)
    assert a.counters.snapshot().members == 2


def test_leave_marks_down_at_once() -> None:
    net = cluster("a", "b")
    net.leave("b")
    net.run()
    assert net.replica("a").members() == {"a"}


def test_ephemeral_removed_everywhere_when_writer_dies() -> None:
    net = cluster("a", "b", "c")
    net.set("c", "presence:c", "online", ephemeral=True)
    net.set("c", "durable", 1)
    net.settle()
    net.crash("c")
    net.advance(OPTS.down_after_ms + 200, step_ms=50)
    for node in ("a", "b"):
        r = net.replica(node)
        assert "presence:c" not in r.values
        assert r.values["durable"] == 1
        deletes = [
            ev
            for ev in net.nodes[node].events
            if ev.kind is EventKind.DELETE and ev.key == "presence:c"
        ]
        assert [ev.origin for ev in deletes] == ["c"]
        assert r.counters.ephemeral_expired == 1


def test_ephemeral_of_down_node_not_applied() -> None:
    net = cluster("a", "b")
    net.leave("b")
    net.run()
    late = wire.Writes("b", [wire.make_entry("p", Stamp(net.now, 0, "b"), 2, b'"x"', None)])
    net.inject("a", wire.encode(late))
    assert "p" not in net.replica("a").values


def test_partitioned_writer_reasserts() -> None:
    net = cluster("a", "b")
    net.set("a", "presence:a", "here", ephemeral=True)
    net.settle()
    net.partition({"a"}, {"b"})
    net.advance(OPTS.down_after_ms + 200, step_ms=50)
    assert "presence:a" not in net.replica("b").values
    assert net.replica("a").values["presence:a"] == "here"
    net.heal()
    net.advance(OPTS.heartbeat_interval_ms * 3, step_ms=50)
    assert net.replica("b").values["presence:a"] == "here"
    assert net.converged()


def test_restart_with_same_id_forgets_previous_life() -> None:
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


# --- bad input ----------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"\xc1", b"garbage", wire.encode(wire.Leave("x"))[:-1]])
def test_garbage_is_counted_not_raised(data: bytes) -> None:
    r = replica()
    events, errors = r.receive(data, T0)
    assert events == []
    assert len(errors) == 1
    assert isinstance(errors[0], DecodeError)
    assert r.counters.decode_errors == 1


def test_undecodable_value_skipped_individually() -> None:
    r = replica(value_type=int)
    stamp = Stamp(T0, 0, "x")
    batch = wire.Writes(
        "x",
        [
            wire.make_entry("good", stamp, 0, b"1", None),
            wire.make_entry("bad", stamp, 0, b"not json", None),
            wire.make_entry("typed-wrong", stamp, 0, b'"str"', None),
        ],
    )
    _events, errors = r.receive(wire.encode(batch), T0)
    assert r.values == {"good": 1}
    assert len(errors) == 2
    assert all(isinstance(e, DecodeError) for e in errors)
    assert r.counters.decode_errors == 2


def test_merger_entry_in_lww_store_rejected() -> None:
    r = replica()
    entry = wire.make_entry("k", Stamp(T0, 0, "x"), wire.MERGED, b"\x90", Stamp(0, 0, ""))
    _, errors = r.receive(wire.encode(wire.Writes("x", [entry])), T0)
    assert r.values == {}
    assert len(errors) == 1


def test_oversized_message_refused() -> None:
    r = replica(max_message_size=2048)
    _, errors = r.receive(b"\x00" * 4096, T0)
    assert r.counters.decode_errors == 1
    assert len(errors) == 1


def test_own_messages_ignored() -> None:
    r = replica()
    r.local_set("k", 1, T0)
    (out,) = r.take_outgoing()
    assert r.receive(out.data, T0) == ([], [])


def test_counters_snapshot_is_stats() -> None:
    net = cluster("a", "b")
    net.set("a", "k", 1)
    net.settle()
    stats = net.replica("b").counters.snapshot()
    assert isinstance(stats, Stats)
    assert stats.writes_applied == 1
    assert stats.keys == 1
    assert stats.peers_seen == 1
    assert stats.messages_received > 0
    assert stats.bytes_received > 0
    assert net.replica("a").counters.snapshot().messages_sent > 0


def test_next_deadline_moves_forward_after_every_tick() -> None:
    r = replica()
    now = T0
    for _ in range(50):
        due = r.next_deadline()
        assert due >= now
        now = max(now, due)
        r.tick(now)
        assert r.next_deadline() > now
    assert len(r.take_outgoing()) == 50  # one heartbeat per interval
    r.leave(now)
    r.tick(now + OPTS.heartbeat_interval_ms)
    assert r.next_deadline() > now + OPTS.heartbeat_interval_ms
    assert r.take_outgoing() == []  # no heartbeat after leaving


def test_merger_deltas_too_large_to_join_travel_apart() -> None:
    a = replica(value_type=GSet, max_message_size=2048)
    b = replica("b", value_type=GSet, max_message_size=2048)
    a.local_set("s", GSet([f"x{i:04d}" for i in range(150)]), T0)
    a.local_set("s", GSet([f"y{i:04d}" for i in range(150)]), T0)
    out = a.take_outgoing()
    assert len(out) == 2
    assert all(len(o.data) <= 2048 for o in out)
    for o in out:
        b.receive(o.data, T0)
    assert b.values["s"] == a.values["s"]
    assert len(b.values["s"]) == 300


def _deliver_until_quiet(
    replicas: dict[str, Replica[Any]], now: int, events: list[Any] | None = None
) -> list[tuple[str, Any]]:
    """Hand every queued message to its receivers (no ticks); return what was sent.

    The events the receivers returned are appended to ``events``.
    """
    sent: list[tuple[str, Any]] = []
    queue = [(node, out) for node, r in replicas.items() for out in r.take_outgoing()]
    while queue:
        src, out = queue.pop(0)
        sent.append((src, wire.decode(out.data, max_size=1 << 20)))
        for dst, r in replicas.items():
            if dst != src and out.to in (None, dst):
                got, _ = r.receive(out.data, now)
                if events is not None:
                    events.extend(got)
                queue.extend((dst, o) for o in r.take_outgoing())
    return sent


def test_hydration_ends_with_a_heartbeat_at_once() -> None:
    # Peers pick sync partners among peers whose heartbeat said synced: a replica that
    # just hydrated says so at once, not one heartbeat interval later.
    a = replica("a")
    a.start_sync(T0, hydrate=True)
    a.tick(T0 + OPTS.hello_window_ms)  # nobody answered: synced alone
    a.local_set("k", 1, T0 + OPTS.hello_window_ms)
    a.take_outgoing()
    b = replica("b")
    b.tick(T0)  # b's first periodic heartbeat (not synced yet) is out of the way
    b.take_outgoing()
    now = T0 + OPTS.hello_window_ms + 1
    b.start_sync(now, hydrate=True)
    sent = _deliver_until_quiet({"a": a, "b": b}, now)  # no tick: no periodic heartbeat
    assert b.synced
    assert b.values == {"k": 1}
    beats = [m for src, m in sent if src == "b" and isinstance(m, wire.Heartbeat)]
    assert [m.synced for m in beats] == [True]


@pytest.mark.parametrize("data_events", [True, False])
def test_data_events_only_when_the_driver_wants_them(data_events: bool) -> None:
    a = replica("a")
    a.start_sync(T0, hydrate=True)
    now = T0 + OPTS.hello_window_ms
    a.tick(now)
    for i in range(50):
        a.local_set(f"k{i}", i, now)
    a.local_delete("k0", now)
    a.take_outgoing()
    b = replica("b")
    b.data_events = data_events
    b.start_sync(now, hydrate=True)
    events: list[Any] = []
    _deliver_until_quiet({"a": a, "b": b}, now, events)  # hydration
    a.local_delete("k1", now)
    _deliver_until_quiet({"a": a, "b": b}, now, events)  # a broadcast delete
    assert b.synced
    assert len(b.values) == 48
    assert kinds(events) == (["SET"] * 49 + ["DELETE"] if data_events else [])
    assert "a" in [ev.key for ev in events if ev.kind is EventKind.NODE_UP]  # still told


def test_serving_a_hydration_counts_as_contact_so_no_second_exchange_follows() -> None:
    # Regression: "a" answered "new"'s hydration, then the first-contact rule (the lower
    # id asks) made "a" start a full digest exchange with "new" at once, digesting every
    # key twice more; hydrating 100k keys took 1.1 s instead of 0.66 s.
    net = cluster("a")
    a = net.replica("a")
    for i in range(50):
        a.local_set(f"k{i}", i, net.now)
    net.settle()
    net.add("new")
    net.settle()
    net.settle(4 * OPTS.heartbeat_interval_ms)  # heartbeats: both synced, first contact
    assert net.replica("new").values == a.values
    assert a.counters.refreshes == 0, "the responder started a redundant exchange"
    assert net.replica("new").counters.refreshes == 1


def test_set_many_validates_every_value_before_applying_any() -> None:
    r = replica(max_message_size=2048)
    with pytest.raises(InvalidValue, match="limit of one message"):
        r.local_set_many([("small", 1), ("huge", "x" * 4096)], T0)
    assert r.values == {}
    assert r.take_outgoing() == []
    with pytest.raises(InvalidValue):
        replica(value_type=GSet).local_set_many([("a", GSet([1])), ("b", 3)], T0)
    events = r.local_set_many([("a", 1), ("b", 2)], T0)
    assert [(ev.key, ev.value) for ev in events] == [("a", 1), ("b", 2)]
    assert r.values == {"a": 1, "b": 2}
