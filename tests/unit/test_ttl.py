"""Per-key TTL (issue 17): expiry at the stamp-derived instant, across clock skew and
cold restarts, driven through the sans-I/O replica with explicit times.

An expiring entry is written with ``expires = stamp.time + ttl``; every replica turns it
into the same tombstone (its own stamp) when its clock reaches ``expires``. These tests
pin down what that promises when wall clocks disagree and when state is persisted.
"""

from __future__ import annotations

import random
from typing import Any

import anyio
import pytest

from podshare import EventKind, Store
from podshare.persistence import MemoryPersistence
from podshare.persistence.base import PersistedState, decode_record
from podshare.store import wire
from podshare.store.codec import value_codec
from podshare.store.replica import Replica, ReplicaOptions
from podshare.transport import MemoryTransport

T0 = 1_700_000_000_000
OPTS = ReplicaOptions(tombstone_ttl_ms=60_000, max_clock_skew_ms=60_000)
SKEW = 3_000  # wall clocks this far apart: well within max_clock_skew
TTL = 1_000


def replica(node: str, now: int = T0) -> Replica[Any]:
    return Replica(
        "t",
        node,
        sum(map(ord, node)),
        value_codec(None, None),
        options=OPTS,
        now=now,
        rng=random.Random(node),
    )


def send(src: Replica[Any], dst: Replica[Any], now: int) -> None:
    """Hand ``src``'s broadcasts to ``dst``, which receives them at its own ``now``."""
    for out in src.data_to_send():
        if out.to is None:
            dst.receive(out.data, now)


def kinds(r: Replica[Any]) -> list[str]:
    return [
        ev.kind.name
        for ev in r.events_received()
        if ev.kind in (EventKind.SET, EventKind.DELETE, EventKind.EXPIRED)
    ]


# --- clock skew ----------------------------------------------------------------------------


def test_a_writer_behind_the_fleet_stamps_its_ttl_at_the_fleets_time() -> None:
    """A slow clock that has heard from the fleet writes entries that live their whole
    ttl on faster replicas, rather than arriving already expired."""
    fast, slow = replica("fast", T0 + SKEW), replica("slow")
    fast.local_set("hello", 1, T0 + SKEW)
    send(fast, slow, T0)  # slow's clock observes fast's stamp
    slow.local_set("session", "s1", T0 + 1, ttl_ms=TTL)  # TTL < SKEW
    (write,) = [wire.decode(o.data, max_size=1 << 24) for o in slow.data_to_send()]
    assert isinstance(write, wire.Writes)
    (entry,) = write.entries
    assert entry.expires is not None
    assert entry.expires == entry.time + TTL >= T0 + SKEW + TTL
    fast.receive(wire.encode(write), T0 + SKEW + 1)
    kinds(fast)
    assert fast.values["session"] == "s1"  # not expired on arrival
    fast.tick(entry.expires - 1)
    assert "session" in fast.values
    fast.tick(entry.expires)
    assert "session" not in fast.values
    assert kinds(fast) == ["EXPIRED"]


def test_an_entry_from_a_clock_ahead_expires_at_its_stamp_instant_not_earlier() -> None:
    """Written by a clock SKEW ahead: a replica behind keeps it until its own clock
    reaches the stamp-derived instant, and both end with the same tombstone."""
    fast, slow = replica("fast", T0 + SKEW), replica("slow")
    fast.local_set("session", "s1", T0 + SKEW, ttl_ms=TTL)
    send(fast, slow, T0)
    expires = T0 + SKEW + TTL
    kinds(slow)
    assert slow.snapshot_stats().clock_skew_reports == 0  # within max_clock_skew
    slow.tick(T0 + TTL)  # the ttl has passed on slow's clock, the stamp instant has not
    assert slow.values == {"session": "s1"}
    for r in (fast, slow):
        kinds(r)
        r.tick(expires - 1)
        assert r.values == {"session": "s1"}
        r.tick(expires)
        assert r.values == {}
        assert kinds(r) == ["EXPIRED"]
        assert r.snapshot_stats().expired == 1
    assert fast.tombstones() == slow.tombstones()


def test_an_expired_entry_arriving_late_is_never_resurrected_by_an_older_value() -> None:
    a, b = replica("a"), replica("b")
    a.local_set("k", "old", T0)
    old = a.data_to_send()
    a.local_set("k", "expiring", T0 + 1, ttl_ms=TTL)
    a.tick(T0 + 1 + TTL)
    assert a.values == {}
    send(a, b, T0 + 5_000)  # the expiring write, after its end
    for out in old:  # then the older write, delivered out of order
        b.receive(out.data, T0 + 5_000)
    assert b.values == {}
    assert kinds(b) == []  # expired on the way: nothing to announce
    assert b.tombstones() == a.tombstones()


# --- persistence -------------------------------------------------------------------------


def _persisted(r: Replica[Any], now: int) -> PersistedState:
    records, meta = r.persist_changes(now, everything=True)
    return PersistedState({k: v for k, v in records.items() if v is not None}, meta)


def test_an_expired_entry_is_persisted_as_its_tombstone_never_its_value() -> None:
    a = replica("a")
    a.track_changes()
    a.local_set("session", "secret", T0, ttl_ms=TTL)
    a.local_set("plain", "kept", T0)
    before = _persisted(a, T0 + 1)
    assert decode_record(before.records["session"]).flags & wire.EXPIRING
    a.tick(T0 + TTL)
    after = _persisted(a, T0 + TTL + 1)
    record = decode_record(after.records["session"])
    assert record.flags & wire.TOMBSTONE
    assert record.value is None
    assert b"secret" not in after.records["session"]


def test_a_cold_restart_after_the_expiry_does_not_bring_the_entry_back() -> None:
    a = replica("a")
    a.track_changes()
    a.local_set("session", "s1", T0, ttl_ms=TTL)
    a.local_set("plain", "kept", T0)
    state = _persisted(a, T0 + 1)  # saved while the entry was alive; then every pod died
    restarted = replica("a2", T0 + 10 * TTL)
    restarted.load(state, T0 + 10 * TTL)
    assert restarted.values == {"plain": "kept"}
    assert "session" in restarted.tombstones()  # it stays deleted against late copies
    assert kinds(restarted) == []


def test_a_restart_before_the_expiry_still_expires_at_the_same_instant() -> None:
    a = replica("a")
    a.track_changes()
    a.local_set("session", "s1", T0, ttl_ms=TTL)
    state = _persisted(a, T0 + 1)
    restarted = replica("a2", T0 + TTL // 2)
    restarted.load(state, T0 + TTL // 2)
    assert restarted.values == {"session": "s1"}
    restarted.tick(T0 + TTL - 1)
    assert restarted.values == {"session": "s1"}
    restarted.tick(T0 + TTL)
    assert restarted.values == {}
    assert kinds(restarted) == ["EXPIRED"]


@pytest.mark.anyio
async def test_through_a_store_an_expired_key_stays_gone_after_a_cold_restart() -> None:
    backend = MemoryPersistence()
    options: dict[str, Any] = {"persistence": backend, "anti_entropy_interval": 3600.0}
    async with MemoryTransport() as tr, Store[str]("ttl", tr, **options) as store:
        async with store.watch(key="session") as events:
            await store.set("session", "s1", ttl=0.2)
            await store.set("plain", "kept")
            with anyio.fail_after(5):
                assert (await anext(events)).kind is EventKind.SET
                assert (await anext(events)).kind is EventKind.EXPIRED
        assert store.stats().expired == 1
    async with MemoryTransport() as tr, Store[str]("ttl", tr, **options) as again:
        assert again.snapshot() == {"plain": "kept"}
        assert again.stats().expired == 0  # nothing came back to expire a second time
