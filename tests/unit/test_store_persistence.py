"""A store's state across full restarts, on MemoryPersistence (issue 14).

Each "pod" is a Store on its own MemoryTransport of one MemoryNetwork; a cold restart is
every pod closing (or being abandoned without a flush) and a new one opening on the
same persistence. Waits are on the backend's own notifications (``wait_until``) or
``eventually``, never on sleeps.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import pytest

from podshare import Store
from podshare.crdt import GSet, PNCounter
from podshare.exceptions import ConfigurationError, DecodeError, PersistenceError
from podshare.persistence import MemoryPersistence
from podshare.persistence.base import decode_record
from podshare.transport import MemoryNetwork, MemoryTransport
from tests._support import ErrorLog, eventually

pytestmark = pytest.mark.anyio

FAST: dict[str, Any] = {
    "anti_entropy_interval": 3600.0,
    "hydrate_timeout": 2.0,
    "persist_interval": 0.02,
}


@asynccontextmanager
async def pod(
    net: MemoryNetwork,
    name: str,
    persistence: MemoryPersistence | None,
    tp: Any = int,
    store: str = "app",
    **options: Any,
) -> AsyncIterator[Store[Any]]:
    async with AsyncExitStack() as stack:
        tr = await stack.enter_async_context(MemoryTransport(network=net, name=name))
        s: Store[Any] = Store(
            store,
            tr,
            node_id=name,
            type=tp,
            persistence=persistence if persistence is not None else False,
            **{**FAST, **options},
        )
        yield await stack.enter_async_context(s)


def persisted_keys(p: MemoryPersistence, store: str = "app") -> set[str]:
    """The keys whose persisted record holds a live (not deleted) value."""
    out = set()
    for key, data in p.records(store).items():
        entry = decode_record(data)
        if not entry.flags & 1:  # TOMBSTONE
            out.add(key)
    return out


async def test_a_cold_restart_brings_back_live_keys_and_keeps_deletes_deleted() -> None:
    p = MemoryPersistence()
    net = MemoryNetwork()
    async with pod(net, "a", p) as a, pod(net, "b", p) as b:
        await a.set_many({"x": 1, "y": 2, "gone": 3})
        await b.set("z", 26)
        await eventually(lambda: "gone" in b, stores=[b])
        await b.delete("gone")
        await eventually(lambda: "gone" not in a, stores=[a])
    # Every pod stopped; a new one (another node id) starts on the same backend.
    async with pod(MemoryNetwork(), "c", p) as c:
        assert c.synced
        assert c.snapshot() == {"x": 1, "y": 2, "z": 26}
        assert c.stats().persist_loaded >= 4  # the delete's tombstone came back too
        assert "gone" not in c


async def test_a_merged_value_comes_back_as_the_union_of_every_pods_adds() -> None:
    p = MemoryPersistence()
    net = MemoryNetwork()
    async with (
        pod(net, "a", p, GSet[str]) as a,
        pod(net, "b", p, GSet[str]) as b,
    ):
        await a.update("tags", lambda s: s.add("from-a"))
        await b.update("tags", lambda s: s.add("from-b"))
        await eventually(lambda: len(a.get("tags") or ()) == 2, stores=[a])
        await a.set("hits", GSet(["x"]))
    async with pod(MemoryNetwork(), "c", p, GSet[str]) as c:
        assert set(c.get("tags") or ()) == {"from-a", "from-b"}


async def test_counters_keep_their_merged_value() -> None:
    p = MemoryPersistence()
    net = MemoryNetwork()
    async with pod(net, "a", p, PNCounter) as a, pod(net, "b", p, PNCounter) as b:
        await a.update("n", lambda c: c.increment("a", 5))
        await b.update("n", lambda c: c.increment("b", 2))
        await eventually(lambda: a.get("n") is not None and a.get("n").value == 7, stores=[a])  # type: ignore[union-attr]
    async with pod(MemoryNetwork(), "c", p, PNCounter) as c:
        n = c.get("n")
        assert n is not None
        assert n.value == 7


async def test_ephemeral_entries_are_never_persisted() -> None:
    p = MemoryPersistence()
    async with pod(MemoryNetwork(), "a", p, str) as a:
        await a.set("route:u1", "a", ephemeral=True)
        await a.set("flag", "on")
        await p.wait_until(lambda: "flag" in p.records("app"))
        assert set(p.records("app")) == {"flag"}  # while the pod lives (and could crash)
    # Closing retracts the route; at most its delete is persisted, never its value.
    assert persisted_keys(p) == {"flag"}
    async with pod(MemoryNetwork(), "b", p, str) as b:
        assert b.snapshot() == {"flag": "on"}


async def test_a_clean_close_flushes_what_the_interval_had_not_written() -> None:
    p = MemoryPersistence()
    async with pod(MemoryNetwork(), "a", p, persist_interval=3600.0) as a:
        await a.set_many({f"k{i}": i for i in range(50)})
        assert p.records("app") == {}  # the interval has not come
    assert persisted_keys(p) == {f"k{i}" for i in range(50)}


async def test_what_was_written_before_the_interval_survives_an_abandoned_pod() -> None:
    """A pod that dies without closing loses at most its last interval: whatever the
    backend acknowledged stays."""
    p = MemoryPersistence()
    async with pod(MemoryNetwork(), "a", p) as a:
        await a.set_many({f"early{i}": i for i in range(20)})
        await p.wait_until(lambda: persisted_keys(p) >= {f"early{i}" for i in range(20)})
        p.fail_writes = True  # from here on, nothing reaches the backend (the pod "dies")
        await a.set("late", 1)
    async with pod(MemoryNetwork(), "b", p) as b:
        assert {f"early{i}" for i in range(20)} <= set(b)
        assert "late" not in b  # written after the last acknowledged write: lost


async def test_a_backend_that_is_down_never_blocks_writes_and_catches_up() -> None:
    p = MemoryPersistence()
    errors = ErrorLog()
    async with pod(MemoryNetwork(), "a", p, on_error=errors) as a:
        p.fail_writes = True
        for i in range(10):
            await a.set(f"k{i}", i)  # never waits for the backend
        assert a.get("k9") == 9
        await errors.wait_for(1)
        assert isinstance(errors.errors[0], PersistenceError)
        await eventually(lambda: a.stats().persist_errors >= 2, stores=[a], poll=0.02)
        assert len(errors) == 1  # reported once per outage, counted every time
        p.fail_writes = False
        await p.wait_until(lambda: persisted_keys(p) == {f"k{i}" for i in range(10)})


async def test_a_backend_that_cannot_load_leaves_the_store_working() -> None:
    p = MemoryPersistence()
    p.fail_loads = True
    errors = ErrorLog()
    async with pod(MemoryNetwork(), "a", p, on_error=errors) as a:
        assert a.synced
        await a.set("k", 1)
        assert a.stats().persist_errors >= 1
        assert any(isinstance(e, PersistenceError) for e in errors.errors)


async def test_corrupt_records_are_skipped_counted_and_reported() -> None:
    p = MemoryPersistence()
    async with pod(MemoryNetwork(), "a", p) as a:
        await a.set_many({"good": 1, "bad": 2})
    p.corrupt("app", "bad")
    p.corrupt_meta("app")
    errors = ErrorLog()
    async with pod(MemoryNetwork(), "b", p, on_error=errors) as b:
        assert b.snapshot() == {"good": 1}
        assert b.stats().persist_corrupt == 2
        assert sum(isinstance(e, DecodeError) for e in errors.errors) == 2
        assert any("'bad'" in str(e) for e in errors.errors)


async def test_old_persisted_state_meeting_a_live_fleet_loses_to_newer_values() -> None:
    """A pod's own volume holds old values; the fleet moved on while it was away: the
    newer values win on every replica, the old ones never come back."""
    own = MemoryPersistence(shared=False)
    net = MemoryNetwork()
    async with pod(net, "b", None) as b:
        async with pod(net, "a", own) as a:
            await a.set_many({"x": 1, "y": 1, "dropped": 1})
            await eventually(lambda: b.get("y") == 1, stores=[b])
        # a is away; the fleet writes newer values and deletes one.
        await b.set_many({"x": 2, "y": 2})
        await b.delete("dropped")
        async with pod(net, "a", own) as a:
            await eventually(lambda: a.get("x") == 2 and a.get("y") == 2, stores=[a])
            assert "dropped" not in a
            assert b.snapshot() == {"x": 2, "y": 2}
            assert a.snapshot() == b.snapshot()


async def test_loaded_state_never_overrides_newer_live_state_on_open() -> None:
    """The persisted copy is joined as a CRDT: opening with an old copy beside a live
    replica ends with the live (newer) values everywhere."""
    p = MemoryPersistence()
    async with pod(MemoryNetwork(), "old", p) as old:
        await old.set("k", 1)
    net = MemoryNetwork()
    async with pod(net, "live", None) as live:
        await live.set("k", 2)
        async with pod(net, "joiner", p) as joiner:
            await eventually(lambda: joiner.get("k") == 2, stores=[joiner])
            await anyio.lowlevel.checkpoint()
            assert live.get("k") == 2


async def test_one_pod_writes_a_shared_backend() -> None:
    p = MemoryPersistence(shared=True)
    net = MemoryNetwork()
    async with pod(net, "a", p) as a, pod(net, "b", p) as b:
        for i in range(5):
            await a.set(f"k{i}", i)
            await b.set(f"j{i}", i)
        expected = {f"k{i}" for i in range(5)} | {f"j{i}" for i in range(5)}
        await p.wait_until(lambda: persisted_keys(p) == expected)
        assert a.stats().persist_writes >= 1  # the elected writer: the lowest node id
        assert b.stats().persist_writes == 0


async def test_after_a_gap_the_writer_rewrites_a_shared_backend_that_came_back_empty() -> None:
    """A Redis restarted without its own persistence comes back empty: the transport's
    gap makes the writer rewrite the whole state, not only what changed since."""
    p = MemoryPersistence(shared=True)
    net = MemoryNetwork()
    async with pod(net, "a", p) as a:
        await a.set_many({f"k{i}": i for i in range(10)})
        await p.wait_until(lambda: len(persisted_keys(p)) == 10)
        p.clear("app")
        net.disconnect("a")
        net.reconnect("a")  # a gap, as after the server restarted
        await a.set("after", 1)
        await p.wait_until(lambda: persisted_keys(p) == {f"k{i}" for i in range(10)} | {"after"})


async def test_persistence_true_is_refused_with_a_hint() -> None:
    async with MemoryTransport() as tr:
        with pytest.raises(ConfigurationError, match="MemoryPersistence"):
            Store("app", tr, persistence=True)


async def test_a_writer_whose_load_failed_joins_the_backend_instead_of_wiping_it() -> None:
    """Loading at open failed (the backend was down): when the store later takes over
    writing, it joins what the backend holds (watchers see it) and keeps it there."""
    p = MemoryPersistence()
    async with pod(MemoryNetwork(), "old", p) as old:
        await old.set_many({"x": 1, "y": 2})
    p.fail_loads = True
    async with pod(MemoryNetwork(), "new", p) as new:
        assert new.snapshot() == {}
        async with new.watch() as events:
            p.fail_loads = False
            await new.set("z", 3)
            await p.wait_until(lambda: persisted_keys(p) == {"x", "y", "z"})
            await eventually(lambda: new.snapshot() == {"x": 1, "y": 2, "z": 3}, stores=[new])
            seen = set()
            with anyio.fail_after(5):
                async for event in events:
                    seen.add(event.key)
                    if seen >= {"x", "y"}:
                        break
