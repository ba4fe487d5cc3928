"""Sync you can trust, at the store level: readiness, gaps, identities, clocks, sizes.

Each test names the promise of issue 12 (or the Go-library parity call of issue 17) it
checks, over MemoryTransports on one MemoryNetwork (each transport is a "process").
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import pytest

from podshare import EventKind, Store
from podshare.crdt import GSet, Stamp
from podshare.exceptions import (
    ClosedError,
    DuplicateNodeId,
    InvalidValue,
    NotSynced,
    ProtocolError,
    StoreNotEmpty,
)
from podshare.store import wire
from podshare.store.wire import make_entry
from podshare.transport import MemoryNetwork, MemoryTransport
from tests._support import ErrorLog, eventually

pytestmark = pytest.mark.anyio

# Long anti-entropy: whatever repairs a peer in these tests, the periodic round did not.
QUIET: dict[str, Any] = {"anti_entropy_interval": 3600.0, "hydrate_timeout": 5.0}


@asynccontextmanager
async def pods(net: MemoryNetwork, *names: str, **options: Any) -> AsyncIterator[list[Store[Any]]]:
    """One store "app" per name, each on its own transport (its own process)."""
    async with AsyncExitStack() as stack:
        stores = []
        for name in names:
            tr = await stack.enter_async_context(MemoryTransport(network=net, name=name))
            store: Store[Any] = Store("app", tr, node_id=name, **{**QUIET, **options})
            stores.append(await stack.enter_async_context(store))
        yield stores


# --- readiness ---------------------------------------------------------------------------


async def test_a_store_opened_beside_a_live_one_holds_its_keys_on_entry() -> None:
    net = MemoryNetwork()
    async with pods(net, "a") as [a]:
        await a.set_many({"x": 1, "y": 2})
        async with pods(net, "b") as [b]:
            # Entering returned: synced means the peer's state is here, not "a timer ran".
            assert b.synced
            assert b.snapshot() == {"x": 1, "y": 2}


async def test_alone_on_a_counting_transport_a_store_is_synced_at_once() -> None:
    async with MemoryTransport() as tr:
        started = time.perf_counter()
        store: Store[Any]
        async with Store("alone", tr, hydrate_timeout=30.0) as store:
            assert store.synced
        # The evidence (nobody else subscribes) decided, not the 30 s bound; this is a
        # guard against waiting for the timeout, not a timing assertion of the design.
        assert time.perf_counter() - started < 30.0


async def test_require_sync_raises_when_a_peer_exists_but_never_hands_its_state_over() -> None:
    net = MemoryNetwork()
    async with (
        MemoryTransport(network=net, name="silent") as silent,
        silent.subscribe("ps/app"),  # another process subscribes, but answers nothing
        MemoryTransport(network=net, name="b") as tb,
    ):
        store: Store[Any] = Store("app", tb, hydrate_timeout=0.3, require_sync=True)
        with pytest.raises(NotSynced, match="hydrate_timeout"):
            async with store:
                pytest.fail("must not enter")  # pragma: no cover
        assert store.state == "closed"


async def test_without_require_sync_the_store_opens_unsynced_and_keeps_trying() -> None:
    net = MemoryNetwork()
    async with (
        MemoryTransport(network=net, name="silent") as silent,
        silent.subscribe("ps/app"),
        MemoryTransport(network=net, name="b") as tb,
        Store[Any]("app", tb, node_id="b", hydrate_timeout=0.2) as b,
    ):
        assert not b.synced
        # A real replica appears later; it waits for the silent one too, then, both
        # unsynced, the lower node id ("a") starts the cluster's state and b syncs from it.
        async with pods(net, "a", hydrate_timeout=0.2) as [a]:
            await a.set("late", 1)
            await eventually(lambda: a.synced and b.synced and b.get("late") == 1, stores=[a, b])


# --- gaps --------------------------------------------------------------------------------


async def test_three_successive_gaps_are_each_repaired_without_anti_entropy() -> None:
    net = MemoryNetwork()
    async with pods(net, "a", "b") as [a, b]:
        for round_ in range(3):
            net.partition(["a"], ["b"])
            await a.set(f"apart-{round_}", round_)
            assert f"apart-{round_}" not in b
            net.heal()  # a gap on both transports; nobody calls refresh()
            key = f"apart-{round_}"
            await eventually(lambda: b.get(key) == round_, stores=[b])  # noqa: B023
        assert b.snapshot() == a.snapshot()


async def test_a_gap_repairs_with_one_exchange_not_one_per_peer() -> None:
    net = MemoryNetwork()
    async with pods(net, "a", "b", "c", "d") as stores:
        a, b = stores[0], stores[1]
        before = a.stats().refreshes
        net.partition(["a"], ["b", "c", "d"])
        await b.set("k", 1)  # every replica a could ask holds it
        net.heal()
        await eventually(lambda: a.get("k") == 1, stores=[a])
        # One exchange repaired a: not one per live peer (that would make joins O(N^2)).
        await eventually(lambda: a.stats().refreshes > before, stores=[a])
        assert a.stats().refreshes - before == 1


# --- identity ----------------------------------------------------------------------------


async def test_two_live_processes_with_one_node_id_are_reported_and_still_converge() -> None:
    net = MemoryNetwork()
    errors = ErrorLog()
    async with AsyncExitStack() as stack:
        t1 = await stack.enter_async_context(MemoryTransport(network=net, name="p1"))
        t2 = await stack.enter_async_context(MemoryTransport(network=net, name="p2"))
        t3 = await stack.enter_async_context(MemoryTransport(network=net, name="p3"))
        one = await stack.enter_async_context(
            Store[Any]("app", t1, node_id="same", on_error=errors, **QUIET)
        )
        two = await stack.enter_async_context(Store[Any]("app", t2, node_id="same", **QUIET))
        third = await stack.enter_async_context(Store[Any]("app", t3, node_id="c", **QUIET))
        await eventually(lambda: any(isinstance(e, DuplicateNodeId) for e in errors.errors))
        assert one.stats().duplicate_node_ids >= 1
        # Writes from both processes reach everyone (the echo filter uses the nonce).
        await one.set("from-one", 1)
        await two.set("from-two", 2)
        stores = [one, two, third]
        await eventually(
            lambda: all(s.get("from-one") == 1 and s.get("from-two") == 2 for s in stores),
            stores=stores,
        )


async def test_equal_stamps_with_different_values_resolve_the_same_everywhere() -> None:
    net = MemoryNetwork()
    async with (
        pods(net, "a", "b", "c") as [a, b, c],
        MemoryTransport(network=net, name="forger") as forger,
    ):
        stamp = Stamp(int(time.time() * 1000), 0, "twin")
        # Two processes sharing the node id "twin" wrote the same stamp with two values;
        # each replica hears a different one first.
        for value, nonce in ((b'"blue"', 11), (b'"green"', 12)):
            entry = make_entry("color", stamp, 0, value)
            msg = wire.Writes("twin", nonce, stamp.time, [entry])
            await forger.publish("ps/app", wire.encode(msg))
        stores = [a, b, c]
        await eventually(lambda: all(s.get("color") is not None for s in stores), stores=stores)
        for s in stores:
            await s.refresh()
        # The equal-stamp rule picks one on every replica (the larger bytes): "green".
        await eventually(lambda: all(s.get("color") == "green" for s in stores), stores=stores)


# --- clocks ------------------------------------------------------------------------------


async def test_a_stamp_at_the_top_of_the_wire_range_cannot_halt_replication() -> None:
    net = MemoryNetwork()
    errors = ErrorLog()
    async with (
        pods(net, "a", "b", on_error=errors) as [a, b],
        MemoryTransport(network=net, name="forger") as forger,
    ):
        top = Stamp(2**53 - 1, 2**32 - 1, "evil")
        msg = wire.Writes("evil", 1, 2**53 - 1, [make_entry("k", top, 0, b'"frozen"')])
        await forger.publish("ps/app", wire.encode(msg))
        await eventually(lambda: a.stats().stamps_refused >= 1, stores=[a])
        assert "k" not in a  # refused: more than twice max_clock_skew ahead
        assert any(isinstance(e, ProtocolError) and "'evil'" in str(e) for e in errors.errors)
        # Later writes are stamped normally and replicate as ever.
        await a.set("k", "still works")
        await eventually(lambda: b.get("k") == "still works", stores=[b])
        assert a.version("k") is not None
        assert a.version("k").time < 2**53 - 1  # type: ignore[union-attr]


# --- only transferable state -------------------------------------------------------------


async def test_a_merger_value_too_large_to_travel_is_refused_at_the_write() -> None:
    async with (
        MemoryTransport(max_message_size=4096) as tr,
        Store[GSet[str]]("tags", tr, **QUIET) as store,
    ):
        grown: GSet[str] = GSet()
        for i in range(50):
            grown = grown.add(f"element-{i:04}")
        await store.set("t", grown)
        before = store.get("t")

        async def grow() -> None:
            for i in range(1000):  # small deltas, until the whole state would not fit
                item = f"more-{i:06}-" + "x" * 20
                await store.update("t", lambda s: s.add(item))  # noqa: B023

        with pytest.raises(InvalidValue, match="limit of one message"):
            await grow()
        # Nothing of the refused write was applied; earlier ones stand.
        assert store.get("t") is not None
        assert len(store.get("t")) >= len(before)  # type: ignore[arg-type]


# --- the Go library's calls (issue 17) ---------------------------------------------------


async def test_delete_many_try_set_and_version() -> None:
    net = MemoryNetwork()
    async with pods(net, "a", "b") as [a, b]:
        await a.set_many({"k1": 1, "k2": 2, "k3": 3})
        version = a.version("k1")
        assert version is not None
        assert await a.try_set("k1", 10, version)
        assert not await a.try_set("k1", 11, version)  # the version moved on
        assert a.get("k1") == 10
        assert a.version("missing") is None
        assert await a.try_set("missing", 1, None)  # None: only if absent
        await a.delete_many(["k2", "k3"])
        await eventually(lambda: b.snapshot() == {"k1": 10, "missing": 1}, stores=[b])


async def test_seed_loads_only_into_an_empty_store_and_loses_to_any_write() -> None:
    net = MemoryNetwork()
    async with pods(net, "a") as [a]:
        events: list[Any] = []
        async with a.watch() as watch:
            a.seed({"s1": "seeded", "s2": "seeded"})
            await anyio.lowlevel.checkpoint()
            with pytest.raises(anyio.WouldBlock):
                events.append(watch.receive_nowait())  # no events for seeded keys
        assert a.snapshot() == {"s1": "seeded", "s2": "seeded"}
        with pytest.raises(StoreNotEmpty):
            a.seed({"s3": 1})
        async with pods(net, "b") as [b]:
            await b.set("s1", "written")
            await eventually(lambda: a.get("s1") == "written", stores=[a])
            await b.refresh()
            assert b.get("s2") == "seeded"  # filled what the cluster lacked


async def test_ttl_expires_on_every_replica_with_an_expired_event() -> None:
    net = MemoryNetwork()
    async with pods(net, "a", "b") as [a, b], b.watch(key="session") as events:
        await a.set("session", "s-1", ttl=0.2)
        with anyio.fail_after(5):
            first = await anext(events)
            assert first.kind is EventKind.SET
            second = await anext(events)
        assert second.kind is EventKind.EXPIRED
        assert "session" not in b
        await eventually(lambda: "session" not in a, stores=[a])
        assert a.stats().expired == 1
        with pytest.raises(InvalidValue, match="ttl"):
            await a.set("bad", 1, ttl=-1)


async def test_watch_filter_runs_before_the_buffer_and_drops_reach_on_error() -> None:
    errors = ErrorLog()
    async with MemoryTransport() as tr, Store[int]("w", tr, on_error=errors, **QUIET) as s:
        async with s.watch(filter=lambda ev: (ev.value or 0) % 2 == 0) as evens:
            for i in range(6):
                await s.set(f"k{i}", i)
            got = [evens.receive_nowait().value for _ in range(3)]
            assert got == [0, 2, 4]
        async with s.watch(buffer=1) as slow:
            await s.set("a", 1)
            await s.set("b", 2)  # the buffer of one is full: the watcher is dropped
            assert slow.dropped
        await eventually(lambda: any("dropped" in str(e) for e in errors.errors))
        assert s.stats().watchers_dropped == 1


async def test_a_merge_function_is_a_merger() -> None:
    net = MemoryNetwork()
    async with AsyncExitStack() as stack:
        stores = []
        for name in ("a", "b"):
            tr = await stack.enter_async_context(MemoryTransport(network=net, name=name))
            stores.append(
                await stack.enter_async_context(
                    Store[int]("max", tr, node_id=name, merger=max, **QUIET)
                )
            )
        a, b = stores
        await a.set("k", 5)
        await b.set("k", 3)  # joined with max, not last-writer-wins
        await eventually(lambda: a.get("k") == 5 and b.get("k") == 5, stores=stores)


class _Stalling:
    """A transport whose publish hangs once told to (a broker that stopped answering)."""

    def __init__(self, inner: MemoryTransport) -> None:
        self.inner = inner
        self.stall = False

    async def publish(self, topic: str, message: bytes) -> None:
        if self.stall:
            await anyio.sleep_forever()
        await self.inner.publish(topic, message)

    def subscribe(self, topic: str) -> Any:
        return self.inner.subscribe(topic)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_closing_respects_the_callers_deadline() -> None:
    async with MemoryTransport() as mem:
        tr = _Stalling(mem)
        async with Store[Any]("c", tr, close_timeout=30.0, **QUIET) as store:
            tr.stall = True
            with anyio.fail_after(10):  # far below close_timeout: the deadline below wins
                with anyio.move_on_after(0.1):
                    await store.aclose()
            assert store.state == "closed"
        with pytest.raises(ClosedError):
            store.get("k")
