"""Store[YDoc]: pods editing one chat document agree, over memory, TCP and Redis."""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import pytest

pytest.importorskip("pycrdt", reason="YDoc needs the yjs extra (pycrdt)")

from podshare import Store
from podshare.crdt import YDoc
from podshare.transport import MemoryNetwork, MemoryTransport, Transport

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

TIMEOUT = 20
OPTIONS: dict[str, Any] = {"hydrate_timeout": 1.0, "anti_entropy_interval": 3600.0}
KEY = "chat:42"


def messages(store: Store[YDoc]) -> list[Any]:
    doc = store.get(KEY)
    return doc.array("messages") if doc is not None else []


async def until(store: Store[YDoc], predicate: Callable[[], bool]) -> None:
    """Wait, bounded, until ``predicate()`` holds, re-checking on each change of KEY."""
    with anyio.fail_after(TIMEOUT):
        async with store.watch(key=KEY) as events:
            if predicate():
                return
            async for _ in events:
                if predicate():
                    return
    raise AssertionError(f"{store.node_id}: the watch ended before the condition held")


def say(role: str, text: str) -> Callable[[YDoc], YDoc]:
    return lambda doc: doc.append("messages", {"role": role, "text": text})


async def edit_one_chat(stores: Sequence[Store[YDoc]]) -> None:
    """The chat-cache scenario, on any transport: turns on different pods, then a race."""
    a, b = stores[0], stores[1]
    await a.update(KEY, say("user", "What is a CRDT?"))
    await until(b, lambda: len(messages(b)) == 1)
    # Any pod answers the follow-up turn.
    await b.update(KEY, say("assistant", "A data type whose replicas always converge."))
    await until(a, lambda: len(messages(a)) == 2)
    # Both pods append at the same moment: neither turn is lost, and all agree on order.
    async with anyio.create_task_group() as tg:
        tg.start_soon(a.update, KEY, say("user", "from a"))
        tg.start_soon(b.update, KEY, say("user", "from b"))
    for store in stores:
        await until(store, lambda s=store: len(messages(s)) == 4)  # type: ignore[misc]
    assert all(s.get(KEY) == a.get(KEY) for s in stores)
    assert all(messages(s) == messages(a) for s in stores)
    assert {m["text"] for m in messages(a)[2:]} == {"from a", "from b"}


@asynccontextmanager
async def stores_on(
    transports: Sequence[AbstractAsyncContextManager[Transport]],
) -> AsyncIterator[list[Store[YDoc]]]:
    async with AsyncExitStack() as stack:
        opened = [await stack.enter_async_context(t) for t in transports]
        yield [
            await stack.enter_async_context(Store[YDoc]("chats", tr, node_id=f"pod-{i}", **OPTIONS))
            for i, tr in enumerate(opened)
        ]


def memory_pods(count: int) -> list[MemoryTransport]:
    net = MemoryNetwork()
    return [MemoryTransport(network=net, name=f"mem-{i}") for i in range(count)]


async def test_two_pods_edit_one_chat_over_memory() -> None:
    async with stores_on(memory_pods(2)) as stores:
        await edit_one_chat(stores)


async def test_three_pods_and_a_late_joiner_agree() -> None:
    net = MemoryNetwork()
    pods = [MemoryTransport(network=net, name=f"mem-{i}") for i in range(3)]
    async with stores_on(pods) as stores:
        await edit_one_chat(stores)
        async with (
            MemoryTransport(network=net, name="late") as tr,
            Store[YDoc]("chats", tr, node_id="late", **OPTIONS) as late,
        ):
            await until(late, lambda: late.get(KEY) == stores[0].get(KEY))
            assert messages(late) == messages(stores[0])


async def test_an_edit_ships_the_update_not_the_document() -> None:
    async with stores_on(memory_pods(2)) as (a, b):
        history = [{"role": "user", "text": f"message number {i}"} for i in range(1000)]
        await a.update(KEY, lambda d: d.extend("messages", history))
        await until(b, lambda: len(messages(b)) == 1000)
        whole = len(a[KEY].to_update())
        before = a.stats().bytes_sent
        await a.update(KEY, say("user", "one more"))
        sent = a.stats().bytes_sent - before
        await until(b, lambda: len(messages(b)) == 1001)
        # Envelope included, and perhaps a heartbeat: still a sliver of the document.
        assert sent < 1000 < whole // 20
        assert b[KEY] == a[KEY]


async def test_deleting_a_chat_and_starting_again() -> None:
    async with stores_on(memory_pods(2)) as (a, b):
        await a.update(KEY, say("user", "old conversation"))
        await until(b, lambda: len(messages(b)) == 1)
        await b.delete(KEY)
        await until(a, lambda: a.get(KEY) is None)
        await a.update(KEY, say("user", "new conversation"))
        await until(b, lambda: messages(b) == [{"role": "user", "text": "new conversation"}])


# -- TCP and Redis ------------------------------------------------------------------------

_HAS_TCP = importlib.util.find_spec("podshare.transport.tcp") is not None
_HAS_REDIS = (
    importlib.util.find_spec("podshare.transport.redis") is not None
    and importlib.util.find_spec("redis") is not None
)


@pytest.mark.skipif(not _HAS_TCP, reason="podshare.transport.tcp is not available")
async def test_two_pods_edit_one_chat_over_tcp() -> None:
    from podshare.transport import TcpTransport

    async with (
        TcpTransport(node_id="tcp-b") as tb,
        TcpTransport(node_id="tcp-a", peers=[tb.address]) as ta,
    ):
        with anyio.fail_after(TIMEOUT):
            await ta.wait_connected(1)
            await tb.wait_connected(1)
        async with (
            Store[YDoc]("chats", ta, node_id="pod-a", **OPTIONS) as a,
            Store[YDoc]("chats", tb, node_id="pod-b", **OPTIONS) as b,
        ):
            await edit_one_chat([a, b])


@pytest.mark.skipif(not _HAS_REDIS, reason="podshare.transport.redis or redis-py is missing")
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # redis-py is asyncio-only
async def test_two_pods_edit_one_chat_over_redis(redis_server: Any) -> None:
    from podshare.transport import RedisTransport

    async with stores_on(
        [RedisTransport(url=redis_server.url), RedisTransport(url=redis_server.url)]
    ) as stores:
        await edit_one_chat(stores)


# -- anti-entropy with plain JSON objects (a JavaScript client's yarray.push([{...}])) ----


def _items_doc(plain: bool, start: int, count: int, client_id: int) -> bytes:
    """A pycrdt update appending ``count`` items, as plain objects or as shared maps."""
    import pycrdt

    doc = pycrdt.Doc(client_id=client_id)
    items = doc.get("items", type=pycrdt.Array)
    for i in range(start, start + count):
        item = {"id": i, "author": f"user {i % 7}", "body": "lorem ipsum " * 4, "done": False}
        with doc.transaction():
            items.append(item if plain else pycrdt.Map(item))
    return doc.get_update()


@pytest.mark.parametrize("plain", [True, False], ids=["plain-objects", "shared-maps"])
async def test_refresh_sends_no_document_once_pods_agree(plain: bool) -> None:
    async with stores_on(memory_pods(2)) as (a, b):
        # Each pod merges its own half first, then receives the other's: the same state
        # reached in two orders, decoded separately (Yrs's map order differs).
        await a.set(KEY, YDoc.from_update(_items_doc(plain, 0, 40, client_id=1)))
        await b.set(KEY, YDoc.from_update(_items_doc(plain, 40, 40, client_id=2)))
        await until(a, lambda: len(a[KEY].array("items")) == 80)
        await until(b, lambda: len(b[KEY].array("items")) == 80)
        assert a[KEY] == b[KEY]
        assert a[KEY].to_wire() == b[KEY].to_wire()
        whole = len(a[KEY].to_update())
        before = a.stats().bytes_sent + b.stats().bytes_sent
        for _ in range(5):
            await a.refresh()
            await b.refresh()
        sent = a.stats().bytes_sent + b.stats().bytes_sent - before
        # Ten digest exchanges (and heartbeats); the document itself never travels.
        assert sent < whole, f"{sent} bytes for ten refreshes of a {whole}-byte document"
