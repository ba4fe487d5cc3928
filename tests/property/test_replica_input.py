"""Whatever arrives on a store's topics, well-formed or not, Replica.receive never raises."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from podshare.crdt import GSet, Stamp, merger_for
from podshare.exceptions import PodshareError
from podshare.store import wire
from podshare.store.codec import value_codec
from podshare.store.replica import Replica, ReplicaOptions

T0 = 1_700_000_000_000
NODES = st.sampled_from(["a", "b", "c", "me"])
NONCES = st.sampled_from([1, 2, 3])
OPTIONS = ReplicaOptions(hello_window_ms=100, sync_timeout_ms=300, max_message_size=4096)

stamps = st.builds(
    Stamp, st.sampled_from([0, 1, T0 - 10**9, T0, T0 + 10**9, 2**53 - 1]), st.integers(0, 3), NODES
)
values = st.sampled_from([b"1", b'"x"', b"\x81\xa1e\x91\xa1x", b"\x90", b"not json", b"\xc1"])


@st.composite
def entries(draw: st.DrawFn) -> wire.WireEntry:
    """Entries of every shape, consistent with their flags or not."""
    flags = draw(st.integers(0, 15))
    stamp = draw(stamps)
    value = None if flags & wire.TOMBSTONE and draw(st.booleans()) else draw(values)
    with_epoch = flags & wire.MERGED and draw(st.booleans())
    epoch_origin = draw(st.sampled_from(["", "a"])) if with_epoch else None
    return wire.WireEntry(
        draw(st.sampled_from(["k1", "k2", "k3"])),
        stamp.time,
        stamp.counter,
        stamp.origin,
        flags,
        value,
        stamp.time if with_epoch else None,
        stamp.counter if with_epoch else None,
        epoch_origin,
        draw(NONCES) if flags & wire.EPHEMERAL and draw(st.booleans()) else None,
        draw(st.sampled_from([T0 - 1, T0 + 100])) if flags & wire.EXPIRING else None,
    )


entry_lists = st.lists(entries(), max_size=4)
ids = st.integers(0, 3)
buckets = st.lists(st.integers(0, 15), max_size=3, unique=True)
messages = st.one_of(
    st.builds(wire.Writes, NODES, NONCES, st.integers(0, T0 + 10**9), entry_lists),
    st.builds(wire.Hello, NODES, NONCES, st.just(T0), st.booleans(), st.booleans(), ids),
    st.builds(wire.HelloAck, NODES, NONCES, st.just(T0), st.booleans(), ids, ids),
    st.builds(wire.Leave, NODES, NONCES),
    st.builds(lambda s, n, i: wire.SyncRequest(s, n, i, 0, None, b""), NODES, NONCES, ids),
    st.builds(lambda s, n, i: wire.SyncRequest(s, n, i, 1, None, bytes(128)), NODES, NONCES, ids),
    st.builds(
        lambda s, n, i, b: wire.SyncRequest(s, n, i, 2, sorted(b), bytes(8 * len(b))),
        NODES,
        NONCES,
        ids,
        buckets,
    ),
    st.builds(
        wire.SyncReply,
        NODES,
        NONCES,
        ids,
        st.integers(0, 3),
        st.integers(0, 3),
        buckets,
        buckets,
        st.none() | st.lists(st.tuples(NODES, st.integers(0, T0)), max_size=2),
    ),
    st.builds(
        lambda s, n, i, p, last, keys: wire.SyncKeys(
            s, n, i, p, last, [wire.KeySummary(k, T0, 0, "a", 5) for k in keys]
        ),
        NODES,
        NONCES,
        ids,
        ids,
        st.booleans(),
        st.lists(st.sampled_from(["k1", "k2", "k3"]), max_size=3),
    ),
    st.builds(
        wire.SyncWant,
        NODES,
        NONCES,
        ids,
        ids,
        st.booleans(),
        st.lists(st.sampled_from(["k1", "k2", "k3"]), max_size=3),
    ),
    st.builds(
        wire.SyncData,
        NODES,
        NONCES,
        ids,
        st.integers(0, 1),
        ids,
        st.booleans(),
        entry_lists,
        st.none() | st.lists(st.tuples(NODES, st.integers(0, T0)), max_size=2),
    ),
    st.builds(
        wire.SyncAck,
        NODES,
        NONCES,
        ids,
        st.integers(0, 3),
        ids,
        st.lists(st.tuples(st.sampled_from(["k1", "k2"]), st.just(T0), st.just(0), NODES)),
    ),
    st.builds(wire.Bye, NODES, NONCES, st.just(bytes(16))),
)
inputs = messages.map(wire.encode) | st.binary(max_size=64)


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from([None, GSet]),
    st.lists(st.tuples(inputs, st.integers(0, 500), st.booleans()), max_size=25),
)
def test_receive_never_raises(value_type: Any, script: list[tuple[bytes, int, bool]]) -> None:
    replica: Replica[Any] = Replica(
        "t",
        "me",
        1,
        value_codec(value_type, None),
        merger=merger_for(value_type),
        options=OPTIONS,
        now=T0,
        rng=random.Random(0),
    )
    replica.hydrate(T0)
    replica.cluster_evidence(T0, ready=True, others=None)
    now = T0
    for data, dt, tick in script:
        now += dt
        replica.receive(data, now)
        if tick:
            replica.tick(now)
            replica.request_sync(now)
        assert all(isinstance(e, PodshareError) for e in replica.errors_received())
        for out in replica.data_to_send():
            assert len(out.data) <= OPTIONS.max_message_size
            wire.decode(out.data, max_size=OPTIONS.max_message_size)  # it sends valid messages
        replica.events_received()
        replica.syncs_finished()
        assert set(replica.values) <= {"k1", "k2", "k3"}
        stats = replica.snapshot_stats()
        assert stats.keys == len(replica.values)
        assert len(replica.state.entries) <= 3
