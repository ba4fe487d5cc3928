"""Store[YDoc]: pods editing one chat document agree, over memory, TCP and Redis.

Only the TCP and Redis variants need sockets or a server, so only they are marked
``integration``; the scenario is the same on every transport.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import pytest

from podshare import Store
from podshare.crdt import YDoc
from podshare.transport import (
    MemoryNetwork,
    MemoryTransport,
    RedisTransport,
    TcpTransport,
    Transport,
)
from tests._support import RedisServer, eventually

pytestmark = pytest.mark.anyio

TIMEOUT = 20
OPTIONS: dict[str, Any] = {"hydrate_timeout": 1.0, "anti_entropy_interval": 3600.0}
KEY = "chat:42"


def messages(store: Store[YDoc]) -> list[Any]:
    doc = store.get(KEY)
    return doc.array("messages") if doc is not None else []


def say(role: str, text: str) -> Callable[[YDoc], YDoc]:
    return lambda doc: doc.append("messages", {"role": role, "text": text})


async def edit_one_chat(stores: Sequence[Store[YDoc]]) -> None:
    """The chat-cache scenario, on any transport: turns on different pods, then a race."""
    a, b = stores[0], stores[1]
    await a.update(KEY, say("user", "What is a CRDT?"))
    await eventually(lambda: len(messages(b)) == 1, stores=[b], timeout=TIMEOUT)
    # Any pod answers the follow-up turn.
    await b.update(KEY, say("assistant", "A data type whose replicas always converge."))
    await eventually(lambda: len(messages(a)) == 2, stores=[a], timeout=TIMEOUT)
    # Both pods append at the same moment: neither turn is lost, and all agree on order.
    async with anyio.create_task_group() as tg:
        tg.start_soon(a.update, KEY, say("user", "from a"))
        tg.start_soon(b.update, KEY, say("user", "from b"))
    await eventually(
        lambda: all(len(messages(s)) == 4 for s in stores), stores=stores, timeout=TIMEOUT
    )
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
            await eventually(lambda: late.get(KEY) == stores[0].get(KEY), stores=[late])
            assert messages(late) == messages(stores[0])


async def test_an_edit_ships_the_update_not_the_document() -> None:
    async with stores_on(memory_pods(2)) as (a, b):
        history = [{"role": "user", "text": f"message number {i}"} for i in range(1000)]
        await a.update(KEY, lambda d: d.extend("messages", history))
        await eventually(lambda: len(messages(b)) == 1000, stores=[b], timeout=TIMEOUT)
        whole = len(a[KEY].to_update())
        before = a.stats().bytes_sent
        await a.update(KEY, say("user", "one more"))
        sent = a.stats().bytes_sent - before
        await eventually(lambda: len(messages(b)) == 1001, stores=[b], timeout=TIMEOUT)
        # Envelope included, and perhaps a heartbeat: still a sliver of the document.
        assert sent < 1000 < whole // 20
        assert b[KEY] == a[KEY]


async def test_deleting_a_chat_and_starting_again() -> None:
    async with stores_on(memory_pods(2)) as (a, b):
        await a.update(KEY, say("user", "old conversation"))
        await eventually(lambda: len(messages(b)) == 1, stores=[b])
        await b.delete(KEY)
        await eventually(lambda: a.get(KEY) is None, stores=[a])
        await a.update(KEY, say("user", "new conversation"))
        await eventually(
            lambda: messages(b) == [{"role": "user", "text": "new conversation"}], stores=[b]
        )


# -- TCP and Redis ------------------------------------------------------------------------


@pytest.mark.integration
async def test_two_pods_edit_one_chat_over_tcp() -> None:
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


@pytest.mark.integration
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # redis-py is asyncio-only
async def test_two_pods_edit_one_chat_over_redis(redis_server: RedisServer) -> None:
    async with stores_on(
        [RedisTransport(url=redis_server.url), RedisTransport(url=redis_server.url)]
    ) as stores:
        await edit_one_chat(stores)


# -- anti-entropy with plain JSON objects (a JavaScript client's yarray.push([{...}])) ----


def _items_doc(plain: bool, start: int, count: int, client_id: int) -> bytes:
    """A pycrdt update appending ``count`` items, as plain objects or as shared maps."""
    import pycrdt

    doc: pycrdt.Doc[Any] = pycrdt.Doc(client_id=client_id)
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
        await eventually(lambda: len(a[KEY].array("items")) == 80, stores=[a])
        await eventually(lambda: len(b[KEY].array("items")) == 80, stores=[b])
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
