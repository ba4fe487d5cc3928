"""The Go library's calls, at the store (issue 17): what test_store_integrity leaves open.

``delete_many`` as one batch, ``watch(filter=)`` before the buffer, ``version`` /
``try_set`` across replicas, ``close_timeout=`` on its own, and strict decoding of
dataclasses and TypedDicts through a store. Over MemoryTransports on one MemoryNetwork.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, TypedDict

import anyio
import pytest

from podshare import EventKind, JsonCodec, MsgpackCodec, Store
from podshare.exceptions import ConfigurationError, InvalidValue
from podshare.transport import MemoryNetwork, MemoryTransport
from tests._support import eventually

pytestmark = pytest.mark.anyio

QUIET: dict[str, Any] = {"anti_entropy_interval": 3600.0, "hydrate_timeout": 5.0}


@asynccontextmanager
async def pods(
    net: MemoryNetwork, *names: str, value_type: Any = None, **options: Any
) -> AsyncIterator[list[Store[Any]]]:
    """One store "app" per name, each on its own transport (its own process)."""
    async with AsyncExitStack() as stack:
        stores = []
        for name in names:
            tr = await stack.enter_async_context(MemoryTransport(network=net, name=name))
            store: Store[Any] = Store(
                "app", tr, node_id=name, type=value_type, **{**QUIET, **options}
            )
            stores.append(await stack.enter_async_context(store))
        yield stores


# --- delete_many -----------------------------------------------------------------------


async def test_delete_many_is_one_batch_seen_as_deletes_everywhere() -> None:
    net = MemoryNetwork()
    async with pods(net, "a", "b") as [a, b]:
        await a.set_many({f"k{i}": i for i in range(10)})
        await eventually(lambda: len(b) == 10, stores=[b])
        sent = a.stats().messages_sent
        async with b.watch() as events:
            await a.delete_many([f"k{i}" for i in range(8)] + ["never-set"])
            assert a.stats().messages_sent - sent == 1
            with anyio.fail_after(5):
                got = [await anext(events) for _ in range(8)]
        assert {ev.kind for ev in got} == {EventKind.DELETE}
        assert {ev.key for ev in got} == {f"k{i}" for i in range(8)}
        assert b.snapshot() == {"k8": 8, "k9": 9}


async def test_delete_many_validates_every_key_before_deleting_any() -> None:
    async with MemoryTransport() as tr, Store[int]("d", tr, **QUIET) as store:
        await store.set_many({"a": 1, "b": 2})
        with pytest.raises(InvalidValue):
            await store.delete_many(["a", "", "b"])
        assert store.snapshot() == {"a": 1, "b": 2}
        await store.delete_many(iter(["a"]))  # any iterable
        assert store.snapshot() == {"b": 2}


# --- watch(filter=) --------------------------------------------------------------------


async def test_a_filter_runs_before_the_buffer_so_refused_events_never_fill_it() -> None:
    async with MemoryTransport() as tr, Store[int]("f", tr, **QUIET) as store:
        big = store.watch(prefix="n:", filter=lambda ev: (ev.value or 0) > 100, buffer=1)
        async with big as events:
            for i in range(50):  # refused by the filter, or by the prefix
                await store.set(f"n:{i}", i)
                await store.set(f"other:{i}", 1000)
            await store.set("n:big", 101)
            assert not events.dropped  # a buffer of one, and only one event reached it
            got = events.receive_nowait()
        assert (got.key, got.value) == ("n:big", 101)


async def test_a_filter_sees_every_kind_of_event() -> None:
    net = MemoryNetwork()
    async with pods(net, "a", "b") as [a, b]:
        async with b.watch(filter=lambda ev: ev.kind is not EventKind.SET) as events:
            await a.set("k", 1)
            await a.delete("k")
            await a.set("t", 2, ttl=0.1)
            with anyio.fail_after(5):
                kinds = [(await anext(events)).kind for _ in range(2)]
        assert kinds == [EventKind.DELETE, EventKind.EXPIRED]


async def test_a_filter_that_is_not_callable_is_refused() -> None:
    async with MemoryTransport() as tr, Store[int]("f", tr, **QUIET) as store:
        with pytest.raises(ConfigurationError, match="filter"):
            async with store.watch(filter=42):  # type: ignore[arg-type]
                pass


# --- version / try_set -----------------------------------------------------------------


async def test_try_set_fails_once_a_newer_write_from_elsewhere_arrived() -> None:
    net = MemoryNetwork()
    async with pods(net, "a", "b") as [a, b]:
        await a.set("k", 1)
        await eventually(lambda: b.get("k") == 1, stores=[b])
        seen = b.version("k")
        assert seen == a.version("k")  # one write, one version, on every replica
        await a.set("k", 2)
        await eventually(lambda: b.get("k") == 2, stores=[b])
        assert not await b.try_set("k", 3, seen)  # b's read was stale
        assert await b.try_set("k", 3, b.version("k"))
        await eventually(lambda: a.get("k") == 3, stores=[a])
        await a.delete("k")
        await eventually(lambda: "k" not in b, stores=[b])
        assert b.version("k") is None
        assert await b.try_set("k", 4, None)  # absent again: None matches


# --- close_timeout= --------------------------------------------------------------------


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


async def test_close_timeout_bounds_closing_when_the_caller_has_no_deadline() -> None:
    async with MemoryTransport() as mem:
        tr = _Stalling(mem)
        store: Store[Any] = Store("c", tr, close_timeout=0.1, **QUIET)
        async with store:
            tr.stall = True
            with anyio.fail_after(10):  # the default 2 s would pass too; 30 s would not
                start = anyio.current_time()
                await store.aclose()
                took = anyio.current_time() - start
        assert store.state == "closed"
        assert took < 1.5  # close_timeout, not the 2 s default


# --- strict decoding of dataclasses and TypedDicts --------------------------------------


@dataclasses.dataclass(frozen=True)
class Limit:
    per_second: int


class Profile(TypedDict):
    name: str
    limit: Limit


@pytest.mark.parametrize("codec", [JsonCodec(strict=True), MsgpackCodec(strict=True)])
@pytest.mark.parametrize(
    ("value_type", "good", "newer"),
    [
        (Limit, {"per_second": 1}, {"per_second": 2, "burst": 5}),
        (
            Profile,
            {"name": "a", "limit": {"per_second": 1}},
            {"name": "b", "limit": {"per_second": 2, "burst": 5}},
        ),
    ],
    ids=["dataclass", "typeddict"],
)
async def test_strict_stores_skip_values_with_unknown_fields_lax_ones_drop_them(
    codec: Any, value_type: Any, good: Any, newer: Any
) -> None:
    net = MemoryNetwork()
    fmt = "json" if isinstance(codec, JsonCodec) else "msgpack"
    async with (
        pods(net, "writer", codec=fmt) as [writer],  # untyped: it writes any shape
        pods(net, "strict", value_type=value_type, codec=codec) as [strict],
        pods(net, "lax", value_type=value_type, codec=fmt) as [lax],
        strict.watch() as strict_events,
    ):
        await writer.set("newer", newer)
        await writer.set("good", good)
        with anyio.fail_after(5):
            assert (await anext(strict_events)).key == "good"  # "newer" never arrived
        await eventually(lambda: "newer" in lax and "good" in lax, stores=[lax])
        assert "newer" not in strict
        assert strict.stats().decode_errors == 1
        assert lax.stats().decode_errors == 0
