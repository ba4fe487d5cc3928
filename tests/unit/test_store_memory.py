"""Several Stores over the in-memory transport, under asyncio and trio.

Every wait is on an event (a watcher, an on_error call, a completed refresh) bounded in
time, mostly through ``tests._support.eventually``; nothing sleeps to synchronise.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypedDict

import anyio
import anyio.lowlevel
import pytest

from podshare import ClosedError, ConfigurationError, InvalidValue, PodshareError, TransportError
from podshare.crdt import GSet, ORSet, PNCounter
from podshare.store import EventKind, Store
from podshare.transport import FaultPlan, MemoryNetwork, MemoryTransport
from tests._support import ErrorLog, eventually

pytestmark = pytest.mark.anyio

# Long enough that only what a test does (refresh, gaps) triggers a digest exchange.
QUIET: dict[str, Any] = {"anti_entropy_interval": 3600.0, "hydrate_timeout": 2.0}


@dataclass(frozen=True)
class Config:
    rate_limit: int
    feature_flags: dict[str, bool] = field(default_factory=dict)


class User(TypedDict):
    name: str
    age: int


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class CountingTransport:
    """Wraps a MemoryTransport: counts publishes per topic and can be told to fail."""

    def __init__(self, inner: MemoryTransport) -> None:
        self.inner = inner
        self.max_message_size = inner.max_message_size
        self.published: dict[str, int] = {}
        self.sent: list[tuple[str, bytes]] = []
        self.fail = False

    async def publish(self, topic: str, message: bytes) -> None:
        if self.fail:
            raise TransportError("refused by the test")
        self.published[topic] = self.published.get(topic, 0) + 1
        self.sent.append((topic, message))
        await self.inner.publish(topic, message)

    def subscribe(self, topic: str) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        return self.inner.subscribe(topic)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def converge_by_refresh(stores: list[Store[Any]]) -> None:
    """Refresh every store until all snapshots agree.

    Each refresh awaits its digest exchange (peers announce they are synced with a
    heartbeat the moment their hydration completes).
    """
    while True:
        for s in stores:
            await s.refresh()
        first = stores[0].snapshot()
        if all(s.snapshot() == first for s in stores[1:]):
            return


@asynccontextmanager
async def cluster(
    n: int, name: str = "app", transport: Any = None, **options: Any
) -> AsyncIterator[list[Store[Any]]]:
    """``n`` stores named ``name`` on one shared transport."""
    async with AsyncExitStack() as stack:
        if transport is None:
            transport = await stack.enter_async_context(MemoryTransport())
        opts = {**QUIET, **options}
        stores = [
            await stack.enter_async_context(Store(name, transport, node_id=f"n{i}", **opts))
            for i in range(n)
        ]
        yield stores


# --- values ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tp", "value"),
    [
        (Config, Config(rate_limit=1000, feature_flags={"beta": True})),
        (User, {"name": "ada", "age": 36}),
        (Color, Color.GREEN),
        (dt.datetime, dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.UTC)),
        (dict[str, list[int]], {"a": [1, 2], "b": []}),
    ],
)
async def test_typed_values_round_trip(tp: Any, value: Any) -> None:
    async with (
        MemoryTransport() as tr,
        Store[tp]("typed", tr, **QUIET) as a,
        Store("typed", tr, type=tp, **QUIET) as b,
        b.watch(key="k") as events,
    ):
        await a.set("k", value)
        with anyio.fail_after(5):
            ev = await anext(events)
        assert ev.kind is EventKind.SET
        assert ev.origin == a.node_id
        assert ev.value == value
        assert type(b["k"]) is type(value)
        assert b.get("k") == value == a.get("k")


async def test_store_class_getitem_reads_the_type() -> None:
    assert Store[Config] is Store[Config]
    assert issubclass(Store[Config], Store)
    async with MemoryTransport() as tr:
        store = Store[Config]("cfg", tr)
        assert store.value_type is Config
        assert Store("cfg", tr, type=Config).value_type is Config
        with pytest.raises(ConfigurationError, match="type"):
            Store[Config]("cfg", tr, type=int)


async def test_invalid_value_changes_nothing() -> None:
    async with MemoryTransport() as tr, Store[Config]("cfg", tr, **QUIET) as store:
        with pytest.raises(InvalidValue):
            await store.set("k", {"rate_limit": "many"})  # type: ignore[arg-type]
        with pytest.raises(InvalidValue):
            await store.set_many({"a": Config(1), "b": 5})  # type: ignore[dict-item]
        for bad_key in ("", "x" * 1025, 7):
            with pytest.raises(InvalidValue):
                await store.set(bad_key, Config(1))  # type: ignore[arg-type]
        assert store.snapshot() == {}
        assert store.stats().writes_local == 0


async def test_reads_and_writes() -> None:
    async with cluster(2) as (a, b), b.watch(key="gone") as gone:
        await a.set_many({"x": 1, "y": [1, 2], "gone": "soon"})
        await a.delete("gone")
        assert a.get("gone") is None
        assert a.get("gone", 5) == 5
        assert "x" in a
        assert "gone" not in a
        assert len(a) == 2
        assert sorted(a.keys()) == ["x", "y"]
        assert dict(a.items()) == {"x": 1, "y": [1, 2]}
        snap = a.snapshot()
        await a.set("x", 2)
        assert snap["x"] == 1  # a copy, not a view
        assert await a.update("x", lambda v: v + 10) == 12
        assert await a.update("new", lambda v: ["was", v]) == ["was", None]
        with pytest.raises(KeyError):
            a["gone"]
        with anyio.fail_after(5):
            kinds = [(await anext(gone)).kind, (await anext(gone)).kind]
        assert kinds == [EventKind.SET, EventKind.DELETE]
        await eventually(lambda: b.snapshot() == a.snapshot(), stores=[b], timeout=5)


# --- watch ------------------------------------------------------------------------------


async def test_watch_filters_apply_on_remote_writes() -> None:
    async with (
        cluster(2) as (a, b),
        b.watch(key="flag") as one,
        b.watch(prefix="ws:") as ws,
        b.watch() as every,
    ):
        await a.set_many({"flag": True, "ws:1": "pod-a", "other": 0})
        await a.set("ws:2", "pod-a")
        with anyio.fail_after(5):
            everything = [(await anext(every)).key for _ in range(4)]
            assert sorted(everything) == ["flag", "other", "ws:1", "ws:2"]
            assert (await anext(one)).key == "flag"
            assert sorted([(await anext(ws)).key, (await anext(ws)).key]) == ["ws:1", "ws:2"]
        assert b.stats().watchers_active == 3
        with pytest.raises(ConfigurationError):
            b.watch(key="a", prefix="b")


async def test_slow_consumer_is_dropped_and_writers_never_block() -> None:
    async with cluster(2) as (a, b), b.watch(buffer=2) as slow, b.watch(key="last") as fast:
        for i in range(10):
            await a.set(f"k{i}", i)  # would hang if dispatch waited for the slow reader
        await a.set("last", True)
        with anyio.fail_after(5):
            assert (await anext(fast)).key == "last"
            assert [ev.key async for ev in slow] == ["k0", "k1"]  # buffered, then ends
        assert slow.dropped
        assert b.stats().watchers_dropped == 1
        assert b.stats().watchers_active == 1


async def test_membership_events_need_members_true() -> None:
    async with (
        MemoryTransport() as tr,
        Store("m", tr, node_id="a", **QUIET) as a,
        a.watch(members=True) as members,
        a.watch() as plain,
    ):
        async with Store("m", tr, node_id="b", **QUIET) as b:
            with anyio.fail_after(5):
                while (ev := await anext(members)).kind is not EventKind.NODE_UP:
                    pass
            assert ev.key == "b"
            assert "b" in a.members()
            assert b.members() >= {"a", "b"}
            await b.set("k", 1)
            with anyio.fail_after(5):
                assert (await anext(plain)).key == "k"
        with anyio.fail_after(5):
            while (ev := await anext(members)).kind is not EventKind.NODE_DOWN:
                pass
        assert ev.key == "b"
        assert "b" not in a.members()


async def test_ephemeral_entries_vanish_with_their_writer() -> None:
    async with (
        MemoryTransport() as tr,
        Store("p", tr, node_id="a", **QUIET) as a,
        a.watch(key="online:b") as events,
    ):
        async with Store("p", tr, node_id="b", **QUIET) as b:
            await b.set("online:b", True, ephemeral=True)
            with anyio.fail_after(5):
                assert (await anext(events)).kind is EventKind.SET
        with anyio.fail_after(10):
            ev = await anext(events)
        assert ev.kind is EventKind.DELETE
        assert ev.origin == "b"
        assert "online:b" not in a


# --- hydration, tombstones, bad input ----------------------------------------------------


async def test_late_joiner_hydrates_ten_thousand_keys() -> None:
    data = {f"key:{i}": {"i": i, "s": "v" * (i % 7)} for i in range(10_000)}
    async with MemoryTransport() as tr, Store("big", tr, node_id="a", **QUIET) as a:
        await a.set_many(data)
        async with Store("big", tr, node_id="b", **{**QUIET, "hydrate_timeout": 30.0}) as b:
            # Entering returned: hydration completed (or gave up, which would fail here).
            assert b.synced
            assert b.snapshot() == data
            assert b.stats().hydration_seconds > 0


async def test_empty_cluster_is_not_an_error() -> None:
    async with MemoryTransport() as tr:
        with anyio.fail_after(5):
            async with Store[Any]("alone", tr, hydrate_timeout=0.5) as store:
                await store.wait_synced()
                assert store.snapshot() == {}


async def test_tombstone_blocks_a_late_older_write() -> None:
    async with MemoryTransport() as mem:
        tr = CountingTransport(mem)
        async with cluster(2, transport=tr) as (a, b), b.watch(key="k") as events:
            await a.set("k", "old")
            old_write = [m for t, m in tr.sent if t == "ps/app" and b'"old"' in m][-1]
            await a.delete("k")
            with anyio.fail_after(5):
                assert [(await anext(events)).kind for _ in range(2)] == [
                    EventKind.SET,
                    EventKind.DELETE,
                ]
            # The old write arrives late (replayed): the tombstone's stamp is newer.
            await mem.publish("ps/app", old_write)
            await a.set("sentinel", 1)  # delivery is FIFO: once seen, the replay was too
            await eventually(lambda: "sentinel" in b, stores=[b], timeout=5)
            assert "k" not in a
            assert "k" not in b
            assert b.stats().writes_stale >= 1


async def test_garbage_on_the_topic_is_skipped_counted_and_reported() -> None:
    errors = ErrorLog()
    async with MemoryTransport() as tr, cluster(2, transport=tr, on_error=errors) as (a, b):
        for garbage in (b"\x00garbage", b"", b"\xc1" * 100):
            await tr.publish("ps/app", garbage)
        await errors.wait_for(3, timeout=5)
        assert all(isinstance(e, PodshareError) for e in errors.errors)
        assert a.stats().decode_errors + b.stats().decode_errors >= 3
        await a.set("still", "working")
        await eventually(lambda: b.get("still") == "working", stores=[b], timeout=5)


async def test_on_error_may_call_back_into_the_store() -> None:
    done = anyio.Event()
    seen: list[object] = []
    opened: list[Store[Any]] = []

    async def on_error(_exc: PodshareError) -> None:
        seen.append(opened[0].get("k"))  # a sync read from inside the callback
        await opened[0].set("errors", len(seen))  # and a write that waits for its publish
        done.set()

    async with MemoryTransport() as tr, Store("re", tr, on_error=on_error, **QUIET) as store:
        opened.append(store)
        await store.set("k", "v")
        await tr.publish("ps/re", b"not msgpack at all")
        with anyio.fail_after(5):
            await done.wait()
        assert seen == ["v"]
        assert store.get("errors") == 1


async def test_a_raising_on_error_does_not_stop_the_store() -> None:
    def on_error(_exc: PodshareError) -> None:
        raise RuntimeError("user bug")

    async with MemoryTransport() as tr, cluster(2, transport=tr, on_error=on_error) as (a, b):
        await tr.publish("ps/app", b"junk")
        await a.set("k", 1)
        await eventually(lambda: b.get("k") == 1, stores=[b], timeout=5)


# --- faults and repair -------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2])
async def test_fault_plan_runs_converge_after_refresh(seed: int) -> None:
    net = MemoryNetwork()
    plan = FaultPlan(drop=0.3, duplicate=0.2, reorder=0.3, seed=seed)
    async with AsyncExitStack() as stack:
        transports = [
            await stack.enter_async_context(MemoryTransport(network=net, name=f"t{i}", faults=plan))
            for i in range(3)
        ]
        stores = [
            await stack.enter_async_context(Store("f", t, node_id=f"n{i}", **QUIET))
            for i, t in enumerate(transports)
        ]
        async with anyio.create_task_group() as tg:
            for i, s in enumerate(stores):
                for j in range(30):
                    tg.start_soon(s.set, f"k{j % 10}", f"{i}:{j}")
                tg.start_soon(s.delete, f"k{i}")
        for t in transports:
            t.faults = None
        with anyio.fail_after(20):
            await converge_by_refresh(stores)
        assert stores[0].snapshot() == stores[1].snapshot() == stores[2].snapshot()
        assert sum(s.stats().refreshes for s in stores) >= 1


async def test_gap_report_triggers_refresh_by_itself() -> None:
    net = MemoryNetwork()
    async with (
        MemoryTransport(network=net, name="ta") as ta,
        MemoryTransport(network=net, name="tb") as tb,
        Store("g", ta, node_id="a", **QUIET) as a,
        Store("g", tb, node_id="b", **QUIET) as b,
        b.watch(key="k") as events,
    ):
        net.partition(["ta"], ["tb"])
        await a.set("k", "while apart")
        assert "k" not in b
        refreshes = b.stats().refreshes
        net.heal()  # the transports report a gap; nobody calls refresh()
        with anyio.fail_after(10):
            ev = await anext(events)
        assert ev.value == "while apart"
        # The value arrives during the exchange; the exchange completes right after.
        await eventually(
            lambda: b.stats().refreshes > refreshes or a.stats().refreshes > 0, stores=[a, b]
        )


async def test_a_reported_gap_alone_repairs_a_lost_write() -> None:
    net = MemoryNetwork()
    async with (
        MemoryTransport(network=net, name="ta") as ta,
        MemoryTransport(network=net, name="tb") as tb,
        Store("g2", ta, node_id="a", **QUIET) as a,
        Store("g2", tb, node_id="b", **QUIET) as b,
        b.watch(key="lost") as events,
    ):
        # No heartbeat needs to pass: b learnt a is synced while hydrating, and a heard
        # b's heartbeat sent the moment b's hydration completed.
        ta.faults = FaultPlan(drop=1.0)
        await a.set("lost", "only a has it")
        ta.faults = None
        assert "lost" not in b
        tb.simulate_gap()  # as after a reconnect; no refresh() call, no anti-entropy due
        with anyio.fail_after(10):
            ev = await anext(events)
        assert ev.value == "only a has it"
        assert b.stats().refreshes >= 1


class InboxGate:
    """Wraps a MemoryTransport: while closed, messages to inboxes (``#`` topics) are lost,
    as when the peer has not resubscribed yet after a broker restart."""

    def __init__(self, inner: MemoryTransport) -> None:
        self.inner = inner
        self.max_message_size = inner.max_message_size
        self.closed = False
        self.lost = anyio.Event()

    async def publish(self, topic: str, message: bytes) -> None:
        if self.closed and "#" in topic:
            await anyio.lowlevel.checkpoint()
            self.lost.set()
            return
        await self.inner.publish(topic, message)

    def subscribe(self, topic: str) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        return self.inner.subscribe(topic)

    def add_gap_listener(self, listener: Callable[[], None]) -> Callable[[], None]:
        return self.inner.add_gap_listener(listener)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_gap_refresh_that_did_not_complete_is_retried() -> None:
    net = MemoryNetwork()
    async with (
        MemoryTransport(network=net, name="ta") as ta,
        MemoryTransport(network=net, name="tb") as tb,
    ):
        gate = InboxGate(tb)
        async with (
            Store("rt", ta, node_id="a", **QUIET) as a,
            Store("rt", gate, node_id="b", **QUIET) as b,
            b.watch(key="k") as events,
        ):
            with anyio.fail_after(10):
                await converge_by_refresh([a, b])  # first-contact exchanges are over
            net.partition(["ta"], ["tb"])
            await a.set("k", "while apart")
            net.partition(["ta", "tb"])  # reachable again, but no gap reported yet
            gate.closed = True
            tb.simulate_gap()  # b's refresh asks a; the request is lost
            with anyio.fail_after(10):
                await gate.lost.wait()
            gate.closed = False
            assert "k" not in b
            # No anti-entropy is due for an hour: only a retry of the failed refresh helps.
            with anyio.fail_after(10):
                ev = await anext(events)
            assert ev.value == "while apart"
            assert b.stats().refreshes >= 1


async def test_anti_entropy_repairs_a_lost_write_periodically() -> None:
    async with (
        MemoryTransport() as tr,
        Store("ae", tr, node_id="a", **QUIET) as a,
        Store("ae", tr, node_id="b", **{**QUIET, "anti_entropy_interval": 0.2}) as b,
        b.watch(key="lost") as events,
    ):
        tr.faults = FaultPlan(drop=1.0)
        await a.set("lost", "repaired")
        tr.faults = None
        assert "lost" not in b
        with anyio.fail_after(10):
            ev = await anext(events)
        assert ev.value == "repaired"
        assert tr.stats().gaps_reported == 0  # no gap was reported: the periodic refresh did it


async def test_refresh_alone_returns() -> None:
    async with MemoryTransport() as tr, Store("solo", tr, **QUIET) as store:
        with anyio.fail_after(5):
            await store.refresh()  # nobody to ask: complete at once, not an error


async def test_failed_publish_raises_and_the_local_write_stands() -> None:
    async with MemoryTransport() as mem:
        flaky = CountingTransport(mem)
        async with Store("w", flaky, node_id="a", **QUIET) as a, Store("w", mem, **QUIET) as b:
            flaky.fail = True
            with pytest.raises(TransportError):
                await a.set("k", "local")
            assert a.get("k") == "local"
            assert "k" not in b
            flaky.fail = False
            with anyio.fail_after(10):
                while "k" not in b:
                    await b.refresh()  # anti-entropy repairs the peer
            assert b["k"] == "local"


async def test_concurrent_writes_coalesce_into_fewer_messages() -> None:
    async with MemoryTransport() as mem:
        tr = CountingTransport(mem)
        async with cluster(2, transport=tr) as (a, b):
            before = tr.published.get("ps/app", 0)
            async with anyio.create_task_group() as tg:
                for i in range(200):
                    tg.start_soon(a.set, f"k{i}", i)
            writes_messages = tr.published.get("ps/app", 0) - before
            assert 1 <= writes_messages < 200 // 4
            await eventually(lambda: len(b) == 200, stores=[b], timeout=5)
            assert a.stats().writes_local == 200


# --- mergers -----------------------------------------------------------------------------


async def test_merger_stores_converge() -> None:
    async with MemoryTransport() as tr, AsyncExitStack() as stack:
        gsets = [
            await stack.enter_async_context(Store[GSet[str]]("tags", tr, node_id=f"g{i}", **QUIET))
            for i in range(3)
        ]
        counters = [
            await stack.enter_async_context(Store[PNCounter]("hits", tr, node_id=f"c{i}", **QUIET))
            for i in range(3)
        ]
        orsets = [
            await stack.enter_async_context(Store[ORSet[str]]("who", tr, node_id=f"o{i}", **QUIET))
            for i in range(3)
        ]
        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(gsets[i].update, "t", lambda s, i=i: s.add(f"tag{i}"))
                tg.start_soon(gsets[i].set, "t", GSet([f"set{i}"]))
                for _ in range(5):
                    tg.start_soon(counters[i].update, "n", lambda c, i=i: c.increment(f"c{i}"))
                tg.start_soon(counters[i].update, "n", lambda c, i=i: c.decrement(f"c{i}", 2))
                tg.start_soon(orsets[i].update, "u", lambda s, i=i: s.add(f"u{i}", f"o{i}"))
        await orsets[0].update("u", lambda s: s.remove("u0"))
        await eventually(
            lambda: (
                all(len(s.get("t", GSet())) == 6 for s in gsets)
                and all(getattr(s.get("n"), "value", None) == 9 for s in counters)
                and all(s.get("u") == orsets[0].get("u") for s in orsets)
            ),
            stores=[*gsets, *counters, *orsets],
        )
        assert sorted(gsets[1]["t"]) == sorted(
            [f"tag{i}" for i in range(3)] + [f"set{i}" for i in range(3)]
        )
        assert "u0" not in orsets[2]["u"]
        assert "u1" in orsets[2]["u"]


# --- lifecycle ---------------------------------------------------------------------------


async def test_close_ends_watchers_and_refuses_use() -> None:
    ended = anyio.Event()
    seen: list[str] = []
    async with MemoryTransport() as tr, anyio.create_task_group() as tg:
        async with Store("c", tr, **QUIET) as store:

            async def consume() -> None:
                async with store.watch() as events:
                    seen.extend([ev.key async for ev in events])
                ended.set()

            tg.start_soon(consume)
            await anyio.wait_all_tasks_blocked()
            await store.set("k", 1)
        with anyio.fail_after(5):
            await ended.wait()  # the watcher's iteration ended when the store closed
        assert seen == ["k"]
        with pytest.raises(ClosedError):
            store.get("k")
        with pytest.raises(ClosedError):
            "k" in store  # noqa: B015
        with pytest.raises(ClosedError):
            await store.set("k", 2)
        with pytest.raises(ClosedError):
            store.watch()
        with pytest.raises(ClosedError):
            await store.refresh()
        with pytest.raises(ClosedError):
            async with store:
                pass


async def test_no_task_outlives_the_store() -> None:
    async with MemoryTransport() as tr:
        before = {t.id for t in anyio.get_running_tasks()}
        async with cluster(2, transport=tr, on_error=_async_noop) as (a, b):
            await a.set("k", 1)
            await tr.publish("ps/app", b"junk")  # starts async on_error tasks too
            await eventually(lambda: "k" in b, stores=[b], timeout=5)
            during = {t.id for t in anyio.get_running_tasks()}
            assert len(during - before) >= 10  # 5 background tasks per store
        after = {t.id for t in anyio.get_running_tasks()}
        assert after <= before


async def _async_noop(_exc: PodshareError) -> None:
    await anyio.lowlevel.checkpoint()


async def test_store_closes_when_its_body_is_cancelled() -> None:
    async with MemoryTransport() as tr:
        with anyio.CancelScope() as scope:
            async with Store("x", tr, **QUIET) as store:
                scope.cancel()
                await anyio.sleep_forever()
        with pytest.raises(ClosedError):
            store.get("k")
        # The transport is usable again: no subscription of the closed store is left.
        async with Store("x", tr, **QUIET) as again:
            await again.set("k", 1)
            assert again.get("k") == 1


async def test_reads_before_opening_raise_closed() -> None:
    async with MemoryTransport() as tr:
        store = Store[Any]("early", tr)
        with pytest.raises(ClosedError):
            store.get("k")
        with pytest.raises(ClosedError):
            len(store)
        with pytest.raises(ClosedError):
            await store.wait_synced()
