"""A write made after seeing another write orders after it, even within one millisecond.

The replica's clock must move past the *whole* stamp of what it receives (time, counter
and origin), whether the entries come in a live batch or in a sync exchange.
"""

from __future__ import annotations

from podshare.store.codec import value_codec
from podshare.store.replica import Replica

T = 1_000  # every call happens in this one millisecond


def _pair() -> tuple[Replica[object], Replica[object]]:
    # "a" < "b": a tie on (time, counter) would go to b.
    a: Replica[object] = Replica("clock", "a", 1, value_codec(None, None), now=T)
    b: Replica[object] = Replica("clock", "b", 2, value_codec(None, None), now=T)
    return a, b


def _pump(*replicas: Replica[object]) -> None:
    """Deliver every queued message (broadcasts to all others, inbox ones to their node)."""
    for _ in range(100):
        moved = False
        for sender in replicas:
            for out in sender.data_to_send():
                moved = True
                for receiver in replicas:
                    if receiver is not sender and out.to in (None, receiver.node_id):
                        receiver.receive(out.data, T)
        if not moved:
            return
    raise AssertionError("the replicas kept talking")


def test_a_delete_after_seeing_a_live_write_wins_in_the_same_millisecond() -> None:
    a, b = _pair()
    b.local_set("k", "first", T)
    b.local_set("k", "second", T)  # stamp (T, 1, "b")
    _pump(a, b)
    assert a.values == {"k": "second"}
    a.local_delete("k", T)  # made after a saw b's write: it must win everywhere
    _pump(a, b)
    assert a.values == {} == b.values


def test_a_write_after_a_sync_wins_in_the_same_millisecond() -> None:
    a, b = _pair()
    b.hydrate(T)
    b.cluster_evidence(T, ready=True, others=0)  # alone: synced, so it serves syncs
    assert b.synced
    b.local_set("k", "first", T)
    b.local_set("k", "second", T)  # stamp (T, 1, "b"); a has not seen it yet
    b.data_to_send()  # that broadcast is lost: only a sync can carry it
    _pump(a, b)
    assert a.request_sync(T, peer="b") == "b"
    _pump(a, b)
    assert a.values == {"k": "second"}
    a.local_set("k", "after the sync", T)
    _pump(a, b)
    assert a.values == {"k": "after the sync"} == b.values


def test_a_write_after_an_entry_from_a_clock_ahead_wins_everywhere() -> None:
    """The clock follows a remote stamp only to max_clock_skew, but a write made after
    an entry stamped further ahead (accepted: within twice the skew) still wins: it is
    stamped just after that entry, on every replica, and the clock is not dragged."""
    from podshare.crdt import Stamp
    from podshare.store import wire

    a, b = _pair()
    ahead = T + 90_000  # beyond max_clock_skew (60 s), within twice it
    forged = wire.make_entry("k", Stamp(ahead, 3, "c"), 0, b'"from a fast clock"')
    batch = wire.encode(wire.Writes("c", 9, ahead, [forged]))
    a.receive(batch, T)
    assert a.values == {"k": "from a fast clock"}
    a.local_set("k", "after it", T)
    a.local_delete("gone", T)
    assert a.values == {"k": "after it"}
    b.receive(batch, T)  # b saw the entry from the fast clock too
    _pump(a, b)
    assert a.values == b.values == {"k": "after it"}
    a.local_set("fresh", 1, T)  # a key with nothing ahead: the clock's own stamp
    _pump(a, b)
    assert b.values["fresh"] == 1
