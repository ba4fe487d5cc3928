"""Whatever well-formed or malformed messages arrive, Replica.receive never raises."""

from __future__ import annotations

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
OPTIONS = ReplicaOptions(heartbeat_interval_ms=100, down_after_ms=300, max_message_size=4096)

stamps = st.builds(
    Stamp,
    st.integers(0, T0 + 10**9) | st.just(T0),
    st.integers(0, 5),
    NODES,
)
values = st.sampled_from([b"1", b'"x"', b"\x91\xa1x", b"\x90", b"not json", b"\xc1", b"[1,2]"])


@st.composite
def entries(draw: st.DrawFn) -> wire.WireEntry:
    flags = draw(st.integers(0, 7))
    tomb = flags & wire.TOMBSTONE
    merged = flags & wire.MERGED
    value = None if tomb else draw(values)
    epoch = draw(stamps) if merged else None
    return wire.make_entry(
        draw(st.sampled_from(["k1", "k2", "k3"])), draw(stamps), flags, value, epoch
    )


entry_lists = st.lists(entries(), max_size=5)
messages = st.one_of(
    st.builds(wire.Writes, NODES, entry_lists),
    st.builds(
        wire.Hello, NODES, st.integers(0, T0), st.booleans(), st.integers(0, T0), st.integers(0, 9)
    ),
    st.builds(
        wire.Heartbeat,
        NODES,
        st.integers(0, T0),
        st.booleans(),
        st.integers(0, T0),
        st.integers(0, 9),
    ),
    st.builds(wire.Leave, NODES),
    st.builds(
        lambda sender, sid, n: wire.SyncRequest(sender, sid, False, n, bytes(8 * n), T0),
        NODES,
        st.integers(0, 3),
        st.sampled_from([1, 2, 4]),
    ),
    st.builds(
        wire.SyncRequest,
        NODES,
        st.integers(0, 3),
        st.just(True),
        st.just(1),
        st.just(b""),
        st.integers(0, T0),
    ),
    st.builds(
        lambda sender, sid, total, refused, buckets, es: wire.SyncData(
            sender, sid, 0, total, refused, T0, 4, buckets, es
        ),
        NODES,
        st.integers(0, 3),
        st.integers(1, 3),
        st.booleans(),
        st.none() | st.lists(st.integers(0, 3), max_size=4),
        entry_lists,
    ),
    st.builds(wire.SyncPush, NODES, st.integers(0, 3), entry_lists),
)
inputs = messages.map(wire.encode) | st.binary(max_size=64)


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from([None, GSet]),
    st.lists(st.tuples(inputs, st.integers(0, 2_000), st.booleans()), max_size=25),
)
def test_receive_never_raises(value_type: Any, script: list[tuple[bytes, int, bool]]) -> None:
    replica: Replica[Any] = Replica(
        "t",
        "me",
        value_codec(value_type, None),
        merger=merger_for(value_type),
        options=OPTIONS,
        now=T0,
    )
    replica.start_sync(T0, hydrate=True)
    now = T0
    for data, dt, tick in script:
        now += dt
        _events, errors = replica.receive(data, now)
        assert all(isinstance(e, PodshareError) for e in errors)
        if tick:
            replica.tick(now)
            replica.start_sync(now)
        replica.take_outgoing()
        assert set(replica.values) <= {"k1", "k2", "k3"}
        assert replica.counters.snapshot().keys == len(replica.values)
